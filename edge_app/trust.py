"""The trust contract a model carries: calibration, conformal referral and out-of-distribution rule.

`edge-convert` fits these on the training lab's splits and writes them twice: as the associated
file `TRUST_FILE` inside the `.tflite` metadata (so Android and the Pi read them from the model
itself) and under the variant's `trust` key in `manifest.json`. The runtime applies exactly what
the model says. This module is the one owner of the format; nothing else parses it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

TRUST_FILE = "leukedge_trust.json"  # associated file name inside the TFLite metadata
TRUST_SCHEMA = 1
PROBABILITIES_OUTPUT = "probabilities"  # calibrated softmax, one value per label
OOD_OUTPUT = "ood_score"  # one value: larger is less like the training images


class TrustError(ValueError):
    """Trust parameters that are missing, malformed or do not fit the model."""


@dataclass(frozen=True)
class ConformalRule:
    """Split conformal prediction (LAC): the set holds every label whose calibrated probability is
    at least 1 - threshold. One label: an answer; more (or none): refer."""

    method: str  # "lac"
    target_coverage: float  # e.g. 0.99: the set holds the true label this often (exchangeable data)
    threshold: float  # conformal quantile of the score 1 - p(true label)
    n_calibration: int
    split: str  # which split of the training lab calibrated it, e.g. "val"

    def prediction_set(self, probabilities) -> list[int]:
        return [i for i, p in enumerate(probabilities) if float(p) >= 1.0 - self.threshold]


@dataclass(frozen=True)
class OodRule:
    """Out-of-distribution score computed in the graph (output `OOD_OUTPUT`); frames whose score
    exceeds `threshold` are `unknown`."""

    method: str  # e.g. "mahalanobis"
    feature: str  # which features it is computed on, e.g. "global average pool (1280)"
    threshold: float
    retention: float  # share of the threshold split's frames at or below the threshold, e.g. 0.97
    n_fit: int
    fit_splits: tuple[str, ...]
    threshold_split: str
    n_threshold: int

    def is_unknown(self, score: float) -> bool:
        return float(score) > self.threshold


@dataclass(frozen=True)
class TrustParams:
    temperature: float  # already applied inside the graph; recorded for reference
    conformal: ConformalRule
    ood: OodRule
    schema: int = TRUST_SCHEMA

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict, source: str = "trust parameters") -> TrustParams:
        def need(mapping: dict, key: str, where: str):
            if not isinstance(mapping, dict) or key not in mapping:
                raise TrustError(f"{source}: missing field {where}{key}")
            return mapping[key]

        schema = need(data, "schema", "")
        if schema != TRUST_SCHEMA:
            raise TrustError(
                f"{source}: trust schema {schema!r} is not supported (expected "
                f"{TRUST_SCHEMA}): update LeukEdge"
            )
        conformal, ood = need(data, "conformal", ""), need(data, "ood", "")
        try:
            return cls(
                temperature=float(need(data, "temperature", "")),
                conformal=ConformalRule(
                    **{
                        k: need(conformal, k, "conformal.")
                        for k in ConformalRule.__dataclass_fields__
                    }
                ),
                ood=OodRule(
                    **{
                        k: need(ood, k, "ood.")
                        for k in OodRule.__dataclass_fields__
                        if k != "fit_splits"
                    },
                    fit_splits=tuple(need(ood, "fit_splits", "ood.")),
                ),
                schema=schema,
            )
        except (TypeError, ValueError) as error:
            if isinstance(error, TrustError):
                raise
            raise TrustError(f"{source}: malformed trust parameters ({error})") from None

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "trust parameters") -> TrustParams:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise TrustError(f"{source}: not valid JSON ({error})") from None
        return cls.from_dict(data, source)
