"""The clinic staff pages. Every row comes through analysis/access.py: another clinic's id is a 404."""

import json
import mimetypes
from datetime import timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Case as SqlCase
from django.db.models import Count, OuterRef, Q, Subquery, When
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from rest_framework.authtoken.models import Token

from analysis import audit, fhir, performance
from analysis.access import clinic_for, for_clinic, get_for_clinic
from analysis.classes import MALIGNANT
from analysis.forms import (
    AnalysisFilterForm,
    AuditFilterForm,
    CaseNotesForm,
    ClinicModelForm,
    NewCaseForm,
    OutcomeForm,
    PatientForm,
    ThrottledPasswordChangeForm,
    UploadForm,
)
from analysis.models import Analysis, AuditEvent, Case, Clinic, LesionImage, Membership, Outcome, Patient
from analysis.outcomes import AnalysisNotDone, not_done_message, record_outcome
from analysis.reports import (
    DISCLAIMER,
    FLAGGED_WARNING,
    TIER_MEANING,
    file_name,
    similar_lesions,
    tier_reason,
    triage_summary,
)
from analysis.services import removing_files_on_failure, submit_image
from analysis.uploads import UploadRejected
from workers.tasks import request_report

PAGE_SIZE = 25
AUDIT_PAGE_SIZE = 50
# Patient images and reports: kept by no cache on the way or on disk (a shared tablet's browser included),
# and never sniffed into another type (SecurityMiddleware adds nosniff to every response too).
PRIVATE_FILE_HEADERS = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}


# What an analysis row of a list shows; the probabilities and errors stay in the database, which keeps
# sorting a large clinic's analyses cheap.
LIST_FIELDS = [
    "status",
    "predicted_class",
    "confidence",
    "malignant",
    "malignant_probability",
    "risk_tier",
    "quality_flags",
    "created_at",
    "image__case__body_site",
    "image__case__patient__name",
    "image__case__patient__mrn",
]


def _analyses(user):
    # The confirmed diagnosis that counts (the latest entry), in the same query as the rows.
    latest = Outcome.objects.of_analysis(OuterRef("pk"))
    return for_clinic(
        user,
        Analysis.objects.select_related("image__case__patient")
        .only(*LIST_FIELDS)
        .annotate(
            confirmed_diagnosis=Subquery(latest.values("diagnosis")[:1]),
            confirmed_other=Subquery(latest.values("other_diagnosis")[:1]),
        ),
    )


def _clinic(user):
    clinic = clinic_for(user)
    if clinic is None:
        raise Http404("Your account does not belong to a clinic.")
    return clinic


def _page(request, qs, size=PAGE_SIZE):
    return Paginator(qs, size).get_page(request.GET.get("page"))


def lockout_message() -> str:
    minutes = max(1, round(settings.AXES_COOLOFF_TIME.total_seconds() / 60))
    return f"Too many failed sign-ins for this username from your address. Try again in {minutes} minutes."


def lockout_headers() -> dict[str, str]:
    """Retry-After for an answer refused by a lockout. The refused attempt counts as a failure too and starts
    the cool-off again (axes' AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT), so the lockout ends a whole
    AXES_COOLOFF_TIME from now."""
    return {"Retry-After": str(int(settings.AXES_COOLOFF_TIME.total_seconds()))}


def locked_out(request, original_response=None, credentials=None) -> HttpResponse:
    """What django-axes answers a sign-in during a lockout (AXES_LOCKOUT_CALLABLE)."""
    return HttpResponse(
        render_to_string("registration/locked_out.html", {"message": lockout_message()}, request),
        status=settings.AXES_HTTP_RESPONSE_CODE,
        headers=lockout_headers(),
    )


@login_required
def home(request):
    clinic = clinic_for(request.user)
    context = {"clinic": clinic}
    if clinic is not None:
        analyses = _analyses(request.user)
        unopened = analyses.filter(
            status=Analysis.Status.DONE,
            risk_tier__in=[Analysis.RiskTier.URGENT, Analysis.RiskTier.UNCERTAIN],
            opened_at__isnull=True,
        )
        counts = dict(unopened.order_by().values_list("risk_tier").annotate(Count("pk")))
        context |= {
            "recent": analyses[:10],
            "in_progress": {
                "queued": 0,
                "running": 0,
                **dict(
                    analyses.filter(status__in=[Analysis.Status.QUEUED, Analysis.Status.RUNNING])
                    .order_by()
                    .values_list("status")
                    .annotate(Count("pk"))
                ),
                "unopened_urgent": counts.get(Analysis.RiskTier.URGENT, 0),
                "unopened_uncertain": counts.get(Analysis.RiskTier.UNCERTAIN, 0),
            },
            # Urgent first, then uncertain; oldest first within a tier, since they have waited longest.
            "unopened": unopened.order_by(
                SqlCase(When(risk_tier=Analysis.RiskTier.URGENT, then=0), default=1), "finished_at", "pk"
            )[:20],
            "overdue_days": settings.OUTCOME_OVERDUE_DAYS,
            "overdue": _overdue(analyses)[:20],
            "overdue_count": _overdue(analyses).count(),
        }
    return render(request, "home.html", context)


def _overdue(analyses):
    """Urgent results older than OUTCOME_OVERDUE_DAYS that nobody has recorded a confirmed diagnosis for, oldest
    first: the loop to close."""
    before = timezone.now() - timedelta(days=settings.OUTCOME_OVERDUE_DAYS)
    return analyses.filter(
        status=Analysis.Status.DONE,
        risk_tier=Analysis.RiskTier.URGENT,
        finished_at__lt=before,
        outcomes__isnull=True,
    ).order_by("finished_at", "pk")


# Patients


@login_required
def patient_list(request):
    patients = for_clinic(request.user, Patient)
    query = request.GET.get("q", "").strip()
    if query:
        patients = patients.filter(Q(name__icontains=query) | Q(mrn__icontains=query))
    return render(
        request,
        "patients/list.html",
        {"page": _page(request, patients), "query": query, "qs": urlencode({"q": query}) if query else ""},
    )


@login_required
def patient_create(request):
    form = PatientForm(request.POST or None, clinic=_clinic(request.user))
    if request.method == "POST" and form.is_valid():
        patient = form.save()
        audit.record(request, audit.Action.CREATED, patient)
        messages.success(request, f"{patient.name} was added.")
        return redirect("patient-detail", pk=patient.pk)
    return render(request, "patients/form.html", {"form": form})


@login_required
def patient_edit(request, pk: int):
    patient = get_for_clinic(request.user, Patient, pk=pk)
    form = PatientForm(request.POST or None, instance=patient, clinic=patient.clinic)
    if request.method == "POST" and form.is_valid():
        form.save()
        if form.has_changed():
            audit.record(request, audit.Action.UPDATED, patient, description=_changed(form))
        messages.success(request, "The patient's details were saved.")
        return redirect("patient-detail", pk=patient.pk)
    return render(request, "patients/form.html", {"form": form, "patient": patient})


@login_required
def patient_detail(request, pk: int):
    patient = get_for_clinic(request.user, Patient, pk=pk)
    audit.record(request, audit.Action.VIEWED, patient)
    return render(
        request,
        "patients/detail.html",
        {"patient": patient, "cases": patient.history(), "case_form": NewCaseForm()},
    )


@login_required
@require_POST
def case_create(request, pk: int):
    patient = get_for_clinic(request.user, Patient, pk=pk)
    form = NewCaseForm(request.POST, instance=Case(patient=patient, clinician=request.user))
    if form.is_valid():
        case = form.save()
        audit.record(request, audit.Action.CREATED, case)
        messages.success(request, "The case was opened.")
        return redirect("case-detail", pk=case.pk)
    return render(
        request,
        "patients/detail.html",
        {"patient": patient, "cases": patient.history(), "case_form": form},
        status=400,
    )


# Cases


def _case_page(request, case, notes_form=None, upload_form=None, status=200):
    images = case.images.select_related("uploaded_by").prefetch_related("analyses").order_by("uploaded_at", "pk")
    return render(
        request,
        "cases/detail.html",
        {
            "case": case,
            "images": images,
            "notes_form": notes_form or CaseNotesForm(instance=case),
            "upload_form": upload_form or UploadForm(case=case),
        },
        status=status,
    )


def _get_case(request, pk):
    return get_for_clinic(request.user, Case.objects.select_related("patient", "clinician"), pk=pk)


@login_required
def case_detail(request, pk: int):
    case = _get_case(request, pk)
    if request.method == "POST":
        form = CaseNotesForm(request.POST, instance=case)
        if form.is_valid():
            form.save()
            if form.has_changed():
                audit.record(request, audit.Action.UPDATED, case, description=_changed(form))
            messages.success(request, "The case notes were saved.")
            return redirect("case-detail", pk=case.pk)
        return _case_page(request, case, notes_form=form, status=400)
    audit.record(request, audit.Action.VIEWED, case)
    return _case_page(request, case)


@login_required
@require_POST
def case_close(request, pk: int):
    case = _get_case(request, pk)
    if case.is_open:
        case.close()
        audit.record(request, audit.Action.UPDATED, case, description=f"Case {case.pk} closed")
    messages.success(request, "The case was closed.")
    return redirect("case-detail", pk=case.pk)


@login_required
@require_POST
def case_reopen(request, pk: int):
    case = _get_case(request, pk)
    if not case.is_open:
        case.reopen()
        audit.record(request, audit.Action.UPDATED, case, description=f"Case {case.pk} reopened")
    messages.success(request, "The case was reopened.")
    return redirect("case-detail", pk=case.pk)


@login_required
@require_POST
def case_upload(request, pk: int):
    case = _get_case(request, pk)
    form = UploadForm(request.POST, request.FILES, case=case)
    if not form.is_valid():
        return _case_page(request, case, upload_form=form, status=400)
    # All the images or none: one transaction, and the analyses are sent only once it commits.
    try:
        with removing_files_on_failure(), transaction.atomic():
            analyses = [
                submit_image(case, upload, request.user, form.cleaned_data["captured_at"])
                for upload in form.cleaned_data["images"]
            ]
            for analysis in analyses:
                audit.record(request, audit.Action.CREATED, analysis.image)
    except UploadRejected as rejected:  # the same image arrived in another upload meanwhile
        form.add_error("images", str(rejected))
        return _case_page(request, case, upload_form=form, status=400)
    if len(analyses) == 1:
        return redirect("analysis-detail", pk=analyses[0].pk)
    messages.success(request, f"{len(analyses)} images were added; their analyses are queued.")
    return redirect("case-detail", pk=case.pk)


# Images and analyses


def _private_file(field, missing: str) -> FileResponse:
    """A stored file of a clinical record, for the clinic's staff only: there is no public media URL."""
    if not field or not field.storage.exists(field.name):
        raise Http404(missing)
    content_type = mimetypes.guess_type(field.name)[0] or "application/octet-stream"
    return FileResponse(field.open("rb"), content_type=content_type, headers=PRIVATE_FILE_HEADERS)


@login_required
def image_file(request, pk: int):
    """A lesion image, for staff of its clinic only."""
    image = get_for_clinic(request.user, LesionImage.objects.select_related("case"), pk=pk)
    response = _private_file(image.image, "This image file is missing.")
    audit.record_file_view(request, image)
    return response


def heatmap_response(request, analysis: Analysis) -> FileResponse:
    """An analysis's Grad-CAM heatmap, recorded in the audit trail; 404 until it exists. The page and the API
    both serve it through here, with the analysis already scoped to the caller's clinic."""
    response = _private_file(analysis.heatmap, "This analysis has no heatmap.")
    audit.record_file_view(request, analysis, object_type=audit.ObjectType.HEATMAP)
    return response


def report_response(request, analysis: Analysis) -> FileResponse:
    """An analysis's PDF report as a download, recorded in the audit trail; 404 until the worker has written it
    (a done analysis without one, never written or its file lost, asks the workers for it). The page and the
    API both serve it through here; `analysis` comes with its patient and clinic (the file name needs them)."""
    if not analysis.has_report:
        if analysis.status == Analysis.Status.DONE:
            request_report(analysis.pk)
        raise Http404("This report has not been produced yet.")
    audit.record(request, audit.Action.DOWNLOADED, analysis, object_type=audit.ObjectType.REPORT)
    return FileResponse(
        analysis.report.open("rb"),
        as_attachment=True,
        filename=file_name(analysis),
        content_type="application/pdf",
        headers=PRIVATE_FILE_HEADERS,
    )


def fhir_file(request, bundle: dict, filename: str) -> HttpResponse:
    """A FHIR Bundle as a download of patient data."""
    return HttpResponse(
        json.dumps(bundle, ensure_ascii=False, indent=1),
        content_type=f"{fhir.MEDIA_TYPE}; charset=utf-8; fhirVersion=4.0",
        headers={**PRIVATE_FILE_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'},
    )


def fhir_refused(refused: fhir.NotExportable) -> HttpResponse:
    """409 with FHIR's OperationOutcome saying why there is nothing to export yet; a done analysis whose report
    is missing asks the workers for it, so that asking again soon succeeds."""
    if refused.waiting_for_report is not None:
        request_report(refused.waiting_for_report.pk)
    return HttpResponse(
        json.dumps(fhir.operation_outcome(str(refused))),
        status=409,
        content_type=f"{fhir.MEDIA_TYPE}; charset=utf-8",
        headers={"Cache-Control": "private, no-store"},
    )


def analysis_fhir_response(request, analysis: Analysis) -> HttpResponse:
    """One done analysis as a FHIR R4 Bundle, recorded in the audit trail; 409 while it is not done or its
    report is not written. The page and the API both answer through here, with the analysis already scoped."""
    try:
        bundle = fhir.analysis_bundle(analysis)
    except fhir.NotExportable as refused:
        return fhir_refused(refused)
    audit.record(request, audit.Action.DOWNLOADED, analysis, description=f"FHIR R4 export of analysis {analysis.pk}")
    return fhir_file(request, bundle, file_name(analysis).removesuffix(".pdf") + ".fhir.json")


def patient_fhir_response(request, patient: Patient) -> HttpResponse:
    """Every done analysis of a patient (of the caller's clinic) as one FHIR R4 Bundle, recorded in the audit
    trail; 409 when there is none yet."""
    analyses = for_clinic(request.user, Analysis).filter(image__case__patient=patient)
    try:
        bundle, count = fhir.patient_bundle(patient, analyses.select_related("image__case__patient__clinic"))
    except fhir.NotExportable as refused:
        return fhir_refused(refused)
    audit.record(request, audit.Action.DOWNLOADED, patient, description=f"FHIR R4 export of {count} analyses"[:255])
    return fhir_file(request, bundle, f"skinsite-patient-{patient.pk}.fhir.json")


@login_required
def analysis_fhir(request, pk: int):
    """An analysis as a FHIR R4 Bundle (application/fhir+json), for staff of its clinic only."""
    analysis = get_for_clinic(request.user, Analysis.objects.select_related("image__case__patient__clinic"), pk=pk)
    return analysis_fhir_response(request, analysis)


@login_required
def analysis_heatmap(request, pk: int):
    """The Grad-CAM heatmap of an analysis over its image, for staff of its clinic only."""
    return heatmap_response(
        request, get_for_clinic(request.user, Analysis.objects.select_related("image__case"), pk=pk)
    )


@login_required
def analysis_list(request):
    filters = AnalysisFilterForm(request.GET or None)
    analyses = filters.filter(_analyses(request.user))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "analyses/list.html",
        {"page": _page(request, analyses), "filters": filters, "qs": query.urlencode()},
    )


def _get_analysis(request, pk):
    return get_for_clinic(
        request.user, Analysis.objects.select_related("image__case__patient__clinic", "opened_by"), pk=pk
    )


def _analysis_page(request, analysis, outcome_form=None, status=200):
    report_ready = analysis.has_report
    report_pending = analysis.status == Analysis.Status.DONE and not report_ready
    if report_pending and timezone.now() - analysis.finished_at > Analysis.REPORT_WAIT:
        # A worker writes the report within seconds of the result; this one was lost or never written
        # (seeded demo data), so ask for it now.
        report_pending = request_report(analysis.pk)
    done = analysis.status == Analysis.Status.DONE
    outcomes = list(analysis.outcomes.select_related("recorded_by")) if done else []
    return render(
        request,
        "analyses/detail.html",
        {
            "analysis": analysis,
            "disclaimer": DISCLAIMER,
            "report_ready": report_ready,
            "report_pending": report_pending,
            "triage": triage_summary(analysis.model_version) if analysis.risk_tier else None,
            "tier_meaning": TIER_MEANING.get(analysis.risk_tier),
            "tier_reason": tier_reason(analysis),
            "malignant_classes": MALIGNANT,
            "flagged_warning": FLAGGED_WARNING,
            "similar": similar_lesions(analysis) if done else [],
            "outcome": outcomes[0] if outcomes else None,
            "earlier_outcomes": outcomes[1:],
            "outcome_form": outcome_form or (OutcomeForm(analysis=analysis, user=request.user) if done else None),
        },
        status=status,
    )


@login_required
def analysis_detail(request, pk: int):
    analysis = _get_analysis(request, pk)
    analysis.mark_opened(request.user)
    audit.record(request, audit.Action.VIEWED, analysis)
    return _analysis_page(request, analysis)


@login_required
@require_POST
def analysis_outcome(request, pk: int):
    """Record what a biopsy, follow-up or experts found for a done analysis, or correct the last entry."""
    analysis = _get_analysis(request, pk)
    form = OutcomeForm(request.POST, analysis=analysis, user=request.user)
    if analysis.status != Analysis.Status.DONE:  # the page offers no form then; the message heads it
        messages.error(request, not_done_message(analysis))
        return _analysis_page(request, analysis, status=409)
    if not form.is_valid():
        return _analysis_page(request, analysis, outcome_form=form, status=400)
    correcting = analysis.outcomes.exists()
    try:
        outcome = record_outcome(analysis, request.user, **form.cleaned_data)
    except AnalysisNotDone as refused:
        form.add_error(None, str(refused))
        return _analysis_page(request, analysis, outcome_form=form, status=409)
    audit.record(request, audit.Action.CREATED, outcome)
    messages.success(
        request,
        f"{'The correction' if correcting else 'The confirmed diagnosis'} was recorded: {outcome.diagnosis_words}. "
        "The PDF report is being written again to include it.",
    )
    return redirect("analysis-detail", pk=analysis.pk)


@login_required
def analysis_status(request, pk: int):
    """What the analysis page polls until the result (and then its report) is there."""
    analysis = get_for_clinic(request.user, Analysis, pk=pk)
    return JsonResponse(
        {
            "id": analysis.pk,
            "status": analysis.status,
            "status_display": analysis.get_status_display(),
            "finished": analysis.is_finished,
            "report_url": reverse("analysis-report", args=[analysis.pk]) if analysis.has_report else None,
        },
        headers={"Cache-Control": "no-store"},
    )


@login_required
def analysis_report(request, pk: int):
    """The PDF report of one analysis, for staff of its clinic only; 404 until the worker has written it."""
    analysis = get_for_clinic(request.user, Analysis.objects.select_related("image__case__patient__clinic"), pk=pk)
    return report_response(request, analysis)


def _changed(form) -> str:
    # Which fields, not their values: the trail says who changed what, the record says what it is now.
    return f"Changed: {', '.join(form.changed_data)}"[:255]


# The audit trail, for the clinic's admin


@login_required
def audit_log(request):
    """Who created, viewed, changed or downloaded what in this clinic, newest first (clinic admins only)."""
    membership = getattr(request.user, "membership", None) if clinic_for(request.user) else None
    if membership is None or membership.role != Membership.Role.CLINIC_ADMIN:
        raise PermissionDenied("Only the clinic's admin reads the audit trail.")
    filters = AuditFilterForm(request.GET or None, clinic=membership.clinic)
    events = filters.filter(AuditEvent.objects.filter(clinic=membership.clinic))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "audit/list.html",
        {"page": _page(request, events, AUDIT_PAGE_SIZE), "filters": filters, "qs": query.urlencode()},
    )


# How the model does in this clinic, for the clinic's admin


def clinic_for_admin(user, pk: int) -> Clinic:
    """The user's clinic if `pk` names it and they are its admin: 404 for another clinic's (as for any record),
    403 for a member who is not the admin."""
    clinic = clinic_for(user)
    if clinic is None or clinic.pk != pk:
        raise Http404("No Clinic matches the given query.")
    if user.membership.role != Membership.Role.CLINIC_ADMIN:
        raise PermissionDenied("Only the clinic's admin reads how the model does in the clinic.")
    return clinic


def model_in_clinic(user, params) -> tuple[ClinicModelForm, dict]:
    """The choices form (bound to `params`, a GET query) and the figures it chose over the user's clinic, for the
    page and the API."""
    analyses = for_clinic(user, Analysis)
    versions = performance.versions_confirmed(analyses)
    form = ClinicModelForm(params or None, versions=versions, default=performance.default_version(versions))
    version, first, last = form.choices()
    return form, performance.clinic_performance(analyses, version, first, last)


@login_required
def clinic_model(request, pk: int):
    """ "The model in this clinic": over the analyses with a confirmed diagnosis, how the model did here, beside
    what its model card measured on the HAM10000 test part."""
    clinic = clinic_for_admin(request.user, pk)
    form, figures = model_in_clinic(request.user, request.GET)
    return render(
        request,
        "clinics/model.html",
        {
            "clinic": clinic,
            "filters": form,
            "figures": figures,
            "plot": performance.reliability_plot(figures["clinic"]["reliability"]),
            "matrix": zip(figures["classes"], figures["clinic"]["confusion_matrix"], strict=True),
            "recalls": [
                (
                    name,
                    figures["clinic"]["per_class_recall"][code],
                    (figures["card"] or {}).get("per_class_recall", {}).get(code),
                )
                for code, name, _ in figures["classes"]
            ],
        },
    )


@login_required
def api_token(request):
    """The signed-in user's API token: whether there is one and since when, and a button that revokes it."""
    token = Token.objects.filter(user=request.user).first()
    if request.method == "POST":
        if token is not None:
            token.delete()
            messages.success(request, "Your API token was revoked: nothing signs in with it any more.")
        return redirect("api-token")
    return render(request, "registration/api_token.html", {"token": token})


class PasswordChange(auth_views.PasswordChangeView):
    """The "Change password" page, its old password counted by sign-in throttling (see the form)."""

    form_class = ThrottledPasswordChangeForm

    def get_form_kwargs(self):
        return super().get_form_kwargs() | {"request": self.request}
