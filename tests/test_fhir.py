"""The FHIR R4 export: every Bundle parses as valid R4 (fhir.resources, FHIR 4.0.1), its references resolve
inside it, its values are the stored ones, it is scoped to the clinic and recorded, and a result that is not
finished answers 409 instead of an empty Bundle.

fhir.resources checks structure, types and cardinality but not the codes of required bindings (a gender of
"femalex" passes it), so those are checked here: `REQUIRED_CODES`."""

import base64
import hashlib
import json
from datetime import datetime
from decimal import Decimal
from unittest import mock

import pytest
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.test import Client
from django.utils import timezone

from analysis import fhir
from analysis.models import Analysis, AuditEvent, Patient
from ml.serve import tiers
from tests.factories import AnalysisFactory, CaseFactory, LesionImageFactory, PatientFactory, finish
from tests.test_api import PROBABILITIES, client_for
from workers import tasks

fhir_resources = pytest.importorskip("fhir.resources", reason="fhir.resources (a test requirement) is missing")
from fhir.resources.bundle import Bundle  # noqa: E402
from fhir.resources.operationoutcome import OperationOutcome  # noqa: E402

pytestmark = pytest.mark.django_db

TAKEN = datetime(2026, 3, 14, 9, 26, 53, tzinfo=timezone.get_fixed_timezone(0))
HOSTILE_NAME = 'Zoë "O\'Brien" <script>alert(1)</script> ]]> {"resourceType": "Group"} \u202eevil \U0001f600'
HOSTILE_NOTES = 'Itchy since May.\n<img src=x onerror=alert(1)> & "}]} --\n\tDROP TABLE analysis_patient;'


# R4's required bindings for the coded fields the export sets.
REQUIRED_CODES = {
    ("Patient", "gender"): {"male", "female", "other", "unknown"},
    ("DiagnosticReport", "status"): {"registered", "partial", "preliminary", "final", "amended", "corrected"}
    | {"appended", "cancelled", "entered-in-error", "unknown"},
    ("Observation", "status"): {"registered", "preliminary", "final", "amended", "corrected", "cancelled"}
    | {"entered-in-error", "unknown"},
    ("Media", "status"): {"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed"}
    | {"entered-in-error", "unknown"},
    ("Bundle", "type"): {"document", "message", "transaction", "transaction-response", "batch", "batch-response"}
    | {"history", "searchset", "collection"},
}


def test_the_stored_sexes_are_fhirs_administrative_genders():
    assert set(Patient.Sex.values) == REQUIRED_CODES[("Patient", "gender")]


def test_the_fhir_library_is_r4():
    assert fhir_resources.__fhir_version__ == fhir.FHIR_VERSION == "4.0.1"


@pytest.fixture
def api(staff):
    return client_for(staff)


@pytest.fixture
def case(patient, staff):
    return CaseFactory(patient=patient, clinician=staff, body_site="face", clinical_notes=HOSTILE_NOTES)


@pytest.fixture
def analysis(case):
    image = LesionImageFactory(case=case, captured_at=TAKEN)
    return finish(AnalysisFactory(image=image), PROBABILITIES, report=True)


def export(client, url: str) -> dict:
    response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("application/fhir+json")
    assert response["Content-Disposition"].startswith("attachment;")
    assert response["Cache-Control"] == "private, no-store"
    return json.loads(response.content)


def valid(bundle: dict) -> Bundle:
    """The Bundle as fhir.resources reads it (every resource validated against R4), after checking that every
    reference in it names an entry of it."""
    parsed = Bundle.parse_obj(bundle)
    for resource in [bundle] + [entry["resource"] for entry in bundle["entry"]]:
        for (kind, field), allowed in REQUIRED_CODES.items():
            if resource["resourceType"] == kind:
                assert resource[field] in allowed, (kind, field, resource[field])
    urls = [entry["fullUrl"] for entry in bundle["entry"]]
    assert len(urls) == len(set(urls))
    references = list(_references(bundle))
    assert references
    for reference in references:
        assert reference in urls, f"{reference} is not in the Bundle"
    return parsed


def _references(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference":
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def resources(bundle: dict, kind: str) -> list[dict]:
    return [entry["resource"] for entry in bundle["entry"] if entry["resource"]["resourceType"] == kind]


def by_url(bundle: dict, reference: dict) -> dict:
    return next(entry["resource"] for entry in bundle["entry"] if entry["fullUrl"] == reference["reference"])


def codes(concept: dict, system: str) -> list[str]:
    return [c["code"] for c in concept["coding"] if c["system"] == system]


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_an_analysis_exports_as_a_valid_r4_bundle_of_what_is_stored(api, analysis):
    bundle = export(api, f"/api/analyses/{analysis.pk}/fhir/")
    parsed = valid(bundle)
    assert parsed.type == "collection"
    analysis.refresh_from_db()
    image, case, patient = analysis.image, analysis.image.case, analysis.image.case.patient

    [person] = resources(bundle, "Patient")
    [identifier] = person["identifier"]
    assert identifier["value"] == patient.mrn
    assert identifier["system"] == patient.clinic.mrn_identifier_system
    assert codes(identifier["type"], "http://terminology.hl7.org/CodeSystem/v2-0203") == ["MR"]
    assert person["name"] == [{"text": patient.name}]
    assert person["gender"] == patient.sex
    assert person.get("birthDate") == (patient.date_of_birth.isoformat() if patient.date_of_birth else None)

    [report] = resources(bundle, "DiagnosticReport")
    assert report["status"] == "final"
    assert by_url(bundle, report["subject"]) is person
    assert by_url(bundle, report["performer"][0])["name"] == patient.clinic.name
    assert moment(report["effectiveDateTime"]) == image.captured_at
    assert moment(report["issued"]).replace(microsecond=0) == analysis.finished_at.replace(microsecond=0)
    assert report["identifier"] == [{"system": fhir.ANALYSIS_IDENTIFIER, "value": str(analysis.pk)}]
    [pdf] = report["presentedForm"]
    assert pdf["contentType"] == "application/pdf"
    with analysis.report.open("rb") as handle:
        assert base64.b64decode(pdf["data"]) == handle.read()
    assert base64.b64decode(pdf["hash"]) == hashlib.sha1(base64.b64decode(pdf["data"])).digest()
    assert "Screening aid only, not a diagnosis" in report["conclusion"]
    assert report["conclusion"].startswith(f"Triage: {analysis.get_risk_tier_display()}")
    # The verdict first; mel, the top class of this urgent result, agrees with it: SNOMED CT's malignant
    # melanoma, beside our own code.
    verdict, top_class = report["conclusionCode"]
    assert codes(verdict, fhir.LOCAL_TIER) == ["urgent"]
    assert verdict["text"].startswith("Urgent: suspicious for malignancy")
    assert codes(top_class, fhir.SNOMED) == ["372244006"]
    assert codes(top_class, fhir.LOCAL_CLASS) == ["mel"]

    [media] = resources(bundle, "Media")
    assert report["media"][0]["link"]["reference"] == next(
        entry["fullUrl"] for entry in bundle["entry"] if entry["resource"] is media
    )
    with image.image.open("rb") as handle:
        assert base64.b64decode(media["content"]["data"]) == handle.read()
    assert media["content"]["contentType"] == "image/jpeg"
    assert moment(media["createdDateTime"]) == image.captured_at
    assert (media["width"], media["height"]) == (image.width, image.height)
    assert codes(media["bodySite"], fhir.SNOMED) == ["89545001"]  # face
    assert codes(media["bodySite"], fhir.LOCAL_BODY_SITE) == ["face"]
    assert media["note"] == [{"text": f"Case notes: {case.clinical_notes}"}]

    observations = {o["id"]: o for o in resources(bundle, "Observation")}
    assert len(observations) == 8
    assert [r["reference"] for r in report["result"]] == [
        entry["fullUrl"] for entry in bundle["entry"] if entry["resource"]["resourceType"] == "Observation"
    ]
    for code, p in analysis.probabilities.items():
        observation = observations[f"analysis-{analysis.pk}-{code}"]
        assert codes(observation["code"], f"{fhir.LOCAL}:class-probability") == [code]
        assert observation["valueQuantity"]["value"] == p
        assert observation["derivedFrom"] == [report["media"][0]["link"]]
    tier = observations[f"analysis-{analysis.pk}-triage"]
    assert codes(tier["valueCodeableConcept"], fhir.LOCAL_TIER) == [analysis.risk_tier]
    assert tier["component"][0]["valueQuantity"]["value"] == analysis.malignant_probability
    assert tier["derivedFrom"] == [report["media"][0]["link"]]

    [device] = resources(bundle, "Device")
    assert device["version"] == [{"value": analysis.model_version}]
    assert all(by_url(bundle, o["device"]) is device for o in observations.values())

    # Parsed as fhir.resources reads decimals: the same numbers.
    parsed_values = {
        e.resource.id: e.resource.valueQuantity.value
        for e in parsed.entry
        if e.resource.resource_type == "Observation"
        if e.resource.valueQuantity
    }
    assert parsed_values[f"analysis-{analysis.pk}-mel"] == Decimal(str(PROBABILITIES["mel"]))


def test_the_export_is_recorded_in_the_audit_trail(api, analysis, staff):
    export(api, f"/api/analyses/{analysis.pk}/fhir/")
    event = AuditEvent.objects.get(action=AuditEvent.Action.DOWNLOADED)
    assert (event.user, event.object_type, event.object_id) == (staff, "analysis", analysis.pk)
    assert event.patient_id == analysis.image.case.patient_id
    assert event.description == f"FHIR R4 export of analysis {analysis.pk}"


def test_the_same_record_exports_under_the_same_ids(api, analysis):
    first = export(api, f"/api/analyses/{analysis.pk}/fhir/")
    second = export(api, f"/api/analyses/{analysis.pk}/fhir/")
    assert [e["fullUrl"] for e in first["entry"]] == [e["fullUrl"] for e in second["entry"]]


def test_hostile_names_and_notes_survive_as_data(api, staff):
    patient = PatientFactory(clinic=staff.membership.clinic, name=HOSTILE_NAME, mrn='M"1</x>')
    case = CaseFactory(patient=patient, clinical_notes=HOSTILE_NOTES + "\x07bell")
    analysis = finish(AnalysisFactory(image=LesionImageFactory(case=case)), PROBABILITIES, report=True)
    bundle = export(api, f"/api/analyses/{analysis.pk}/fhir/")
    valid(bundle)
    [person] = resources(bundle, "Patient")
    assert person["name"] == [{"text": HOSTILE_NAME}]
    assert person["identifier"][0]["value"] == 'M"1</x>'
    [media] = resources(bundle, "Media")
    # FHIR strings hold no control characters but tab, CR and LF: the bell becomes a space, the rest stays.
    assert f"Case notes: {HOSTILE_NOTES} bell" in [note["text"] for note in media["note"]]


def test_an_unknown_capture_time_is_said_and_not_invented(api, patient):
    analysis = finish(AnalysisFactory(image=LesionImageFactory(case=CaseFactory(patient=patient))), report=True)
    bundle = export(api, f"/api/analyses/{analysis.pk}/fhir/")
    valid(bundle)
    [report] = resources(bundle, "DiagnosticReport")
    [media] = resources(bundle, "Media")
    assert "effectiveDateTime" not in report and "createdDateTime" not in media
    assert moment(media["issued"]).replace(microsecond=0) == analysis.image.uploaded_at.replace(microsecond=0)
    assert "was not recorded" in media["note"][0]["text"]


def test_a_flagged_image_is_coded_as_uncertain_and_never_by_its_class(api, patient):
    flags = ["The image is almost uniform: it may be blank."]
    analysis = finish(
        AnalysisFactory(image=LesionImageFactory(case=CaseFactory(patient=patient))),
        report=True,
        quality_flags=flags,
    )
    bundle = export(api, f"/api/analyses/{analysis.pk}/fhir/")
    valid(bundle)
    [report] = resources(bundle, "DiagnosticReport")
    [verdict] = report["conclusionCode"]
    assert codes(verdict, fhir.LOCAL_TIER) == ["uncertain"] and verdict["coding"] == [verdict["coding"][0]]
    assert verdict["text"].startswith("Uncertain: the image was flagged by the quality check, no finding")
    assert report["conclusion"].startswith("Triage: Uncertain")
    assert "flagged by the quality check (The image is almost uniform" in report["conclusion"]
    tier = next(o for o in resources(bundle, "Observation") if o["id"].endswith("-triage"))
    assert codes(tier["valueCodeableConcept"], fhir.LOCAL_TIER) == ["uncertain"]
    assert flags[0] in tier["note"][0]["text"]


def test_an_urgent_result_with_a_benign_top_class_is_coded_as_suspicious_never_as_its_class(api, patient):
    probabilities = {"akiec": 0.02, "bcc": 0.02, "bkl": 0.03, "df": 0.01, "mel": 0.30, "nv": 0.60, "vasc": 0.02}
    assert tiers.malignant_probability(probabilities) >= tiers.load_triage().urgent_threshold
    analysis = finish(
        AnalysisFactory(image=LesionImageFactory(case=CaseFactory(patient=patient))), probabilities, report=True
    )
    [report] = resources(export(api, f"/api/analyses/{analysis.pk}/fhir/"), "DiagnosticReport")
    assert report["conclusion"].startswith("Triage: Urgent (malignant probability 34.0%).")
    assert "Urgent although the single most likely class is benign" in report["conclusion"]
    # An EHR filing by the coded conclusion files a suspicion of malignancy, not a melanocytic naevus.
    [verdict] = report["conclusionCode"]
    assert verdict["coding"] == [{"system": fhir.LOCAL_TIER, "code": "urgent", "display": "Urgent"}]
    assert verdict["text"] == (
        "Urgent: suspicious for malignancy (melanoma, basal cell carcinoma or actinic keratosis), review promptly "
        "(malignant probability 34.0%)"
    )
    assert "400096001" not in json.dumps(report["conclusionCode"])


def test_a_routine_result_is_coded_as_routine_and_by_its_class_only_where_the_class_is_benign(api, patient):
    melanoma_below = {"akiec": 0.005, "bcc": 0.005, "bkl": 0.199, "df": 0.197, "mel": 0.2, "nv": 0.197, "vasc": 0.197}
    naevus = {"akiec": 0.01, "bcc": 0.01, "bkl": 0.05, "df": 0.01, "mel": 0.02, "nv": 0.89, "vasc": 0.01}
    conclusion_codes = {}
    for probabilities in (melanoma_below, naevus):
        analysis = finish(
            AnalysisFactory(image=LesionImageFactory(case=CaseFactory(patient=patient))), probabilities, report=True
        )
        assert analysis.risk_tier == "routine"
        bundle = export(api, f"/api/analyses/{analysis.pk}/fhir/")
        valid(bundle)
        [report] = resources(bundle, "DiagnosticReport")
        conclusion_codes[analysis.predicted_class] = [
            codes(concept, fhir.LOCAL_TIER) + codes(concept, fhir.LOCAL_CLASS) + codes(concept, fhir.SNOMED)
            for concept in report["conclusionCode"]
        ]

    assert conclusion_codes == {"mel": [["routine"]], "nv": [["routine"], ["nv", "400096001"]]}


def test_a_patient_exports_every_done_analysis_in_one_bundle(api, patient, staff):
    first = finish(AnalysisFactory(image=LesionImageFactory(case=CaseFactory(patient=patient))), report=True)
    image = LesionImageFactory(case=CaseFactory(patient=patient, body_site="acral"))
    second = finish(AnalysisFactory(image=image), report=True)
    rerun = finish(AnalysisFactory(image=image), report=True)  # the same image analysed again
    AnalysisFactory(image=LesionImageFactory(case=first.image.case))  # still queued: not exported
    AnalysisFactory(image=LesionImageFactory(case=CaseFactory(patient=PatientFactory(clinic=patient.clinic))))

    bundle = export(api, f"/api/patients/{patient.pk}/fhir/")
    valid(bundle)
    assert len(resources(bundle, "Patient")) == 1
    reports = resources(bundle, "DiagnosticReport")
    assert sorted(r["identifier"][0]["value"] for r in reports) == sorted(str(a.pk) for a in (first, second, rerun))
    assert len(resources(bundle, "Media")) == 2  # each image once
    assert len(resources(bundle, "Observation")) == 3 * 8
    acral = next(m for m in resources(bundle, "Media") if m["id"] == f"image-{image.pk}")
    assert codes(acral["bodySite"], fhir.SNOMED) == []  # no single SNOMED CT concept: our own code only
    assert codes(acral["bodySite"], fhir.LOCAL_BODY_SITE) == ["acral"]
    event = AuditEvent.objects.get(action=AuditEvent.Action.DOWNLOADED)
    assert (event.object_type, event.object_id, event.user) == ("patient", patient.pk, staff)
    assert event.description == "FHIR R4 export of 3 analyses"


def test_a_clinics_own_mrn_system_names_its_patients(api, analysis):
    clinic = analysis.image.case.patient.clinic
    clinic.mrn_system = "urn:oid:1.2.40.0.34.99.4613.3"
    clinic.save()
    [person] = resources(export(api, f"/api/analyses/{analysis.pk}/fhir/"), "Patient")
    assert person["identifier"][0]["system"] == "urn:oid:1.2.40.0.34.99.4613.3"


def test_a_clinics_mrn_system_must_be_a_uri(analysis):
    clinic = analysis.image.case.patient.clinic
    clinic.mrn_system = "our MRNs"
    with pytest.raises(ValidationError, match="is not a URI"):
        clinic.full_clean()


@pytest.mark.parametrize("url", ["/api/analyses/{analysis}/fhir/", "/api/patients/{patient}/fhir/"])
def test_outsiders_get_404_and_leave_no_export(outsider, analysis, url):
    response = client_for(outsider).get(url.format(analysis=analysis.pk, patient=analysis.image.case.patient_id))
    assert response.status_code == 404
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.DOWNLOADED).exists()


def test_anonymous_callers_get_401(analysis):
    assert Client().get(f"/api/analyses/{analysis.pk}/fhir/").status_code == 401


def test_an_analysis_not_done_answers_409_with_an_operation_outcome(api, case):
    analysis = AnalysisFactory(image=LesionImageFactory(case=case))
    response = api.get(f"/api/analyses/{analysis.pk}/fhir/")
    assert response.status_code == 409
    assert response["Content-Type"].startswith("application/fhir+json")
    outcome = OperationOutcome.parse_obj(response.json())
    assert outcome.issue[0].code == "conflict"
    assert "is queued, not done" in outcome.issue[0].diagnostics
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.DOWNLOADED).exists()

    patient = api.get(f"/api/patients/{case.patient_id}/fhir/")
    assert patient.status_code == 409
    assert "no finished analysis" in patient.json()["issue"][0]["diagnostics"]


def test_a_done_analysis_waiting_for_its_report_answers_409_and_asks_for_it(api, case):
    analysis = finish(AnalysisFactory(image=LesionImageFactory(case=case)))
    with mock.patch.object(tasks.render_report, "apply_async") as render:
        response = api.get(f"/api/analyses/{analysis.pk}/fhir/")
    assert response.status_code == 409
    assert "still being written" in response.json()["issue"][0]["diagnostics"]
    render.assert_called_once_with((analysis.pk,), retry=False)

    analysis.report.save("r.pdf", ContentFile(b"%PDF-1.4 the report"))
    assert api.get(f"/api/analyses/{analysis.pk}/fhir/").status_code == 200


def test_the_analysis_page_offers_the_same_file(staff, outsider, analysis):
    page = Client()
    page.force_login(staff)
    html = page.get(f"/analyses/{analysis.pk}/").content.decode()
    assert f'id="fhir-link" class="button secondary" href="/analyses/{analysis.pk}/fhir.json"' in html
    downloaded = export(page, f"/analyses/{analysis.pk}/fhir.json")
    valid(downloaded)
    from_api = export(client_for(staff), f"/api/analyses/{analysis.pk}/fhir/")
    for bundle in (downloaded, from_api):
        del bundle["meta"], bundle["timestamp"]
    assert downloaded == from_api

    stranger = Client()
    stranger.force_login(outsider)
    assert stranger.get(f"/analyses/{analysis.pk}/fhir.json").status_code == 404


def test_the_page_hides_the_button_until_the_report_is_written(staff, case):
    analysis = finish(AnalysisFactory(image=LesionImageFactory(case=case)))
    page = Client()
    page.force_login(staff)
    with mock.patch.object(tasks.render_report, "apply_async"):
        html = page.get(f"/analyses/{analysis.pk}/").content.decode()
    assert 'id="fhir-link" class="button secondary"' in html
    assert f'href="/analyses/{analysis.pk}/fhir.json" hidden' in html
    assert Analysis.objects.get(pk=analysis.pk).status == Analysis.Status.DONE
