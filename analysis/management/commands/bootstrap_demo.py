import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from analysis.models import Clinic, Membership

ADMIN_USERNAME = "admin"
DEMO_USERNAME = "demo"
DEMO_CLINIC = "Demo Clinic"


class Command(BaseCommand):
    help = (
        "First run only: create a platform admin 'admin' (no clinic: it works in the Django admin) and a demo "
        "clinic with its clinic admin 'demo', each with a generated password, and print how to sign in. "
        "Creates only what is missing."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="where the site runs")

    @transaction.atomic
    def handle(self, *args, url, **options):
        User = get_user_model()
        created = []

        admin = User.objects.filter(username=ADMIN_USERNAME).first()
        if admin is None:
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser(ADMIN_USERNAME, email="", password=password)
            created.append(("the platform admin account", f"{url}/admin/", ADMIN_USERNAME, password))
        elif Membership.objects.filter(user=admin).delete()[0]:
            # Made by an earlier version, which put the admin in the demo clinic: its token read that clinic's
            # patients. Platform admins work in the Django admin only; 'demo' works in the clinic.
            self.stdout.write(f"{ADMIN_USERNAME!r} no longer belongs to a clinic (platform admins never do).")

        if not User.objects.filter(username=DEMO_USERNAME).exists():
            password = secrets.token_urlsafe(12)
            clinic, _ = Clinic.objects.get_or_create(name=DEMO_CLINIC)
            demo = User.objects.create_user(DEMO_USERNAME, password=password)
            Membership.objects.create(user=demo, clinic=clinic, role=Membership.Role.CLINIC_ADMIN)
            created.append((f"{DEMO_CLINIC!r} and its clinic admin account", f"{url}/", DEMO_USERNAME, password))

        if not created:
            self.stdout.write(
                f"skinsite is set up; sign in at {url}/admin/ as {ADMIN_USERNAME!r} (platform admin) and at {url}/ "
                f"as {DEMO_USERNAME!r} ({DEMO_CLINIC}'s admin). Lost a password? "
                f"python manage.py changepassword {ADMIN_USERNAME} (or {DEMO_USERNAME})."
            )
            return
        lines = [""]
        for what, where, username, password in created:
            lines += [f"Created {what}:", f"  URL:      {where}", f"  username: {username}", f"  password: {password}"]
        lines += ["Write them down: passwords are shown only this once.", ""]
        self.stdout.write(self.style.SUCCESS("\n".join(lines)))
