"""`edge-bench trust`: how far each model's answers can be trusted, and when it refuses.

For each model, on labelled in-distribution frames (the test split by default): ECE (15
equal-width bins), NLL, Brier, the reliability diagram, conformal coverage and mean set size
(overall and per class, when the model carries trust parameters), the risk-coverage curve
(accuracy of the answered frames against the share answered, most confident first) and where
the model's own decision rule sits on it. Per out-of-distribution folder: AUROC and FPR at 95%
TPR of the OOD score (test frames against that folder) and the share the rule answers with a
label. A model without trust parameters is scored with 1 - max probability as its OOD score and
the legacy min-confidence rule, and the report says so. The metrics are in
`benchmarks.calibration`; this module runs models and assembles rows (`schema.TrustRow`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukedge.benchmarks import calibration
from leukedge.benchmarks.decisions import (
    DecisionRule,
    ModelOutputs,
    ood_scores,
    outcome_shares,
    trust_params,
)
from leukedge.benchmarks.evaluation import EvalSet, label_indices, load_rgb_images
from leukedge.benchmarks.models import ModelEntry
from leukedge.benchmarks.schema import OodRow, TrustRow
from leukedge.edge_app.decision import LABEL, UNFIT
from leukedge.edge_app.imaging import ImageDecodeError, is_image_file, load_rgb, prepare
from leukedge.edge_app.quality import assess
from leukedge.edge_app.runtime import Classifier
from leukedge.edge_app.trust import TrustParams

Progress = Callable[[Iterable], Iterable] | None


class TrustBenchError(ValueError):
    """A one-line user error (an OOD folder that is empty or unreadable, ...)."""


@dataclass
class OodFolder:
    path: Path
    files: list[Path]
    images: list[np.ndarray]  # decoded uint8 RGB at their stored size
    skipped: int  # files that did not decode
    unfit: np.ndarray  # per image: the app's quality gate rejects it (never answered)


def read_ood_folder(folder: Path) -> OodFolder:
    """Every image under `folder` (recursive), decoded once; raises TrustBenchError when unusable."""
    folder = Path(folder)
    if not folder.exists():
        raise TrustBenchError(f"--ood {folder}: does not exist (pass a folder of images)")
    if not folder.is_dir():
        raise TrustBenchError(f"--ood {folder}: not a folder (pass a folder of images)")
    try:
        files = sorted(p for p in folder.rglob("*") if is_image_file(p))
    except OSError as error:
        raise TrustBenchError(
            f"--ood {folder}: cannot be read ({error.strerror or error})"
        ) from None
    if not files:
        raise TrustBenchError(
            f"--ood {folder}: holds no image files (.jpg .jpeg .png .bmp .tif .tiff .webp)"
        )
    images, skipped = [], 0
    for path in files:
        try:
            images.append(load_rgb(path))
        except (ImageDecodeError, OSError):
            skipped += 1
    if not images:
        raise TrustBenchError(
            f"--ood {folder}: none of its {len(files)} image file(s) could be read"
        )
    return OodFolder(
        folder, files, images, skipped, np.array([not assess(i).ok for i in images], dtype=bool)
    )


def _with_gate(kinds: np.ndarray, unfit: np.ndarray | None) -> np.ndarray:
    """The app never answers a frame its quality gate calls unfit."""
    if unfit is None:
        return kinds
    kinds = kinds.copy()
    kinds[np.asarray(unfit, dtype=bool)] = UNFIT
    return kinds


def evaluate_arrays(
    probabilities: np.ndarray,
    y: np.ndarray,
    labels: Sequence[str],
    model_scores: np.ndarray | None,
    trust: TrustParams | None,
    ood: dict[str, tuple[np.ndarray, np.ndarray | None]],
    model: str = "",
    variant: str = "",
    name: str = "",
    unfit: np.ndarray | None = None,
    ood_unfit: dict[str, np.ndarray] | None = None,
) -> TrustRow:
    """Every figure of one model from its outputs: in-distribution (probabilities, y, scores) and,
    per OOD folder, (probabilities, scores). `unfit` masks: frames the app's quality gate rejects
    (never answered). Pure numpy: no model runs here."""
    rule = DecisionRule(trust)
    scores, score_kind = ood_scores(probabilities, model_scores)
    kinds, answer = rule.decide(probabilities, model_scores)
    kinds = _with_gate(kinds, unfit)
    answered = kinds == LABEL
    conformal = None
    if trust is not None:
        sets = calibration.lac_sets(probabilities, trust.conformal.threshold)
        conformal = {
            **calibration.conformal_summary(sets, y, labels),
            "method": trust.conformal.method,
            "target_coverage": trust.conformal.target_coverage,
            "threshold": trust.conformal.threshold,
        }
    ood_rows: list[OodRow] = []
    for folder, (folder_probabilities, folder_model_scores) in ood.items():
        folder_scores, _ = ood_scores(folder_probabilities, folder_model_scores)
        folder_kinds, folder_answer = rule.decide(folder_probabilities, folder_model_scores)
        folder_kinds = _with_gate(folder_kinds, (ood_unfit or {}).get(folder))
        labelled = Counter(labels[i] for i in folder_answer[folder_kinds == LABEL])
        ood_rows.append(
            OodRow(
                folder=folder,
                n=len(folder_probabilities),
                auroc=calibration.auroc(scores, folder_scores),
                fpr_at_95_tpr=calibration.fpr_at_tpr(scores, folder_scores, 0.95),
                answered=float(np.mean(folder_kinds == LABEL)) if len(folder_kinds) else 0.0,
                outcome_shares=outcome_shares(folder_kinds),
                answered_labels=dict(labelled.most_common()),
            )
        )
    correct = probabilities.argmax(axis=1) == y
    return TrustRow(
        model=model,
        variant=variant,
        name=name,
        n=int(len(y)),
        has_trust_params=trust is not None,
        ood_score=score_kind,
        decision_rule=rule.name,
        accuracy=float(correct.mean()),
        ece=calibration.expected_calibration_error(probabilities, y),
        nll=calibration.negative_log_likelihood(probabilities, y),
        brier=calibration.brier_score(probabilities, y),
        reliability=calibration.reliability_bins(probabilities, y),
        conformal=conformal,
        answered=float(answered.mean()),
        answered_accuracy=float((answer[answered] == y[answered]).mean())
        if answered.any()
        else None,
        outcome_shares=outcome_shares(kinds),
        risk_coverage=calibration.risk_coverage(probabilities.max(axis=1), correct),
        ood=ood_rows,
    )


def evaluate_model(
    entry: ModelEntry,
    eval_set: EvalSet,
    folders: Sequence[OodFolder],
    threads: int | None = None,
    progress: Progress = None,
    allow_unverified: bool = False,
) -> TrustRow:
    """Run one .tflite model over the labelled frames and every OOD folder, then score it."""
    classifier = Classifier(entry.path, threads=threads, allow_unverified=allow_unverified)
    outputs = ModelOutputs(classifier)
    trust = trust_params(entry.path, classifier)
    y = label_indices(eval_set, classifier.labels)
    images = load_rgb_images(eval_set, progress=progress)
    probabilities, model_scores = outputs.run_all(
        np.stack([prepare(i, classifier.image_size) for i in images])
    )
    unfit = np.array([not assess(image).ok for image in images], dtype=bool)
    ood, ood_unfit = {}, {}
    for folder in folders:
        pixels = np.stack([prepare(image, classifier.image_size) for image in folder.images])
        ood[folder.path.name] = outputs.run_all(pixels)
        ood_unfit[folder.path.name] = folder.unfit
    return evaluate_arrays(
        probabilities,
        y,
        classifier.labels,
        model_scores,
        trust,
        ood,
        str(entry.path),
        classifier.variant or entry.variant,
        entry.name,
        unfit,
        ood_unfit,
    )


# --- reports --------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def tables(rows: Sequence[TrustRow], markdown: bool = False) -> str:
    from leukedge.benchmarks.report import format_table

    calibration_rows = []
    for row in rows:
        conformal = row["conformal"]
        calibration_rows.append(
            [
                row["name"],
                row["variant"],
                str(row["n"]),
                _pct(row["accuracy"], 2),
                _pct(row["ece"], 2),
                _num(row["nll"]),
                _num(row["brier"]),
                _pct(conformal["coverage"], 2) if conformal else "-",
                _num(conformal["mean_set_size"], 3) if conformal else "-",
                _pct(row["answered"]),
                _pct(row["answered_accuracy"], 2),
                _pct(row["outcome_shares"]["uncertain"]),
                _pct(row["outcome_shares"]["unknown"]),
                _pct(row["outcome_shares"]["unfit"]),
            ]
        )
    out = [
        format_table(
            [
                "model",
                "variant",
                "n",
                "accuracy",
                "ECE",
                "NLL",
                "Brier",
                "coverage",
                "set size",
                "answered",
                "answered right",
                "uncertain",
                "unknown",
                "unfit",
            ],
            calibration_rows,
            markdown,
        )
    ]
    per_class = [
        [row["name"], label, str(v["n"]), _pct(v["coverage"], 2), _num(v["mean_set_size"], 3)]
        for row in rows
        if row["conformal"]
        for label, v in row["conformal"]["per_class"].items()
    ]
    if per_class:
        out += [
            "",
            format_table(["model", "class", "n", "coverage", "set size"], per_class, markdown),
        ]
    ood_rows = [
        [
            row["name"],
            o["folder"],
            str(o["n"]),
            _num(o["auroc"], 4),
            _pct(o["fpr_at_95_tpr"]),
            _pct(o["answered"]),
            _pct(o["outcome_shares"]["unfit"]),
            ", ".join(f"{k} {v}" for k, v in o["answered_labels"].items()) or "-",
        ]
        for row in rows
        for o in row["ood"]
    ]
    if ood_rows:
        out += [
            "",
            format_table(
                [
                    "model",
                    "OOD folder",
                    "n",
                    "AUROC",
                    "FPR@95%TPR",
                    "answered",
                    "unfit",
                    "answered as",
                ],
                ood_rows,
                markdown,
            ),
        ]
    notes = []
    for row in rows:
        notes.append(
            f"{row['name']}: decision rule {row['decision_rule']}; OOD score: {row['ood_score']}"
            + ("" if row["has_trust_params"] else "; no conformal sets (no trust parameters)")
        )
    out += [""] + [f"- {n}" if markdown else n for n in notes]
    return "\n".join(out)


def plot_reliability(rows: Sequence[TrustRow], path: Path) -> None:
    """One panel per model: accuracy per confidence bin (blue) and its mean confidence (red hatched
    outline) against the diagonal; the number of frames in each bin at its foot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 4.2), squeeze=False)
    for axis, row in zip(axes[0], rows, strict=True):
        bins = [b for b in row["reliability"] if b["n"]]
        width = 1.0 / len(row["reliability"])
        axis.bar(
            [b["lower"] for b in bins],
            [b["accuracy"] for b in bins],
            width=width,
            align="edge",
            color="tab:blue",
            edgecolor="black",
            alpha=0.6,
            label="accuracy in the bin",
        )
        # Mean confidence per bin as a hatched outline: where it is above the blue bar the model is
        # overconfident there, below it underconfident.
        axis.bar(
            [b["lower"] for b in bins],
            [b["confidence"] for b in bins],
            width=width,
            align="edge",
            fill=False,
            edgecolor="red",
            hatch="//",
            linewidth=0.8,
            label="mean confidence",
        )
        axis.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        for b in bins:
            axis.annotate(str(b["n"]), (b["lower"] + width / 2, 0.02), ha="center", fontsize=6)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence (top probability)")
        axis.set_title(f"{row['name']}\nECE {100 * row['ece']:.2f}% (n={row['n']})", fontsize=9)
        axis.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_risk_coverage(rows: Sequence[TrustRow], path: Path) -> None:
    """Accuracy of the answered frames against the share answered; a marker at each model's rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for row in rows:
        curve = row["risk_coverage"]
        (line,) = axis.plot(curve["coverage"], curve["accuracy"], label=row["name"])
        if row["answered_accuracy"] is not None:
            axis.plot(
                row["answered"],
                row["answered_accuracy"],
                "o",
                color=line.get_color(),
                label=f"{row['name']}: its decision rule",
            )
    axis.set_xlabel("share of frames answered (most confident first)")
    axis.set_ylabel("accuracy of the answered frames")
    axis.set_xlim(0, 1.01)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower left")
    axis.set_title("Risk-coverage on the in-distribution frames")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
