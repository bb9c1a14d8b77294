import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from analysis.models import Clinic, Membership

pytestmark = pytest.mark.django_db
User = get_user_model()


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def snapshot():
    return (
        list(Clinic.objects.values()),
        list(User.objects.values()),
        list(Membership.objects.values()),
    )


ADD_ANNA = ["add_staff", "--clinic", "Vienna Derm", "--username", "anna", "--password", "s3cret-pass"]


def test_add_staff_creates_the_clinic_and_the_staff_member():
    run(*ADD_ANNA)

    anna = User.objects.get(username="anna")
    assert anna.check_password("s3cret-pass")
    assert anna.membership.clinic.name == "Vienna Derm"
    assert anna.membership.role == Membership.Role.STAFF
    assert not anna.is_staff and not anna.is_superuser


def test_add_staff_twice_changes_nothing():
    run(*ADD_ANNA)
    before = snapshot()

    output = run(*ADD_ANNA)

    assert snapshot() == before
    assert "nothing changed" in output


def test_add_staff_makes_a_clinic_admin_and_can_change_the_role_back():
    run(*ADD_ANNA, "--clinic-admin")
    assert User.objects.get(username="anna").membership.role == Membership.Role.CLINIC_ADMIN

    run(*ADD_ANNA)
    assert User.objects.get(username="anna").membership.role == Membership.Role.STAFF


def test_add_staff_refuses_to_move_a_user_to_another_clinic():
    run(*ADD_ANNA)
    with pytest.raises(CommandError, match="already works for Vienna Derm"):
        run("add_staff", "--clinic", "Graz Derm", "--username", "anna", "--password", "x")
    assert User.objects.get(username="anna").membership.clinic.name == "Vienna Derm"
    assert not Clinic.objects.filter(name="Graz Derm").exists()


def test_bootstrap_demo_creates_the_admin_once_and_prints_the_password():
    output = run("bootstrap_demo")

    admin = User.objects.get(username="admin")
    password = output.split("admin\n  password:")[1].split()[0]
    assert admin.is_superuser and admin.check_password(password)
    assert not Membership.objects.filter(user=admin).exists()  # a platform admin belongs to no clinic
    before = snapshot()

    again = run("bootstrap_demo")

    assert snapshot() == before
    assert "password:" not in again
