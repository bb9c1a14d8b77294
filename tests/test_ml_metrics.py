"""The served operating point's rule (ml.train.metrics.choose_operating_point) on generated logits, and the figures by
group of images (ml.train.metrics.by_group) on hand-made ones."""

import numpy as np

from ml.serve.labels import CLASSES
from ml.train.metrics import MEL, choose_operating_point, operating_bias

PRIOR = np.array([0.033, 0.051, 0.11, 0.011, 0.111, 0.67, 0.014])


def generated(seed: int, n: int = 600):
    """Labels drawn from the prior and noisy logits that favour the true class, but leave melanoma often missed."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(CLASSES), n, p=PRIOR / PRIOR.sum())
    logits = rng.normal(0, 1.0, (n, len(CLASSES))) + np.log(PRIOR)
    logits[np.arange(n), y] += 1.5
    logits[y == MEL, MEL] -= 0.8
    return y, logits


def test_the_chosen_point_keeps_melanoma_recall_and_has_the_best_sum_of_accuracies():
    for seed in range(3):
        y, logits = generated(seed)
        tau, melanoma_bias, rows = choose_operating_point(y, logits, PRIOR, 0.70)
        chosen = next(r for r in rows if (r["tau"], r["melanoma_bias"]) == (tau, melanoma_bias))
        pred = (logits + operating_bias(PRIOR, tau, melanoma_bias)).argmax(axis=1)
        assert chosen["accuracy"] == np.mean(pred == y)
        assert np.mean(pred[y == MEL] == MEL) >= 0.70
        safe = [r for r in rows if r["melanoma_recall"] >= 0.70]
        best = max(r["accuracy"] + r["balanced_accuracy"] for r in safe)
        assert chosen["accuracy"] + chosen["balanced_accuracy"] == best
        # The untouched logits miss that recall: the rule had to move the point.
        assert np.mean(logits[y == MEL].argmax(axis=1) == MEL) < 0.70 and melanoma_bias + abs(tau) > 0


def test_without_any_point_keeping_melanoma_recall_the_best_sum_overall_is_taken():
    y, logits = generated(0)
    _, _, rows = choose_operating_point(y, logits, PRIOR, 1.01)  # unreachable
    tau, melanoma_bias, _ = choose_operating_point(y, logits, PRIOR, 1.01)
    chosen = next(r for r in rows if (r["tau"], r["melanoma_bias"]) == (tau, melanoma_bias))
    assert chosen["accuracy"] + chosen["balanced_accuracy"] == max(r["accuracy"] + r["balanced_accuracy"] for r in rows)


def test_each_group_counts_its_own_decisions_melanomas_and_malignant_lesions():
    from ml.train.metrics import by_group, proportion

    def onehot(classes):
        return np.eye(len(CLASSES))[[CLASSES.index(c) for c in classes]]

    truth = ["mel", "mel", "nv", "bcc", "mel", "nv", "bkl"]
    called = ["mel", "nv", "nv", "akiec", "mel", "mel", "bkl"]
    groups = ["face", "face", "face", "back", "back", "back", "back"]
    y = np.array([CLASSES.index(c) for c in truth])
    back, face = by_group(y, onehot(called), groups)  # largest group first
    assert face == {
        "group": "face",
        "images": 3,
        "accuracy": 2 / 3,
        "melanoma_recall": proportion(1, 2),
        "malignant_sensitivity": proportion(1, 2),
        "melanoma_auc": None,  # too few melanomas for an AUC
    }
    # bcc called akiec is a malignant lesion found though the class is wrong; the nevus called melanoma is not one.
    assert (back["images"], back["accuracy"]) == (4, 0.5)
    assert (back["melanoma_recall"], back["malignant_sensitivity"]) == (proportion(1, 1), proportion(2, 2))
    assert [r["group"] for r in by_group(y, onehot(called), groups, order=["face", "scalp", "back"])] == [
        "face",
        "back",
    ]


def test_a_group_with_enough_melanomas_and_other_lesions_gets_their_auc():
    from sklearn.metrics import roc_auc_score

    from ml.train.metrics import MIN_AUC_CASES, by_group

    rng = np.random.default_rng(0)
    y = np.array([MEL] * MIN_AUC_CASES + [CLASSES.index("nv")] * MIN_AUC_CASES)
    probs = rng.dirichlet(np.ones(len(CLASSES)), len(y))
    (row,) = by_group(y, probs, ["all"] * len(y))
    assert row["melanoma_auc"] == roc_auc_score(y == MEL, probs[:, MEL])
    (row,) = by_group(y[1:], probs[1:], ["all"] * (len(y) - 1))
    assert row["melanoma_auc"] is None
