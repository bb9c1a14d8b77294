"""Staff read dates and times in their clinic's time zone, whatever the server's; a database that is away
for a moment is a 503 to retry, not a 500."""

import logging
import sys
import zoneinfo

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse
from django.utils import timezone
from django.views import defaults

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


log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
DATABASE_UNAVAILABLE = (
    "The database is unavailable for a moment, so nothing was saved. Please try again in a few seconds."
)


def database_unavailable(get_response):
    """A view that cannot reach the database (restarting, failing over, out of connections) answers 503 with
    Retry-After: its transaction was rolled back, so sending the same request again is safe. The page is
    plain HTML: the site's templates would ask the database for the signed-in user."""

    def middleware(request):
        return get_response(request)

    def process_exception(request, exception):
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        return database_unavailable_response(request, exception)

    middleware.process_exception = process_exception
    return middleware


def database_unavailable_response(request, exception: Exception) -> HttpResponse:
    log.warning("database unavailable during %s %s: %s", request.method, request.path, exception)
    return HttpResponse(
        f"<!doctype html><title>Please try again</title><h1>Please try again</h1><p>{DATABASE_UNAVAILABLE}</p>",
        status=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def server_error(request) -> HttpResponse:
    """The 500 handler (handler500). A database that went away before any view ran (the session or the user
    looked up by a middleware, which process_exception never sees) is still a 503 to retry, not a 500."""
    error = sys.exc_info()[1]
    if isinstance(error, OperationalError | InterfaceError):
        return database_unavailable_response(request, error)
    return defaults.server_error(request)
