"""The one way a staff member reaches clinical rows: through their own clinic.

Every view and API query goes through `for_clinic` or `get_for_clinic`; a row of another clinic is a
404, exactly like a row that does not exist, so ids reveal nothing. Asking for another clinic's row is
recorded all the same: `get_for_clinic` raises `OtherClinicsRecord` then (a 404 like any other), which the
pages' middleware and the API's exception handler write to the audit trail.
"""

from django.core.exceptions import ValidationError
from django.db import models
from django.http import Http404

from analysis.models import Clinic, Membership


class OtherClinicsRecord(Http404):
    """The 404 for a row that exists, in another clinic than the asker's. Answered exactly as a missing row
    (same status, same message); only the audit trail tells the two apart."""

    def __init__(self, message: str, *, model: type[models.Model], object_id: int, clinic_id: int):
        super().__init__(message)
        self.model = model
        self.object_id = object_id
        self.clinic_id = clinic_id


def clinic_for(user) -> Clinic | None:
    """The clinic a signed-in user works for; None for anonymous users and users with no clinic
    (platform admins work in the Django admin, not in the clinic pages)."""
    if not user.is_authenticated or not user.is_active:
        return None
    try:
        return user.membership.clinic
    except Membership.DoesNotExist:
        return None


def for_clinic(user, model_or_qs: type[models.Model] | models.QuerySet) -> models.QuerySet:
    """The rows of a model (or a narrower queryset) that belong to the user's clinic."""
    qs = model_or_qs if isinstance(model_or_qs, models.QuerySet) else model_or_qs._default_manager.all()
    clinic = clinic_for(user)
    if clinic is None:
        return qs.none()
    return qs.filter(**{qs.model.clinic_lookup: clinic})


def get_for_clinic(user, model_or_qs: type[models.Model] | models.QuerySet, **lookup) -> models.Model:
    """One row of the user's clinic, or Http404: `OtherClinicsRecord` when the row is another clinic's."""
    qs = for_clinic(user, model_or_qs)
    try:
        return qs.get(**lookup)
    except (qs.model.DoesNotExist, ValueError, TypeError, ValidationError):  # the latter: a malformed id
        pass
    missing = f"No {qs.model._meta.object_name} matches the given query."
    owner = _owner(qs.model, lookup)
    if owner is not None and owner[1] is not None and owner[1] != getattr(clinic_for(user), "pk", None):
        raise OtherClinicsRecord(missing, model=qs.model, object_id=owner[0], clinic_id=owner[1])
    # No such row, or one of the user's clinic that the narrower queryset (or an API filter) left out.
    raise Http404(missing)


def _owner(model: type[models.Model], lookup: dict) -> tuple[int, int | None] | None:
    """The id of the row the lookup names, whichever clinic it is in, and the id of that clinic."""
    try:
        return model._default_manager.filter(**lookup).values_list("pk", model.clinic_lookup).first()
    except (ValueError, TypeError, ValidationError):
        return None
