"""From a model's outputs to the answer a technician sees: a label, "uncertain", "unknown" or "unfit".

One function, `decide`, in one order of precedence:
1. unfit: the frame failed the quality gate; the model's outputs are not used.
2. unknown: the OOD score is above the model's threshold: the frame is not like the images the
   model was trained on, whatever the probabilities say.
3. label: the conformal prediction set holds exactly one label (the model's trust parameters),
   or, with an explicit `--min-confidence` override or an older model without trust
   parameters, the top probability reaches that confidence.
4. uncertain: anything else (a set of two or more labels, or none).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from leukedge.edge_app.settings import UNCERTAIN_MESSAGE, UNKNOWN_MESSAGE
from leukedge.edge_app.trust import TrustParams

LABEL, UNCERTAIN, UNKNOWN, UNFIT = "label", "uncertain", "unknown", "unfit"
DECISION_KINDS = (LABEL, UNCERTAIN, UNKNOWN, UNFIT)
LEGACY_MIN_CONFIDENCE = 0.80  # the rule of models released before the trust parameters


@dataclass(frozen=True)
class DecisionRule:
    """Which rule decides: the model's trust parameters, an explicit override, or the legacy rule."""

    trust: TrustParams | None
    min_confidence: float | None  # set: the top-probability rule instead of the conformal set

    @classmethod
    def for_model(
        cls, trust: TrustParams | None, min_confidence: float | None = None
    ) -> DecisionRule:
        if trust is None and min_confidence is None:
            min_confidence = LEGACY_MIN_CONFIDENCE
        return cls(trust, min_confidence)

    @property
    def legacy(self) -> bool:
        return self.trust is None

    @property
    def text(self) -> str:
        """Short name stored with every frame (decision_rule)."""
        if self.trust is None:
            if self.min_confidence == LEGACY_MIN_CONFIDENCE:
                return f"legacy min-confidence {self.min_confidence:.2f} (model has no trust parameters)"
            return f"min-confidence {self.min_confidence:.2f} (override; model has no trust parameters)"
        ood = f"ood-{self.trust.ood.method}"
        if self.min_confidence is not None:
            return f"min-confidence {self.min_confidence:.2f} (override)+{ood}"
        conformal = self.trust.conformal
        return f"conformal-{conformal.method}@{conformal.target_coverage:g}+{ood}"


@dataclass(frozen=True)
class Decision:
    kind: str  # LABEL, UNCERTAIN, UNKNOWN or UNFIT
    label: str | None  # the reported label: only when kind == LABEL
    top_label: str | None  # the most probable class, whatever the decision
    confidence: float | None
    probabilities: dict[str, float] | None
    ood_score: float | None = None
    prediction_set: list[str] | None = None  # conformal set (trust rule only)
    rule: str = ""
    ood_threshold: float | None = None  # the rule's: above it, unknown (trust rule only)

    @property
    def message(self) -> str:
        if self.kind == LABEL:
            return f"{self.label} ({self.confidence:.1%})"
        if self.kind == UNCERTAIN:
            among = (
                f"; could be {' or '.join(self.prediction_set)}"
                if self.prediction_set and len(self.prediction_set) > 1
                else ""
            )
            return f"{UNCERTAIN_MESSAGE} (top {self.top_label} {self.confidence:.1%}{among})"
        if self.kind == UNKNOWN:
            return f"unknown: {UNKNOWN_MESSAGE}"
        return "unfit frame: not classified"


def decide(
    probabilities: np.ndarray | None,
    labels: list[str],
    rule: DecisionRule,
    ood_score: float | None = None,
    fit: bool = True,
) -> Decision:
    """The decision for one frame (see the module doc for the order)."""
    if not fit or probabilities is None:
        return Decision(UNFIT, None, None, None, None, rule=rule.text)
    top = int(np.argmax(probabilities))
    confidence = float(probabilities[top])
    named = {label: round(float(p), 6) for label, p in zip(labels, probabilities)}
    common = dict(
        top_label=labels[top],
        confidence=confidence,
        probabilities=named,
        ood_score=None if ood_score is None else round(float(ood_score), 6),
        rule=rule.text,
    )
    prediction_set = None
    if rule.trust is not None:
        if ood_score is None:
            raise ValueError("a model with trust parameters must give an OOD score")
        common["ood_threshold"] = round(float(rule.trust.ood.threshold), 6)
        prediction_set = [labels[i] for i in rule.trust.conformal.prediction_set(probabilities)]
        if rule.trust.ood.is_unknown(ood_score):
            return Decision(UNKNOWN, None, prediction_set=prediction_set, **common)
    if rule.min_confidence is not None:
        answered = confidence >= rule.min_confidence
    else:
        answered = len(prediction_set) == 1
    if answered:
        return Decision(LABEL, labels[top], prediction_set=prediction_set, **common)
    return Decision(UNCERTAIN, None, prediction_set=prediction_set, **common)


def unfit(rule: DecisionRule | None = None) -> Decision:
    return Decision(UNFIT, None, None, None, None, rule=rule.text if rule else "")


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
