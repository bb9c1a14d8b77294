import os
import socket
import subprocess
import time

import pytest
import redis
from django.conf import settings as django_settings

from skinsite import embedded_redis
from tests.factories import MembershipFactory, PatientFactory


@pytest.fixture(scope="session")
def redis_url():
    """REDIS_URL when it is set (CI's real Redis), else a private embedded Redis for this test run."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(embedded_redis.command(port), stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for_redis(url, server)
        from workers import app

        django_settings.REDIS_URL = django_settings.CELERY_BROKER_URL = url
        app.conf.broker_url = url
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_for_redis(url: str, server: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url)
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


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
