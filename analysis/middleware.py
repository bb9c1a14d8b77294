"""Staff read dates and times in their clinic's time zone, whatever the server's."""

import zoneinfo

from django.utils import timezone

from analysis.access import clinic_for


def clinic_time_zone(get_response):
    def middleware(request):
        clinic = clinic_for(request.user)
        if clinic is not None:
            timezone.activate(zoneinfo.ZoneInfo(clinic.time_zone))
        try:
            return get_response(request)
        finally:
            timezone.deactivate()

    return middleware
