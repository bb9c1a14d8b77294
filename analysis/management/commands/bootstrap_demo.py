import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from analysis.models import Clinic, Membership

ADMIN_USERNAME = "admin"
DEMO_CLINIC = "Demo Clinic"


class Command(BaseCommand):
    help = (
        "First run only: create a demo clinic and a platform admin with a generated password, "
        "and print how to sign in. Does nothing once the admin exists."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="where the site runs")

    @transaction.atomic
    def handle(self, *args, url, **options):
        User = get_user_model()
        if User.objects.filter(username=ADMIN_USERNAME).exists():
            self.stdout.write(
                f"skinsite is set up; sign in at {url}/admin/ as {ADMIN_USERNAME!r} "
                f"(lost the password? python manage.py changepassword {ADMIN_USERNAME})."
            )
            return

        password = secrets.token_urlsafe(12)
        clinic, _ = Clinic.objects.get_or_create(name=DEMO_CLINIC)
        admin = User.objects.create_superuser(ADMIN_USERNAME, email="", password=password)
        Membership.objects.create(user=admin, clinic=clinic, role=Membership.Role.CLINIC_ADMIN)
        self.stdout.write(
            self.style.SUCCESS(
                "\n".join(
                    [
                        "",
                        f"Created {DEMO_CLINIC!r} and the platform admin account:",
                        f"  URL:      {url}/admin/",
                        f"  username: {ADMIN_USERNAME}",
                        f"  password: {password}",
                        "Write the password down: it is shown only this once.",
                        "",
                    ]
                )
            )
        )
