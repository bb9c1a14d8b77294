"""The analysis pipeline through real `celery worker` processes, a real Redis and the test database."""

import io
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from PIL import Image

from analysis.models import Analysis, LesionImage
from analysis.services import submit_image
from ml.serve.inference import model_metadata
from skinsite import embedded_redis
from tests.conftest import use_broker
from tests.factories import CaseFactory
from workers import app
from workers.process import Worker as _Worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.stack]


FAULT_INJECTION = str(Path(__file__).resolve().parent / "fault_injection")


def Worker(redis_url, log, concurrency=1, **env):  # noqa: N802 -- reads as the class it makes
    """A worker that sweeps every second and resends queued work after 3 s, so recovery shows within a test."""
    env = {"SWEEP_INTERVAL": "1", "QUEUED_RESEND_AFTER": "3", "TASK_TIME_LIMIT": "20", **env}
    return _Worker(redis_url, log, concurrency, PYTHONPATH=FAULT_INJECTION, **env)


def wait_for(condition, timeout: float, what: str, worker=None):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            log = worker.log_text()[-4000:] if worker else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{log}")
        time.sleep(0.2)
    return result


def statuses(ids) -> list[str]:
    return list(Analysis.objects.filter(pk__in=ids).order_by("pk").values_list("status", flat=True))


def all_finished(ids) -> bool:
    return all(s in ("done", "failed") for s in statuses(ids))


@pytest.fixture
def case(staff):
    return CaseFactory(patient__clinic=staff.membership.clinic, clinician=staff)


def lesion_jpeg(seed: int) -> ContentFile:
    """A lesion-like picture: a dark blob on skin tone, different for every seed."""
    image = Image.new("RGB", (200, 150), (224, 172, 150))
    blob = Image.new("RGB", (60 + seed % 40, 50 + seed % 30), (90 + seed % 60, 50, 40))
    image.paste(blob, (50 + seed % 50, 40 + seed % 40))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return ContentFile(buffer.getvalue(), name=f"lesion-{seed}.jpg")


def shipped_version() -> str:
    return model_metadata(settings.SKINSITE_MODEL)["version"]


def test_twenty_submitted_images_all_end_done_with_seven_probabilities_and_a_report(broker, case, staff, tmp_path):
    with Worker(broker, tmp_path / "worker.log", concurrency=2) as worker:
        ids = [submit_image(case, lesion_jpeg(i), staff).pk for i in range(20)]
        wait_for(lambda: all_finished(ids), 120, "20 analyses", worker)
        wait_for(
            lambda: Analysis.objects.filter(pk__in=ids).exclude(report="").count() == 20,
            60,
            "reports",
            worker,
        )
    analyses = list(Analysis.objects.filter(pk__in=ids))
    assert [a.status for a in analyses] == ["done"] * 20
    for a in analyses:
        assert sorted(a.probabilities) == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
        assert sum(a.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert a.predicted_class == max(a.probabilities, key=a.probabilities.get)
        assert a.malignant == (a.predicted_class in {"mel", "bcc", "akiec"})
        assert a.model_version == shipped_version()
        assert a.queued_at <= a.started_at <= a.finished_at
        assert a.attempts == 1
        assert a.report.read(5) == b"%PDF-"
        assert a.risk_tier in {"urgent", "uncertain", "routine"}
        assert isinstance(a.quality_flags, list)
        with Image.open(a.heatmap) as heatmap:  # the Grad-CAM overlay, at the image's size
            assert (heatmap.format, heatmap.size) == ("PNG", (200, 150))


def test_a_worker_killed_mid_analysis_is_recovered_by_the_next_one_with_exactly_one_result(
    broker, case, staff, tmp_path
):
    slow = Worker(broker, tmp_path / "slow.log", SKINSITE_TEST_SLOW_ANALYSIS="60", TASK_TIME_LIMIT="8").start()
    try:
        analysis = submit_image(case, lesion_jpeg(1), staff)
        wait_for(lambda: statuses([analysis.pk]) == ["running"], 30, "the analysis to start", slow)
    finally:
        slow.kill()
    assert statuses([analysis.pk]) == ["running"]

    with Worker(broker, tmp_path / "fresh.log", TASK_TIME_LIMIT="8") as fresh:
        wait_for(lambda: statuses([analysis.pk]) == ["done"], 60, "recovery", fresh)
        analysis.refresh_from_db()
        wait_for(lambda: Analysis.objects.get(pk=analysis.pk).report, 30, "the report", fresh)
        time.sleep(3)  # a duplicate delivery would show up now
    analysis.refresh_from_db()
    assert analysis.attempts == 2
    assert Analysis.objects.filter(image=analysis.image).count() == 1
    assert len(list((Path(settings.MEDIA_ROOT) / "reports").iterdir())) == 1


@pytest.fixture
def private_redis():
    """A Redis of this test's own, which it can stop and start again on the same port."""
    with embedded_redis.running() as url:
        pass  # only to find a free port that a server can bind
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    server = {"process": None}

    def start():
        import subprocess

        server["process"] = subprocess.Popen(embedded_redis.command(port), stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(url)
        wait_for(lambda: _pings(client), 10, "redis")

    def stop():
        server["process"].terminate()
        server["process"].wait(timeout=10)

    start()
    previous = app.conf.broker_url
    use_broker(url)
    yield url, start, stop
    use_broker(previous)
    if server["process"].poll() is None:
        stop()


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def test_uploads_while_redis_is_down_are_saved_and_all_end_done_once_it_is_back(private_redis, case, staff, tmp_path):
    url, start_redis, stop_redis = private_redis
    with Worker(url, tmp_path / "worker.log") as worker:
        stop_redis()
        started = time.monotonic()
        ids = [submit_image(case, lesion_jpeg(i), staff).pk for i in range(5)]
        submit_seconds = time.monotonic() - started
        assert statuses(ids) == ["queued"] * 5  # every upload saved and answered
        assert LesionImage.objects.filter(analyses__pk__in=ids).count() == 5
        time.sleep(2)
        start_redis()  # a fresh, empty Redis: whatever was in the queue is gone
        wait_for(lambda: all_finished(ids), 90, "analyses after Redis came back", worker)
    assert statuses(ids) == ["done"] * 5
    assert submit_seconds < 10, "an upload must not hang while the broker is away"


def test_a_corrupt_image_fails_with_a_reason_and_the_worker_keeps_serving(broker, case, staff, tmp_path):
    # Past validation, as if the file was damaged on disk after upload.
    name = default_storage.save("lesions/broken.jpg", ContentFile(b"\xff\xd8\xff\xe0 not really a jpeg"))
    broken = LesionImage.objects.bulk_create(
        [LesionImage(case=case, uploaded_by=staff, image=name, sha256="0" * 64, width=200, height=150)]
    )[0]
    with Worker(broker, tmp_path / "worker.log") as worker:
        bad = Analysis.objects.create(image=broken)
        good = submit_image(case, lesion_jpeg(7), staff)
        wait_for(lambda: all_finished([bad.pk, good.pk]), 60, "both analyses", worker)
    bad.refresh_from_db()
    good.refresh_from_db()
    assert bad.status == "failed"
    assert "could not be read" in bad.error
    assert bad.probabilities == {} and bad.predicted_class == ""
    assert good.status == "done"


def test_analyze_command_queues_files_and_waits_for_the_results(broker, case, staff, tmp_path, capsys):
    files = []
    for i in range(2):
        path = tmp_path / f"img{i}.jpg"
        path.write_bytes(lesion_jpeg(i).read())
        files.append(str(path))
    with Worker(broker, tmp_path / "worker.log"):
        call_command("analyze", *files, "--case", str(case.pk), "--wait", "--timeout", "60")
    out = capsys.readouterr().out
    assert out.count("queued as analysis") == 2
    assert out.count("confidence") == 2
    assert list(Analysis.objects.filter(image__case=case).values_list("status", flat=True)) == [
        "done",
        "done",
    ]


def test_a_worker_analyses_images_without_tensorflow_or_keras(broker, case, staff, tmp_path):
    """The worker's model is the LiteRT companion file and numpy: with TensorFlow and Keras made unimportable in
    the worker's processes, images still end done with a heatmap, nothing tried to import them, and no
    TensorFlow library is mapped into the pool process."""
    attempts = tmp_path / "imports.log"
    with Worker(
        broker,
        tmp_path / "worker.log",
        SKINSITE_TEST_FORBID_IMPORTS="tensorflow,keras,tf_keras",
        SKINSITE_TEST_IMPORT_LOG=str(attempts),
    ) as worker:
        ids = [submit_image(case, lesion_jpeg(i), staff).pk for i in range(3)]
        wait_for(lambda: all_finished(ids), 60, "3 analyses", worker)
        maps = [Path(f"/proc/{pid}/maps").read_text() for pid in worker.pool_pids()]
    assert statuses(ids) == ["done"] * 3
    assert all(a.heatmap and a.quality_flags is not None for a in Analysis.objects.filter(pk__in=ids))
    assert not attempts.exists(), attempts.read_text()
    assert maps and not any("tensorflow" in m or "libtensorflow" in m for m in maps)
