"""ml.study.compare: the operating-point rule judged on held-out halves of val, split by lesion."""

import numpy as np
import pytest

from ml.serve.labels import CLASSES
from ml.train.metrics import MEL, choose_operating_point, class_prior, operating_bias, point_figures

pytest.importorskip("sklearn")


def labelled(n_lesions: int = 150, seed: int = 0):
    """Labels with HAM10000's imbalance, two images per lesion (the same label)."""
    rng = np.random.default_rng(seed)
    shares = np.array([0.03, 0.05, 0.11, 0.01, 0.11, 0.67, 0.02]) + 0.02
    lesion_labels = rng.choice(len(CLASSES), n_lesions, p=shares / shares.sum())
    return np.repeat(lesion_labels, 2), np.repeat(np.arange(n_lesions), 2)


def test_a_lesions_images_stay_on_one_side_and_the_lesions_are_halved():
    from ml.study.compare import lesion_halves

    _, groups = labelled()
    for seed in range(5):
        half = lesion_halves(groups, np.random.default_rng(seed))
        for lesion in np.unique(groups):
            assert len(set(half[groups == lesion])) == 1
        assert len(np.unique(groups[half])) == len(np.unique(groups)) // 2
    assert not np.array_equal(
        lesion_halves(groups, np.random.default_rng(0)), lesion_halves(groups, np.random.default_rng(1))
    )


def test_a_model_that_separates_the_classes_beats_noise_on_held_out_halves():
    from ml.study.compare import cross_validated_point

    y, groups = labelled()
    rng = np.random.default_rng(1)
    prior = class_prior(y)
    noise = rng.normal(size=(len(y), len(CLASSES)))
    good = cross_validated_point(y, 3 * np.eye(len(CLASSES))[y] + noise, prior, groups, repeats=5)
    chance = cross_validated_point(y, noise, prior, groups, repeats=5)
    assert good["accuracy_plus_balanced"]["mean"] > chance["accuracy_plus_balanced"]["mean"] + 0.5
    assert good["melanoma_recall"]["mean"] >= 0.7
    for figures in (good, chance):
        assert set(figures) == {"accuracy", "balanced_accuracy", "accuracy_plus_balanced", "melanoma_recall"}
        assert all(0 <= figures[k]["mean"] <= 1 and figures[k]["sd"] >= 0 for k in ("accuracy", "balanced_accuracy"))


def test_every_judged_half_is_kept_and_models_are_paired_half_by_half():
    from ml.study.compare import cross_validated_point, paired

    y, groups = labelled()
    prior = class_prior(y)
    noise = np.random.default_rng(2).normal(size=(len(y), len(CLASSES)))
    good_logits = 3 * np.eye(len(CLASSES))[y] + noise
    good, chance, again = (
        cross_validated_point(y, logits, prior, groups, repeats=4) for logits in (good_logits, noise, good_logits)
    )
    halves = good["accuracy_plus_balanced"]["halves"]
    assert len(halves) == 8 and np.mean(halves) == pytest.approx(good["accuracy_plus_balanced"]["mean"], abs=1e-5)
    assert again["accuracy_plus_balanced"]["halves"] == halves  # the same halvings for every model

    def row(version, figures):
        return {"version": version, "held_out_point": figures}

    pair = paired(row("v-good", good), row("v-chance", chance))
    difference = np.subtract(halves, chance["accuracy_plus_balanced"]["halves"])
    assert pair == pytest.approx(
        {"reference": "v-chance", "mean": difference.mean(), "sd": difference.std(), "better_share": 1.0}
    )
    assert paired(row("v-chance", chance), row("v-good", good))["better_share"] == 0.0
    assert paired(row("v-same", again), row("v-good", good))["mean"] == 0.0
    # Rows stored before the halves were kept, or judged on other halvings, are not paired.
    fewer = cross_validated_point(y, noise, prior, groups, repeats=2)
    assert paired(row("v-fewer", fewer), row("v-good", good)) is None
    older = {k: {"mean": v["mean"], "sd": v["sd"]} for k, v in chance.items()}
    assert paired(row("v-old", older), row("v-good", good)) is None


def test_on_noise_the_point_chosen_in_sample_flatters_and_held_out_halves_do_not():
    """The recorded figures are the best point on the very images that judge it; on pure noise that is luck."""
    from ml.study.compare import cross_validated_point

    gaps = []
    for seed in range(4):
        y, groups = labelled(n_lesions=40, seed=seed)
        prior = class_prior(y)
        noise = np.random.default_rng(10 + seed).normal(size=(len(y), len(CLASSES)))
        # Without the melanoma floor, so the rule only maximises the sum it is judged by.
        tau, melanoma_bias, _ = choose_operating_point(y, noise, prior, min_melanoma_recall=0.0)
        in_sample = point_figures(y, noise, operating_bias(prior, tau, melanoma_bias))["accuracy_plus_balanced"]
        held_out = cross_validated_point(y, noise, prior, groups, min_melanoma_recall=0.0, repeats=5)
        gaps.append(in_sample - held_out["accuracy_plus_balanced"]["mean"])
    assert min(gaps) > 0 and np.mean(gaps) > 0.03, gaps


def test_the_figures_at_a_point_count_each_class_and_melanoma():
    y = np.array([MEL, MEL, 5, 5, 5, 0])
    logits = np.zeros((len(y), len(CLASSES)))
    logits[:, 5] = 1.0  # everything nv
    assert point_figures(y, logits, np.zeros(len(CLASSES))) == pytest.approx(
        {"accuracy": 0.5, "balanced_accuracy": 1 / 3, "accuracy_plus_balanced": 0.5 + 1 / 3, "melanoma_recall": 0.0}
    )
    bias = np.zeros(len(CLASSES))
    bias[MEL] = 2.0  # now everything mel
    assert point_figures(y, logits, bias)["melanoma_recall"] == 1.0


def comparison_row(version: str, networks: int, auc: float, held_sum: float, recorded: tuple[float, float]) -> dict:
    figure = {"mean": held_sum / 2, "sd": 0.01}
    return {
        "version": version,
        "networks": networks,
        "seeds": list(range(networks)),
        "backends": ["tensorflow"] * 3 + ["jax"] * (networks - 3),
        "repeats": 100,
        "raw_macro_auc": auc,
        "raw_melanoma_auc": auc - 0.03,
        "recorded_val": {"accuracy": recorded[0], "balanced_accuracy": recorded[1]},
        "held_out_point": {
            "accuracy": figure,
            "balanced_accuracy": figure,
            "melanoma_recall": {"mean": 0.71, "sd": 0.05},
            "accuracy_plus_balanced": {"mean": held_sum, "sd": 0.05},
        },
    }


def test_the_card_gives_the_shipped_models_held_out_figures_and_what_was_not_shipped():
    from ml.study.card import comparison_lines

    comparison = {
        "shipped": comparison_row("v-shipped", 3, 0.950, 1.493, (0.791, 0.731)),
        "seven": comparison_row("v-seven", 7, 0.956, 1.466, (0.792, 0.707)),
    }
    lines = comparison_lines({"version": "v-shipped"}, comparison)
    assert len(lines) == 2
    assert "accuracy 0.747, balanced accuracy 0.747, melanoma recall 0.710 (means). The shipped model was" in lines[0]
    assert "seven, 7 networks (seeds 0, 1, 2, 3 (jax), 4 (jax), 5 (jax), 6 (jax); `v-seven`)" in lines[1]
    assert "raw val macro AUC 0.956 against 0.950, melanoma AUC 0.926 against 0.920" in lines[1]
    assert "held-out halves 1.466 against 1.493, at its own point 1.499 against 1.522." in lines[1]
    comparison["seven"]["paired_with_reference"] = {
        "reference": "v-shipped",
        "mean": -0.027,
        "sd": 0.02,
        "better_share": 0.085,
    }
    comparison["five"] = dict(comparison_row("v-five", 5, 0.954, 1.474, (0.79, 0.72)))
    comparison["five"]["paired_with_reference"] = {"reference": "v-older", "mean": 0.1, "sd": 0.02, "better_share": 1.0}
    lines = comparison_lines({"version": "v-shipped"}, comparison)
    assert lines[1].endswith(
        "1.499 against 1.522; on the same halves it did better on 8% of them (mean difference -0.027, sd 0.020)."
    )
    assert lines[2].endswith("1.510 against 1.522.")  # paired with another model: not said
    # A comparison made for another model says nothing about this one.
    assert comparison_lines({"version": "v-other"}, comparison) == []
