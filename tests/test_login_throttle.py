"""Sign-in throttling (django-axes): after AXES_FAILURE_LIMIT (5) wrong passwords for one username from one
address, that username is refused from that address, right password or not, for AXES_COOLOFF_MINUTES (15);
through the sign-in form and the API token endpoint alike. A successful sign-in forgets earlier typos."""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from analysis.models import AuditEvent

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"  # tests/factories.py
LOGIN = reverse("login")
TOKEN = reverse("api:token")


def sign_in(client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def ask_token(client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post(TOKEN, {"username": username, "password": password}, format="json", REMOTE_ADDR=address)


def signed_in(client) -> bool:
    return client.get(reverse("home")).status_code == 200


def fail_times(n: int, attempt, *args) -> list[int]:
    return [attempt(*args).status_code for _ in range(n)]


def change_password(client, old_password: str, address: str = "10.0.0.1"):
    new = "a much better passphrase 42"
    return client.post(
        reverse("password_change"),
        {"old_password": old_password, "new_password1": new, "new_password2": new},
        REMOTE_ADDR=address,
    )


# The sign-in form


def test_the_fifth_wrong_password_locks_and_then_even_the_right_one_is_refused(client, staff):
    assert fail_times(4, sign_in, client, "staff", "wrong") == [200] * 4  # the form again, with its error
    fifth = sign_in(client, "staff", "wrong")
    assert fifth.status_code == 429

    sixth = sign_in(client, "staff", PASSWORD)

    assert sixth.status_code == 429
    assert "Too many failed sign-ins" in sixth.content.decode()
    assert not signed_in(client)
    assert AccessAttempt.objects.get(username="staff").failures_since_start >= 5


def test_the_lockout_page_says_why_and_for_how_long(client, staff):
    fail_times(5, sign_in, client, "staff", "wrong")

    page = sign_in(client, "staff", PASSWORD).content.decode()

    assert "Sign-in locked" in page
    assert "Try again in 15 minutes" in page


def test_fewer_failures_than_the_limit_still_let_the_right_password_in(client, staff):
    fail_times(4, sign_in, client, "staff", "wrong")

    response = sign_in(client, "staff", PASSWORD)

    assert response.status_code == 302
    assert signed_in(client)


def test_a_successful_sign_in_forgets_the_earlier_failures(client, staff):
    fail_times(4, sign_in, client, "staff", "wrong")
    assert sign_in(client, "staff", PASSWORD).status_code == 302
    client.post(reverse("logout"))
    assert not AccessAttempt.objects.filter(username="staff").exists()

    fail_times(4, sign_in, client, "staff", "wrong")  # 8 failures in all, but never 5 in a row

    assert sign_in(client, "staff", PASSWORD).status_code == 302
    assert signed_in(client)


def test_a_lockout_holds_one_username_at_one_address_only(client, staff, colleague):
    fail_times(5, sign_in, client, "staff", "wrong", "10.0.0.1")

    # A colleague behind the clinic's same address is not locked out with them...
    assert sign_in(client, "colleague", PASSWORD, "10.0.0.1").status_code == 302
    client.post(reverse("logout"))
    # ...nor is the member of staff elsewhere (an attacker cannot lock someone out from afar).
    assert sign_in(client, "staff", PASSWORD, "10.0.0.2").status_code == 302


def test_the_lockout_ends_after_the_cool_off(client, staff):
    fail_times(5, sign_in, client, "staff", "wrong")
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))

    assert sign_in(client, "staff", PASSWORD).status_code == 302
    assert signed_in(client)


def test_the_limit_and_cool_off_come_from_settings(client, staff, settings):
    settings.AXES_FAILURE_LIMIT = 2
    settings.AXES_COOLOFF_TIME = timedelta(minutes=30)

    assert sign_in(client, "staff", "wrong").status_code == 200
    locked = sign_in(client, "staff", "wrong")

    assert locked.status_code == 429
    assert "Try again in 30 minutes" in locked.content.decode()


def test_the_admin_sign_in_is_throttled_too(client, db, django_user_model):
    django_user_model.objects.create_superuser("root", password=PASSWORD)
    for _ in range(5):
        last = client.post("/admin/login/", {"username": "root", "password": "wrong"}, REMOTE_ADDR="10.0.0.1")
    assert last.status_code == 429

    response = client.post("/admin/login/", {"username": "root", "password": PASSWORD}, REMOTE_ADDR="10.0.0.1")

    assert response.status_code == 429
    assert client.get("/admin/").status_code == 302


# The API token endpoint


@pytest.fixture
def api():
    return APIClient()


def test_the_token_endpoint_locks_after_five_wrong_passwords_with_a_clear_429(api, staff):
    assert fail_times(4, ask_token, api, "staff", "wrong") == [400] * 4
    fifth = ask_token(api, "staff", "wrong")
    assert fifth.status_code == 429

    sixth = ask_token(api, "staff", PASSWORD)

    assert sixth.status_code == 429
    assert sixth["Content-Type"] == "application/json"
    assert "Too many failed sign-ins" in sixth.json()["detail"]
    assert sixth["Retry-After"] == str(15 * 60)
    assert not Token.objects.filter(user=staff).exists()


def test_token_and_form_failures_count_together(client, api, staff):
    fail_times(3, ask_token, api, "staff", "wrong")
    fail_times(2, sign_in, client, "staff", "wrong")

    assert ask_token(api, "staff", PASSWORD).status_code == 429
    assert sign_in(client, "staff", PASSWORD).status_code == 429


def test_a_token_issued_forgets_the_earlier_failures(api, staff):
    fail_times(4, ask_token, api, "staff", "wrong")
    assert ask_token(api, "staff", PASSWORD).status_code == 200

    fail_times(4, ask_token, api, "staff", "wrong")

    response = ask_token(api, "staff", PASSWORD)
    assert response.status_code == 200
    assert Token.objects.get(user=staff).key == response.json()["token"]


def test_a_token_issued_counts_as_a_sign_in(api, staff):
    ask_token(api, "staff", PASSWORD)

    staff.refresh_from_db()
    assert staff.last_login is not None
    event = AuditEvent.objects.get(action=AuditEvent.Action.LOGIN)
    assert (event.user, event.clinic, event.path) == (staff, staff.membership.clinic, TOKEN)


# What the audit trail keeps of it


def test_failed_sign_ins_and_the_lockout_are_in_the_accounts_clinic_trail(client, staff):
    fail_times(5, sign_in, client, "staff", "wrong")
    sign_in(client, "nobody-by-this-name", "wrong")

    events = list(AuditEvent.objects.order_by("pk").values_list("action", "username", "clinic", "ip_address"))

    clinic = staff.membership.clinic.pk
    assert events == [
        *[("login_failed", "staff", clinic, "10.0.0.1")] * 4,
        ("locked_out", "staff", clinic, "10.0.0.1"),
        ("login_failed", "nobody-by-this-name", None, "10.0.0.1"),
    ]


def test_a_token_request_leaves_no_session_behind(api, staff):
    response = ask_token(api, "staff", PASSWORD)

    assert response.status_code == 200
    assert "sessionid" not in response.cookies


# The password change form: a stolen session must not guess the password at leisure


def test_wrong_old_passwords_on_the_change_form_count_and_lock_like_failed_sign_ins(client, staff):
    client.force_login(staff)
    assert fail_times(4, change_password, client, "wrong") == [200] * 4  # the form again, with its error
    assert change_password(client, "wrong").status_code == 429

    refused = change_password(client, PASSWORD)

    assert refused.status_code == 429
    staff.refresh_from_db()
    assert staff.check_password(PASSWORD)  # unchanged
    assert sign_in(Client(), "staff", PASSWORD).status_code == 429  # the sign-in form is locked as well


def test_the_right_old_password_still_changes_it(client, staff):
    client.force_login(staff)
    change_password(client, "wrong")

    response = change_password(client, PASSWORD)

    assert response["Location"] == reverse("password_change_done")
    staff.refresh_from_db()
    assert staff.check_password("a much better passphrase 42")
