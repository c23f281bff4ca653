"""From frames to one sample result: the rule a clinician's sample decision rests on.

A sample is one slide of one patient, seen as several fields (frames). Each frame was decided on
its own (`edge_app.decision`): `label` (answered), `uncertain` (refer), `unknown` (out of
distribution) or `unfit` (failed the quality gate). `SampleRule.combine()` turns them into one
sample result, in this order:

1. **Enough fit fields.** Fewer than `min_fit_fields` frames that passed the quality gate:
   `uncertain: refer` (too few fields to say anything).
2. **Unfamiliar images.** More than `max_unknown_share` of the fit fields are `unknown`: the slide
   does not look like the training lab's: `unknown: refer`. Models without an OOD output (the
   legacy rule) never mark a frame unknown, so this step then never fires.
3. **Combine the answered fields.** Over the answered fields the log-probabilities are summed
   per class, each floored at `probability_floor` so that one confident wrong field costs at most
   log(floor) and cannot veto the others alone. The class with the largest sum is the sample's
   candidate; its softmax share is the sample confidence. Uncertain fields are left out
   (`combine_uncertain`): on the validation split, foreign frames were mostly `uncertain`, and
   their flat probabilities pulled clean samples away from their class.
4. **Enough answers, and agreement.** Fewer than `min_answered` answered fields, answered fields
   fewer than `min_answered_share` of the fit ones, or fewer than `min_agreement` of the answered
   fields voting for the candidate: `uncertain: refer`. Otherwise the sample is answered with the
   candidate.

The parameters were chosen on the validation split and measured on the test split by simulation
(`edge-bench samples`, docs/review.md). Nothing here needs TensorFlow.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

LABEL, UNCERTAIN, UNKNOWN, UNFIT = "label", "uncertain", "unknown", "unfit"
SAMPLE_MESSAGES = {UNCERTAIN: "uncertain: refer", UNKNOWN: "unknown: refer"}


@dataclass(frozen=True)
class SampleResult:
    decision: str  # LABEL (answered), UNCERTAIN or UNKNOWN (both: refer to an expert)
    label: str | None  # the answer; only when decision == LABEL
    candidate: str | None  # the most probable class of the combined fields, whatever the decision
    confidence: float | None  # softmax share of the candidate in the summed log-probabilities
    reason: str  # one line: why this decision
    n_frames: int
    n_fit: int
    n_answered: int
    n_uncertain: int
    n_unknown: int
    n_unfit: int
    votes: dict[str, int] = field(default_factory=dict)  # answered fields per label
    driving_frames: tuple[int, ...] = ()  # ids of the answered fields that voted for the answer
    rule: str = ""

    @property
    def message(self) -> str:
        if self.decision == LABEL:
            # Fields are not independent, so a summed-log-probability share near 1 overstates it.
            shown = "> 99.9%" if self.confidence > 0.999 else f"{self.confidence:.1%}"
            return f"{self.label} ({shown})"
        return SAMPLE_MESSAGES[self.decision]

    @property
    def referred(self) -> bool:
        return self.decision != LABEL

    def as_dict(self) -> dict:
        data = asdict(self)
        data["driving_frames"] = list(self.driving_frames)
        data["message"] = self.message
        return data


@dataclass(frozen=True)
class SampleRule:
    """The sample rule's parameters (see the module docstring for what each one does)."""

    min_fit_fields: int = 3
    max_unknown_share: float = 0.25
    probability_floor: float = 1e-3
    min_answered: int = 2
    min_answered_share: float = 0.5
    min_agreement: float = 0.75
    combine_uncertain: bool = False

    def describe(self) -> str:
        return (
            f"min {self.min_fit_fields} fit fields; unknown > {self.max_unknown_share:.0%} of fit "
            f"-> unknown: refer; summed log-probabilities (floor {self.probability_floor:g}); "
            f">= {self.min_answered} answered fields, >= {self.min_answered_share:.0%} of the fit "
            f"ones, >= {self.min_agreement:.0%} of them agreeing"
        )

    def combine(self, frames: Iterable[Mapping]) -> SampleResult:
        """One sample result from its frames: mappings with `decision`, `probabilities` (a dict
        or its JSON text), and optionally `id`, `label` and `confidence` (stored rows work as is)."""
        frames = list(frames)
        kinds = Counter(str(frame["decision"]) for frame in frames)
        n_fit = len(frames) - kinds[UNFIT]
        counts = dict(
            n_frames=len(frames),
            n_fit=n_fit,
            n_answered=kinds[LABEL],
            n_uncertain=kinds[UNCERTAIN],
            n_unknown=kinds[UNKNOWN],
            n_unfit=kinds[UNFIT],
        )

        # Votes are counted for every result, referrals too, so a report's per-class counts
        # agree with its field decisions.
        answered = [frame for frame in frames if frame["decision"] == LABEL]
        votes = Counter(str(frame["label"]) for frame in answered)

        def result(
            decision, reason, label=None, candidate=None, confidence=None, driving=()
        ) -> SampleResult:
            return SampleResult(
                decision,
                label,
                candidate,
                confidence,
                reason,
                **counts,
                votes=dict(votes),
                driving_frames=tuple(driving),
                rule=self.describe(),
            )

        if n_fit < self.min_fit_fields:
            return result(
                UNCERTAIN,
                f"too few fit fields: {n_fit} of the {self.min_fit_fields} needed",
            )
        if kinds[UNKNOWN] > self.max_unknown_share * n_fit:
            return result(
                UNKNOWN,
                f"{kinds[UNKNOWN]} of {n_fit} fit fields look unlike the training "
                "images (out of distribution)",
            )
        kept = (LABEL, UNCERTAIN) if self.combine_uncertain else (LABEL,)
        known = [frame for frame in frames if frame["decision"] in kept]
        totals: dict[str, float] = {}
        for frame in known:
            for name, p in _probabilities(frame).items():
                totals[name] = totals.get(name, 0.0) + math.log(
                    max(float(p), self.probability_floor)
                )
        if not totals:
            return result(UNCERTAIN, "no field carries class probabilities")
        candidate = max(totals, key=totals.get)
        top = totals[candidate]
        confidence = 1.0 / sum(math.exp(value - top) for value in totals.values())
        if len(answered) < self.min_answered:
            return result(
                UNCERTAIN,
                f"too few answered fields: {len(answered)} of the {self.min_answered} needed",
                candidate=candidate,
                confidence=confidence,
            )
        if len(answered) < self.min_answered_share * n_fit:
            return result(
                UNCERTAIN,
                f"too many uncertain fields: {len(answered)} of {n_fit} fit "
                f"fields answered, {self.min_answered_share:.0%} needed",
                candidate=candidate,
                confidence=confidence,
            )
        agreement = votes[candidate] / len(answered)
        if agreement < self.min_agreement:
            split = ", ".join(f"{name} {n}" for name, n in votes.most_common())
            return result(
                UNCERTAIN,
                f"fields disagree ({split}): {agreement:.0%} agree with "
                f"{candidate}, {self.min_agreement:.0%} needed",
                candidate=candidate,
                confidence=confidence,
            )
        driving = sorted(
            (frame for frame in answered if frame["label"] == candidate),
            key=lambda frame: -float(frame.get("confidence") or 0.0),
        )
        return result(
            LABEL,
            f"{votes[candidate]} of {len(answered)} answered fields agree",
            label=candidate,
            candidate=candidate,
            confidence=confidence,
            driving=[int(frame["id"]) for frame in driving if frame.get("id") is not None],
        )


def _probabilities(frame: Mapping) -> dict[str, float]:
    value = frame.get("probabilities")
    if value is None:
        return {}
    if isinstance(value, str):
        return json.loads(value)
    return dict(value)


DEFAULT_RULE = SampleRule()
