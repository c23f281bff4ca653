"""From probabilities to the answer a technician sees: a label, "uncertain", or "unfit"."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from leukedge.edge_app.settings import UNCERTAIN_MESSAGE

LABEL, UNCERTAIN, UNFIT = "label", "uncertain", "unfit"


@dataclass(frozen=True)
class Decision:
    kind: str  # LABEL, UNCERTAIN or UNFIT
    label: str | None  # the reported label: only when kind == LABEL
    top_label: str | None  # the most probable class, whatever the confidence
    confidence: float | None
    probabilities: dict[str, float] | None

    @property
    def message(self) -> str:
        if self.kind == LABEL:
            return f"{self.label} ({self.confidence:.1%})"
        if self.kind == UNCERTAIN:
            return f"{UNCERTAIN_MESSAGE} (top {self.top_label} {self.confidence:.1%})"
        return "unfit frame: not classified"


def decide(probabilities: np.ndarray, labels: list[str], min_confidence: float) -> Decision:
    top = int(np.argmax(probabilities))
    confidence = float(probabilities[top])
    named = {label: round(float(p), 6) for label, p in zip(labels, probabilities)}
    if confidence >= min_confidence:
        return Decision(LABEL, labels[top], labels[top], confidence, named)
    return Decision(UNCERTAIN, None, labels[top], confidence, named)


def unfit() -> Decision:
    return Decision(UNFIT, None, None, None, None)


class Smoother:
    """Mean probabilities over the last `window` classified frames (live mode)."""

    def __init__(self, window: int):
        if window < 1:
            raise ValueError(f"smoothing window must be >= 1, got {window}")
        self._recent: deque[np.ndarray] = deque(maxlen=window)

    def update(self, probabilities: np.ndarray) -> np.ndarray:
        self._recent.append(np.asarray(probabilities, dtype=np.float32))
        if len(self._recent) == 1:
            return self._recent[0]
        return np.mean(self._recent, axis=0)

    def reset(self) -> None:
        self._recent.clear()
