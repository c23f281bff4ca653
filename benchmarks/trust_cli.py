"""The `edge-bench trust` command (figures in benchmarks.trust_eval, metrics in benchmarks.calibration)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from leukedge.benchmarks.environment import describe_environment
from leukedge.benchmarks.evaluation import LabelMismatchError, resolve_eval_set
from leukedge.benchmarks.models import ModelDiscoveryError, discover_models
from leukedge.benchmarks.options import (
    data_option,
    data_root_option,
    limit_per_class_option,
    models_argument,
    output_option,
    split_option,
    threads_option,
)
from leukedge.benchmarks.trust_eval import (
    TrustBenchError,
    evaluate_model,
    plot_reliability,
    plot_risk_coverage,
    read_ood_folder,
    tables,
)
from leukedge.edge_app.clitools import progress_bar
from leukedge.edge_app.files import cannot_write_in
from leukedge.edge_app.runtime import ModelError
from leukedge.edge_app.trust import TrustError
from leukedge.train.dataset import DatasetError


@click.command("trust")
@models_argument()
@data_option(
    "Labelled in-distribution images: a split.csv (its --split rows) or a folder of class "
    "folders. Default: the test split of the split.csv beside the models."
)
@data_root_option(manifest_default=True)
@split_option("Which rows of a split.csv.")
@limit_per_class_option("At most N labelled images per class.")
@click.option(
    "--ood",
    "ood_folders",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A folder of images the model was not trained on (recursive). Repeatable.",
)
@threads_option("Interpreter threads. Default: min(4, cores).")
@output_option("--json", "json_path", "Write every figure as JSON.")
@output_option("--markdown", "markdown_path", "Write the tables as Markdown.")
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write reliability.png and risk_coverage.png into this folder (created).",
)
@click.option(
    "--allow-unverified",
    is_flag=True,
    help="Also evaluate models not listed (status ok) in a manifest beside them.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def trust_command(
    models: tuple[Path, ...],
    data: Path | None,
    data_root: Path | None,
    split: str,
    limit_per_class: int | None,
    ood_folders: tuple[Path, ...],
    threads: int | None,
    json_path: Path | None,
    markdown_path: Path | None,
    plots_dir: Path | None,
    allow_unverified: bool,
    quiet: bool,
) -> None:
    """Calibration, conformal referral and out-of-distribution rejection of each model.

    MODELS are .tflite files or edge-convert folders (default: the released int8 model). Per
    model: ECE (15 bins), NLL, Brier, conformal coverage and mean set size (overall and per
    class), the share answered and how often those answers are right, the risk-coverage curve;
    per --ood folder: AUROC and FPR at 95% TPR of the OOD score and the share answered with a
    label. Models without trust parameters use 1 - max probability as the OOD score and the
    legacy min-confidence 0.80 rule; the report says so.

    \b
    Examples:
      edge-bench trust models/model_int8.tflite --ood ../shared/data/external/bccd-fields
      edge-bench trust models --ood ../shared/data/external/natural-photos \\
          --ood ../shared/data/external/synthetic --json trust.json --plots trust-plots
      edge-bench trust runs/conv --data runs/conv/split.csv --split val --markdown trust.md
    """
    if plots_dir is not None and (reason := cannot_write_in(plots_dir)):
        raise click.BadParameter(f"cannot write in {plots_dir} ({reason})", param_hint="--plots")
    try:
        folders = [read_ood_folder(folder) for folder in ood_folders]
        entries = discover_models(models)
        eval_set = resolve_eval_set(data, entries, data_root, split, limit_per_class)
    except (TrustBenchError, ModelDiscoveryError, DatasetError) as error:
        raise click.ClickException(str(error).splitlines()[0]) from None
    for folder in folders:
        if folder.skipped:
            click.echo(
                f"edge-bench trust: {folder.path}: {folder.skipped} file(s) did not decode, skipped",
                err=True,
            )
    click.echo(
        f"edge-bench trust: {len(entries)} model(s) on {eval_set.describe()}; "
        f"{len(folders)} OOD folder(s)",
        err=True,
    )
    rows, failed = [], []
    for entry in entries:
        if entry.kind != "tflite":
            failed.append(f"{entry.path}: only .tflite models are evaluated")
            continue
        try:
            progress = lambda items, name=entry.name: progress_bar(
                items, desc=name, unit="image", enabled=not quiet
            )
            rows.append(
                evaluate_model(entry, eval_set, folders, threads, progress, allow_unverified)
            )
        except (ModelError, LabelMismatchError, TrustError, ValueError) as error:
            failed.append(f"{entry.path}: {str(error).splitlines()[0]}")
            click.echo(f"edge-bench trust: {failed[-1]}", err=True)
    if not rows:
        raise click.ClickException(
            "no model could be evaluated" + (f": {failed[0]}" if failed else "")
        )
    click.echo(tables(rows))
    if json_path is not None:
        report = {
            "environment": describe_environment(),
            "data": eval_set.source,
            "n": len(eval_set.samples),
            "ood_folders": [
                {"path": str(f.path), "n": len(f.images), "skipped": f.skipped} for f in folders
            ],
            "rows": rows,
            "failed": failed,
        }
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}", err=True)
    if markdown_path is not None:
        markdown_path.write_text(f"Data: {eval_set.describe()}\n\n{tables(rows, markdown=True)}\n")
        click.echo(f"wrote {markdown_path}", err=True)
    if plots_dir is not None:
        plot_reliability(rows, plots_dir / "reliability.png")
        plot_risk_coverage(rows, plots_dir / "risk_coverage.png")
        click.echo(
            f"wrote {plots_dir / 'reliability.png'} and {plots_dir / 'risk_coverage.png'}", err=True
        )
    if failed:
        sys.exit(1)
