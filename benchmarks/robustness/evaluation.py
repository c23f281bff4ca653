"""The evaluation loop: every condition, every image, every model; then rows and summaries.

Every test image is shifted at full resolution (`benchmarks.shifts`), then goes through the
app's quality gate (`edge_app.quality.assess`) and each model's standard `prepare` and outputs,
exactly as a frame from a field camera would. One shifted image serves every model, so the
variants are compared on identical pixels. Besides top-1 accuracy, each row says what the app
would do: answered right, answered wrong, or referred (uncertain, unknown, unfit), by the
model's own decision rule (`benchmarks.decisions.DecisionRule`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from leukedge.benchmarks.decisions import UNKNOWN, DecisionRule, ModelOutputs, trust_params
from leukedge.benchmarks.evaluation import EvalSet, LabelMismatchError, label_indices, score
from leukedge.benchmarks.models import ModelEntry
from leukedge.benchmarks.robustness.settings import (
    BREAK_FLOOR,
    CLEAN,
    GATE_FUNCTION,
    MILD_FLOOR,
    WRONG_CEILING,
    Condition,
    RobustnessSettings,
    conditions,
)
from leukedge.benchmarks.schema import RobustnessRow, robustness_row
from leukedge.edge_app.clitools import progress_bar
from leukedge.edge_app.decision import LABEL, UNCERTAIN
from leukedge.edge_app.imaging import prepare
from leukedge.edge_app.quality import assess
from leukedge.edge_app.runtime import Classifier, ModelError
from leukedge.edge_app.trust import TrustError


@dataclass
class LoadedModel:
    entry: ModelEntry
    classifier: Classifier | None = None
    outputs: ModelOutputs | None = None
    rule: DecisionRule | None = None
    y_true: np.ndarray | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Results:
    settings: RobustnessSettings
    eval_set: EvalSet
    models: list[LoadedModel]
    rows: list[RobustnessRow] = field(default_factory=list)
    gate: str = GATE_FUNCTION
    gate_rows: list[dict] = field(default_factory=list)
    completed: list[Condition] = field(default_factory=list)  # all of them unless interrupted
    interrupted: bool = False  # Ctrl-C: only the completed conditions are scored


def gate_reason(rgb: np.ndarray) -> str | None:
    """None when the app's quality gate accepts the frame, else its reason without the figures."""
    quality = assess(rgb)
    return None if quality.ok else str(quality.reason or "rejected").split(" (")[0]


@dataclass
class ConditionOutputs:
    """What the quality gate and every model said about the images of one condition."""

    rejected: np.ndarray  # (n,) bool: the gate refused the frame
    reasons: Counter  # the gate's reasons, counted
    probabilities: dict[int, np.ndarray]  # id(model) -> (n, classes)
    scores: dict[int, np.ndarray | None]  # id(model) -> (n,) OOD scores; None without that output


def run_condition(
    condition: Condition,
    models: Sequence[LoadedModel],
    eval_set: EvalSet,
    images: Sequence[np.ndarray],
    seed: int,
    on_image: Callable[[], object] = lambda: None,
) -> ConditionOutputs:
    """Every image shifted once by `condition`, gated, and run through every (working) model."""
    n = len(images)
    outputs = ConditionOutputs(
        rejected=np.zeros(n, bool),
        reasons=Counter(),
        probabilities={id(m): np.zeros((n, len(m.classifier.labels)), np.float32) for m in models},
        scores={id(m): np.zeros(n) if m.outputs.has_ood else None for m in models},
    )
    for index, (sample, image) in enumerate(zip(eval_set.samples, images, strict=True)):
        shifted = condition.apply(image, sample.path, seed)
        reason = gate_reason(shifted)
        if reason is not None:
            outputs.rejected[index] = True
            outputs.reasons[reason] += 1
        for model in models:
            p, ood = model.outputs.run(prepare(shifted, model.classifier.image_size))
            outputs.probabilities[id(model)][index] = p
            if ood is not None:
                outputs.scores[id(model)][index] = ood
        on_image()
    return outputs


def load_models(
    entries: Sequence[ModelEntry], eval_set: EvalSet, threads: int | None
) -> list[LoadedModel]:
    """Each model loaded once; a model that cannot be used keeps its one-line reason."""
    loaded = []
    for entry in entries:
        if entry.kind != "tflite":
            loaded.append(
                LoadedModel(
                    entry,
                    error=f"{entry.kind} models are not evaluated here "
                    "(robustness runs the TFLite variants only)",
                )
            )
            continue
        try:
            classifier = Classifier(entry.path, threads=threads)
            loaded.append(
                LoadedModel(
                    entry,
                    classifier,
                    ModelOutputs(classifier),
                    DecisionRule(trust_params(entry.path, classifier)),
                    label_indices(eval_set, classifier.labels),
                )
            )
        except (ModelError, LabelMismatchError, TrustError) as error:
            loaded.append(LoadedModel(entry, error=str(error).splitlines()[0]))
    return loaded


def outcome_fractions(
    kinds: np.ndarray, answer: np.ndarray, y_true: np.ndarray, unfit: np.ndarray
) -> dict:
    """Shares of all frames: answered right / wrong, referred (uncertain + unknown + unfit)."""
    n = len(kinds)
    if n == 0:
        return dict.fromkeys(
            ("answered_right", "answered_wrong", "referred", "uncertain", "unknown", "unfit"), 0.0
        )
    labelled = (kinds == LABEL) & ~unfit
    right = labelled & (answer == y_true)
    return {
        "answered_right": float(right.mean()),
        "answered_wrong": float((labelled & ~right).mean()),
        "referred": float((~labelled).mean()),
        "uncertain": float(((kinds == UNCERTAIN) & ~unfit).mean()),
        "unknown": float(((kinds == UNKNOWN) & ~unfit).mean()),
        "unfit": float(unfit.mean()),
    }


def evaluate(
    models: list[LoadedModel],
    eval_set: EvalSet,
    images: Sequence[np.ndarray],
    settings: RobustnessSettings,
    progress: bool = True,
) -> Results:
    """Score every working model on every condition; one shifted image serves all models.

    Ctrl-C stops after the image in flight; the conditions finished by then are still scored.
    """
    usable = [m for m in models if m.ok]
    todo = conditions(settings)
    bar = progress_bar(
        total=len(todo) * len(images), desc="robustness", unit="image", enabled=progress
    )
    completed: list[Condition] = []
    outputs: dict[tuple[str, int], ConditionOutputs] = {}
    interrupted = False
    try:
        for condition in todo:
            bar.set_postfix_str(f"{condition.name} {condition.severity}")
            outputs[condition.key] = run_condition(
                condition, usable, eval_set, images, settings.seed, lambda: bar.update(1)
            )
            completed.append(condition)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    results = Results(settings, eval_set, models, completed=completed, interrupted=interrupted)
    for condition in completed:
        here = outputs[condition.key]
        reject = here.rejected
        results.gate_rows.append(
            {
                "shift": condition.name,
                "severity": condition.severity,
                "parameter": condition.parameter,
                "reject_fraction": float(reject.mean()),
                "reasons": dict(here.reasons.most_common()),
            }
        )
        for model in usable:
            p = here.probabilities[id(model)]
            y_pred = p.argmax(axis=1)
            kinds, answer = model.rule.decide(p, here.scores[id(model)])
            metrics = score(model.y_true, y_pred, model.classifier.labels)
            accepted = ~reject
            results.rows.append(
                robustness_row(
                    model=str(model.entry.path),
                    variant=model.entry.variant,
                    name=model.entry.name,
                    shift=condition.name,
                    severity=condition.severity,
                    parameter=condition.parameter,
                    n=metrics["n"],
                    accuracy=metrics["accuracy"],
                    macro_f1=metrics["macro_f1"],
                    per_class_recall=metrics["per_class_recall"],
                    confusion_matrix=metrics["metrics"][
                        "confusion_matrix"
                    ],  # rows true, columns predicted
                    gate_reject_fraction=float(reject.mean()),
                    accuracy_on_accepted=(
                        float((y_pred[accepted] == model.y_true[accepted]).mean())
                        if accepted.any()
                        else None
                    ),
                    **outcome_fractions(kinds, answer, model.y_true, reject),
                    decision_rule=model.rule.name,
                )
            )
    return results


def summarise(results: Results) -> list[dict]:
    """Per variant and shift: accuracy at the mildest severity, where it first drops under 90%,
    and the worst answered-wrong share over the severities."""
    summary = []
    for model in results.models:
        if not model.ok:
            continue
        mine = [r for r in results.rows if r["model"] == str(model.entry.path)]
        clean = next((r["accuracy"] for r in mine if r["shift"] == CLEAN), None)
        for name in results.settings.shifts:
            by_severity = {r["severity"]: r for r in mine if r["shift"] == name}
            if not by_severity:  # interrupted before this shift
                continue
            accuracy = {s: r["accuracy"] for s, r in by_severity.items()}
            mild = accuracy.get(1)
            below = [s for s in sorted(accuracy) if accuracy[s] < BREAK_FLOOR]
            worst = min(accuracy, key=lambda s: (accuracy[s], -s))
            recall = by_severity[worst]["per_class_recall"]
            # The class that loses most: with class-dependent acquisition, a shift can push
            # every image of one class into another.
            weakest = min(recall, key=recall.get) if recall else None
            wrong = max(r["answered_wrong"] for r in by_severity.values())
            summary.append(
                {
                    "model": str(model.entry.path),
                    "variant": model.entry.variant,
                    "shift": name,
                    "clean_accuracy": clean,
                    "mild_accuracy": mild,
                    "mild_ok": None if mild is None else mild >= MILD_FLOOR,
                    "first_severity_below_90": below[0] if below else None,
                    "worst_accuracy": accuracy[worst],
                    "worst_severity": worst,
                    "weakest_class_at_worst": weakest,
                    "weakest_class_recall_at_worst": recall.get(weakest) if weakest else None,
                    "max_answered_wrong": wrong,
                    "answered_wrong_ok": wrong <= WRONG_CEILING,
                }
            )
    return summary
