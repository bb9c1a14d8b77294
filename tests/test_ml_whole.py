"""Whole-network training from the pixels (``ml.train --recipe whole``), on generated images and a tiny network:
the loop learns, a stopped run resumes to the same weights, and extra training folders reach train only."""

import csv
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.serve.labels import CLASSES

pytest.importorskip("tensorflow")

pytestmark = pytest.mark.training

from ml.serve import paths  # noqa: E402

if not paths.IMAGENET_WEIGHTS.exists():
    pytest.skip(f"needs the ImageNet weights at {paths.IMAGENET_WEIGHTS}", allow_module_level=True)

from .test_ml_pipeline import COLOURS, synthetic_ham  # noqa: E402


def synthetic_extra(root: Path, per_class: int = 6, dxs=("mel", "nv", "bkl")) -> Path:
    """A folder in the isic_archive layout: metadata.csv and images/, drawn as synthetic_ham draws its classes."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = []
    for dx in dxs:
        label = CLASSES.index(dx)
        for k in range(per_class):
            pixels = rng.integers(150, 200, (150, 200, 3)).astype(np.uint8)
            cy, cx = 40 + 10 * (label % 3), 50 + 15 * label
            pixels[cy - 25 : cy + 25, cx - 25 : cx + 25] = COLOURS[label]
            image_id = f"ISIC_9{label}{k:05d}"
            Image.fromarray(pixels).save(root / "images" / f"{image_id}.jpg", quality=92)
            rows.append((image_id, f"IL_{label}{k:05d}" if k % 2 else image_id, dx, 45, "female", "back"))
    with open(root / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image_id", "lesion_id", "dx", "age", "sex", "localization"), *rows])
    return root


def tiny_recipe(**changes):
    from ml.train.fit import RECIPES

    tiny = dict(
        input_size=(64, 64),  # MobileNetV2 with its ImageNet weights, on small inputs: a randomly initialised
        # network's activations die out before the head while its batch norm is frozen, and frozen it is here
        units=16,
        epochs=5,
        head_only_epochs=1,
        head_learning_rate=1e-2,
        learning_rate=2e-4,  # 1e-3 made the first whole-network epoch diverge (loss 2.2 to 3.2)
        warmup_epochs=1,  # without it the first whole-network epoch undid most of what the head had learnt
        batch_size=8,
        epoch_images=96,
        label_smoothing=0.0,
        dropout=0.3,
        average_from=3,
    )
    return replace(RECIPES["whole"], **{**tiny, **changes})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    return {"ham": synthetic_ham(root / "ham"), "extra": synthetic_extra(root / "isic_archive"), "root": root}


@pytest.fixture(scope="module")
def whole_run(folders):
    from ml.train.fit import train_whole

    out = folders["root"] / "run"
    result = train_whole(tiny_recipe(), folders["ham"], paths.IMAGENET_WEIGHTS, out, [folders["extra"]])
    return {"result": result, "out": out}


def checkpoint_variables(out: Path) -> list[np.ndarray]:
    with open(out / "checkpoint.pkl", "rb") as f:
        return pickle.load(f)["variables"]


def test_whole_network_training_lowers_the_loss_and_trains_every_block(whole_run):
    from ml.train import model as ml_model

    result = whole_run["result"]
    history = result["history"]
    assert [row["phase"] for row in history] == ["head", "whole", "whole", "whole", "whole"]
    assert min(row["train_loss"] for row in history[1:]) < history[0]["train_loss"] * 0.8
    assert min(row["val_loss"] for row in history) < np.log(len(CLASSES)) - 0.2  # better than a uniform guess
    assert all(row["images_per_second"] > 0 and "seconds_left" in row for row in history)
    assert history[-1]["seconds_left"] == 0
    # The first convolution moved away from its ImageNet weights: every block trained, not only the head.
    start = ml_model.build_classifier(paths.IMAGENET_WEIGHTS, (64, 64), 16).get_layer("Conv1").get_weights()[0]
    trained = ml_model.load(whole_run["out"] / "whole.keras").get_layer("Conv1").get_weights()[0]
    assert np.abs(trained - start).max() > 1e-3
    assert result["recipe"]["cut"] is None and result["machine"]["cores"] >= 1


@pytest.fixture
def no_export(monkeypatch):
    """A run's last step, writing its files (ml.train.fit.save: the Keras file, its TFLite export and the workers'
    companion, 23 s of the 48 s a run takes here), left out where a test compares checkpoints and histories:
    ``whole_run`` writes them, and the other tests read them back."""
    from ml.train import fit

    monkeypatch.setattr(fit, "save", lambda model, out, name, result, *args, **kwargs: result)


def test_a_run_stopped_after_epoch_1_and_resumed_ends_with_the_uninterrupted_runs_weights(
    folders, whole_run, no_export
):
    from ml.train import checkpoint
    from ml.train.fit import train_whole

    out = folders["root"] / "resumed"
    assert (
        train_whole(tiny_recipe(), folders["ham"], paths.IMAGENET_WEIGHTS, out, [folders["extra"]], stop_after=1)
        is None
    )
    assert not (out / "whole.keras").exists()
    state = checkpoint.read(out)
    assert state["epoch"] == 1 and state["phase"] == "head"
    result = train_whole(tiny_recipe(), folders["ham"], paths.IMAGENET_WEIGHTS, out, [folders["extra"]], resume=state)

    for resumed, uninterrupted in zip(checkpoint_variables(out), checkpoint_variables(whole_run["out"]), strict=True):
        np.testing.assert_allclose(resumed, uninterrupted, rtol=1e-5, atol=1e-6)
    for a, b in zip(result["history"], whole_run["result"]["history"], strict=True):
        assert a["epoch"] == b["epoch"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert result["kept_epoch"] == whole_run["result"]["kept_epoch"]


def test_a_run_resumed_mid_whole_phase_keeps_the_optimizer_state(folders, whole_run, no_export):
    from ml.train import checkpoint
    from ml.train.fit import train_whole

    out = folders["root"] / "resumed_later"
    train_whole(tiny_recipe(), folders["ham"], paths.IMAGENET_WEIGHTS, out, [folders["extra"]], stop_after=2)
    state = checkpoint.read(out)
    assert state["phase"] == "whole" and int(state["optimizer"][0]) > 0  # Adam's step count
    train_whole(tiny_recipe(), folders["ham"], paths.IMAGENET_WEIGHTS, out, [folders["extra"]], resume=state)
    for resumed, uninterrupted in zip(checkpoint_variables(out), checkpoint_variables(whole_run["out"]), strict=True):
        np.testing.assert_allclose(resumed, uninterrupted, rtol=1e-5, atol=1e-6)


def test_resume_of_a_folder_without_a_checkpoint_is_refused_with_a_clear_message(tmp_path, capsys):
    from ml.train.fit import main

    with pytest.raises(SystemExit):
        main(["--resume", str(tmp_path / "no_run")])
    assert "holds no checkpoint.pkl: nothing to resume" in capsys.readouterr().err


def test_the_saved_keras_file_holds_no_optimizer_state(whole_run):
    import zipfile

    import h5py

    with zipfile.ZipFile(whole_run["out"] / "whole.keras") as archive:
        archive.extract("model.weights.h5", whole_run["out"] / "unpacked")
    with h5py.File(whole_run["out"] / "unpacked" / "model.weights.h5") as weights:
        assert "optimizer" not in weights


def test_extra_images_reach_the_train_part_only(folders, whole_run):
    from ml.train import data

    frame = data.with_extra(data.load_dataset(folders["ham"]), [folders["extra"]])
    extra = frame[frame["source"] == "isic_archive"]
    assert len(extra) == 18 and set(extra["split"]) == {"train"}
    ham = data.load_dataset(folders["ham"])
    for part in ("val", "test"):
        assert data.part(frame, part)["image_id"].tolist() == data.part(ham, part)["image_id"].tolist()
    result = whole_run["result"]
    assert result["images"] == {"train": 56 + 18, "val": 21, "test": 21}
    assert result["extra_data"] == [{"folder": str(folders["extra"]), "images": 18}]


def test_an_extra_folder_sharing_an_image_or_lesion_with_the_data_is_refused(folders, tmp_path):
    from ml.train import data

    copy = synthetic_extra(tmp_path / "again")
    with pytest.raises(ValueError, match="shares 18 image_ids"):
        data.with_extra(data.load_dataset(folders["ham"]), [folders["extra"], copy])
    ham = data.load_dataset(folders["ham"])
    lesion = ham.loc[ham["split"] == "test", "lesion_id"].iloc[0]
    header, first, *rest = (tmp_path / "again" / "metadata.csv").read_text().splitlines()
    fields = first.split(",")
    fields[1] = lesion  # one extra image of a test lesion
    rows = [header, ",".join(fields), *rest]
    (tmp_path / "again" / "metadata.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="shares 1 lesion_ids"):
        data.with_extra(ham, [tmp_path / "again"])


def test_an_extra_folder_without_metadata_is_refused_with_a_clear_message(folders, tmp_path, capsys):
    from ml.train import data
    from ml.train.fit import main

    (tmp_path / "bare" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no metadata.csv"):
        data.load_extra(tmp_path / "bare")
    with pytest.raises(SystemExit):
        main(
            [
                "--recipe",
                "whole",
                "--data-dir",
                str(folders["ham"]),
                "--weights",
                str(folders["ham"] / "split.csv"),
                "--extra-data",
                str(tmp_path / "bare"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
    assert "has no metadata.csv" in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoint.pkl").exists()


def test_an_extra_folder_with_a_missing_image_or_unknown_class_is_refused(folders, tmp_path):
    from ml.train import data

    broken = synthetic_extra(tmp_path / "broken")
    next((broken / "images").iterdir()).unlink()
    with pytest.raises(FileNotFoundError, match="1 images of .* are missing"):
        data.load_extra(broken)
    odd = synthetic_extra(tmp_path / "odd", dxs=("mel",))
    (odd / "metadata.csv").write_text((odd / "metadata.csv").read_text().replace(",mel,", ",melanoma,"))
    with pytest.raises(ValueError, match="unknown classes"):
        data.load_extra(odd)


def test_extra_data_is_refused_for_the_cached_recipes(folders, capsys):
    from ml.train.fit import main

    with pytest.raises(SystemExit):
        main(
            [
                "--data-dir",
                str(folders["ham"]),
                "--weights",
                str(folders["ham"] / "split.csv"),
                "--extra-data",
                str(folders["extra"]),
                "--out",
                str(folders["root"] / "never"),
            ]
        )
    assert "whole-network recipes" in capsys.readouterr().err


def test_sampling_draws_the_classes_in_the_intended_balance():
    from ml.train import stream

    labels = np.repeat(np.arange(7), [10, 20, 40, 5, 80, 600, 5])
    shares = stream.class_shares(labels, 0.5)
    counts = np.bincount(labels)
    np.testing.assert_allclose(shares, np.sqrt(counts) / np.sqrt(counts).sum())
    drawn = np.bincount(labels[stream.epoch_draw(labels, 20000, 0.5, seed=0, epoch=1)], minlength=7) / 20000
    np.testing.assert_allclose(drawn, shares, atol=0.01)
    np.testing.assert_allclose(stream.class_shares(labels, 1.0), np.full(7, 1 / 7))
    # Power 0 and no count: every image once, in an order fixed by (seed, epoch) and new each epoch.
    once = stream.epoch_draw(labels, None, 0.0, seed=0, epoch=1)
    assert sorted(once) == list(range(len(labels)))
    assert np.array_equal(once, stream.epoch_draw(labels, None, 0.0, seed=0, epoch=1))
    assert not np.array_equal(once, stream.epoch_draw(labels, None, 0.0, seed=0, epoch=2))


def test_every_epoch_augments_each_image_anew_but_reproducibly():
    from ml.train import stream

    pixels = np.random.default_rng(0).integers(0, 255, (150, 200, 3)).astype(np.uint8)
    images, order = [pixels, pixels[::-1].copy()], np.array([0, 1, 0, 1, 0])
    first = list(stream.batches(images, order, 2, (64, 96), "frame", seed=3, epoch=1))
    assert [x.shape for x, _ in first] == [(2, 64, 96, 3), (2, 64, 96, 3), (1, 64, 96, 3)]
    assert [idx.tolist() for _, idx in first] == [[0, 1], [0, 1], [0]]
    again = list(stream.batches(images, order, 2, (64, 96), "frame", seed=3, epoch=1, threads=1))
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, again, strict=True))
    later = list(stream.batches(images, order, 2, (64, 96), "frame", seed=3, epoch=2))
    assert not np.allclose(first[0][0], later[0][0])
    assert not np.allclose(first[0][0][0], first[1][0][0])  # the same image twice in an epoch: two draws
    assert first[0][0].min() >= -1.0 and first[0][0].max() <= 1.0
