"""Classification metrics on probability matrices (numpy + scikit-learn only)."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from ml.serve.inference import softmax
from ml.serve.labels import CLASSES, MALIGNANT_INDICES
from ml.serve.stats import proportion

MEL = CLASSES.index("mel")


def rate(selected: np.ndarray, positives: np.ndarray) -> dict:
    """The share of ``positives`` that are ``selected`` (boolean masks over the same images)."""
    return proportion(int((selected & positives).sum()), int(positives.sum()))


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def summary(y: np.ndarray, probs: np.ndarray) -> dict:
    """Every number the model card reports, from true labels and a (n, 7) probability matrix."""
    labels = list(range(len(CLASSES)))
    pred = probs.argmax(axis=1)
    p, r, f, support = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    macro = skm.precision_recall_fscore_support(y, pred, labels=labels, average="macro", zero_division=0)
    weighted = skm.precision_recall_fscore_support(y, pred, labels=labels, average="weighted", zero_division=0)
    malignant_true = np.isin(y, MALIGNANT_INDICES)
    malignant_pred = np.isin(pred, MALIGNANT_INDICES)
    try:
        auc = float(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=labels))
    except ValueError:  # a class absent from y: AUC undefined
        auc = float("nan")
    return {
        "n": int(len(y)),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": float(np.mean([r[i] for i in labels if support[i] > 0])),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "weighted_precision": float(weighted[0]),
        "weighted_recall": float(weighted[1]),
        "weighted_f1": float(weighted[2]),
        "macro_auc": auc,
        "melanoma_recall": float(r[MEL]),
        "malignant_sensitivity": float((malignant_pred & malignant_true).sum() / max(malignant_true.sum(), 1)),
        "malignant_specificity": float((~malignant_pred & ~malignant_true).sum() / max((~malignant_true).sum(), 1)),
        "ece": expected_calibration_error(y, probs),
        "per_class": {
            c: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(CLASSES)
        },
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
    }


def fit_temperature(y: np.ndarray, logits: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T) (grid + refine)."""

    def nll(t: float) -> float:
        p = softmax(logits / t)
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())

    grid = np.exp(np.linspace(np.log(0.2), np.log(10.0), 200))
    best = min(grid, key=nll)
    fine = np.linspace(best * 0.95, best * 1.05, 101)
    return float(min(fine, key=nll))


def class_prior(labels: np.ndarray) -> np.ndarray:
    """The classes' shares of ``labels`` (train), each at least one image's worth, for ``operating_bias``."""
    return np.maximum(np.bincount(labels, minlength=len(CLASSES)), 1) / len(labels)


def operating_bias(prior: np.ndarray, tau: float, melanoma_bias: float) -> np.ndarray:
    """The additive logit bias of an operating point: -tau * log(prior), plus an extra push towards melanoma."""
    bias = -tau * np.log(prior)
    bias[MEL] += melanoma_bias
    return bias


def point_figures(y: np.ndarray, logits: np.ndarray, bias: np.ndarray) -> dict:
    """What the operating-point rule looks at, for the decisions argmax(logits + bias): accuracy, balanced
    accuracy (over the classes present), their sum, and melanoma recall (0 where ``y`` has no melanoma)."""
    pred = (logits + bias).argmax(axis=1)
    accuracy = float(np.mean(pred == y))
    balanced = float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))
    return {
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "accuracy_plus_balanced": accuracy + balanced,
        "melanoma_recall": float(np.mean(pred[y == MEL] == MEL)) if np.any(y == MEL) else 0.0,
    }


def choose_operating_point(
    y: np.ndarray, logits: np.ndarray, prior: np.ndarray, min_melanoma_recall: float = 0.70
) -> tuple[float, float, list[dict]]:
    """Pick (tau, melanoma_bias) for logits + operating_bias(prior, tau, melanoma_bias) on held-out data.

    tau > 0 moves decisions towards the rare classes, tau < 0 towards the common ones (a model trained with
    class weights may already lean to the rare ones); melanoma_bias >= 0 moves them towards melanoma only.

    The rule, for a screening aid: melanoma recall must stay >= ``min_melanoma_recall``; among those points,
    the best sum of accuracy and balanced accuracy (without any point keeping melanoma recall, the best sum
    overall). The sum weighs the common classes and the rare ones alike. An earlier rule took the highest
    balanced accuracy among points with accuracy >= 0.80: on the two-network ensemble's val predictions
    that bought 2.6 points of accuracy (0.781 to 0.807) with 5.6 points of balanced accuracy (0.698 to 0.642).
    Two scalars rather than 7 thresholds, because the rare classes have only a few dozen validation images.
    """
    rows = []
    for tau in np.round(np.arange(-1.0, 1.51, 0.05), 2):
        for melanoma_bias in np.round(np.arange(0.0, 2.01, 0.1), 2):
            figures = point_figures(y, logits, operating_bias(prior, tau, melanoma_bias))
            rows.append({"tau": float(tau), "melanoma_bias": float(melanoma_bias), **figures})

    def simplicity(r):
        return -abs(r["tau"]) - r["melanoma_bias"]

    safe = [r for r in rows if r["melanoma_recall"] >= min_melanoma_recall] or rows
    best = max(safe, key=lambda r: (round(r["accuracy"] + r["balanced_accuracy"], 6), simplicity(r)))
    return best["tau"], best["melanoma_bias"], rows


MIN_AUC_CASES = 5  # a melanoma AUC on fewer melanomas (or fewer other lesions) says little


def by_group(y: np.ndarray, probs: np.ndarray, groups, order=None) -> list[dict]:
    """The served decisions (argmax of ``probs``) within each value of ``groups`` (one per image): images,
    accuracy, melanoma recall and malignant sensitivity (:func:`rate`: hits, n and 95% interval), and the
    melanoma AUC (melanoma against every other lesion there) where the group holds at least ``MIN_AUC_CASES`` of
    each. Groups come in ``order`` where given, else largest first."""
    groups = np.asarray(groups, dtype=object)
    pred = probs.argmax(axis=1)
    is_mel, is_malignant = y == MEL, np.isin(y, MALIGNANT_INDICES)
    called_mel, called_malignant = pred == MEL, np.isin(pred, MALIGNANT_INDICES)
    present = set(groups)
    names = [g for g in order if g in present] if order else sorted(present, key=lambda g: (-np.sum(groups == g), g))
    rows = []
    for name in names:
        inside = groups == name
        enough = min(np.sum(inside & is_mel), np.sum(inside & ~is_mel)) >= MIN_AUC_CASES
        rows.append(
            {
                "group": name,
                "images": int(inside.sum()),
                "accuracy": float(np.mean(pred[inside] == y[inside])),
                "melanoma_recall": rate(called_mel, inside & is_mel),
                "malignant_sensitivity": rate(called_malignant, inside & is_malignant),
                "melanoma_auc": float(skm.roc_auc_score(is_mel[inside], probs[inside, MEL])) if enough else None,
            }
        )
    return rows
