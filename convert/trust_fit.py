"""Fit the trust parameters on the training lab's splits: numpy only, no TensorFlow.

- Out-of-distribution statistics: class means and a shared (Ledoit-Wolf shrunk) within-class
  covariance of the pooled backbone features, fit on the TRAIN split and kept as a whitening
  projection onto its top `dims` principal directions. The score is the squared Mahalanobis
  distance to the nearest class mean in that subspace (Lee et al., 2018), computed in the graph.
- Temperature scaling (Guo et al., 2017): one scalar T minimising the negative log-likelihood of
  the VAL split's logits.
- Split conformal prediction, LAC score 1 - p(true label) (Sadinle et al., 2019), calibrated on
  the VAL split (disjoint from training) with the finite-sample quantile.

Thresholds themselves are taken later from each converted variant's own outputs
(`conformal_quantile`), so an int8 model carries the thresholds of what it computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_COVERAGE = 0.99  # conformal target coverage: the prediction set holds the true label
# Share of validation frames the OOD threshold keeps. Chosen on the VAL split alone, under the 76
# shift conditions of `edge-bench robustness` (scripts/choose_ood_retention.py on the released
# int8 model): the largest of the candidates 0.99 ... 0.90 at which no shift and severity had more
# than 3% of frames answered wrong (0.99 allowed up to 16.6%, JPEG q10). The price is clean
# frames: about 5% of them are referred (docs/trust.md).
DEFAULT_OOD_RETENTION = 0.945


class FitError(ValueError):
    """Too few or unusable images to fit a trust parameter; the message names what and how many."""


def conformal_quantile(scores: np.ndarray, level: float, what: str = "scores") -> float:
    """The finite-sample split-conformal quantile: the ceil((n+1) * level)-th smallest score.

    Under exchangeability a new score is at most this value with probability >= level
    (Vovk et al., 2005; Angelopoulos & Bates, 2021). Needs n >= level / (1 - level) scores,
    e.g. 99 for 0.99: with fewer, no finite threshold gives the guarantee.
    """
    scores = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = len(scores)
    if not 0.0 < level < 1.0:
        raise FitError(f"{what}: level {level} must be between 0 and 1")
    rank = math.ceil(
        (n + 1) * level - 1e-9
    )  # 1-based; the epsilon absorbs float noise in (n+1)*level
    if n == 0 or rank > n:
        needed = math.ceil(level / (1.0 - level) - 1e-9)
        raise FitError(
            f"{what}: {n} image(s) cannot give a {level:.3g} guarantee (need at least "
            f"{needed}): use more validation images or a lower level"
        )
    return float(scores[rank - 1])


def range_threshold(val_scores: np.ndarray, retention: float, threshold: float) -> float:
    """The float OOD threshold the int8 branch's ranges are set from (`widen_ood_ranges`), given
    the `threshold` in use at `retention`.

    It is the threshold at the default retention, or `threshold` when `retention` is higher (the
    ranges must reach past the threshold in use), so a conversion at a lower retention, as
    scripts/choose_ood_retention.py may pick from a default conversion's int8 scores, gets the
    same int8 scores and only a new threshold: the choice holds in the file it was made for. A
    val split too small for the default retention keeps `threshold`.
    """
    if retention >= DEFAULT_OOD_RETENTION:
        return threshold
    try:  # a quantile at a higher level, so never below `threshold`
        return conformal_quantile(val_scores, DEFAULT_OOD_RETENTION)
    except FitError:
        return threshold


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probabilities: np.ndarray, y: np.ndarray) -> float:
    p = np.asarray(probabilities, dtype=np.float64)[np.arange(len(y)), y]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """T > 0 minimising the NLL of softmax(logits / T): a log-spaced grid, then a golden search."""
    if len(y) == 0:
        raise FitError("temperature: no validation images")
    objective = lambda log_t: nll(softmax(logits, math.exp(log_t)), y)  # noqa: E731
    grid = np.linspace(math.log(0.05), math.log(20.0), 200)
    values = [objective(g) for g in grid]
    best = int(np.argmin(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if objective(a) <= objective(b):
            hi = b
        else:
            lo = a
    return float(math.exp((lo + hi) / 2))


def ledoit_wolf(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrinkage of the covariance of already-centred rows towards mu * I.

    Returns (covariance, shrinkage). The closed form of Ledoit & Wolf (2004), as in
    scikit-learn's `ledoit_wolf`, for a covariance that must be inverted with n not >> d.
    """
    x = np.asarray(centred, dtype=np.float64)
    n, d = x.shape
    sample = x.T @ x / n
    mu = float(np.trace(sample)) / d
    delta = float(((sample - mu * np.eye(d)) ** 2).sum()) / d
    x2 = x**2
    beta = float(((x2.T @ x2) / n - sample**2).sum()) / (d * n)
    shrinkage = 0.0 if delta == 0 else min(beta, delta) / delta
    return (1 - shrinkage) * sample + shrinkage * mu * np.eye(d), shrinkage


@dataclass(frozen=True)
class MahalanobisFit:
    """min_c || W (z - m_c) ||^2 with W (dims x features): whitened top principal directions."""

    projection: np.ndarray  # (dims, features)
    projected_means: np.ndarray  # (classes, dims): W m_c
    shrinkage: float
    explained: float  # share of the shrunk within-class variance the kept directions hold
    n_fit: int

    @property
    def dims(self) -> int:
        return self.projection.shape[0]

    def scores(self, features: np.ndarray) -> np.ndarray:
        y = np.asarray(features, dtype=np.float64) @ self.projection.T
        distances = ((y[:, None, :] - self.projected_means[None]) ** 2).sum(axis=2)
        return distances.min(axis=1)


def check_counts(labels: list[str], y: np.ndarray, split: str, minimum: int = 1) -> None:
    counts = np.bincount(y, minlength=len(labels))
    for label, count in zip(labels, counts):
        if count < minimum:
            raise FitError(
                f"class {label!r} has {count} image(s) in the {split} split; the trust "
                f"parameters need at least {minimum}: re-split with more {label} images"
            )


MAX_DIMS = 256  # default subspace: see docs/trust.md for the comparison that chose it


def auto_dims(n_train: int, n_classes: int, features: int) -> int:
    """As many directions as the training images support (half their degrees of freedom), at most
    MAX_DIMS: on the real model more directions flagged more unlike frames at the same retention."""
    return max(1, min(MAX_DIMS, features, (n_train - n_classes) // 2))


def fit_mahalanobis(
    features: np.ndarray, y: np.ndarray, labels: list[str], dims: int | None = None
) -> MahalanobisFit:
    """Class means and a shared shrunk covariance from the TRAIN features, whitened to `dims`
    (default `auto_dims`)."""
    features = np.asarray(features, dtype=np.float64)
    n, d = features.shape
    check_counts(labels, y, "train", minimum=2)
    dims = min(dims or auto_dims(n, len(labels), d), d)
    # A covariance from n - C degrees of freedom has at most n - C non-trivial directions; asking
    # for more would whiten noise the shrinkage made up. Twice the dimensions keeps it honest.
    needed = 2 * dims + len(labels)
    if n < needed:
        raise FitError(
            f"the train split has {n} image(s) for a {dims}-dimensional OOD subspace "
            f"(need at least {needed}): use more training images or --ood-dims "
            f"{max(1, (n - len(labels)) // 2)}"
        )
    means = np.stack([features[y == c].mean(axis=0) for c in range(len(labels))])
    centred = features - means[y]
    covariance, shrinkage = ledoit_wolf(centred)
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1][:dims]
    projection = (vectors[:, order] / np.sqrt(values[order])).T
    return MahalanobisFit(
        projection=projection.astype(np.float32),
        projected_means=(means @ projection.T).astype(np.float32),
        shrinkage=shrinkage,
        explained=float(values[order].sum() / values.sum()),
        n_fit=n,
    )


def expected_calibration_error(probabilities: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with `bins` equal-width confidence bins (Guo et al., 2017)."""
    p = np.asarray(probabilities, dtype=np.float64)
    confidence, predicted = p.max(axis=1), p.argmax(axis=1)
    correct = (predicted == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        member = index == b
        if member.any():
            total += member.mean() * abs(correct[member].mean() - confidence[member].mean())
    return float(total)


def brier(probabilities: np.ndarray, y: np.ndarray) -> float:
    p = np.asarray(probabilities, dtype=np.float64)
    onehot = np.eye(p.shape[1])[y]
    return float(((p - onehot) ** 2).sum(axis=1).mean())
