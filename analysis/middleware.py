"""Staff read dates and times in their clinic's time zone, whatever the server's; no cache keeps what a
signed-in user was answered; a page asked for another clinic's record is audited; a database that is away
for a moment is a 503 to retry, not a 500, and so is an object store out of reach (analysis/storage.py)."""

import logging
import sys
import zoneinfo

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse
from django.utils import timezone
from django.utils.cache import patch_cache_control
from django.views import defaults

from analysis import audit, storage
from analysis.access import OtherClinicsRecord, clinic_for


def activate_clinic_zone(user) -> None:
    """Make the user's clinic's time zone the current one (for this request; `clinic_time_zone` ends it)."""
    clinic = clinic_for(user)
    if clinic is not None:
        timezone.activate(zoneinfo.ZoneInfo(clinic.time_zone))


def clinic_time_zone(get_response):
    """The clinic's zone for a signed-in session; an API token is read later, by the view, which then calls
    `activate_clinic_zone` itself (analysis.authentication)."""

    def middleware(request):
        activate_clinic_zone(request.user)
        try:
            return get_response(request)
        finally:
            timezone.deactivate()

    return middleware


def private_answers(get_response):
    """Every answer to a signed-in user (a page, an API answer, a redirect) says `Cache-Control: private,
    no-store`: they carry patient data, which no proxy may keep and no browser may keep on disk or show again
    from its history after sign-out (a shared tablet). Directives a view set already are kept; static files
    never get here (WhiteNoise answers them first) and stay cacheable."""

    def middleware(request):
        response = get_response(request)
        # Read after the view: the API authenticates a token inside it (DRF sets request.user then).
        if request.user.is_authenticated:
            patch_cache_control(response, private=True, no_store=True)
        return response

    return middleware


def other_clinics_records_audited(get_response):
    """A page that answered 404 for another clinic's record (analysis.access.get_for_clinic) records the ask
    in the audit trail; the 404 itself is Django's, as for a missing record."""

    def middleware(request):
        return get_response(request)

    def process_exception(request, exception):
        if isinstance(exception, OtherClinicsRecord):
            audit.record_other_clinics(request, exception)
        return None

    middleware.process_exception = process_exception
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
        if isinstance(exception, storage.UNREACHABLE):
            return database_unavailable_response(request, exception, storage.UNREACHABLE_MESSAGE)
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        return database_unavailable_response(request, exception)

    middleware.process_exception = process_exception
    return middleware


def database_unavailable_response(request, exception: Exception, message: str = DATABASE_UNAVAILABLE) -> HttpResponse:
    log.warning("unavailable during %s %s: %s", request.method, request.path, exception)
    return HttpResponse(
        f"<!doctype html><title>Please try again</title><h1>Please try again</h1><p>{message}</p>",
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
