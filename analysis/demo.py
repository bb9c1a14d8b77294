"""Realistic fake clinic data for trying the pages at volume (`manage.py seed_demo`), with no model run.

Rows are written with bulk_create in batches, so no signal fires and nothing is sent to the workers: every
seeded analysis is already done (or failed), with probabilities drawn to look like the model's output and
class frequencies like HAM10000's. All images share a few small generated pictures. Part of the older results get a
confirmed diagnosis (`confirm_some`), drawn from the model card's test counts, so that "The model in this clinic"
shows figures like the card's.
"""

import contextlib
import hashlib
import io
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from PIL import Image, ImageDraw

from analysis.classes import CLASS_CODES, MALIGNANT
from analysis.models import Analysis, Case, Clinic, LesionImage, Outcome, Patient
from analysis.reports import shipped_card

# HAM10000's class frequencies (of 10,015 images).
CLASS_WEIGHTS = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}
FIRST_NAMES = [
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Elena",
    "Felix",
    "Greta",
    "Hannah",
    "Isabel",
    "Jakob",
    "Katharina",
    "Lukas",
    "Maria",
    "Niklas",
    "Olivia",
    "Paul",
    "Quirin",
    "Rosa",
    "Sophie",
    "Tobias",
    "Ursula",
    "Valentin",
    "Waltraud",
    "Xaver",
    "Yvonne",
    "Zoe",
    "Amir",
    "Bianca",
    "Chen",
    "Dario",
    "Emre",
    "Fatima",
]
LAST_NAMES = [
    "Bauer",
    "Berger",
    "Brunner",
    "Eder",
    "Fischer",
    "Gruber",
    "Hofer",
    "Huber",
    "Koller",
    "Lehner",
    "Mayer",
    "Moser",
    "Pichler",
    "Reiter",
    "Schmid",
    "Schwarz",
    "Steiner",
    "Wagner",
    "Weber",
    "Wimmer",
    "Wolf",
    "Yilmaz",
    "Novak",
    "Horvat",
    "Rossi",
    "Kowalski",
    "Nguyen",
    "Costa",
    "Lindqvist",
]
BODY_SITES = [site for site in Case.BodySite.values if site != Case.BodySite.UNKNOWN]
NOTES = [
    "",
    "",
    "Pigmented lesion, asymmetric.",
    "Patient noticed growth over 3 months.",
    "Follow-up in 6 months.",
    "Itching reported; no bleeding.",
    "Irregular border on dermoscopy.",
]
BATCH = 2000
# The seeded results are labelled as the shipped model's (its thresholds set their tiers, and its card is what their
# confirmed diagnoses are drawn from and compared with); this, without a model card.
MODEL_VERSION = "demo-seed"
# Results older than this may have a confirmed diagnosis, each with this chance, the same in every tier: a clinic
# that confirmed urgent results more often than routine ones would see a sensitivity better than the model's.
CONFIRMED_AFTER = timedelta(days=14)
CONFIRMED_SHARE = 0.4
# Independence of the two clues overstates how sure they are together (the clinic's figures came out 6-9 points
# above the card's); half the draws use the most likely class alone, which brings them within about 3 points.
MIX = 0.5


@dataclass
class Seeded:
    patients: int
    cases: int
    images: int
    analyses: int
    outcomes: int = 0


def demo_pictures(count: int = 6) -> list[tuple[str, str, int, int]]:
    """A few lesion-like JPEGs in storage, made once: (name, sha256, width, height)."""
    pictures = []
    for i in range(count):
        name = f"lesions/demo-{i}.jpg"
        image = Image.new("RGB", (240, 180), (222 - 6 * i, 176 - 4 * i, 152 - 3 * i))
        ImageDraw.Draw(image).ellipse((70 + 4 * i, 40 + 3 * i, 160 + 2 * i, 140), fill=(90 + 10 * i, 55, 40 + 3 * i))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=88)
        data = buffer.getvalue()
        if not default_storage.exists(name):
            default_storage.save(name, ContentFile(data))
        pictures.append((name, hashlib.sha256(data).hexdigest(), 240, 180))
    return pictures


def fake_probabilities(rng: random.Random) -> dict[str, float]:
    predicted = rng.choices(list(CLASS_WEIGHTS), weights=list(CLASS_WEIGHTS.values()))[0]
    top = rng.uniform(0.42, 0.98)
    rest = [rng.random() ** 2 for _ in range(len(CLASS_CODES) - 1)]
    scale = (1 - top) / sum(rest)
    others = iter(r * scale for r in rest)
    probabilities = {code: top if code == predicted else next(others) for code in CLASS_CODES}
    probabilities[predicted] += 1 - sum(probabilities.values())  # exactly 1 after rounding
    return probabilities


@contextlib.contextmanager
def _dates_as_given():
    """bulk_create would stamp every row with now (auto_now_add); seeded history needs its own dates."""
    fields = [Patient._meta.get_field("created_at"), LesionImage._meta.get_field("uploaded_at")]
    fields.append(Analysis._meta.get_field("created_at"))
    for field in fields:
        field.auto_now_add = False
    try:
        yield
    finally:
        for field in fields:
            field.auto_now_add = True


@transaction.atomic
def seed_clinic(clinic: Clinic, user, patients: int, analyses: int | None = None, seed: int = 1) -> Seeded:
    """Add `patients` patients to a clinic with 1-3 cases each and `analyses` analyses in all (default
    five a patient), spread over the last two years. `user` is recorded as clinician and uploader."""
    rng = random.Random(seed)
    analyses = patients * 5 if analyses is None else analyses
    card = shipped_card()
    version = card["model_version"] if card else MODEL_VERSION
    now = timezone.now()
    today = timezone.localdate()
    pictures = demo_pictures()
    taken = set(Patient.objects.filter(clinic=clinic).values_list("mrn", flat=True))
    start = Patient.objects.filter(clinic=clinic).count()

    with _dates_as_given():
        new_patients = []
        number = start
        while len(new_patients) < patients:
            number += 1
            mrn = f"D{number:07d}"
            if mrn in taken:
                continue
            new_patients.append(
                Patient(
                    clinic=clinic,
                    mrn=mrn,
                    name=f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
                    date_of_birth=date(1930, 1, 1) + timedelta(days=rng.randrange(365 * 80)),
                    sex=rng.choice(["female", "male", "female", "male", "other"]),
                    created_at=now - timedelta(days=rng.randrange(730, 1500)),
                )
            )
        new_patients = Patient.objects.bulk_create(new_patients, batch_size=BATCH)

        cases = []
        for patient in new_patients:
            for _ in range(rng.choice([1, 1, 2, 3])):
                opened = today - timedelta(days=rng.randrange(1, 730))
                closed = rng.random() < 0.4
                cases.append(
                    Case(
                        patient=patient,
                        body_site=rng.choice(BODY_SITES),
                        clinician=user,
                        opened_on=opened,
                        closed_on=opened + timedelta(days=rng.randrange(30, 200)) if closed else None,
                        status=Case.Status.CLOSED if closed else Case.Status.OPEN,
                        clinical_notes=rng.choice(NOTES),
                    )
                )
        cases = Case.objects.bulk_create(cases, batch_size=BATCH)

        # Every case gets one image, the rest are spread at random; one analysis per image.
        owners = [cases[i % len(cases)] for i in range(analyses)] if analyses <= len(cases) else cases
        owners = owners + [rng.choice(cases) for _ in range(analyses - len(owners))]
        images = []
        for case in owners:
            name, sha, width, height = rng.choice(pictures)
            uploaded = _moment_after(rng, case.opened_on, now)
            images.append(
                LesionImage(
                    case=case,
                    image=name,
                    original_filename="dermoscopy.jpg",
                    sha256=sha,
                    width=width,
                    height=height,
                    uploaded_by=user,
                    uploaded_at=uploaded,
                    captured_at=uploaded,
                )
            )
        images = LesionImage.objects.bulk_create(images, batch_size=BATCH)

        rows = []
        for image in images:
            finished = image.uploaded_at + timedelta(seconds=rng.uniform(0.5, 4))
            if rng.random() < 0.02:
                rows.append(
                    Analysis(
                        image=image,
                        status=Analysis.Status.FAILED,
                        error="The image could not be read as a picture (demo).",
                        created_at=image.uploaded_at,
                        queued_at=image.uploaded_at,
                        started_at=image.uploaded_at,
                        finished_at=finished,
                        attempts=1,
                    )
                )
                continue
            result = Analysis.result_fields(fake_probabilities(rng))
            # Older results have been looked at; some recent ones are still waiting for a clinician.
            opened = now - image.uploaded_at > timedelta(days=3) or rng.random() < 0.3
            rows.append(
                Analysis(
                    image=image,
                    status=Analysis.Status.DONE,
                    **result,
                    model_version=version,
                    created_at=image.uploaded_at,
                    queued_at=image.uploaded_at,
                    started_at=image.uploaded_at,
                    finished_at=finished,
                    attempts=1,
                    opened_at=finished + timedelta(minutes=5) if opened else None,
                    opened_by=user if opened else None,
                )
            )
        rows = Analysis.objects.bulk_create(rows, batch_size=BATCH)
        outcomes = Outcome.objects.bulk_create(confirm_some(rows, rng, user, card, now), batch_size=BATCH)
    return Seeded(len(new_patients), len(cases), len(images), len(rows), len(outcomes))


def confirm_some(rows: list[Analysis], rng: random.Random, user, card: dict | None, now: datetime) -> list[Outcome]:
    """Confirmed diagnoses for CONFIRMED_SHARE of the done results older than CONFIRMED_AFTER. The confirmed class
    of a result is drawn given its most likely class and its tier, from the card's test counts, as if the two were
    independent given the class: P(class | predicted, tier) ~ confusion[class][predicted] * tiers[class][tier] /
    lesions[class]. None without a card (no counts to draw from)."""
    if card is None or "triage" not in card:
        return []
    confusion = card["test"]["confusion_matrix"]
    tiers = card["triage"]["test"]["tiers_by_class"]
    lesions = [sum(row) for row in confusion]
    outcomes = []
    for analysis in rows:
        if analysis.status != Analysis.Status.DONE or now - analysis.finished_at < CONFIRMED_AFTER:
            continue
        if rng.random() >= CONFIRMED_SHARE:
            continue
        predicted = CLASS_CODES.index(analysis.predicted_class)
        both = [
            confusion[t][predicted] * tiers[code][analysis.risk_tier] / max(lesions[t], 1)
            for t, code in enumerate(CLASS_CODES)
        ]
        alone = [row[predicted] for row in confusion]
        weights = [MIX * b / (sum(both) or 1) + (1 - MIX) * a / sum(alone) for b, a in zip(both, alone, strict=True)]
        diagnosis = rng.choices(CLASS_CODES, weights=weights)[0]
        malignant = diagnosis in MALIGNANT
        method = (
            rng.choices(["histo", "consensus"], [0.95, 0.05])[0]
            if malignant
            else rng.choices(["follow_up", "histo", "consensus", "confocal"], [0.55, 0.3, 0.13, 0.02])[0]
        )
        recorded = min(analysis.finished_at + timedelta(days=rng.uniform(5, 60)), now)
        outcomes.append(
            Outcome(
                analysis=analysis,
                diagnosis=diagnosis,
                method=method,
                confirmed_on=timezone.localdate(recorded) - timedelta(days=rng.randrange(0, 4)),
                recorded_by=user,
                recorded_at=recorded,
            )
        )
    return outcomes


def _moment_after(rng: random.Random, day: date, now: datetime) -> datetime:
    start = timezone.make_aware(datetime.combine(day, datetime.min.time())) + timedelta(hours=8)
    span = max((now - start).total_seconds(), 60)
    return start + timedelta(seconds=rng.uniform(0, span))
