"""The robustness PNGs: accuracy (and answered-wrong) against severity, and the shift montage."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from leukedge.benchmarks.robustness.evaluation import Results
from leukedge.benchmarks.robustness.report import variant_names
from leukedge.benchmarks.robustness.settings import BREAK_FLOOR, CLEAN, MILD_FLOOR, image_seed
from leukedge.benchmarks.shifts import Shift


def plot(results: Results, path: Path) -> None:
    """One panel per shift: accuracy (solid) and answered-wrong share (dashed) against severity
    (0 = clean), one colour per variant; the gate's reject share dotted grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results.settings.shifts)
    columns = variant_names(results)
    ncols = min(5, len(names))
    nrows = math.ceil(len(names) / ncols)
    figure, axes = plt.subplots(
        nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), squeeze=False, sharey=True
    )
    severities = [0, *results.settings.severities]
    colours = plt.get_cmap("tab10")
    for axis, name in zip(axes.flat, names, strict=False):
        for number, (model_path, title) in enumerate(columns):
            by_key = {
                (r["shift"], r["severity"]): r for r in results.rows if r["model"] == model_path
            }
            keys = [(CLEAN, 0) if s == 0 else (name, s) for s in severities]
            accuracy = [by_key[k]["accuracy"] if k in by_key else math.nan for k in keys]
            wrong = [by_key[k]["answered_wrong"] if k in by_key else math.nan for k in keys]
            axis.plot(
                severities,
                accuracy,
                marker="o",
                markersize=3,
                color=colours(number % 10),
                label=title,
            )
            axis.plot(
                severities,
                wrong,
                marker="x",
                markersize=3,
                linestyle="--",
                color=colours(number % 10),
                label=f"{title} answered wrong",
            )
        gate = {(r["shift"], r["severity"]): r["reject_fraction"] for r in results.gate_rows}
        axis.plot(
            severities,
            [gate.get((CLEAN, 0) if s == 0 else (name, s), math.nan) for s in severities],
            color="grey",
            linestyle=":",
            label="gate rejects",
        )
        axis.axhline(MILD_FLOOR, color="green", linewidth=0.7, linestyle="--")
        axis.axhline(BREAK_FLOOR, color="red", linewidth=0.7, linestyle="--")
        axis.set_title(name, fontsize=10)
        axis.set_xticks(severities)
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
    for axis in axes.flat[len(names) :]:
        axis.set_visible(False)
    for axis in axes[:, 0]:
        axis.set_ylabel("share of frames")
    for axis in axes[-1, :]:
        axis.set_xlabel("severity (0 = clean)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(
        handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False, fontsize=7
    )
    figure.suptitle(
        f"Accuracy (solid) and answered-wrong (dashed) under field shifts "
        f"({len(results.eval_set.samples)} images; lines at {MILD_FLOOR:.0%} and {BREAK_FLOOR:.0%})"
    )
    figure.tight_layout(rect=(0, 0.07, 1, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def montage(
    image: np.ndarray,
    shifts: Sequence[Shift],
    severities: Sequence[int],
    seed: int,
    sample_path: str,
    path: Path,
) -> None:
    """One image under each shift (rows) at each severity (columns), to show what levels mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [0, *severities]
    figure, axes = plt.subplots(
        len(shifts), len(columns), figsize=(1.7 * len(columns), 1.8 * len(shifts)), squeeze=False
    )
    for row, shift in enumerate(shifts):
        for col, severity in enumerate(columns):
            axis = axes[row, col]
            axis.imshow(shift.apply(image, severity, image_seed(seed, shift.name, sample_path)))
            axis.set_xticks([])
            axis.set_yticks([])
            title = "clean" if severity == 0 else f"{severity}: {shift.value(severity):g}"
            axis.set_title(title, fontsize=7)
        axes[row, 0].set_ylabel(shift.name, fontsize=8)
    figure.suptitle(f"{sample_path}: each shift at each severity", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.99))
    options = {"pil_kwargs": {"quality": 92}} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    figure.savefig(path, dpi=110, **options)
    plt.close(figure)
