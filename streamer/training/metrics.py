"""Evaluation metrics for both heads (sklearn), as plain JSON-ready dicts."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)


def intent_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, labels: tuple[str, ...]
) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-label precision/recall/F1/support."""
    idx = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=idx, average="macro", zero_division=0)),
        "per_label": {
            labels[i]: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i in idx
        },
    }


def choose_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximizing F1 (decide duplicate when score >= threshold).

    Returned halfway between the best cut's score and the next lower score, so no valid
    example sits exactly on the threshold (float noise would flip it).
    """
    if y_true.min() == y_true.max():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))
    if best == 0:
        return float(thresholds[0])
    return float((thresholds[best] + thresholds[best - 1]) / 2)


def duplicate_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """F1, precision, recall at `threshold` plus threshold-free ROC-AUC."""
    y_pred = (scores >= threshold).astype(int)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", zero_division=0)
    auc = float(roc_auc_score(y_true, scores)) if y_true.min() != y_true.max() else float("nan")
    return {
        "n": len(y_true),
        "positives": int(np.sum(y_true)),
        "f1": float(f),
        "precision": float(p),
        "recall": float(r),
        "roc_auc": auc,
    }
