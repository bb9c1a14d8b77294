"""Who reaches what: every URL of the site (pages, API, image files, reports, the audit trail, the admin) for
every kind of visitor, against one world of two clinics.

The matrix is the specification. A URL added to skinsite/urls.py or analysis/api_urls.py without a row here
fails `test_every_url_has_a_row`; a row is one line: the URL name, how to build its arguments from the world,
and what each role gets (the helpers below cover the usual rules). Admin URLs follow one rule: only a
superuser gets in.
"""

import io
import re
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.apps import apps
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from analysis.models import Analysis, AuditEvent, Case, LesionImage, Membership, Outcome, Patient
from tests.factories import (
    AnalysisFactory,
    CaseFactory,
    ClinicFactory,
    LesionImageFactory,
    MembershipFactory,
    PatientFactory,
    UserFactory,
    finish,
    jpeg_upload,
)

pytestmark = pytest.mark.django_db


ANONYMOUS, STAFF, OUTSIDER, CLINIC_ADMIN, SUPERUSER = "anonymous", "staff A", "staff B", "clinic admin A", "superuser"
ROLES = [ANONYMOUS, STAFF, OUTSIDER, CLINIC_ADMIN, SUPERUSER]

# Expected answers besides a plain status code.
SIGN_IN = "redirect to /accounts/login/"
ADMIN_SIGN_IN = "redirect to /admin/login/"
ADMIN_INDEX = "redirect to /admin/"
ENTERS = "gets in (a page of its own: no redirect to sign in or to the index, no server error)"


def rule(anonymous, staff, outsider, clinic_admin, superuser) -> dict[str, int | str]:
    return dict(zip(ROLES, [anonymous, staff, outsider, clinic_admin, superuser]))


def everyone(answer) -> dict[str, int | str]:
    return dict.fromkeys(ROLES, answer)


# Pages. Another clinic's row is a 404, exactly like one that does not exist; a platform admin has no clinic.
CLINIC_ROW = rule(SIGN_IN, 200, 404, 200, 404)
CLINIC_LIST = rule(SIGN_IN, 200, 200, 200, 200)  # each sees their own clinic's rows: see the zero-reads test
CLINIC_FORM = rule(SIGN_IN, 200, 200, 200, 404)
POST_ONLY = rule(SIGN_IN, 405, 405, 405, 405)  # the same for any id: it reveals nothing
SIGNED_IN = rule(SIGN_IN, 200, 200, 200, 200)
CLINIC_ADMIN_ONLY = rule(SIGN_IN, 403, 403, 200, 403)
# The API. A platform admin is refused: the API is for clinic staff.
API_ROW = rule(401, 200, 404, 200, 403)
API_LIST = rule(401, 200, 200, 200, 403)
PUBLIC = everyone(200)
ADMIN_ONLY = rule(ADMIN_SIGN_IN, ADMIN_SIGN_IN, ADMIN_SIGN_IN, ADMIN_SIGN_IN, ENTERS)


def a(attribute: str):
    """Arguments for a URL of one of clinic A's rows: a("patient") -> [patient A's id]."""
    return lambda w: [getattr(w.a, attribute).pk]


def none(w) -> list:
    return []


# URL name -> (its arguments from the world, what each role gets on GET)
MATRIX = {
    "home": (none, SIGNED_IN),
    "patient-list": (none, CLINIC_LIST),
    "patient-create": (none, CLINIC_FORM),
    "patient-detail": (a("patient"), CLINIC_ROW),
    "patient-edit": (a("patient"), CLINIC_ROW),
    "case-create": (a("patient"), POST_ONLY),
    "case-detail": (a("case"), CLINIC_ROW),
    "case-close": (a("case"), POST_ONLY),
    "case-reopen": (a("case"), POST_ONLY),
    "case-upload": (a("case"), POST_ONLY),
    "image-file": (a("image"), CLINIC_ROW),
    "analysis-list": (none, CLINIC_LIST),
    "analysis-detail": (a("analysis"), CLINIC_ROW),
    "analysis-status": (a("analysis"), CLINIC_ROW),
    "analysis-report": (a("analysis"), CLINIC_ROW),
    "analysis-heatmap": (a("analysis"), CLINIC_ROW),
    "analysis-fhir": (a("analysis"), CLINIC_ROW),
    "analysis-outcome": (a("analysis"), POST_ONLY),
    "audit-log": (none, CLINIC_ADMIN_ONLY),
    # Clinic A's page: A's staff are refused (403), anyone outside A gets the 404 of a record not theirs.
    "clinic-model": (a("clinic"), rule(SIGN_IN, 403, 404, 200, 404)),
    "api:api-root": (none, API_LIST),
    "api:token": (none, everyone(405)),  # POST only; tests/test_login_throttle.py
    "api:schema": (none, PUBLIC),  # describes the API, holds no data
    "api:docs": (none, PUBLIC),
    "api:redoc": (none, PUBLIC),
    "api:patient-list": (none, API_LIST),
    "api:patient-detail": (a("patient"), API_ROW),
    "api:case-list": (none, API_LIST),
    "api:case-detail": (a("case"), API_ROW),
    "api:image-list": (none, API_LIST),
    "api:image-detail": (a("image"), API_ROW),
    "api:analysis-list": (none, API_LIST),
    "api:analysis-detail": (a("analysis"), API_ROW),
    "api:analysis-report": (a("analysis"), API_ROW),
    "api:analysis-heatmap": (a("analysis"), API_ROW),
    "api:analysis-fhir": (a("analysis"), API_ROW),
    "api:patient-fhir": (a("patient"), API_ROW),
    "api:audit-event-list": (none, rule(401, 403, 403, 200, 403)),
    "api:outcome-list": (none, API_LIST),
    "api:outcome-detail": (a("outcome"), API_ROW),
    "api:clinic-performance": (a("clinic"), rule(401, 403, 403, 200, 403)),  # for a clinic admin only
    "login": (none, PUBLIC),
    "logout": (none, everyone(405)),  # POST only
    "password_change": (none, SIGNED_IN),
    "password_change_done": (none, SIGNED_IN),
    "api-token": (none, SIGNED_IN),  # one's own token only: nothing of another user to ask for
    "password_reset": (none, PUBLIC),
    "password_reset_done": (none, PUBLIC),
    "password_reset_confirm": (lambda w: ["MQ", "not-a-token"], PUBLIC),  # says the link is invalid
    "password_reset_complete": (none, PUBLIC),
    "admin:login": (none, rule(200, 200, 200, 200, ADMIN_INDEX)),  # a superuser is sent on to the index
    "admin:logout": (none, rule(ADMIN_INDEX, ADMIN_INDEX, ADMIN_INDEX, ADMIN_INDEX, 405)),  # POST only
    "favicon": (none, everyone(302)),  # to the static icon
    # Every other admin:* URL: ADMIN_ONLY (see admin_rows).
}


# The world: two clinics, each with staff, a clinic admin, a patient, a case, an image and a done analysis with
# its report; and a platform admin.


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "orange").save(buffer, "PNG")
    return buffer.getvalue()


def clinic_world(name: str) -> SimpleNamespace:
    clinic = ClinicFactory(name=f"Clinic {name}")
    staff = MembershipFactory(user__username=f"staff_{name}", clinic=clinic).user
    # is_staff as well: it must not open the admin either.
    admin = MembershipFactory(
        user__username=f"admin_{name}", user__is_staff=True, clinic=clinic, role=Membership.Role.CLINIC_ADMIN
    ).user
    patient = PatientFactory(clinic=clinic, name=f"Patient Of Clinic {name}", mrn=f"MRN-{name}-0001")
    case = CaseFactory(patient=patient, clinician=staff, clinical_notes=f"notes of clinic {name}")
    image = LesionImageFactory(case=case, uploaded_by=staff)
    analysis = finish(AnalysisFactory(image=image), heatmap_png=png_bytes(), report=True)
    outcome = Outcome.objects.create(
        analysis=analysis, diagnosis="mel", method="histo", confirmed_on=timezone.localdate(), recorded_by=staff
    )
    return SimpleNamespace(
        clinic=clinic,
        staff=staff,
        admin=admin,
        patient=patient,
        case=case,
        image=image,
        analysis=analysis,
        outcome=outcome,
    )


@pytest.fixture
def world():
    w = SimpleNamespace(a=clinic_world("A"), b=clinic_world("B"))
    w.superuser = UserFactory(username="root", is_superuser=True, is_staff=True)
    w.users = {STAFF: w.a.staff, OUTSIDER: w.b.staff, CLINIC_ADMIN: w.a.admin, SUPERUSER: w.superuser}
    # A row for every other admin page to open.
    Group.objects.create(name="auditors")
    Token.objects.create(user=w.a.staff)
    where = {"username": "staff_A", "ip_address": "10.0.0.1", "user_agent": "x", "attempt_time": timezone.now()}
    AccessAttempt.objects.create(**where, failures_since_start=5)
    AccessLog.objects.create(**where)
    AccessFailureLog.objects.create(**where, locked_out=True)
    AuditEvent.objects.create(
        clinic=w.a.clinic, user=w.a.staff, username="staff_A", action="viewed", object_type="patient"
    )
    return w


def client_as(w, role: str) -> Client:
    client = Client()
    if role != ANONYMOUS:
        client.force_login(w.users[role])
    return client


def api_as(w, role: str) -> APIClient:
    client = APIClient()
    if role != ANONYMOUS:
        token, _ = Token.objects.get_or_create(user=w.users[role])
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


# The URL resolver, walked


@dataclass
class Route:
    name: str | None
    route: str
    params: list[str]


def routes(patterns=None, prefix: str = "", namespace: str = "") -> list[Route]:
    found = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            inner = namespace + (f"{pattern.namespace}:" if pattern.namespace else "")
            found += routes(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        elif isinstance(pattern, URLPattern):
            name = namespace + pattern.name if pattern.name else None
            found.append(Route(name, prefix + str(pattern.pattern), list(pattern.pattern.regex.groupindex)))
    return found


def admin_rows(w) -> dict[str, tuple]:
    """Every named admin URL without a row of its own, with arguments that reach a real object."""
    rows = {}
    for route in routes():
        if not route.name or not route.name.startswith("admin:") or route.name in MATRIX or "format" in route.params:
            continue
        kwargs = {}
        model_route = re.match(r"admin/(\w+)/(\w+)/", route.route)
        for param in route.params:
            if param == "app_label":
                kwargs[param] = "analysis"
            elif param == "content_type_id":
                kwargs[param] = ContentType.objects.get_for_model(Patient).pk
            elif param in ("object_id", "id") and model_route:
                model = apps.get_model(model_route[1], model_route[2])
                first = model._default_manager.order_by("pk").first()
                kwargs[param] = first.pk if first else 1
            elif param == "object_id":
                kwargs[param] = w.a.patient.pk
        rows[route.name] = (reverse(route.name, kwargs=kwargs), ADMIN_ONLY)
    return rows


def answer(response) -> int | str:
    """What a response amounts to, in the matrix's terms."""
    location = response.get("Location", "")
    if response.status_code == 302 and location.startswith("/accounts/login/"):
        return SIGN_IN
    if response.status_code == 302 and location.startswith("/admin/login/"):
        return ADMIN_SIGN_IN
    if response.status_code == 302 and location == "/admin/":
        return ADMIN_INDEX
    return response.status_code


def meets(got: int | str, expected: int | str) -> bool:
    if expected == ENTERS:
        return isinstance(got, int) and got < 500
    return got == expected


# The matrix


def test_every_url_has_a_row():
    named = {route.name for route in routes() if route.name}
    unnamed = [route.route for route in routes() if not route.name and not route.route.startswith("admin/")]

    assert named - set(MATRIX) - {name for name in named if name.startswith("admin:")} == set(), "add a row"
    assert set(MATRIX) - named == set(), "a row for a URL that no longer exists"
    assert unnamed == [], "name every URL so it can have a row"


@pytest.mark.parametrize("role", ROLES)
def test_every_url_answers_each_role_as_the_matrix_says(world, role):
    client = client_as(world, role)
    rows = {name: (reverse(name, args=arguments(world)), expected) for name, (arguments, expected) in MATRIX.items()}
    rows |= admin_rows(world)
    # The API's format suffixes (/api/patients/1.json) reach the same views: they must answer alike.
    for name in [name for name in MATRIX if re.fullmatch(r"api:[\w-]+-(list|detail|report|heatmap|fhir)", name)]:
        url, expected = rows[name]
        rows[f"{name} (.json)"] = (url.rstrip("/") + ".json", expected)

    assert len(rows) > 100  # the whole admin is in
    wrong = []
    for name, (url, expected) in rows.items():
        got = answer(client.get(url))
        if not meets(got, expected[role]):
            wrong.append(f"{name} {url}: expected {expected[role]}, got {got}")

    assert wrong == [], f"{role}:\n" + "\n".join(wrong)


# Zero cross-clinic reads


def page_lists(w) -> dict[str, list[str]]:
    """List pages, and what of clinic A's patient each must not show (a search term is echoed back)."""
    a = w.a
    both = [a.patient.name, a.patient.mrn]
    return {
        "/": both,
        reverse("patient-list"): both,
        reverse("patient-list") + f"?q={a.patient.mrn}": [a.patient.name],
        reverse("patient-list") + "?q=Patient": both,
        reverse("analysis-list"): both,
        reverse("analysis-list") + f"?patient={a.patient.mrn}": [a.patient.name],
        reverse("audit-log"): both,
    }


@pytest.mark.parametrize("role", [OUTSIDER, SUPERUSER])
def test_no_page_shows_another_clinics_patient(world, role):
    client = client_as(world, role)
    # Clinic A's staff have been busy: their patient is all over A's lists and A's audit trail.
    staff_a = client_as(world, STAFF)
    for name in ["patient-detail", "case-detail"]:
        staff_a.get(reverse(name, args=[getattr(world.a, name.split("-")[0]).pk]))

    for url, secrets in page_lists(world).items():
        body = client.get(url).content.decode()
        for secret in secrets:
            assert secret not in body, url
    # The lists do show rows, the caller's own (none for a platform admin): the check above can fail.
    own = client.get(reverse("patient-list")).content.decode()
    assert (world.b.patient.mrn in own) == (role == OUTSIDER)


def test_no_api_list_holds_another_clinics_rows(world):
    api = api_as(world, OUTSIDER)
    a, b = world.a, world.b
    lists = {
        "/api/patients/": (a.patient, b.patient),
        f"/api/patients/?mrn={a.patient.mrn}": (a.patient, None),
        "/api/cases/": (a.case, b.case),
        f"/api/cases/?patient={a.patient.pk}": (a.case, None),
        "/api/images/": (a.image, b.image),
        f"/api/images/?case={a.case.pk}": (a.image, None),
        "/api/analyses/": (a.analysis, b.analysis),
        f"/api/analyses/?patient={a.patient.pk}": (a.analysis, None),
        f"/api/analyses/?image={a.image.pk}": (a.analysis, None),
        "/api/outcomes/": (a.outcome, b.outcome),
        f"/api/outcomes/?analysis={a.analysis.pk}": (a.outcome, None),
        f"/api/outcomes/?patient={a.patient.pk}": (a.outcome, None),
    }
    for url, (theirs, own) in lists.items():
        response = api.get(url)
        assert response.status_code == 200, url
        ids = {row["id"] for row in response.json()["results"]}
        assert theirs.pk not in ids, url
        if own is not None:
            assert own.pk in ids, url
        body = response.content.decode()
        assert a.patient.name not in body and a.patient.mrn not in body, url


def test_an_id_filter_answers_another_clinics_id_as_it_answers_a_missing_one(world):
    """A filter that told the two apart (400 for a missing id, 200 for another clinic's) would confirm ids."""
    api = api_as(world, OUTSIDER)
    a = world.a
    missing = 10**9
    for url, theirs in (
        ("/api/images/?case={}", a.case.pk),
        ("/api/cases/?patient={}", a.patient.pk),
        ("/api/analyses/?patient={}", a.patient.pk),
        ("/api/analyses/?image={}", a.image.pk),
        ("/api/outcomes/?analysis={}", a.analysis.pk),
        ("/api/outcomes/?patient={}", a.patient.pk),
    ):
        foreign, absent = api.get(url.format(theirs)), api.get(url.format(missing))
        assert (foreign.status_code, foreign.json()) == (absent.status_code, absent.json()), url


# Writes: refused, and nothing changed


def fingerprint(w) -> tuple:
    """Everything an outsider's or a stranger's write could change in clinic A, and the row counts."""
    a = w.a
    return (
        tuple(Patient.objects.filter(pk=a.patient.pk).values_list("name", "mrn", "notes", "sex", "clinic")),
        tuple(Case.objects.filter(pk=a.case.pk).values_list("status", "clinical_notes", "body_site", "closed_on")),
        tuple(LesionImage.objects.filter(case__patient__clinic=a.clinic).values_list("pk", "image", "case")),
        tuple(Analysis.objects.filter(pk=a.analysis.pk).values_list("status", "predicted_class", "report")),
        Patient.objects.count(),
        Case.objects.count(),
        LesionImage.objects.count(),
        Analysis.objects.count(),
        tuple(Outcome.objects.values_list("pk", "analysis", "diagnosis")),
    )


OUTCOME = {"diagnosis": "nv", "method": "histo", "confirmed_on": "2026-11-01"}


def page_writes(w) -> list[tuple]:
    a = w.a
    patient = {"name": "Changed Name", "mrn": a.patient.mrn, "sex": "other"}
    return [
        ("post", reverse("patient-edit", args=[a.patient.pk]), patient),
        ("post", reverse("case-create", args=[a.patient.pk]), {"body_site": "face", "opened_on": "2026-11-01"}),
        ("post", reverse("case-detail", args=[a.case.pk]), {"body_site": "face", "clinical_notes": "changed"}),
        ("post", reverse("case-close", args=[a.case.pk]), {}),
        ("post", reverse("case-reopen", args=[a.case.pk]), {}),
        ("post", reverse("case-upload", args=[a.case.pk]), {"images": "upload"}),
        ("post", reverse("analysis-outcome", args=[a.analysis.pk]), OUTCOME),
    ]


def api_writes(w) -> list[tuple]:
    a = w.a
    patient = {"mrn": "X-1", "name": "Changed Name", "date_of_birth": "1970-01-01", "sex": "other"}
    return [
        ("patch", f"/api/patients/{a.patient.pk}/", {"name": "Changed Name"}, 404),
        ("put", f"/api/patients/{a.patient.pk}/", patient, 404),
        ("delete", f"/api/patients/{a.patient.pk}/", None, 405),
        ("patch", f"/api/cases/{a.case.pk}/", {"status": "closed", "clinical_notes": "changed"}, 404),
        ("delete", f"/api/cases/{a.case.pk}/", None, 405),
        ("post", "/api/cases/", {"patient": a.patient.pk, "body_site": "face"}, 400),
        ("post", "/api/images/", {"case": a.case.pk, "image": "upload"}, 400),
        ("patch", f"/api/images/{a.image.pk}/", {"case": w.b.case.pk}, 405),
        ("delete", f"/api/images/{a.image.pk}/", None, 405),
        ("post", "/api/analyses/", {"image": a.image.pk}, 405),
        ("delete", f"/api/analyses/{a.analysis.pk}/", None, 405),
        ("post", "/api/outcomes/", {"analysis": a.analysis.pk, **OUTCOME}, 400),
        ("patch", f"/api/outcomes/{a.outcome.pk}/", {"diagnosis": "nv"}, 405),
        ("delete", f"/api/outcomes/{a.outcome.pk}/", None, 405),
    ]


def with_upload(data):
    if data and data.get("images") == "upload":
        return {**data, "images": jpeg_upload("x.jpg", (200, 150))}
    if data and data.get("image") == "upload":
        return {**data, "image": jpeg_upload("x.jpg", (200, 150))}
    return data


@pytest.mark.parametrize("role", [ANONYMOUS, OUTSIDER, SUPERUSER])
def test_writes_to_another_clinics_rows_on_the_pages_are_refused_and_change_nothing(world, role):
    client = client_as(world, role)
    before = fingerprint(world)
    expected = SIGN_IN if role == ANONYMOUS else 404

    for method, url, data in page_writes(world):
        got = answer(getattr(client, method)(url, with_upload(data)))
        assert got == expected, f"{method.upper()} {url}: {got}"
        assert fingerprint(world) == before, f"{method.upper()} {url} changed clinic A"


@pytest.mark.parametrize("role", [ANONYMOUS, OUTSIDER, SUPERUSER])
def test_writes_to_another_clinics_rows_through_the_api_are_refused_and_change_nothing(world, role):
    api = api_as(world, role)
    before = fingerprint(world)

    for method, url, data, outsider_gets in api_writes(world):
        kind = "multipart" if data and "image" in data else "json"
        status = getattr(api, method)(url, with_upload(data), format=kind).status_code
        expected = {ANONYMOUS: 401, OUTSIDER: outsider_gets, SUPERUSER: 403}[role]
        assert status == expected, f"{method.upper()} {url}: {status}"
        assert fingerprint(world) == before, f"{method.upper()} {url} changed clinic A"


def test_the_same_writes_by_clinic_a_do_change_it(world):
    """The other side of the two tests above: the writes are real, so refusing them means something."""
    client = client_as(world, STAFF)
    before = fingerprint(world)
    for method, url, data in page_writes(world)[:3]:
        assert answer(getattr(client, method)(url, with_upload(data))) == 302, url

    assert fingerprint(world) != before
    assert Patient.objects.get(pk=world.a.patient.pk).name == "Changed Name"


# Forged requests: another site cannot make a signed-in browser write


def test_a_write_without_the_csrf_token_is_refused_on_the_pages_and_the_session_api(world):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(world.a.staff)
    before = fingerprint(world)

    for method, url, data in page_writes(world):
        assert getattr(browser, method)(url, with_upload(data)).status_code == 403, url
    response = browser.patch(
        f"/api/patients/{world.a.patient.pk}/", {"name": "Changed Name"}, content_type="application/json"
    )

    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert fingerprint(world) == before
