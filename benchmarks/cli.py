"""`edge-bench`: which model variant and thread count to ship on this board.

`edge-bench MODEL_OR_DIR... [options]` runs the benchmark (the `run` command, the default);
`edge-bench robustness ...` and `edge-bench fidelity ...` are subcommands.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click
from tqdm import tqdm

from leukedge.benchmarks import report
from leukedge.benchmarks.evaluation import resolve_eval_set
from leukedge.benchmarks.models import ModelDiscoveryError, discover_models
from leukedge.benchmarks.options import (
    data_option,
    data_root_option,
    limit_per_class_option,
    models_argument,
    output_option,
    split_option,
    thread_counts_option,
)
from leukedge.benchmarks.runner import BenchSettings, run_benchmark
from leukedge.edge_app.clitools import DefaultCommandGroup, FiniteFloat, progress_bar
from leukedge.edge_app.runtime import ModelError
from leukedge.train.dataset import DatasetError

EXIT_ROWS_FAILED = 1
EXIT_BELOW_MIN_ACCURACY = 3
EXIT_INTERRUPTED = 130


@click.group(cls=DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmark LeukEdge models on this machine: speed, memory and accuracy per variant.

    \b
    edge-bench runs/default_converted                        # every variant edge-convert wrote
    edge-bench models/model_int8.tflite --threads 1,2,4 --runs 100
    edge-bench runs/conv runs/default/model.keras --json bench.json --plot bench.png
    edge-bench runs/conv --min-accuracy 0.99                 # a release gate (exit 3 below it)
    edge-bench robustness --help                             # accuracy under field shifts
    edge-bench fidelity runs/conv                            # latency vs LiteRT's own tool
    edge-bench app models --json app.json                    # the Pi app's per-frame cost
    edge-bench trust models --ood ../shared/data/external/bccd-fields   # calibration, OOD
    edge-bench unattended --json unattended.json             # 100,000 frames: disk, DB, RSS

    `edge-bench run --help` lists the benchmark's options.
    """


@main.command("run")
@models_argument()
@data_option(
    "Labelled images: a dataset folder (class folders) or a split.csv. "
    "Default: the test split of the split.csv beside the models."
)
@data_root_option(manifest_default=True)
@split_option("Which rows of a split.csv to score on.")
@limit_per_class_option("Score on the first N images per class only.")
@thread_counts_option("Interpreter thread counts, one row each.")
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Timed invocations per row (also the number of end-to-end images).",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Untimed invocations before timing.",
)
@click.option(
    "--max-seconds",
    type=FiniteFloat(min=0, min_open=True),
    help="Stop a row's timed runs after this many seconds (fewer than --runs on a slow board).",
)
@click.option(
    "--min-accuracy",
    type=FiniteFloat(0, 1),
    help="Exit 3 if any row's top-1 accuracy is below this fraction (e.g. 0.99), or a row failed.",
)
# dir_okay: the check words a folder as "is a folder: give a file name" (click: "is a directory")
@output_option("--json", "json_path", "Write every figure as JSON.", dir_okay=True)
@output_option("--csv", "csv_path", "Write one CSV line per row.", dir_okay=True)
@output_option("--markdown", "markdown_path", "Write the table as Markdown.", dir_okay=True)
@output_option("--plot", "plot_path", "Write accuracy vs latency as PNG.", dir_okay=True)
@click.option(
    "--allow-unverified",
    is_flag=True,
    help="Also benchmark .tflite files no manifest vouches for (changed, failed their "
    "conversion check, unlisted or renamed).",
)
def run_command(
    models: tuple[Path, ...],
    data: Path | None,
    data_root: Path | None,
    split: str,
    limit_per_class: int | None,
    threads: tuple[int, ...],
    runs: int,
    warmup: int,
    max_seconds: float | None,
    min_accuracy: float | None,
    json_path: Path | None,
    csv_path: Path | None,
    markdown_path: Path | None,
    plot_path: Path | None,
    allow_unverified: bool,
) -> None:
    """Benchmark MODEL_OR_DIR... (.tflite, .keras, or edge-convert folders).

    Without a model, the released default (models/model_int8.tflite).

    \b
    edge-bench runs/default_converted --json bench.json --csv bench.csv --markdown bench.md --plot bench.png
    edge-bench models/model_int8.tflite --data ../shared/data/all-leukemia --limit-per-class 20
    """
    try:
        entries = discover_models(models)
        eval_set = resolve_eval_set(data, entries, data_root, split, limit_per_class)
    except (ModelDiscoveryError, DatasetError, ModelError) as error:
        raise click.ClickException(str(error).splitlines()[0]) from None
    except KeyboardInterrupt:
        click.echo("edge-bench: interrupted before any row was measured", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo(
        f"edge-bench: {len(entries)} model(s) x {len(threads)} thread count(s) on {eval_set.describe()}",
        err=True,
    )
    settings = BenchSettings(
        threads=threads,
        runs=runs,
        warmup=warmup,
        max_seconds=max_seconds,
        allow_unverified=allow_unverified,
    )
    result = run_benchmark(
        entries,
        eval_set,
        settings,
        # In a log the "row done" lines are the progress; a bar there is redrawn beside each.
        progress=lambda plan: progress_bar(
            plan, desc="edge-bench", unit="row", enabled=sys.stderr.isatty()
        ),
        on_row=_row_logger(len(entries) * len(threads)),
    )
    click.echo(report.console_table(result))
    writers = (
        (json_path, report.write_json),
        (csv_path, report.write_csv),
        (markdown_path, report.write_markdown),
        (plot_path, report.write_plot),
    )
    for path, write in writers:
        if path is not None:
            write(result, path)
            click.echo(f"wrote {path}", err=True)
    sys.exit(exit_code(result, min_accuracy))


def _row_logger(total: int) -> Callable[[dict], None]:
    """One line per finished row on stderr ("row 2/4 done: ..."), so logs show progress."""
    done = 0

    def log_row(row: dict) -> None:
        nonlocal done
        done += 1
        figures = (
            f"p50 {row['latency_ms']['p50']:.2f} ms, accuracy {row['accuracy'] * 100:.2f}%"
            if row["status"] == "ok" and row["accuracy"] is not None
            else row["error"]
        )
        tqdm.write(
            f"row {done}/{total} done: {row['name']} ({row['variant']}), "
            f"{row['threads']} thread(s): {row['status']}, {figures}",
            file=sys.stderr,
        )

    return log_row


def exit_code(result, min_accuracy: float | None) -> int:
    """0 when every row is ok (and at or above --min-accuracy); the reason goes to stderr."""
    if result.interrupted:
        click.echo("edge-bench: interrupted; the rows above are what was measured", err=True)
        return EXIT_INTERRUPTED
    if min_accuracy is not None:
        below = [
            r for r in result.rows if r["status"] == "ok" and (r["accuracy"] or 0.0) < min_accuracy
        ]
        if below or result.failed:
            names = [f"{r['name']} ({r['threads']}t) {r['accuracy'] * 100:.2f}%" for r in below]
            names += [f"{r['name']} ({r['threads']}t) failed" for r in result.failed]
            click.echo(
                f"edge-bench: below --min-accuracy {min_accuracy:.4f}: " + "; ".join(names),
                err=True,
            )
            return EXIT_BELOW_MIN_ACCURACY
    if result.failed:
        click.echo(
            f"edge-bench: {len(result.failed)} of {len(result.rows)} row(s) failed: "
            f"{result.failed[0]['name']}: {result.failed[0]['error']}",
            err=True,
        )
        return EXIT_ROWS_FAILED
    return 0


def _register_subcommands() -> None:
    from leukedge.benchmarks.app_cli import app_command
    from leukedge.benchmarks.fidelity import fidelity_command
    from leukedge.benchmarks.robustness.cli import robustness_command
    from leukedge.benchmarks.trust_cli import trust_command

    main.add_command(fidelity_command, "fidelity")
    from leukedge.benchmarks.review_server import review_server_command
    from leukedge.benchmarks.samples import samples_command

    main.add_command(samples_command, "samples")
    main.add_command(review_server_command, "review-server")
    from leukedge.benchmarks.unattended import unattended_command

    main.add_command(unattended_command, "unattended")
    main.add_command(robustness_command, "robustness")
    main.add_command(app_command, "app")
    main.add_command(trust_command, "trust")


_register_subcommands()
