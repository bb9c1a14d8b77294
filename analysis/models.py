"""What a clinic, patient, case, lesion image and analysis are.

Clinical records are never lost by a click: patient -> case -> image -> analysis are joined with
on_delete=PROTECT, so deleting anything that has records below it is refused, not cascaded.
Each clinical model names the lookup to its clinic in `clinic_lookup`; analysis/access.py scopes every
query a staff member can reach with it.
"""

import math
import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import PurePath
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.files.base import ContentFile
from django.db import models, transaction
from django.db.models import F, OuterRef, Prefetch, Q, Subquery
from django.db.models.fields.files import ImageFieldFile
from django.db.models.functions import Lower
from django.utils import timezone
from PIL import Image

from analysis.classes import CLASS_CODES, CLASS_NAMES, MALIGNANT
from analysis.image_files import sha256_of, upright_size
from ml.serve import tiers


def default_time_zone() -> str:
    return settings.TIME_ZONE


def validate_time_zone(value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"{value!r} is not a known time zone, e.g. Europe/Vienna") from None


def validate_uri(value: str) -> None:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S+", value):
        raise ValidationError(f"{value!r} is not a URI, e.g. urn:oid:1.2.3.4 or https://ehr.example.org/mrn")


class Clinic(models.Model):
    clinic_lookup = "pk"

    name = models.CharField(max_length=200, unique=True)
    time_zone = models.CharField(max_length=64, default=default_time_zone, validators=[validate_time_zone])
    mrn_system = models.CharField(
        "MRN identifier system",
        max_length=255,
        blank=True,
        validators=[validate_uri],
        help_text="The URI under which this clinic's record system (EHR) issues medical record numbers, for the "
        "FHIR export; blank for one of skinsite's own.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def mrn_identifier_system(self) -> str:
        """The identifier system of this clinic's MRNs in FHIR exports."""
        return self.mrn_system or f"urn:skinsite:fhir:clinic:{self.pk}:mrn"


class Membership(models.Model):
    """A user belongs to exactly one clinic, as staff or as the clinic's admin."""

    class Role(models.TextChoices):
        STAFF = "staff", "Staff"
        CLINIC_ADMIN = "clinic_admin", "Clinic admin"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership")
    clinic = models.ForeignKey(Clinic, on_delete=models.PROTECT, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.STAFF)

    def __str__(self) -> str:
        return f"{self.user} ({self.get_role_display()}, {self.clinic})"


MRN_TAKEN = "Another patient of this clinic already has this medical record number."


class Patient(models.Model):
    clinic_lookup = "clinic"

    class Sex(models.TextChoices):
        FEMALE = "female", "Female"
        MALE = "male", "Male"
        OTHER = "other", "Other"
        UNKNOWN = "unknown", "Unknown"

    clinic = models.ForeignKey(Clinic, on_delete=models.PROTECT, related_name="patients")
    mrn = models.CharField("medical record number", max_length=64)
    name = models.CharField(max_length=200)
    date_of_birth = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=10, choices=Sex.choices, default=Sex.UNKNOWN)
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "mrn"]
        constraints = [
            # One patient per record number in a clinic, whatever the case it was typed in: mrn-1 is MRN-1.
            models.UniqueConstraint(
                Lower("mrn"),
                "clinic",
                name="unique_mrn_per_clinic_any_case",
                violation_error_message=MRN_TAKEN,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.mrn})"

    @classmethod
    def mrn_taken(cls, clinic: "Clinic", mrn: str, other_than: int | None = None) -> bool:
        """Whether a patient of ``clinic`` other than ``other_than`` has ``mrn``, in any case: the page's, the API's
        and the database's one rule."""
        return cls.objects.filter(clinic=clinic, mrn__iexact=mrn).exclude(pk=other_than).exists()

    def history(self) -> models.QuerySet["Case"]:
        """Every case, its images and their analyses, oldest first, in three queries whatever
        the number of rows (cases, images, analyses)."""
        analyses = Analysis.objects.order_by("created_at", "pk")
        images = (
            LesionImage.objects.select_related("uploaded_by")
            .order_by("uploaded_at", "pk")
            .prefetch_related(Prefetch("analyses", queryset=analyses))
        )
        return (
            self.cases.select_related("clinician")
            .order_by("opened_on", "pk")
            .prefetch_related(Prefetch("images", queryset=images))
        )


class Case(models.Model):
    """One lesion followed over time on one patient."""

    clinic_lookup = "patient__clinic"

    class BodySite(models.TextChoices):
        # The HAM10000 `localization` vocabulary, stored as written there.
        ABDOMEN = "abdomen", "Abdomen"
        ACRAL = "acral", "Acral"
        BACK = "back", "Back"
        CHEST = "chest", "Chest"
        EAR = "ear", "Ear"
        FACE = "face", "Face"
        FOOT = "foot", "Foot"
        GENITAL = "genital", "Genital"
        HAND = "hand", "Hand"
        LOWER_EXTREMITY = "lower extremity", "Lower extremity"
        NECK = "neck", "Neck"
        SCALP = "scalp", "Scalp"
        TRUNK = "trunk", "Trunk"
        UPPER_EXTREMITY = "upper extremity", "Upper extremity"
        UNKNOWN = "unknown", "Unknown"

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="cases")
    body_site = models.CharField(max_length=20, choices=BodySite.choices, default=BodySite.UNKNOWN)
    clinician = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="cases",
    )
    opened_on = models.DateField(default=timezone.localdate)
    closed_on = models.DateField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    clinical_notes = models.TextField(blank=True)

    class Meta:
        ordering = ["-opened_on", "-pk"]

    def __str__(self) -> str:
        return f"Case {self.pk}: {self.get_body_site_display()} of {self.patient}"

    @property
    def is_open(self) -> bool:
        return self.status == self.Status.OPEN

    def close(self) -> None:
        """open -> closed, dated today (in the server's time zone); closing a closed case changes nothing."""
        if self.is_open:
            self.status = self.Status.CLOSED
            self.closed_on = timezone.localdate()
            self.save(update_fields=["status", "closed_on"])

    def reopen(self) -> None:
        if not self.is_open:
            self.status = self.Status.OPEN
            self.closed_on = None
            self.save(update_fields=["status", "closed_on"])


def lesion_image_path(instance: "LesionImage", filename: str) -> str:
    # A generated name: the uploader's file name may hold a patient's name (kept in original_filename).
    return f"lesions/{uuid.uuid4().hex}{_safe_suffix(filename)}"


def report_path(instance: "Analysis", filename: str) -> str:
    return f"reports/{uuid.uuid4().hex}.pdf"


def heatmap_path(instance: "Analysis", filename: str) -> str:
    return f"heatmaps/{uuid.uuid4().hex}.png"


def _safe_suffix(filename: str) -> str:
    suffix = PurePath(filename).suffix.lower()
    return suffix if suffix in {".jpg", ".jpeg", ".png"} else ""


class UprightImageFieldFile(ImageFieldFile):
    """An image file whose width and height are the picture's as seen: a phone's portrait photo is stored
    landscape with an EXIF orientation tag, and its record should say portrait."""

    def _get_image_dimensions(self) -> tuple[int | None, int | None]:
        if not hasattr(self, "_dimensions_cache"):
            close = self.closed
            self.open()
            try:
                self.seek(0)
                with Image.open(self) as picture:
                    self._dimensions_cache = upright_size(picture)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
                self._dimensions_cache = (None, None)  # as Django answers for a file it cannot read
            finally:
                if close:
                    self.close()
                else:
                    self.seek(0)
        return self._dimensions_cache


class UprightImageField(models.ImageField):
    attr_class = UprightImageFieldFile


class LesionImage(models.Model):
    clinic_lookup = "case__patient__clinic"

    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="images")
    # The stored file is the original, byte for byte (its sha256 is on record); width and height are upright.
    image = UprightImageField(upload_to=lesion_image_path, width_field="width", height_field="height")
    original_filename = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField(max_length=64, db_index=True, editable=False)
    width = models.PositiveIntegerField(editable=False)
    height = models.PositiveIntegerField(editable=False)
    captured_at = models.DateTimeField(null=True, blank=True)
    # PROTECT: who took a clinical image stays on record; users are deactivated, not deleted.
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="uploaded_images")
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-uploaded_at", "-pk"]

    def __str__(self) -> str:
        return f"Image {self.pk} of case {self.case_id}"

    def attach(self, upload: File) -> None:
        """Take an uploaded file: remember its name, fingerprint its bytes; the name it is stored
        under is generated when the row is saved."""
        self.sha256 = sha256_of(upload)
        self.image = upload
        # Only the last part of the name (a `../` path from a client is not a path here); the templates
        # escape it wherever it is shown.
        self.original_filename = PurePath((upload.name or "").replace("\\", "/")).name[:255]


class Analysis(models.Model):
    """One run of the classifier on one image.

    Status changes only through the transition methods below, each a single conditional UPDATE, so a
    duplicated or redelivered task cannot run twice or overwrite a newer state.
    """

    clinic_lookup = "image__case__patient__clinic"
    # Claims of one analysis after which the sweeper stops sending it again: an image that kills its worker
    # (out of memory, a native crash, the hard time limit) would otherwise be retried forever.
    MAX_ATTEMPTS = 3
    # A worker writes the report within seconds of the result; one not there after this long was lost and is
    # asked for again, and a request for it is repeated no sooner than this.
    REPORT_WAIT = timedelta(minutes=10)

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    class InvalidTransition(Exception):
        pass

    class RiskTier(models.TextChoices):
        # Ordered as the dashboard lists them: what needs a clinician soonest first.
        URGENT = "urgent", "Urgent"
        UNCERTAIN = "uncertain", "Uncertain"
        ROUTINE = "routine", "Routine"

    image = models.ForeignKey(LesionImage, on_delete=models.PROTECT, related_name="analyses")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    predicted_class = models.CharField(
        max_length=10, choices=[(code, CLASS_NAMES[code]) for code in CLASS_CODES], blank=True
    )
    confidence = models.FloatField(null=True, blank=True)
    probabilities = models.JSONField(default=dict, blank=True)
    # Suspicious for malignancy: malignant_probability at or above the urgent threshold (see result_fields);
    # not "the top class is malignant", which the class itself says.
    malignant = models.BooleanField(null=True, blank=True)
    # mel + bcc + akiec, and the triage tier it falls in (thresholds chosen on val, ml/serve/tiers.py); a flagged
    # image is always "uncertain".
    malignant_probability = models.FloatField(null=True, blank=True)
    risk_tier = models.CharField(max_length=10, choices=RiskTier.choices, blank=True)
    # Plain-language reasons the image may not be a dermoscopic lesion image (ml/serve/quality_gate.py); empty = passed.
    quality_flags = models.JSONField(default=list, blank=True)
    # Grad-CAM of the predicted class over the image (PNG), written before the row says done.
    heatmap = models.FileField(upload_to=heatmap_path, null=True, blank=True)
    model_version = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    report = models.FileField(upload_to=report_path, null=True, blank=True)
    # When the web last asked the workers for a missing report: clients poll for it every few seconds, and
    # one render per REPORT_WAIT is enough.
    report_requested_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # The first time a staff member looked at the finished result: malignant results nobody has opened
    # yet are what the dashboard puts first.
    opened_at = models.DateTimeField(null=True, blank=True)
    opened_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        verbose_name_plural = "analyses"
        ordering = ["-created_at", "-pk"]
        indexes = [
            # The past analyses list and the dashboard read newest first.
            models.Index(fields=["-created_at", "-id"], name="analysis_newest_first"),
            # The dashboard's "needs attention, not opened yet": a small slice of a large table.
            models.Index(
                fields=["status", "risk_tier"], condition=models.Q(opened_at__isnull=True), name="analysis_unopened"
            ),
        ]

    def __str__(self) -> str:
        return f"Analysis {self.pk} of image {self.image_id} ({self.status})"

    @classmethod
    def claim(cls, pk: int) -> bool:
        """queued -> running. True for exactly one caller; any other claim of the same analysis
        gets False and must leave it alone."""
        changed = cls.objects.filter(pk=pk, status=cls.Status.QUEUED).update(
            status=cls.Status.RUNNING,
            started_at=timezone.now(),
            finished_at=None,
            error="",
            attempts=F("attempts") + 1,
        )
        return changed == 1

    @staticmethod
    def result_fields(probabilities: dict[str, float], quality_flags: Sequence[str] = ()) -> dict:
        """The stored result that follows from 7 probabilities and the quality gate's flags: themselves, the
        predicted class, its confidence, the malignant flag, the malignant probability and the triage tier."""
        probabilities = _checked_probabilities(probabilities)
        predicted = max(probabilities, key=probabilities.__getitem__)
        quality_flags = [str(flag) for flag in quality_flags]
        rules = tiers.load_triage()
        malignant_probability = tiers.malignant_probability(probabilities)
        return {
            "probabilities": probabilities,
            "predicted_class": predicted,
            "confidence": probabilities[predicted],
            # One meaning of "malignant" everywhere: the malignant classes together reach the urgent threshold,
            # whatever the single most likely class (so the "malignant" filter never hides an urgent result).
            "malignant": malignant_probability >= rules.urgent_threshold,
            "malignant_probability": malignant_probability,
            "risk_tier": rules.tier(probabilities, flagged=bool(quality_flags)),
            "quality_flags": quality_flags,
        }

    @property
    def flagged(self) -> bool:
        """The quality gate doubted that the image is a dermoscopic lesion image."""
        return bool(self.quality_flags)

    @property
    def has_heatmap(self) -> bool:
        return bool(self.heatmap) and self.heatmap.storage.exists(self.heatmap.name)

    @property
    def has_report(self) -> bool:
        """Whether the report file is written and still on disk."""
        return bool(self.report) and self.report.storage.exists(self.report.name)

    def finish(
        self,
        probabilities: dict[str, float],
        model_version: str,
        *,
        quality_flags: Sequence[str] = (),
        heatmap_png: bytes | None = None,
    ) -> None:
        """running -> done, storing the 7 probabilities, what follows from them and the heatmap, in one UPDATE.

        The heatmap file is written first and the row points at it only when the transition succeeds, so a
        result is never shown half-written; a lost race removes the file again."""
        fields = self.result_fields(probabilities, quality_flags)
        heatmap_name = None
        if heatmap_png is not None:
            storage = self.heatmap.storage
            heatmap_name = storage.save(heatmap_path(self, "heatmap.png"), ContentFile(heatmap_png))
        try:
            self._transition(
                {self.Status.RUNNING},
                status=self.Status.DONE,
                **fields,
                heatmap=heatmap_name,
                model_version=model_version,
                finished_at=timezone.now(),
                error="",
            )
        except BaseException:
            if heatmap_name:
                self.heatmap.storage.delete(heatmap_name)
            raise

    def fail(self, reason: str) -> None:
        """queued or running -> failed, with a short reason for the staff and the logs."""
        self._transition(
            {self.Status.QUEUED, self.Status.RUNNING},
            status=self.Status.FAILED,
            error=reason,
            finished_at=timezone.now(),
        )

    def requeue(self) -> None:
        """queued, running (stuck) or failed -> queued, ready for a new task."""
        self._transition(
            {self.Status.QUEUED, self.Status.RUNNING, self.Status.FAILED},
            status=self.Status.QUEUED,
            queued_at=timezone.now(),
            started_at=None,
            finished_at=None,
        )

    @classmethod
    def ask_for_report(cls, pk: int) -> datetime | None:
        """Note that a done analysis's report is being asked for; the time noted, or None when it was asked
        for less than REPORT_WAIT ago (or the analysis is not done), and nothing needs sending."""
        now = timezone.now()
        not_recently = Q(report_requested_at__isnull=True) | Q(report_requested_at__lt=now - cls.REPORT_WAIT)
        changed = cls.objects.filter(not_recently, pk=pk, status=cls.Status.DONE).update(report_requested_at=now)
        return now if changed else None

    @classmethod
    def withdraw_report_request(cls, pk: int, asked_at: datetime) -> None:
        """The request noted at `asked_at` was never sent (the broker was away): the next caller asks again."""
        cls.objects.filter(pk=pk, report_requested_at=asked_at).update(report_requested_at=None)

    def attach_report(self, pdf: bytes) -> bool:
        """Store a rendered report and point the row at it; False, with this file deleted again, when another
        render attached one first. The file is written before the row points at it, so a half-written report
        is never offered; the row is locked while it is checked, so two renders at once leave one report and
        no orphaned file of patient data."""
        storage = self.report.storage
        name = storage.save(report_path(self, "report.pdf"), ContentFile(pdf))
        try:
            with transaction.atomic():
                current = type(self).objects.select_for_update().get(pk=self.pk)
                if current.has_report:
                    storage.delete(name)
                    return False
                type(self).objects.filter(pk=self.pk).update(report=name)
        except BaseException:
            storage.delete(name)
            raise
        self.report.name = name
        return True

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.DONE, self.Status.FAILED)

    def mark_opened(self, user) -> bool:
        """Remember the first staff member who opened the finished result; later visits change nothing.
        True when this call was the first."""
        if self.status != self.Status.DONE or self.opened_at is not None:
            return False
        now = timezone.now()
        changed = (
            type(self)
            .objects.filter(pk=self.pk, status=self.Status.DONE, opened_at__isnull=True)
            .update(opened_at=now, opened_by=user)
        )
        if changed:
            self.opened_at, self.opened_by = now, user
        return changed == 1

    def probability_rows(self) -> list[tuple[str, str, float, bool]]:
        """(code, full name, probability, malignant) for all 7 classes, most likely first."""
        rows = [(code, CLASS_NAMES[code], float(p), code in MALIGNANT) for code, p in self.probabilities.items()]
        return sorted(rows, key=lambda row: -row[2])

    @classmethod
    def recover_stale(cls, running_before, queued_before) -> list[int]:
        """Analyses whose task was lost, made ready to send again; returns their ids.

        - running since before ``running_before`` (past the hard time limit: its worker died): back to queued,
          or failed once it has had MAX_ATTEMPTS tries, since the image itself is likely what kills the worker;
        - queued since before ``queued_before`` (the broker was down, or lost the message): queued_at renewed.
        Each row changes in its own conditional UPDATE, so two sweepers never both take the same one.
        """
        ready = []
        now = timezone.now()
        gave_up = {
            "status": cls.Status.FAILED,
            "error": f"Stopped after {cls.MAX_ATTEMPTS} attempts: the worker stopped each time while analysing "
            "this image. Submit it again or contact support.",
            "finished_at": now,
        }
        stale = cls.objects.filter(status=cls.Status.RUNNING, started_at__lt=running_before)
        for pk, started_at, attempts in stale.values_list("pk", "started_at", "attempts"):
            still_stale = cls.objects.filter(pk=pk, status=cls.Status.RUNNING, started_at=started_at)
            if attempts >= cls.MAX_ATTEMPTS:
                still_stale.update(**gave_up)
            elif still_stale.update(status=cls.Status.QUEUED, queued_at=now, started_at=None):
                ready.append(pk)
        for pk, queued_at in cls.objects.filter(status=cls.Status.QUEUED, queued_at__lt=queued_before).values_list(
            "pk", "queued_at"
        ):
            if cls.objects.filter(pk=pk, status=cls.Status.QUEUED, queued_at=queued_at).update(queued_at=now):
                ready.append(pk)
        return ready

    def _transition(self, allowed: set[str], **fields) -> None:
        changed = type(self).objects.filter(pk=self.pk, status__in=allowed).update(**fields)
        if changed != 1:
            current = type(self).objects.filter(pk=self.pk).values_list("status", flat=True).first()
            raise self.InvalidTransition(f"analysis {self.pk} is {current}, cannot become {fields['status']}")
        for name, value in fields.items():
            setattr(self, name, value)


def _checked_probabilities(probabilities: dict[str, float]) -> dict[str, float]:
    if set(probabilities) != set(CLASS_CODES):
        raise ValueError(f"probabilities must have exactly the classes {CLASS_CODES}")
    # float(): the model hands numpy floats, which JSON cannot store.
    checked = {code: float(probabilities[code]) for code in CLASS_CODES}
    if not all(0.0 <= p <= 1.0 for p in checked.values()):
        raise ValueError("probabilities must lie between 0 and 1")
    if not math.isclose(sum(checked.values()), 1.0, abs_tol=1e-3):
        raise ValueError(f"probabilities must sum to 1, got {sum(checked.values()):.4f}")
    return checked


class AppendOnlyError(Exception):
    """An audit event was about to be changed or deleted: the trail only grows."""


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("audit events cannot be changed")

    def delete(self):
        raise AppendOnlyError("audit events cannot be deleted")


class AuditEvent(models.Model):
    """Who created, viewed, changed or downloaded which record, when and from where.

    Append-only: the model and its querysets refuse update and delete, the admin shows it read-only, and
    on PostgreSQL a trigger (migration 0004_audit) refuses UPDATE and DELETE from anyone. Written through
    analysis.audit.record, one INSERT per event. The user is PROTECTed: people are deactivated, not deleted,
    and the name is kept as well, for failed sign-ins of names that match nobody.
    """

    clinic_lookup = "clinic"

    class Action(models.TextChoices):
        CREATED = "created", "Created"
        VIEWED = "viewed", "Viewed"
        UPDATED = "updated", "Updated"
        DOWNLOADED = "downloaded", "Downloaded"
        LOGIN = "login", "Signed in"
        LOGIN_FAILED = "login_failed", "Sign-in failed"
        LOCKED_OUT = "locked_out", "Locked out"
        # Answered 404 like a missing record; recorded because asking for other clinics' ids is how a
        # curious or stolen account would look for them.
        OTHER_CLINICS_RECORD = "other_clinic", "Another clinic's record asked for"

    class ObjectType(models.TextChoices):
        PATIENT = "patient", "Patient"
        CASE = "case", "Case"
        IMAGE = "image", "Image"
        ANALYSIS = "analysis", "Analysis"
        REPORT = "report", "Report"
        HEATMAP = "heatmap", "Heatmap"  # an analysis's Grad-CAM image, once it is served
        OUTCOME = "outcome", "Confirmed diagnosis"
        ACCOUNT = "account", "Account"

    # Null for events outside any clinic: platform admins, sign-in failures of unknown names.
    clinic = models.ForeignKey(Clinic, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=20, choices=Action.choices)
    object_type = models.CharField(max_length=20, choices=ObjectType.choices)
    object_id = models.PositiveBigIntegerField(null=True, blank=True)
    # The patient the record belongs to, so "everyone who touched this patient" is one filter. A plain
    # number, not a key: the trail must never hold up (or follow) a change to clinical rows.
    patient_id = models.PositiveBigIntegerField(null=True, blank=True)
    description = models.CharField(max_length=255, blank=True)
    at = models.DateTimeField(default=timezone.now, editable=False)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=255, blank=True)
    path = models.CharField(max_length=255, blank=True)
    # For OTHER_CLINICS_RECORD: the clinic the record belongs to (`clinic` is the asker's). Shown to platform
    # admins only: the asker's clinic admin reads the event, never which clinic holds that id.
    record_clinic = models.ForeignKey(Clinic, on_delete=models.PROTECT, null=True, blank=True, related_name="+")

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [
            # The clinic admin's page reads one clinic newest first, often for one patient.
            models.Index(fields=["clinic", "-at", "-id"], name="audit_clinic_newest_first"),
            models.Index(fields=["clinic", "patient_id"], name="audit_clinic_patient"),
            # The platform admin's user list counts each user's asks for other clinics' records of the week.
            models.Index(
                fields=["user", "at"],
                name="audit_other_clinics_by_user",
                condition=models.Q(action="other_clinic"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username or '-'} {self.action} {self.object_type} {self.object_id or ''}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise AppendOnlyError("audit events cannot be changed")
        # An INSERT, never Django's UPDATE-then-INSERT: a row given an existing id must fail, not overwrite.
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("audit events cannot be deleted")


class OutcomeQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("a confirmed diagnosis is never changed: record a correction instead")

    def delete(self):
        raise AppendOnlyError("a confirmed diagnosis is never deleted: record a correction instead")

    def of_analysis(self, analysis) -> "OutcomeQuerySet":
        """An analysis's entries (``analysis`` may be an ``OuterRef``), the one that counts first: the latest."""
        return self.filter(analysis=analysis).order_by(*Outcome._meta.ordering)

    def with_current(self) -> "OutcomeQuerySet":
        """Each entry with `current_pk`, the id of the entry that counts for its analysis (the latest one)."""
        latest = Outcome.objects.of_analysis(OuterRef("analysis")).values("pk")
        return self.annotate(current_pk=Subquery(latest[:1]))

    def current(self) -> "OutcomeQuerySet":
        """Only the entry that counts for each analysis: the latest recorded one."""
        return self.with_current().filter(pk=F("current_pk"))


class Outcome(models.Model):
    """What a biopsy, a follow-up or experts found for an analysed lesion image: its confirmed diagnosis.

    Append-only, like the audit trail: a correction is a new entry, the latest one of an analysis counts
    (`OutcomeQuerySet.current`), and the earlier ones stay on record with who recorded them and when. Written
    through analysis.outcomes.record_outcome, which checks that the analysis is done.
    """

    clinic_lookup = "analysis__image__case__patient__clinic"
    OTHER = "other"
    DIAGNOSES = [*((code, CLASS_NAMES[code]) for code in CLASS_CODES), (OTHER, "Other (say which)")]

    class Method(models.TextChoices):
        # HAM10000's `dx_type` vocabulary, stored as written there, so that exported outcomes read as its rows.
        HISTOPATHOLOGY = "histo", "Histopathology"
        FOLLOW_UP = "follow_up", "Follow-up"
        CONSENSUS = "consensus", "Expert consensus"
        CONFOCAL = "confocal", "Confocal microscopy"

    analysis = models.ForeignKey(Analysis, on_delete=models.PROTECT, related_name="outcomes")
    diagnosis = models.CharField(max_length=10, choices=DIAGNOSES)
    other_diagnosis = models.CharField(
        "other diagnosis", max_length=200, blank=True, help_text="What it was, when none of the 7 classes."
    )
    method = models.CharField("confirmed by", max_length=10, choices=Method.choices)
    confirmed_on = models.DateField("confirmed on")
    # PROTECT: who confirmed a diagnosis stays on record; users are deactivated, not deleted.
    recorded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    recorded_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = OutcomeQuerySet.as_manager()

    class Meta:
        ordering = ["-recorded_at", "-pk"]
        indexes = [models.Index(fields=["analysis", "-recorded_at", "-id"], name="outcome_latest_first")]
        constraints = [
            models.CheckConstraint(
                condition=(Q(diagnosis="other") & ~Q(other_diagnosis=""))
                | (~Q(diagnosis="other") & Q(other_diagnosis="")),
                name="outcome_other_diagnosis_said_only_for_other",
            )
        ]

    def __str__(self) -> str:
        return f"Outcome {self.pk} of analysis {self.analysis_id}: {self.diagnosis_words}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise AppendOnlyError("a confirmed diagnosis is never changed: record a correction instead")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("a confirmed diagnosis is never deleted: record a correction instead")

    @property
    def diagnosis_words(self) -> str:
        """The confirmed diagnosis as staff read it: the class's name, or what "other" was."""
        return self.other_diagnosis if self.diagnosis == self.OTHER else CLASS_NAMES[self.diagnosis]

    @property
    def is_malignant(self) -> bool | None:
        """Whether the confirmed class is one of the malignant three; None for a diagnosis outside the 7."""
        return None if self.diagnosis == self.OTHER else self.diagnosis in MALIGNANT

    def clean(self) -> None:
        """The rules of an entry, for the page's form and the API alike."""
        errors = {}
        other = self.other_diagnosis.strip()
        if self.diagnosis == self.OTHER and not other:
            errors["other_diagnosis"] = "Say what the diagnosis was when it is none of the 7 classes."
        elif self.diagnosis and self.diagnosis != self.OTHER and other:
            errors["other_diagnosis"] = (
                f"Leave this empty for one of the 7 classes, or choose “Other” instead of "
                f"{CLASS_NAMES.get(self.diagnosis, self.diagnosis)}."
            )
        self.other_diagnosis = other
        if self.confirmed_on and self.analysis_id:
            patient = self.analysis.image.case.patient
            today = timezone.localdate(timezone=ZoneInfo(patient.clinic.time_zone))
            taken = self.analysis.image.captured_at
            if self.confirmed_on > today:
                errors["confirmed_on"] = "The date of confirmation cannot be in the future."
            elif taken and self.confirmed_on < timezone.localtime(taken, ZoneInfo(patient.clinic.time_zone)).date():
                errors["confirmed_on"] = "The date of confirmation cannot be before the image was taken."
        if errors:
            raise ValidationError(errors)
