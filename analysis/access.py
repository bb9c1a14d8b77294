"""The one way a staff member reaches clinical rows: through their own clinic.

Every view and API query goes through `for_clinic` or `get_for_clinic`; a row of another clinic is a
404, exactly like a row that does not exist, so ids reveal nothing.
"""

from django.db import models
from django.shortcuts import get_object_or_404

from analysis.models import Clinic, Membership


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
    """One row of the user's clinic, or Http404 (also for another clinic's row)."""
    return get_object_or_404(for_clinic(user, model_or_qs), **lookup)
