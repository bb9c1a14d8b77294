"""The quality gate (ml.serve.quality_gate): real lesion images pass; blanks, documents, a cat and blurred images do not."""

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ml.serve import paths
from ml.serve.preprocess import load_image
from ml.serve.quality_gate import GATE_FILE_NAME, MESSAGES, QualityGate, image_stats, stored_version
from ml.train import data

needs_data = pytest.mark.skipif(
    not (paths.DATA_DIR / "split.csv").exists(), reason=f"HAM10000 is not at {paths.DATA_DIR} (../shared absent)"
)
GATE_FILE = paths.MODELS_DIR / GATE_FILE_NAME


@pytest.fixture(scope="module")
def gate() -> QualityGate:
    return QualityGate.load(GATE_FILE)


def flags(explainer, image) -> list[str]:
    return explainer.explain(image, 0).quality_flags


def document() -> Image.Image:
    page = Image.new("RGB", (620, 877), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=16)
    for row in range(40):
        draw.text(
            (40, 40 + 20 * row), "Referral letter: patient seen in clinic, please review the lesion.", "black", font
        )
    return page


def ham_test_images(n: int) -> list[str]:
    """The first n test images by id: chosen without looking at the gate."""
    return data.part(data.load_dataset(paths.DATA_DIR), "test")["path"].iloc[:n].tolist()


def test_the_gate_file_belongs_to_the_shipped_model_and_is_small():
    meta = json.loads(paths.SHIPPED_MODEL.with_suffix(".json").read_text())
    assert stored_version(GATE_FILE) == meta["version"]
    assert GATE_FILE.stat().st_size < 2 * 1024 * 1024


def test_the_thresholds_are_ordered(gate):
    assert 0 < gate.min_brightness < gate.max_brightness < 1
    assert 0 < gate.min_sharpness < gate.max_sharpness
    assert gate.max_distance > 0 and gate.components.shape[1] == gate.feature_mean.shape[0] == 1280


def test_every_reason_reads_as_a_sentence():
    for message in MESSAGES.values():
        assert message[0].isupper() and message.endswith(".") and len(message) < 100


@pytest.mark.parametrize(
    "image, reason",
    [
        (Image.new("RGB", (640, 480), "white"), "uniform"),
        (Image.new("RGB", (640, 480), "black"), "uniform"),
        (Image.new("RGB", (60, 45), (200, 150, 130)), "too_small"),
        (Image.new("RGB", (640, 480), (20, 20, 20)), "too_dark"),
    ],
    ids=["white", "black", "tiny", "dark"],
)
def test_cheap_checks_catch_blank_tiny_and_dark_frames(gate, image, reason):
    assert reason in gate.image_reasons(image_stats(image))


@needs_data
def test_cheap_checks_catch_blur_and_missing_colour_on_a_real_lesion(gate):
    lesion = load_image(ham_test_images(1)[0])
    assert gate.image_reasons(image_stats(lesion)) == []
    assert "blurred" in gate.image_reasons(image_stats(lesion.filter(ImageFilter.GaussianBlur(5))))
    assert "no_colour" in gate.image_reasons(image_stats(lesion.convert("L").convert("RGB")))


@needs_data
def test_real_ham10000_test_images_pass(explainer):
    results = {path: flags(explainer, path) for path in ham_test_images(6)}
    assert all(not f for f in results.values()), results


@pytest.mark.parametrize(
    "name, make",
    [
        ("blank", lambda: Image.new("RGB", (640, 480), (245, 245, 245))),
        ("black frame", lambda: Image.new("RGB", (640, 480), (0, 0, 0))),
        ("text document", document),
    ],
)
def test_blank_frames_and_documents_are_flagged(explainer, name, make):
    assert flags(explainer, make()), name


def test_a_document_is_called_unfamiliar_by_the_feature_check(explainer):
    assert MESSAGES["unfamiliar"] in flags(explainer, document())


def test_skimages_cat_is_flagged(explainer):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    assert MESSAGES["unfamiliar"] in flags(explainer, Image.fromarray(skimage_data.chelsea()))


@needs_data
def test_a_heavily_blurred_lesion_is_flagged_as_blurred(explainer):
    lesion = load_image(ham_test_images(1)[0]).filter(ImageFilter.GaussianBlur(5))
    assert MESSAGES["blurred"] in flags(explainer, lesion)


def test_the_model_card_reports_the_gate():
    metrics = json.loads((paths.MODELS_DIR / "metrics.json").read_text())
    section = metrics["quality_gate"]
    assert section["model_version"] == metrics["model_version"]
    assert 0 <= section["ham_test"]["flagged_rate"] < 0.05
    assert "Quality gate" in (paths.MODELS_DIR / "MODEL_CARD.md").read_text()
    assert np.isfinite(section["non_dermoscopic_flagged_rate"])
