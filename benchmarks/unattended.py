"""`edge-bench unattended`: months beside a microscope, compressed into one run.

Drives the app's real loop (`edge_app.app.App` + `FrameProcessor` + the storage budget of
`edge_app.budget`) over a looping image folder that stands in for a camera: frames are not
"new files" (smoothing and the save policy treat them as one stream), and a simulated clock
advances 1/--rate seconds per frame, so the save policy and --keep-days see the hours pass that
a real camera would take. Reports, per --chunk frames: rows stored, database bytes, saved-image
bytes (measured on disk), images saved and pruned, and RSS; at the end, frames lost (frames the
loop processed minus rows stored, which must be 0).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click

from leukedge.benchmarks.measure import rss_mb as rss_mib
from leukedge.benchmarks.options import model_option, output_option, threads_option
from leukedge.edge_app.app import App, FrameProcessor
from leukedge.edge_app.budget import MB, SaveSettings, check_budget_options, open_saver
from leukedge.edge_app.clitools import FiniteFloat
from leukedge.edge_app.runtime import Classifier, ModelError, default_model_path
from leukedge.edge_app.settings import DecisionSettings, QualitySettings, RunSettings
from leukedge.edge_app.sources import Frame, FrameSource, SourceError
from leukedge.edge_app.sources.files import ImageFileSource
from leukedge.edge_app.storage import ResultStore
from leukedge.train.dataset import default_data_dir


class SimulatedClock:
    """Wall-clock seconds that advance one frame interval per frame read."""

    def __init__(self, step_s: float):
        self.now, self.step_s = time.time(), step_s

    def __call__(self) -> float:
        return self.now


class SimulatedCamera(FrameSource):
    """A looping image folder read as one camera stream (no per-file case boundaries)."""

    live = False

    def __init__(self, spec: str, clock: SimulatedClock):
        self.files = ImageFileSource(spec, loop=True)
        self.clock, self.name = clock, f"simulated camera ({spec})"
        self.read_count = 0

    def open(self) -> None:
        self.files.open()

    def read(self) -> Frame | None:
        frame = self.files.read()
        self.clock.now += self.clock.step_s
        self.read_count += 1
        return Frame(frame.rgb, f"camera#{self.read_count}")


class _LineCounter:
    """stdout for the app's JSON lines: counted, not kept (100,000 lines)."""

    def __init__(self) -> None:
        self.lines = 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        return len(text)

    def flush(self) -> None:
        pass


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def db_bytes(db: Path) -> int:
    return sum(
        Path(f"{db}{suffix}").stat().st_size
        for suffix in ("", "-wal", "-shm")
        if Path(f"{db}{suffix}").exists()
    )


@dataclass
class Chunk:
    frames: int
    rows: int
    db_mb: float
    images_mb: float
    images_saved: int
    images_pruned: int
    rss_mib: float | None
    simulated_hours: float


def simulate(
    model: Path,
    images: str,
    frames: int,
    chunk: int,
    rate: float,
    settings: SaveSettings,
    work: Path,
    threads: int | None,
    progress=None,
) -> dict:
    classifier = Classifier(model, threads=threads)
    db, save_dir = work / "results.sqlite", work / "frames"
    store = ResultStore(db)
    clock = SimulatedClock(1.0 / rate)
    saver = open_saver(save_dir, "jpg", settings, store.connection, clock)
    if saver is None:
        raise click.ClickException(f"{save_dir}: cannot save images there")
    run = RunSettings(mode="live", headless=True, loop=True)
    processor = FrameProcessor(
        classifier,
        store,
        saver.writer,
        run,
        QualitySettings(),
        DecisionSettings(),
        "simulated camera",
    )
    processor.saver = saver
    camera = SimulatedCamera(images, clock)
    camera.open()
    started_clock = clock.now
    rss_start = rss_mib()
    counter = _LineCounter()
    chunks: list[Chunk] = []
    started = time.perf_counter()
    done = 0
    while done < frames:
        size = min(chunk, frames - done)
        app = App(
            lambda: camera,
            processor,
            RunSettings(mode="live", headless=True, loop=True, max_frames=size),
        )
        with contextlib.redirect_stdout(counter):  # the app's JSON lines, one per frame
            counts = app.run()
        done += counts.processed
        chunks.append(
            Chunk(
                done,
                store.count(),
                db_bytes(db) / MB,
                folder_bytes(save_dir) / MB,
                saver.saved,
                saver.budget.pruned,
                rss_mib(),
                (clock.now - started_clock) / 3600,
            )
        )
        if progress is not None:
            progress(chunks[-1])
        if counts.processed < size:
            break
    seconds = time.perf_counter() - started
    rows = store.count()
    store.close()
    return {
        "model": str(model),
        "images": images,
        "frames": done,
        "rows": rows,
        "frames_lost": done - rows,
        "json_lines": counter.lines,
        "seconds": seconds,
        "fps": done / seconds if seconds else None,
        "simulated_rate_fps": rate,
        "save": settings.__dict__,
        "rss_start_mib": rss_start,
        "rss_end_mib": rss_mib(),
        "chunks": [c.__dict__ for c in chunks],
        "summary": saver.summary(),
    }


def markdown(result: dict) -> str:
    lines = [
        "| frames | rows | DB MB | images MB | images saved | pruned | RSS MiB | simulated hours |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["chunks"]:
        lines.append(
            f"| {c['frames']:,} | {c['rows']:,} | {c['db_mb']:.1f} | {c['images_mb']:.1f} | "
            f"{c['images_saved']:,} | {c['images_pruned']:,} | {c['rss_mib']:.1f} | "
            f"{c['simulated_hours']:.1f} |"
        )
    return "\n".join(lines)


@click.command("unattended")
# exists=False: a missing file is reported by the model loader, as it always was here.
@model_option("The .tflite model. Default: the released int8 model.", exists=False)
@click.option(
    "--images",
    default=None,
    help="Image folder or glob replayed as the camera. Default: the dataset's Original/ folder.",
)
@click.option(
    "--frames",
    type=click.IntRange(1),
    default=100_000,
    show_default=True,
    help="Frames to run through the app loop.",
)
@click.option(
    "--chunk",
    type=click.IntRange(1),
    default=10_000,
    show_default=True,
    help="Report disk, database and RSS every this many frames.",
)
@click.option(
    "--rate",
    type=FiniteFloat(0, min_open=True),
    default=1.0,
    show_default=True,
    help="Simulated camera frames per second (the clock the save policy sees).",
)
@click.option(
    "--save-every",
    "save_every_s",
    type=FiniteFloat(),
    default=10.0,
    show_default=True,
    help="Save policy: seconds between saved frames.",
)
@click.option(
    "--max-disk-mb",
    type=FiniteFloat(),
    default=50.0,
    show_default=True,
    help="Budget for saved images.",
)
@click.option(
    "--keep-days",
    type=FiniteFloat(),
    default=None,
    help="Age limit for saved images (simulated days).",
)
@threads_option("Interpreter threads. Default: the app's, min(4, cores).")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the database and images go (default: a temporary folder, removed after).",
)
@output_option("--json", "json_path", "Also write every figure as JSON.")
def unattended_command(
    model,
    images,
    frames,
    chunk,
    rate,
    save_every_s,
    max_disk_mb,
    keep_days,
    threads,
    work_dir,
    json_path,
) -> None:
    """Simulate a long unattended run (default 100,000 frames) and report the storage it takes.

    Disk use and database growth per --chunk frames, RSS at start and end, and frames lost
    (must be 0; exit 1 otherwise).

    \b
    Examples:
      edge-bench unattended --json unattended.json
      edge-bench unattended --frames 20000 --max-disk-mb 10 --rate 2 --save-every 5
    """
    try:
        check_budget_options(max_disk_mb, keep_days, save_every_s, 0.0)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    model = model or default_model_path()
    if model is None:
        raise click.UsageError("no --model given and no released model in models/")
    images = images or str(default_data_dir() / "Original")
    settings = SaveSettings("changes", save_every_s, max_disk_mb, keep_days, min_free_mb=0.0)

    def report(c: Chunk) -> None:
        click.echo(
            f"unattended: {c.frames:,} frames, {c.rows:,} rows, DB {c.db_mb:.1f} MB, images "
            f"{c.images_mb:.1f} MB ({c.images_saved:,} saved, {c.images_pruned:,} pruned), "
            f"RSS {c.rss_mib:.1f} MiB",
            err=True,
        )

    if work_dir is not None and work_dir.is_dir() and any(work_dir.iterdir()):
        # Its frame count would add to an earlier run's rows (and a real app folder would get
        # benchmark rows): a simulation starts from an empty folder.
        raise click.BadParameter(
            f"{work_dir} is not empty: give a new or empty folder", param_hint="--work-dir"
        )
    with contextlib.ExitStack() as stack:
        work = work_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="leukedge-unattended-"))
        )
        work.mkdir(parents=True, exist_ok=True)
        try:
            result = simulate(model, images, frames, chunk, rate, settings, work, threads, report)
        except ModelError as error:
            raise click.ClickException(str(error)) from None
        except SourceError as error:  # the app's message names its own option
            raise click.ClickException(str(error).replace("--source", "--images")) from None
    click.echo(markdown(result))
    click.echo(
        f"{result['frames']:,} frames in {result['seconds']:.0f} s ({result['fps']:.0f} FPS); "
        f"RSS {result['rss_start_mib']:.1f} MiB at start -> {result['rss_end_mib']:.1f} MiB at end; "
        f"frames lost: {result['frames_lost']}; {result['summary']}"
    )
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    if result["frames_lost"] != 0 or result["json_lines"] != result["frames"]:
        click.echo(f"edge-bench unattended: {result['frames_lost']} frame(s) lost", err=True)
        sys.exit(1)
