"""API permissions (a module of its own: DRF imports it from settings before any viewset exists)."""

from rest_framework.permissions import BasePermission

from analysis.access import clinic_for
from analysis.models import Membership


class IsClinicMember(BasePermission):
    """Only staff of a clinic use the API; platform admins work in the Django admin."""

    message = "Your account does not belong to a clinic."

    def has_permission(self, request, view) -> bool:
        return clinic_for(request.user) is not None


class IsClinicAdmin(BasePermission):
    """The clinic's admin only (the audit trail)."""

    message = "Only your clinic's admin may read this."

    def has_permission(self, request, view) -> bool:
        return clinic_for(request.user) is not None and request.user.membership.role == Membership.Role.CLINIC_ADMIN
