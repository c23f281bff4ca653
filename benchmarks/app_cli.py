"""The `edge-bench app` command (the measuring lives in benchmarks.app)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from leukedge.benchmarks.app import AppBenchSettings, bench_model, soak, table, verdicts
from leukedge.benchmarks.environment import describe_environment
from leukedge.benchmarks.models import ModelDiscoveryError, discover_models
from leukedge.benchmarks.options import models_argument, output_option, threads_option
from leukedge.benchmarks.schema import APP_PATHS
from leukedge.edge_app.imaging import ImageDecodeError, load_rgb
from leukedge.edge_app.runtime import ModelError
from leukedge.edge_app.sources import SourceError
from leukedge.edge_app.sources.files import list_images
from leukedge.train.dataset import DatasetError, default_data_dir


def _readable(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The paths whose images decode, and the errors of those that do not."""
    readable, errors = [], []
    for path in paths:
        try:
            load_rgb(path)
        except ImageDecodeError as error:
            errors.append(str(error))
        else:
            readable.append(path)
    return readable, errors


def _default_images() -> str:
    try:
        folder = default_data_dir() / "Original"
    except DatasetError:
        folder = None
    if folder is None or not folder.is_dir():
        raise click.BadParameter(
            "no default images ($LEUKEDGE_DATA or ../shared/data/all-leukemia/Original "
            "not found): pass --images FOLDER",
            param_hint="--images",
        )
    return str(folder)


def _paths_option(ctx, param, value: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [p for p in chosen if p not in APP_PATHS]
    if unknown or not chosen:
        raise click.BadParameter(f"{value!r}: use camera, file or camera,file")
    return chosen


@click.command("app")
@models_argument()
@click.option(
    "--images",
    default=None,
    help="Image file, folder or quoted glob fed through the pipeline (replayed in a loop). "
    "Default: the dataset's Original folder ($LEUKEDGE_DATA or ../shared/data/all-leukemia).",
)
@click.option(
    "--frames",
    type=click.IntRange(min=10),
    default=300,
    show_default=True,
    help="Timed frames per pass (after --warmup untimed ones).",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Passes per path, alternating camera/file; the ratio is their median.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Untimed frames before each pass.",
)
@click.option(
    "--paths",
    "paths",
    default="camera,file",
    show_default=True,
    callback=_paths_option,
    help="Which paths: camera (decoded arrays, no JPEG decode), file (decode each JPEG), or both.",
)
@click.option(
    "--soak",
    "soak_frames",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also run the real app loop over this many frames of the first model (e.g. 5000) "
    "and report RSS at start and end.",
)
@threads_option("Interpreter threads. Default: the app's, min(4, cores).")
@click.option(
    "--allow-unverified", is_flag=True, help="Bench models that do not match their manifest.json."
)
@output_option("--json", "json_path", "Write every figure as JSON.")
@output_option("--markdown", "markdown_path", "Write the table as Markdown.")
def app_command(
    models: tuple[Path, ...],
    images: str | None,
    frames: int,
    repeats: int,
    warmup: int,
    paths: tuple[str, ...],
    soak_frames: int,
    threads: int | None,
    allow_unverified: bool,
    json_path: Path | None,
    markdown_path: Path | None,
) -> None:
    """Per-frame cost of the Pi app's pipeline against a bare invoke, camera and file paths apart.

    MODELS are .tflite files or edge-convert folders (every variant); default: the released
    int8 model. Per stage (decode, quality gate, prepare, invoke, decision, SQLite commit,
    other) the median ms, the median frame time, the median bare interpreter.invoke() measured
    right after each frame, their ratio (target <= 1.3 on the camera path) and FPS.

    \b
    Examples:
      edge-bench app                                           # released int8, dataset images
      edge-bench app models --repeats 5 --json app.json --markdown app.md
      edge-bench app models/model_int8.tflite --images slides/ --paths camera --threads 2
      edge-bench app models/model_int8.tflite --frames 100 --repeats 1 --soak 5000
    """
    images = images or _default_images()
    try:
        entries = discover_models(models)
        image_files = list_images(images)
    except ModelDiscoveryError as error:
        raise click.ClickException(str(error)) from None
    except SourceError as error:
        raise click.ClickException(str(error).replace("--source", "--images")) from None
    # The timed passes replay the first warm-up + frames images: an unreadable one is left out
    # here, as the app's own folder source skips it, instead of ending the run in a traceback.
    image_files, unreadable = _readable(image_files[: warmup + frames])
    if unreadable:
        click.echo(
            f"edge-bench app: left out {len(unreadable)} unreadable image(s), e.g. {unreadable[0]}",
            err=True,
        )
    if not image_files:
        raise click.BadParameter(f"{images}: none of its images can be read", param_hint="--images")
    settings = AppBenchSettings(
        frames=frames,
        repeats=repeats,
        warmup=warmup,
        threads=threads,
        paths=paths,
        allow_unverified=allow_unverified,
    )
    environment = describe_environment()
    rows, failed = [], []
    for entry in entries:
        if entry.kind != "tflite":
            failed.append(f"{entry.path}: the app runs .tflite models only")
            continue
        try:
            rows += bench_model(
                entry.path,
                image_files,
                settings,
                progress=lambda text: click.echo(f"edge-bench app: {text}", err=True),
                name=entry.name,
            )
        except ModelError as error:  # one bad model must not hide the others' figures
            failed.append(str(error).splitlines()[0])
            click.echo(f"edge-bench app: skipped {entry.path}: {failed[-1]}", err=True)
    if not rows:
        raise click.ClickException(
            "no model could be benchmarked" + (f": {failed[0]}" if failed else "")
        )
    click.echo(
        f"{environment['cpu']} ({environment['cores']} cores; SIMD {' '.join(environment['simd'])}), "
        f"load average {' '.join(f'{v:.1f}' for v in environment['load_average'] or [])}; "
        f"{len(image_files)} image(s) from {images}"
    )
    click.echo(table(rows))
    for line in verdicts(rows):
        click.echo(line)
    report = {
        "environment": environment,
        "settings": {**settings.__dict__, "images": images, "n_images": len(image_files)},
        "rows": rows,
        "failed": failed,
        "soak": None,
    }
    if soak_frames:
        click.echo(
            f"edge-bench app: soak, {soak_frames} frames through the app loop with {entries[0].path}",
            err=True,
        )
        outcome = soak(
            entries[0].path, images, soak_frames, threads, allow_unverified=allow_unverified
        )
        report["soak"] = outcome.as_dict()
        click.echo(outcome.describe())
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}", err=True)
    if markdown_path is not None:
        lines = [table(rows, markdown=True), "", *[f"- {line}" for line in verdicts(rows)]]
        if report["soak"]:
            lines.append(f"- {outcome.describe()}")
        markdown_path.write_text("\n".join(lines) + "\n")
        click.echo(f"wrote {markdown_path}", err=True)
    if failed:
        sys.exit(1)
