"""Would an 8-bit TFLite file serve a float-served model as well? ``python -m ml.train.quantize --model A.keras``.

Writes an int8 copy of the model (``ml.train.export.to_int8_tflite``: convolutions in 8 bits, calibrated on train
images; dense layers and softmax in float) beside a copy of its JSON, then compares it with the model's own
TFLite file on val: LiteRT latency at batch 1 (the two files timed in turn, so both see the same machine), how
often their answers differ, and on val, for each file: macro and melanoma AUC of the raw logits (before any
operating point), accuracy, balanced accuracy, macro AUC and melanoma recall at the model's operating point,
and the same at an operating point chosen again on val by the served rule (``ml.train.metrics``), as it would be if
the file shipped. Compare rankings by the raw AUCs: an operating point moves one-vs-rest AUCs too. The test
part is not read. ``ml/models/quantization.json`` records the comparison that made the shipped model int8
(``python -m ml.train.ensemble --int8``, which chooses the operating point on the int8 file itself); a model served
as int8 already is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from ml.serve import paths  # noqa: E402
from ml.serve.inference import Classifier, model_metadata, sha256  # noqa: E402
from ml.serve.preprocess import preprocess  # noqa: E402
from ml.train import data  # noqa: E402
from ml.train.calibrate import folded_adjustment  # noqa: E402
from ml.train.metrics import MEL, choose_operating_point, class_prior, operating_bias, softmax, summary  # noqa: E402
from ml.train.timing import timings  # noqa: E402

log = logging.getLogger("ml.train.quantize")

KEPT = ("accuracy", "balanced_accuracy", "macro_auc", "melanoma_recall")


def raw_logits(probs: np.ndarray, meta: dict) -> np.ndarray:
    """A served model's logits before its folded operating point and temperature, up to a constant per row."""
    bias, temperature = folded_adjustment(meta)
    return np.log(np.clip(probs, 1e-12, None)) * temperature - bias


def val_figures(y: np.ndarray, logits: np.ndarray, prior: np.ndarray, served_bias: np.ndarray, minimum: float) -> dict:
    """Raw-logit AUCs; figures at the served operating point (``served_bias``) and at one chosen again."""
    raw = softmax(logits)
    tau, melanoma_bias, _ = choose_operating_point(y, logits, prior, minimum)
    served = summary(y, softmax(logits + served_bias))
    own = summary(y, softmax(logits + operating_bias(prior, tau, melanoma_bias)))
    return {
        "raw_macro_auc": round(summary(y, raw)["macro_auc"], 4),
        "raw_melanoma_auc": round(float(roc_auc_score(y == MEL, raw[:, MEL])), 4),
        "served_point": {k: round(served[k], 4) for k in KEPT},
        "own_point": {"tau": tau, "melanoma_bias": melanoma_bias, **{k: round(own[k], 4) for k in KEPT}},
    }


def write_int8(keras_file: Path, meta: dict, out: Path, calibration: list[np.ndarray]) -> Path:
    """The int8 TFLite file of ``keras_file`` in ``out``, with its JSON ``meta`` beside it (version marked int8)."""
    from ml.train.export import to_int8_tflite
    from ml.train.model import load

    out.mkdir(parents=True, exist_ok=True)
    tflite = to_int8_tflite(load(keras_file), out / "skinsite.tflite", calibration)
    digest = sha256(tflite)
    marked = meta | {
        "version": f"{meta['version']}-int8-{digest[:8]}",
        "served_precision": "int8",
        "int8_calibration_images": len(calibration),
        "files": {tflite.name: digest},
    }
    (out / "skinsite.json").write_text(json.dumps(marked, indent=2))
    return tflite


def batch1_ms(classifiers: dict[str, Classifier], repeats: int, rounds: int = 10) -> dict[str, dict[str, float]]:
    """p50 / p95 ms per image at batch 1 on the same random input, the classifiers timed in turn, a tenth of the
    calls at a time, so that both see the machine as it is during the run."""
    size = next(iter(classifiers.values())).input_size
    one = np.random.default_rng(0).uniform(-1, 1, (1, *size, 3)).astype(np.float32)
    times: dict[str, list[np.ndarray]] = {name: [] for name in classifiers}
    for _ in range(rounds):
        for name, classifier in classifiers.items():
            times[name].append(timings(classifier.predict_arrays, one, max(repeats // rounds, 1), warmup=1) * 1000)
    return {
        name: {"p50": float(np.percentile(np.concatenate(t), 50)), "p95": float(np.percentile(np.concatenate(t), 95))}
        for name, t in times.items()
    }


def compare(keras_file: Path, data_dir: Path, out: Path, calibration_images: int = 200, repeats: int = 100) -> dict:
    meta = model_metadata(keras_file)
    if meta.get("served_precision") == "int8":
        raise ValueError(f"{keras_file.with_suffix('.tflite')} is int8 already: nothing to compare it with")
    size = tuple(meta["input_size"])
    frame = data.load_dataset(data_dir)
    train, val = data.part(frame, "train"), data.part(frame, "val")
    chosen = data.calibration_paths(frame, calibration_images)
    log.info("quantising %s on %d train images", keras_file, len(chosen))
    int8_file = write_int8(keras_file, meta, out, [preprocess(p, size) for p in chosen])

    classifiers = {"served": Classifier(keras_file.with_suffix(".tflite")), "int8": Classifier(int8_file)}
    arrays = np.stack([preprocess(p, size) for p in val["path"]])
    y = val["label"].to_numpy()
    prior = class_prior(train["label"].to_numpy())
    minimum = meta["recipe"].get("min_val_melanoma_recall", 0.70)
    served_bias, _ = folded_adjustment(meta)
    probs = {
        name: np.concatenate([c.predict_arrays(arrays[s : s + 32]) for s in range(0, len(arrays), 32)])
        for name, c in classifiers.items()
    }
    latency = batch1_ms(classifiers, repeats)
    result = {
        "model": meta["version"],
        "int8_model": classifiers["int8"].version,
        "calibration_images": len(chosen),
        "val_images": len(y),
        "answers_differ": round(float(np.mean(probs["served"].argmax(1) != probs["int8"].argmax(1))), 4),
        "max_probability_difference": round(float(np.abs(probs["served"] - probs["int8"]).max()), 4),
    }
    for name, file in (("served", keras_file.with_suffix(".tflite")), ("int8", int8_file)):
        result[name] = {
            "file_mb": round(file.stat().st_size / 1e6, 1),
            "batch1_p50_ms": round(latency[name]["p50"], 2),
            "batch1_p95_ms": round(latency[name]["p95"], 2),
            "val": val_figures(y, raw_logits(probs[name], meta), prior, served_bias, minimum),
        }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.train.quantize", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a float-served model's .keras file")
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR)
    parser.add_argument("--out", type=Path, default=paths.RUNS_DIR / "int8", help="where the int8 file goes")
    parser.add_argument("--calibration-images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        result = compare(args.model, args.data_dir, args.out, args.calibration_images, args.repeats)
    except ValueError as error:
        parser.error(str(error))
    print(f"answers differ on {result['answers_differ']:.1%} of {result['val_images']} val images")
    print(f"{'file':<8} {'MB':>5} {'p50 ms':>7} {'p95 ms':>7} {'raw AUC':>8} {'mel AUC':>8}")
    for name in ("served", "int8"):
        r, v = result[name], result[name]["val"]
        print(
            f"{name:<8} {r['file_mb']:>5} {r['batch1_p50_ms']:>7} {r['batch1_p95_ms']:>7} "
            f"{v['raw_macro_auc']:>8.4f} {v['raw_melanoma_auc']:>8.4f}"
        )
    print(f"{'val at':<20} {'acc':>6} {'bal':>6} {'AUC':>6} {'mel':>6}")
    for name in ("served", "int8"):
        for point in ("served_point", "own_point"):
            v = result[name]["val"][point]
            print(f"{name + ' ' + point:<20} " + " ".join(f"{v[k]:>6.3f}" for k in KEPT))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
