"""Privacy and audit (issue #29): what a browser or proxy may keep, what a page may load, who asked for another
clinic's records, who may hold a clinic's data, and what the logs say about a refusal."""

import io
import logging
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from analysis.models import AuditEvent, Clinic, Membership

pytestmark = pytest.mark.django_db

User = get_user_model()
PASSWORD = "correct horse battery staple"  # tests/factories.py


# No cache keeps what a signed-in user was answered


def no_store(response) -> bool:
    directives = {d.strip() for d in response.get("Cache-Control", "").split(",")}
    return {"private", "no-store"} <= directives


def test_every_page_a_signed_in_user_is_answered_is_kept_by_no_cache(client, staff, patient, case, analysis):
    client.force_login(staff)
    pages = [
        reverse("home"),
        reverse("patient-list"),
        reverse("patient-create"),
        reverse("patient-detail", args=[patient.pk]),
        reverse("patient-edit", args=[patient.pk]),
        reverse("case-detail", args=[case.pk]),
        reverse("analysis-list"),
        reverse("analysis-detail", args=[analysis.pk]),
        reverse("analysis-status", args=[analysis.pk]),
        reverse("analysis-report", args=[analysis.pk]),
        reverse("image-file", args=[analysis.image.pk]),
        reverse("password_change"),
        reverse("api-token"),
        reverse("patient-detail", args=[999_999]),  # a 404 names the path asked for
        reverse("audit-log"),  # a 403
        reverse("api:docs"),
    ]
    for url in pages:
        response = client.get(url)
        assert no_store(response), (url, response.status_code, response.get("Cache-Control"))


def test_every_api_answer_to_a_token_is_kept_by_no_cache(staff, patient, case, analysis):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff).key}")
    answers = [
        api.get(reverse("api:patient-list")),
        api.get(reverse("api:patient-detail", args=[patient.pk])),
        api.get(reverse("api:case-detail", args=[case.pk])),
        api.get(reverse("api:analysis-list")),
        api.get(reverse("api:analysis-detail", args=[analysis.pk])),
        api.get(reverse("api:analysis-report", args=[analysis.pk])),
        api.get(reverse("api:schema")),
        api.post(
            reverse("api:patient-list"), {"mrn": "N-1", "name": "New", "date_of_birth": "1970-01-01", "sex": "female"}
        ),
    ]
    for response in answers:
        assert no_store(response), (response.request["PATH_INFO"], response.status_code, response.get("Cache-Control"))


def test_the_files_views_keep_their_own_headers(client, staff, analysis):
    client.force_login(staff)

    response = client.get(reverse("analysis-report", args=[analysis.pk]))

    assert response["Cache-Control"] == "private, no-store"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_static_files_stay_cacheable(client, staff, settings):
    settings.WHITENOISE_USE_FINDERS = True  # tests never collectstatic
    client.force_login(staff)

    response = client.get("/static/css/skinsite.css")

    assert response.status_code == 200
    assert "no-store" not in response.get("Cache-Control", "")


# The log: one line per refusal


def written(record: logging.LogRecord) -> int:
    """How many of the configured handlers write the record: its logger's and those of every ancestor it
    propagates to (pytest's capturing handlers aside)."""
    count, logger = 0, logging.getLogger(record.name)
    while logger is not None:
        for handler in logger.handlers:
            if type(handler).__module__.startswith("_pytest"):
                continue
            if record.levelno >= handler.level and handler.filter(record):
                count += 1
        logger = logger.parent if logger.propagate else None
    return count


@pytest.fixture
def request_log(caplog, settings):
    # DEBUG as `make run` has it: Django's own console handler is active then.
    settings.DEBUG = True
    caplog.set_level(logging.INFO, logger="django.request")
    return caplog


def test_a_403_is_logged_once_as_one_line_without_traceback(client, staff, request_log):
    client.force_login(staff)  # staff, not the clinic's admin
    request_log.clear()

    assert client.get(reverse("audit-log")).status_code == 403

    [record] = [r for r in request_log.records if r.name == "django.request"]
    assert record.getMessage() == "Forbidden (Permission denied): /audit/"
    assert record.exc_info is None and record.exc_text is None
    assert written(record) == 1


def test_a_404_is_logged_once_as_one_line_without_traceback(client, staff, request_log):
    client.force_login(staff)
    request_log.clear()

    assert client.get(reverse("patient-detail", args=[999_999])).status_code == 404

    [record] = [r for r in request_log.records if r.name == "django.request"]
    assert record.getMessage() == "Not Found: /patients/999999/"
    assert record.exc_info is None and record.exc_text is None
    assert written(record) == 1


def test_a_server_error_keeps_its_traceback(client, staff, request_log, monkeypatch):
    client.raise_request_exception = False
    client.force_login(staff)
    monkeypatch.setattr("analysis.views.for_clinic", lambda *args: 1 / 0)
    request_log.clear()

    assert client.get(reverse("patient-list")).status_code == 500

    [record] = [r for r in request_log.records if r.name == "django.request"]
    assert record.exc_info is not None


# The lockout page says when to come back


@pytest.mark.parametrize("login_url", ["login", "admin:login"])
def test_the_lockout_page_says_how_many_seconds_until_the_lockout_ends(client, settings, login_url):
    User.objects.create_superuser("root", password=PASSWORD)  # the one account both forms sign in
    settings.AXES_COOLOFF_TIME = timedelta(minutes=7)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post(reverse(login_url), {"username": "root", "password": "wrong"}).status_code == 200

    locked = client.post(reverse(login_url), {"username": "root", "password": "wrong"})
    again = client.post(reverse(login_url), {"username": "root", "password": PASSWORD})

    assert locked.status_code == again.status_code == 429
    assert locked["Retry-After"] == again["Retry-After"] == str(7 * 60)
    assert "Try again in 7 minutes" in again.content.decode()
    assert "_auth_user_id" not in client.session  # the right password during the lockout signs nobody in


# Signing out ends the API token too


def test_signing_out_of_the_site_deletes_the_users_api_token(client, staff):
    api = APIClient()
    token = api.post(reverse("api:token"), {"username": "staff", "password": PASSWORD}, format="json").data["token"]
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.get(reverse("api:patient-list")).status_code == 200
    client.force_login(staff)

    assert client.post(reverse("logout")).status_code == 302

    assert not Token.objects.filter(user=staff).exists()
    assert api.get(reverse("api:patient-list")).status_code == 401


def test_signing_out_leaves_other_users_tokens_alone(client, staff, colleague):
    kept = Token.objects.create(user=colleague)
    client.force_login(staff)

    client.post(reverse("logout"))

    assert Token.objects.filter(pk=kept.pk).exists()


# Changing the password ends the API token too; a user sees and revokes their own, an admin anyone's


def test_changing_the_password_on_the_page_ends_the_users_api_token(client, staff, colleague):
    Token.objects.create(user=staff)
    kept = Token.objects.create(user=colleague)
    client.force_login(staff)

    response = client.post(
        reverse("password_change"),
        {"old_password": PASSWORD, "new_password1": "a new Passphrase 42", "new_password2": "a new Passphrase 42"},
    )

    assert response.status_code == 302
    assert not Token.objects.filter(user=staff).exists()
    assert list(Token.objects.all()) == [kept]


def test_a_password_set_anywhere_else_ends_the_token_but_a_sign_in_does_not(client, staff):
    token = Token.objects.create(user=staff)
    client.post(reverse("login"), {"username": "staff", "password": PASSWORD})  # saves last_login
    staff.refresh_from_db()
    staff.first_name = "Nina"
    staff.save()
    assert Token.objects.filter(pk=token.pk).exists()

    staff.set_password("reset by the admin")
    staff.save()

    assert not Token.objects.filter(user=staff).exists()


def test_a_user_sees_their_api_token_and_revokes_it(client, staff, colleague):
    token = Token.objects.create(user=staff)
    kept = Token.objects.create(user=colleague)
    client.force_login(staff)

    html = client.get(reverse("api-token")).content.decode()
    assert f"starting <code>{token.key[:4]}…</code>" in html and token.key not in html
    assert f'href="{reverse("api-token")}"' in client.get(reverse("home")).content.decode()
    revoked = client.post(reverse("api-token"), follow=True)

    assert revoked.status_code == 200
    assert "Your API token was revoked" in revoked.content.decode()
    assert "You have no API token." in revoked.content.decode()
    assert list(Token.objects.all()) == [kept]


def test_a_platform_admin_revokes_anyones_api_token_in_the_admin(client, staff, colleague):
    doomed, kept = Token.objects.create(user=staff), Token.objects.create(user=colleague)
    client.force_login(User.objects.create_superuser("root", password="x"))

    listed = client.get(reverse("admin:authtoken_tokenproxy_changelist"))
    assert listed.status_code == 200 and doomed.key not in listed.content.decode()
    # DRF's token admin maps a token's admin id to its user's id, and offers no bulk actions.
    assert (
        client.post(reverse("admin:authtoken_tokenproxy_delete", args=[staff.pk]), {"post": "yes"}).status_code == 302
    )
    assert list(Token.objects.all()) == [kept]
    client.post(
        reverse("admin:auth_user_changelist"), {"action": "revoke_api_tokens", "_selected_action": [colleague.pk]}
    )
    assert not Token.objects.exists()


# The platform admin belongs to no clinic; the demo clinic has its own admin


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def printed_password(output: str, username: str) -> str:
    return output.split(f"username: {username}\n  password:")[1].split()[0]


def test_make_runs_platform_admin_belongs_to_no_clinic_and_its_token_reads_no_patients():
    output = run("bootstrap_demo")

    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(printed_password(output, "admin"))
    assert not Membership.objects.filter(user=admin).exists()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=admin).key}")
    assert api.get(reverse("api:patient-list")).status_code == 403


def test_make_run_creates_a_demo_clinic_admin_and_prints_its_password(client):
    output = run("bootstrap_demo", "--url", "http://127.0.0.1:8001")

    demo = User.objects.get(username="demo")
    assert not demo.is_superuser and not demo.is_staff
    assert demo.membership.clinic.name == "Demo Clinic"
    assert demo.membership.role == Membership.Role.CLINIC_ADMIN
    assert "URL:      http://127.0.0.1:8001/\n  username: demo" in output
    signed_in = client.post(reverse("login"), {"username": "demo", "password": printed_password(output, "demo")})
    assert signed_in.status_code == 302
    assert client.get(reverse("patient-list")).status_code == 200


def test_make_run_takes_an_earlier_runs_admin_out_of_the_demo_clinic():
    clinic = Clinic.objects.create(name="Demo Clinic")
    admin = User.objects.create_superuser("admin", password="x")
    Membership.objects.create(user=admin, clinic=clinic, role=Membership.Role.CLINIC_ADMIN)

    output = run("bootstrap_demo")

    assert not Membership.objects.filter(user=admin).exists()
    assert "'admin' no longer belongs to a clinic" in output
    assert User.objects.get(username="demo").membership.clinic == clinic
    assert "username: admin" not in output  # its password is left as it was


def test_add_staff_refuses_to_put_a_platform_admin_in_a_clinic():
    admin = User.objects.create_superuser("root", password="x")

    with pytest.raises(CommandError, match="platform admin"):
        run("add_staff", "--clinic", "Vienna Derm", "--username", "root", "--password", "y")

    assert not Membership.objects.filter(user=admin).exists()
    assert not Clinic.objects.filter(name="Vienna Derm").exists()
    admin.refresh_from_db()
    assert admin.check_password("x")


# Asking for another clinic's records is a 404, and audited


def other_clinics_asks() -> list[tuple]:
    return list(
        AuditEvent.objects.filter(action=AuditEvent.Action.OTHER_CLINICS_RECORD)
        .order_by("pk")
        .values_list("user__username", "clinic", "object_type", "object_id", "record_clinic", "path")
    )


def test_an_outsiders_page_asks_for_another_clinics_records_are_404s_and_audited(client, outsider, case, analysis):
    client.force_login(outsider)
    image = analysis.image
    urls = {
        "patient": (reverse("patient-detail", args=[case.patient.pk]), case.patient.pk),
        "case": (reverse("case-detail", args=[case.pk]), case.pk),
        "image": (reverse("image-file", args=[image.pk]), image.pk),
        "analysis": (reverse("analysis-detail", args=[analysis.pk]), analysis.pk),
    }
    report = reverse("analysis-report", args=[analysis.pk])

    for url, _ in [*urls.values(), (report, None)]:
        assert client.get(url, REMOTE_ADDR="192.0.2.9").status_code == 404, url

    theirs, mine = case.patient.clinic_id, outsider.membership.clinic_id
    assert other_clinics_asks() == [
        *[("outsider", mine, kind, pk, theirs, url) for kind, (url, pk) in urls.items()],
        ("outsider", mine, "analysis", analysis.pk, theirs, report),
    ]
    assert set(AuditEvent.objects.filter(action="other_clinic").values_list("ip_address", flat=True)) == {"192.0.2.9"}
    # Nothing was recorded as read.
    assert not AuditEvent.objects.filter(action__in=["viewed", "downloaded"]).exists()


def test_an_outsiders_api_asks_for_another_clinics_records_are_404s_and_audited(outsider, case, analysis):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=outsider).key}")
    asks = [
        ("patient", case.patient.pk, reverse("api:patient-detail", args=[case.patient.pk])),
        ("patient", case.patient.pk, reverse("api:patient-fhir", args=[case.patient.pk])),
        ("case", case.pk, reverse("api:case-detail", args=[case.pk])),
        ("image", analysis.image.pk, reverse("api:image-detail", args=[analysis.image.pk])),
        ("analysis", analysis.pk, reverse("api:analysis-detail", args=[analysis.pk])),
        ("analysis", analysis.pk, reverse("api:analysis-report", args=[analysis.pk])),
    ]

    for _, _, url in asks:
        assert api.get(url).status_code == 404, url

    theirs, mine = case.patient.clinic_id, outsider.membership.clinic_id
    assert other_clinics_asks() == [("outsider", mine, kind, pk, theirs, url) for kind, pk, url in asks]


def test_another_clinics_record_is_answered_exactly_as_a_missing_one(client, outsider, patient):
    client.force_login(outsider)
    api = APIClient()
    api.force_authenticate(outsider)
    missing = patient.pk + 1000

    assert (
        client.get(reverse("patient-detail", args=[patient.pk])).content
        == client.get(reverse("patient-detail", args=[missing])).content
    )
    assert (
        api.get(reverse("api:patient-detail", args=[patient.pk])).data
        == api.get(reverse("api:patient-detail", args=[missing])).data
    )


def test_an_id_that_exists_nowhere_is_a_404_but_no_ask_for_another_clinics_record(client, staff, patient):
    # A mistyped id is not another clinic's record: it is not recorded as one (nor at all).
    client.force_login(staff)
    api = APIClient()
    api.force_authenticate(staff)

    assert client.get(reverse("patient-detail", args=[patient.pk + 1000])).status_code == 404
    assert api.get(reverse("api:patient-detail", args=[patient.pk + 1000])).status_code == 404
    assert api.get("/api/patients/not-a-number/").status_code == 404

    assert other_clinics_asks() == []
    assert not AuditEvent.objects.exclude(object_type="account").exists()


def test_platform_admins_see_who_asked_for_other_clinics_records_this_week(client, outsider, staff, patient):
    root = User.objects.create_superuser("root", password="x")
    client.force_login(outsider)
    for _ in range(10):
        client.get(reverse("patient-detail", args=[patient.pk]))
    first = AuditEvent.objects.filter(user=outsider).order_by("pk").first()
    AuditEvent.objects.create(
        **{f: getattr(first, f) for f in ["user_id", "username", "action", "object_type", "object_id"]},
        at=timezone.now() - timedelta(days=8),  # older than the week: not counted
    )
    client.force_login(staff)
    client.get(reverse("patient-detail", args=[999_999]))  # missing, not another clinic's: not counted
    client.force_login(root)
    users = reverse("admin:auth_user_changelist")

    page = client.get(users)
    many = client.get(users, {"other_clinics": "many"})
    counts = {u.username: u.other_clinics_records for u in page.context["cl"].result_list}

    assert counts == {"outsider": 10, "staff": 0, "root": 0}
    assert "Another clinic&#x27;s records asked for (7 days)" in page.content.decode()
    assert [u.username for u in many.context["cl"].result_list] == ["outsider"]
    assert [u.username for u in client.get(users, {"other_clinics": "any"}).context["cl"].result_list] == ["outsider"]


# A Content-Security-Policy on every page: our own static files only, no inline script or style
# (tests/test_browser.py has Chromium check that every main page passes it)

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# Read by WeasyPrint to make the PDF report, never served to a browser.
NOT_PAGES = {"reports/analysis.html"}


def policy(response) -> dict[str, set[str]]:
    directives = [d.split() for d in response["Content-Security-Policy"].split(";") if d.strip()]
    return {name: set(values) for name, *values in directives}


def test_every_page_sends_a_policy_of_our_own_files_and_no_inline_code(client, staff, patient, case, analysis):
    anonymous = [reverse("login"), reverse("password_reset"), reverse("patient-detail", args=[999_999])]
    signed_in = [
        reverse("home"),
        reverse("patient-list"),
        reverse("patient-detail", args=[patient.pk]),
        reverse("case-detail", args=[case.pk]),
        reverse("analysis-list"),
        reverse("analysis-detail", args=[analysis.pk]),
        reverse("analysis-status", args=[analysis.pk]),
        reverse("api-token"),
        reverse("audit-log"),  # a 403
    ]
    answers = [client.get(url) for url in anonymous]
    client.force_login(staff)
    answers += [client.get(url) for url in signed_in]

    for response in answers:
        rules = policy(response)
        assert rules["default-src"] == rules["script-src"] == rules["style-src"] == rules["img-src"] == {"'self'"}
        assert rules["object-src"] == rules["base-uri"] == rules["frame-ancestors"] == {"'none'"}
        assert rules["form-action"] == {"'self'"}


def test_the_lockout_page_sends_the_policy_too(client, staff, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = client.post(reverse("login"), {"username": "staff", "password": "wrong"})

    assert response.status_code == 429
    assert policy(response)["script-src"] == {"'self'"}


def test_no_template_holds_an_inline_script_or_style():
    for template in TEMPLATES.rglob("*.html"):
        name = template.relative_to(TEMPLATES).as_posix()
        if name in NOT_PAGES:
            continue
        html = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), f"{name}: an inline <script>"
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html), f"{name}: inline style or event handler"


def test_the_api_docs_and_browsable_api_widen_the_policy_for_themselves_only(client, staff):
    client.force_login(staff)
    site = policy(client.get(reverse("home")))
    swagger = client.get(reverse("api:docs"))
    swagger_script = client.get(reverse("api:docs"), {"script": ""})
    redoc = policy(client.get(reverse("api:redoc")))
    browsable = policy(client.get(reverse("api:patient-list"), HTTP_ACCEPT="text/html"))
    json_answer = policy(client.get(reverse("api:patient-list"), HTTP_ACCEPT="application/json"))

    # Swagger UI: its setup script is a file of its own, on our origin; its icons are data: images.
    assert 'src="/api/docs/?script="' in swagger.content.decode()
    assert swagger_script["Content-Type"].startswith("application/javascript")
    assert policy(swagger)["img-src"] == {"'self'", "data:"}
    assert policy(swagger)["script-src"] == policy(swagger)["style-src"] == {"'self'"}
    # Redoc writes its own <style> elements and searches in a blob: worker.
    assert redoc["style-src"] == {"'self'", "'unsafe-inline'"} and redoc["worker-src"] == {"'self'", "blob:"}
    assert redoc["script-src"] == {"'self'"}
    # DRF's HTML pages place things with style attributes; they run no inline script either.
    assert browsable["style-src"] == {"'self'", "'unsafe-inline'"} and browsable["script-src"] == {"'self'"}
    for narrow in [site, json_answer]:
        assert narrow["style-src"] == narrow["img-src"] == {"'self'"} and "worker-src" not in narrow


def test_the_docs_load_nothing_from_elsewhere(client):
    for url in [reverse("api:docs"), reverse("api:redoc")]:
        html = client.get(url).content.decode()
        assert "https://" not in html and "http://" not in html, url


def test_favicon_ico_is_the_static_icon(client):
    response = client.get("/favicon.ico")

    assert response.status_code == 302
    assert response["Location"] == "/static/favicon.svg"
    assert (TEMPLATES.parent / "static" / "favicon.svg").exists()
