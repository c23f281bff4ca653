#!/usr/bin/env python
"""The figures of docs/trust.md for converted models, measured with LeukEdge's own runtime.

    trust_figures.py TRUST_DIR PLAIN_DIR [--variants int8,fp16] [--external DIR ...]
                     [--json OUT] [--plot PNG]

TRUST_DIR: `edge-convert RUN --out TRUST_DIR` (trust parameters); PLAIN_DIR: the same run
converted with `--no-trust` (the probabilities before temperature scaling). On the test split
of TRUST_DIR/split.csv, per variant: ECE (15 equal-width bins), NLL and Brier before and after
temperature; conformal coverage and mean set size per class; the share of frames answered
(a one-label set and not unknown) and the accuracy of those answers. Per external folder: AUROC
of the OOD score (test images against the folder's) and the share answered with a label.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from leukedge.convert.trust_fit import brier, expected_calibration_error, nll
from leukedge.edge_app.decision import DecisionRule, decide
from leukedge.edge_app.imaging import is_image_file, load_rgb, prepare
from leukedge.edge_app.runtime import Classifier
from leukedge.train import dataset


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(outside score > inside score), ties counted half."""
    inside, outside = np.asarray(inside), np.asarray(outside)
    greater = (outside[:, None] > inside[None]).mean()
    ties = (outside[:, None] == inside[None]).mean()
    return float(greater + 0.5 * ties)


def run(classifier: Classifier, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    outputs = [classifier.invoke_outputs(classifier.to_input(p)) for p in pixels]
    scores = None if outputs[0][1] is None else np.array([o[1] for o in outputs])
    return np.stack([o[0] for o in outputs]), scores


def reliability(ax, probabilities: np.ndarray, y: np.ndarray, title: str, bins: int = 15) -> None:
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    centres, accuracy, counts = [], [], []
    for b in range(bins):
        member = index == b
        if member.any():
            centres.append(confidence[member].mean())
            accuracy.append(correct[member].mean())
            counts.append(member.sum())
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.scatter(centres, accuracy, s=[10 + 2 * c for c in counts], alpha=0.7)
    ax.plot(centres, accuracy, linewidth=1)
    ax.set_title(f"{title}\nECE {expected_calibration_error(probabilities, y):.2%}", fontsize=9)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trust_dir", type=Path)
    parser.add_argument("plain_dir", type=Path)
    parser.add_argument("--variants", default="int8,fp16")
    parser.add_argument("--data", type=Path, default=dataset.default_data_dir())
    parser.add_argument("--external", type=Path, nargs="*", default=[])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    manifest = json.loads((args.trust_dir / "manifest.json").read_text())
    labels = manifest["labels"]
    test = [
        s for s in dataset.read_split(args.trust_dir / "split.csv", args.data) if s.split == "test"
    ]
    y = np.array([labels.index(s.label) for s in test])
    size = manifest["image_size"]
    pixels = dataset.load_pixels(test, args.data, size)
    external = {}
    for folder in args.external:
        files = [p for p in sorted(folder.rglob("*")) if is_image_file(p)]
        external[folder.name] = [load_rgb(p) for p in files]
    report, curves = {}, []
    for variant in args.variants.split(","):
        file = manifest["variants"][variant]["file"]
        trusted = Classifier(args.trust_dir / file)
        plain = Classifier(args.plain_dir / file)
        after, scores = run(trusted, pixels)
        before, _ = run(plain, pixels)
        rule = DecisionRule.for_model(trusted.trust)
        made = [decide(p, labels, rule, s) for p, s in zip(after, scores)]
        kinds = np.array([d.kind for d in made])
        in_set = np.array([labels[t] in d.prediction_set for d, t in zip(made, y)])
        sizes = np.array([len(d.prediction_set) for d in made])
        answered = kinds == "label"
        right = after.argmax(1) == y
        figures = {
            "n_test": int(len(y)),
            "trust": trusted.trust.to_dict(),
            "before": {
                "ece_15": expected_calibration_error(before, y),
                "nll": nll(before, y),
                "brier": brier(before, y),
                "accuracy": float((before.argmax(1) == y).mean()),
            },
            "after": {
                "ece_15": expected_calibration_error(after, y),
                "nll": nll(after, y),
                "brier": brier(after, y),
                "accuracy": float(right.mean()),
            },
            "coverage": float(in_set.mean()),
            "mean_set_size": float(sizes.mean()),
            "per_class": {
                label: {
                    "n": int((y == c).sum()),
                    "coverage": float(in_set[y == c].mean()),
                    "mean_set_size": float(sizes[y == c].mean()),
                    "answered": float(answered[y == c].mean()),
                }
                for c, label in enumerate(labels)
            },
            "answered": float(answered.mean()),
            "answered_right": float(right[answered].mean()),
            "answered_wrong_n": int((answered & ~right).sum()),
            "uncertain": float((kinds == "uncertain").mean()),
            "unknown": float((kinds == "unknown").mean()),
            "external": {},
        }
        for name, frames in external.items():
            prepared = np.stack([prepare(f, size) for f in frames])
            probabilities, outside = run(trusted, prepared)
            outcome = [decide(p, labels, rule, s).kind for p, s in zip(probabilities, outside)]
            plain_probabilities, _ = run(plain, prepared)
            legacy = [
                decide(p, labels, DecisionRule.for_model(None)).kind for p in plain_probabilities
            ]
            figures["external"][name] = {
                "n": len(frames),
                "auroc": auroc(scores, outside),
                "answered": outcome.count("label") / len(frames),
                "unknown": outcome.count("unknown") / len(frames),
                "answered_legacy_rule_plain_model": legacy.count("label") / len(frames),
            }
        if external:
            n_all = sum(e["n"] for e in figures["external"].values())
            figures["external_answered_all"] = (
                sum(e["answered"] * e["n"] for e in figures["external"].values()) / n_all
            )
        report[variant] = figures
        curves.append((variant, before, after))
        print(
            json.dumps(
                {variant: {k: v for k, v in figures.items() if k not in ("trust", "per_class")}}
            ),
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2 * len(curves), figsize=(4 * 2 * len(curves), 4))
        for index, (variant, before, after) in enumerate(curves):
            reliability(axes[2 * index], before, y, f"{variant}, before (T = 1)")
            reliability(axes[2 * index + 1], after, y, f"{variant}, temperature-scaled")
        fig.suptitle(
            f"Reliability on the test split (n={len(y)}, 15 bins; dot size: images in the bin)",
            fontsize=10,
        )
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
