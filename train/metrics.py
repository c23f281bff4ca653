"""Classification metrics from labels and predictions, in plain numpy (no TF, no sklearn).

Every stage that reports accuracy (train, convert's verification, edge-bench) uses this, so
the numbers in metrics.json, manifest.json and the benchmark table mean the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted averages, confusion."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    true_positive = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    precision = np.divide(
        true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0
    )
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    present = support > 0
    weights = support / support.sum() if support.sum() else support
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "per_class": per_class,
        "macro": {
            name: float(values[present].mean()) if present.any() else 0.0
            for name, values in (("precision", precision), ("recall", recall), ("f1", f1))
        },
        "weighted": {
            name: float((values * weights).sum())
            for name, values in (("precision", precision), ("recall", recall), ("f1", f1))
        },
        "confusion_matrix": matrix.tolist(),
        "labels": list(labels),
    }
