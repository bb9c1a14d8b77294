from datetime import date
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from analysis import audit
from analysis.export import FolderNotEmpty, confirmed_outcomes, export_outcomes
from analysis.models import AuditEvent, Clinic


class Command(BaseCommand):
    help = (
        "Write the images whose confirmed diagnosis is one of the 7 classes, and a metadata.csv, to DIR in the "
        "layout `python -m ml.train --extra-data DIR` reads, pseudonymised (no name, MRN or date of birth), with "
        "a SHA256SUMS manifest. Refuses a DIR that is not empty unless --add is given; running again is safe."
    )

    def add_arguments(self, parser):
        parser.add_argument("dir", type=Path, help="the folder to write (made if missing)")
        parser.add_argument("--clinic", help="only this clinic's confirmed images (its name); default: every clinic")
        parser.add_argument(
            "--since", type=date.fromisoformat, help="only diagnoses recorded on this day or later (YYYY-MM-DD)"
        )
        parser.add_argument(
            "--add", action="store_true", help="add to a folder that holds an earlier export instead of refusing it"
        )

    def handle(self, *args, dir, clinic, since, add, **options):
        if clinic is not None and not Clinic.objects.filter(name=clinic).exists():
            raise CommandError(f"no clinic is called {clinic!r}")
        outcomes = confirmed_outcomes(clinic, since)
        try:
            exported = export_outcomes(dir, outcomes, add=add)
        except FolderNotEmpty as refused:
            raise CommandError(str(refused)) from None
        # The export is a download of patient images: each clinic's trail says so.
        for clinic_id in set(outcomes.values_list("analysis__image__case__patient__clinic", flat=True)):
            audit.record_command(
                "export_outcomes",
                clinic_id,
                AuditEvent.Action.DOWNLOADED,
                AuditEvent.ObjectType.OUTCOME,
                f"Confirmed images exported, pseudonymised, for training, to {dir}",
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"{dir}: {exported.added} images added, {exported.updated} corrected, {exported.unchanged} already "
                f"there, {exported.removed} taken out (no longer one of the 7 classes); {exported.total} in all."
            )
        )
