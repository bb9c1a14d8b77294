"""Platform administration (superusers only, see skinsite/admin.py).

Analysis results are read-only here: they come from the model, never from a form.
"""

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpResponseRedirect
from django.utils import timezone
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import Token, TokenProxy

from analysis import audit
from analysis.models import Analysis, AuditEvent, Case, Clinic, LesionImage, Membership, Outcome, Patient
from analysis.services import CLOSED_CASE, removing_files_on_failure, submit_image
from analysis.uploads import UploadRejected, validate_image_file

User = get_user_model()


class MembershipInline(admin.StackedInline):
    model = Membership
    can_delete = False
    extra = 0
    max_num = 1


admin.site.unregister(User)

# Asks for other clinics' records: a few are typos in an id; many in a week look like someone searching.
OTHER_CLINICS_WINDOW = timedelta(days=7)
OTHER_CLINICS_MANY = 10


class OtherClinicsRecordsFilter(admin.SimpleListFilter):
    title = f"another clinic's records asked for ({OTHER_CLINICS_WINDOW.days} days)"
    parameter_name = "other_clinics"

    def lookups(self, request, model_admin):
        return [("any", "at least once"), ("many", f"{OTHER_CLINICS_MANY} times or more")]

    def queryset(self, request, queryset):
        at_least = {"any": 1, "many": OTHER_CLINICS_MANY}.get(self.value())
        return queryset.filter(other_clinics_records__gte=at_least) if at_least else queryset


@admin.register(User)
class SkinsiteUserAdmin(UserAdmin):
    inlines = [MembershipInline]
    list_display = [
        "username",
        "email",
        "clinic",
        "role",
        "is_active",
        "is_superuser",
        "last_login",
        "other_clinics_records",
    ]
    list_filter = ["is_active", "is_superuser", "membership__clinic", "membership__role", OtherClinicsRecordsFilter]
    list_select_related = ["membership__clinic"]
    actions = ["deactivate", "revoke_api_tokens"]

    def get_queryset(self, request):
        asks = (
            AuditEvent.objects.filter(
                user=OuterRef("pk"),
                action=AuditEvent.Action.OTHER_CLINICS_RECORD,
                at__gte=timezone.now() - OTHER_CLINICS_WINDOW,
            )
            .order_by()
            .values("user")
            .annotate(count=Count("pk"))
            .values("count")
        )
        return super().get_queryset(request).annotate(other_clinics_records=Coalesce(Subquery(asks), 0))

    @admin.display(
        description=f"Another clinic's records asked for ({OTHER_CLINICS_WINDOW.days} days)",
        ordering="other_clinics_records",
    )
    def other_clinics_records(self, user):
        return user.other_clinics_records

    @admin.display(ordering="membership__clinic__name")
    def clinic(self, user):
        return getattr(getattr(user, "membership", None), "clinic", None)

    @admin.display(ordering="membership__role")
    def role(self, user):
        membership = getattr(user, "membership", None)
        return membership.get_role_display() if membership else ""

    @admin.action(description="Revoke the selected users' API tokens")
    def revoke_api_tokens(self, request, queryset):
        count, _ = Token.objects.filter(user__in=queryset).delete()
        self.message_user(request, f"Revoked {count} API token(s).", messages.SUCCESS)

    @admin.action(description="Deactivate selected users (they can no longer sign in)")
    def deactivate(self, request, queryset):
        count = queryset.update(is_active=False)
        self.message_user(request, f"Deactivated {count} user(s).", messages.SUCCESS)


admin.site.unregister(TokenProxy)


@admin.register(TokenProxy)
class ApiTokenAdmin(TokenAdmin):
    """Every user's API token, to revoke (delete) when trust ends: a lost laptop, a script retired, someone
    gone. The keys are not shown: nobody needs another user's key to revoke it."""

    list_display = ["user", "created"]
    fields = ["user", "created"]
    readonly_fields = ["user", "created"]

    def has_add_permission(self, request) -> bool:
        return False  # a user makes their own, with their password (POST /api/auth/token/)

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Clinic)
class ClinicAdmin(admin.ModelAdmin):
    list_display = ["name", "time_zone", "mrn_system", "created_at"]
    search_fields = ["name"]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "clinic", "role"]
    list_filter = ["clinic", "role"]
    list_select_related = ["user", "clinic"]
    search_fields = ["user__username", "user__email", "clinic__name"]
    autocomplete_fields = ["user", "clinic"]


class ClinicRecordAdmin(admin.ModelAdmin):
    """A clinic's records, which platform admins may read: each change page shown is recorded in the audit trail
    of the record's clinic, as the clinic's own staff's reads are. Lists are not recorded row by row, as on the
    clinic pages."""

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if change and obj is not None and request.method == "GET":
            audit.record_platform_read(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)


@admin.register(Patient)
class PatientAdmin(ClinicRecordAdmin):
    list_display = ["name", "mrn", "clinic", "date_of_birth", "sex", "created_at"]
    list_filter = ["clinic", "sex", "created_at"]
    list_select_related = ["clinic"]
    search_fields = ["name", "mrn"]
    date_hierarchy = "created_at"


@admin.register(Case)
class CaseAdmin(ClinicRecordAdmin):
    list_display = ["pk", "patient", "body_site", "status", "clinician", "opened_on", "closed_on"]
    list_filter = ["patient__clinic", "status", "body_site", "opened_on"]
    list_select_related = ["patient", "clinician"]
    search_fields = ["patient__name", "patient__mrn"]
    autocomplete_fields = ["patient", "clinician"]
    date_hierarchy = "opened_on"

    def get_readonly_fields(self, request, obj=None):
        # A case's images, results and reports name its patient: it is never moved to another one.
        return ["patient"] if obj else []


class LesionImageAdminForm(forms.ModelForm):
    """The admin is a door too: a new or replaced file meets the same checks as the web form and the API."""

    class Meta:
        model = LesionImage
        fields = ["case", "image", "captured_at"]

    def clean(self):
        cleaned = super().clean()
        upload, case = cleaned.get("image"), cleaned.get("case")
        if case and not case.is_open and self.instance.pk is None:
            self.add_error("case", CLOSED_CASE)
        if "image" in self.changed_data and upload and case:
            try:
                validate_image_file(upload, case=case)
            except UploadRejected as rejected:
                self.add_error("image", str(rejected))
        return cleaned


@admin.register(LesionImage)
class LesionImageAdmin(ClinicRecordAdmin):
    form = LesionImageAdminForm
    list_display = ["pk", "case", "original_filename", "width", "height", "uploaded_by", "uploaded_at"]
    list_filter = ["case__patient__clinic", "uploaded_at", "captured_at"]
    list_select_related = ["case__patient", "uploaded_by"]
    search_fields = ["case__patient__name", "case__patient__mrn", "original_filename", "sha256"]
    autocomplete_fields = ["case"]
    readonly_fields = ["original_filename", "sha256", "width", "height", "uploaded_by", "uploaded_at"]
    date_hierarchy = "uploaded_at"

    def get_readonly_fields(self, request, obj=None):
        # A stored image's analyses, heatmaps and reports were made from that file for that case: neither is
        # swapped afterwards (a new image is added instead, and analysed).
        return [*self.readonly_fields, "case", "image"] if obj else self.readonly_fields

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # The file stored by an add is deleted again if anything after it fails, the admin's own transaction
        # (log entry, commit) included; a refusal the form could not foresee comes back as a message.
        try:
            with removing_files_on_failure():
                return super().changeform_view(request, object_id, form_url, extra_context)
        except UploadRejected as rejected:
            self.message_user(request, str(rejected), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request, obj, form, change):
        if change:  # only when it was taken may change (case and file are read-only)
            super().save_model(request, obj, form, change)
            return
        # Added here, an image is stored and analysed as through any other door, the case locked meanwhile. The
        # form has refused a closed case and a duplicate already; one closed or given the same image in between
        # raises UploadRejected (see changeform_view).
        submit_image(obj.case, form.cleaned_data["image"], request.user, obj.captured_at, image=obj)


@admin.register(Analysis)
class AnalysisAdmin(ClinicRecordAdmin):
    list_display = ["pk", "image", "status", "predicted_class", "confidence", "malignant", "risk_tier", "created_at"]
    list_filter = [
        "image__case__patient__clinic",
        "status",
        "predicted_class",
        "malignant",
        "risk_tier",
        "created_at",
        "finished_at",
    ]
    list_select_related = ["image"]
    search_fields = ["image__case__patient__name", "image__case__patient__mrn", "model_version"]
    date_hierarchy = "created_at"
    autocomplete_fields = ["image"]

    def get_readonly_fields(self, request, obj=None):
        # Everything but the image is written by the worker; the image is fixed once queued.
        fields = [f.name for f in Analysis._meta.fields if f.name not in ("id", "image")]
        return [*fields, "image"] if obj else fields


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records nobody adds, changes or deletes here, superusers included: they are kept as written."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Outcome)
class OutcomeAdmin(ReadOnlyAdmin, ClinicRecordAdmin):
    """Confirmed diagnoses, to read: clinic staff record them (on the analysis page or through the API), and an
    entry is never changed or deleted; a correction is a new entry."""

    list_display = [
        "pk",
        "analysis",
        "diagnosis",
        "other_diagnosis",
        "method",
        "confirmed_on",
        "recorded_by",
        "recorded_at",
    ]
    list_filter = ["analysis__image__case__patient__clinic", "diagnosis", "method", "confirmed_on", "recorded_at"]
    list_select_related = ["analysis", "recorded_by"]
    search_fields = ["analysis__image__case__patient__name", "analysis__image__case__patient__mrn", "other_diagnosis"]
    date_hierarchy = "recorded_at"


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """Every clinic's trail, to read and search; nobody adds, changes or deletes an event, superusers included."""

    list_display = [
        "at",
        "clinic",
        "username",
        "action",
        "object_type",
        "object_id",
        "patient_id",
        "record_clinic",
        "ip_address",
    ]
    list_filter = ["clinic", "action", "object_type", "record_clinic", "at"]
    list_select_related = ["clinic", "record_clinic"]
    search_fields = ["username", "description", "ip_address", "path"]
    date_hierarchy = "at"
