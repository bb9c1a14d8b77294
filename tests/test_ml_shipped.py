"""The shipped model itself (ml/models/), on real HAM10000 images from ../shared when they are there."""

import json

import numpy as np
import pytest

from ml.serve import paths
from ml.serve.inference import Classifier, model_metadata
from ml.serve.labels import CLASSES
from ml.train import data

needs_data = pytest.mark.skipif(
    not (paths.DATA_DIR / "split.csv").exists(), reason=f"HAM10000 is not at {paths.DATA_DIR} (../shared absent)"
)


@pytest.fixture(scope="module")
def classifier():
    return Classifier(paths.SHIPPED_MODEL)


def test_the_shipped_model_files_match_their_recorded_hashes():
    import hashlib

    meta = model_metadata(paths.SHIPPED_MODEL)
    for name, digest in meta["files"].items():
        assert hashlib.sha256((paths.MODELS_DIR / name).read_bytes()).hexdigest() == digest, name
    assert meta["version"].endswith(meta["files"]["skinsite.tflite"][:8])


def test_the_model_card_belongs_to_the_shipped_version():
    meta = model_metadata(paths.SHIPPED_MODEL)
    card = json.loads((paths.MODELS_DIR / "metrics.json").read_text())
    assert card["model_version"] == meta["version"]
    assert card["test"]["n"] == 1995
    assert (paths.MODELS_DIR / "MODEL_CARD.md").read_text().count(meta["version"]) >= 1


def held_out_handful(per_class: int = 4):
    """A fixed handful from the val part: the first images by id of every class (chosen without the model)."""
    val = data.part(data.load_dataset(paths.DATA_DIR), "val")
    return val.groupby("dx", group_keys=False).head(per_class)


@needs_data
def test_the_shipped_model_loads_and_its_probabilities_sum_to_one(classifier):
    rows = held_out_handful(1)
    for path in rows["path"]:
        prediction = classifier.predict(path)
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.model_version == classifier.version


@needs_data
def test_the_shipped_model_gets_most_of_a_fixed_handful_right(classifier):
    rows = held_out_handful(4)
    predicted = [classifier.predict(p).predicted_class for p in rows["path"]]
    right = np.mean(np.asarray(predicted) == rows["dx"].to_numpy())
    assert right >= 0.6, f"{right:.0%} of {len(rows)} held-out images right: {list(zip(rows['dx'], predicted))}"
    assert len(set(predicted)) >= 4  # not one answer for everything (a preprocessing mismatch would do that)


@needs_data
def test_the_served_probabilities_match_the_keras_model(classifier):
    keras = pytest.importorskip("keras")
    from ml.serve.preprocess import preprocess

    meta = model_metadata(paths.SHIPPED_MODEL)
    net = keras.models.load_model(paths.SHIPPED_MODEL.with_suffix(".keras"))
    rows = held_out_handful(4)
    batch = np.stack([preprocess(p, classifier.input_size) for p in rows["path"]])
    served, in_float = classifier.predict_arrays(batch), net.predict(batch, verbose=0)
    if meta.get("served_precision") == "int8":
        # The served file computes its convolutions in 8 bits, the Keras twin (Grad-CAM, the gate's features) in
        # float: the same model up to rounding. Measured on all of val for the shipped file: the same answer on
        # 95.8% of images, probabilities 0.014 apart on average (on this handful: 100%, 0.021).
        assert np.mean(served.argmax(1) == in_float.argmax(1)) >= 0.85
        assert np.abs(served - in_float).mean() < 0.04
    else:
        # Both files hold the same float16 weights, but the TFLite converter folds batch norm into the
        # convolutions before rounding them (ml/train/export.py): measured on 128 val images, at most 4.5e-4 apart.
        np.testing.assert_allclose(served, in_float, atol=1e-3)
    assert len(set(rows["dx"])) == len(CLASSES)


@needs_data
def test_the_val_figures_in_the_models_json_are_the_served_files_own(classifier):
    from ml.serve.preprocess import preprocess
    from ml.train.metrics import summary

    meta = model_metadata(paths.SHIPPED_MODEL)
    val = data.part(data.load_dataset(paths.DATA_DIR), "val")
    arrays = np.stack([preprocess(p, classifier.input_size) for p in val["path"]])
    probs = np.concatenate([classifier.predict_arrays(arrays[s : s + 64]) for s in range(0, len(arrays), 64)])
    figures = summary(val["label"].to_numpy(), probs)
    assert figures["n"] == meta["images"]["val"]
    # An int8 model's figures are measured from the file itself (ml.train.calibrate.save_served): allow one image that
    # another CPU or batch size tips the other way. A float one's come from its Keras twin, up to 4.5e-4 apart
    # in probability, where a few near ties may go the other way.
    images = 1 if meta.get("served_precision") == "int8" else 2
    y = val["label"].to_numpy()
    one_image = {
        "accuracy": 1 / len(y),
        "balanced_accuracy": 1 / (len(CLASSES) * np.bincount(y).min()),
        "melanoma_recall": 1 / np.sum(y == CLASSES.index("mel")),
    }
    for key, step in one_image.items():
        assert figures[key] == pytest.approx(meta["val"][key], abs=images * step + 1e-9), key
    assert figures["macro_auc"] == pytest.approx(meta["val"]["macro_auc"], abs=1e-3)
