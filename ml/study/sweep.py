"""Compare recipe variants on val: ``python -m ml.study.sweep --out DIR [--seeds 2,3,4] [--parallel N]``.

Each variant (a few ``ml.train --set`` overrides of the improved recipe, at the cost of one ensemble member:
4 cached copies, 12 epochs) is trained with each seed as its own ``ml.train.fit`` process, several at a time, and
judged on val only, from the raw val logits each run leaves (``skinsite.val_logits.npy``): macro AUC, melanoma
AUC and log loss, and the accuracy, balanced accuracy and melanoma recall at the operating point the run chose.
Seeds matter as much as most knobs here, so a variant is compared by its mean over seeds.

Meant for a machine with a GPU and many cores (Keras runs on JAX or TensorFlow there); on this project's
2-core CPU one run took 23-27 minutes on an Intel Xeon (6-7 of them building its cache) and 60 (16) on
another session's AVX2-only AMD EPYC. Runs not started by ``--launch-until`` seconds are skipped, and
runs still going at ``--kill-at`` are stopped, so a sweep fits a fixed lease. The first run of each cache
(the recipe's cut, augmentation, colour constancy and seed) runs alone before the others that share its cached activations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ml.serve import paths
from ml.train import data
from ml.train.metrics import MEL, softmax, summary

MEMBER = ["--copies", "4", "--epochs", "12"]
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "deeper": ["--set", "cut='block_2_add'", "--set", "trainable_from='block_3_expand'"],
    "cw075": ["--set", "class_weight_power=0.75"],
    "lr4e4": ["--set", "learning_rate=4e-4"],
    "ls0": ["--set", "label_smoothing=0.0"],
    "wide": ["--set", "units=512", "--set", "dropout=0.5"],
    "e20": ["--epochs", "20"],
    "mixup": ["--set", "mixup=0.3"],
    "cutmix": ["--set", "cutmix=1.0"],
    "mixup_e20": ["--epochs", "20", "--set", "mixup=0.3"],  # mixup's val loss still fell at epoch 12
    "acquisition": ["--set", "augmentation='acquisition'"],
    "constancy": ["--set", "colour_constancy=6.0"],
    # 2x the images' own scale (224x160 -> 288x224 had raised val macro AUC from 0.928 to 0.945, ml/serve/preprocess.py):
    # seeds 2 and 0, 41-48 min a run on an Intel Xeon CPU, ranked val about as base does (recipe_sweep.json).
    "large": ["--set", "input_size=(288, 384)"],
}
# Variants whose cut, input size, augmentation or colour constancy (what the cached activations depend on) differ;
# the others read base's cache.
OWN_CACHE = ("base", "deeper", "acquisition", "constancy", "large")


def run_arguments(variant: str, seed: int, out: Path, cache: Path, data_dir: Path, weights: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "ml.train", "--seed", str(seed), *MEMBER, *VARIANTS[variant]),
        *("--out", str(out), "--cache-dir", str(cache), "--data-dir", str(data_dir), "--weights", str(weights)),
    ]


def launch_order(variants: list[str], seeds: list[int]) -> tuple[list[tuple[str, int]], dict[tuple[str, int], tuple]]:
    """The runs that build a cache (the first selected variant of each cache, per seed), and every other run
    with the run whose cache it waits for."""
    first, waits = [], {}
    for seed in seeds:
        builders: dict[str, tuple[str, int]] = {}
        for variant in sorted(variants, key=lambda v: v not in OWN_CACHE):  # a cache's own variant builds it
            cache = variant if variant in OWN_CACHE else "base"
            if cache in builders:
                waits[(variant, seed)] = builders[cache]
            else:
                builders[cache] = (variant, seed)
                first.append((variant, seed))
    return first, waits


def run_all(args: argparse.Namespace) -> None:
    start = time.time()
    first, waits = launch_order(args.variants, args.seeds)
    rest = list(waits)
    running: dict[tuple[str, int], subprocess.Popen] = {}
    finished: set[tuple[str, int]] = set()
    while first or rest or running:
        for key, proc in list(running.items()):
            if proc.poll() is not None:
                print(f"[{time.time() - start:5.0f} s] {key} exit {proc.returncode}", flush=True)
                del running[key]
                finished.add(key)
        if time.time() - start > args.launch_until:
            first, rest = [], []
        ready = [k for k in rest if waits[k] in finished]
        while (first or ready) and len(running) < args.parallel:
            key = first.pop(0) if first else ready.pop(0)
            if key in rest:
                rest.remove(key)
            out = args.out / f"{key[0]}_s{key[1]}"
            out.mkdir(parents=True, exist_ok=True)
            command = run_arguments(*key, out, args.cache_dir, args.data_dir, args.weights)
            with open(out / "stdout.txt", "w") as log:  # the child keeps its own handle
                running[key] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            print(f"[{time.time() - start:5.0f} s] start {key}", flush=True)
        if not running and not ready and not first:
            break  # what is left waits for a cache-building run that failed
        if time.time() - start > args.kill_at:
            for key, proc in running.items():
                proc.kill()
                print(f"[{time.time() - start:5.0f} s] stopped {key}", flush=True)
            break
        time.sleep(2)


def judge(runs: Path, data_dir: Path) -> dict:
    """Every finished run's val figures, and the variants ranked by mean val macro AUC over their seeds.

    A run is a folder holding ``<name>.val_logits.npy`` beside its ``<name>.json`` (``skinsite`` for the cached
    recipes' members, ``whole`` for ``ml.train --recipe whole``); its variant is the folder's name before
    ``_s<seed>``. Whole-network runs also give the extra train images, the measured images/s and the CPU."""
    from sklearn.metrics import roc_auc_score

    frame = data.load_dataset(data_dir)
    y = data.part(frame, "val")["label"].to_numpy()
    rows = []
    for logits_file in sorted(runs.glob("*/*.val_logits.npy")):
        probs = softmax(np.load(logits_file))
        name = logits_file.name.removesuffix(".val_logits.npy")
        meta = json.loads(logits_file.with_name(f"{name}.json").read_text())
        row = {
            "run": logits_file.parent.name,
            "variant": logits_file.parent.name.rsplit("_s", 1)[0],
            "seed": meta["recipe"]["seed"],
            "macro_auc": summary(y, probs)["macro_auc"],
            "melanoma_auc": float(roc_auc_score(y == MEL, probs[:, MEL])),
            "log_loss": float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()),
            "at_operating_point": {k: meta["val"][k] for k in ("accuracy", "balanced_accuracy", "melanoma_recall")},
            "train_seconds": meta["train_seconds"],
            "backend": meta.get("backend", "tensorflow"),
        }
        if "cut" in meta["recipe"] and meta["recipe"]["cut"] is None:  # whole network: its data and its speed
            whole = [h["images_per_second"] for h in meta["history"] if h.get("phase") == "whole"]
            row.update(
                recipe=meta["recipe"]["name"],
                epochs=meta["recipe"]["epochs"],
                kept_epoch=meta["kept_epoch"],
                train_images=meta["images"]["train"],
                extra_data=meta.get("extra_data", []),
                whole_images_per_second=round(float(np.mean(whole)), 1) if whole else None,
                machine=meta.get("machine"),
            )
        rows.append(row)
    return {"runs": rows, "ranking": rank(rows)}


def rank(rows: list[dict]) -> list[dict]:
    """The variants by the mean over their seeds of val macro AUC (also given: melanoma AUC, log loss and the
    figures at each run's own operating point)."""
    ranking = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        mean = {k: float(np.mean([r[k] for r in mine])) for k in ("macro_auc", "melanoma_auc", "log_loss")}
        point = {k: float(np.mean([r["at_operating_point"][k] for r in mine])) for k in mine[0]["at_operating_point"]}
        ranking.append(
            {
                "variant": variant,
                # a whole-network run is not one of the sweep's variants: its recipe's name stands in
                "arguments": VARIANTS.get(variant, mine[0].get("recipe", "")),
                "seeds": len(mine),
                **mean,
                "at_operating_point": point,
            }
        )
    ranking.sort(key=lambda r: -r["macro_auc"])
    return ranking


def merged(earlier: dict, result: dict) -> dict:
    """An earlier sweep's runs with this one's (a run of the same name replaced), ranked again."""
    mine = {r["run"] for r in result["runs"]}
    rows = [r for r in earlier["runs"] if r["run"] not in mine] + result["runs"]
    return {"runs": rows, "ranking": rank(rows)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.study.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="one folder per run, and sweep.json")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[2, 3, 4])
    parser.add_argument(
        "--variants", type=lambda s: s.split(","), default=list(VARIANTS), help=f"of {','.join(VARIANTS)}"
    )
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--launch-until", type=float, default=float("inf"), help="seconds")
    parser.add_argument("--kill-at", type=float, default=float("inf"), help="seconds")
    parser.add_argument("--judge-only", action="store_true", help="only judge the runs already in --out")
    parser.add_argument("--data-dir", type=Path, default=paths.DATA_DIR)
    parser.add_argument("--weights", type=Path, default=paths.IMAGENET_WEIGHTS)
    parser.add_argument("--cache-dir", type=Path, default=paths.CACHE_DIR)
    parser.add_argument(
        "--into", type=Path, help="also merge the runs into this earlier sweep.json (e.g. ml/models/recipe_sweep.json)"
    )
    args = parser.parse_args(argv)
    if unknown := set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}")
    if not args.judge_only:
        run_all(args)
    result = judge(args.out, args.data_dir)
    (args.out / "sweep.json").write_text(json.dumps(result, indent=2))
    if args.into:
        result = merged(json.loads(args.into.read_text()) if args.into.exists() else {"runs": []}, result)
        args.into.write_text(json.dumps(result, indent=2))
    for r in result["ranking"]:
        point = r["at_operating_point"]
        print(
            f"{r['variant']:9s} {r['seeds']} seed(s): val macro AUC {r['macro_auc']:.4f}, "
            f"melanoma AUC {r['melanoma_auc']:.4f}, log loss {r['log_loss']:.4f}; at its point accuracy "
            f"{point['accuracy']:.3f}, balanced {point['balanced_accuracy']:.3f}, melanoma {point['melanoma_recall']:.3f}"
        )


if __name__ == "__main__":
    main()
