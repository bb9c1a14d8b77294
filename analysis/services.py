"""How an image enters the system, whatever the door (web form, API, admin, shell).

An image and its queued analysis are saved in one transaction; the analysis is sent to the workers only
once that transaction has committed (see analysis/signals.py), so a worker never looks for a row that
is not there yet, and a failed save sends nothing.
"""

import contextlib
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime

from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction

from analysis import storage
from analysis.models import Analysis, Case, LesionImage
from analysis.uploads import UploadRejected, refuse_duplicate

CLOSED_CASE = "This case is closed; reopen it to add images."

# The names of the files stored inside the outermost `removing_files_on_failure` block now running.
_stored_files: ContextVar[list[str] | None] = ContextVar("stored_files", default=None)


@contextmanager
def removing_files_on_failure():
    """Image files stored inside the block are deleted again if it raises: its transaction was rolled back
    (or its commit failed, with the database gone), so no row points at them and they would lie there unseen.
    Wrap the transaction, not the other way round, so that a failing commit is caught too. Nested blocks
    share the outermost one's list: only it knows whether everything landed."""
    if _stored_files.get() is not None:
        yield
        return
    names: list[str] = []
    token = _stored_files.set(names)
    try:
        yield
    except BaseException:
        for name in names:
            with contextlib.suppress(OSError, *storage.UNREACHABLE):
                default_storage.delete(name)
        raise
    finally:
        _stored_files.reset(token)


def submit_image(
    case: Case, upload: File, user, captured_at: datetime | None = None, image: LesionImage | None = None
) -> Analysis:
    """Store an (already validated) image on a case and queue its analysis.

    Raises UploadRejected if the case is closed, or already holds the same image: validation said so too, but
    two uploads of one image at the same moment both pass it, so the check is made again here, with the case
    row locked until this transaction ends (SQLite serialises writers anyway). Every door comes through here
    (web form, API, ``manage.py analyze``, the admin), so a closed case takes no image from any of them.
    ``image``: an unsaved LesionImage to fill in and store (the admin's form makes one), instead of a new one."""
    with removing_files_on_failure(), transaction.atomic():
        status = Case.objects.select_for_update().filter(pk=case.pk).values_list("status", flat=True).get()
        if status != Case.Status.OPEN:
            raise UploadRejected(CLOSED_CASE)
        if image is not None and image.pk is not None:
            raise ValueError("submit_image stores a new image, not one already saved")
        image = image or LesionImage()
        image.case, image.uploaded_by, image.captured_at = case, user, captured_at
        image.attach(upload)
        refuse_duplicate(case, image.sha256)
        image.save()
        _stored_files.get().append(image.image.name)
        return start_analysis(image)


def start_analysis(image: LesionImage) -> Analysis:
    """Queue a new analysis of a stored image (sent to the workers when the transaction commits)."""
    return Analysis.objects.create(image=image)
