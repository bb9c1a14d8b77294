"""The PDF report of an analysis (WeasyPrint): what leaves the building, into a patient's file or a referral.

Rendered once by a worker right after the analysis (never inside a web request) and stored with it.
The model's measured accuracy comes from the shipped model card (metrics.json), never typed in.
"""

import base64
import io
import json
import re
from datetime import date
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from django.conf import settings
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.utils.text import slugify

from analysis.classes import CLASS_NAMES, MALIGNANT
from analysis.models import Analysis
from ml.serve import tiers
from ml.serve.labels import age_band

DISCLAIMER = (
    "Screening aid only, not a diagnosis. This result comes from a machine-learning model, not from a "
    "clinician. It must be interpreted by a qualified clinician together with the patient's history and "
    "examination; a lesion of concern is biopsied or referred whatever the model says."
)


@lru_cache(maxsize=4)
def _model_card(path: Path, mtime: float) -> dict:
    return json.loads(path.read_text())


def shipped_card() -> dict | None:
    """The shipped model card's figures (metrics.json); None when it is missing."""
    path = Path(settings.MODEL_METRICS)
    if not path.exists():
        return None
    return _model_card(path, path.stat().st_mtime)


def card_of(version: str) -> dict | None:
    """The shipped metrics.json if it is that model version's; None when it is missing or belongs to another
    version (an analysis made by an older model)."""
    card = shipped_card()
    return card if card is not None and card.get("model_version") == version else None


def model_card_figures(version: str) -> dict | None:
    """Test accuracy and balanced accuracy of a model version, from the shipped metrics.json; None without
    that version's card."""
    card = card_of(version)
    if card is None:
        return None
    return {
        "accuracy": card["test"]["accuracy"],
        "balanced_accuracy": card["test"]["balanced_accuracy"],
        "melanoma_recall": card["test"]["melanoma_recall"],
        "n": card["test"]["n"],
    }


def years_between(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def similar_lesions(analysis: Analysis) -> list[dict]:
    """What the model card measured on the test lesions most like this one: those on the same body site, of
    patients of the same sex, and of the same age band when the image was taken (ml.evaluate's figures by
    patient and lesion). A group the case does not name (unknown site, sex or birth date) or the card lacks is
    left out; empty without that version's card."""
    card = card_of(analysis.model_version)
    groups = (card or {}).get("subgroups") or {}
    image = analysis.image
    case, patient = image.case, image.case.patient
    taken = timezone.localtime(image.captured_at or image.uploaded_at, ZoneInfo(patient.clinic.time_zone)).date()
    age = years_between(patient.date_of_birth, taken) if patient.date_of_birth else None
    band = age_band(age)
    wanted = [
        ("body_site", case.body_site, case.get_body_site_display()),
        ("sex", patient.sex, patient.get_sex_display()),
        ("age", band, f"Aged {band}"),
    ]
    found = []
    for key, group, words in wanted:
        row = next((r for r in groups.get(key, []) if r["group"] == group and group != "unknown"), None)
        if row:
            found.append({"words": words, **row})
    return found


TIER_MEANING = {
    Analysis.RiskTier.URGENT: "The malignant probability is at or above the urgent threshold: review promptly.",
    Analysis.RiskTier.UNCERTAIN: (
        "The malignant probability lies between the thresholds, or the image was flagged: a clinician should "
        "judge this lesion without leaning on the model."
    ),
    Analysis.RiskTier.ROUTINE: "The malignant probability is below the routine threshold.",
}

FLAGGED_WARNING = (
    "This image may not be a dermoscopic lesion image of the kind the model was made for. Its result must not be "
    "relied on; take a new dermoscopic photograph if possible."
)


def tier_reason(analysis: Analysis) -> str:
    """Why the result sits in its tier, in words, where the most likely class alone would tell another story:
    an urgent result whose single most likely class is benign, a routine one whose class is malignant, and a
    flagged image (always uncertain, its class not to be relied on). Empty when the class agrees."""
    if analysis.status != Analysis.Status.DONE or not analysis.risk_tier:
        return ""
    name = CLASS_NAMES[analysis.predicted_class]
    together = (
        f"melanoma, basal cell carcinoma and actinic keratosis together reach {analysis.malignant_probability:.1%}"
    )
    summary = triage_summary(analysis.model_version)
    if analysis.flagged:
        return (
            "Uncertain because the quality check flagged the image: its most likely class "
            f"({name}, {analysis.confidence:.1%}) is not to be relied on."
        )
    top_is_malignant = analysis.predicted_class in MALIGNANT
    if analysis.risk_tier == Analysis.RiskTier.URGENT and not top_is_malignant:
        threshold = f", at or above the urgent threshold of {summary['urgent_threshold']:.1%}" if summary else ""
        return (
            f"Urgent because {together}{threshold}, although the single most likely class ({name}, "
            f"{analysis.confidence:.1%}) is benign."
        )
    if analysis.risk_tier == Analysis.RiskTier.ROUTINE and top_is_malignant:
        threshold = f", below the routine threshold of {summary['routine_threshold']:.1%}" if summary else ""
        return (
            f"Routine because {together} only{threshold}, although the single most likely class ({name}, "
            f"{analysis.confidence:.1%}) is malignant."
        )
    return ""


def triage_summary(version: str) -> dict | None:
    """The triage thresholds and what they measured on the held-out test set, for the model version that made
    an analysis; None for another version (the thresholds belong to one model)."""
    summary = tiers.load_triage().describe()
    if summary.get("model_version") != version:
        return None
    return summary | {"explanation": _triage_sentence(summary)}


def _triage_sentence(summary: dict) -> str:
    """The thresholds and what they caught on the held-out test set, in one sentence for staff and reports."""
    urgent = summary["test"]["urgent"]
    flagged_or_not_routine = summary["test"]["urgent_or_uncertain"]
    return (
        f"Urgent from a malignant probability of {summary['urgent_threshold']:.1%}, routine below "
        f"{summary['routine_threshold']:.1%} (chosen on the validation set). On the held-out HAM10000 test set "
        f"({summary['test']['n']} images) the urgent tier caught {urgent['melanoma_sensitivity']['value']:.0%} of "
        f"melanomas, whatever their most likely class, and {urgent['malignant_sensitivity']['value']:.0%} of "
        f"malignant lesions (specificity {urgent['malignant_specificity']['value']:.0%}); urgent or uncertain "
        f"caught {flagged_or_not_routine['malignant_sensitivity']['value']:.0%} of malignant lesions."
    )


MELANOMA_FIGURES = (
    "Two melanoma figures, two questions: melanoma recall is the share of test melanomas whose single most likely "
    "class was melanoma; the urgent tier's share counts every test melanoma whose malignant probability reached the "
    "urgent threshold, whatever its most likely class. The tier is the safer net, and the one this result's "
    "headline follows."
)


def file_name(analysis: Analysis) -> str:
    patient = analysis.image.case.patient
    day = timezone.localtime(analysis.finished_at or analysis.created_at, ZoneInfo(patient.clinic.time_zone))
    parts = [
        "skinsite",
        slugify(patient.clinic.name),
        slugify(patient.mrn),
        f"{day:%Y-%m-%d}",
        f"analysis-{analysis.pk}",
    ]
    return re.sub(r"[^A-Za-z0-9._-]", "", "_".join(p for p in parts if p)) + ".pdf"


def css_string(text: str) -> str:
    """A quoted CSS string literal of any text (page footers are set in CSS, where HTML escaping does not apply).

    Anything but a plain printable character is hex-escaped: quotes, backslash, the CSS newlines (\\n \\r \\f)
    that would end the string and let a clinic name or MRN inject CSS, other controls, and < > & for the
    HTML <style> around it. The space after each escape ends it and is consumed with it."""
    escaped = "".join(c if c.isprintable() and c not in "\"'\\<>&" else f"\\{ord(c):X} " for c in text)
    return f'"{escaped}"'


# Control characters other than tab and line breaks (which HTML and CSS fold into spaces). Printed, each would be a
# missing-glyph box that also spoils the PDF's text layer; a stray one in an MRN or a name becomes a space.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class RefusedReportURL(ValueError):
    pass


def check_report_url(url: str) -> None:
    """A report embeds its pictures as data: URLs and needs nothing else; WeasyPrint would otherwise fetch any
    http:, https: or file: URL that reaches the document, from the worker."""
    if not url.lower().startswith("data:"):
        raise RefusedReportURL(f"a report loads only data: URLs, not {url[:80]!r}")


def report_url_fetcher():
    """WeasyPrint's own fetcher, for the URLs check_report_url allows."""
    from weasyprint.urls import URLFetcher  # workers only, like render_pdf

    class ReportURLFetcher(URLFetcher):
        def fetch(self, url, headers=None):
            check_report_url(url)
            return super().fetch(url, headers)

    return ReportURLFetcher()


def _image_data_uri(analysis: Analysis) -> str:
    """The picture as the model saw it: upright (EXIF orientation applied) and in RGB, whatever the stored
    original is (CMYK, 16-bit, alpha), so the PDF shows what a browser shows and what was classified."""
    from ml.serve.preprocess import load_image  # numpy and Pillow work: workers only, like WeasyPrint

    with analysis.image.image.open("rb") as handle:
        picture = load_image(handle)
    picture.thumbnail((1600, 1600))  # plenty for a print; keeps a large original from bloating the PDF
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=92)
    return f"data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def _png_data_uri(field) -> str:
    with field.open("rb") as handle:
        return f"data:image/png;base64,{base64.b64encode(handle.read()).decode()}"


def render_pdf(analysis: Analysis) -> bytes:
    from weasyprint import HTML  # only workers render; the web process never loads WeasyPrint

    image = analysis.image
    case = image.case
    patient = case.patient
    tz = ZoneInfo(patient.clinic.time_zone)
    rows = sorted(
        (
            {"code": c, "name": CLASS_NAMES[c], "p": p, "percent": round(100 * p, 1), "malignant": c in MALIGNANT}
            for c, p in analysis.probabilities.items()
        ),
        key=lambda r: r["p"],
        reverse=True,
    )
    outcomes = list(analysis.outcomes.select_related("recorded_by")[:2])
    footer = f"{patient.clinic.name} · report {analysis.pk} · MRN {patient.mrn}"
    # The template's date filter writes every time in the active zone: the clinic's, as its pages and FHIR do
    # (a worker's own zone is the server's).
    with timezone.override(tz):
        html = render_to_string(
            "reports/analysis.html",
            {
                "analysis": analysis,
                "image": image,
                "case": case,
                "patient": patient,
                "clinic": patient.clinic,
                "analysed_at": analysis.finished_at,
                "printed_at": timezone.now(),
                "time_zone": patient.clinic.time_zone,
                "predicted_name": CLASS_NAMES[analysis.predicted_class],
                "confidence_percent": round(100 * analysis.confidence, 1),
                "malignant_percent": round(100 * (analysis.malignant_probability or 0), 1),
                "rows": rows,
                "image_uri": _image_data_uri(analysis),
                "heatmap_uri": _png_data_uri(analysis.heatmap) if analysis.has_heatmap else None,
                "tier_meaning": TIER_MEANING.get(analysis.risk_tier),
                "tier_reason": tier_reason(analysis),
                "top_is_malignant": analysis.predicted_class in MALIGNANT,
                "melanoma_figures": MELANOMA_FIGURES,
                "captured_at": image.captured_at,
                "uploaded_at": image.uploaded_at,
                "triage": triage_summary(analysis.model_version) if analysis.risk_tier else None,
                "flagged_warning": FLAGGED_WARNING,
                "card": model_card_figures(analysis.model_version),
                "similar": similar_lesions(analysis),
                "disclaimer": DISCLAIMER,
                # What a biopsy or follow-up found (analysis.outcomes), once recorded: the latest entry counts.
                "outcome": outcomes[0] if outcomes else None,
                "outcome_corrects": len(outcomes) > 1,
                "footer_css": mark_safe(css_string(_CONTROL_CHARACTERS.sub(" ", footer))),
            },
        )
    html = _CONTROL_CHARACTERS.sub(" ", html)
    return HTML(string=html, url_fetcher=report_url_fetcher()).write_pdf()


def store_report(analysis: Analysis) -> bool:
    """Render and attach the report (``Analysis.attach_report``: never offered half-written, never two of one
    analysis); False when another render attached its report first. A confirmed diagnosis recorded while the
    report was being drawn (analysis.outcomes.record_outcome found no report to set aside yet) has it drawn
    again, so that a stored report never lacks the latest diagnosis."""
    for _ in range(3):
        drawn_with = _latest_outcome(analysis)
        if not analysis.attach_report(render_pdf(analysis)):
            return False
        if _latest_outcome(analysis) == drawn_with:
            return True
        name = analysis.report.name
        if Analysis.objects.filter(pk=analysis.pk, report=name).update(report=None):
            analysis.report.storage.delete(name)
        analysis.report = None
    return True


def _latest_outcome(analysis: Analysis) -> int | None:
    return analysis.outcomes.values_list("pk", flat=True).first()
