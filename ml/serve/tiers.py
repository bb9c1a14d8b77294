"""Risk tiers of one analysis from the served (temperature-scaled) probabilities: urgent, uncertain, routine.

The malignant probability is P(mel) + P(bcc) + P(akiec). Two thresholds on it, both chosen on the *val* part
(``val_predictions.csv``, the served model's probabilities) and only measured on test:

- urgent when malignant probability >= ``urgent_threshold``: the highest threshold that still catches at least
  90% of val melanomas (melanoma is the cancer a screening aid must not let through);
- routine when malignant probability < ``routine_threshold``: the highest threshold under which at most 5% of
  val malignant lesions (mel, bcc, akiec) would fall, i.e. "urgent or uncertain" catches >= 95% of them;
- uncertain in between, and always when the quality gate flagged the image (the probabilities of an image that
  is not a dermoscopic lesion image mean nothing, high or low).

Pure numpy and json: the web process reads this module (``load_triage``) and must never import TensorFlow.
``python -m ml.study.triage fit`` (ml/train/triage.py, run by ml/study/triage.py) chooses the thresholds, measures them on test and writes
``triage.json``, a ``metrics.json`` key and the model card's section; this module imports nothing of it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from ml.serve import paths
from ml.serve.labels import MALIGNANT

TIERS = ("urgent", "uncertain", "routine")
TRIAGE_FILE_NAME = "triage.json"


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
                f"{TRIAGE_FILE_NAME} belongs to {stored['model_version']}, not {version}: run `python -m ml.study.triage fit`"
            )
    return Triage(**stored)
