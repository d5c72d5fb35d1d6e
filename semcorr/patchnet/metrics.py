"""FPR95 and ROC curves for patch-pair scores (larger score = more likely a match)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1);
    pairs with tied scores enter together."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        raise ValueError("ROC needs both matching and non-matching pairs")
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked) != 0), len(ranked) - 1]
    tp, fp = np.cumsum(hits)[last_of_tie], np.cumsum(~hits)[last_of_tie]
    return np.r_[0.0, fp / negatives], np.r_[0.0, tp / positives]


def fpr_at_recall(scores: np.ndarray, labels: np.ndarray, recall: float = 0.95) -> float:
    """The false positive rate at the first threshold whose recall reaches `recall` (FPR95), in percent."""
    fpr, tpr = roc_curve(scores, labels)
    return 100.0 * float(fpr[np.argmax(tpr >= recall - 1e-12)])


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids)."""
    fpr, tpr = roc_curve(scores, labels)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str = "ROC") -> Path:
    """One ROC curve per name (FPR95 in the legend), the 95% recall line dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 5), dpi=120)
    for name, (scores, labels) in curves.items():
        fpr, tpr = roc_curve(scores, labels)
        axes.plot(fpr, tpr, label=f"{name} (FPR95 {fpr_at_recall(scores, labels):.1f}%)")
    axes.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    axes.set(xlabel="false positive rate", ylabel="true positive rate (recall)", xlim=(0, 1), ylim=(0, 1.01),
             title=title)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)
    return Path(path)
