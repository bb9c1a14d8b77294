"""Choose the served operating point of a trained model again, on val: ``python -m ml.train.calibrate``.

Undoes the logit adjustment and temperature folded into the model's last layer, chooses them again with
the current rule (``ml.train.fit.set_operating_point``) on the val part, folds them back, and rewrites the
Keras file, the TFLite file and the JSON (whose version changes with the file). Training is not repeated.
``--views`` serves the model over test-time views (mirror images, ``ml.serve.inference.VIEWS``) from now on;
the operating point is then chosen on the views' averaged predictions, as they will be served. A model whose
recipe says ``int8`` is served from an int8 TFLite file (``ml.train.ensemble --int8``): its point is chosen on that
file's outputs, and the file is written again.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import tempfile
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ml.serve import paths  # noqa: E402
from ml.serve.inference import ORIGINAL_ONLY, VIEWS, LiteModel, predict_views, served_views  # noqa: E402
from ml.serve.labels import CLASSES  # noqa: E402
from ml.serve.preprocess import preprocess  # noqa: E402
from ml.train import data  # noqa: E402
from ml.train.export import check_arrays, to_int8_tflite  # noqa: E402
from ml.train.fit import Recipe, save, set_operating_point  # noqa: E402
from ml.train.metrics import class_prior, summary  # noqa: E402
from ml.train.model import load, unfold_output_adjustment  # noqa: E402

log = logging.getLogger("ml.train.calibrate")


def views_option(text: str) -> list[str]:
    """``--views original,mirrored``: test-time views by name (``ml.serve.inference.VIEWS``)."""
    views = [v.strip() for v in text.split(",") if v.strip()]
    if not views or set(views) - set(VIEWS):
        raise argparse.ArgumentTypeError(f"views are some of {', '.join(VIEWS)}, comma-separated")
    return views


def int8_calibration(recipe: dict, data_dir: Path) -> list[np.ndarray] | None:
    """The train arrays an int8-served model's convolutions are calibrated on; None where the recipe serves float."""
    if not recipe.get("int8"):
        return None
    chosen = data.calibration_paths(data.load_dataset(data_dir))
    return [preprocess(p, tuple(recipe["input_size"])) for p in chosen]


@functools.lru_cache(maxsize=1)
def val_part(data_dir: Path, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The val part's preprocessed arrays (read-only) and labels. Kept for the next call: an int8 build reads
    them to choose the point and again to measure the file it wrote."""
    val = data.part(data.load_dataset(data_dir), "val")
    arrays = np.stack([preprocess(p, input_size) for p in val["path"]])
    arrays.setflags(write=False)
    return arrays, val["label"].to_numpy()


def choose_on_val(model, recipe: dict, data_dir: Path, views=ORIGINAL_ONLY, calibration=None) -> dict:
    """Choose the operating point and temperature of ``model``, whose last layer gives raw logits, on the val
    part with the model served over test-time ``views`` (``ml.serve.inference.VIEWS``); fold both in, in place.

    ``calibration`` (train arrays): the model will be served as an int8 TFLite file, so the point is chosen on
    that file's val outputs, not the Keras model's (they differ on a few percent of answers)."""
    y_train = data.part(data.load_dataset(data_dir), "train")["label"].to_numpy()
    arrays, y_val = val_part(Path(data_dir), tuple(recipe["input_size"]))
    if calibration is None:
        probs = predict_views(lambda batch: model.predict(batch, batch_size=64, verbose=0), arrays, views)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            served = LiteModel(to_int8_tflite(model, Path(tmp) / "raw.tflite", calibration))
            probs = predict_views(served.in_batches, arrays, views)
    logits = np.log(np.clip(probs, 1e-12, None))  # raw logits, up to a constant per row

    known = {f.name for f in fields(Recipe)}
    chosen = Recipe(**{k: (tuple(v) if k == "input_size" else v) for k, v in recipe.items() if k in known})
    return {
        **set_operating_point(model, y_val, logits, class_prior(y_train), chosen),
        "views": list(views),
    }


def folded_adjustment(meta: dict) -> tuple[np.ndarray, float]:
    """The logit bias and temperature folded into a saved model's last layer, as its JSON records them."""
    return np.asarray(meta.get("logit_adjustment", {}).get("bias", np.zeros(len(CLASSES)))), float(
        meta.get("temperature", 1.0)
    )


def load_raw(keras_file: Path) -> tuple[keras.Model, dict]:
    """A saved model whose last layer gives raw logits again (its folded operating point undone), and its JSON."""
    meta = json.loads(keras_file.with_suffix(".json").read_text())
    model = load(keras_file)
    unfold_output_adjustment(model, *folded_adjustment(meta))
    return model, meta


def served_val_figures(tflite_file: Path, data_dir: Path, input_size, views, minimum: float | None = None) -> dict:
    """``{"val": ...}``: the figures of a TFLite file on the val part, over its test-time ``views``. Warns where
    the file's own melanoma recall is under ``minimum``, the rule's floor (a near tie may have moved)."""
    arrays, y_val = val_part(Path(data_dir), tuple(input_size))
    figures = summary(y_val, predict_views(LiteModel(tflite_file).in_batches, arrays, views))
    if minimum is not None and figures["melanoma_recall"] < minimum:
        log.warning("the written file's val melanoma recall %.4f is under %.2f", figures["melanoma_recall"], minimum)
    return {"val": figures}


def save_served(model, out: Path, name: str, result: dict, data_dir: Path, calibration=None) -> dict:
    """``ml.train.fit.save``, and for an int8 file, the JSON's val figures measured from the file written: the point
    was chosen on an int8 export made before the adjustment was folded in and the last layer rounded to float16,
    which may move an answer that was a near tie. (``val_before_calibration`` and the point's ``sweep`` stay
    those of that export.)"""
    measure = None
    if calibration is not None:
        measure = functools.partial(
            served_val_figures,
            data_dir=data_dir,
            input_size=result["recipe"]["input_size"],
            views=served_views(result),
            minimum=result["recipe"].get("min_val_melanoma_recall"),
        )
    half = result["recipe"].get("half_precision", False)
    explain_on = check_arrays(tuple(result["recipe"]["input_size"]), Path(data_dir))
    return save(model, out, name, result, half, calibration, measure, explain_on)


def recalibrate(model_file: Path, data_dir: Path, views: list[str] | None = None) -> dict:
    model, meta = load_raw(model_file)
    result = {k: v for k, v in meta.items() if k not in ("logit_adjustment", "val_before_calibration", "val")}
    calibration = int8_calibration(meta["recipe"], data_dir)
    result.update(choose_on_val(model, meta["recipe"], data_dir, views or served_views(meta), calibration))
    result["recalibrated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return save_served(model, model_file.parent, model_file.stem, result, data_dir, calibration)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.train.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=paths.SHIPPED_MODEL.with_suffix(".keras"))
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR)
    parser.add_argument("--views", type=views_option, help="test-time views, comma-separated (default: as before)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = recalibrate(args.model, args.data_dir, args.views)
    v = result["val"]
    print(
        f"{result['version']}: val accuracy {v['accuracy']:.4f}, balanced accuracy {v['balanced_accuracy']:.4f}, "
        f"melanoma recall {v['melanoma_recall']:.4f}"
    )


if __name__ == "__main__":
    main()
