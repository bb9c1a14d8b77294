"""Faults: a killed worker, a Redis outage and a PostgreSQL restart lose nothing, and the web side answers a
missing database with a 503 to retry.

The three scripts in tests/faults/ run a whole stack of processes (gunicorn, workers, a private Redis, a private
PostgreSQL); here they run with shorter streams and outages than their defaults, and the test reads their
printed counts. `-m "not stack"` leaves them out.
"""

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from unittest import mock

import pytest
from django.db import OperationalError
from django.test import Client
from django.urls import reverse

from analysis import services
from analysis.models import Analysis, LesionImage
from tests import stack
from tests.factories import CaseFactory, jpeg_upload
from tests.test_api import client_for
from workers import sweeper

ROOT = Path(__file__).resolve().parent.parent


class Script:
    """A fault script running in its own process, with its own SQLite or PostgreSQL and Redis (never the test
    run's), its output going to a file."""

    def __init__(self, module: str, *args: str, folder: Path):
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "MEDIA_ROOT", "VAR_DIR")}
        self.output_file = folder / f"{module}.out"
        with open(self.output_file, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def result(self, timeout: float = 240) -> tuple[dict[str, int], str]:
        """Waits for the script to end; returns its counts and its output."""
        returncode = self.process.wait(timeout=timeout)
        output = self.output_file.read_text()
        assert returncode == 0, output[-5000:]
        counts = re.search(r"\] submitted (\d+), done (\d+), failed (\d+), lost (\d+), duplicates (\d+)", output)
        names = ["submitted", "done", "failed", "lost", "duplicates"]
        return (dict(zip(names, map(int, counts.groups()))) if counts else {}), output

    def stop(self) -> None:
        if self.process.poll() is None:  # a test that failed before waiting for it
            self.process.terminate()
            self.process.wait(timeout=30)


NO_PRIVATE_POSTGRES = stack.PostgresCluster.unavailable_reason()


@pytest.fixture(scope="module")
def fault_scripts(tmp_path_factory):
    """The three fault scripts, started side by side: each runs a stack of its own on its own ports, and spends
    most of its time waiting out an outage or a time limit, so together they take little more than the longest
    (make test's durations show it). Shorter streams and outages than their defaults."""
    folder = tmp_path_factory.mktemp("faults")
    scripts = {
        "worker_kill": Script("tests.faults.worker_kill", "--images", "12", folder=folder),
        "redis_outage": Script(
            "tests.faults.redis_outage",
            *("--outage", "8", "--outage-after", "2", "--images", "14", "--interval", "0.6"),
            folder=folder,
        ),
    }
    if not NO_PRIVATE_POSTGRES:
        scripts["postgres_restart"] = Script(
            "tests.faults.postgres_restart", "--images", "16", "--down", "3", "--restart-after", "2", folder=folder
        )
    yield scripts
    for script in scripts.values():
        script.stop()


@pytest.mark.stack
def test_a_worker_killed_with_sigkill_mid_analysis_loses_nothing_and_runs_nothing_twice(fault_scripts):
    counts, output = fault_scripts["worker_kill"].result()
    assert "SIGKILLed worker" in output
    assert counts == {"submitted": 12, "done": 12, "failed": 0, "lost": 0, "duplicates": 0}


@pytest.mark.stack
def test_uploads_go_on_while_redis_is_away_and_every_one_is_analysed_once_it_is_back(fault_scripts):
    counts, output = fault_scripts["redis_outage"].result()
    answered = int(re.search(r"during the outage (\d+) uploads answered", output).group(1))
    assert answered >= 8
    assert counts == {"submitted": 14, "done": 14, "failed": 0, "lost": 0, "duplicates": 0}


@pytest.mark.stack
@pytest.mark.skipif(bool(NO_PRIVATE_POSTGRES), reason=f"no private PostgreSQL can run here: {NO_PRIVATE_POSTGRES}")
def test_a_postgresql_restart_during_uploads_loses_no_acknowledged_image(fault_scripts):
    counts, output = fault_scripts["postgres_restart"].result()
    assert "PostgreSQL started again" in output
    assert counts == {"submitted": 16, "done": 16, "failed": 0, "lost": 0, "duplicates": 0}


# The web side while the database is away


@pytest.fixture
def case(staff):
    return CaseFactory(patient__clinic=staff.membership.clinic, clinician=staff)


DATABASE_GONE = OperationalError("server closed the connection unexpectedly")


@pytest.mark.django_db
def test_an_api_upload_while_the_database_is_away_is_a_503_json_to_retry(staff, case):
    with mock.patch("analysis.api.submit_image", side_effect=DATABASE_GONE):
        response = client_for(staff).post(
            "/api/images/", {"case": case.pk, "image": jpeg_upload("a.jpg", (80, 64))}, format="multipart"
        )
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert "try again in a few seconds" in response.json()["detail"]
    assert not LesionImage.objects.exists()


@pytest.mark.django_db
def test_a_form_upload_while_the_database_is_away_is_a_503_page_to_retry(client, staff, case):
    client.force_login(staff)
    with mock.patch("analysis.views.submit_image", side_effect=DATABASE_GONE):
        response = client.post(reverse("case-upload", args=[case.pk]), {"images": jpeg_upload("a.jpg", (80, 64))})
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert b"nothing was saved" in response.content
    assert not Analysis.objects.exists()


def stored_files(settings) -> list[Path]:
    return [path for path in Path(settings.MEDIA_ROOT).rglob("*") if path.is_file()]


@pytest.mark.django_db(transaction=True)
def test_a_multi_image_upload_cut_off_by_the_database_leaves_no_file_behind(client, staff, case, settings):
    real = services.start_analysis
    calls = []

    def second_fails(image):
        calls.append(image)
        if len(calls) == 2:
            raise DATABASE_GONE
        return real(image)

    client.force_login(staff)
    with mock.patch.object(services, "start_analysis", side_effect=second_fails):
        response = client.post(
            reverse("case-upload", args=[case.pk]),
            {"images": [jpeg_upload("a.jpg", (80, 64)), jpeg_upload("b.jpg", (96, 64))]},
        )
    assert response.status_code == 503
    assert len(calls) == 2  # the first image was stored before the second failed
    assert not LesionImage.objects.exists()
    assert stored_files(settings) == []


@pytest.mark.django_db(transaction=True)
def test_an_api_upload_whose_commit_fails_leaves_no_file_behind(staff, case, settings):
    with mock.patch.object(services, "start_analysis", side_effect=DATABASE_GONE):
        response = client_for(staff).post(
            "/api/images/", {"case": case.pk, "image": jpeg_upload("a.jpg", (80, 64))}, format="multipart"
        )
    assert response.status_code == 503
    assert not LesionImage.objects.exists()
    assert stored_files(settings) == []


@pytest.mark.django_db
def test_a_database_gone_before_any_view_runs_is_still_a_503_page_to_retry(staff):
    client = Client(raise_request_exception=False)
    client.force_login(staff)
    # The clinic time zone middleware reads the user's clinic before the view: process_exception never sees it.
    with mock.patch("analysis.middleware.clinic_for", side_effect=DATABASE_GONE):
        response = client.get(reverse("patient-list"))
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert b"nothing was saved" in response.content


@pytest.mark.django_db
def test_any_other_server_error_is_still_a_plain_500(staff):
    client = Client(raise_request_exception=False)
    client.force_login(staff)
    with mock.patch("analysis.middleware.clinic_for", side_effect=RuntimeError("a bug")):
        response = client.get(reverse("patient-list"))
    assert response.status_code == 500
    assert "Retry-After" not in response


def test_the_sweeper_goes_on_after_failed_passes_and_a_failing_close(settings):
    settings.SWEEP_INTERVAL = 0.01
    passes = []

    def failing_sweep(send):
        passes.append(1)
        if len(passes) >= 3:
            sweeper._stop.set()
        raise OperationalError("the database is restarting")

    with (
        mock.patch.object(sweeper, "sweep", side_effect=failing_sweep),
        mock.patch.object(sweeper, "close_old_connections"),
        mock.patch.object(sweeper.connection, "close", side_effect=OperationalError("connection already closed")),
    ):
        thread = threading.Thread(target=sweeper._loop, args=(lambda pk: True,))
        thread.start()
        thread.join(timeout=10)
    sweeper._stop.clear()
    assert not thread.is_alive()
    assert len(passes) == 3
