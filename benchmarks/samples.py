"""`edge-bench samples`: how well the sample rule answers, measured by simulation.

The dataset has no patient IDs, so samples are simulated: k fields drawn (without replacement)
from the images of one class of a split. Every image first goes once through the app's own frame
pipeline (`FrameProcessor`: quality gate, model, per-frame decision rule), so the simulation sees
exactly the decisions `edge-app run` stores, including `unknown` when the model carries an OOD
output. Three kinds of samples:
- clean: k fields of one class;
- contaminated: each field is, independently, unfit (a blurred field of the same class) with
  probability --unfit-rate, a foreign frame (../shared/data/external) with --foreign-rate, else a
  clean field of the class;
- foreign: k frames from ../shared/data/external: every answer is wrong, referral is right.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import numpy as np

from leukedge.benchmarks.evaluation import data_root_for
from leukedge.benchmarks.options import (
    data_option,
    data_root_option,
    limit_per_class_option,
    model_option,
    output_option,
    released_eval_set,
    released_model,
    split_option,
)
from leukedge.edge_app.clitools import FiniteFloat, progress_bar
from leukedge.edge_app.samples import DEFAULT_RULE, LABEL, UNKNOWN, SampleRule

KS = (1, 3, 5, 10)
GOAL_ACCURACY, GOAL_REFERRAL = 0.999, 0.05
BLUR_SIGMA = 6.0  # px at the image's own size: fails the quality gate's focus test
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


@dataclass
class FramePool:
    """Stored frame rows (dicts as `edge-app run` writes them) grouped for sampling."""

    clean: dict[str, list[dict]]  # class -> rows of its images
    blurred: dict[str, list[dict]]  # class -> rows of blurred copies
    foreign: list[dict]
    model: str
    model_sha256: str
    legacy: bool  # no frame carries an OOD score: the model has no OOD output

    def frame_summary(self) -> dict:
        def kinds(rows):
            out: dict[str, int] = {}
            for row in rows:
                out[row["decision"]] = out.get(row["decision"], 0) + 1
            return out

        clean = [row for rows in self.clean.values() for row in rows]
        blurred = [row for rows in self.blurred.values() for row in rows]
        right = sum(row["decision"] == LABEL and row["label"] == row["true_label"] for row in clean)
        answered = sum(row["decision"] == LABEL for row in clean)
        return {
            "clean": kinds(clean),
            "blurred": kinds(blurred),
            "foreign": kinds(self.foreign),
            "clean_answered_accuracy": right / answered if answered else None,
        }


def external_images(folder: Path, limit: int | None, seed: int) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None and len(paths) > limit:
        paths = sorted(random.Random(seed).sample(paths, limit))
    return paths


def classify_frames(
    model: Path,
    eval_set,
    external: list[Path],
    min_confidence: float | None,
    progress: bool = True,
    allow_unverified: bool = False,
) -> FramePool:
    """Every image (and a blurred copy of each labelled one) through the app's frame pipeline;
    unreadable images are left out, and said so on stderr."""
    from leukedge.edge_app.app import FrameProcessor
    from leukedge.edge_app.imaging import ImageDecodeError, load_rgb
    from leukedge.edge_app.runtime import Classifier
    from leukedge.edge_app.settings import DecisionSettings, QualitySettings, RunSettings
    from leukedge.edge_app.sources import Frame
    from leukedge.edge_app.storage import ResultStore

    classifier = Classifier(model, allow_unverified=allow_unverified)
    decisions = (
        DecisionSettings()
        if min_confidence is None
        else DecisionSettings(min_confidence=min_confidence)
    )
    clean: dict[str, list[dict]] = {}
    blurred: dict[str, list[dict]] = {}
    foreign: list[dict] = []
    unreadable: list[str] = []
    jobs = [(s.label, eval_set.data_root / s.path) for s in eval_set.samples] + [
        (None, p) for p in external
    ]
    with tempfile.TemporaryDirectory() as folder:
        store = ResultStore(Path(folder) / "simulation.sqlite")
        processor = FrameProcessor(
            classifier,
            store,
            None,
            RunSettings(mode="capture", headless=True),
            QualitySettings(),
            decisions,
            "edge-bench samples",
        )
        with progress_bar(jobs, desc="classifying fields", unit="field", enabled=progress) as bar:
            for label, path in bar:
                try:
                    rgb = load_rgb(path)
                except ImageDecodeError as error:
                    unreadable.append(str(error))
                    continue
                row, _decision, _quality = processor.process(Frame(rgb, str(path)), None)
                row = {**row, "true_label": label}
                if label is None:
                    foreign.append(row)
                    continue
                clean.setdefault(label, []).append(row)
                soft = cv2.GaussianBlur(rgb, (0, 0), BLUR_SIGMA)
                row, _decision, _quality = processor.process(Frame(soft, f"{path}#blur"), None)
                blurred.setdefault(label, []).append({**row, "true_label": label})
        store.close()
    if unreadable:
        click.echo(
            f"edge-bench samples: left out {len(unreadable)} unreadable image(s), e.g. "
            f"{unreadable[0]}",
            err=True,
        )
    legacy = all(row.get("ood_score") is None for rows in clean.values() for row in rows)
    return FramePool(clean, blurred, foreign, model.name, classifier.sha256, legacy)


def simulate(
    pool: FramePool,
    rule: SampleRule,
    ks=KS,
    trials: int = 2000,
    unfit_rate: float = 0.2,
    foreign_rate: float = 0.1,
    seed: int = 0,
) -> list[dict]:
    """Per (kind, k): samples, referral rate and accuracy of the answered samples."""
    rng = random.Random(seed)
    classes = sorted(pool.clean)
    rows = []
    for kind in ("clean", "contaminated", "foreign"):
        for k in ks:
            answered = right = unknown = 0
            for trial in range(trials):
                truth = classes[trial % len(classes)]
                if kind == "foreign":
                    fields = rng.sample(pool.foreign, min(k, len(pool.foreign)))
                else:
                    fields = rng.sample(pool.clean[truth], min(k, len(pool.clean[truth])))
                    if kind == "contaminated":
                        for i in range(len(fields)):
                            draw = rng.random()
                            if draw < unfit_rate:
                                fields[i] = rng.choice(pool.blurred[truth])
                            elif draw < unfit_rate + foreign_rate:
                                fields[i] = rng.choice(pool.foreign)
                result = rule.combine(fields)
                unknown += result.decision == UNKNOWN
                if result.decision == LABEL:
                    answered += 1
                    right += kind != "foreign" and result.label == truth
            rows.append(
                {
                    "kind": kind,
                    "k": k,
                    "samples": trials,
                    "answered": answered,
                    "right": right,
                    "referred_rate": 1 - answered / trials,
                    "unknown_rate": unknown / trials,
                    "answered_accuracy": right / answered if answered else None,
                }
            )
    return rows


def goal_verdicts(rows: list[dict], k: int = 5) -> list[str]:
    lines = []
    for row in rows:
        if row["k"] != k or row["kind"] == "foreign":
            continue
        accuracy = row["answered_accuracy"]
        ok = (
            accuracy is not None
            and accuracy >= GOAL_ACCURACY
            and row["referred_rate"] <= GOAL_REFERRAL
        )
        lines.append(
            f"{row['kind']} k={k}: {'meets' if ok else 'misses'} the goal (>= 99.9% of answered "
            f"samples right, <= 5% referred): {_pct(accuracy)} right, "
            f"{row['referred_rate']:.2%} referred"
        )
    return lines


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def format_table(rows: list[dict]) -> str:
    lines = [
        "| samples | k | n | answered | right | referred | unknown: refer | answered accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['kind']} | {row['k']} | {row['samples']} | {row['answered']} | "
            f"{row['right']} | {row['referred_rate']:.2%} | {row['unknown_rate']:.2%} | "
            f"{_pct(row['answered_accuracy'])} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, colour in (
        ("clean", "tab:blue"),
        ("contaminated", "tab:orange"),
        ("foreign", "tab:red"),
    ):
        mine = [row for row in rows if row["kind"] == kind]
        ks = [row["k"] for row in mine]
        if kind != "foreign":
            left.plot(
                ks,
                [100 * (row["answered_accuracy"] or np.nan) for row in mine],
                "o-",
                color=colour,
                label=kind,
            )
        right.plot(ks, [100 * row["referred_rate"] for row in mine], "o-", color=colour, label=kind)
    left.axhline(100 * GOAL_ACCURACY, color="grey", ls="--", lw=1, label="goal 99.9%")
    shown = [
        100 * row["answered_accuracy"]
        for row in rows
        if row["kind"] != "foreign" and row["answered_accuracy"] is not None
    ]
    left.set_ylim(min([99.0, *shown]) - 0.2, 100.1)
    right.axhline(100 * GOAL_REFERRAL, color="grey", ls="--", lw=1, label="goal 5% (clean)")
    left.set(xlabel="fields per sample (k)", ylabel="answered samples right (%)", title="accuracy")
    right.set(xlabel="fields per sample (k)", ylabel="samples referred (%)", title="referral")
    for axis in (left, right):
        axis.set_xticks(sorted({row["k"] for row in rows}))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


EXAMPLES = """\b
Examples:
  edge-bench samples
  edge-bench samples --model models/model_int8.tflite --split val --trials 500
  edge-bench samples --json samples.json --plot samples.png --markdown samples.md
"""


def _ks(_ctx, param, value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(part) for part in value.split(","))
        if not ks or min(ks) < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: expected field counts like 1,3,5,10", param=param
        ) from None
    return ks


@click.command("samples", epilog=EXAMPLES)
@model_option("The .tflite model. Default: the released int8 model.")
@data_option(
    "split.csv (its --split rows) or a folder of class folders. Default: models/split.csv.",
    exists=True,
)
@data_root_option(manifest_default=False)
@split_option("Which split's images form the samples (tune on val, report on test).")
@limit_per_class_option("Only the first N images per class of the split (quick checks).")
@click.option(
    "--external",
    type=click.Path(path_type=Path),
    default=None,
    help="Foreign frames (evaluation only). Default: ../shared/data/external beside the data.",
)
@click.option(
    "--external-limit",
    type=click.IntRange(1),
    default=300,
    show_default=True,
    help="At most this many foreign frames (a seeded random subset).",
)
@click.option(
    "--ks", default="1,3,5,10", show_default=True, callback=_ks, help="Fields per sample."
)
@click.option(
    "--trials",
    type=click.IntRange(10),
    default=4000,
    show_default=True,
    help="Simulated samples per kind and k.",
)
@click.option(
    "--unfit-rate",
    type=FiniteFloat(0, 1),
    default=0.1,
    show_default=True,
    help="Contaminated samples: chance that a field is blurred (unfit).",
)
@click.option(
    "--foreign-rate",
    type=FiniteFloat(0, 1),
    default=0.1,
    show_default=True,
    help="Contaminated samples: chance that a field is a foreign frame.",
)
@click.option(
    "--min-confidence",
    type=FiniteFloat(0, 1),
    default=None,
    help="Per-frame rule override (default: the app's default / the model's trust rule).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the drawn samples.")
@output_option("--json", "json_out", "Write every figure as JSON.")
@output_option("--markdown", "markdown_out", "Write the table as Markdown.")
@output_option("--plot", "plot_out", "Write accuracy and referral against k as PNG.")
@click.option(
    "--allow-unverified",
    is_flag=True,
    help="Also simulate with a model not listed (status ok) in a manifest beside it.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def samples_command(
    model,
    data,
    data_root,
    split,
    limit_per_class,
    external,
    external_limit,
    ks,
    trials,
    unfit_rate,
    foreign_rate,
    min_confidence,
    seed,
    json_out,
    markdown_out,
    plot_out,
    allow_unverified,
    quiet,
) -> None:
    """Sample-level accuracy and referral of the sample rule, by simulation on a split.

    Prints a table per kind of sample (clean, contaminated, foreign) and k, and whether k = 5
    meets the goal: >= 99.9% of answered samples right, <= 5% referred.
    """
    from leukedge.edge_app.runtime import ModelError

    if unfit_rate + foreign_rate > 1:
        raise click.BadParameter(
            "--unfit-rate + --foreign-rate must be <= 1", param_hint="--foreign-rate"
        )
    model = released_model(model)
    eval_set = released_eval_set(data, data_root, split, limit_per_class)
    external = external or data_root_for(None, data_root).parent / "external"
    if not external.is_dir():
        raise click.ClickException(f"--external {external}: no such folder of foreign frames")
    foreign = external_images(external, external_limit, seed)
    if not foreign:
        raise click.ClickException(f"--external {external}: holds no images")
    try:
        pool = classify_frames(
            model, eval_set, foreign, min_confidence, not quiet, allow_unverified
        )
    except ModelError as error:
        raise click.ClickException(str(error)) from None
    if min(len(rows) for rows in pool.clean.values()) < max(ks):
        raise click.ClickException(
            f"a class of the {split} split has fewer images than k={max(ks)}"
        )
    rows = simulate(pool, DEFAULT_RULE, ks, trials, unfit_rate, foreign_rate, seed)
    recorded = Counter(
        row.get("decision_rule")
        for rows in pool.clean.values()
        for row in rows
        if row.get("decision_rule")
    ).most_common(1)
    frame_rule = (
        "legacy per-frame rule: the model has no OOD output, so no frame is 'unknown' and "
        "foreign frames are caught only by confidence and disagreement"
        if pool.legacy
        else "per-frame trust rule of the model (OOD + conformal)"
    )
    if recorded:
        frame_rule += f" [{recorded[0][0]}]"
    header = (
        f"{pool.model} ({pool.model_sha256[:12]}), {eval_set.source}, {trials} samples per "
        f"row, seed {seed}; contaminated: unfit {unfit_rate:.0%}, foreign {foreign_rate:.0%} of fields"
    )
    click.echo(header)
    click.echo(f"frame rule: {frame_rule}")
    click.echo(f"sample rule: {DEFAULT_RULE.describe()}")
    table = format_table(rows)
    click.echo(table)
    verdicts = goal_verdicts(rows)
    for line in verdicts:
        click.echo(line)
    report = {
        "model": pool.model,
        "model_sha256": pool.model_sha256,
        "split": split,
        "images": eval_set.source,
        "external": len(foreign),
        "trials": trials,
        "seed": seed,
        "unfit_rate": unfit_rate,
        "foreign_rate": foreign_rate,
        "legacy_frame_rule": pool.legacy,
        "frame_rule": frame_rule,
        "sample_rule": DEFAULT_RULE.describe(),
        "rule_parameters": DEFAULT_RULE.__dict__,
        "frames": pool.frame_summary(),
        "rows": rows,
        "goal": verdicts,
    }
    if json_out:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
    if markdown_out:
        markdown_out.write_text(
            f"{header}\n\nFrame rule: {frame_rule}.\n\nSample rule: "
            f"{DEFAULT_RULE.describe()}.\n\n{table}\n\n"
            + "\n".join(f"- {v}" for v in verdicts)
            + "\n"
        )
    if plot_out:
        plot(
            rows,
            plot_out,
            f"{pool.model}: sample rule on the {split} split ({'legacy frame rule' if pool.legacy else 'trust rule'})",
        )
