"""One function per metric, restated from the definitions the official evaluation code uses (scikit-learn's).

All take 0/1 (or class-index) numpy arrays. Division by zero gives 0 where scikit-learn's
``zero_division`` default (or ``zero_division=0``) gives 0; AUC of a single-valued target is NaN.
"""
from __future__ import annotations

import numpy as np

from ..metrics import balanced_accuracy as _balanced_accuracy
from ..metrics import roc_auc

__all__ = ["accuracy", "auc", "balanced_accuracy", "find_threshold", "multilabel_macro_auc", "precision",
           "recall", "weighted_f1"]

THRESHOLDS = np.linspace(0, 1, 100)  # the official grid of candidate thresholds


def auc(y_true, y_score) -> float:
    """Area under the ROC curve (ties counted half); NaN when ``y_true`` holds one value only."""
    y = np.asarray(y_true).astype(int)
    if np.unique(y).size < 2:
        return float("nan")
    return roc_auc(y == 1, y_score)


def multilabel_macro_auc(y_true, y_score) -> float:
    """Mean of the per-column AUCs of [N, K] targets and scores; NaN if any column is single-valued
    (scikit-learn raises there, and the official code records NaN)."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    values = [auc(y_true[:, k], y_score[:, k]) for k in range(y_true.shape[1])]
    return float("nan") if any(np.isnan(values)) else float(np.mean(values))


def accuracy(y_true, y_pred) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean recall over the classes present in ``y_true``."""
    return _balanced_accuracy(y_true, y_pred)


def _binary_counts(y_true, y_pred) -> tuple[int, int, int, int]:
    t, p = np.asarray(y_true).astype(int) == 1, np.asarray(y_pred).astype(int) == 1
    return int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum()), int((~t & ~p).sum())  # tp fp fn tn


def recall(y_true, y_pred) -> float:
    """Recall of the positive class (label 1); 0 when there are no positives."""
    tp, _, fn, _ = _binary_counts(y_true, y_pred)
    return tp / (tp + fn) if tp + fn else 0.0


def precision(y_true, y_pred) -> float:
    """Precision of the positive class (label 1); 0 when nothing is predicted positive."""
    tp, fp, _, _ = _binary_counts(y_true, y_pred)
    return tp / (tp + fp) if tp + fp else 0.0


def weighted_f1(y_true, y_pred) -> float:
    """F1 per label (over the labels in either array), averaged with the true counts as weights."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.union1d(y_true, y_pred)
    support = np.array([(y_true == c).sum() for c in labels], dtype=float)
    if support.sum() == 0:
        return 0.0
    f1 = []
    for c in labels:
        tp = float(((y_true == c) & (y_pred == c)).sum())
        denominator = 2 * tp + float(((y_true != c) & (y_pred == c)).sum()) + float(((y_true == c) & (y_pred != c)).sum())
        f1.append(2 * tp / denominator if denominator else 0.0)
    return float(np.dot(f1, support) / support.sum())


def find_threshold(y_true, y_score) -> float:
    """The official threshold choice: of 100 thresholds evenly spaced on [0, 1], the one whose ROC point
    (false-positive rate, true-positive rate) of ``y_score > threshold`` is closest to (0, 1); of equally
    close ones the largest. NaN when ``y_true`` holds one value only (no ROC point exists)."""
    y = np.asarray(y_true).astype(int) == 1
    s = np.asarray(y_score, dtype=np.float64)
    if y.all() or not y.any():
        return float("nan")
    pred = s[None, :] > THRESHOLDS[:, None]  # [100, N]
    tp = (pred & y).sum(1)
    fp = (pred & ~y).sum(1)
    tpr = tp / y.sum()
    fpr = fp / (~y).sum()
    distance = np.sqrt((1 - tpr) ** 2 + fpr ** 2)
    best = np.flatnonzero(distance == distance.min())[-1]
    return float(THRESHOLDS[best])
