"""Recovery without a human: a thread in every worker's main process that sends lost work again.

Every SWEEP_INTERVAL seconds it finds analyses that are running past the hard time limit (their worker
died) or queued for longer than QUEUED_RESEND_AFTER (the broker was down or lost the message), and sends
them again. Several workers may sweep at once: each row is taken by one conditional UPDATE, and a
duplicate message is harmless because ``analyse`` claims its row before doing anything.

The worker starts and stops it (workers/tasks.py, on Celery's worker_ready and worker_shutdown) and hands it
the function that sends an analysis, so this module imports nothing of the tasks it resends.
"""

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from analysis.models import Analysis

log = logging.getLogger(__name__)
_stop = threading.Event()


def sweep(send: Callable[[int], bool]) -> list[int]:
    """One pass: requeue what was lost and ``send`` each analysis id again (False: not sent); returns the ids sent."""
    now = timezone.now()
    grace = timedelta(seconds=settings.SWEEP_INTERVAL)
    ids = Analysis.recover_stale(
        running_before=now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT) - grace,
        queued_before=now - timedelta(seconds=settings.QUEUED_RESEND_AFTER),
    )
    sent = [pk for pk in ids if send(pk)]
    if ids:
        log.info("sweeper: %d lost analyses found, %d sent again", len(ids), len(sent))
    return sent


def _loop(send: Callable[[int], bool]) -> None:
    while not _stop.wait(settings.SWEEP_INTERVAL):
        try:
            close_old_connections()
            sweep(send)
        except Exception:  # a database or broker outage must not end the sweeper: try again next round
            log.exception("sweeper pass failed")
        # Closing a connection to a server that went away can raise too, and nothing may end this loop.
        with contextlib.suppress(Exception):
            connection.close()


def start(send: Callable[[int], bool]) -> None:
    """Sweep every SWEEP_INTERVAL seconds in a daemon thread (not at all when it is 0)."""
    if settings.SWEEP_INTERVAL > 0:
        threading.Thread(target=_loop, args=(send,), name="skinsite-sweeper", daemon=True).start()


def stop() -> None:
    _stop.set()
