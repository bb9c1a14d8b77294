"""How an image enters the system, whatever the door (web form, API, admin, shell).

An image and its queued analysis are saved in one transaction; the analysis is sent to the workers only
once that transaction has committed (see analysis/signals.py), so a worker never looks for a row that
is not there yet, and a failed save sends nothing.
"""

from datetime import datetime

from django.core.files import File
from django.db import transaction

from analysis.models import Analysis, Case, LesionImage
from analysis.uploads import refuse_duplicate


@transaction.atomic
def submit_image(case: Case, upload: File, user, captured_at: datetime | None = None) -> Analysis:
    """Store an (already validated) image on a case and queue its analysis.

    Raises UploadRejected if the case already holds the same image: validation said so too, but two uploads
    of one image at the same moment both pass it, so the check is made again here, with the case row locked
    until this transaction ends (SQLite serialises writers anyway)."""
    list(Case.objects.select_for_update().filter(pk=case.pk).values_list("pk", flat=True))
    image = LesionImage(case=case, uploaded_by=user, captured_at=captured_at)
    image.attach(upload)
    refuse_duplicate(case, image.sha256)
    image.save()
    return start_analysis(image)


def start_analysis(image: LesionImage) -> Analysis:
    """Queue a new analysis of a stored image (sent to the workers when the transaction commits)."""
    return Analysis.objects.create(image=image)
