"""The model card's plots: the confusion matrix, ROC curves and training curves, as PNG files (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from ml.serve.labels import CLASSES  # noqa: E402


def plot_confusion(matrix: list[list[int]], out: Path) -> None:
    m = np.asarray(matrix, float)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            ax.text(
                j,
                i,
                f"{int(m[i, j])}",
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(CLASSES)), CLASSES)
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix, test part (colour: row-normalised)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_roc(y: np.ndarray, probs: np.ndarray, per_class: dict, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, c in enumerate(CLASSES):
        fpr, tpr, _ = roc_curve(y == i, probs[:, i])
        ax.plot(fpr, tpr, label=f"{c} (AUC {per_class[c]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("One-vs-rest ROC, test part")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_history(histories: list[list[dict]], out: Path) -> None:
    """Loss and val metrics per epoch, one line style per trained network (several for an ensemble)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for k, (history, style) in enumerate(zip(histories, ("-", "--", ":", "-."), strict=False)):
        tag = f" (member {k})" if len(histories) > 1 else ""
        epochs = [h["epoch"] for h in history]
        a.plot(epochs, [h["train_loss"] for h in history], style, color="C0", label=f"train loss (class-weighted){tag}")
        a.plot(epochs, [h["val_loss"] for h in history], style, color="C1", label=f"val loss{tag}")
        for colour, key in enumerate(("accuracy", "balanced_accuracy", "macro_auc", "melanoma_recall")):
            b.plot(epochs, [h[key] for h in history], style, color=f"C{colour + 2}", label=f"val {key}{tag}")
    a.set_xlabel("epoch")
    a.legend(fontsize="small")
    b.set_xlabel("epoch")
    b.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
