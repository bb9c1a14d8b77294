from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from analysis.models import Clinic, Membership


class Command(BaseCommand):
    help = (
        "Create a clinic if missing and a user working there as staff (or clinic admin). "
        "Running it again with the same arguments changes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("--clinic", required=True, help="clinic name (created if missing)")
        parser.add_argument("--username", required=True)
        parser.add_argument("--password", required=True)
        parser.add_argument("--email", default="")
        parser.add_argument("--clinic-admin", action="store_true", help="role clinic_admin, not staff")

    @transaction.atomic
    def handle(self, *args, clinic, username, password, email, clinic_admin, **options):
        role = Membership.Role.CLINIC_ADMIN if clinic_admin else Membership.Role.STAFF
        changes = []

        clinic_obj, created = Clinic.objects.get_or_create(name=clinic)
        if created:
            changes.append(f"created clinic {clinic!r}")

        user, created = get_user_model().objects.get_or_create(username=username, defaults={"email": email})
        if user.is_superuser:
            # Platform admins see every clinic in the Django admin; in a clinic their token would also read that
            # clinic's patients through the API as one of its staff.
            raise CommandError(f"{username!r} is a platform admin (superuser): platform admins belong to no clinic")
        if created:
            changes.append(f"created user {username!r}")
        # check_password first: set_password salts anew, so it would rewrite an unchanged password.
        if not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
            if not created:
                changes.append("changed password")

        membership, created = Membership.objects.get_or_create(user=user, defaults={"clinic": clinic_obj, "role": role})
        if membership.clinic_id != clinic_obj.pk:
            raise CommandError(f"{username!r} already works for {membership.clinic}, not {clinic!r}")
        if created:
            changes.append(f"made them {membership.get_role_display().lower()}")
        elif membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
            changes.append(f"changed role to {membership.get_role_display().lower()}")

        if changes:
            self.stdout.write(f"{username} @ {clinic}: " + ", ".join(changes) + ".")
        else:
            self.stdout.write(f"{username} @ {clinic}: already set up, nothing changed.")
