import hashlib

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from analysis.models import AuditEvent, Case, LesionImage, Membership, Outcome
from tests.factories import (
    AnalysisFactory,
    CaseFactory,
    MembershipFactory,
    UserFactory,
    jpeg_upload,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser():
    return UserFactory(username="root", is_superuser=True, is_staff=True)


@pytest.fixture
def one_of_everything(superuser):
    MembershipFactory(user=superuser)
    analysis = AnalysisFactory()
    Outcome.objects.create(
        analysis=analysis, diagnosis="mel", method="histo", confirmed_on=timezone.localdate(), recorded_by=superuser
    )
    Group.objects.create(name="auditors")
    Token.objects.create(user=superuser)  # API tokens: platform admins can see and revoke them
    # Sign-in throttling (django-axes): platform admins see lockouts and lift them by deleting the attempt.
    where = {"username": "staff", "ip_address": "127.0.0.1", "user_agent": "x", "attempt_time": timezone.now()}
    AccessAttempt.objects.create(**where, failures_since_start=5)
    AccessLog.objects.create(**where)
    AccessFailureLog.objects.create(**where, locked_out=True)
    AuditEvent.objects.create(username="root", action="login", object_type="account")


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def test_every_admin_page_loads_for_a_superuser(client, superuser, one_of_everything):
    client.force_login(superuser)
    for model, model_admin in admin.site._registry.items():
        obj = model._default_manager.first()
        assert obj is not None, f"no {model.__name__} to open"
        pages = [admin_url(model, "changelist"), admin_url(model, "change", obj.pk)]
        if model_admin.has_add_permission(_request(superuser)):
            pages.append(admin_url(model, "add"))
        for url in pages:
            assert client.get(url).status_code == 200, url
        search = client.get(admin_url(model, "changelist"), {"q": "x"})
        assert search.status_code == 200


def _request(user):
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.user = user
    return request


def test_superuser_can_deactivate_users_from_the_admin(client, superuser, staff):
    client.force_login(superuser)
    response = client.post(
        admin_url(type(staff), "changelist"),
        {"action": "deactivate", "_selected_action": [staff.pk]},
    )
    assert response.status_code == 302
    staff.refresh_from_db()
    assert staff.is_active is False


def test_an_image_uploaded_in_the_admin_is_fingerprinted_and_renamed(client, superuser):
    case = CaseFactory()
    upload = jpeg_upload("Max Mustermann.jpg", size=(80, 64))
    expected_sha256 = hashlib.sha256(upload.read()).hexdigest()
    upload.seek(0)
    client.force_login(superuser)

    response = client.post(admin_url(LesionImage, "add"), {"case": case.pk, "image": upload})

    assert response.status_code == 302
    image = LesionImage.objects.get()
    assert image.original_filename == "Max Mustermann.jpg"
    assert "Mustermann" not in image.image.name
    assert image.sha256 == expected_sha256
    assert (image.width, image.height, image.uploaded_by) == (80, 64, superuser)


def test_the_admin_moves_no_record_to_another_patient_or_case(client, superuser):
    analysis = AnalysisFactory()
    image, case = analysis.image, analysis.image.case
    other_case = CaseFactory()
    client.force_login(superuser)

    page = client.get(admin_url(LesionImage, "change", image.pk)).content.decode()
    assert 'name="case"' not in page and 'name="image"' not in page
    client.post(
        admin_url(LesionImage, "change", image.pk), {"case": other_case.pk, "captured_at_0": "", "captured_at_1": ""}
    )
    client.post(admin_url(Case, "change", case.pk), {"patient": other_case.patient.pk, **case_form(case)})

    image.refresh_from_db()
    case.refresh_from_db()
    assert image.case == case and case.patient != other_case.patient
    # A new record is still made with the admin.
    assert 'name="patient"' in client.get(admin_url(Case, "add")).content.decode()


def test_the_admin_adds_no_image_to_a_closed_case(client, superuser):
    case = CaseFactory()
    case.close()
    client.force_login(superuser)
    response = client.post(admin_url(LesionImage, "add"), {"case": case.pk, "image": jpeg_upload("a.jpg", (80, 64))})
    assert response.status_code == 200
    assert "This case is closed; reopen it to add images." in response.content.decode()
    assert not LesionImage.objects.exists()


def test_an_image_added_in_the_admin_is_queued_like_any_other(client, superuser):
    case = CaseFactory()
    client.force_login(superuser)
    response = client.post(admin_url(LesionImage, "add"), {"case": case.pk, "image": jpeg_upload("a.jpg", (80, 64))})
    assert response.status_code == 302
    image = LesionImage.objects.get()
    assert response["Location"] == admin_url(LesionImage, "changelist")
    assert list(image.analyses.values_list("status", flat=True)) == ["queued"]
    assert image.uploaded_by == superuser
    assert LogEntry.objects.get(object_id=str(image.pk)).is_addition()


def test_the_admin_stores_through_the_locked_check_so_a_duplicate_it_missed_is_still_refused(
    client, superuser, settings, monkeypatch
):
    # As if a second upload of the same picture landed between the form's checks and the save: the admin's
    # validation passes it, the locked check in submit_image does not, and nothing of it is kept.
    import analysis.admin

    case = CaseFactory()
    client.force_login(superuser)
    client.post(admin_url(LesionImage, "add"), {"case": case.pk, "image": jpeg_upload("a.jpg", (80, 64))})
    stored = {p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file()}
    monkeypatch.setattr(analysis.admin, "validate_image_file", lambda upload, case: None)
    response = client.post(
        admin_url(LesionImage, "add"), {"case": case.pk, "image": jpeg_upload("b.jpg", (80, 64))}, follow=True
    )
    assert response.redirect_chain == [(admin_url(LesionImage, "add"), 302)]
    assert "This image is already in this case" in response.content.decode()
    assert LesionImage.objects.count() == 1
    assert {p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file()} == stored


def test_an_image_the_admin_added_is_removed_again_when_its_transaction_fails_later(
    client, superuser, settings, monkeypatch
):
    case = CaseFactory()
    client.force_login(superuser)

    def failing_log(*args, **kwargs):
        raise RuntimeError("the admin log could not be written")

    monkeypatch.setattr(admin.ModelAdmin, "log_addition", failing_log)
    with pytest.raises(RuntimeError):
        client.post(admin_url(LesionImage, "add"), {"case": case.pk, "image": jpeg_upload("a.jpg", (80, 64))})
    assert not LesionImage.objects.exists()
    assert not [p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file()]


def case_form(case) -> dict:
    return {
        "body_site": case.body_site,
        "clinician": case.clinician_id or "",
        "opened_on": case.opened_on.isoformat(),
        "status": case.status,
        "clinical_notes": "",
    }


@pytest.mark.parametrize("is_staff", [False, True])
def test_clinic_admin_cannot_enter_the_platform_admin(client, is_staff):
    clinic_admin = MembershipFactory(role=Membership.Role.CLINIC_ADMIN, user__is_staff=is_staff).user
    client.force_login(clinic_admin)

    for url in ["/admin/", admin_url(Membership, "changelist")]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")


def test_login_page_loads(client):
    assert client.get("/accounts/login/").status_code == 200
    assert client.get("/admin/login/").status_code == 200


def test_home_shows_the_users_clinic(client, staff):
    client.force_login(staff)
    response = client.get("/")
    assert response.status_code == 200
    assert staff.membership.clinic.name in response.content.decode()


def test_home_asks_anonymous_visitors_to_sign_in(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
