"""`manage.py export_outcomes`: confirmed images as training data, pseudonymised, in the layout ml.train reads."""

import csv
import hashlib
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from PIL import Image

from analysis.models import AuditEvent, Outcome
from ml.train import data
from tests.factories import AnalysisFactory, CaseFactory, LesionImageFactory, PatientFactory, finish

pytestmark = pytest.mark.django_db

# Drawn as tests/test_ml_pipeline.py draws its classes, so that a network can tell them apart.
COLOURS = {"mel": (60, 30, 20), "nv": (150, 90, 60), "bkl": (120, 110, 70)}


def lesion_picture(dx: str, orientation: int | None = None) -> bytes:
    import io

    image = Image.new("RGB", (200, 150), (180, 170, 160))
    image.paste(COLOURS[dx], (70, 45, 130, 105))
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0132] = "2026:03:14 09:26:53"  # DateTime: must not leave the clinic
    if orientation:
        exif[0x0112] = orientation
    image.save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def confirmed(case, staff, dx: str, diagnosis: str | None = None, recorded_at=None, orientation=None, **image):
    from django.core.files.base import ContentFile

    upload = ContentFile(lesion_picture(dx, orientation), "x.jpg")
    picture = LesionImageFactory(case=case, uploaded_by=staff, image=upload, **image)
    analysis = finish(AnalysisFactory(image=picture))
    outcome = Outcome(
        analysis=analysis,
        diagnosis=diagnosis or dx,
        other_diagnosis="Merkel cell carcinoma" if diagnosis == "other" else "",
        method="histo",
        confirmed_on=timezone.localdate(),
        recorded_by=staff,
    )
    if recorded_at:
        outcome.recorded_at = recorded_at
    outcome.save()
    return analysis


@pytest.fixture
def clinic_data(staff, patient):
    patient.name, patient.mrn, patient.date_of_birth, patient.sex = (
        "Ada Example",
        "MRN-4711",
        date(1970, 5, 1),
        "female",
    )
    patient.save()
    case = CaseFactory(patient=patient, body_site="face")
    taken = datetime(2026, 3, 14, 9, 0, tzinfo=timezone.get_fixed_timezone(0))
    first = confirmed(case, staff, "mel", captured_at=taken)
    second = confirmed(case, staff, "mel", captured_at=taken)  # the same lesion again
    other_case = CaseFactory(patient=patient, body_site="back")
    naevus = confirmed(other_case, staff, "nv")
    scc = confirmed(other_case, staff, "nv", diagnosis="other")
    return {"case": case, "lesion": [first, second], "naevus": naevus, "scc": scc}


def read_metadata(folder: Path) -> list[dict]:
    with (folder / "metadata.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def manifest_holds(folder: Path) -> bool:
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
            return False
    return True


def test_the_export_reads_back_with_ml_data_pseudonymised(tmp_path, clinic_data, staff):
    out = tmp_path / "export"
    call_command("export_outcomes", str(out))

    frame = data.load_extra(out)
    assert sorted(frame["dx"]) == ["mel", "mel", "nv"]  # "other" is no training class
    assert set(frame["split"]) == {"train"} and all(Path(p).is_file() for p in frame["path"])
    rows = read_metadata(out)
    assert list(rows[0]) == ["image_id", "lesion_id", "dx", "dx_type", "age", "sex", "localization"]
    melanomas = [r for r in rows if r["dx"] == "mel"]
    assert melanomas[0]["lesion_id"] == melanomas[1]["lesion_id"]  # one case, one lesion
    assert melanomas[0]["image_id"] != melanomas[1]["image_id"]
    assert {(r["age"], r["sex"], r["localization"], r["dx_type"]) for r in melanomas} == {
        ("55", "female", "face", "histo")  # 55 when taken in March 2026, born May 1970
    }
    # Nothing that names the patient, nor any date: not in the CSV, not in the ids, not in the images' EXIF.
    written = (out / "metadata.csv").read_text()
    for secret in ["Ada", "Example", "MRN-4711", "1970-05-01", "2026-03", "lesion.jpg", "x.jpg"]:
        assert secret not in written
    for path in frame["path"]:
        with Image.open(path) as picture:
            assert not picture.getexif() and picture.mode == "RGB" and picture.size == (200, 150)
    assert manifest_holds(out)
    assert sorted(line.split("  ")[1] for line in (out / "SHA256SUMS").read_text().splitlines()) == sorted(
        ["metadata.csv", *(f"images/{r['image_id']}.jpg" for r in rows)]
    )
    event = AuditEvent.objects.get(username="manage.py export_outcomes")
    assert event.clinic == staff.membership.clinic and event.action == "downloaded"


def test_a_folder_that_is_not_empty_is_refused_unless_told_to_add(tmp_path, clinic_data):
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CommandError, match="is not empty: give --add"):
        call_command("export_outcomes", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_running_again_adds_only_what_is_new_and_follows_corrections(tmp_path, clinic_data, staff, case):
    out = tmp_path / "export"
    call_command("export_outcomes", str(out))
    first = read_metadata(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}

    call_command("export_outcomes", str(out), "--add")
    assert read_metadata(out) == first  # the same ids, nothing twice
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == stamps

    new = confirmed(case, staff, "bkl")
    naevus = clinic_data["naevus"]
    Outcome.objects.create(  # a correction: the naevus was a melanoma
        analysis=naevus, diagnosis="mel", method="consensus", confirmed_on=timezone.localdate(), recorded_by=staff
    )
    call_command("export_outcomes", str(out), "--add")
    rows = read_metadata(out)
    assert len(rows) == 4 and sorted(r["dx"] for r in rows) == ["bkl", "mel", "mel", "mel"]
    assert [r["dx_type"] for r in rows if r["dx"] == "mel"].count("consensus") == 1
    assert len(list((out / "images").iterdir())) == 4 and manifest_holds(out)
    assert new.pk

    Outcome.objects.create(  # corrected again, to none of the 7 classes: it leaves the training data
        analysis=naevus, diagnosis="other", other_diagnosis="Artefact", method="histo",
        confirmed_on=timezone.localdate(), recorded_by=staff,
    )  # fmt: skip
    call_command("export_outcomes", str(out), "--add")
    assert len(read_metadata(out)) == 3 and len(list((out / "images").iterdir())) == 3 and manifest_holds(out)


def test_clinic_and_since_choose_what_is_exported(tmp_path, clinic_data, staff, outsider):
    patient = PatientFactory(clinic=outsider.membership.clinic)
    confirmed(CaseFactory(patient=patient), outsider, "nv")
    confirmed(clinic_data["case"], staff, "nv", recorded_at=timezone.now() - timedelta(days=40))  # recorded long ago

    call_command("export_outcomes", str(tmp_path / "all"))
    assert len(read_metadata(tmp_path / "all")) == 5
    call_command("export_outcomes", str(tmp_path / "ours"), "--clinic", staff.membership.clinic.name)
    assert len(read_metadata(tmp_path / "ours")) == 4
    since = str(timezone.localdate() - timedelta(days=7))
    call_command(
        "export_outcomes", str(tmp_path / "recent"), "--clinic", staff.membership.clinic.name, "--since", since
    )
    assert len(read_metadata(tmp_path / "recent")) == 3
    with pytest.raises(CommandError, match="no clinic is called"):
        call_command("export_outcomes", str(tmp_path / "none"), "--clinic", "Nowhere")


def test_an_upright_copy_of_a_rotated_phone_photo_is_exported(tmp_path, staff, case):
    confirmed(case, staff, "mel", orientation=6)  # a portrait photo stored landscape, as phones store them
    call_command("export_outcomes", str(tmp_path / "out"))
    (path,) = (tmp_path / "out" / "images").iterdir()
    with Image.open(path) as exported:
        assert exported.size == (150, 200)


@pytest.mark.training
def test_one_epoch_of_the_tiny_model_trains_on_the_export(tmp_path, staff, patient, monkeypatch):
    pytest.importorskip("tensorflow")
    from ml.serve import paths

    if not paths.IMAGENET_WEIGHTS.exists():
        pytest.skip(f"needs the ImageNet weights at {paths.IMAGENET_WEIGHTS}")
    from ml.train import fit as train
    from tests.test_ml_pipeline import synthetic_ham
    from tests.test_ml_whole import tiny_recipe

    for _ in range(4):
        for dx in ("mel", "nv", "bkl"):
            confirmed(CaseFactory(patient=patient), staff, dx)
    out = tmp_path / "skinsite_outcomes"
    call_command("export_outcomes", str(out))
    monkeypatch.setattr(train, "save", lambda model, out, name, result, *args, **kwargs: result)

    recipe = tiny_recipe(epochs=1, head_only_epochs=1, warmup_epochs=0, average_from=None, epoch_images=32)
    result = train.train_whole(recipe, synthetic_ham(tmp_path / "ham"), paths.IMAGENET_WEIGHTS, tmp_path / "run", [out])

    assert result["extra_data"] == [{"folder": str(out), "images": 12}]
    assert result["images"]["train"] == 7 * 8 + 12
    (epoch,) = result["history"]
    assert epoch["train_loss"] > 0 and epoch["val_loss"] > 0
