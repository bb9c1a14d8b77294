"""The FHIR R4 export of finished analyses, so that a clinic's record system (EHR) can file the result.

One analysis, or every done analysis of one patient, becomes a Bundle of type "collection":

- `Patient`: the MRN as an identifier in the clinic's system URI (`Clinic.mrn_identifier_system`), name, birth
  date and sex; `Organization`: the clinic, the report's performer;
- `Media`: the lesion image itself (base64), its body site, when it was taken;
- `DiagnosticReport`: final, issued when the result was written, effective when the image was taken, the
  conclusion in words (the triage tier first, then the most likely class, then the disclaimer) and coded (the
  verdict first, the class only where it agrees with it: `conclusion_codes`), the PDF report as `presentedForm`;
- `Observation`s: one probability for each of the 7 classes, and one for the triage tier with the malignant
  probability as a component, each `derivedFrom` the Media;
- `Device`: the model version that made the result, with its measured test accuracy;
- once recorded, an `Observation` of the confirmed diagnosis (analysis.outcomes: the latest entry), its class as
  `valueCodeableConcept` and how it was confirmed (HAM10000's words) as `method`, among the report's results.

Codes: SNOMED CT where one concept fits the category (`SNOMED_BODY_SITES`, `SNOMED_CLASSES`), always beside a
code of our own (`LOCAL`) that carries the value as stored, so a receiver that does not know SNOMED still reads
it. Every full URL is a `urn:uuid` made from the clinic and the row, so the same record exports under the same
ids each time and references resolve inside the Bundle. Plain Python: the tests validate the output with the
fhir.resources library.
"""

import base64
import hashlib
import re
import uuid
from collections.abc import Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

from django.utils import timezone

from analysis.classes import CLASS_CODES, CLASS_NAMES, MALIGNANT
from analysis.models import Analysis, Case, Outcome, Patient
from analysis.reports import DISCLAIMER, FLAGGED_WARNING, TIER_MEANING, file_name, model_card_figures

MEDIA_TYPE = "application/fhir+json"
FHIR_VERSION = "4.0.1"

SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
# Our own code systems: the values as skinsite stores them.
LOCAL = "urn:skinsite:fhir"
LOCAL_CLASS = f"{LOCAL}:lesion-class"
LOCAL_BODY_SITE = f"{LOCAL}:body-site"
LOCAL_TIER = f"{LOCAL}:triage-tier"
LOCAL_OBSERVATION = f"{LOCAL}:observation"
LOCAL_REPORT = f"{LOCAL}:report"
LOCAL_METHOD = f"{LOCAL}:diagnosis-method"
ANALYSIS_IDENTIFIER = f"{LOCAL}:analysis"
CLINIC_IDENTIFIER = f"{LOCAL}:clinic"

# SNOMED CT body structures for HAM10000's sites; "acral", "genital" and "unknown" have no single concept that
# fits (acral spans hands and feet, palms and soles) and travel with the local code only.
SNOMED_BODY_SITES = {
    "abdomen": ("818983003", "Abdomen structure"),
    "back": ("123961009", "Back structure"),
    "chest": ("51185008", "Thoracic structure"),
    "ear": ("117590005", "Ear structure"),
    "face": ("89545001", "Face structure"),
    "foot": ("56459004", "Foot structure"),
    "hand": ("85562004", "Hand structure"),
    "lower extremity": ("61685007", "Lower limb structure"),
    "neck": ("45048000", "Neck structure"),
    "scalp": ("41695006", "Scalp structure"),
    "trunk": ("22943007", "Trunk structure"),
    "upper extremity": ("53120007", "Upper limb structure"),
}
# SNOMED CT disorders for the classes that are one disorder. akiec (actinic keratoses and intraepithelial
# carcinoma), bkl (seborrhoeic keratoses, solar lentigines, lichen planus-like keratoses), vasc (angiomas,
# angiokeratomas, pyogenic granulomas, haemorrhage) are groups; df is left local until its code is reviewed.
SNOMED_CLASSES = {
    "bcc": ("254701007", "Basal cell carcinoma of skin"),
    "mel": ("372244006", "Malignant melanoma"),
    "nv": ("400096001", "Melanocytic naevus"),
}

# FHIR strings may hold no control characters but tab, CR and LF.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class NotExportable(Exception):
    """The record has no finished result to export yet; the message says why, for the 409 answer.
    `waiting_for_report` is the done analysis whose PDF report is not written yet, if that is the reason."""

    def __init__(self, message: str, waiting_for_report: Analysis | None = None):
        super().__init__(message)
        self.waiting_for_report = waiting_for_report


def text(value: str) -> str:
    return _CONTROL_CHARACTERS.sub(" ", value)


def full_url(clinic_id: int, kind: str, key: object) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{LOCAL}:clinic:{clinic_id}:{kind}:{key}')}"


def instant(moment: datetime, tz: ZoneInfo) -> str:
    """An instant in the clinic's time zone, with its offset, to the second."""
    return timezone.localtime(moment, tz).isoformat(timespec="seconds")


def coding(system: str, code: str, display: str) -> dict:
    return {"system": system, "code": code, "display": display}


def body_site(case: Case) -> dict:
    codings = [coding(LOCAL_BODY_SITE, case.body_site, case.get_body_site_display())]
    if case.body_site in SNOMED_BODY_SITES:
        code, display = SNOMED_BODY_SITES[case.body_site]
        codings.insert(0, coding(SNOMED, code, display))
    return {"coding": codings, "text": case.get_body_site_display()}


def lesion_class(code: str) -> dict:
    codings = [coding(LOCAL_CLASS, code, CLASS_NAMES[code])]
    if code in SNOMED_CLASSES:
        snomed_code, display = SNOMED_CLASSES[code]
        codings.insert(0, coding(SNOMED, snomed_code, display))
    return {"coding": codings, "text": CLASS_NAMES[code]}


# The verdict in words, as the conclusion's code: the tier is the answer, not the most likely class. No SNOMED CT
# concept says "suspicious for malignancy, from a screening aid" without asserting a disorder, so the verdict
# travels as our own tier code and its text.
VERDICTS = {
    Analysis.RiskTier.URGENT: "Urgent: suspicious for malignancy (melanoma, basal cell carcinoma or actinic "
    "keratosis), review promptly",
    Analysis.RiskTier.UNCERTAIN: "Uncertain: neither suspicious nor reassuring, for a clinician to judge",
    Analysis.RiskTier.ROUTINE: "Routine: not suspicious for malignancy",
}
FLAGGED_VERDICT = "Uncertain: the image was flagged by the quality check, no finding"


def verdict(analysis: Analysis) -> dict:
    """The triage tier as a CodeableConcept, saying what it means: the first conclusion code of a report."""
    words = FLAGGED_VERDICT if analysis.flagged else VERDICTS[analysis.risk_tier]
    return {
        "coding": [coding(LOCAL_TIER, analysis.risk_tier, analysis.get_risk_tier_display())],
        "text": f"{words} (malignant probability {analysis.malignant_probability:.1%})",
    }


def conclusion_codes(analysis: Analysis) -> list[dict]:
    """The verdict, then the most likely class where it agrees with the verdict (a malignant class of an urgent
    result, a benign class of a routine one). An EHR that files by these codes must never file an urgent result
    under a benign diagnosis, nor an uncertain or flagged one under any class."""
    codes = [verdict(analysis)]
    top_is_malignant = analysis.predicted_class in MALIGNANT
    agrees = {Analysis.RiskTier.URGENT: top_is_malignant, Analysis.RiskTier.ROUTINE: not top_is_malignant}
    if not analysis.flagged and agrees.get(analysis.risk_tier, False):
        codes.append(lesion_class(analysis.predicted_class))
    return codes


def probability(value: float) -> dict:
    return {"value": value, "unit": "probability", "system": UCUM, "code": "1"}


def attachment(content_type: str, data: bytes, title: str) -> dict:
    # R4's Attachment.hash is the SHA-1 of the data, base64.
    return {
        "contentType": content_type,
        "data": base64.b64encode(data).decode(),
        "size": len(data),
        "hash": base64.b64encode(hashlib.sha1(data).digest()).decode(),
        "title": text(title),
    }


def check_exportable(analysis: Analysis) -> None:
    if analysis.status != Analysis.Status.DONE:
        raise NotExportable(
            f"Analysis {analysis.pk} is {analysis.get_status_display().lower()}, not done: only a finished result "
            "can be exported. Try again once it is done."
        )
    if not analysis.has_report:
        raise NotExportable(
            f"The PDF report of analysis {analysis.pk} is still being written; the export includes it. "
            "Try again in a few seconds.",
            waiting_for_report=analysis,
        )


def conclusion(analysis: Analysis) -> str:
    """The result in words, in the order a clinician should read it: the tier, why, then the class."""
    name = CLASS_NAMES[analysis.predicted_class]
    tier = analysis.get_risk_tier_display()
    words = [f"Triage: {tier} (malignant probability {analysis.malignant_probability:.1%})."]
    if analysis.flagged:
        words.append(f"The image was flagged by the quality check ({'; '.join(analysis.quality_flags)}).")
        words.append(FLAGGED_WARNING)
        words.append(f"The model's most likely class, not to be relied on here: {name} ({analysis.confidence:.1%}).")
    else:
        words.append(TIER_MEANING.get(analysis.risk_tier, ""))
        if analysis.risk_tier == Analysis.RiskTier.URGENT and analysis.predicted_class not in MALIGNANT:
            words.append(
                f"Urgent although the single most likely class is benign: melanoma, basal cell carcinoma and "
                f"actinic keratosis together reach {analysis.malignant_probability:.1%}."
            )
        words.append(f"Most likely class: {name} ({analysis.confidence:.1%}).")
    words.append(f"Model {analysis.model_version}.")
    words.append(DISCLAIMER)
    return " ".join(word for word in words if word)


class BundleBuilder:
    """Collects the resources of one clinic's records, each once, keyed by its full URL."""

    def __init__(self, patient: Patient):
        self.patient = patient
        self.clinic = patient.clinic
        self.tz = ZoneInfo(self.clinic.time_zone)
        self.entries: dict[str, dict] = {}
        self.patient_ref = self._add("patient", patient.pk, self._patient())
        self.clinic_ref = self._add("organization", self.clinic.pk, self._organization())

    def _add(self, kind: str, key: object, resource: dict) -> dict:
        url = full_url(self.clinic.pk, kind, key)
        self.entries.setdefault(url, resource)
        return {"reference": url}

    def _patient(self) -> dict:
        patient = self.patient
        resource = {
            "resourceType": "Patient",
            "id": f"patient-{patient.pk}",
            "identifier": [
                {
                    "use": "usual",
                    "type": {
                        "coding": [
                            coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical record number")
                        ],
                        "text": "Medical record number",
                    },
                    "system": self.clinic.mrn_identifier_system,
                    "value": text(patient.mrn),
                }
            ],
            "name": [{"text": text(patient.name)}],
            # The stored sexes are FHIR's administrative genders, code for code.
            "gender": patient.sex,
        }
        if patient.date_of_birth:
            resource["birthDate"] = patient.date_of_birth.isoformat()
        return resource

    def _organization(self) -> dict:
        return {
            "resourceType": "Organization",
            "id": f"clinic-{self.clinic.pk}",
            "identifier": [{"system": CLINIC_IDENTIFIER, "value": str(self.clinic.pk)}],
            "name": text(self.clinic.name),
        }

    def _device(self, version: str) -> dict:
        ref = {"reference": full_url(self.clinic.pk, "device", version)}
        if ref["reference"] in self.entries:
            return ref
        resource = {
            "resourceType": "Device",
            "id": f"model-{hashlib.sha1(version.encode()).hexdigest()[:12]}",
            "deviceName": [{"name": "skinsite lesion classifier", "type": "model-name"}],
            "type": {"text": "Machine-learning classifier of dermoscopic images (MobileNetV2), software"},
            "version": [{"value": text(version)}],
        }
        figures = model_card_figures(version)
        if figures:
            resource["note"] = [
                {
                    "text": f"Measured on the held-out HAM10000 test set ({figures['n']} images): accuracy "
                    f"{figures['accuracy']:.1%}, balanced accuracy {figures['balanced_accuracy']:.1%}, melanoma "
                    f"recall {figures['melanoma_recall']:.1%}."
                }
            ]
        return self._add("device", version, resource)

    def _media(self, analysis: Analysis) -> dict:
        image = analysis.image
        case = image.case
        with image.image.open("rb") as handle:
            data = handle.read()
        content_type = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
        resource = {
            "resourceType": "Media",
            "id": f"image-{image.pk}",
            "identifier": [{"system": f"{LOCAL}:image-sha256", "value": image.sha256}] if image.sha256 else [],
            "status": "completed",
            "type": {
                "coding": [coding("http://terminology.hl7.org/CodeSystem/media-type", "image", "Image")],
                "text": "Dermoscopic image",
            },
            "subject": self.patient_ref,
            "issued": instant(image.uploaded_at, self.tz),
            "bodySite": body_site(case),
            "width": image.width,
            "height": image.height,
            "content": attachment(content_type, data, f"Lesion image {image.pk}"),
        }
        if not resource["identifier"]:
            del resource["identifier"]
        notes = []
        if image.captured_at:
            resource["createdDateTime"] = instant(image.captured_at, self.tz)
        else:
            notes.append("The time the image was taken was not recorded; 'issued' is when it was uploaded.")
        if case.clinical_notes:
            notes.append(f"Case notes: {case.clinical_notes}")
        if notes:
            resource["note"] = [{"text": text(note)} for note in notes]
        return self._add("media", image.pk, resource)

    def add_analysis(self, analysis: Analysis) -> None:
        check_exportable(analysis)
        image, case = analysis.image, analysis.image.case
        media = self._media(analysis)
        device = self._device(analysis.model_version)
        issued = instant(analysis.finished_at, self.tz)
        effective = {"effectiveDateTime": instant(image.captured_at, self.tz)} if image.captured_at else {}
        common = {
            "status": "final",
            "category": [
                {"coding": [coding("http://terminology.hl7.org/CodeSystem/observation-category", "imaging", "Imaging")]}
            ],
            "subject": self.patient_ref,
            **effective,
            "issued": issued,
            "performer": [self.clinic_ref],
            "bodySite": body_site(case),
            "device": device,
            "derivedFrom": [media],
        }
        tier = {
            "resourceType": "Observation",
            "id": f"analysis-{analysis.pk}-triage",
            **common,
            "code": {
                "coding": [coding(LOCAL_OBSERVATION, "triage-tier", "Triage tier")],
                "text": "Triage tier from the malignant probability",
            },
            "valueCodeableConcept": {
                "coding": [coding(LOCAL_TIER, analysis.risk_tier, analysis.get_risk_tier_display())],
                "text": analysis.get_risk_tier_display(),
            },
            "component": [
                {
                    "code": {
                        "coding": [coding(LOCAL_OBSERVATION, "malignant-probability", "Malignant probability")],
                        "text": "Probability of melanoma, basal cell carcinoma or actinic keratosis together",
                    },
                    "valueQuantity": probability(analysis.malignant_probability),
                }
            ],
        }
        if analysis.flagged:
            tier["note"] = [{"text": text(f"Flagged by the quality check: {'; '.join(analysis.quality_flags)}")}]
        # The tier first: it is the headline answer, the class probabilities its detail.
        results = [self._add("observation", f"{analysis.pk}:triage", tier)]
        for code in CLASS_CODES:
            name = CLASS_NAMES[code]
            results.append(
                self._add(
                    "observation",
                    f"{analysis.pk}:{code}",
                    {
                        "resourceType": "Observation",
                        "id": f"analysis-{analysis.pk}-{code}",
                        **common,
                        "code": {
                            "coding": [coding(f"{LOCAL}:class-probability", code, f"Probability of {name}")],
                            "text": f"Model probability: {name}",
                        },
                        "valueQuantity": probability(analysis.probabilities[code]),
                    },
                )
            )

        outcomes = list(analysis.outcomes.all()[:2])
        if outcomes:
            results.append(self._confirmed(analysis, outcomes[0], corrects=len(outcomes) > 1, body=common["bodySite"]))

        with analysis.report.open("rb") as handle:
            pdf = handle.read()
        report = {
            "resourceType": "DiagnosticReport",
            "id": f"analysis-{analysis.pk}",
            "identifier": [{"system": ANALYSIS_IDENTIFIER, "value": str(analysis.pk)}],
            "status": "final",
            "code": {
                "coding": [coding(LOCAL_REPORT, "lesion-image-analysis", "Dermoscopic lesion image analysis")],
                "text": "Dermoscopic lesion image analysis (machine learning, screening aid)",
            },
            "subject": self.patient_ref,
            **effective,
            "issued": issued,
            "performer": [self.clinic_ref],
            "result": results,
            "media": [{"comment": "The analysed lesion image", "link": media}],
            "conclusion": text(conclusion(analysis)),
            "conclusionCode": conclusion_codes(analysis),
            "presentedForm": [attachment("application/pdf", pdf, file_name(analysis))],
        }
        self._add("report", analysis.pk, report)

    def _confirmed(self, analysis: Analysis, outcome: Outcome, *, corrects: bool, body: dict) -> dict:
        """The confirmed diagnosis (the latest entry), with how it was confirmed as `method`: `corrected` when it
        replaced an earlier entry."""
        if outcome.diagnosis == Outcome.OTHER:
            value = {
                "coding": [coding(LOCAL_CLASS, Outcome.OTHER, "None of the 7 classes")],
                "text": text(outcome.other_diagnosis),
            }
        else:
            value = lesion_class(outcome.diagnosis)
        resource = {
            "resourceType": "Observation",
            "id": f"analysis-{analysis.pk}-confirmed",
            "identifier": [{"system": f"{LOCAL}:outcome", "value": str(outcome.pk)}],
            "status": "corrected" if corrects else "final",
            "code": {
                "coding": [coding(LOCAL_OBSERVATION, "confirmed-diagnosis", "Confirmed diagnosis")],
                "text": "Confirmed diagnosis of the lesion (after the model's result)",
            },
            "subject": self.patient_ref,
            "effectiveDateTime": outcome.confirmed_on.isoformat(),
            "issued": instant(outcome.recorded_at, self.tz),
            "performer": [self.clinic_ref],
            "valueCodeableConcept": value,
            "bodySite": body,
            "method": {
                "coding": [coding(LOCAL_METHOD, outcome.method, outcome.get_method_display())],
                "text": outcome.get_method_display(),
            },
        }
        if corrects:
            resource["note"] = [{"text": "Corrects an earlier entry; skinsite keeps every entry on record."}]
        return self._add("observation", f"{analysis.pk}:confirmed", resource)

    def bundle(self) -> dict:
        return {
            "resourceType": "Bundle",
            "meta": {"lastUpdated": instant(timezone.now(), self.tz)},
            "type": "collection",
            "timestamp": instant(timezone.now(), self.tz),
            "entry": [{"fullUrl": url, "resource": resource} for url, resource in self.entries.items()],
        }


def analysis_bundle(analysis: Analysis) -> dict:
    """The Bundle of one done analysis (its patient, clinic, image, report and observations); NotExportable
    when it is not done or its PDF report is not written yet."""
    builder = BundleBuilder(analysis.image.case.patient)
    builder.add_analysis(analysis)
    return builder.bundle()


def patient_bundle(patient: Patient, analyses: Iterable[Analysis]) -> tuple[dict, int]:
    """The Bundle of every done analysis of a patient among `analyses`, oldest first, and how many it holds;
    NotExportable when there is none, or when one of them still waits for its report."""
    done = [a for a in analyses if a.status == Analysis.Status.DONE]
    if not done:
        raise NotExportable(f"Patient {patient.pk} has no finished analysis to export yet.")
    builder = BundleBuilder(patient)
    for analysis in sorted(done, key=lambda a: (a.finished_at, a.pk)):
        builder.add_analysis(analysis)
    return builder.bundle(), len(done)


def operation_outcome(message: str, code: str = "conflict") -> dict:
    """FHIR's error body: what a FHIR client reads when there is no Bundle to give."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text(message)}],
    }
