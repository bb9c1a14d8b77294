"""Compare served models on val: ``python -m ml.study.compare NAME=MODEL.tflite ... [--repeats 100] [--out FILE]``.

A model's recorded val figures are measured on the images its operating point was chosen on: the best of
about a thousand points (``ml.train.metrics.choose_operating_point``), so they flatter it, by however much val
happens to favour one point. To choose between models (a larger ensemble against the shipped one, say),
this estimates what the rule gives on images it did not see, from val alone: val is cut in two halves by
lesion, many times over; the rule picks a point on one half and the other half judges it, both ways round.
The test part is never read.

Per model it prints and stores: the recorded figures at its point, the raw macro AUC (the point undone),
and the mean and spread over the judged halves of accuracy, balanced accuracy, their sum (the rule's own
objective) and melanoma recall. The halvings depend only on val's lesions and the repeat, so every model is
judged on the same halves: against the shipped model (the row of the shipped file's version, here or already in
``--out``; else the first model named), each other one gets the paired difference of the sum, half by half, and
the share of halves on which it did better. The halves overlap, so neither spread is a standard error: on this
val (987 images) a paired difference's spread was 0.037-0.045 in the sum, nearly as large as one model's own
(0.049-0.055), and mean differences of 0.01-0.035 against the shipped model are within it.

None of this undoes an earlier choice made on val: a model kept because val favoured it keeps that favour
on any halves of val, so a close call against it is no evidence either way.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from ml.serve import paths
from ml.serve.inference import LiteModel, model_metadata, predict_views, served_views
from ml.train import data
from ml.train.calibrate import val_part
from ml.train.metrics import MEL, choose_operating_point, class_prior, operating_bias, point_figures, softmax, summary
from ml.train.quantize import raw_logits


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
    rows = []  # one per judged half, in a fixed order: halving 0 both ways round, halving 1, ...
    for repeat in range(repeats):
        half = lesion_halves(groups, np.random.default_rng([seed, repeat]))
        for fit, judge in ((half, ~half), (~half, half)):
            tau, melanoma_bias, _ = choose_operating_point(y[fit], logits[fit], prior, min_melanoma_recall)
            rows.append(point_figures(y[judge], logits[judge], operating_bias(prior, tau, melanoma_bias)))
    figures = {
        key: {"mean": float(np.mean([r[key] for r in rows])), "sd": float(np.std([r[key] for r in rows]))}
        for key in rows[0]
    }
    figures["accuracy_plus_balanced"]["halves"] = [round(float(r["accuracy_plus_balanced"]), 6) for r in rows]
    return figures


def paired(row: dict, reference: dict) -> dict | None:
    """``row``'s held-out accuracy + balanced accuracy minus ``reference``'s on the same halves: the mean and
    spread of the difference and the share of halves ``row`` did better on. None where either has no per-half
    figures or they were judged on different halvings."""
    mine, theirs = (
        r.get("held_out_point", {}).get("accuracy_plus_balanced", {}).get("halves") for r in (row, reference)
    )
    if not mine or not theirs or len(mine) != len(theirs):
        return None
    difference = np.subtract(mine, theirs)
    return {
        "reference": reference["version"],
        "mean": float(difference.mean()),
        "sd": float(difference.std()),
        "better_share": float((difference > 0).mean()),
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
    parser = argparse.ArgumentParser(prog="python -m ml.study.compare", description=__doc__.split("\n")[0])
    parser.add_argument("models", type=model_option, nargs="+", metavar="NAME=MODEL.tflite")
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR)
    parser.add_argument("--repeats", type=int, default=100, help="random halvings of val (each judged both ways)")
    parser.add_argument(
        "--out", type=Path, help="write the comparison here as JSON (models of other names already there are kept)"
    )
    args = parser.parse_args(argv)
    result = {name: judge(model_file, args.data_dir, args.repeats) for name, model_file in args.models}
    earlier = json.loads(args.out.read_text()) if args.out and args.out.exists() else {}
    shipped_version = model_metadata(paths.SHIPPED_MODEL).get("version") if paths.SHIPPED_MODEL.exists() else None
    everything = {**earlier, **result}
    reference = next((row for row in everything.values() if row.get("version") == shipped_version), None)
    reference = reference or next(iter(result.values()))
    for row in everything.values():
        row.pop("paired_with_reference", None)
        if row is not reference and (pair := paired(row, reference)):
            row["paired_with_reference"] = pair
    for name, row in result.items():
        held, rec = row["held_out_point"], row["recorded_val"]
        line = (
            f"{name} ({row['networks']} network(s), {row['version']}): recorded at its point accuracy "
            f"{rec['accuracy']:.4f} + balanced {rec['balanced_accuracy']:.4f}; raw macro AUC {row['raw_macro_auc']:.4f}; "
            f"held-out halves: accuracy {held['accuracy']['mean']:.4f}, balanced {held['balanced_accuracy']['mean']:.4f}, "
            f"sum {held['accuracy_plus_balanced']['mean']:.4f} (sd {held['accuracy_plus_balanced']['sd']:.4f}), "
            f"melanoma recall {held['melanoma_recall']['mean']:.4f}"
        )
        if pair := row.get("paired_with_reference"):
            line += (
                f"; against {pair['reference']} on the same halves: {pair['mean']:+.4f} (sd {pair['sd']:.4f}), "
                f"better on {pair['better_share']:.0%}"
            )
        print(line, flush=True)
    if args.out:
        args.out.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
