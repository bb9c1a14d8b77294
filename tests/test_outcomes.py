"""Confirmed diagnoses: recorded on the analysis page and through the API, append-only, scoped to the clinic;
the dashboard lists the urgent results still waiting for one, and the PDF report and FHIR export carry it."""

import io
import re
from datetime import date, timedelta
from unittest import mock

import pytest
from django.contrib import admin
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import timezone

from analysis.models import Analysis, AppendOnlyError, AuditEvent, LesionImage, Outcome
from analysis.outcomes import record_outcome
from tests.factories import AnalysisFactory, LesionImageFactory, UserFactory
from tests.test_api import client_for
from workers import tasks

pytestmark = pytest.mark.django_db

A_WEEK_AGO = timezone.localdate() - timedelta(days=7)


def entry(**changes) -> dict:
    return {"diagnosis": "mel", "other_diagnosis": "", "method": "histo", "confirmed_on": A_WEEK_AGO, **changes}


@pytest.fixture
def queued(case, staff):
    return AnalysisFactory(image=LesionImageFactory(case=case, uploaded_by=staff))


@pytest.fixture
def render():
    with mock.patch.object(tasks.render_report, "apply_async") as render:
        yield render


# The analysis page


def test_staff_record_a_confirmed_diagnosis_on_the_analysis_page(
    client, staff, analysis, render, django_capture_on_commit_callbacks
):
    client.force_login(staff)
    page = client.get(reverse("analysis-detail", args=[analysis.pk])).content.decode()
    assert "Record the confirmed diagnosis" in page

    old_report = analysis.report.name
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("analysis-outcome", args=[analysis.pk]), entry(method="follow_up"))

    assert response.status_code == 302
    outcome = Outcome.objects.get()
    assert (outcome.analysis, outcome.diagnosis, outcome.method, outcome.confirmed_on, outcome.recorded_by) == (
        analysis,
        "mel",
        "follow_up",
        A_WEEK_AGO,
        staff,
    )
    event = AuditEvent.objects.get(action="created", object_type="outcome")
    assert (event.object_id, event.patient_id, event.user) == (outcome.pk, analysis.image.case.patient_id, staff)
    # The report is written again, now with the diagnosis; the old file is gone.
    analysis.refresh_from_db()
    assert not analysis.report and not analysis.report.storage.exists(old_report)
    render.assert_called_once_with((analysis.pk,), retry=False)
    page = client.get(reverse("analysis-detail", args=[analysis.pk])).content.decode()
    assert "Melanoma</strong>" in page and "Follow-up" in page and "Correct the confirmed diagnosis" in page


def test_the_analyses_list_says_which_results_have_a_confirmed_diagnosis(client, staff, case, analysis, render):
    from tests.factories import finish

    unconfirmed = finish(AnalysisFactory(image=LesionImageFactory(case=case, uploaded_by=staff)))
    record_outcome(analysis, staff, **entry(diagnosis="nv"))
    record_outcome(analysis, staff, **entry(diagnosis="bcc"))  # the correction counts
    client.force_login(staff)
    rows = client.get(reverse("analysis-list")).content.decode().split("<tr>")
    row = next(r for r in rows if f'href="{reverse("analysis-detail", args=[analysis.pk])}"' in r)
    other = next(r for r in rows if f'href="{reverse("analysis-detail", args=[unconfirmed.pk])}"' in r)
    assert "confirmed: Basal cell carcinoma" in row and "confirmed: Melanocytic" not in row
    assert "confirmed:" not in other


def test_the_form_says_which_class_the_common_diagnoses_belong_to(client, staff, analysis):
    client.force_login(staff)
    page = client.get(reverse("analysis-detail", args=[analysis.pk])).content.decode()
    for words in ["seborrhoeic keratosis", "Bowen&#x27;s disease", "invasive squamous cell carcinoma"]:
        assert words in page
    for method in ["Histopathology", "Follow-up", "Expert consensus", "Confocal microscopy"]:
        assert method in page


def test_a_correction_keeps_the_earlier_entry_and_the_latest_counts(client, staff, colleague, analysis, render):
    client.force_login(staff)
    client.post(reverse("analysis-outcome", args=[analysis.pk]), entry(diagnosis="nv"))
    client.force_login(colleague)
    client.post(
        reverse("analysis-outcome", args=[analysis.pk]),
        entry(diagnosis="other", other_diagnosis="Invasive squamous cell carcinoma"),
    )

    first, second = Outcome.objects.order_by("recorded_at", "pk")
    assert (first.diagnosis, first.recorded_by, second.diagnosis, second.recorded_by) == (
        "nv",
        staff,
        "other",
        colleague,
    )
    assert list(Outcome.objects.current()) == [second]
    page = client.get(reverse("analysis-detail", args=[analysis.pk])).content.decode()
    assert "<strong>Invasive squamous cell carcinoma</strong>" in page
    assert "Earlier entries, corrected since (1)" in page and "Melanocytic nevus" in page


def test_an_analysis_in_the_api_carries_the_diagnosis_that_counts(api, staff, case, analysis, render):
    from tests.factories import finish

    unconfirmed = finish(AnalysisFactory(image=LesionImageFactory(case=case, uploaded_by=staff)))
    detail = reverse("api:analysis-detail", args=[analysis.pk])
    assert api.get(detail).json()["confirmed_diagnosis"] is None
    post(api, analysis, diagnosis="nv", method="follow_up")
    post(api, analysis, diagnosis="mel")  # the correction counts
    confirmed = api.get(detail).json()["confirmed_diagnosis"]
    latest = Outcome.objects.filter(analysis=analysis).first()
    assert confirmed == {
        "id": latest.pk,
        "diagnosis": "mel",
        "diagnosis_words": "Melanoma",
        "method": "histo",
        "confirmed_on": str(A_WEEK_AGO),
        "recorded_at": api.get(reverse("api:outcome-detail", args=[latest.pk])).json()["recorded_at"],
    }
    listed = {row["id"]: row["confirmed_diagnosis"] for row in api.get(reverse("api:analysis-list")).json()["results"]}
    assert listed[analysis.pk]["diagnosis"] == "mel" and listed[unconfirmed.pk] is None


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"diagnosis": "scc"}, "diagnosis", "Select a valid choice"),
        ({"diagnosis": ""}, "diagnosis", "This field is required"),
        ({"method": "guess"}, "method", "Select a valid choice"),
        ({"confirmed_on": timezone.localdate() + timedelta(days=1)}, "confirmed_on", "cannot be in the future"),
        ({"confirmed_on": "yesterday"}, "confirmed_on", "Enter a valid date"),
        ({"diagnosis": "other"}, "other_diagnosis", "Say what the diagnosis was"),
        ({"other_diagnosis": "SCC"}, "other_diagnosis", "Leave this empty for one of the 7 classes"),
    ],
)
def test_bad_input_on_the_page_is_said_next_to_its_field_and_stores_nothing(
    client, staff, analysis, render, changes, field, message
):
    client.force_login(staff)
    response = client.post(reverse("analysis-outcome", args=[analysis.pk]), entry(**changes))
    assert response.status_code == 400
    assert message in str(response.context["outcome_form"].errors[field])
    assert message in response.content.decode()
    assert not Outcome.objects.exists()
    analysis.refresh_from_db()
    assert analysis.report  # the finished report stays
    render.assert_not_called()


def test_a_date_before_the_image_was_taken_is_refused(client, staff, analysis):
    LesionImage.objects.filter(pk=analysis.image_id).update(captured_at=timezone.now())
    client.force_login(staff)
    response = client.post(reverse("analysis-outcome", args=[analysis.pk]), entry())
    assert response.status_code == 400
    assert "before the image was taken" in response.content.decode()
    assert not Outcome.objects.exists()


def test_an_analysis_that_is_not_done_takes_no_diagnosis_on_the_page(client, staff, queued):
    client.force_login(staff)
    assert "outcome-form" not in client.get(reverse("analysis-detail", args=[queued.pk])).content.decode()
    response = client.post(reverse("analysis-outcome", args=[queued.pk]), entry())
    assert response.status_code == 409
    assert "is queued, not done" in response.content.decode()
    assert not Outcome.objects.exists()


def test_outsider_gets_404_recording_a_diagnosis_for_another_clinics_analysis(client, outsider, analysis):
    client.force_login(outsider)
    response = client.post(reverse("analysis-outcome", args=[analysis.pk]), entry())
    assert response.status_code == 404
    assert not Outcome.objects.exists()
    assert AuditEvent.objects.filter(action="other_clinic", object_type="analysis", user=outsider).exists()


def test_recording_needs_a_post(client, staff, analysis):
    client.force_login(staff)
    assert client.get(reverse("analysis-outcome", args=[analysis.pk])).status_code == 405


# The record itself


def test_an_entry_is_never_changed_or_deleted(analysis, staff, render):
    outcome = record_outcome(analysis, staff, **entry())
    outcome.diagnosis = "nv"
    with pytest.raises(AppendOnlyError):
        outcome.save()
    with pytest.raises(AppendOnlyError):
        outcome.delete()
    with pytest.raises(AppendOnlyError):
        Outcome.objects.filter(pk=outcome.pk).update(diagnosis="nv")
    with pytest.raises(AppendOnlyError):
        Outcome.objects.all().delete()
    assert Outcome.objects.get().diagnosis == "mel"


def test_the_database_refuses_other_without_words_and_words_with_a_class(analysis, staff):
    from django.db import IntegrityError, transaction

    for bad in [entry(diagnosis="other"), entry(other_diagnosis="SCC")]:
        with pytest.raises(IntegrityError), transaction.atomic():
            Outcome.objects.create(analysis=analysis, recorded_by=staff, **bad)


# The API


@pytest.fixture
def api(staff):
    return client_for(staff)


def post(api, analysis, **changes):
    body = {"analysis": analysis.pk, **entry(**changes)}
    body["confirmed_on"] = str(body["confirmed_on"])
    return api.post(reverse("api:outcome-list"), body, format="json")


def test_the_api_records_reads_and_lists_confirmed_diagnoses(api, staff, analysis, render):
    response = post(api, analysis, diagnosis="bcc", method="consensus")
    assert response.status_code == 201, response.json()
    body = response.json()
    outcome = Outcome.objects.get()
    assert (outcome.diagnosis, outcome.method, outcome.recorded_by) == ("bcc", "consensus", staff)
    assert body["id"] == outcome.pk and body["current"] is True and body["recorded_by"] == staff.pk
    assert body["diagnosis_words"] == "Basal cell carcinoma" and body["patient"] == analysis.image.case.patient_id
    assert AuditEvent.objects.filter(action="created", object_type="outcome", object_id=outcome.pk).exists()

    read = api.get(reverse("api:outcome-detail", args=[outcome.pk]))
    assert read.status_code == 200 and read.json()["confirmed_on"] == str(A_WEEK_AGO)
    assert AuditEvent.objects.filter(action="viewed", object_type="outcome", object_id=outcome.pk).exists()


def test_the_api_lists_with_filters_and_says_which_entry_counts(api, staff, case, analysis, render):
    from tests.factories import finish

    other = finish(AnalysisFactory(image=LesionImageFactory(case=case, uploaded_by=staff)))
    post(api, analysis, diagnosis="nv")
    post(api, analysis, diagnosis="mel")  # a correction
    post(api, other, diagnosis="bkl", method="follow_up", confirmed_on=A_WEEK_AGO - timedelta(days=30))
    url = reverse("api:outcome-list")

    def listed(**params):
        response = api.get(url, params)
        assert response.status_code == 200, response.json()
        return [(row["diagnosis"], row["current"]) for row in response.json()["results"]]

    assert listed() == [("bkl", True), ("mel", True), ("nv", False)]
    assert listed(analysis=analysis.pk) == [("mel", True), ("nv", False)]
    assert listed(current="true") == [("bkl", True), ("mel", True)]
    assert listed(current="false") == [("nv", False)]
    assert listed(diagnosis="bkl") == [("bkl", True)]
    assert listed(method="histo") == [("mel", True), ("nv", False)]
    assert listed(confirmed_before=str(A_WEEK_AGO - timedelta(days=1))) == [("bkl", True)]
    assert listed(confirmed_after=str(A_WEEK_AGO), patient=case.patient_id) == [("mel", True), ("nv", False)]
    assert api.get(url, {"current": "maybe"}).status_code == 400
    reversed_range = api.get(url, {"confirmed_after": "2026-02-01", "confirmed_before": "2026-01-01"})
    assert reversed_range.status_code == 400 and "confirmed_before" in reversed_range.json()


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"diagnosis": "scc"}, "diagnosis", "is not a valid choice"),
        ({"method": "guess"}, "method", "is not a valid choice"),
        ({"confirmed_on": date.today() + timedelta(days=2)}, "confirmed_on", "cannot be in the future"),
        ({"diagnosis": "other"}, "other_diagnosis", "Say what the diagnosis was"),
        ({"other_diagnosis": "SCC"}, "other_diagnosis", "Leave this empty"),
    ],
)
def test_bad_input_to_the_api_is_400_naming_the_field_and_stores_nothing(api, analysis, changes, field, message):
    response = post(api, analysis, **changes)
    assert response.status_code == 400
    assert message in str(response.json()[field])
    assert not Outcome.objects.exists()


def test_the_api_answers_409_for_an_analysis_that_is_not_done(api, queued):
    response = post(api, queued)
    assert response.status_code == 409
    assert "is queued, not done" in response.json()["detail"]
    assert not Outcome.objects.exists()


def test_an_outsider_gets_404_for_another_clinics_outcome_and_400_for_its_analysis(outsider, analysis, staff, render):
    outcome = record_outcome(analysis, staff, **entry())
    outsider_api = client_for(outsider)
    assert outsider_api.get(reverse("api:outcome-detail", args=[outcome.pk])).status_code == 404
    assert outsider_api.get(reverse("api:outcome-list")).json()["results"] == []
    response = post(outsider_api, analysis)
    assert response.status_code == 400 and "does not exist" in str(response.json()["analysis"])
    assert Outcome.objects.count() == 1
    assert AuditEvent.objects.filter(action="other_clinic", object_type="outcome", user=outsider).exists()


def test_the_api_changes_and_deletes_no_entry(api, analysis, staff, render):
    outcome = record_outcome(analysis, staff, **entry())
    url = reverse("api:outcome-detail", args=[outcome.pk])
    assert api.patch(url, {"diagnosis": "nv"}, format="json").status_code == 405
    assert api.delete(url).status_code == 405
    assert Outcome.objects.get().diagnosis == "mel"


# The Django admin


def test_the_admin_shows_outcomes_read_only_and_records_the_read(client, analysis, staff, render):
    outcome = record_outcome(analysis, staff, **entry())
    root = UserFactory(username="root", is_superuser=True, is_staff=True)
    client.force_login(root)
    model_admin = admin.site._registry[Outcome]
    request = mock.Mock(user=root)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request, outcome)
    assert not model_admin.has_delete_permission(request, outcome)
    assert client.get(reverse("admin:analysis_outcome_changelist")).status_code == 200
    assert client.get(reverse("admin:analysis_outcome_change", args=[outcome.pk])).status_code == 200
    event = AuditEvent.objects.get(user=root, object_type="outcome")
    assert event.clinic == staff.membership.clinic and event.object_id == outcome.pk


# Closing the loop: the dashboard


def urgent_result(case, staff, days_ago: float, probabilities=None) -> Analysis:
    from tests.factories import PROBABILITIES, finish

    done = finish(
        AnalysisFactory(image=LesionImageFactory(case=case, uploaded_by=staff)), probabilities or PROBABILITIES
    )
    Analysis.objects.filter(pk=done.pk).update(finished_at=timezone.now() - timedelta(days=days_ago))
    return done


def overdue_on_dashboard(client) -> list[int]:
    section = client.get(reverse("home")).content.decode().split('id="overdue"')[1].split("</section>")[0]
    return [int(pk) for pk in re.findall(r'href="/analyses/(\d+)/"', section)]


def test_the_dashboard_lists_old_urgent_results_without_a_diagnosis_oldest_first(client, staff, case, render):
    routine = {"akiec": 0.01, "bcc": 0.01, "bkl": 0.01, "df": 0.01, "mel": 0.01, "nv": 0.94, "vasc": 0.01}
    recent = urgent_result(case, staff, days_ago=29)
    old = urgent_result(case, staff, days_ago=40)
    older = urgent_result(case, staff, days_ago=90)
    confirmed = urgent_result(case, staff, days_ago=60)
    old_routine = urgent_result(case, staff, days_ago=60, probabilities=routine)
    record_outcome(confirmed, staff, **entry())
    client.force_login(staff)

    assert overdue_on_dashboard(client) == [older.pk, old.pk]
    page = client.get(reverse("home")).content.decode()
    assert "Urgent results older than 30 days without a confirmed diagnosis (2)" in page
    assert recent.pk not in overdue_on_dashboard(client) and old_routine.risk_tier == "routine"

    record_outcome(older, staff, **entry(diagnosis="nv"))
    assert overdue_on_dashboard(client) == [old.pk]


def test_the_overdue_age_is_a_setting(client, staff, case, settings):
    settings.OUTCOME_OVERDUE_DAYS = 7
    week_old = urgent_result(case, staff, days_ago=8)
    client.force_login(staff)
    assert overdue_on_dashboard(client) == [week_old.pk]
    assert "older than 7 days" in client.get(reverse("home")).content.decode()


def test_the_dashboard_lists_no_other_clinics_overdue_results(client, outsider, case, staff):
    urgent_result(case, staff, days_ago=40)
    client.force_login(outsider)
    assert overdue_on_dashboard(client) == []


@pytest.mark.parametrize("value", ["0", "thirty"])
def test_a_bad_overdue_age_stops_start_up_naming_the_variable(value):
    from tests.test_settings import manage

    result = manage("check", OUTCOME_OVERDUE_DAYS=value)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured" in last_line and "OUTCOME_OVERDUE_DAYS" in last_line


# The PDF report and the FHIR export


def test_the_report_carries_the_confirmed_diagnosis_once_there_is_one(analysis, staff, colleague, render):
    from analysis import reports
    from tests.test_reports import body_text

    assert "Confirmed diagnosis" not in body_text(reports.render_pdf(Analysis.objects.get(pk=analysis.pk)))
    staff.first_name, staff.last_name = "Anna", "Berger"
    staff.save()
    record_outcome(analysis, staff, **entry(confirmed_on=date(2026, 3, 2)))
    text = body_text(reports.render_pdf(Analysis.objects.get(pk=analysis.pk)))
    assert (
        "Confirmed diagnosis: Melanoma (mel, malignant) · histopathology, 2 March 2026 · recorded by Anna Berger. "
        "The model's result below was made before it." in text
    )
    assert text.index("Confirmed diagnosis") < text.index("Most likely class")

    record_outcome(analysis, colleague, **entry(diagnosis="other", other_diagnosis="Invasive squamous cell carcinoma"))
    pdf = reports.render_pdf(Analysis.objects.get(pk=analysis.pk))
    assert "Confirmed diagnosis: Invasive squamous cell carcinoma · histopathology" in body_text(pdf)
    assert "correcting an earlier entry" in body_text(pdf)
    from pypdf import PdfReader

    assert len(PdfReader(io.BytesIO(pdf)).pages) == 1


def test_the_fhir_export_carries_the_confirmed_diagnosis_as_an_observation_with_its_method(
    api, analysis, staff, render
):
    from tests.test_fhir import by_url, codes, export, resources, valid

    bundle = export(api, reverse("api:analysis-fhir", args=[analysis.pk]))
    assert not [o for o in resources(bundle, "Observation") if o["id"].endswith("-confirmed")]

    record_outcome(analysis, staff, **entry(diagnosis="bcc", confirmed_on=date(2026, 3, 2)))
    analysis.report.save("r.pdf", ContentFile(b"%PDF-1.4 the report written again"))  # as the worker would
    bundle = export(api, reverse("api:analysis-fhir", args=[analysis.pk]))
    valid(bundle)
    (confirmed,) = [o for o in resources(bundle, "Observation") if o["id"].endswith("-confirmed")]
    assert confirmed["status"] == "final" and confirmed["effectiveDateTime"] == "2026-03-02"
    assert codes(confirmed["valueCodeableConcept"], "http://snomed.info/sct") == ["254701007"]
    assert codes(confirmed["valueCodeableConcept"], "urn:skinsite:fhir:lesion-class") == ["bcc"]
    assert confirmed["method"]["coding"] == [
        {"system": "urn:skinsite:fhir:diagnosis-method", "code": "histo", "display": "Histopathology"}
    ]
    (report,) = resources(bundle, "DiagnosticReport")
    assert confirmed in [by_url(bundle, ref) for ref in report["result"]]

    record_outcome(analysis, staff, **entry(diagnosis="other", other_diagnosis="Merkel cell carcinoma"))
    analysis.report.save("r.pdf", ContentFile(b"%PDF-1.4 the report written again"))
    bundle = export(api, reverse("api:analysis-fhir", args=[analysis.pk]))
    valid(bundle)
    (confirmed,) = [o for o in resources(bundle, "Observation") if o["id"].endswith("-confirmed")]
    assert confirmed["status"] == "corrected" and confirmed["valueCodeableConcept"]["text"] == "Merkel cell carcinoma"


def test_a_diagnosis_recorded_while_the_report_is_drawn_has_it_drawn_again(case, staff, render, monkeypatch):
    from analysis import reports
    from tests.factories import finish

    analysis = finish(AnalysisFactory(image=LesionImageFactory(case=case, uploaded_by=staff)))  # no report yet
    drawn = []

    def render_pdf(being_drawn):
        drawn.append(being_drawn.outcomes.count())
        if len(drawn) == 1:  # staff record a diagnosis meanwhile: there is no report yet to set aside
            record_outcome(Analysis.objects.get(pk=analysis.pk), staff, **entry())
        return b"%PDF-1.4 with " + str(drawn[-1]).encode() + b" diagnoses"

    monkeypatch.setattr(reports, "render_pdf", render_pdf)
    assert reports.store_report(Analysis.objects.get(pk=analysis.pk))

    assert drawn == [0, 1]
    stored = Analysis.objects.get(pk=analysis.pk)
    with stored.report.open("rb") as handle:
        assert handle.read() == b"%PDF-1.4 with 1 diagnoses"
    assert len(stored.report.storage.listdir("reports")[1]) == 1  # the first drawing is gone
