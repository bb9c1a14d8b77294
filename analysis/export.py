"""Confirmed images as training data for the next model (`manage.py export_outcomes`), pseudonymised.

The folder is in the layout `ml.train --extra-data` reads (ml.train.data.load_extra): `metadata.csv` with image_id,
lesion_id, dx, dx_type, age, sex, localization, and `images/<image_id>.jpg`; plus `SHA256SUMS`, the sha256 of
every file in `sha256sum -c` form. Only images whose confirmed diagnosis (the latest entry) is one of the 7
classes go in. No name, MRN, date of birth or date of any kind leaves the clinic: the ids are keyed hashes
(HMAC with the server's SECRET_KEY) of the image and of the case, the same on every run, so one lesion is one
lesion_id and a second run adds only what is new; the age is in whole years when the image was taken; the
image is re-encoded from its pixels, which drops EXIF (capture time, device, GPS). Files are read through
Django's storage API, so any storage backend serves.
"""

import csv
import hashlib
import io
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

from django.db.models import QuerySet
from django.utils import timezone
from django.utils.crypto import salted_hmac

from analysis.models import Analysis, Outcome
from analysis.reports import years_between

COLUMNS = ["image_id", "lesion_id", "dx", "dx_type", "age", "sex", "localization"]
MANIFEST = "SHA256SUMS"
METADATA = "metadata.csv"
# HAM10000's sex vocabulary; skinsite's "other" has no place in it.
SEXES = {"female": "female", "male": "male"}


class FolderNotEmpty(Exception):
    pass


@dataclass
class Exported:
    added: int
    updated: int
    unchanged: int
    removed: int
    total: int


def pseudonym(prefix: str, kind: str, *key: object) -> str:
    """A stable opaque id: the same record gives the same id on every run of this server, and nothing outside
    it can tell which record that is."""
    digest = salted_hmac(f"skinsite.export_outcomes.{kind}", ":".join(map(str, key)), algorithm="sha256")
    return f"{prefix}_{digest.hexdigest()[:20]}"


def confirmed_outcomes(clinic_name: str | None = None, since: date | None = None) -> QuerySet:
    """The latest confirmed diagnosis of every done analysis, of one clinic or all, recorded on `since` or later
    (the server's days). Those outside the 7 classes are among them: an image exported before its correction to
    one of them is taken out again."""
    outcomes = (
        Outcome.objects.current()
        .filter(analysis__status=Analysis.Status.DONE)
        .select_related("analysis__image__case__patient__clinic")
        .order_by("recorded_at", "pk")
    )
    if clinic_name is not None:
        outcomes = outcomes.filter(analysis__image__case__patient__clinic__name=clinic_name)
    if since is not None:
        outcomes = outcomes.filter(recorded_at__date__gte=since)
    return outcomes


def row_of(outcome: Outcome) -> dict:
    image = outcome.analysis.image
    case, patient = image.case, image.case.patient
    taken = timezone.localtime(image.captured_at or image.uploaded_at, ZoneInfo(patient.clinic.time_zone)).date()
    return {
        "image_id": pseudonym("SKS", "image", patient.clinic_id, image.pk),
        "lesion_id": pseudonym("SKL", "lesion", patient.clinic_id, case.pk),
        "dx": outcome.diagnosis,
        "dx_type": outcome.method,
        "age": years_between(patient.date_of_birth, taken) if patient.date_of_birth else "",
        "sex": SEXES.get(patient.sex, "unknown"),
        "localization": case.body_site,
    }


def jpeg_of(field) -> bytes:
    """The stored image as the model saw it (upright RGB, alpha flattened on white, 16-bit scaled: ml.serve.preprocess's
    load_image, the workers' own), as a JPEG with its metadata left behind."""
    from ml.serve.preprocess import load_image  # numpy and Pillow, as analysis.reports uses it: no TensorFlow

    with field.open("rb") as handle:
        upright = load_image(handle)
    buffer = io.BytesIO()
    upright.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def export_outcomes(folder: Path, outcomes: QuerySet, add: bool = False) -> Exported:
    """Write the images and metadata of `outcomes` to `folder`. A folder with anything in it is refused
    (FolderNotEmpty) unless `add`: then its rows are kept, an image already there is not written again, and a
    row whose diagnosis was corrected since takes the new one (or leaves, corrected to none of the 7 classes). Each file is written whole under a temporary name
    and moved into place, and the manifest is written last, so an interrupted run is finished by running again."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not add:
        raise FolderNotEmpty(f"{folder} is not empty: give --add to add to it, or name an empty folder")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = _read_rows(folder / METADATA)
    added = updated = unchanged = removed = 0
    for outcome in outcomes.iterator():
        row = row_of(outcome)
        path = folder / "images" / f"{row['image_id']}.jpg"
        if outcome.diagnosis == Outcome.OTHER:  # none of the 7 classes: no training image
            if rows.pop(row["image_id"], None) is not None:
                path.unlink(missing_ok=True)
                removed += 1
            continue
        if not path.exists():
            _write(path, jpeg_of(outcome.analysis.image.image))
        before = rows.get(row["image_id"])
        if before is None:
            added += 1
        elif before != {k: str(v) for k, v in row.items()}:
            updated += 1
        else:
            unchanged += 1
        rows[row["image_id"]] = {k: str(v) for k, v in row.items()}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[image_id] for image_id in sorted(rows))
    _write(folder / METADATA, buffer.getvalue().encode())
    _write_manifest(folder, sorted(rows))
    return Exported(added, updated, unchanged, removed, len(rows))


def _read_rows(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    with path.open(newline="") as handle:
        return {row["image_id"]: {k: row.get(k, "") for k in COLUMNS} for row in csv.DictReader(handle)}


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _write_manifest(folder: Path, image_ids: list[str]) -> None:
    names = [METADATA, *(f"images/{image_id}.jpg" for image_id in image_ids)]
    lines = [f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n" for name in names]
    _write(folder / MANIFEST, "".join(lines).encode())
