"""Confirmed diagnoses: what a biopsy, a follow-up or experts found for an analysed lesion image.

`record_outcome` is the one way an entry is written (the analysis page's form, the API, seed_demo): the analysis
must be done, and the entry is append-only, so a correction is a new entry and the latest one counts. A
finished report is written again once a diagnosis is recorded, so that the PDF (and the FHIR export, which
carries the PDF) says what was found.
"""

import contextlib
from datetime import date

from django.db import transaction

from analysis.models import Analysis, Outcome

# Which class the common diagnoses belong to, as HAM10000 grouped them (Tschandl et al. 2018), for the form's
# help and the README. A diagnosis in none of them is "other", said in words.
WHICH_CLASS = [
    ("akiec", "actinic keratosis, Bowen's disease (squamous cell carcinoma in situ)"),
    ("bcc", "basal cell carcinoma, any subtype"),
    ("bkl", "seborrhoeic keratosis, solar lentigo, lichen planus-like keratosis"),
    ("df", "dermatofibroma"),
    ("mel", "melanoma, in situ or invasive, lentigo maligna"),
    ("nv", "melanocytic naevus of any kind, dysplastic naevus included"),
    ("vasc", "angioma, angiokeratoma, pyogenic granuloma, haemorrhage"),
    (Outcome.OTHER, "invasive squamous cell carcinoma, Merkel cell carcinoma, anything else: say which"),
]


class AnalysisNotDone(Exception):
    """Only a finished result has a diagnosis to compare with; the message says why, for a 409."""


def not_done_message(analysis: Analysis) -> str:
    return (
        f"Analysis {analysis.pk} is {analysis.get_status_display().lower()}, not done: a confirmed diagnosis is "
        "recorded for a finished result only."
    )


def record_outcome(
    analysis: Analysis,
    user,
    *,
    diagnosis: str,
    method: str,
    confirmed_on: date,
    other_diagnosis: str = "",
) -> Outcome:
    """Store a confirmed diagnosis (already validated: `Outcome.clean`) of a done analysis; AnalysisNotDone
    otherwise. An earlier entry stays as it was: this one counts from now on. The analysis's report, if written,
    is set aside and asked for again once this commits, so that it carries the diagnosis."""
    with transaction.atomic():
        locked = Analysis.objects.select_for_update().filter(pk=analysis.pk)
        status, old_report = locked.values_list("status", "report").get()
        if status != Analysis.Status.DONE:
            analysis.status = status
            raise AnalysisNotDone(not_done_message(analysis))
        outcome = Outcome(
            analysis=analysis,
            diagnosis=diagnosis,
            other_diagnosis=other_diagnosis if diagnosis == Outcome.OTHER else "",
            method=method,
            confirmed_on=confirmed_on,
            recorded_by=user,
        )
        outcome.save()
        locked.update(report=None, report_requested_at=None)
        transaction.on_commit(lambda: _render_again(analysis, old_report))
    analysis.report = None
    return outcome


def _render_again(analysis: Analysis, old_report: str | None) -> None:
    from workers.tasks import request_report  # as the views do: sent by name to the workers' queue

    if old_report:
        with contextlib.suppress(OSError):
            Analysis._meta.get_field("report").storage.delete(old_report)
    request_report(analysis.pk)
