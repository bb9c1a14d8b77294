"""A property-based run of the OpenAPI schema (schemathesis): every operation, with generated valid and invalid
input, as a staff member with some rows in the clinic, must never answer with a server error."""

import pytest
import schemathesis
from django.core.files.base import ContentFile
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from skinsite.wsgi import application
from tests.factories import AnalysisFactory, CaseFactory, LesionImageFactory
from tests.test_api import PROBABILITIES, client_for, done

EXAMPLES_PER_OPERATION = 25

# The schema the API serves (the same generator as /api/schema/), called in-process through WSGI.
schema = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True))
schema.app = application


@pytest.fixture
def token_header(staff, patient):
    """A token, and a case, an image and a done analysis with its report for the generated ids to meet."""
    case = CaseFactory(patient=patient, clinician=staff)
    analysis = done(AnalysisFactory(image=LesionImageFactory(case=case)), PROBABILITIES)
    analysis.report.save("r.pdf", ContentFile(b"%PDF-1.4 a report"))
    AnalysisFactory(image=LesionImageFactory(case=case))
    client = client_for(staff)
    return {"Authorization": client._credentials["HTTP_AUTHORIZATION"]}


@pytest.fixture
def keep_test_connection():
    # As Django's test client does: the test's database connection must survive the end of each request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_operation_answers_with_a_server_error(case, token_header, keep_test_connection):
    case.call_and_validate(headers=token_header, checks=[not_a_server_error])
