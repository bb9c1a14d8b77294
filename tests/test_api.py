"""The REST API: token auth, clinic scoping (outsiders get 404, anonymous callers 401), field errors as JSON."""

import datetime as dt
import io
from unittest import mock

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import OperationalError
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from analysis.models import Analysis, Case, LesionImage, Patient
from tests.factories import (
    AnalysisFactory,
    CaseFactory,
    LesionImageFactory,
    MembershipFactory,
    PatientFactory,
    UserFactory,
    finish,
    jpeg_upload,
)
from workers import tasks

pytestmark = pytest.mark.django_db

PROBABILITIES = {"akiec": 0.02, "bcc": 0.03, "bkl": 0.05, "df": 0.01, "mel": 0.7, "nv": 0.18, "vasc": 0.01}


def client_for(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(staff):
    return client_for(staff)


@pytest.fixture
def outsider_api(outsider):
    return client_for(outsider)


@pytest.fixture
def anonymous():
    return APIClient()


@pytest.fixture
def analysis(case):
    return AnalysisFactory(image=LesionImageFactory(case=case))


def done(analysis: Analysis, probabilities=PROBABILITIES) -> Analysis:
    return finish(analysis, probabilities)


# Token


def test_token_is_issued_for_username_and_password_and_authenticates_requests(staff, anonymous, patient):
    response = anonymous.post(
        "/api/auth/token/", {"username": "staff", "password": "correct horse battery staple"}, format="json"
    )
    assert response.status_code == 200
    token = response.json()["token"]
    assert Token.objects.get(user=staff).key == token

    anonymous.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert anonymous.get("/api/patients/").json()["results"][0]["id"] == patient.pk


def test_token_request_with_a_wrong_password_is_400_and_issues_nothing(staff, anonymous):
    response = anonymous.post("/api/auth/token/", {"username": "staff", "password": "wrong"}, format="json")
    assert response.status_code == 400
    assert "non_field_errors" in response.json()
    assert not Token.objects.exists()


def test_token_request_without_a_username_names_the_field(anonymous):
    response = anonymous.post("/api/auth/token/", {"password": "x"}, format="json")
    assert response.status_code == 400
    assert "username" in response.json()


def test_a_bad_token_is_401(anonymous):
    anonymous.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert anonymous.get("/api/patients/").status_code == 401


def test_session_login_works_for_the_browser(staff, patient):
    client = APIClient()
    client.force_login(staff)
    assert client.get(f"/api/patients/{patient.pk}/").status_code == 200


def test_a_user_without_a_clinic_is_refused_with_403(patient):
    response = client_for(UserFactory(is_superuser=True)).get("/api/patients/")
    assert response.status_code == 403
    assert "clinic" in response.json()["detail"]


@pytest.mark.parametrize(
    "method, url",
    [
        ("get", "/api/patients/"),
        ("post", "/api/patients/"),
        ("get", "/api/patients/{patient}/"),
        ("patch", "/api/patients/{patient}/"),
        ("get", "/api/cases/"),
        ("post", "/api/cases/"),
        ("get", "/api/cases/{case}/"),
        ("patch", "/api/cases/{case}/"),
        ("get", "/api/images/"),
        ("post", "/api/images/"),
        ("get", "/api/images/{image}/"),
        ("get", "/api/analyses/"),
        ("get", "/api/analyses/{analysis}/"),
        ("get", "/api/analyses/{analysis}/report/"),
    ],
)
def test_anonymous_callers_get_401_everywhere(anonymous, analysis, method, url):
    ids = {"patient": analysis.image.case.patient_id, "case": analysis.image.case_id, "image": analysis.image_id}
    response = getattr(anonymous, method)(url.format(analysis=analysis.pk, **ids))
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize(
    "method, url",
    [
        ("get", "/api/patients/{patient}/"),
        ("patch", "/api/patients/{patient}/"),
        ("put", "/api/patients/{patient}/"),
        ("get", "/api/cases/{case}/"),
        ("patch", "/api/cases/{case}/"),
        ("get", "/api/images/{image}/"),
        ("get", "/api/analyses/{analysis}/"),
        ("get", "/api/analyses/{analysis}/report/"),
    ],
)
def test_outsider_gets_404_for_other_clinics_rows(outsider_api, analysis, method, url):
    done(analysis)
    analysis.report.save("r.pdf", ContentFile(b"%PDF-1.4 test"))
    ids = {"patient": analysis.image.case.patient_id, "case": analysis.image.case_id, "image": analysis.image_id}
    response = getattr(outsider_api, method)(url.format(analysis=analysis.pk, **ids), {"name": "Changed"})
    assert response.status_code == 404
    assert "detail" in response.json()
    assert Patient.objects.get(pk=ids["patient"]).name != "Changed"


def test_outsider_lists_are_empty(outsider_api, analysis):
    for url in ["/api/patients/", "/api/cases/", "/api/images/", "/api/analyses/"]:
        assert outsider_api.get(url).json()["results"] == []


# Patients


def test_staff_creates_a_patient_in_their_own_clinic(api, staff, outsider):
    response = api.post(
        "/api/patients/",
        {
            "mrn": "A-1",
            "name": "Ada Lovelace",
            "date_of_birth": "1980-12-10",
            "sex": "female",
            "clinic": outsider.membership.clinic.pk,  # ignored: the clinic is always the caller's
        },
        format="json",
    )
    assert response.status_code == 201
    stored = Patient.objects.get(pk=response.json()["id"])
    assert stored.clinic == staff.membership.clinic
    assert (stored.mrn, stored.name, stored.date_of_birth, stored.sex) == (
        "A-1",
        "Ada Lovelace",
        dt.date(1980, 12, 10),
        "female",
    )


def test_a_patient_without_date_of_birth_or_sex_is_stored_as_the_page_and_the_model_allow(api, client, staff):
    response = api.post("/api/patients/", {"mrn": "A-1", "name": "Ada"}, format="json")
    client.force_login(staff)
    page = client.post(reverse("patient-create"), {"mrn": "A-2", "name": "Bea", "sex": "unknown"})

    assert (response.status_code, page.status_code) == (201, 302)
    stored = Patient.objects.order_by("mrn").values_list("mrn", "date_of_birth", "sex")
    assert list(stored) == [("A-1", None, "unknown"), ("A-2", None, "unknown")]
    assert response.json()["date_of_birth"] is None


@pytest.mark.parametrize("typed", ["same", "other case", "spaces around"])
def test_a_duplicate_mrn_in_the_clinic_is_400_naming_mrn_whatever_its_case(api, patient, typed):
    patient.mrn = "Mrn-4711"
    patient.save()
    mrn = {"same": "Mrn-4711", "other case": "mRN-4711", "spaces around": "  MRN-4711 "}[typed]
    response = api.post(
        "/api/patients/",
        {"mrn": mrn, "name": "Someone", "date_of_birth": "1970-01-01", "sex": "male"},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["mrn"] == ["Another patient of this clinic already has this medical record number."]
    assert Patient.objects.count() == 1


def test_the_same_mrn_in_another_clinic_is_fine(outsider_api, patient):
    response = outsider_api.post(
        "/api/patients/",
        {"mrn": patient.mrn, "name": "Someone", "date_of_birth": "1970-01-01", "sex": "male"},
        format="json",
    )
    assert response.status_code == 201


def test_a_bad_sex_and_a_future_birth_date_are_named(api):
    tomorrow = timezone.localdate() + dt.timedelta(days=1)
    response = api.post(
        "/api/patients/",
        {"mrn": "A-1", "name": "Ada", "date_of_birth": tomorrow.isoformat(), "sex": "x"},
        format="json",
    )
    assert response.status_code == 400
    assert set(response.json()) == {"date_of_birth", "sex"}


def test_staff_lists_retrieves_and_updates_their_clinics_patients(api, colleague, patient):
    PatientFactory()  # another clinic's
    listed = api.get("/api/patients/").json()
    assert listed["count"] == 1
    assert [p["id"] for p in listed["results"]] == [patient.pk]

    assert api.get(f"/api/patients/{patient.pk}/").json()["mrn"] == patient.mrn
    response = client_for(colleague).patch(f"/api/patients/{patient.pk}/", {"notes": "allergic"}, format="json")
    assert response.status_code == 200
    patient.refresh_from_db()
    assert patient.notes == "allergic"


def test_patients_can_be_found_by_mrn(api, patient, staff):
    PatientFactory(clinic=staff.membership.clinic)
    assert [p["id"] for p in api.get("/api/patients/", {"mrn": patient.mrn}).json()["results"]] == [patient.pk]


def test_lists_are_paginated(api, staff):
    PatientFactory.create_batch(51, clinic=staff.membership.clinic)
    first = api.get("/api/patients/").json()
    assert first["count"] == 51
    assert len(first["results"]) == 50
    assert first["next"].endswith("?page=2")
    assert len(api.get("/api/patients/", {"page": 2}).json()["results"]) == 1
    assert api.get("/api/patients/", {"page": 3}).status_code == 404


def test_a_json_body_over_the_limit_is_413_json(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = api.post(
        "/api/patients/", {"mrn": "A", "name": "x" * 2000, "date_of_birth": "1970-01-01", "sex": "male"}, format="json"
    )
    assert response.status_code == 413
    assert "too large" in response.json()["detail"]
    assert not Patient.objects.exists()


# Cases


def test_staff_opens_a_case_and_is_its_clinician_by_default(api, staff, patient):
    response = api.post("/api/cases/", {"patient": patient.pk, "body_site": "back"}, format="json")
    assert response.status_code == 201
    case = Case.objects.get(pk=response.json()["id"])
    assert (case.patient, case.body_site, case.clinician, case.status) == (patient, "back", staff, "open")


def test_a_case_can_name_a_colleague_as_clinician_but_not_an_outsider(api, colleague, outsider, patient):
    ok = api.post("/api/cases/", {"patient": patient.pk, "body_site": "face", "clinician": colleague.pk}, format="json")
    assert ok.status_code == 201
    assert Case.objects.get(pk=ok.json()["id"]).clinician == colleague
    bad = api.post("/api/cases/", {"patient": patient.pk, "body_site": "face", "clinician": outsider.pk}, format="json")
    assert bad.status_code == 400
    assert "clinician" in bad.json()


def test_a_case_for_another_clinics_patient_is_400_naming_patient_like_a_missing_one(api, outsider):
    foreign = PatientFactory(clinic=outsider.membership.clinic)
    response = api.post("/api/cases/", {"patient": foreign.pk, "body_site": "back"}, format="json")
    missing = api.post("/api/cases/", {"patient": 999999, "body_site": "back"}, format="json")
    assert response.status_code == missing.status_code == 400
    assert list(response.json()) == ["patient"]
    assert response.json()["patient"] == [m.replace("999999", str(foreign.pk)) for m in missing.json()["patient"]]
    assert not Case.objects.exists()


def test_a_case_with_an_unknown_body_site_is_400_naming_it(api, patient):
    response = api.post("/api/cases/", {"patient": patient.pk, "body_site": "elbow"}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["body_site"]


def test_a_case_cannot_close_before_it_opened(api, case):
    response = api.patch(
        f"/api/cases/{case.pk}/", {"opened_on": "2026-03-01", "closed_on": "2026-02-01"}, format="json"
    )
    assert response.status_code == 400
    assert list(response.json()) == ["closed_on"]


def test_cases_are_filtered_by_patient(api, staff, case):
    other = CaseFactory(patient__clinic=staff.membership.clinic)
    assert [c["id"] for c in api.get("/api/cases/", {"patient": case.patient_id}).json()["results"]] == [case.pk]
    assert [c["id"] for c in api.get("/api/cases/", {"patient": other.patient_id}).json()["results"]] == [other.pk]
    assert api.get("/api/cases/", {"patient": "abc"}).status_code == 400


def test_a_case_is_updated_and_retrieved(api, case):
    response = api.patch(
        f"/api/cases/{case.pk}/",
        {"status": "closed", "opened_on": "2026-04-01", "closed_on": "2026-05-01"},
        format="json",
    )
    assert response.status_code == 200
    case.refresh_from_db()
    assert case.status == "closed" and case.closed_on == dt.date(2026, 5, 1)
    assert api.get(f"/api/cases/{case.pk}/").json()["status"] == "closed"


# Images


def test_an_uploaded_image_is_stored_and_its_analysis_queued(api, staff, case):
    response = api.post(
        "/api/images/",
        {"case": case.pk, "image": jpeg_upload("Jane Doe back.jpg", (80, 64)), "captured_at": "2026-01-02T10:00:00Z"},
        format="multipart",
    )
    assert response.status_code == 201
    body = response.json()
    image = LesionImage.objects.get(pk=body["id"])
    analysis = image.analyses.get()
    assert body["analysis"] == {"id": analysis.pk, "status": "queued"}
    assert (image.case, image.uploaded_by, image.width, image.height) == (case, staff, 80, 64)
    assert image.original_filename == "Jane Doe back.jpg"
    assert image.captured_at == dt.datetime(2026, 1, 2, 10, tzinfo=dt.UTC)
    assert "image" not in body  # the stored file is private; no URL to it
    assert api.get(f"/api/images/{image.pk}/").json()["analysis"] == {"id": analysis.pk, "status": "queued"}


def test_an_image_for_another_clinics_case_is_400_naming_case(api, outsider):
    foreign = CaseFactory(patient__clinic=outsider.membership.clinic)
    response = api.post(
        "/api/images/", {"case": foreign.pk, "image": jpeg_upload("a.jpg", (80, 64))}, format="multipart"
    )
    assert response.status_code == 400
    assert list(response.json()) == ["case"]
    assert not LesionImage.objects.exists()


def test_a_closed_case_takes_no_image_through_the_api(api, case):
    case.close()
    response = api.post("/api/images/", {"case": case.pk, "image": jpeg_upload("a.jpg", (80, 64))}, format="multipart")
    assert response.status_code == 400
    assert response.json() == {"image": ["This case is closed; reopen it to add images."]}
    assert not LesionImage.objects.exists() and not Analysis.objects.exists()


def test_a_case_is_not_moved_to_another_patient(api, case, staff):
    other = PatientFactory(clinic=staff.membership.clinic)
    response = api.patch(f"/api/cases/{case.pk}/", {"patient": other.pk}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["patient"]
    case.refresh_from_db()
    assert case.patient != other
    # Naming its own patient again is no move.
    assert (
        api.patch(
            f"/api/cases/{case.pk}/", {"patient": case.patient.pk, "clinical_notes": "x"}, format="json"
        ).status_code
        == 200
    )


def test_a_file_that_is_not_an_image_is_400_naming_image(api, case):
    fake = SimpleUploadedFile("lesion.jpg", b"%PDF-1.4 not an image", content_type="image/jpeg")
    response = api.post("/api/images/", {"case": case.pk, "image": fake}, format="multipart")
    assert response.status_code == 400
    assert list(response.json()) == ["image"]
    assert "JPG or PNG" in response.json()["image"][0]
    assert not LesionImage.objects.exists() and not Analysis.objects.exists()


def test_a_missing_image_and_a_future_capture_time_are_named(api, case):
    future = (timezone.now() + dt.timedelta(days=2)).isoformat()
    response = api.post("/api/images/", {"case": case.pk, "captured_at": future}, format="multipart")
    assert response.status_code == 400
    assert set(response.json()) == {"image", "captured_at"}


def test_an_image_too_small_is_400_with_the_reason(api, case):
    response = api.post("/api/images/", {"case": case.pk, "image": jpeg_upload("a.jpg", (20, 20))}, format="multipart")
    assert response.status_code == 400
    assert "at least 64 pixels" in response.json()["image"][0]


def test_an_upload_over_10_mb_is_refused_as_json_not_500(api, case):
    big = SimpleUploadedFile("big.jpg", b"\xff\xd8" + b"\0" * (settings.MAX_UPLOAD_BYTES + 1024 * 1024))
    response = api.post("/api/images/", {"case": case.pk, "image": big}, format="multipart")
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert "too large" in response.json()["detail"]
    assert not LesionImage.objects.exists()


def test_a_file_just_over_the_limit_is_400_naming_image(api, case, settings):
    buffer = io.BytesIO()
    Image.effect_noise((200, 200), 100).convert("RGB").save(buffer, "PNG")
    settings.MAX_UPLOAD_BYTES = len(buffer.getvalue()) - 1000  # the multipart margin lets it reach the serializer
    upload = SimpleUploadedFile("noise.png", buffer.getvalue(), content_type="image/png")
    response = api.post("/api/images/", {"case": case.pk, "image": upload}, format="multipart")
    assert response.status_code == 400
    assert "the limit is" in response.json()["image"][0]


def test_too_much_form_data_is_413_json(api, case, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = api.post(
        "/api/images/",
        {"case": case.pk, "image": jpeg_upload("a.jpg", (80, 64)), "notes": "x" * 5000},
        format="multipart",
    )
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"


def test_images_are_filtered_by_case(api, staff, case):
    mine = LesionImageFactory(case=case)
    LesionImageFactory(case=CaseFactory(patient__clinic=staff.membership.clinic))
    assert [i["id"] for i in api.get("/api/images/", {"case": case.pk}).json()["results"]] == [mine.pk]


# Analyses


def test_a_done_analysis_shows_its_result(api, analysis):
    done(analysis)
    body = api.get(f"/api/analyses/{analysis.pk}/").json()
    assert body["id"] == analysis.pk
    assert body["status"] == "done"
    assert body["predicted_class"] == "mel"
    assert body["confidence"] == pytest.approx(0.7)
    assert body["malignant"] is True
    assert body["probabilities"] == pytest.approx(PROBABILITIES)
    assert list(body["probabilities"]) == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert body["model_version"] == "test-model-1"
    assert body["created_at"] and body["finished_at"]
    assert body["error"] == ""
    assert (body["image"], body["case"], body["patient"]) == (
        analysis.image_id,
        analysis.image.case_id,
        analysis.image.case.patient_id,
    )
    assert body["report"] is None


def test_a_queued_analysis_has_no_result_yet(api, analysis):
    body = api.get(f"/api/analyses/{analysis.pk}/").json()
    assert body["status"] == "queued"
    assert body["probabilities"] is None and body["predicted_class"] == "" and body["malignant"] is None


def test_a_failed_analysis_shows_its_error(api, analysis):
    analysis.fail("The image could not be read.")
    body = api.get(f"/api/analyses/{analysis.pk}/").json()
    assert (body["status"], body["error"]) == ("failed", "The image could not be read.")


def test_analyses_are_filtered(api, staff, case, analysis):
    mel = done(analysis)
    nv = done(
        AnalysisFactory(image=LesionImageFactory(case=case)),
        {**PROBABILITIES, "mel": 0.1, "nv": 0.78},
    )
    other_case = CaseFactory(patient__clinic=staff.membership.clinic)
    queued = AnalysisFactory(image=LesionImageFactory(case=other_case))
    Analysis.objects.filter(pk=queued.pk).update(created_at=timezone.now() - dt.timedelta(days=10))

    def ids(**params):
        response = api.get("/api/analyses/", params)
        assert response.status_code == 200, response.json()
        return sorted(a["id"] for a in response.json()["results"])

    assert ids() == sorted([mel.pk, nv.pk, queued.pk])
    assert ids(status="done") == sorted([mel.pk, nv.pk])
    assert ids(predicted_class="nv") == [nv.pk]
    assert ids(malignant="true") == [mel.pk]
    assert ids(malignant="false") == [nv.pk]
    assert ids(case=case.pk) == sorted([mel.pk, nv.pk])
    assert ids(patient=other_case.patient_id) == [queued.pk]
    today = timezone.now().date()
    assert ids(created_after=today.isoformat()) == sorted([mel.pk, nv.pk])
    assert ids(created_before=(today - dt.timedelta(days=5)).isoformat()) == [queued.pk]


def test_a_token_clients_days_and_times_are_the_clinics_as_on_the_pages(api, staff, analysis):
    """A token is read after the middleware has run: the clinic's zone must still apply, to the day filters and
    the times answered alike."""
    clinic = staff.membership.clinic
    clinic.time_zone = "Pacific/Kiritimati"  # UTC+14: 11:30 UTC on 1 March is 01:30 on 2 March there
    clinic.save()
    Analysis.objects.filter(pk=analysis.pk).update(created_at=dt.datetime(2026, 3, 1, 11, 30, tzinfo=dt.UTC))

    def ids(**params):
        return [a["id"] for a in api.get("/api/analyses/", params).json()["results"]]

    assert ids(created_after="2026-03-02", created_before="2026-03-02") == [analysis.pk]
    assert ids(created_before="2026-03-01") == []
    assert api.get(f"/api/analyses/{analysis.pk}/").json()["created_at"].startswith("2026-03-02T01:30:00+14:00")


def test_lists_take_the_same_few_queries_however_many_rows(api, case, django_assert_max_num_queries):
    for _ in range(5):
        done(AnalysisFactory(image=LesionImageFactory(case=case)))
    for url in ["/api/analyses/", "/api/images/", "/api/cases/", "/api/patients/"]:
        with django_assert_max_num_queries(6):  # token, membership, count, page (+ prefetch)
            assert api.get(url).status_code == 200


@pytest.mark.parametrize(
    "params, field",
    [
        ({"status": "finished"}, "status"),
        ({"predicted_class": "melanoma"}, "predicted_class"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"malignant": "maybe"}, "malignant"),
        ({"patient": "-1"}, "patient"),
        ({"case": "1.5"}, "case"),
    ],
)
def test_a_bad_analysis_filter_is_400_naming_it(api, params, field):
    response = api.get("/api/analyses/", params)
    assert response.status_code == 400
    assert field in response.json()


def test_a_range_of_days_that_ends_before_it_starts_is_400_saying_so_as_the_page_does(api, staff):
    reversed_range = {"created_after": "2026-05-10", "created_before": "2026-05-01"}
    response = api.get("/api/analyses/", reversed_range)
    trail = client_for(MembershipFactory(clinic=staff.membership.clinic, role="clinic_admin").user).get(
        "/api/audit/", {"after": "2026-05-10", "before": "2026-05-01"}
    )

    assert response.status_code == trail.status_code == 400
    assert response.json() == {
        "created_before": ["“created_before” is before “created_after”: no day lies between them. Swap the dates."]
    }
    assert trail.json() == {"before": ["“before” is before “after”: no day lies between them. Swap the dates."]}
    assert api.get("/api/analyses/", {"created_after": "2026-05-10", "created_before": "2026-05-10"}).status_code == 200


def test_an_id_too_large_for_the_database_is_a_404_not_a_500(api):
    assert api.get(f"/api/analyses/{2**70}/").status_code == 404
    assert api.get("/api/analyses/", {"patient": 2**70}).status_code == 400


# Reports


def test_the_report_is_404_json_until_it_is_written_then_the_pdf(api, analysis):
    with mock.patch.object(tasks.render_report, "apply_async") as render:
        queued = api.get(f"/api/analyses/{analysis.pk}/report/")
        done(analysis)
        missing = api.get(f"/api/analyses/{analysis.pk}/report/")
    assert queued.status_code == missing.status_code == 404
    assert missing.json() == {"detail": "This report has not been produced yet."}
    render.assert_called_once_with((analysis.pk,), retry=False)  # done without a report: a worker is asked

    analysis.report.save("r.pdf", ContentFile(b"%PDF-1.4 a report"))
    response = api.get(f"/api/analyses/{analysis.pk}/report/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert f"analysis-{analysis.pk}.pdf" in response["Content-Disposition"]
    assert b"".join(response.streaming_content) == b"%PDF-1.4 a report"
    assert api.get(f"/api/analyses/{analysis.pk}/").json()["report"].endswith(f"/api/analyses/{analysis.pk}/report/")


def test_a_missing_report_is_still_a_404_when_the_broker_is_down(api, analysis):
    done(analysis)
    with mock.patch.object(tasks.render_report, "apply_async", side_effect=OperationalError("down")):
        assert api.get(f"/api/analyses/{analysis.pk}/report/").status_code == 404


def test_the_report_can_be_asked_for_as_pdf(api, analysis):
    assert api.get(f"/api/analyses/{analysis.pk}/report/", HTTP_ACCEPT="application/pdf").status_code == 404
    analysis.report.save("r.pdf", ContentFile(b"%PDF-1.4 a report"))
    response = api.get(f"/api/analyses/{analysis.pk}/report/", HTTP_ACCEPT="application/pdf")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"


# Schema and docs


def test_the_openapi_schema_describes_every_endpoint(anonymous):
    response = anonymous.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert {
        "/api/auth/token/",
        "/api/patients/",
        "/api/patients/{id}/",
        "/api/cases/",
        "/api/cases/{id}/",
        "/api/images/",
        "/api/images/{id}/",
        "/api/analyses/",
        "/api/analyses/{id}/",
        "/api/analyses/{id}/report/",
    } <= set(schema["paths"])
    assert "tokenAuth" in schema["components"]["securitySchemes"]


def test_the_docs_page_uses_our_own_static_files_not_a_cdn(anonymous):
    page = anonymous.get("/api/docs/").content.decode()
    assert "cdn" not in page.lower()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert finders.find("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
