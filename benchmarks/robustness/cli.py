"""The `edge-bench robustness` command: options, loading, and writing the outputs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from leukedge.benchmarks.evaluation import load_rgb_images, resolve_eval_set
from leukedge.benchmarks.models import ModelDiscoveryError, discover_models
from leukedge.benchmarks.options import (
    data_option,
    data_root_option,
    models_argument,
    output_option,
    split_option,
    threads_option,
)
from leukedge.benchmarks.robustness.evaluation import evaluate, load_models
from leukedge.benchmarks.robustness.plots import montage, plot
from leukedge.benchmarks.robustness.report import markdown, to_json, write_csv
from leukedge.benchmarks.robustness.settings import GATE_FUNCTION, RobustnessSettings
from leukedge.benchmarks.shifts import SHIFTS, parse_severities, parse_shifts
from leukedge.train.dataset import DatasetError


def _shifts_option(ctx, param, value: str) -> tuple[str, ...]:
    try:
        return tuple(shift.name for shift in parse_shifts(value))
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _severities_option(ctx, param, value: str) -> tuple[int, ...]:
    try:
        return tuple(parse_severities(value))
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


EXAMPLES = """
\b
Examples:
  edge-bench robustness models/model_int8.tflite --limit-per-class 20
  edge-bench robustness runs/convert_out --markdown robustness.md --plot robustness.png
  edge-bench robustness runs/convert_out --shifts defocus,jpeg --severities 1,3,5 --json r.json
  edge-bench robustness model_int8.tflite --data ../shared/data/all-leukemia/Original --limit-per-class 10
  edge-bench robustness models/model_int8.tflite --split val --json val.json   # for choosing
\b
Shifts (severity 1 = mild .. 5 = severe):
""" + "\n".join(f"  {s.name:15} {s.description}" for s in SHIFTS.values())


@click.command("robustness", epilog=EXAMPLES)
@models_argument()
@data_option(
    "Dataset folder of class folders, or a split.csv (its --split rows). "
    "Default: the split.csv beside the model(s)."
)
@data_root_option(manifest_default=True)
@split_option(
    "Which rows of a split.csv: choose settings on val (as the released OOD retention was), "
    "report on test."
)
@click.option(
    "--shifts",
    "shift_names",
    default="all",
    show_default=True,
    callback=_shifts_option,
    help="'all' or comma-separated shift names.",
)
@click.option(
    "--severities",
    default="1,2,3,4,5",
    show_default=True,
    callback=_severities_option,
    help="Comma-separated severities, 1 (mild) to 5 (severe). Clean is always scored.",
)
@click.option(
    "--limit-per-class",
    "--limit",  # its first name, kept for scripts that use it
    "limit",
    type=click.IntRange(min=1),
    default=None,
    help="At most N images per class (quick runs), as --limit-per-class of the other "
    "commands. Default: every image.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random shifts.")
@threads_option("Interpreter threads. Default: min(4, cores).")
@output_option("--json", "json_out", "Write results as JSON.")
@output_option("--csv", "csv_out", "Write one row per variant x shift x severity.")
@output_option("--markdown", "markdown_out", "Write the tables as Markdown.")
@output_option(
    "--plot",
    "plot_out",
    "Write a PNG grid: accuracy and answered-wrong against severity, one panel per shift.",
)
@output_option(
    "--montage",
    "montage_out",
    "Write a PNG (or .jpg) of the first test image under every shift and severity.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def robustness_command(
    models: tuple[Path, ...],
    data: Path | None,
    data_root: Path | None,
    split: str,
    shift_names: tuple[str, ...],
    severities: tuple[int, ...],
    limit: int | None,
    seed: int,
    threads: int | None,
    json_out: Path | None,
    csv_out: Path | None,
    markdown_out: Path | None,
    plot_out: Path | None,
    montage_out: Path | None,
    quiet: bool,
) -> None:
    """Accuracy of each model variant on the test images under field shifts.

    Each image is shifted at full resolution (blur, exposure, stain colour, JPEG, noise,
    rotation, zoom, camera resolution) at each severity, then prepared and classified as a
    camera frame would be. Prints accuracy per shift x severity x variant, the mildest-severity
    accuracy of each shift and the severity where accuracy first falls under 90%.
    MODELS are .tflite files or edge-convert folders (default: models/model_int8.tflite).
    Ctrl-C stops early and still reports the conditions already finished.
    """
    if plot_out is not None and plot_out.suffix.lower() != ".png":
        raise click.BadParameter(f"{plot_out} should end in .png", param_hint="--plot")
    if montage_out is not None and montage_out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise click.BadParameter(
            f"{montage_out} should end in .png (or .jpg, 10x smaller)", param_hint="--montage"
        )
    settings = RobustnessSettings(shift_names, severities, seed, threads, limit)
    try:
        entries = discover_models(models)
        eval_set = resolve_eval_set(
            data, entries, data_root=data_root, split=split, limit_per_class=limit
        )
        images = load_rgb_images(eval_set)
    except (ModelDiscoveryError, DatasetError) as error:
        raise click.ClickException(str(error)) from None
    loaded = load_models(entries, eval_set, threads)
    for model in loaded:
        if model.ok:
            click.echo(
                f"model: {model.classifier.describe()}; decision rule: {model.rule.name}", err=True
            )
        else:
            click.echo(f"model {model.entry.path}: failed: {model.error}", err=True)
    if not any(m.ok for m in loaded):
        raise click.ClickException("no model could be evaluated (reasons above)")
    click.echo(f"data: {eval_set.describe()}", err=True)
    click.echo(f"quality gate: {GATE_FUNCTION}", err=True)
    if montage_out is not None:
        montage(
            images[0],
            [SHIFTS[n] for n in shift_names],
            severities,
            seed,
            eval_set.samples[0].path,
            montage_out,
        )
    results = evaluate(loaded, eval_set, images, settings, progress=not quiet)
    report = markdown(results)
    click.echo(report)
    if json_out is not None:
        json_out.write_text(json.dumps(to_json(results), indent=2) + "\n")
    if csv_out is not None:
        write_csv(results, csv_out)
    if markdown_out is not None:
        markdown_out.write_text(f"# Robustness: accuracy under field shifts\n\n{report}")
    if plot_out is not None:
        plot(results, plot_out)
    if results.interrupted:
        click.echo(
            "edge-bench robustness: interrupted; the figures above cover the finished conditions only",
            err=True,
        )
        raise SystemExit(130)
    failed = [m for m in loaded if not m.ok]
    if failed:
        raise click.ClickException(
            f"{len(failed)} model(s) could not be evaluated: "
            + "; ".join(f"{m.entry.path}: {m.error}" for m in failed)
        )
