"""The audit trail: who created, viewed, changed or downloaded which patient record, when and from where.

Views and viewsets call `record` once they have done what they report, with the row they worked on; sign-ins,
failed sign-ins and lockouts are recorded by the receivers at the bottom. Lists (patients, past analyses, the
dashboard) are not recorded row by row; the polling status endpoint is not recorded at all. The trail is for
people to read: the images and heatmaps a page shows are covered by that page's event (`record_file_view`), so
that a visit to a timeline is one event, not one per thumbnail. A 404 for another
clinic's record (analysis.access.OtherClinicsRecord), wherever it is asked for, is recorded by
`record_other_clinics`: for pages by analysis/middleware.py, for the API by analysis/api.py's exception handler.
A platform admin's reading of a clinic's record in the Django admin is recorded in that clinic's trail
(`record_platform_read`, from analysis/admin.py).
"""

from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db import models
from django.dispatch import receiver
from django.utils import timezone

from analysis.access import OtherClinicsRecord, clinic_for
from analysis.models import Analysis, AuditEvent, Case, LesionImage, Outcome, Patient

# How long after a person viewed a patient's record the images and heatmaps of that patient they fetch count as
# part of that visit (the page's thumbnails and pictures), not as views of their own.
PAGE_VISIT = timedelta(minutes=10)

Action = AuditEvent.Action
ObjectType = AuditEvent.ObjectType

_TYPES = {
    Patient: ObjectType.PATIENT,
    Case: ObjectType.CASE,
    LesionImage: ObjectType.IMAGE,
    Analysis: ObjectType.ANALYSIS,
    Outcome: ObjectType.OUTCOME,
}


def client_ip(request) -> str | None:
    """The client's address: REMOTE_ADDR, or, behind TRUSTED_PROXY_COUNT proxies, the address the outermost
    of them saw. Entries further left in X-Forwarded-For were written by the client and prove nothing."""
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if len(forwarded) >= proxies:
            return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR") or None


def record(
    request,
    action: str,
    obj: models.Model | None = None,
    *,
    object_type: str | None = None,
    description: str = "",
) -> AuditEvent:
    """Store one event by the request's user about `obj` (a Patient, Case, LesionImage or Analysis of their
    clinic); `object_type=ObjectType.REPORT` with an analysis for its report. One INSERT: the clinic comes
    from the user (cached by then), the patient from the relations the view has already loaded."""
    return _store(
        request,
        **_actor(request),
        action=action,
        object_type=object_type or _TYPES[type(obj)],
        object_id=obj.pk if obj is not None else None,
        patient_id=_patient_id(obj),
        description=description or _describe(obj),
    )


def record_file_view(request, obj: LesionImage | Analysis, *, object_type: str | None = None) -> AuditEvent | None:
    """Store that the request's user viewed a file of a record (an image, a heatmap), unless they viewed a record
    of the same patient less than PAGE_VISIT ago: the page they are on shows it, and that page's event says so.
    A timeline of twenty thumbnails is one visit and one event; a file fetched on its own is recorded."""
    user = request.user
    shown_by_a_page = AuditEvent.objects.filter(
        clinic=clinic_for(user),
        patient_id=_patient_id(obj),
        user=user,
        action=Action.VIEWED,
        at__gte=timezone.now() - PAGE_VISIT,
    )
    if shown_by_a_page.exists():
        return None
    return record(request, Action.VIEWED, obj, object_type=object_type)


def record_platform_read(request, obj: models.Model) -> AuditEvent:
    """Store that a platform admin (who belongs to no clinic) read `obj` in the Django admin. The event goes in
    the trail of the clinic the record belongs to, so that clinic's admin sees who outside it read it."""
    return _store(
        request,
        user=request.user,
        username=request.user.get_username(),
        clinic_id=_clinic_id(obj),
        action=Action.VIEWED,
        object_type=_TYPES[type(obj)],
        object_id=obj.pk,
        patient_id=_patient_id(obj),
        description=f"{_describe(obj)}, read in the platform administration"[:255],
    )


def record_other_clinics(request, refused: OtherClinicsRecord) -> AuditEvent | None:
    """Store that the request's user asked for a record of another clinic and was answered 404. The event is
    the asker's clinic's, so their clinic admin sees it; the record's clinic is kept for platform admins."""
    object_type = _TYPES.get(refused.model)
    if object_type is None:  # no page or API object of that kind is reached by id
        return None
    return _store(
        request,
        **_actor(request),
        action=Action.OTHER_CLINICS_RECORD,
        object_type=object_type,
        object_id=refused.object_id,
        record_clinic_id=refused.clinic_id,
        description=f"{ObjectType(object_type).label} {refused.object_id} is not of this clinic: answered 404",
    )


def record_command(command: str, clinic_id: int, action: str, object_type: str, description: str) -> AuditEvent:
    """Store that a management command run on the server (no person signed in) did something with a clinic's
    records: an export of its patients' images, for instance."""
    return _store(
        None,
        clinic_id=clinic_id,
        username=f"manage.py {command}",
        action=action,
        object_type=object_type,
        description=description[:255],
    )


def _actor(request) -> dict:
    """Who an event is by: the request's user, their name as it was then, and their clinic (none when signed out)."""
    user = request.user if request.user.is_authenticated else None
    return {
        "user": user,
        "username": user.get_username() if user else "",
        "clinic": clinic_for(user) if user else None,
    }


def _store(request, **fields) -> AuditEvent:
    meta = request.META if request is not None else {}
    return AuditEvent.objects.create(
        ip_address=client_ip(request) if request is not None else None,
        user_agent=meta.get("HTTP_USER_AGENT", "")[:255],
        path=getattr(request, "path", "")[:255],
        **fields,
    )


def _patient_id(obj: models.Model | None) -> int | None:
    if isinstance(obj, Patient):
        return obj.pk
    if isinstance(obj, Case):
        return obj.patient_id
    if isinstance(obj, LesionImage):
        return obj.case.patient_id
    if isinstance(obj, Analysis):
        return obj.image.case.patient_id
    if isinstance(obj, Outcome):
        return obj.analysis.image.case.patient_id
    return None


def _clinic_id(obj: models.Model) -> int:
    if isinstance(obj, Patient):
        return obj.clinic_id
    if isinstance(obj, Case):
        return obj.patient.clinic_id
    if isinstance(obj, LesionImage):
        return obj.case.patient.clinic_id
    if isinstance(obj, Outcome):
        return obj.analysis.image.case.patient.clinic_id
    return obj.image.case.patient.clinic_id  # an Analysis


def _describe(obj: models.Model | None) -> str:
    # Ids and the patient's name as it was then; nothing that needs another query.
    if isinstance(obj, Patient):
        return str(obj)[:255]
    if isinstance(obj, Case):
        return f"Case {obj.pk} ({obj.get_body_site_display()}) of patient {obj.patient_id}"
    if isinstance(obj, LesionImage):
        return f"Image {obj.pk} of case {obj.case_id}"
    if isinstance(obj, Analysis):
        return f"Analysis {obj.pk} of image {obj.image_id}"
    if isinstance(obj, Outcome):
        return f"Confirmed diagnosis {obj.pk} of analysis {obj.analysis_id}: {obj.diagnosis_words}"[:255]
    return ""


# Sign-ins, through the sign-in form, the admin's and the API token endpoint alike.


@receiver(user_logged_in, dispatch_uid="audit_login")
def _logged_in(sender, request, user, **kwargs) -> None:
    _store(
        request,
        user=user,
        username=user.get_username(),
        clinic=clinic_for(user),
        action=Action.LOGIN,
        object_type=ObjectType.ACCOUNT,
        object_id=user.pk,
    )


@receiver(user_login_failed, dispatch_uid="audit_login_failed")
def _login_failed(sender, credentials, request=None, **kwargs) -> None:
    username = str(credentials.get(get_user_model().USERNAME_FIELD, ""))[:150]
    # The clinic of the account someone tried, so its admin sees attempts on their staff.
    user = get_user_model().objects.filter(username=username).select_related("membership__clinic").first()
    locked = bool(getattr(request, "axes_locked_out", False))
    _store(
        request,
        user=user,
        username=username,
        clinic=clinic_for(user) if user else None,
        action=Action.LOCKED_OUT if locked else Action.LOGIN_FAILED,
        object_type=ObjectType.ACCOUNT,
        object_id=user.pk if user else None,
        description="Too many failed sign-ins: locked out for a while" if locked else "",
    )
