"""Compare served models on val: ``python -m ml.compare NAME=MODEL.tflite ... [--repeats 100] [--out FILE]``.

A model's recorded val figures are measured on the images its operating point was chosen on: the best of
about a thousand points (``ml.metrics.choose_operating_point``), so they flatter it, by however much val
happens to favour one point. To choose between models (a larger ensemble against the shipped one, say),
this estimates what the rule gives on images it did not see, from val alone: val is cut in two halves by
lesion, many times over; the rule picks a point on one half and the other half judges it, both ways round.
The test part is never read.

Per model it prints and stores: the recorded figures at its point, the raw macro AUC (the point undone),
and the mean and spread over the judged halves of accuracy, balanced accuracy, their sum (the rule's own
objective) and melanoma recall.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from . import data, paths
from .calibrate import val_part
from .inference import LiteModel, model_metadata, predict_views, served_views
from .metrics import MEL, choose_operating_point, class_prior, operating_bias, point_figures, softmax, summary
from .quantize import raw_logits


def lesion_halves(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random half of the groups (lesions), as a mask over the images: a lesion's images stay together."""
    ids = np.unique(groups)
    rng.shuffle(ids)
    return np.isin(groups, ids[: len(ids) // 2])


def cross_validated_point(
    y: np.ndarray,
    logits: np.ndarray,
    prior: np.ndarray,
    groups: np.ndarray,
    min_melanoma_recall: float = 0.70,
    repeats: int = 100,
    seed: int = 0,
) -> dict:
    """The operating-point rule's figures on held-out halves of (``y``, raw ``logits``), split by ``groups``:
    per figure its mean and standard deviation over the ``2 * repeats`` judged halves."""
    rows = []
    for repeat in range(repeats):
        half = lesion_halves(groups, np.random.default_rng([seed, repeat]))
        for fit, judge in ((half, ~half), (~half, half)):
            tau, melanoma_bias, _ = choose_operating_point(y[fit], logits[fit], prior, min_melanoma_recall)
            rows.append(point_figures(y[judge], logits[judge], operating_bias(prior, tau, melanoma_bias)))
    return {
        key: {"mean": float(np.mean([r[key] for r in rows])), "sd": float(np.std([r[key] for r in rows]))}
        for key in rows[0]
    }


def judge(model_file: Path, data_dir: Path, repeats: int = 100) -> dict:
    """One served TFLite file (its JSON beside it) on val: recorded figures, raw AUCs and the held-out point."""
    meta = model_metadata(model_file)
    frame = data.load_dataset(data_dir)
    prior = class_prior(data.part(frame, "train")["label"].to_numpy())
    lesions = data.part(frame, "val")["lesion_id"].to_numpy()
    arrays, y = val_part(Path(data_dir), tuple(meta["input_size"]))
    probs = predict_views(LiteModel(model_file).in_batches, arrays, served_views(meta))
    logits = raw_logits(probs, meta)
    minimum = meta.get("recipe", {}).get("min_val_melanoma_recall", 0.70)
    raw = softmax(logits)
    return {
        "file": str(model_file),
        "version": meta.get("version"),
        "networks": len(meta.get("members", [])) or 1,
        "seeds": [m["recipe"]["seed"] for m in meta.get("members", [meta])],
        "backends": [m.get("backend") for m in meta.get("members", [meta])],  # None: not recorded (older files)
        "served_precision": meta.get("served_precision", meta.get("weights", "float32")),
        "recorded_val": {k: meta["val"][k] for k in ("accuracy", "balanced_accuracy", "macro_auc", "melanoma_recall")},
        "raw_macro_auc": summary(y, raw)["macro_auc"],
        "raw_melanoma_auc": float(roc_auc_score(y == MEL, raw[:, MEL])),
        "held_out_point": cross_validated_point(y, logits, prior, lesions, minimum, repeats),
        "repeats": repeats,
    }


def model_option(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=MODEL.tflite, got {text!r}")
    if not Path(path).exists():
        raise argparse.ArgumentTypeError(f"{path} does not exist")
    return name, Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.compare", description=__doc__.split("\n")[0])
    parser.add_argument("models", type=model_option, nargs="+", metavar="NAME=MODEL.tflite")
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR)
    parser.add_argument("--repeats", type=int, default=100, help="random halvings of val (each judged both ways)")
    parser.add_argument(
        "--out", type=Path, help="write the comparison here as JSON (models of other names already there are kept)"
    )
    args = parser.parse_args(argv)
    result = {}
    for name, model_file in args.models:
        row = result[name] = judge(model_file, args.data_dir, args.repeats)
        held, rec = row["held_out_point"], row["recorded_val"]
        print(
            f"{name} ({row['networks']} network(s), {row['version']}): recorded at its point accuracy "
            f"{rec['accuracy']:.4f} + balanced {rec['balanced_accuracy']:.4f}; raw macro AUC {row['raw_macro_auc']:.4f}; "
            f"held-out halves: accuracy {held['accuracy']['mean']:.4f}, balanced {held['balanced_accuracy']['mean']:.4f}, "
            f"sum {held['accuracy_plus_balanced']['mean']:.4f} (sd {held['accuracy_plus_balanced']['sd']:.4f}), "
            f"melanoma recall {held['melanoma_recall']['mean']:.4f}",
            flush=True,
        )
    if args.out:
        earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
        args.out.write_text(json.dumps({**earlier, **result}, indent=2))


if __name__ == "__main__":
    main()
