"""Choose the served operating point of a trained model again, on val: ``python -m ml.calibrate``.

Undoes the logit adjustment and temperature folded into the model's last layer, chooses them again with
the current rule (``ml.train.set_operating_point``) on the val part, folds them back, and rewrites the
Keras file, the TFLite file and the JSON (whose version changes with the file). Training is not repeated.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from . import data, paths  # noqa: E402
from .labels import CLASSES  # noqa: E402
from .model import unfold_output_adjustment  # noqa: E402
from .preprocess import preprocess  # noqa: E402
from .train import Recipe, save, set_operating_point  # noqa: E402

log = logging.getLogger("ml.calibrate")


def recalibrate(model_file: Path, data_dir: Path) -> dict:
    meta = json.loads(model_file.with_suffix(".json").read_text())
    model = keras.models.load_model(model_file)
    frame = data.load_dataset(data_dir)
    val = data.part(frame, "val")
    y_train = data.part(frame, "train")["label"].to_numpy()
    size = tuple(meta["input_size"])
    probs = model.predict(np.stack([preprocess(p, size) for p in val["path"]]), batch_size=64, verbose=0)

    temperature = float(meta.get("temperature", 1.0))
    bias = np.asarray(meta.get("logit_adjustment", {}).get("bias", np.zeros(len(CLASSES))))
    unfold_output_adjustment(model, bias, temperature)
    logits = temperature * np.log(np.clip(probs, 1e-12, None)) - bias  # raw logits, up to a constant per row

    known = {f.name for f in fields(Recipe)}
    recipe_fields = {k: (tuple(v) if k == "input_size" else v) for k, v in meta["recipe"].items() if k in known}
    recipe = Recipe(**recipe_fields)
    prior = np.maximum(np.bincount(y_train, minlength=len(CLASSES)), 1) / len(y_train)
    result = {k: v for k, v in meta.items() if k not in ("logit_adjustment", "val_before_calibration", "val")}
    result.update(set_operating_point(model, val["label"].to_numpy(), logits, prior, recipe))
    result["recipe"] = {**meta["recipe"], "min_val_melanoma_recall": recipe.min_val_melanoma_recall}
    result["recalibrated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return save(model, model_file.parent, model_file.stem, result)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=paths.SHIPPED_MODEL.with_suffix(".keras"))
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = recalibrate(args.model, args.data_dir)
    v = result["val"]
    print(
        f"{result['version']}: val accuracy {v['accuracy']:.4f}, balanced accuracy {v['balanced_accuracy']:.4f}, "
        f"melanoma recall {v['melanoma_recall']:.4f}"
    )


if __name__ == "__main__":
    main()
