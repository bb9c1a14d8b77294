"""What happens to a queued image: ``analyse`` runs the model, then ``render_report`` writes its PDF.

Both tasks take an analysis id, reload the row and return quietly if there is nothing for them to do, so a
redelivered or duplicated message does no harm. The analysis row is the truth about the work; Celery's
own task state is never read. Lost work (a dead worker, a broker that was down) is found and sent again
by the sweeper in workers/sweeper.py, which each worker's main process starts here once it is ready.
"""

import contextlib
import io
import logging
import time

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerError
from PIL import Image, UnidentifiedImageError

from analysis import storage
from analysis.models import Analysis
from ml.serve.preprocess import load_image
from workers import sweeper
from workers.celery import app

log = logging.getLogger(__name__)

# Worth retrying: the database, the broker or the object store blinked. Anything else is a property of the job itself.
TRANSIENT = (OperationalError, InterfaceError, BrokerError, ConnectionError, *storage.UNREACHABLE)
UNREADABLE = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError)


def _send(task, analysis_id: int) -> bool:
    """Send a task without waiting on an unreachable broker; False (and a warning) when it is away."""
    try:
        task.apply_async((analysis_id,), retry=False)
        return True
    except TRANSIENT as error:
        log.warning("%s of analysis %s not sent, the broker is unreachable: %s", task.name, analysis_id, error)
        return False


def enqueue(analysis_id: int) -> bool:
    """Send an analysis to the workers. If the broker is down the analysis stays queued in the database
    and the sweeper sends it later: an upload never fails because Redis is away."""
    return _send(analyse, analysis_id)


def request_report(analysis_id: int) -> bool:
    """Ask the workers for a done analysis's report (never written, or its file lost), at most once per
    Analysis.REPORT_WAIT however often clients poll; True while a request is on its way. With the broker away
    the caller answers "not yet" and the next request asks again."""
    asked_at = Analysis.ask_for_report(analysis_id)
    if asked_at is None:
        return True
    if _send(render_report, analysis_id):
        return True
    Analysis.withdraw_report_request(analysis_id, asked_at)
    return False


def explainer():
    """The worker process's model (the served model's LiteRT companion file, its head's weights and the quality
    gate), loaded once (ml.serve.explainer keeps it). No TensorFlow: a worker process holds LiteRT, numpy and Pillow."""
    from ml.serve.explainer import get_explainer

    return get_explainer()


@worker_process_init.connect
def _load_model_in_child(**kwargs) -> None:
    # Loaded in the forked child, never in the parent (models shared across fork can hang), and warmed
    # up once so the first analysis is not the slow one. workers.bench reads this line's seconds.
    started = time.perf_counter()
    model = explainer()
    model.explain(Image.new("RGB", (200, 150), "sienna"))
    log.info("model %s loaded and warmed up in %.2f s", model.version, time.perf_counter() - started)


def explanation_of(picture: Image.Image):
    """The prediction, the quality gate's flags and the Grad-CAM overlay (PNG bytes) of the predicted class, from
    one pass of the model."""
    explanation = explainer().explain(picture)
    png = io.BytesIO()
    # Fast compression: zlib's default costs 4x as long for 15% fewer bytes, and `optimize` 30x.
    explanation.overlay.save(png, format="PNG", compress_level=1)
    return explanation.prediction, list(explanation.quality_flags), png.getvalue()


@app.task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=5)
def analyse(self, analysis_id: int) -> str:
    try:
        if not Analysis.claim(analysis_id):
            return "skipped: gone, or another worker has it"
        analysis = Analysis.objects.select_related("image").get(pk=analysis_id)
        try:
            with analysis.image.image.open("rb") as handle:
                picture = load_image(handle)  # read and decoded once, for the prediction and its explanation
            # The prediction, the heatmap of its class and the check that the image is what the model was made
            # for, stored with the result in the same step.
            prediction, quality_flags, heatmap_png = explanation_of(picture)
        except storage.UNREACHABLE:
            raise  # some are OSErrors, but the image is not at fault: retried below
        except UNREADABLE as error:
            analysis.fail(f"The image could not be read as a picture ({type(error).__name__}: {error})"[:500])
            return "failed: unreadable image"
        analysis.finish(
            prediction.probabilities,
            prediction.model_version,
            quality_flags=quality_flags,
            heatmap_png=heatmap_png,
        )
    except SoftTimeLimitExceeded:
        with contextlib.suppress(Analysis.InvalidTransition):
            Analysis(pk=analysis_id).fail("The analysis took longer than the time limit and was stopped.")
        return "failed: time limit"
    except TRANSIENT as error:
        # Put a claimed analysis back so the retry can claim it; if even that fails the sweeper will.
        with contextlib.suppress(*TRANSIENT, Analysis.InvalidTransition):
            Analysis(pk=analysis_id).requeue()
        raise self.retry(exc=error, countdown=min(2 ** (self.request.retries + 1), 60)) from error
    except Exception as error:
        with contextlib.suppress(Analysis.InvalidTransition):
            Analysis(pk=analysis_id).fail(f"Internal error: {type(error).__name__}")
        raise
    render_report.delay(analysis_id)
    return "done"


@app.task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=5)
def render_report(self, analysis_id: int) -> str:
    """Write the PDF report of a finished analysis once; again only if its file has gone missing. Two renders
    of one analysis may run at once (the one after the result, one asked for by a download): the second to
    finish discards its PDF."""
    from analysis import reports

    try:
        analysis = (
            Analysis.objects.select_related("image__case__patient__clinic", "image__case__clinician")
            .filter(pk=analysis_id, status=Analysis.Status.DONE)
            .first()
        )
        if analysis is None:
            return "skipped: not done"
        if analysis.has_report:
            return "skipped: report exists"
        if not reports.store_report(analysis):
            return "skipped: another render attached its report first"
    except TRANSIENT as error:
        raise self.retry(exc=error, countdown=min(2 ** (self.request.retries + 1), 60)) from error
    return "done"


@worker_ready.connect
def _start_sweeper(**kwargs) -> None:
    sweeper.start(enqueue)


@worker_shutdown.connect
def _stop_sweeper(**kwargs) -> None:
    sweeper.stop()
