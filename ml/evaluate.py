"""Evaluate a model on the test part and write its model card: ``python -m ml.evaluate``.

Predictions come from the same code as ``ml.predict`` (written to CSV and read back), so the card's numbers
are those of the served file, not of a training log. Writes, beside the model: ``metrics.json``,
``MODEL_CARD.md``, ``test_predictions.csv`` and PNG plots (confusion matrix, ROC curves, training curves).
The card's text is ml/study/card.py, its plots ml/study/plots.py, the figures by group ml/study/subgroups.py.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ml.predict import predict_files, write_csv
from ml.serve import paths
from ml.serve.inference import Classifier, model_metadata
from ml.serve.labels import CLASSES
from ml.study.card import kept_sections, model_card, val_comparison
from ml.study.plots import plot_confusion, plot_history, plot_roc
from ml.study.subgroups import subgroups
from ml.train import data
from ml.train.metrics import softmax, summary

log = logging.getLogger("ml.evaluate")


def predictions(model: Path, frame: pd.DataFrame, part: str, csv_out: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) for one split part, through ml.predict's CSV."""
    rows = data.part(frame, part)
    files, probs = predict_files([Path(p) for p in rows["path"]], Classifier(model))
    if len(files) != len(rows):
        raise RuntimeError(f"{len(rows) - len(files)} {part} images could not be read")
    write_csv(csv_out, files, probs)
    read = pd.read_csv(csv_out).set_index("image").loc[rows["image_id"]]
    return rows["label"].to_numpy(), read[list(CLASSES)].to_numpy()


def per_class_auc(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {c: float(roc_auc_score(y == i, probs[:, i])) for i, c in enumerate(CLASSES)}


def reference_rows(frame: pd.DataFrame, references: dict[str, Path], stored: Path) -> dict[str, dict]:
    """Table 1 rows of other models (``--reference NAME=TFLITE``), measured on the test part and kept in
    ``stored`` (like ``baselines.json``), so the card keeps them when the served model alone is evaluated again."""
    rows = json.loads(stored.read_text()) if stored.exists() else {}
    for name, ref in references.items():
        rows[name] = {
            **summary(*predictions(ref, frame, "test", ref.with_suffix(".test.csv"))),
            "model_version": model_metadata(ref)["version"],
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    if references:
        stored.write_text(json.dumps(rows, indent=2))
    return {f"MobileNetV2, {name} recipe": row for name, row in rows.items()}


def evaluate(model: Path, data_dir: Path, references: dict[str, Path], baselines: Path | None) -> dict:
    meta = model_metadata(model)
    out = model.parent
    frame = data.load_dataset(data_dir)
    y_test, p_test = predictions(model, frame, "test", out / "test_predictions.csv")
    y_val, p_val = predictions(model, frame, "val", out / "val_predictions.csv")
    t = float(meta.get("temperature", 1.0))
    uncalibrated = softmax(t * np.log(np.clip(p_test, 1e-12, None)))  # undo the folded temperature
    test = summary(y_test, p_test)
    table = {}
    if baselines and baselines.exists():
        names = {
            "always_nv": "always nv",
            "svm_frozen_features": "SVM on frozen MobileNetV2 features",
            "basic_cnn": "basic CNN from scratch (10 epochs, 75x56)",
        }
        table.update({names.get(k, k): v for k, v in json.loads(baselines.read_text()).items()})
    table.update(reference_rows(frame, references, out / "references.json"))
    table["MobileNetV2, ours (served)"] = test
    metrics = {
        "model_version": meta["version"],
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "test": test,
        "val": summary(y_val, p_val),
        "test_auc_per_class": per_class_auc(y_test, p_test),
        "ece_before_temperature": summary(y_test, uncalibrated)["ece"],
        "ece_after_temperature": test["ece"],
        "temperature": t,
        "table1": table,
        "subgroups": subgroups(data.part(frame, "test"), y_test, p_test),
    }
    metrics.update(kept_sections(out / "metrics.json", meta["version"]))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_confusion(test["confusion_matrix"], out / "confusion_matrix.png")
    plot_roc(y_test, p_test, metrics["test_auc_per_class"], out / "roc_curves.png")
    histories = [m["history"] for m in meta.get("members", [])] or [meta.get("history")]
    if all(histories):
        plot_history(histories, out / "training_curves.png")
    (out / "MODEL_CARD.md").write_text(model_card(meta, metrics, val_comparison(out)))
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=paths.SHIPPED_MODEL)
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR)
    parser.add_argument("--baselines", type=Path, default=paths.MODELS_DIR / "baselines.json")
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="NAME=TFLITE",
        help="another model to measure as a Table 1 row, e.g. paper=ml/runs/paper/paper.tflite (kept in "
        "references.json beside the model for later runs)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    references = dict((name, Path(path)) for name, path in (r.split("=", 1) for r in args.reference))
    metrics = evaluate(args.model, args.data_dir, references, args.baselines)
    t = metrics["test"]
    print(
        f"test: accuracy {t['accuracy']:.4f}, balanced accuracy {t['balanced_accuracy']:.4f}, macro AUC "
        f"{t['macro_auc']:.4f}, melanoma recall {t['melanoma_recall']:.4f}; card: {args.model.parent / 'MODEL_CARD.md'}"
    )


if __name__ == "__main__":
    main()
