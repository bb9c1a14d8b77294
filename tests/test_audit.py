"""The audit trail: who created, viewed, changed or downloaded which record, when and from where; through the
pages and the API alike; append-only; read by the clinic's admin on /audit/."""

from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from analysis import audit
from analysis.models import AppendOnlyError, AuditEvent, Membership, Patient
from tests.factories import (
    CaseFactory,
    LesionImageFactory,
    MembershipFactory,
    UserFactory,
    jpeg_upload,
)

pytestmark = pytest.mark.django_db

WINTER_NOON_UTC = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
BROWSER = {"HTTP_USER_AGENT": "Mozilla/5.0 (tablet in room 3)", "REMOTE_ADDR": "192.0.2.7"}


@pytest.fixture
def clinic_admin(staff):
    return MembershipFactory(
        user__username="boss", clinic=staff.membership.clinic, role=Membership.Role.CLINIC_ADMIN
    ).user


def api_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def trail() -> list[tuple]:
    """The events about records, oldest first (sign-ins left out)."""
    return list(
        AuditEvent.objects.exclude(object_type="account")
        .order_by("pk")
        .values_list("username", "action", "object_type", "object_id", "patient_id")
    )


# What is recorded: the pages


def test_creating_viewing_and_changing_a_patient_on_the_pages_is_recorded(client, staff):
    client.force_login(staff)
    client.post(reverse("patient-create"), {"name": "Jane Roe", "mrn": "A-1", "sex": "female"}, **BROWSER)
    patient = Patient.objects.get(mrn="A-1")
    client.get(reverse("patient-detail", args=[patient.pk]), **BROWSER)
    client.post(reverse("patient-edit", args=[patient.pk]), {"name": "Jane Roe-Smith", "mrn": "A-1", "sex": "female"})

    assert trail() == [
        ("staff", "created", "patient", patient.pk, patient.pk),
        ("staff", "viewed", "patient", patient.pk, patient.pk),
        ("staff", "updated", "patient", patient.pk, patient.pk),
    ]
    created, viewed, updated = AuditEvent.objects.exclude(object_type="account").order_by("pk")
    assert (created.user, created.clinic) == (staff, staff.membership.clinic)
    assert (viewed.ip_address, viewed.user_agent) == ("192.0.2.7", "Mozilla/5.0 (tablet in room 3)")
    assert viewed.path == reverse("patient-detail", args=[patient.pk])
    assert "Jane Roe (A-1)" in viewed.description
    assert updated.description == "Changed: name"
    assert timezone.now() - viewed.at < timedelta(minutes=1)


def test_a_case_an_upload_an_analysis_its_image_and_its_report_on_the_pages_are_recorded(
    client, staff, patient, analysis
):
    client.force_login(staff)
    client.post(reverse("case-create", args=[patient.pk]), {"body_site": "back", "opened_on": "2026-11-01"})
    new_case = patient.cases.order_by("pk").last()
    client.post(reverse("case-upload", args=[new_case.pk]), {"images": jpeg_upload("a.jpg", (200, 150))})
    uploaded = new_case.images.get()
    client.get(reverse("analysis-detail", args=[analysis.pk]))
    client.get(reverse("image-file", args=[analysis.image.pk]))  # the page's picture: covered by its event
    client.get(reverse("analysis-report", args=[analysis.pk]))

    assert trail() == [
        ("staff", "created", "case", new_case.pk, patient.pk),
        ("staff", "created", "image", uploaded.pk, patient.pk),
        ("staff", "viewed", "analysis", analysis.pk, patient.pk),
        ("staff", "downloaded", "report", analysis.pk, patient.pk),
    ]


def test_a_visit_to_a_timeline_is_one_event_not_one_per_thumbnail(client, staff, patient, case, analysis):
    images = [analysis.image] + [LesionImageFactory(case=case, uploaded_by=staff) for _ in range(4)]
    client.force_login(staff)

    assert client.get(reverse("patient-detail", args=[patient.pk])).status_code == 200
    for image in images:
        assert client.get(reverse("image-file", args=[image.pk])).status_code == 200
    client.get(reverse("analysis-detail", args=[analysis.pk]))
    client.get(reverse("image-file", args=[analysis.image.pk]))

    assert trail() == [
        ("staff", "viewed", "patient", patient.pk, patient.pk),
        ("staff", "viewed", "analysis", analysis.pk, patient.pk),
    ]


def test_an_image_fetched_on_its_own_is_recorded_once_per_person_and_visit(client, staff, colleague, analysis):
    image, patient_id = analysis.image, analysis.image.case.patient_id
    client.force_login(staff)
    client.get(reverse("image-file", args=[image.pk]))
    client.get(reverse("image-file", args=[image.pk]))
    client.force_login(colleague)
    client.get(reverse("image-file", args=[image.pk]))
    later = timezone.now() + audit.PAGE_VISIT + timedelta(minutes=1)
    with mock.patch("analysis.audit.timezone.now", return_value=later):
        client.get(reverse("image-file", args=[image.pk]))

    assert trail() == [
        ("staff", "viewed", "image", image.pk, patient_id),
        ("colleague", "viewed", "image", image.pk, patient_id),
        ("colleague", "viewed", "image", image.pk, patient_id),  # a new visit
    ]


def test_the_trails_times_name_their_zone(client, clinic_admin, staff):
    clinic = staff.membership.clinic
    clinic.time_zone = "Europe/Vienna"
    clinic.save()
    AuditEvent.objects.create(
        clinic=clinic, user=staff, username="staff", action="viewed", object_type="patient", at=WINTER_NOON_UTC
    )
    client.force_login(clinic_admin)

    html = client.get(reverse("audit-log")).content.decode()

    assert '<time datetime="2026-01-15T13:00:00+01:00">15 Jan 2026 13:00:00 CET</time>' in html


def test_a_platform_admins_reads_in_the_django_admin_are_in_the_records_clinics_trail(
    client, clinic_admin, patient, case, analysis
):
    root = get_user_model().objects.create_superuser("root", password="x")
    client.force_login(root)
    image = analysis.image
    pages = [
        ("patient", patient.pk, reverse("admin:analysis_patient_change", args=[patient.pk])),
        ("case", case.pk, reverse("admin:analysis_case_change", args=[case.pk])),
        ("image", image.pk, reverse("admin:analysis_lesionimage_change", args=[image.pk])),
        ("analysis", analysis.pk, reverse("admin:analysis_analysis_change", args=[analysis.pk])),
    ]
    for _, _, url in pages:
        assert client.get(url, **BROWSER).status_code == 200, url
    for url in ["admin:analysis_patient_changelist", "admin:analysis_analysis_changelist"]:
        assert client.get(reverse(url)).status_code == 200  # lists: not row by row

    events = AuditEvent.objects.exclude(object_type="account").order_by("pk")
    assert [(e.user, e.clinic_id, e.action, e.object_type, e.object_id, e.patient_id, e.path) for e in events] == [
        (root, patient.clinic_id, "viewed", kind, pk, patient.pk, url) for kind, pk, url in pages
    ]
    assert all(e.description.endswith(", read in the platform administration") for e in events)
    assert {e.ip_address for e in events} == {"192.0.2.7"}
    client.force_login(clinic_admin)
    shown = client.get(reverse("audit-log"), {"patient": patient.pk}).context["page"].object_list
    assert [(e.username, e.object_type) for e in shown] == [("root", kind) for kind, _, _ in reversed(pages)]


def test_lists_and_the_status_poll_are_not_recorded_row_by_row(client, staff, analysis):
    client.force_login(staff)
    for url in ["/", reverse("patient-list"), reverse("analysis-list"), reverse("analysis-status", args=[analysis.pk])]:
        assert client.get(url).status_code == 200

    assert trail() == []


def test_an_outsiders_404_records_no_view_only_the_ask_for_another_clinics_record(client, outsider, patient, analysis):
    client.force_login(outsider)
    assert client.get(reverse("patient-detail", args=[patient.pk])).status_code == 404
    assert client.get(reverse("analysis-report", args=[analysis.pk])).status_code == 404

    assert trail() == [
        ("outsider", AuditEvent.Action.OTHER_CLINICS_RECORD, "patient", patient.pk, None),
        ("outsider", AuditEvent.Action.OTHER_CLINICS_RECORD, "analysis", analysis.pk, None),
    ]


def test_recording_a_view_costs_the_page_one_insert(client, staff, patient, analysis):
    client.force_login(staff)
    url = reverse("analysis-detail", args=[analysis.pk])
    client.get(url)  # the first visit marks the result opened; count a later one

    with CaptureQueriesContext(connection) as audited:
        client.get(url)
    with mock.patch("analysis.views.audit.record"), CaptureQueriesContext(connection) as unaudited:
        client.get(url)

    assert len(audited) - len(unaudited) == 1
    assert [q["sql"].split()[0] for q in audited if "analysis_auditevent" in q["sql"]] == ["INSERT"]


# What is recorded: the API


def test_the_api_records_patients_created_read_and_changed_but_not_lists(staff):
    api = api_for(staff)
    created = api.post(
        "/api/patients/", {"mrn": "B-2", "name": "John Roe", "date_of_birth": "1970-01-01", "sex": "male"}
    ).json()
    api.get("/api/patients/")
    api.get(f"/api/patients/{created['id']}/")
    api.patch(f"/api/patients/{created['id']}/", {"notes": "allergic to latex"}, format="json")

    pk = created["id"]
    assert trail() == [
        ("staff", "created", "patient", pk, pk),
        ("staff", "viewed", "patient", pk, pk),
        ("staff", "updated", "patient", pk, pk),
    ]
    assert AuditEvent.objects.get(action="updated").path == f"/api/patients/{pk}/"


def test_the_api_records_a_case_an_upload_an_analysis_read_and_a_report_download(staff, patient, analysis):
    api = api_for(staff)
    case_id = api.post("/api/cases/", {"patient": patient.pk, "body_site": "back"}, format="json").json()["id"]
    image_id = api.post("/api/images/", {"case": case_id, "image": jpeg_upload("b.jpg", (80, 64))}).json()["id"]
    api.get(f"/api/analyses/{analysis.pk}/")
    assert api.get(f"/api/analyses/{analysis.pk}/report/").status_code == 200

    assert trail() == [
        ("staff", "created", "case", case_id, patient.pk),
        ("staff", "created", "image", image_id, patient.pk),
        ("staff", "viewed", "analysis", analysis.pk, patient.pk),
        ("staff", "downloaded", "report", analysis.pk, patient.pk),
    ]


# Where from: the address, and a proxy only when one is declared


def test_a_forwarded_for_header_is_ignored_unless_a_proxy_is_declared(client, staff, patient, settings):
    client.force_login(staff)
    url = reverse("patient-detail", args=[patient.pk])
    client.get(url, REMOTE_ADDR="10.1.1.1", HTTP_X_FORWARDED_FOR="6.6.6.6")
    settings.TRUSTED_PROXY_COUNT = 1
    client.get(url, REMOTE_ADDR="10.1.1.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.4")

    addresses = list(AuditEvent.objects.filter(action="viewed").order_by("pk").values_list("ip_address", flat=True))
    # Behind one proxy, the address it appended; what the client wrote to the left of it proves nothing.
    assert addresses == ["10.1.1.1", "198.51.100.4"]


# Append-only


def test_an_event_cannot_be_changed_or_deleted_through_the_model(staff):
    event = AuditEvent.objects.create(user=staff, username="staff", action="viewed", object_type="patient")

    event.description = "nothing to see"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(description="nothing to see")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()

    event = AuditEvent.objects.get()
    assert event.description == ""


def test_an_event_given_an_existing_id_does_not_overwrite_it(staff):
    event = AuditEvent.objects.create(user=staff, username="staff", action="viewed", object_type="patient")

    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent(pk=event.pk, username="forger", action="viewed", object_type="patient").save()

    assert AuditEvent.objects.get().username == "staff"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the database trigger is PostgreSQL's")
def test_postgresql_itself_refuses_to_change_or_delete_an_event(staff):
    event = AuditEvent.objects.create(user=staff, username="staff", action="viewed", object_type="patient")

    for sql in ["UPDATE analysis_auditevent SET username = 'x'", "DELETE FROM analysis_auditevent"]:
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)

    assert AuditEvent.objects.get(pk=event.pk).username == "staff"


def test_the_platform_admin_reads_events_but_cannot_add_change_or_delete_them(client, staff):
    root = UserFactory(username="root", is_superuser=True, is_staff=True)
    event = AuditEvent.objects.create(user=staff, username="staff", action="viewed", object_type="patient")
    client.force_login(root)
    base = "/admin/analysis/auditevent/"

    assert client.get(base).status_code == 200
    assert client.get(f"{base}{event.pk}/change/").status_code == 200  # read-only view
    assert client.get(f"{base}add/").status_code == 403
    assert client.post(f"{base}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    client.post(f"{base}{event.pk}/change/", {"username": "forger"})

    assert AuditEvent.objects.get(pk=event.pk).username == "staff"


# The clinic admin's page


def test_the_clinic_admin_reads_the_clinics_trail_newest_first(client, clinic_admin, staff, patient, outsider):
    client.force_login(staff)
    client.get(reverse("patient-detail", args=[patient.pk]))
    elsewhere = Client()
    elsewhere.force_login(outsider)
    elsewhere.post(reverse("patient-create"), {"name": "Other Clinic Person", "mrn": "OUT-1", "sex": "male"})
    client.force_login(clinic_admin)

    response = client.get(reverse("audit-log"))

    assert response.status_code == 200
    rows = [(e.username, e.action) for e in response.context["page"].object_list]
    assert rows[:3] == [("boss", "login"), ("staff", "viewed"), ("staff", "login")]
    assert "outsider" not in {username for username, _ in rows}
    assert "Other Clinic Person" not in response.content.decode()
    assert patient.name in response.content.decode()


@pytest.mark.parametrize("who", ["staff", "outsider"])
def test_other_staff_are_refused_the_trail(client, request, who, clinic_admin):
    client.force_login(request.getfixturevalue(who))
    response = client.get(reverse("audit-log"))
    assert response.status_code == 403
    assert "Only the clinic&#x27;s admin reads the audit trail." in response.content.decode()


def test_a_platform_admin_reads_the_trail_in_the_admin_not_on_the_clinic_page(client):
    client.force_login(UserFactory(is_superuser=True, is_staff=True))
    assert client.get(reverse("audit-log")).status_code == 403


def test_anonymous_visitors_are_sent_to_sign_in_for_the_trail(client):
    response = client.get(reverse("audit-log"))
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_only_clinic_admins_see_the_trail_in_the_menu(client, staff, clinic_admin):
    client.force_login(staff)
    assert reverse("audit-log") not in client.get("/").content.decode()
    client.force_login(clinic_admin)
    assert f'href="{reverse("audit-log")}"' in client.get("/").content.decode()


def test_the_trail_is_filtered_by_person_action_record_patient_and_dates(client, clinic_admin, staff, colleague, case):
    patient = case.patient
    other = CaseFactory(patient__clinic=patient.clinic).patient
    for user, target in [(staff, patient), (colleague, patient), (colleague, other)]:
        client.force_login(user)
        client.get(reverse("patient-detail", args=[target.pk]))
    client.force_login(staff)
    client.get(reverse("case-detail", args=[case.pk]))
    client.force_login(clinic_admin)

    def shown(**params) -> list[tuple]:
        page = client.get(reverse("audit-log"), params).context["page"]
        return [(e.username, e.action, e.object_type, e.patient_id) for e in page.object_list]

    assert shown(user=colleague.pk, action="viewed") == [
        ("colleague", "viewed", "patient", other.pk),
        ("colleague", "viewed", "patient", patient.pk),
    ]
    assert shown(object_type="case") == [("staff", "viewed", "case", patient.pk)]
    assert [row[0] for row in shown(patient=patient.pk)] == ["staff", "colleague", "staff"]
    today = timezone.localdate()
    assert len(shown(date_from=today, date_to=today, action="viewed")) == 4
    assert shown(date_to=today - timedelta(days=1)) == []
    assert shown(date_from=today + timedelta(days=1)) == []


def test_the_trail_is_paged_50_at_a_time(client, clinic_admin, staff):
    AuditEvent.objects.bulk_create(
        AuditEvent(clinic=staff.membership.clinic, user=staff, username="staff", action="viewed", object_type="patient")
        for _ in range(60)
    )
    client.force_login(clinic_admin)

    first = client.get(reverse("audit-log")).context["page"]
    second = client.get(reverse("audit-log"), {"page": 2}).context["page"]

    assert (len(first.object_list), len(second.object_list)) == (50, 11)  # 60 views and the admin's sign-in


# The clinic admin's API


def test_the_clinic_admin_reads_the_trail_through_the_api_filtered(clinic_admin, staff, patient, outsider):
    api_for(staff).get(f"/api/patients/{patient.pk}/")
    own = api_for(outsider).post(
        "/api/patients/", {"mrn": "O-1", "name": "Other Person", "date_of_birth": "1970-01-01", "sex": "male"}
    )
    assert own.status_code == 201
    admin = api_for(clinic_admin)

    everything = admin.get("/api/audit/").json()
    views = admin.get("/api/audit/", {"action": "viewed", "patient": patient.pk, "user": staff.pk}).json()

    assert {row["username"] for row in everything["results"]} == {"staff"}
    assert "Other Person" not in str(everything)
    [view] = views["results"]
    assert (view["object_type"], view["object_id"], view["patient"]) == ("patient", patient.pk, patient.pk)
    assert view["path"] == f"/api/patients/{patient.pk}/"


@pytest.mark.parametrize("who", ["staff", "colleague"])
def test_other_staff_are_refused_the_trail_through_the_api(request, who, clinic_admin):
    response = api_for(request.getfixturevalue(who)).get("/api/audit/")
    assert response.status_code == 403
    assert "clinic's admin" in response.json()["detail"]


def test_the_trail_cannot_be_written_through_the_api(clinic_admin):
    admin = api_for(clinic_admin)
    assert admin.post("/api/audit/", {"username": "forger", "action": "viewed"}, format="json").status_code == 405
    assert not AuditEvent.objects.filter(username="forger").exists()
