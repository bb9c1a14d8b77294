import secrets
import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils.text import slugify

from analysis.demo import seed_clinic
from analysis.models import Clinic, Membership

DEMO_CLINIC = "Demo Clinic"
DEMO_USER = "demo"


class Command(BaseCommand):
    help = (
        "Fill a clinic with realistic fake patients, cases, images, finished analyses (no model run) and "
        "confirmed diagnoses for part of them, "
        "so the pages can be tried at volume. Creates the clinic, and a staff account 'demo' if it has no members."
    )

    def add_arguments(self, parser):
        parser.add_argument("--patients", type=int, default=200, help="how many patients to add (default 200)")
        parser.add_argument("--analyses", type=int, help="how many analyses in all (default 5 a patient)")
        parser.add_argument("--clinic", default=DEMO_CLINIC, help=f"clinic name (default {DEMO_CLINIC!r})")
        parser.add_argument("--seed", type=int, default=1, help="random seed, for repeatable data")

    def handle(self, *args, patients, analyses, clinic, seed, **options):
        if patients < 1 or (analyses is not None and analyses < 0):
            raise CommandError("--patients must be at least 1 and --analyses not negative")
        clinic, _ = Clinic.objects.get_or_create(name=clinic)
        user, password = self._demo_user(clinic)
        started = time.perf_counter()
        seeded = seed_clinic(clinic, user, patients, analyses, seed=seed)
        self.stdout.write(
            self.style.SUCCESS(
                f"Added {seeded.patients} patients, {seeded.cases} cases, {seeded.images} images, "
                f"{seeded.analyses} analyses and {seeded.outcomes} confirmed diagnoses to {clinic.name!r} in "
                f"{time.perf_counter() - started:.1f} s."
            )
        )
        if password:
            self.stdout.write(f"Sign in as {user.username!r} with password {password!r} (shown only this once).")
        else:
            self.stdout.write(f"Recorded as uploaded by {user.username!r}, a member of {clinic.name!r}.")

    def _demo_user(self, clinic):
        User = get_user_model()
        membership = Membership.objects.filter(clinic=clinic).select_related("user").order_by("pk").first()
        if membership is not None:
            return membership.user, None
        username = DEMO_USER
        if User.objects.filter(username=username).exists():
            username = f"{DEMO_USER}-{slugify(clinic.name)}"
        if User.objects.filter(username=username).exists():
            raise CommandError(f"user {username!r} exists but does not belong to {clinic.name!r}")
        password = secrets.token_urlsafe(12)
        user = User.objects.create_user(username, password=password)
        Membership.objects.create(user=user, clinic=clinic)
        return user, password
