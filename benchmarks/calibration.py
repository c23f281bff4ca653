"""Calibration, conformal and out-of-distribution metrics: numpy only (no TensorFlow, no model).

Every function takes arrays: `probabilities` (n, classes), `y` true class indices (n,), OOD
`scores` (larger = less like the training images). `edge-bench trust` and the robustness suite
call these; tests pin them with small hand-computed cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ECE_BINS = 15  # issue 12: 15 equal-width confidence bins


def _checked(probabilities, y) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(
            f"need probabilities (n, classes) and labels (n,), got {p.shape} and {y.shape}"
        )
    return p, y


def reliability_bins(probabilities, y, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin of top-1 confidence: its edges, count, mean confidence and accuracy.

    Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 goes to bin 0.
    """
    p, y = _checked(probabilities, y)
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        members = index == i
        n = int(members.sum())
        out.append(
            {
                "lower": i / bins,
                "upper": (i + 1) / bins,
                "n": n,
                "confidence": float(confidence[members].mean()) if n else None,
                "accuracy": float(correct[members].mean()) if n else None,
            }
        )
    return out


def expected_calibration_error(probabilities, y, bins: int = ECE_BINS) -> float:
    """ECE: sum over bins of (bin share) x |accuracy - mean confidence| (Guo et al., 2017)."""
    p, _ = _checked(probabilities, y)
    n = p.shape[0]
    if n == 0:
        return float("nan")
    return float(
        sum(
            b["n"] / n * abs(b["accuracy"] - b["confidence"])
            for b in reliability_bins(probabilities, y, bins)
            if b["n"]
        )
    )


def negative_log_likelihood(probabilities, y, floor: float = 1e-12) -> float:
    """Mean -log p(true class); probabilities are floored at `floor` so a hard 0 stays finite."""
    p, y = _checked(probabilities, y)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], floor, 1.0)).mean())


def brier_score(probabilities, y) -> float:
    """Multi-class Brier: mean over frames of sum over classes (p_k - [k == y])^2 (0 best, 2 worst)."""
    p, y = _checked(probabilities, y)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def lac_sets(probabilities, threshold: float) -> np.ndarray:
    """Boolean (n, classes) membership of LAC prediction sets: label k is in when p_k >= 1 - threshold.

    The same rule as `edge_app.trust.ConformalRule.prediction_set`, vectorised.
    """
    return np.asarray(probabilities, dtype=np.float64) >= 1.0 - threshold


def conformal_summary(sets, y, labels: Sequence[str]) -> dict:
    """Empirical coverage (true label in the set) and mean set size, overall and per true class."""
    sets = np.asarray(sets, dtype=bool)
    y = np.asarray(y, dtype=np.int64)
    covered = sets[np.arange(len(y)), y]
    size = sets.sum(axis=1)
    per_class = {}
    for index, label in enumerate(labels):
        members = y == index
        if members.any():
            per_class[label] = {
                "n": int(members.sum()),
                "coverage": float(covered[members].mean()),
                "mean_set_size": float(size[members].mean()),
            }
    return {
        "n": int(len(y)),
        "coverage": float(covered.mean()) if len(y) else None,
        "mean_set_size": float(size.mean()) if len(y) else None,
        "singleton_share": float((size == 1).mean()) if len(y) else None,
        "per_class": per_class,
    }


def risk_coverage(confidence, correct) -> dict:
    """Accuracy of the answered frames against the share answered, answering the most confident first.

    Point k answers the k most confident frames (ties kept together, so a point never splits
    frames of equal confidence). Returns coverage and accuracy arrays (coverage ascending) and
    the area under the accuracy-coverage curve.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(confidence)
    if n == 0:
        return {"coverage": [], "accuracy": [], "area": None}
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    ranked = confidence[order]
    # Keep only the last index of each run of equal confidences.
    ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    coverage = (ends + 1) / n
    accuracy = hits[ends] / (ends + 1)
    area = float(np.sum(np.diff(np.concatenate([[0.0], coverage])) * accuracy))
    return {"coverage": coverage.tolist(), "accuracy": accuracy.tolist(), "area": area}


def auroc(in_scores, out_scores) -> float | None:
    """P(score of an out-of-distribution frame > score of an in-distribution one), ties count half.

    1.0: the score separates them perfectly; 0.5: no better than chance. Mann-Whitney U form.
    """
    a = np.asarray(in_scores, dtype=np.float64)
    b = np.asarray(out_scores, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return None
    values = np.concatenate([a, b])
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    # Average the ranks of ties.
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.zeros(len(unique))
    np.add.at(sums, inverse, ranks)
    ranks = (sums / counts)[inverse]
    u = ranks[len(a) :].sum() - len(b) * (len(b) + 1) / 2
    return float(u / (len(a) * len(b)))


def fpr_at_tpr(in_scores, out_scores, tpr: float = 0.95) -> float | None:
    """Share of out-of-distribution frames still accepted when the threshold accepts `tpr` of the
    in-distribution frames (accepted: score <= threshold). Lower is better; 0 is perfect."""
    a = np.sort(np.asarray(in_scores, dtype=np.float64))
    b = np.asarray(out_scores, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return None
    # The smallest threshold that accepts at least `tpr` of the in-distribution frames.
    threshold = a[int(np.ceil(tpr * len(a))) - 1]
    return float((b <= threshold).mean())
