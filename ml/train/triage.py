"""Fitting the risk tiers: thresholds chosen on val, measured on test (``python -m ml.study.triage fit`` runs it).

The tiers themselves (what the web and the workers read) are ml/serve/tiers.py. The thresholds are chosen on the
*val* part (``val_predictions.csv``, the served model's probabilities) and only measured on test.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ml.serve import paths
from ml.serve.labels import CLASSES, MALIGNANT
from ml.serve.tiers import TIERS, Triage, malignant_probability
from ml.train.metrics import rate

# The targets, on val. Melanoma sensitivity 0.90 for "urgent": dermatologists' own sensitivity for melanoma in
# dermoscopy studies is about 0.8-0.9, and a triage list that misses more than one melanoma in ten would not
# be worth its place. 0.95 of all malignant lesions outside "routine": what is left in routine should be rare.
URGENT_MELANOMA_SENSITIVITY = 0.90
NOT_ROUTINE_MALIGNANT_SENSITIVITY = 0.95


def read_predictions(csv_file: Path, split_file: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(true class names, malignant probabilities) of a predictions CSV, labels from the data's split.csv."""
    with open(csv_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    split = split_file or paths.DATA_DIR / "split.csv"
    with open(split, newline="") as handle:
        dx = {r["image_id"]: r["dx"] for r in csv.DictReader(handle)}
    truth = np.asarray([dx[r["image"]] for r in rows])
    malignant = np.asarray([malignant_probability({c: float(r[c]) for c in CLASSES}) for r in rows])
    return truth, malignant


def highest_threshold(scores: np.ndarray, sensitivity: float) -> float:
    """The highest t with mean(scores >= t) >= sensitivity: the score of the ceil(sensitivity * n)-th positive."""
    ranked = np.sort(scores)[::-1]
    needed = math.ceil(sensitivity * len(ranked) - 1e-9)
    return float(ranked[needed - 1])


def measure(triage: Triage, truth: np.ndarray, malignant: np.ndarray) -> dict:
    """Sensitivity and specificity of "urgent" and of "urgent or uncertain", for melanoma and all malignant."""
    tiers = np.asarray([triage.tier_of(m) for m in malignant])
    is_mel = truth == "mel"
    is_malignant = np.isin(truth, list(MALIGNANT))
    out: dict = {"n": int(len(truth)), "tier_counts": {t: int((tiers == t).sum()) for t in TIERS}}
    for name, selected in (("urgent", tiers == "urgent"), ("urgent_or_uncertain", tiers != "routine")):
        out[name] = {
            "melanoma_sensitivity": rate(selected, is_mel),
            "melanoma_specificity": rate(~selected, ~is_mel),
            "malignant_sensitivity": rate(selected, is_malignant),
            "malignant_specificity": rate(~selected, ~is_malignant),
        }
    out["tiers_by_class"] = {c: {t: int(((truth == c) & (tiers == t)).sum()) for t in TIERS} for c in CLASSES}
    return out


def fit(models_dir: Path = paths.MODELS_DIR, split_file: Path | None = None) -> Triage:
    """Choose the thresholds on val_predictions.csv, then measure on test_predictions.csv."""
    version = json.loads((models_dir / "skinsite.json").read_text())["version"]
    truth, malignant = read_predictions(models_dir / "val_predictions.csv", split_file)
    urgent = highest_threshold(malignant[truth == "mel"], URGENT_MELANOMA_SENSITIVITY)
    routine = highest_threshold(malignant[np.isin(truth, list(MALIGNANT))], NOT_ROUTINE_MALIGNANT_SENSITIVITY)
    # Where catching 95% of malignant lesions needs no lower cut than urgent's, there is no uncertain band.
    routine = min(routine, urgent)
    triage = Triage(
        urgent_threshold=urgent,
        routine_threshold=routine,
        model_version=version,
        targets={
            "urgent_val_melanoma_sensitivity": URGENT_MELANOMA_SENSITIVITY,
            "not_routine_val_malignant_sensitivity": NOT_ROUTINE_MALIGNANT_SENSITIVITY,
        },
    )
    val = measure(triage, truth, malignant)
    test = measure(triage, *read_predictions(models_dir / "test_predictions.csv", split_file))
    return Triage(
        **{**asdict(triage), "val": val, "test": test, "fitted_at": datetime.now(UTC).isoformat(timespec="seconds")}
    )
