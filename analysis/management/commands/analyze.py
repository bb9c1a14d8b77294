import time
from pathlib import Path

from django.core.files import File
from django.core.management.base import BaseCommand, CommandError

from analysis.models import Analysis, Case
from analysis.services import submit_image
from analysis.uploads import UploadRejected, validate_image_file


class Command(BaseCommand):
    help = "Submit image files to a case through the same queue as the web and the API; --wait for the results."

    def add_arguments(self, parser):
        parser.add_argument("images", nargs="+", type=Path)
        parser.add_argument("--case", type=int, required=True, help="the case id the images belong to")
        parser.add_argument("--user", help="username recorded as uploader (default: the case's clinician)")
        parser.add_argument("--wait", action="store_true", help="wait until every analysis is done or failed")
        parser.add_argument("--timeout", type=float, default=600, help="seconds to wait at most (with --wait)")

    def handle(self, *args, images, case, user, wait, timeout, **options):
        try:
            case_obj = Case.objects.select_related("patient__clinic", "clinician").get(pk=case)
        except Case.DoesNotExist:
            raise CommandError(f"no case {case}") from None
        uploader = self._uploader(case_obj, user)
        analyses = []
        for path in images:
            try:
                with path.open("rb") as handle:
                    upload = File(handle, name=path.name)
                    validate_image_file(upload, case=case_obj)
                    analysis = submit_image(case_obj, upload, uploader)
            except (OSError, UploadRejected) as error:
                self.stderr.write(f"{path}: refused: {error}")
                continue
            analyses.append(analysis)
            self.stdout.write(f"{path}: queued as analysis {analysis.pk}")
        if wait and analyses:
            self._wait([a.pk for a in analyses], timeout)
        if len(analyses) < len(images):
            raise CommandError(f"{len(images) - len(analyses)} of {len(images)} images were refused")

    def _uploader(self, case, username):
        from django.contrib.auth import get_user_model

        if username:
            try:
                found = get_user_model().objects.select_related("membership").get(username=username)
            except get_user_model().DoesNotExist:
                raise CommandError(f"no user {username!r}") from None
            if getattr(getattr(found, "membership", None), "clinic_id", None) != case.patient.clinic_id:
                raise CommandError(f"{username!r} does not work for {case.patient.clinic}")
            return found
        if case.clinician is None:
            raise CommandError("the case has no clinician: name the uploader with --user")
        return case.clinician

    def _wait(self, ids: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        finished = {Analysis.Status.DONE, Analysis.Status.FAILED}
        while True:
            rows = list(Analysis.objects.filter(pk__in=ids).order_by("pk"))
            if all(a.status in finished for a in rows):
                break
            if time.monotonic() > deadline:
                raise CommandError(
                    f"timed out after {timeout:.0f} s; still waiting: "
                    + ", ".join(str(a.pk) for a in rows if a.status not in finished)
                )
            time.sleep(0.2)
        for a in rows:
            if a.status == Analysis.Status.DONE:
                self.stdout.write(
                    f"analysis {a.pk}: {a.predicted_class} ({a.get_predicted_class_display()}), "
                    f"confidence {a.confidence:.3f}{', MALIGNANT class' if a.malignant else ''}"
                )
            else:
                self.stdout.write(f"analysis {a.pk}: failed: {a.error}")
