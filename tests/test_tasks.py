"""The pipeline's rules, in-process: enqueue on commit, claims, failures, recovery of lost work."""

from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError
from PIL import Image

from analysis.models import Analysis
from analysis.services import submit_image
from tests.factories import AnalysisFactory, CaseFactory, jpeg_upload
from workers import sweeper, tasks

pytestmark = pytest.mark.django_db


@pytest.fixture
def case(staff):
    return CaseFactory(patient__clinic=staff.membership.clinic, clinician=staff)


def test_an_upload_is_sent_to_the_workers_only_after_its_transaction_commits(
    case, staff, django_capture_on_commit_callbacks
):
    with mock.patch.object(tasks.analyse, "apply_async") as send:
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            analysis = submit_image(case, jpeg_upload("a.jpg"), staff)
            assert not send.called  # still inside the transaction
        assert len(callbacks) == 1
    send.assert_called_once_with((analysis.pk,), retry=False)
    assert Analysis.objects.get(pk=analysis.pk).status == "queued"


def test_an_analysis_added_in_the_admin_is_sent_too(case, django_capture_on_commit_callbacks):
    with mock.patch.object(tasks.analyse, "apply_async") as send, django_capture_on_commit_callbacks(execute=True):
        analysis = AnalysisFactory(image__case=case)
    send.assert_called_once_with((analysis.pk,), retry=False)


def test_an_unreachable_broker_leaves_the_analysis_queued_and_the_upload_saved(
    case, staff, django_capture_on_commit_callbacks
):
    refused = BrokerError("connection refused")
    with (
        mock.patch.object(tasks.analyse, "apply_async", side_effect=refused),
        django_capture_on_commit_callbacks(execute=True),
    ):
        analysis = submit_image(case, jpeg_upload("a.jpg"), staff)
    analysis.refresh_from_db()
    assert analysis.status == "queued"
    assert analysis.image.image.read(2) == b"\xff\xd8"


def run_task(analysis_id):
    """Run the task body here, its follow-up report task captured rather than sent."""
    with mock.patch.object(tasks.render_report, "delay") as report:
        result = tasks.analyse.run(analysis_id)
    return result, report


def test_the_task_stores_the_model_result_in_one_step(case, staff):
    analysis = AnalysisFactory(image__case=case)
    fake = mock.Mock(
        probabilities={"akiec": 0.05, "bcc": 0.05, "bkl": 0.1, "df": 0.05, "mel": 0.6, "nv": 0.1, "vasc": 0.05},
        predicted_class="mel",
        model_version="test-model",
    )
    with mock.patch.object(tasks, "explainer") as explainer:
        explainer.return_value.explain.return_value = mock.Mock(
            prediction=fake, overlay=Image.new("RGB", (8, 6)), quality_flags=[]
        )
        result, report = run_task(analysis.pk)
    assert result == "done"
    report.assert_called_once_with(analysis.pk)
    analysis.refresh_from_db()
    assert (analysis.status, analysis.predicted_class, analysis.malignant) == ("done", "mel", True)
    assert analysis.confidence == pytest.approx(0.6)
    assert analysis.model_version == "test-model"
    assert analysis.started_at and analysis.finished_at


def test_a_duplicated_message_does_nothing_once_the_analysis_is_claimed(case):
    analysis = AnalysisFactory(image__case=case)
    assert Analysis.claim(analysis.pk)
    with mock.patch.object(tasks, "explainer") as explainer:
        result, report = run_task(analysis.pk)
    assert result.startswith("skipped")
    assert not explainer.called and not report.called
    assert Analysis.objects.get(pk=analysis.pk).attempts == 1


def test_a_message_for_a_deleted_analysis_returns_quietly():
    result, report = run_task(987654)
    assert result.startswith("skipped") and not report.called


def test_an_unexpected_error_records_failed_and_is_raised(case):
    analysis = AnalysisFactory(image__case=case)
    with mock.patch.object(tasks, "explainer", side_effect=RuntimeError("boom")), pytest.raises(RuntimeError):
        run_task(analysis.pk)
    analysis.refresh_from_db()
    assert analysis.status == "failed"
    assert analysis.error == "Internal error: RuntimeError"


def test_the_sweeper_resends_work_lost_by_a_dead_worker_or_a_down_broker(case, settings):
    settings.CELERY_TASK_TIME_LIMIT, settings.SWEEP_INTERVAL, settings.QUEUED_RESEND_AFTER = 60, 5, 30
    now = timezone.now()
    dead = AnalysisFactory(image__case=case)
    Analysis.objects.filter(pk=dead.pk).update(status="running", started_at=now - timedelta(seconds=70))
    busy = AnalysisFactory(image__case=case)
    Analysis.objects.filter(pk=busy.pk).update(status="running", started_at=now - timedelta(seconds=30))
    lost = AnalysisFactory(image__case=case)
    Analysis.objects.filter(pk=lost.pk).update(queued_at=now - timedelta(seconds=31))
    waiting = AnalysisFactory(image__case=case)
    finished = AnalysisFactory(image__case=case)
    Analysis.objects.filter(pk=finished.pk).update(status="done", queued_at=now - timedelta(hours=1))

    with mock.patch.object(tasks.analyse, "apply_async") as send:
        sent = sweeper.sweep(tasks.enqueue)
        again = sweeper.sweep(tasks.enqueue)  # straight after: nothing is taken twice
    assert sorted(sent) == sorted([dead.pk, lost.pk])
    assert again == []
    assert sorted(call.args[0][0] for call in send.call_args_list) == sorted([dead.pk, lost.pk])
    assert Analysis.objects.get(pk=dead.pk).status == "queued"
    assert Analysis.objects.get(pk=busy.pk).status == "running"
    assert Analysis.objects.get(pk=waiting.pk).status == "queued"


def test_the_sweeper_fails_an_analysis_that_stopped_its_worker_on_every_attempt(case, settings):
    settings.CELERY_TASK_TIME_LIMIT, settings.SWEEP_INTERVAL = 60, 5
    stale = timezone.now() - timedelta(seconds=70)
    poison = AnalysisFactory(image__case=case)
    retried = AnalysisFactory(image__case=case)
    Analysis.objects.filter(pk=poison.pk).update(status="running", started_at=stale, attempts=Analysis.MAX_ATTEMPTS)
    Analysis.objects.filter(pk=retried.pk).update(
        status="running", started_at=stale, attempts=Analysis.MAX_ATTEMPTS - 1
    )

    with mock.patch.object(tasks.analyse, "apply_async") as send:
        assert sweeper.sweep(tasks.enqueue) == [retried.pk]
    send.assert_called_once_with((retried.pk,), retry=False)
    poison.refresh_from_db()
    assert (poison.status, poison.finished_at is not None) == ("failed", True)
    assert poison.error == (
        "Stopped after 3 attempts: the worker stopped each time while analysing this image. "
        "Submit it again or contact support."
    )
    assert poison.predicted_class == "" and poison.probabilities == {} and not poison.heatmap  # no result shown
    assert Analysis.objects.get(pk=retried.pk).status == "queued"


def test_the_sweeper_keeps_work_queued_while_the_broker_is_still_down(case, settings):
    settings.QUEUED_RESEND_AFTER = 30
    lost = AnalysisFactory(image__case=case)
    Analysis.objects.filter(pk=lost.pk).update(queued_at=timezone.now() - timedelta(seconds=31))
    with mock.patch.object(tasks.analyse, "apply_async", side_effect=BrokerError("down")):
        assert sweeper.sweep(tasks.enqueue) == []
    assert Analysis.objects.get(pk=lost.pk).status == "queued"
