"""The clinic staff pages: who sees what, what a form stores, what an upload refuses."""

import io
import json
import re
import zoneinfo
from datetime import UTC, date, datetime, timedelta
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from analysis.models import Analysis, Case, LesionImage, Patient
from tests.factories import AnalysisFactory, CaseFactory, LesionImageFactory, PatientFactory, finish, jpeg_upload
from workers import tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def analysis(case, staff):
    return AnalysisFactory(image=LesionImageFactory(case=case, uploaded_by=staff))


@pytest.fixture
def done_analysis(analysis):
    return finish(analysis)


def page_urls(patient, case, analysis) -> dict[str, str]:
    """Every clinic page that shows a row, by name."""
    return {
        "patient": reverse("patient-detail", args=[patient.pk]),
        "patient edit": reverse("patient-edit", args=[patient.pk]),
        "case": reverse("case-detail", args=[case.pk]),
        "image": reverse("image-file", args=[analysis.image.pk]),
        "analysis": reverse("analysis-detail", args=[analysis.pk]),
        "analysis status": reverse("analysis-status", args=[analysis.pk]),
    }


def post_urls(patient, case) -> dict[str, str]:
    return {
        "open case": reverse("case-create", args=[patient.pk]),
        "close case": reverse("case-close", args=[case.pk]),
        "reopen case": reverse("case-reopen", args=[case.pk]),
        "upload": reverse("case-upload", args=[case.pk]),
        "annotate": reverse("case-detail", args=[case.pk]),
    }


# Access: the trio


@pytest.mark.parametrize("who", ["staff", "colleague"])
def test_staff_and_colleague_open_every_page_of_their_clinic(client, request, who, patient, case, analysis):
    client.force_login(request.getfixturevalue(who))
    for name, url in page_urls(patient, case, analysis).items():
        assert client.get(url).status_code == 200, name
    for url in ["/", reverse("patient-list"), reverse("patient-create"), reverse("analysis-list")]:
        assert client.get(url).status_code == 200, url


def test_outsider_gets_404_for_every_page_of_another_clinic(client, outsider, patient, case, analysis):
    client.force_login(outsider)
    for name, url in page_urls(patient, case, analysis).items():
        assert client.get(url).status_code == 404, name


def test_outsider_gets_404_for_every_action_on_another_clinics_rows(client, outsider, patient, case):
    client.force_login(outsider)
    for name, url in post_urls(patient, case).items():
        data = {"body_site": "face", "clinical_notes": "x", "images": jpeg_upload("x.jpg", (200, 150))}
        assert client.post(url, data).status_code == 404, name
    case.refresh_from_db()
    assert case.status == Case.Status.OPEN and case.clinical_notes == ""
    assert Case.objects.count() == 1 and LesionImage.objects.count() == 0
    response = client.post(reverse("patient-edit", args=[patient.pk]), {"name": "Changed", "mrn": "X"})
    assert response.status_code == 404
    patient.refresh_from_db()
    assert patient.name != "Changed"


def test_outsider_lists_do_not_show_another_clinics_rows(client, outsider, patient, done_analysis):
    client.force_login(outsider)
    for url in ["/", reverse("patient-list"), reverse("analysis-list") + "?patient=" + patient.mrn]:
        assert patient.name not in client.get(url).content.decode(), url


def test_anonymous_visitors_are_sent_to_sign_in_for_every_page(client, patient, case, analysis):
    for name, url in page_urls(patient, case, analysis).items():
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), name


def test_a_user_without_a_clinic_cannot_create_patients(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("loner", password="x"))
    assert client.post(reverse("patient-create"), {"name": "A", "mrn": "1"}).status_code == 404
    assert Patient.objects.count() == 0


# Patients


def test_staff_creates_a_patient_in_their_own_clinic(client, staff):
    client.force_login(staff)
    response = client.post(
        reverse("patient-create"),
        {"name": "Ada Muster", "mrn": "A-100", "sex": "female", "date_of_birth": "1970-03-04"},
    )
    patient = Patient.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("patient-detail", args=[patient.pk])
    assert (patient.clinic, patient.name, patient.mrn, str(patient.date_of_birth)) == (
        staff.membership.clinic,
        "Ada Muster",
        "A-100",
        "1970-03-04",
    )


def test_a_duplicate_mrn_in_the_same_clinic_is_refused_next_to_the_field(client, staff, patient):
    client.force_login(staff)
    response = client.post(reverse("patient-create"), {"name": "Other", "mrn": patient.mrn, "sex": "unknown"})
    assert response.status_code == 200
    assert "already has this medical record number" in response.content.decode()
    assert Patient.objects.count() == 1


def test_the_same_mrn_is_fine_in_another_clinic(client, outsider, patient):
    client.force_login(outsider)
    client.post(reverse("patient-create"), {"name": "Other", "mrn": patient.mrn, "sex": "unknown"})
    assert Patient.objects.filter(mrn=patient.mrn).count() == 2


def test_colleague_edits_a_patient(client, colleague, patient):
    client.force_login(colleague)
    client.post(reverse("patient-edit", args=[patient.pk]), {"name": "New Name", "mrn": patient.mrn, "sex": "male"})
    patient.refresh_from_db()
    assert (patient.name, patient.sex) == ("New Name", "male")


def test_patient_search_finds_by_name_and_mrn(client, staff):
    clinic = staff.membership.clinic
    PatientFactory(clinic=clinic, name="Maria Gruber", mrn="G-1")
    PatientFactory(clinic=clinic, name="Hans Huber", mrn="H-2")
    client.force_login(staff)
    assert [p.name for p in client.get(reverse("patient-list"), {"q": "grub"}).context["page"]] == ["Maria Gruber"]
    assert [p.name for p in client.get(reverse("patient-list"), {"q": "h-2"}).context["page"]] == ["Hans Huber"]


def test_patient_list_is_paginated(client, staff):
    for i in range(30):
        PatientFactory(clinic=staff.membership.clinic, name=f"Patient {i:02d}")
    client.force_login(staff)
    first = client.get(reverse("patient-list")).context["page"]
    second = client.get(reverse("patient-list"), {"page": 2}).context["page"]
    assert (len(first), len(second), first.paginator.num_pages) == (25, 5, 2)


def test_patient_page_shows_the_case_history_with_images_and_results(client, staff, patient, case, done_analysis):
    client.force_login(staff)
    html = client.get(reverse("patient-detail", args=[patient.pk])).content.decode()
    assert "Back" in html  # body site
    assert reverse("image-file", args=[done_analysis.image.pk]) in html
    assert "Melanoma" in html and "81.0%" in html and "Urgent" in html  # the tier heads each result


# Cases


def test_staff_opens_annotates_closes_and_reopens_a_case(client, staff, patient):
    client.force_login(staff)
    response = client.post(reverse("case-create", args=[patient.pk]), {"body_site": "face", "opened_on": "2026-01-02"})
    case = Case.objects.get()
    assert response["Location"] == reverse("case-detail", args=[case.pk])
    assert (case.patient, case.body_site, case.clinician, case.status) == (patient, "face", staff, "open")

    client.post(reverse("case-detail", args=[case.pk]), {"body_site": "neck", "clinical_notes": "Irregular border."})
    case.refresh_from_db()
    assert (case.body_site, case.clinical_notes) == ("neck", "Irregular border.")

    client.post(reverse("case-close", args=[case.pk]))
    case.refresh_from_db()
    assert case.status == "closed" and case.closed_on is not None

    client.post(reverse("case-reopen", args=[case.pk]))
    case.refresh_from_db()
    assert case.status == "open" and case.closed_on is None


def test_closing_a_case_needs_a_post(client, staff, case):
    client.force_login(staff)
    assert client.get(reverse("case-close", args=[case.pk])).status_code == 405
    case.refresh_from_db()
    assert case.status == "open"


# Uploads


def image_bytes(kind: str, size=(200, 150)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "sienna").save(buffer, kind)
    return buffer.getvalue()


def test_uploading_one_image_queues_an_analysis_and_shows_it(client, staff, case, django_capture_on_commit_callbacks):
    client.force_login(staff)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("case-upload", args=[case.pk]), {"images": jpeg_upload("a.jpg", (200, 150))})
    analysis = Analysis.objects.get()
    assert response["Location"] == reverse("analysis-detail", args=[analysis.pk])
    assert (analysis.status, analysis.image.case, analysis.image.uploaded_by) == ("queued", case, staff)
    assert len(callbacks) == 1  # sent to the workers once the transaction committed


def test_uploading_several_images_makes_one_analysis_each(client, staff, case):
    client.force_login(staff)
    files = [jpeg_upload("a.jpg", (200, 150)), SimpleUploadedFile("b.png", image_bytes("PNG"), "image/png")]
    response = client.post(reverse("case-upload", args=[case.pk]), {"images": files})
    assert response["Location"] == reverse("case-detail", args=[case.pk])
    assert sorted(LesionImage.objects.values_list("original_filename", flat=True)) == ["a.jpg", "b.png"]
    assert Analysis.objects.filter(status="queued").count() == 2


@pytest.mark.parametrize(
    "upload, message",
    [
        (lambda: SimpleUploadedFile("a.gif", image_bytes("GIF"), "image/gif"), "only JPG and PNG"),
        (lambda: SimpleUploadedFile("a.jpg", b"not an image at all", "image/jpeg"), "could not be read"),
        (lambda: SimpleUploadedFile("a.jpg", image_bytes("JPEG")[:300], "image/jpeg"), "could not be read"),
        (lambda: jpeg_upload("tiny.jpg", (20, 20)), "at least 64 pixels"),
        (lambda: SimpleUploadedFile("empty.jpg", b"", "image/jpeg"), "empty"),
    ],
    ids=["wrong type", "not an image", "truncated", "too small", "empty"],
)
def test_a_bad_upload_is_refused_next_to_the_field_and_nothing_is_saved(client, staff, case, upload, message):
    client.force_login(staff)
    response = client.post(reverse("case-upload", args=[case.pk]), {"images": upload()})
    assert response.status_code == 400
    errors = " ".join(response.context["upload_form"].errors["images"])
    assert message in errors
    assert message in response.content.decode().replace("&#x27;", "'")
    assert LesionImage.objects.count() == 0 and Analysis.objects.count() == 0


def test_a_too_big_upload_is_refused(client, staff, case, settings):
    settings.MAX_UPLOAD_BYTES = 1000
    client.force_login(staff)
    response = client.post(reverse("case-upload", args=[case.pk]), {"images": jpeg_upload("big.jpg", (400, 300))})
    assert response.status_code == 400
    assert "the limit is" in " ".join(response.context["upload_form"].errors["images"])
    assert LesionImage.objects.count() == 0


def test_one_bad_image_among_several_saves_none(client, staff, case):
    client.force_login(staff)
    files = [jpeg_upload("good.jpg", (200, 150)), SimpleUploadedFile("bad.jpg", b"junk", "image/jpeg")]
    response = client.post(reverse("case-upload", args=[case.pk]), {"images": files})
    assert response.status_code == 400
    assert "bad.jpg" in response.content.decode()
    assert LesionImage.objects.count() == 0 and Analysis.objects.count() == 0


def test_a_closed_case_takes_no_images(client, staff, case):
    case.close()
    client.force_login(staff)
    response = client.post(reverse("case-upload", args=[case.pk]), {"images": jpeg_upload("a.jpg", (200, 150))})
    assert response.status_code == 400
    assert LesionImage.objects.count() == 0


# Images and analyses


def test_the_image_is_streamed_to_its_clinic(client, colleague, analysis):
    client.force_login(colleague)
    response = client.get(reverse("image-file", args=[analysis.image.pk]))
    assert response["Content-Type"] == "image/jpeg"
    assert b"".join(response.streaming_content)[:2] == b"\xff\xd8"


def test_media_files_have_no_public_url(client, staff, analysis):
    client.force_login(staff)
    assert client.get("/private-media/" + analysis.image.image.name).status_code == 404
    assert client.get("/media/" + analysis.image.image.name).status_code == 404


def test_analysis_page_shows_the_full_result_with_the_disclaimer_first(client, staff, done_analysis):
    client.force_login(staff)
    html = client.get(reverse("analysis-detail", args=[done_analysis.pk])).content.decode()
    assert html.index("Medical disclaimer") < html.index("Melanoma")
    for text in [
        "Melanoma",
        "81.0%",
        "Urgent",
        "(a malignant class)",
        "test-model-1",
        "Melanocytic nevus",
        "Dermatofibroma",
    ]:
        assert text in html, text
    assert html.count('class="bar"') == 7


def test_analysis_page_gives_the_cards_figures_for_test_lesions_like_this_one(
    client, staff, analysis, settings, tmp_path
):
    from tests.test_reports import SUBGROUPS

    patient = analysis.image.case.patient
    patient.sex, patient.date_of_birth = "male", date(1990, 6, 1)
    patient.save()
    analysis.image.captured_at = datetime(2022, 3, 1, 12, tzinfo=UTC)  # aged 31 then
    analysis.image.save()
    card = tmp_path / "metrics.json"
    card.write_text(json.dumps({"model_version": "test-model-1", "test": {}, "subgroups": SUBGROUPS}))
    settings.MODEL_METRICS = card
    client.force_login(staff)
    url = reverse("analysis-detail", args=[analysis.pk])
    assert 'id="similar"' not in client.get(url).content.decode()  # no result yet, no figures beside it
    finish(analysis)
    html = client.get(url).content.decode()
    rows = re.findall(r"<tr><th scope=\"row\">(.*?)</th><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", html)
    assert rows == [
        ("Back", "405", "76.5%", "39 of 62"),
        ("Male", "1074", "75.2%", "77 of 141"),
        ("Aged 30-49", "706", "85.0%", "16 of 41"),
    ]
    analysis.image.case.body_site = "hand"  # a site where the test part held no melanoma
    analysis.image.case.save()
    html = client.get(url).content.decode()
    assert '<tr><th scope="row">Hand</th><td>19</td><td>84.2%</td><td>no melanomas</td></tr>' in html


def test_opening_a_done_analysis_is_remembered_once(client, staff, colleague, done_analysis):
    client.force_login(colleague)
    client.get(reverse("analysis-detail", args=[done_analysis.pk]))
    done_analysis.refresh_from_db()
    first = done_analysis.opened_at
    assert first is not None and done_analysis.opened_by == colleague
    client.force_login(staff)
    client.get(reverse("analysis-detail", args=[done_analysis.pk]))
    done_analysis.refresh_from_db()
    assert (done_analysis.opened_at, done_analysis.opened_by) == (first, colleague)


def test_opening_a_queued_analysis_does_not_count_as_seeing_the_result(client, staff, analysis):
    client.force_login(staff)
    client.get(reverse("analysis-detail", args=[analysis.pk]))
    analysis.refresh_from_db()
    assert analysis.opened_at is None


def test_the_status_endpoint_follows_the_analysis(client, staff, analysis):
    client.force_login(staff)
    url = reverse("analysis-status", args=[analysis.pk])
    assert client.get(url).json() | {"id": 0} == {
        "id": 0,
        "status": "queued",
        "status_display": "Queued",
        "finished": False,
        "report_url": None,
    }
    finish(analysis)
    data = client.get(url).json()
    assert (data["status"], data["finished"]) == ("done", True)


def test_dashboard_counts_work_in_progress_and_lists_unopened_urgent_results(client, staff, case, done_analysis):
    AnalysisFactory(image=LesionImageFactory(case=case))
    running = AnalysisFactory(image=LesionImageFactory(case=case))
    Analysis.claim(running.pk)
    client.force_login(staff)
    response = client.get("/")
    assert response.context["in_progress"] == {
        "queued": 1,
        "running": 1,
        "unopened_urgent": 1,
        "unopened_uncertain": 0,
    }
    assert list(response.context["unopened"]) == [done_analysis]

    client.get(reverse("analysis-detail", args=[done_analysis.pk]))
    response = client.get("/")
    assert response.context["in_progress"]["unopened_urgent"] == 0
    assert list(response.context["unopened"]) == []


def test_past_analyses_filter_by_class_malignancy_status_patient_and_date(client, staff, patient, done_analysis):
    other_patient = PatientFactory(clinic=patient.clinic, name="Zed Other", mrn="Z-9")
    queued = AnalysisFactory(image=LesionImageFactory(case=CaseFactory(patient=other_patient)))
    client.force_login(staff)

    def ids(**params):
        return [a.pk for a in client.get(reverse("analysis-list"), params).context["page"]]

    today = done_analysis.created_at.date().isoformat()
    assert ids() == [queued.pk, done_analysis.pk]
    assert ids(predicted_class="mel") == [done_analysis.pk]
    assert ids(malignant="on") == [done_analysis.pk]
    assert ids(status="queued") == [queued.pk]
    assert ids(patient="Z-9") == [queued.pk]
    assert ids(patient=patient.name[:4]) == [done_analysis.pk]
    assert ids(date_from=today, date_to=today) == [queued.pk, done_analysis.pk]
    assert ids(date_to="2000-01-01") == []
    assert ids(predicted_class="not-a-class") == [queued.pk, done_analysis.pk]  # a bad filter filters nothing


def test_password_change_works(client, staff):
    client.force_login(staff)
    response = client.post(
        reverse("password_change"),
        {
            "old_password": "correct horse battery staple",
            "new_password1": "a much better passphrase 42",
            "new_password2": "a much better passphrase 42",
        },
    )
    assert response["Location"] == reverse("password_change_done")
    staff.refresh_from_db()
    assert staff.check_password("a much better passphrase 42")


def test_times_are_shown_in_the_clinics_time_zone(client, staff, done_analysis):
    clinic = staff.membership.clinic
    clinic.time_zone = "Pacific/Auckland"
    clinic.save()
    client.force_login(staff)
    html = client.get(reverse("analysis-detail", args=[done_analysis.pk])).content.decode()
    local = done_analysis.image.uploaded_at.astimezone(zoneinfo.ZoneInfo("Pacific/Auckland"))
    assert f"Uploaded {local:%-d %b %Y %H:%M}" in html


def test_a_result_waits_for_its_report_and_asks_again_for_one_that_never_came(client, staff, done_analysis):
    client.force_login(staff)
    url = reverse("analysis-detail", args=[done_analysis.pk])
    with mock.patch.object(tasks.render_report, "apply_async") as render:
        assert "being written" in client.get(url).content.decode()
    render.assert_not_called()  # the worker is writing it right now

    Analysis.objects.filter(pk=done_analysis.pk).update(finished_at=done_analysis.finished_at - timedelta(hours=1))
    with mock.patch.object(tasks.render_report, "apply_async") as render:
        assert "being written" in client.get(url).content.decode()
    render.assert_called_once_with((done_analysis.pk,), retry=False)

    with mock.patch.object(tasks.render_report, "apply_async") as render:  # asked already: not again so soon
        assert "being written" in client.get(url).content.decode()
    render.assert_not_called()

    Analysis.objects.filter(pk=done_analysis.pk).update(report_requested_at=timezone.now() - timedelta(hours=1))
    with mock.patch.object(tasks.render_report, "apply_async", side_effect=ConnectionError("broker down")):
        assert "could not be requested" in client.get(url).content.decode()
