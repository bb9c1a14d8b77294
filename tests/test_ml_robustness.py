"""ml.study.robustness: the acquisition changes, and their figures in metrics.json and the model card."""

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sklearn")


def lesion_picture() -> Image.Image:
    rng = np.random.default_rng(0)
    pixels = rng.integers(120, 220, (150, 200, 3)).astype(np.uint8)
    pixels[50:100, 70:130] = (90, 50, 40)
    return Image.fromarray(pixels)


def test_every_change_but_the_first_changes_the_picture_and_keeps_it_an_rgb_image():
    from ml.study.robustness import CHANGES

    image = lesion_picture()
    before = np.asarray(image).copy()
    names = list(CHANGES)
    assert names[0] == "unchanged" and CHANGES["unchanged"](image) is image
    for name in names[1:]:
        changed = CHANGES[name](image)
        assert changed.mode == "RGB", name
        np.testing.assert_array_equal(np.asarray(image), before)  # the original is left as it was
        if changed.size == image.size:
            assert np.abs(np.asarray(changed, float) - before).mean() > 0.5, name
    assert CHANGES["enlarged to 600x450 (the originals' size)"](image).size == (600, 450)
    assert CHANGES["rotated 90 degrees (portrait)"](image).size == (150, 200)
    np.testing.assert_array_equal(np.asarray(CHANGES["mirrored"](image)), before[:, ::-1])


def test_light_of_another_colour_scales_the_channels_and_stays_in_range():
    from ml.train.augment import channel_gains

    pixels = np.array([[[100, 100, 100], [250, 10, 250]]], np.uint8)
    warmer = np.asarray(channel_gains(Image.fromarray(pixels), (1.1, 1.0, 0.9)))
    np.testing.assert_array_equal(warmer, [[[110, 100, 90], [255, 10, 225]]])


def robustness_section():
    rows = [
        {"change": "unchanged", "accuracy": 0.79, "balanced_accuracy": 0.69, "macro_auc": 0.946,
         "melanoma_recall": 0.577, "answers_changed": 0.0},
        {"change": "JPEG quality 40", "accuracy": 0.778, "balanced_accuracy": 0.652, "macro_auc": 0.929,
         "melanoma_recall": 0.455, "answers_changed": 0.128},
    ]  # fmt: skip
    return {"model_version": "v1", "part": "test", "n": 1995, "changes": rows}


def test_the_card_shows_each_change_with_its_figures():
    from ml.study.card import safety_sections

    lines = safety_sections({"robustness": robustness_section()})
    text = "\n".join(lines)
    assert "## Robustness to acquisition changes" in text and "all 1995 images" in text
    assert "| unchanged | 0.790 | 0.690 | 0.946 | 0.577 | 0.0% |" in lines
    assert "| JPEG quality 40 | 0.778 | 0.652 | 0.929 | 0.455 | 12.8% |" in lines
    assert (
        "Macro AUC moves by at most 0.017 from the unchanged images'; melanoma recall ranges from 0.455 (JPEG quality "
        "40) to 0.455 (JPEG quality 40) against 0.577; up to 12.8% of the answers change (JPEG quality 40)." in lines
    )
    assert not any("Robustness" in line for line in safety_sections({}))


def test_recording_a_section_keeps_the_cards_val_comparison(tmp_path, monkeypatch):
    """A section recorded on its own renders the card again with everything ml.evaluate gave it."""
    from ml.study import card

    (tmp_path / "skinsite.tflite").write_bytes(b"")
    (tmp_path / "skinsite.json").write_text(json.dumps({"version": "v1"}))
    (tmp_path / "metrics.json").write_text(json.dumps({"model_version": "v1", "test": {}}))
    comparison = {"shipped": {"version": "v1"}}
    (tmp_path / "val_comparison.json").write_text(json.dumps(comparison))
    rendered = []
    monkeypatch.setattr(card, "model_card", lambda meta, metrics, comp=None: rendered.append(comp) or "card")

    card.update_metrics(tmp_path, "robustness", robustness_section())
    assert rendered == [comparison]
    assert json.loads((tmp_path / "metrics.json").read_text())["robustness"] == robustness_section()
    assert (tmp_path / "MODEL_CARD.md").read_text() == "card"
    with pytest.raises(ValueError, match="not for v1"):
        card.update_metrics(tmp_path, "robustness", dict(robustness_section(), model_version="v2"))


class DarkIsMelanoma:
    """Stands in for the served model: melanoma for a dark picture, nevus otherwise."""

    input_size = (32, 32)
    version = "v-dark"

    def __init__(self, model_path):
        self.model_path = model_path

    def predict_arrays(self, batch):
        from ml.serve.labels import CLASSES

        dark = batch.reshape(len(batch), -1).mean(axis=1) < -0.5
        return np.eye(len(CLASSES), dtype=np.float32)[np.where(dark, CLASSES.index("mel"), CLASSES.index("nv"))]


def test_each_change_is_applied_to_every_test_image_and_judged_against_the_unchanged_answers(tmp_path, monkeypatch):
    from ml.study import robustness

    from .test_ml_pipeline import synthetic_ham

    data_dir = synthetic_ham(tmp_path / "ham")  # 3 test images per class, light pictures
    monkeypatch.setattr(robustness, "Classifier", DarkIsMelanoma)
    monkeypatch.setitem(robustness.CHANGES, "black", lambda image: Image.new("RGB", image.size))
    result = robustness.measure(tmp_path / "model.tflite", data_dir, chunk=4)
    rows = {r["change"]: r for r in result["changes"]}
    assert result["n"] == 21 and result["model_version"] == "v-dark"
    assert rows["unchanged"]["accuracy"] == pytest.approx(3 / 21)  # every answer nv: the three nevi are right
    assert rows["unchanged"]["melanoma_recall"] == 0.0
    assert rows["black"]["answers_changed"] == 1.0 and rows["black"]["melanoma_recall"] == 1.0
    assert rows["darker (x0.8)"]["answers_changed"] == 0.0  # still light enough
