"""Risk tiers (ml.serve.tiers, fitted by ml.train.triage): ordered thresholds, monotone tiers, flagged images uncertain, a reproducible fit."""

import json
import subprocess
import sys

import numpy as np
import pytest

from ml.serve import paths
from ml.serve.labels import CLASSES
from ml.serve.tiers import TIERS, Triage, load_triage, malignant_probability
from ml.train import triage

needs_data = pytest.mark.skipif(
    not (paths.DATA_DIR / "split.csv").exists(), reason=f"HAM10000 is not at {paths.DATA_DIR} (../shared absent)"
)


def probabilities(malignant: float) -> dict[str, float]:
    """Class probabilities with a given malignant share, split evenly over mel/bcc/akiec and the rest."""
    benign = [c for c in CLASSES if c not in ("mel", "bcc", "akiec")]
    return {c: malignant / 3 if c in ("mel", "bcc", "akiec") else (1 - malignant) / len(benign) for c in CLASSES}


@pytest.fixture(scope="module")
def shipped() -> Triage:
    return load_triage()


def test_malignant_probability_adds_melanoma_bcc_and_akiec():
    probs = {"akiec": 0.1, "bcc": 0.2, "bkl": 0.05, "df": 0.05, "mel": 0.3, "nv": 0.25, "vasc": 0.05}
    assert malignant_probability(probs) == pytest.approx(0.6)


def test_the_shipped_thresholds_are_ordered_and_belong_to_the_shipped_model(shipped):
    meta = json.loads(paths.SHIPPED_MODEL.with_suffix(".json").read_text())
    assert 0 < shipped.routine_threshold <= shipped.urgent_threshold < 1
    assert shipped.model_version == meta["version"]
    assert TIERS == ("urgent", "uncertain", "routine")


def test_tiers_never_go_down_as_the_malignant_probability_rises(shipped):
    rank = {"routine": 0, "uncertain": 1, "urgent": 2}
    tiers = [shipped.tier(probabilities(m)) for m in np.linspace(0, 1, 401)]
    assert all(rank[a] <= rank[b] for a, b in zip(tiers, tiers[1:]))
    assert set(tiers) == set(TIERS)
    assert shipped.tier(probabilities(shipped.urgent_threshold + 1e-9)) == "urgent"
    assert shipped.tier(probabilities(shipped.routine_threshold - 1e-9)) == "routine"


def test_a_flagged_image_is_uncertain_whatever_the_probabilities(shipped):
    assert shipped.tier(probabilities(0.99), flagged=True) == "uncertain"
    assert shipped.tier(probabilities(0.0), flagged=True) == "uncertain"


def test_thresholds_out_of_order_are_refused():
    with pytest.raises(ValueError, match="out of order"):
        Triage(urgent_threshold=0.2, routine_threshold=0.3, model_version="x")


def test_describe_gives_the_thresholds_and_the_measured_test_figures(shipped):
    described = shipped.describe()
    assert described["urgent_threshold"] == shipped.urgent_threshold
    urgent = described["test"]["urgent"]
    for key in ("melanoma_sensitivity", "melanoma_specificity", "malignant_sensitivity", "malignant_specificity"):
        assert 0 <= urgent[key]["value"] <= 1
    assert sum(described["test"]["tier_counts"].values()) == 1995
    json.dumps(described)  # ready for an API response


def test_triage_does_not_import_tensorflow():
    code = "import sys, ml.serve.tiers; ml.serve.tiers.load_triage(); sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=paths.REPO).returncode == 0


@needs_data
def test_the_committed_thresholds_reproduce_from_val_predictions(shipped):
    refit = triage.fit(paths.MODELS_DIR)
    assert refit.urgent_threshold == pytest.approx(shipped.urgent_threshold, abs=1e-9)
    assert refit.routine_threshold == pytest.approx(shipped.routine_threshold, abs=1e-9)
    assert refit.val["urgent"]["melanoma_sensitivity"]["value"] >= triage.URGENT_MELANOMA_SENSITIVITY
    assert (
        refit.val["urgent_or_uncertain"]["malignant_sensitivity"]["value"] >= triage.NOT_ROUTINE_MALIGNANT_SENSITIVITY
    )
    assert refit.test == shipped.test


def test_the_highest_threshold_keeps_the_target_sensitivity():
    scores = np.asarray([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    t = triage.highest_threshold(scores, 0.9)
    assert t == 0.1 and np.mean(scores >= t) >= 0.9
    assert np.mean(scores >= np.nextafter(t, 1)) < 0.9  # any higher threshold misses the target


def test_the_committed_card_is_rendered_from_metrics_json():
    from ml.study.card import model_card, val_comparison

    meta = json.loads(paths.SHIPPED_MODEL.with_suffix(".json").read_text())
    metrics = json.loads((paths.MODELS_DIR / "metrics.json").read_text())
    card = (paths.MODELS_DIR / "MODEL_CARD.md").read_text()
    assert model_card(meta, metrics, val_comparison(paths.MODELS_DIR)) == card
    assert "## Risk tiers (triage)" in card and f"{100 * metrics['triage']['urgent_threshold']:.1f}%" in card


def test_a_new_evaluation_keeps_the_tier_and_gate_sections_of_the_same_model_only(tmp_path):
    from ml.study.card import kept_sections

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"model_version": "v1", "test": {}, "triage": {"a": 1}, "quality_gate": {"b": 2}}))
    assert kept_sections(metrics, "v1") == {"triage": {"a": 1}, "quality_gate": {"b": 2}}
    assert kept_sections(metrics, "v2") == {}  # another model's thresholds would be wrong for this one
    assert kept_sections(tmp_path / "absent.json", "v1") == {}
