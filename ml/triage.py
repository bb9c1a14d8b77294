"""Risk tiers from the served (temperature-scaled) probabilities: urgent, uncertain, routine.

The malignant probability is P(mel) + P(bcc) + P(akiec). Two thresholds on it, both chosen on the *val* part
(``val_predictions.csv``, the served model's probabilities) and only measured on test:

- urgent when malignant probability >= ``urgent_threshold``: the highest threshold that still catches at least
  90% of val melanomas (melanoma is the cancer a screening aid must not let through);
- routine when malignant probability < ``routine_threshold``: the highest threshold under which at most 5% of
  val malignant lesions (mel, bcc, akiec) would fall, i.e. "urgent or uncertain" catches >= 95% of them;
- uncertain in between, and always when the quality gate flagged the image (the probabilities of an image that
  is not a dermoscopic lesion image mean nothing, high or low).

Pure numpy and json: the web process reads this module (``load_triage``) and must never import TensorFlow.
``python -m ml.triage fit`` chooses the thresholds, measures them on test and writes ``triage.json``, a
``metrics.json`` key and the model card's section.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from . import paths
from .labels import CLASSES, MALIGNANT

TIERS = ("urgent", "uncertain", "routine")
TRIAGE_FILE_NAME = "triage.json"

# The targets, on val. Melanoma sensitivity 0.90 for "urgent": dermatologists' own sensitivity for melanoma in
# dermoscopy studies is about 0.8-0.9, and a triage list that misses more than one melanoma in ten would not
# be worth its place. 0.95 of all malignant lesions outside "routine": what is left in routine should be rare.
URGENT_MELANOMA_SENSITIVITY = 0.90
NOT_ROUTINE_MALIGNANT_SENSITIVITY = 0.95


def malignant_probability(probabilities: dict[str, float]) -> float:
    """P(mel) + P(bcc) + P(akiec) of one analysis's class probabilities."""
    return float(sum(probabilities[c] for c in MALIGNANT))


@dataclass(frozen=True)
class Triage:
    urgent_threshold: float
    routine_threshold: float
    model_version: str
    targets: dict = field(default_factory=dict)  # the sensitivity targets the thresholds were chosen for, on val
    val: dict = field(default_factory=dict)  # measured figures on val (where the thresholds were chosen)
    test: dict = field(default_factory=dict)  # measured figures on test (never used to choose)
    fitted_at: str = ""

    def __post_init__(self):
        if not 0.0 <= self.routine_threshold <= self.urgent_threshold <= 1.0:
            raise ValueError(
                f"thresholds out of order: routine {self.routine_threshold}, urgent {self.urgent_threshold}"
            )

    def tier(self, probabilities: dict[str, float], flagged: bool = False) -> str:
        """urgent, uncertain or routine for one analysis; ``flagged``: the quality gate distrusted the image."""
        if flagged:
            return "uncertain"
        return self.tier_of(malignant_probability(probabilities))

    def tier_of(self, malignant: float) -> str:
        if malignant >= self.urgent_threshold:
            return "urgent"
        if malignant < self.routine_threshold:
            return "routine"
        return "uncertain"

    def describe(self) -> dict:
        """Thresholds and their measured sensitivity and specificity on val and test, for pages and reports."""
        return {
            "model_version": self.model_version,
            "urgent_threshold": self.urgent_threshold,
            "routine_threshold": self.routine_threshold,
            "rule": (
                f"urgent: malignant probability (melanoma + basal cell carcinoma + actinic keratosis) at least "
                f"{self.urgent_threshold:.1%}; routine: below {self.routine_threshold:.1%}; uncertain: in between, "
                "or whenever the image failed the quality check"
            ),
            "targets": self.targets,
            "val": self.val,
            "test": self.test,
        }


def load_triage(model_path: str | Path | None = None) -> Triage:
    """The triage thresholds fitted for a model (``triage.json`` beside it), checked against its version."""
    return _load(Path(model_path or paths.SHIPPED_MODEL).resolve())


@functools.cache
def _load(model_path: Path) -> Triage:
    stored = json.loads((model_path.parent / TRIAGE_FILE_NAME).read_text())
    meta_file = model_path.with_suffix(".json")
    if meta_file.exists():
        version = json.loads(meta_file.read_text())["version"]
        if stored["model_version"] != version:
            raise ValueError(
                f"{TRIAGE_FILE_NAME} belongs to {stored['model_version']}, not {version}: run `python -m ml.triage fit`"
            )
    return Triage(**stored)


# --- fitting and measuring -------------------------------------------------------------------------------------


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


def wilson(hits: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion: honest error bars for a few dozen cases."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def proportion(hits: int, n: int) -> dict:
    """A measured proportion as the cards store it: value, hits, n and its 95% Wilson interval."""
    return {"value": hits / n if n else float("nan"), "hits": hits, "n": n, "ci95": wilson(hits, n)}


def rate(selected: np.ndarray, positives: np.ndarray) -> dict:
    """The share of ``positives`` that are ``selected`` (boolean masks over the same images)."""
    return proportion(int((selected & positives).sum()), int(positives.sum()))


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.triage", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("fit",))
    parser.add_argument("--models-dir", type=Path, default=paths.MODELS_DIR)
    args = parser.parse_args(argv)
    triage = fit(args.models_dir)
    (args.models_dir / TRIAGE_FILE_NAME).write_text(json.dumps(asdict(triage), indent=2) + "\n")
    from .evaluate import update_metrics

    update_metrics(args.models_dir, "triage", triage.describe())
    for part in ("val", "test"):
        figures = getattr(triage, part)
        u, uu = figures["urgent"], figures["urgent_or_uncertain"]
        print(
            f"{part}: tiers {figures['tier_counts']}; urgent: melanoma sensitivity "
            f"{u['melanoma_sensitivity']['value']:.3f}, specificity {u['melanoma_specificity']['value']:.3f}, malignant "
            f"{u['malignant_sensitivity']['value']:.3f}/{u['malignant_specificity']['value']:.3f}; urgent or uncertain: "
            f"melanoma {uu['melanoma_sensitivity']['value']:.3f}/{uu['melanoma_specificity']['value']:.3f}, malignant "
            f"{uu['malignant_sensitivity']['value']:.3f}/{uu['malignant_specificity']['value']:.3f}"
        )
    print(f"urgent >= {triage.urgent_threshold:.4f}, routine < {triage.routine_threshold:.4f}")


if __name__ == "__main__":
    main()
