from django.contrib import admin


class PlatformAdminSite(admin.AdminSite):
    """The Django admin is for platform administrators (superusers) only.

    Clinic admins and staff work in the clinic pages, which are scoped to their clinic; the admin sees
    every clinic, so `is_staff` alone is not enough to enter it.
    """

    site_header = "skinsite platform administration"
    site_title = "skinsite admin"

    def has_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_superuser
