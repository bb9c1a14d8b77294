"""Copy a local media folder (MEDIA_ROOT of a one-machine install) into the object store that S3_BUCKET names.

    manage.py media_to_bucket [--source DIR]

Each file goes under the same name (`lesions/...`, `heatmaps/...`, `reports/...`: the names the database holds) and
is read back and compared by sha256. Running it again is safe: a file already in the bucket with the same sha256 is
left alone, one with other bytes is never overwritten but reported. At the end every file the database names must
be in the bucket; the command fails, naming what is wrong, otherwise. The local folder is left as it is: delete it
once the run says OK and the service runs on the bucket.
"""

import hashlib
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import FileSystemStorage, default_storage, storages
from django.core.management.base import BaseCommand, CommandError

from analysis.models import Analysis, LesionImage

CHUNK = 1 << 20


def sha256_of(handle) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def stored_sha256(name: str) -> str:
    with default_storage.open(name, "rb") as handle:
        return sha256_of(handle)


def names_on_record() -> set[str]:
    """Every file name the database points at: images, heatmaps and reports."""
    names = set(LesionImage.objects.values_list("image", flat=True))
    for heatmap, report in Analysis.objects.values_list("heatmap", "report"):
        names.update((heatmap, report))
    return {name for name in names if name}


class Command(BaseCommand):
    help = "Copy a local media folder into the S3_BUCKET object store, verifying each file by sha256; safe to rerun."

    def add_arguments(self, parser):
        parser.add_argument(
            "--source", type=Path, help="the local media folder (default: MEDIA_ROOT, as the one-machine install had)"
        )

    def handle(self, *args, source: Path | None, **options):
        if isinstance(storages["default"], FileSystemStorage):
            raise CommandError("the file storage is the local folder: set S3_BUCKET (and the S3_ variables) first")
        source = (source or Path(settings.MEDIA_ROOT)).resolve()
        if not source.is_dir():
            raise CommandError(f"no folder {source}")
        copied = present = 0
        different: list[str] = []
        for path in sorted(p for p in source.rglob("*") if p.is_file() and not p.is_symlink()):
            name = path.relative_to(source).as_posix()
            with path.open("rb") as handle:
                local = sha256_of(handle)
                if default_storage.exists(name):
                    if stored_sha256(name) == local:
                        present += 1
                    else:
                        different.append(name)
                        self.stderr.write(f"{name}: the bucket holds other bytes under this name; left as it is")
                    continue
                handle.seek(0)
                saved = default_storage.save(name, File(handle, name=name))
            if saved != name or stored_sha256(saved) != local:
                raise CommandError(f"{name}: stored as {saved} with other bytes; stopped (run again to resume)")
            copied += 1
            self.stdout.write(f"{name}: copied, sha256 verified")
        missing = sorted(name for name in names_on_record() if not default_storage.exists(name))
        self.stdout.write(
            f"{copied} copied, {present} already in the bucket, {len(different)} different, "
            f"{len(missing)} named by the database but not in the bucket"
        )
        for name in missing[:20]:
            self.stderr.write(f"{name}: named by the database, in neither {source} nor the bucket")
        if different or missing:
            raise CommandError("not every file is in the bucket as it was on disk (see above)")
        self.stdout.write(self.style.SUCCESS(f"OK: every file of {source} and every file on record is in the bucket"))
