"""The REST API: serializers and viewsets for clinics that connect their record systems or submit in batches.

Every queryset goes through `for_clinic` (one row: `get_for_clinic`), so another clinic's id is a 404 exactly
like an id that does not exist, and is recorded in the audit trail; ids sent in a request body (a case's
patient, an image's case) are looked up the same way and a foreign one is a 400 on that field, worded like a
missing one. A patient's clinic is always the caller's.
"""

import json

import django_filters
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.db.models import F
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import mixins, renderers, serializers, status, viewsets
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import exception_handler

from analysis import audit, fhir, storage
from analysis.access import OtherClinicsRecord, clinic_for, for_clinic, get_for_clinic
from analysis.classes import CLASS_CODES
from analysis.forms import DayRangeFilterForm, StrictBooleanField, within_days
from analysis.middleware import DATABASE_UNAVAILABLE, RETRY_AFTER_SECONDS
from analysis.models import MRN_TAKEN, Analysis, AuditEvent, Case, Clinic, LesionImage, Outcome, Patient
from analysis.outcomes import AnalysisNotDone, not_done_message, record_outcome
from analysis.permissions import IsClinicAdmin, IsClinicMember
from analysis.reports import tier_reason
from analysis.services import submit_image
from analysis.uploads import UploadRejected, validate_image_file
from analysis.views import (
    analysis_fhir_response,
    clinic_for_admin,
    heatmap_response,
    lockout_headers,
    lockout_message,
    model_in_clinic,
    patient_fhir_response,
    report_response,
)

# Room for the multipart boundaries and the small fields around one image at the size limit.
MULTIPART_OVERHEAD = 64 * 1024


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "request_too_large"


class DatabaseUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = DATABASE_UNAVAILABLE
    default_code = "database_unavailable"


class StorageUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = storage.UNREACHABLE_MESSAGE
    default_code = "storage_unavailable"


def api_exception_handler(exc, context):
    """DRF's handler, plus Django's request-size errors answered as JSON instead of an HTML 400, and a database
    or object store that cannot be reached (restarting, failing over) as a 503 the client can retry instead of a
    500. A 404 for another clinic's record is recorded in the audit trail, and answered as any 404."""
    if isinstance(exc, OtherClinicsRecord):
        audit.record_other_clinics(context["request"], exc)
    if isinstance(exc, (OperationalError, InterfaceError, *storage.UNREACHABLE)):
        unavailable = StorageUnavailable() if isinstance(exc, storage.UNREACHABLE) else DatabaseUnavailable()
        response = exception_handler(unavailable, context)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    if isinstance(exc, RequestDataTooBig):
        exc = RequestTooLarge()
    elif isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        exc = serializers.ValidationError({"detail": str(exc) or "Too many fields or files in the request."})
    return exception_handler(exc, context)


def check_content_length(request, limit: int) -> None:
    """Refuse a body over `limit` bytes before anything reads it (the header is what the client declared)."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        raise RequestTooLarge(f"The request body is too large: {length:,} bytes, the limit is {limit:,} bytes.")


# Token


class ObtainTokenView(ObtainAuthToken):
    """DRF's token endpoint, throttled like the sign-in form.

    DRF calls authenticate(), so axes counts every failure here and refuses a locked-out username+address
    before the password is checked; but a refusal would read as a plain 400 "unable to log in". This view
    says 429 and why instead. DRF signs nobody in, so a token issued is announced as a sign-in: the audit
    trail records it, axes forgets that user's earlier failures, and last_login is set.
    """

    @extend_schema(
        responses={
            200: inline_serializer("Token", {"token": serializers.CharField()}),
            400: OpenApiResponse(description="Wrong username or password, or a field missing."),
            429: OpenApiResponse(
                inline_serializer("LockedOut", {"detail": serializers.CharField()}),
                description="Too many failed attempts for this username from this address; see Retry-After.",
            ),
        }
    )
    def post(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        if not serializer.is_valid():
            # Set by axes (on DRF's request, which its login-failed handler was given) when this attempt
            # reached the limit or came during a lockout.
            if getattr(request, "axes_locked_out", False):
                return Response(
                    {"detail": lockout_message()},
                    status=status.HTTP_429_TOO_MANY_REQUESTS,
                    headers=lockout_headers(),
                )
            raise ValidationError(serializer.errors)
        user = serializer.validated_data["user"]
        token, _ = Token.objects.get_or_create(user=user)
        user_logged_in.send(sender=type(user), request=request, user=user)
        return Response({"token": token.key})


class BoundedBodyMixin:
    """Refuses, as 413 JSON, a request body over `body_limit` bytes (after authentication, so an anonymous
    caller still hears 401). DRF reads JSON bodies whole, without Django's DATA_UPLOAD_MAX_MEMORY_SIZE check."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        check_content_length(request, self.body_limit())

    def body_limit(self) -> int:
        return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


class ClinicRelatedField(serializers.PrimaryKeyRelatedField):
    """An id of a row of the caller's clinic; another clinic's id reads as one that does not exist."""

    def get_queryset(self):
        return for_clinic(self.context["request"].user, self.queryset)


class ClinicMemberField(serializers.PrimaryKeyRelatedField):
    """The id of a user of the caller's clinic."""

    def get_queryset(self):
        clinic = clinic_for(self.context["request"].user)
        return get_user_model().objects.filter(membership__clinic=clinic, is_active=True)


# One schema component for every "not here" answer: two inline serializers of one name would clash.
NOT_FOUND = inline_serializer("NotFound", {"detail": serializers.CharField()})


class FHIRRenderer(renderers.JSONRenderer):
    """Lets a client ask for `Accept: application/fhir+json`; the Bundle itself is written by the view."""

    media_type = fhir.MEDIA_TYPE
    format = "fhir"


FHIR_RENDERERS = [FHIRRenderer, renderers.JSONRenderer]


def fhir_responses(what: str) -> dict:
    return {
        (200, fhir.MEDIA_TYPE): OpenApiResponse(
            OpenApiTypes.OBJECT, description=f"A FHIR R4 Bundle (type collection) of {what}."
        ),
        404: OpenApiResponse(NOT_FOUND, description="No such record in your clinic."),
        (409, fhir.MEDIA_TYPE): OpenApiResponse(
            OpenApiTypes.OBJECT,
            description="Nothing finished to export yet (not done, or its PDF report is still being written): a "
            "FHIR OperationOutcome saying which.",
        ),
    }


# Patients


class PatientSerializer(serializers.ModelSerializer):
    class Meta:
        model = Patient
        fields = ["id", "mrn", "name", "date_of_birth", "sex", "notes", "created_at"]
        read_only_fields = ["created_at"]

    def validate_mrn(self, value: str) -> str:
        clinic = clinic_for(self.context["request"].user)
        if Patient.mrn_taken(clinic, value, other_than=self.instance.pk if self.instance else None):
            raise serializers.ValidationError(MRN_TAKEN)
        return value

    def validate_date_of_birth(self, value):
        # Optional, as on the page and in the model: a referral often comes without it.
        if value is not None and value > timezone.localdate():
            raise serializers.ValidationError("The date of birth cannot be in the future.")
        return value


class PatientFilter(django_filters.FilterSet):
    mrn = django_filters.CharFilter()

    class Meta:
        model = Patient
        fields = ["mrn"]


class AuditedMixin:
    """Records in the audit trail every row read (retrieve), created and updated through the API; lists are
    not recorded row by row. Rows are found by `get_for_clinic`, so asking for another clinic's id raises
    OtherClinicsRecord, which api_exception_handler records and answers as 404."""

    def get_object(self):
        lookup_url_kwarg = self.lookup_url_kwarg or self.lookup_field
        instance = get_for_clinic(
            self.request.user,
            self.filter_queryset(self.get_queryset()),
            **{self.lookup_field: self.kwargs[lookup_url_kwarg]},
        )
        self.check_object_permissions(self.request, instance)
        return instance

    def retrieve(self, request, *args, **kwargs):
        instance = self.get_object()
        audit.record(request, audit.Action.VIEWED, instance)
        return Response(self.get_serializer(instance).data)

    def perform_create(self, serializer):
        super().perform_create(serializer)
        audit.record(self.request, audit.Action.CREATED, serializer.instance)

    def perform_update(self, serializer):
        super().perform_update(serializer)
        changed = ", ".join(sorted(serializer.validated_data))
        audit.record(self.request, audit.Action.UPDATED, serializer.instance, description=f"Changed: {changed}"[:255])


class ClinicRecordViewSet(
    AuditedMixin,
    BoundedBodyMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """List, create, read and update the rows of ``model`` that belong to the caller's clinic (no delete)."""

    model: type

    def get_queryset(self):
        return for_clinic(self.request.user, self.model)


class PatientViewSet(ClinicRecordViewSet):
    """Patients of the caller's clinic."""

    model = Patient
    serializer_class = PatientSerializer
    filterset_class = PatientFilter

    def perform_create(self, serializer):
        serializer.save(clinic=clinic_for(self.request.user))
        audit.record(self.request, audit.Action.CREATED, serializer.instance)

    @extend_schema(responses=fhir_responses("every done analysis of the patient"))
    @action(detail=True, renderer_classes=FHIR_RENDERERS)
    def fhir(self, request, pk=None, format=None):
        """Every done analysis of the patient in one FHIR R4 Bundle; 409 while there is none (or one still waits
        for its PDF report)."""
        return patient_fhir_response(request, self.get_object())


# Cases


class CaseSerializer(serializers.ModelSerializer):
    patient = ClinicRelatedField(queryset=Patient.objects.all())
    clinician = ClinicMemberField(
        queryset=get_user_model().objects.all(), required=False, allow_null=True, help_text="Defaults to the caller."
    )

    class Meta:
        model = Case
        fields = ["id", "patient", "body_site", "clinician", "opened_on", "closed_on", "status", "clinical_notes"]
        extra_kwargs = {"body_site": {"required": True}}

    def validate(self, attrs):
        if self.instance is not None and attrs.get("patient", self.instance.patient) != self.instance.patient:
            # Its images, results and reports name the patient: a case opened for the wrong one is closed and
            # a new one opened for the right one, so that nothing already issued names someone else.
            raise serializers.ValidationError({"patient": "A case stays with its patient: open a new case instead."})
        opened = attrs.get("opened_on", getattr(self.instance, "opened_on", None) or timezone.localdate())
        closed = attrs.get("closed_on", getattr(self.instance, "closed_on", None))
        if closed is not None and closed < opened:
            raise serializers.ValidationError({"closed_on": "A case cannot close before it opened."})
        return attrs

    def create(self, validated_data):
        validated_data.setdefault("clinician", self.context["request"].user)
        return super().create(validated_data)


class IdFilter(django_filters.NumberFilter):
    """An id filter: a whole number in the database's range (not a decimal, which overflows SQLite)."""

    field_class = django_filters.fields.forms.IntegerField

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


class DayFilter(django_filters.DateFilter):
    """One end of a range of whole days in the clinic's zone, filtered as the pages filter (`within_days`: a range
    on the column itself, so its index serves; a date picker's extreme days leave that end open)."""

    def __init__(self, *args, last: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.last = last

    def filter(self, qs, value):
        if value is None:
            return qs
        return (
            within_days(qs, self.field_name, None, value)
            if self.last
            else within_days(qs, self.field_name, value, None)
        )


class StrictBooleanFilter(django_filters.BooleanFilter):
    """true or false; any other value is a 400 naming the filter, as an unknown status is."""

    field_class = StrictBooleanField


class CaseFilter(django_filters.FilterSet):
    patient = IdFilter(field_name="patient")

    class Meta:
        model = Case
        fields = ["patient", "status", "body_site"]


class CaseViewSet(ClinicRecordViewSet):
    """Cases of the caller's clinic; `?patient=<id>` lists one patient's cases."""

    model = Case
    serializer_class = CaseSerializer
    filterset_class = CaseFilter


# Images and analyses


class AnalysisSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = Analysis
        fields = ["id", "status"]


class LesionImageSerializer(serializers.ModelSerializer):
    case = ClinicRelatedField(queryset=Case.objects.all())
    image = serializers.FileField(write_only=True, help_text="A JPG or PNG dermoscopic image.")
    analysis = serializers.SerializerMethodField()

    class Meta:
        model = LesionImage
        fields = [
            "id",
            "case",
            "image",
            "captured_at",
            "original_filename",
            "width",
            "height",
            "uploaded_at",
            "analysis",
        ]
        read_only_fields = ["original_filename", "width", "height", "uploaded_at"]

    def validate_image(self, upload):
        return upload  # checked in validate(), which knows the case

    def validate(self, attrs):
        try:
            validate_image_file(attrs["image"], case=attrs["case"])
        except UploadRejected as rejected:
            raise serializers.ValidationError({"image": [str(rejected)]}) from None
        return attrs

    def validate_captured_at(self, value):
        if value is not None and value > timezone.now():
            raise serializers.ValidationError("The capture time cannot be in the future.")
        return value

    def create(self, validated_data):
        try:
            analysis = submit_image(
                validated_data["case"],
                validated_data["image"],
                self.context["request"].user,
                validated_data.get("captured_at"),
            )
        except UploadRejected as rejected:  # the same image arrived in another request meanwhile
            raise serializers.ValidationError({"image": [str(rejected)]}) from None
        return analysis.image

    @extend_schema_field(AnalysisSummarySerializer)
    def get_analysis(self, image: LesionImage):
        """The image's latest analysis."""
        latest = max(image.analyses.all(), key=lambda a: (a.created_at, a.pk), default=None)
        return AnalysisSummarySerializer(latest).data if latest else None


class LesionImageFilter(django_filters.FilterSet):
    case = IdFilter(field_name="case")

    class Meta:
        model = LesionImage
        fields = ["case"]


class LesionImageViewSet(
    AuditedMixin,
    BoundedBodyMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Lesion images of the caller's clinic. POST (multipart) stores an image and queues its analysis."""

    serializer_class = LesionImageSerializer
    parser_classes = [MultiPartParser, FormParser]
    # Not filterset_fields: its choice filter answers 400 for a case id that does not exist and 200 for
    # another clinic's, telling the two apart.
    filterset_class = LesionImageFilter

    def get_queryset(self):
        return for_clinic(self.request.user, LesionImage).select_related("case").prefetch_related("analyses")

    def body_limit(self) -> int:
        # A body far over the image limit is refused before Django spools it to disk.
        return settings.MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD


PROBABILITIES_SCHEMA = {
    "type": "object",
    "nullable": True,
    "description": "The model's probability for each of the 7 classes; null until the analysis is done.",
    "properties": {code: {"type": "number", "minimum": 0, "maximum": 1} for code in CLASS_CODES},
    "required": list(CLASS_CODES),
}


class ConfirmedDiagnosisSerializer(serializers.ModelSerializer):
    """The confirmed diagnosis that counts for an analysis (its latest entry); the history is /api/outcomes/."""

    diagnosis_words = serializers.CharField(read_only=True)

    class Meta:
        model = Outcome
        fields = ["id", "diagnosis", "diagnosis_words", "method", "confirmed_on", "recorded_at"]
        read_only_fields = fields


class AnalysisSerializer(serializers.ModelSerializer):
    case = serializers.IntegerField(source="image.case_id", read_only=True)
    patient = serializers.IntegerField(source="image.case.patient_id", read_only=True)
    probabilities = serializers.SerializerMethodField()
    report = serializers.SerializerMethodField()
    heatmap = serializers.SerializerMethodField()
    flagged = serializers.SerializerMethodField()
    tier_reason = serializers.SerializerMethodField()
    confirmed_diagnosis = serializers.SerializerMethodField()

    class Meta:
        model = Analysis
        fields = [
            "id",
            "image",
            "case",
            "patient",
            "status",
            "predicted_class",
            "confidence",
            "malignant",
            "probabilities",
            "malignant_probability",
            "risk_tier",
            "tier_reason",
            "flagged",
            "quality_flags",
            "model_version",
            "created_at",
            "started_at",
            "finished_at",
            "error",
            "report",
            "heatmap",
            "confirmed_diagnosis",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "risk_tier": {
                "help_text": "The headline answer: urgent, uncertain or routine (always uncertain for a "
                "flagged image). The predicted class and its confidence are its detail."
            },
            "malignant": {
                "help_text": "True when the malignant probability reaches the urgent threshold, whatever "
                "the single most likely class; null until done."
            },
        }

    @extend_schema_field(ConfirmedDiagnosisSerializer(allow_null=True))
    def get_confirmed_diagnosis(self, analysis: Analysis) -> dict | None:
        """What a biopsy, follow-up or experts found, once recorded (the latest entry counts); null before."""
        latest = next(iter(analysis.outcomes.all()), None)  # prefetched, latest first (Outcome's ordering)
        return ConfirmedDiagnosisSerializer(latest).data if latest else None

    def get_tier_reason(self, analysis: Analysis) -> str:
        """Why the result is in its tier, in words, where the most likely class alone would tell another story
        (urgent with a benign class, routine with a malignant one, a flagged image); empty otherwise."""
        return tier_reason(analysis)

    @extend_schema_field(PROBABILITIES_SCHEMA)
    def get_probabilities(self, analysis: Analysis) -> dict[str, float] | None:
        if not analysis.probabilities:
            return None
        return {code: analysis.probabilities[code] for code in CLASS_CODES}

    @extend_schema_field(OpenApiTypes.URI)
    def get_report(self, analysis: Analysis) -> str | None:
        """The URL of the PDF report once it is written, else null."""
        if not analysis.report:
            return None
        return self.context["request"].build_absolute_uri(reverse("api:analysis-report", args=[analysis.pk]))

    @extend_schema_field(OpenApiTypes.URI)
    def get_heatmap(self, analysis: Analysis) -> str | None:
        """The URL of the Grad-CAM heatmap (PNG) once the analysis is done, else null."""
        if not analysis.heatmap:
            return None
        return self.context["request"].build_absolute_uri(reverse("api:analysis-heatmap", args=[analysis.pk]))

    def get_flagged(self, analysis: Analysis) -> bool | None:
        """True when the quality gate doubted that the image is a dermoscopic lesion image: do not rely on the
        result. Null until the analysis is done."""
        if analysis.status != Analysis.Status.DONE:
            return None
        return analysis.flagged


class AnalysisFilter(django_filters.FilterSet):
    patient = IdFilter(field_name="image__case__patient")
    case = IdFilter(field_name="image__case")
    image = IdFilter(field_name="image")
    malignant = StrictBooleanFilter()
    created_after = DayFilter(field_name="created_at")
    created_before = DayFilter(field_name="created_at", last=True)

    class Meta:
        model = Analysis
        form = DayRangeFilterForm
        fields = [
            "patient",
            "case",
            "image",
            "status",
            "predicted_class",
            "malignant",
            "risk_tier",
            "created_after",
            "created_before",
        ]


class PDFRenderer(renderers.BaseRenderer):
    """Lets a client ask for `Accept: application/pdf`; the file itself is streamed by FileResponse, so only
    error bodies pass through here, and they go out as JSON."""

    media_type = "application/pdf"
    format = "pdf"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        response = (renderer_context or {}).get("response")
        if response is not None:
            response["Content-Type"] = "application/json"
        return json.dumps(data).encode()


def file_responses(media_type: str, found: str, not_found: str) -> dict:
    """The schema of an endpoint that streams a file, or answers 404 with a JSON reason."""
    return {
        (200, media_type): OpenApiResponse(OpenApiTypes.BINARY, description=found),
        404: OpenApiResponse(NOT_FOUND, description=not_found),
    }


class PNGRenderer(PDFRenderer):
    media_type = "image/png"
    format = "png"


class AnalysisViewSet(AuditedMixin, viewsets.ReadOnlyModelViewSet):
    """Analyses of the caller's clinic, newest first. Poll one until its status is done or failed."""

    serializer_class = AnalysisSerializer
    filterset_class = AnalysisFilter

    def get_queryset(self):
        # The patient and clinic too: a report's file name is made of them.
        return (
            for_clinic(self.request.user, Analysis)
            .select_related("image__case__patient__clinic")
            .prefetch_related("outcomes")
        )

    @extend_schema(
        responses=file_responses(
            "application/pdf", "The PDF report.", "No such analysis in your clinic, or its report is not written yet."
        )
    )
    @action(detail=True, renderer_classes=[renderers.JSONRenderer, PDFRenderer])
    def report(self, request, pk=None, format=None):  # format: the router's suffix route (report.pdf)
        """The PDF report; 404 until the worker has written it (a done analysis without one asks for it)."""
        return report_response(request, self.get_object())

    @extend_schema(
        responses=file_responses(
            "image/png",
            "The Grad-CAM heatmap.",
            "No such analysis in your clinic, or it has no heatmap (not done yet).",
        )
    )
    @action(detail=True, renderer_classes=[renderers.JSONRenderer, PNGRenderer])
    def heatmap(self, request, pk=None, format=None):  # format: the router's suffix route (heatmap.png)
        """The Grad-CAM heatmap of the predicted class over the image (PNG); 404 until the analysis is done."""
        return heatmap_response(request, self.get_object())

    @extend_schema(responses=fhir_responses("the analysis: patient, clinic, image, report and observations"))
    @action(detail=True, renderer_classes=FHIR_RENDERERS)
    def fhir(self, request, pk=None, format=None):
        """The done analysis as a FHIR R4 Bundle for a record system (EHR): the Patient, the clinic, the image
        as Media, a DiagnosticReport with the PDF, an Observation per class probability and one for the triage
        tier. 409 until the analysis is done and its report written."""
        return analysis_fhir_response(request, self.get_object())


# Confirmed diagnoses


class AnalysisNotDoneError(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The analysis is not done: a confirmed diagnosis is recorded for a finished result only."
    default_code = "analysis_not_done"


class OutcomeSerializer(serializers.ModelSerializer):
    analysis = ClinicRelatedField(queryset=Analysis.objects.select_related("image__case__patient__clinic"))
    patient = serializers.IntegerField(source="analysis.image.case.patient_id", read_only=True)
    diagnosis_words = serializers.CharField(read_only=True, help_text="The class's name, or what 'other' was.")
    current = serializers.SerializerMethodField()

    class Meta:
        model = Outcome
        fields = [
            "id",
            "analysis",
            "patient",
            "diagnosis",
            "other_diagnosis",
            "diagnosis_words",
            "method",
            "confirmed_on",
            "recorded_by",
            "recorded_at",
            "current",
        ]
        read_only_fields = ["recorded_by", "recorded_at"]
        extra_kwargs = {
            "diagnosis": {"help_text": "One of the 7 classes, or 'other' with other_diagnosis saying what it was."},
            "method": {"help_text": "How it was confirmed, in HAM10000's words (its dx_type)."},
        }

    def get_current(self, outcome: Outcome) -> bool:
        """True for the entry that counts for its analysis (the latest); false for one corrected since."""
        return getattr(outcome, "current_pk", outcome.pk) == outcome.pk  # one just recorded counts

    def validate(self, attrs):
        analysis = attrs["analysis"]
        if analysis.status != Analysis.Status.DONE:
            raise AnalysisNotDoneError(not_done_message(analysis))
        entry = Outcome(**attrs, recorded_by=self.context["request"].user)
        try:
            entry.clean()
        except DjangoValidationError as invalid:
            raise serializers.ValidationError(invalid.message_dict) from None
        return attrs | {"other_diagnosis": entry.other_diagnosis}

    def create(self, validated_data):
        try:
            return record_outcome(user=self.context["request"].user, **validated_data)
        except AnalysisNotDone as refused:  # its status changed since validate()
            raise AnalysisNotDoneError(str(refused)) from None


class OutcomeDayRangeFilterForm(DayRangeFilterForm):
    first, last = "confirmed_after", "confirmed_before"


class OutcomeFilter(django_filters.FilterSet):
    analysis = IdFilter(field_name="analysis")
    patient = IdFilter(field_name="analysis__image__case__patient")
    current = StrictBooleanFilter(
        method="filter_current",
        help_text="true: only the entry that counts for each analysis; false: only entries corrected since.",
    )
    confirmed_after = django_filters.DateFilter(field_name="confirmed_on", lookup_expr="gte")
    confirmed_before = django_filters.DateFilter(field_name="confirmed_on", lookup_expr="lte")

    class Meta:
        model = Outcome
        form = OutcomeDayRangeFilterForm
        fields = ["analysis", "patient", "diagnosis", "method", "current", "confirmed_after", "confirmed_before"]

    def filter_current(self, qs, name, value):
        if value is None:
            return qs
        return qs.filter(pk=F("current_pk")) if value else qs.exclude(pk=F("current_pk"))


class OutcomeViewSet(
    AuditedMixin,
    BoundedBodyMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Confirmed diagnoses of the caller's clinic's analyses, newest first. Append-only: a correction is a new
    entry (POST again for the same analysis), the latest one counts (`current`), and nothing is changed or
    deleted. 409 for an analysis that is not done."""

    serializer_class = OutcomeSerializer
    filterset_class = OutcomeFilter

    def get_queryset(self):
        return for_clinic(self.request.user, Outcome).select_related("analysis__image__case").with_current()

    @extend_schema(
        responses={
            201: OutcomeSerializer,
            400: OpenApiResponse(description="A field is missing or wrong; the answer names it."),
            409: OpenApiResponse(
                inline_serializer("AnalysisNotDone", {"detail": serializers.CharField()}),
                description="The analysis is not done yet: a confirmed diagnosis is for a finished result.",
            ),
        }
    )
    def create(self, request, *args, **kwargs):
        return super().create(request, *args, **kwargs)


# How the model does in this clinic


def _finite(value):
    """JSON has no NaN: a rate with nothing to count is null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class ClinicViewSet(viewsets.GenericViewSet):
    """The caller's clinic, for its admin: how the model does on the clinic's own patients."""

    permission_classes = [IsAuthenticated, IsClinicMember, IsClinicAdmin]
    serializer_class = serializers.Serializer  # the answer is a report, written below

    queryset = Clinic.objects.none()  # for the schema's path parameter: the clinic is the caller's, or a 404
    lookup_value_regex = "[0-9]+"

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "model_version",
                str,
                description="A model version, or 'all'; default: the shipped "
                "model's where it has confirmed analyses, else the version with the most.",
            ),
            OpenApiParameter("date_from", OpenApiTypes.DATE, description="Analysed on or after this day."),
            OpenApiParameter("date_to", OpenApiTypes.DATE, description="Analysed on or before this day."),
        ],
        responses={
            200: OpenApiResponse(
                OpenApiTypes.OBJECT,
                description="Counts and rates (value, hits, n, ci95: the "
                "95% Wilson interval) of the clinic and of the model card's test part, the drift "
                "warnings, the confusion matrix (rows confirmed, columns predicted) and the "
                "reliability bins.",
            ),
            400: OpenApiResponse(description="A bad choice, named."),
            404: OpenApiResponse(NOT_FOUND, description="Not your clinic."),
        },
    )
    @action(detail=True)
    def performance(self, request, pk=None):
        """The model in this clinic: over the analyses with a confirmed diagnosis, the urgent tier's (and urgent or
        uncertain's) malignant sensitivity and specificity, melanoma recall, accuracy, balanced accuracy, the
        confusion matrix and the reliability bins, each beside the model card's test figure."""
        clinic = clinic_for_admin(request.user, int(pk))
        form, figures = model_in_clinic(request.user, request.query_params)
        if form.is_bound and not form.is_valid():
            raise ValidationError(form.errors)
        answer = {
            "clinic": clinic.pk,
            "model_version": figures["model_version"],
            "date_from": figures["first"],
            "date_to": figures["last"],
            "other_diagnoses_left_out": figures["other"],
            "clinic_figures": figures["clinic"],
            "model_card": figures["card"],
            "warnings": [
                {"measure": w["key"], "clinic": w["clinic"], "model_card": w["card"]} for w in figures["warnings"]
            ],
            "classes": list(CLASS_CODES),
        }
        return Response(_finite(answer))


# The audit trail


class AuditEventSerializer(serializers.ModelSerializer):
    patient = serializers.IntegerField(source="patient_id", read_only=True, allow_null=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "at",
            "user",
            "username",
            "action",
            "object_type",
            "object_id",
            "patient",
            "description",
            "ip_address",
            "user_agent",
            "path",
        ]
        read_only_fields = fields


class AuditDayRangeFilterForm(DayRangeFilterForm):
    first, last = "after", "before"


class AuditEventFilter(django_filters.FilterSet):
    user = IdFilter(field_name="user")
    patient = IdFilter(field_name="patient_id")
    after = DayFilter(field_name="at")
    before = DayFilter(field_name="at", last=True)

    class Meta:
        model = AuditEvent
        form = AuditDayRangeFilterForm
        fields = ["user", "action", "object_type", "patient", "after", "before"]


class AuditEventViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The clinic's audit trail, newest first, for its clinic admin only (as the /audit/ page)."""

    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    permission_classes = [IsAuthenticated, IsClinicMember, IsClinicAdmin]

    def get_queryset(self):
        return for_clinic(self.request.user, AuditEvent)
