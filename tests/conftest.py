import os

import pytest
import redis
from django.conf import settings as django_settings

from skinsite import embedded_redis
from tests.factories import AnalysisFactory, CaseFactory, LesionImageFactory, MembershipFactory, PatientFactory, finish
from workers import app


@pytest.fixture(scope="session")
def redis_url():
    """REDIS_URL when it is set (CI's real Redis), else a private embedded Redis for this test run."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with embedded_redis.running() as url:
        django_settings.REDIS_URL = django_settings.CELERY_BROKER_URL = url
        use_broker(url)
        yield url


def use_broker(url: str) -> None:
    """Point this (web-side) process's Celery producer at a broker. Connection and producer pools are cached
    per broker URL, and an earlier send (to the default URL) may have made them: drop ours."""
    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def broker(redis_url):
    """An empty Redis queue for a test that runs real workers."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield redis_url
    client.flushdb()


@pytest.fixture(autouse=True)
def _private_media_and_fast_passwords(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# The fixture trio for every access rule: staff and a colleague in one clinic, an outsider in another.


@pytest.fixture
def staff(db):
    return MembershipFactory(user__username="staff").user


@pytest.fixture
def colleague(staff):
    return MembershipFactory(user__username="colleague", clinic=staff.membership.clinic).user


@pytest.fixture
def outsider(db):
    return MembershipFactory(user__username="outsider").user


@pytest.fixture
def patient(staff):
    return PatientFactory(clinic=staff.membership.clinic)


@pytest.fixture
def case(patient, staff):
    return CaseFactory(patient=patient, clinician=staff)


@pytest.fixture
def analysis(case, staff):
    """A done analysis of the staff member's patient, with its report written (a module may define its own)."""
    return finish(AnalysisFactory(image=LesionImageFactory(case=case, uploaded_by=staff)), report=True)


@pytest.fixture(scope="session")
def explainer():
    """The shipped model's explainer (its companion file, Grad-CAM and the quality gate), loaded once for the run."""
    from ml.serve.explainer import get_explainer

    return get_explainer()
