"""`edge-bench app`: what the Pi app costs per frame, stage by stage, against a bare invoke.

Two paths, measured separately because they cost differently:

- **camera**: frames are decoded RGB arrays already in memory, as picamera2 delivers them
  (`capture_array`): no JPEG decode. This is the path the 1.3x target is about.
- **file**: each frame is a JPEG file decoded by the app's own `load_rgb` first (replayed
  slides, `--source FOLDER`).

Each frame goes through the app's real `FrameProcessor.process` (quality gate, prepare, invoke,
decision, SQLite commit). The stages are timed by wrapping the processor's own methods on the
instance, so the code that runs is exactly the app's; what the wrappers do not cover is reported
as "other". Right after each frame, one bare `interpreter.invoke()` on the same input is timed,
so the baseline sees the same machine load. A run is `--repeats` alternating camera/file passes;
the ratio reported is the median of the passes' ratios. `--soak N` then drives the real app
loop (looping file source, SQLite) for N frames and reports RSS at start and end.
"""

from __future__ import annotations

import contextlib
import gc
import io
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from leukedge.benchmarks.measure import rss_mb
from leukedge.benchmarks.models import table_name
from leukedge.benchmarks.schema import APP_PATHS, APP_STAGES, AppRow, app_row
from leukedge.edge_app.app import App, FrameProcessor
from leukedge.edge_app.imaging import load_rgb
from leukedge.edge_app.runtime import Classifier
from leukedge.edge_app.settings import DecisionSettings, QualitySettings, RunSettings
from leukedge.edge_app.sources import Frame, open_source
from leukedge.edge_app.storage import ResultStore

TARGET_RATIO = 1.3  # issue 14: the camera path costs at most 1.3x the bare invoke
# The FrameProcessor / Classifier / ResultStore methods timed as each stage (decode is timed
# directly, "other" is the remainder).
WRAPPED = {
    "quality": ("processor", "gate"),
    "prepare": ("processor", "prepare"),
    "invoke": ("classifier", "invoke_outputs"),
    "decision": ("processor", "decide"),
    "sqlite": ("store", "add"),
}


@dataclass(frozen=True)
class AppBenchSettings:
    frames: int = 300  # timed frames per pass
    repeats: int = 5  # passes per path; the reported ratio is their median
    warmup: int = 20  # untimed frames before each pass
    threads: int | None = None  # interpreter threads; None: the app's default, min(4, cores)
    paths: tuple[str, ...] = APP_PATHS
    allow_unverified: bool = False


class _StageClock:
    """Wraps methods so each call's duration lands in the current frame's stage totals."""

    def __init__(self) -> None:
        self.frame: dict[str, float] = {}
        self.wrapped: list[tuple[object, str]] = []

    def wrap(self, owner: object, method: str, stage: str) -> None:
        original = getattr(owner, method)
        clock = time.perf_counter

        def timed(*args, **kwargs):
            started = clock()
            try:
                return original(*args, **kwargs)
            finally:
                self.frame[stage] = self.frame.get(stage, 0.0) + (clock() - started) * 1000.0

        setattr(owner, method, timed)  # an instance attribute: shadows the class's method
        self.wrapped.append((owner, method))

    def unwrap(self) -> None:
        """Remove the wrappers (the classifier outlives a pass: wrappers must not pile up)."""
        for owner, method in self.wrapped:
            delattr(owner, method)
        self.wrapped.clear()


def _pass(classifier: Classifier, path: str, frames: Sequence, count: int, warmup: int) -> dict:
    """One timed pass over `count` frames of one path; medians of each stage and of the baseline."""
    with tempfile.TemporaryDirectory(prefix="edge-bench-app-") as folder:
        store = ResultStore(Path(folder) / "bench.sqlite")
        settings = RunSettings(headless=True)
        processor = FrameProcessor(
            classifier,
            store,
            None,
            settings,
            QualitySettings(),
            DecisionSettings(),
            "edge-bench app",
        )
        stages = _StageClock()
        owners = {"processor": processor, "classifier": classifier, "store": store}
        for stage, (owner, method) in WRAPPED.items():
            stages.wrap(owners[owner], method, stage)
        per_stage: dict[str, list[float]] = {stage: [] for stage in APP_STAGES}
        totals, invokes = [], []
        clock = time.perf_counter
        try:
            for number in range(warmup + count):
                item = frames[number % len(frames)]
                stages.frame = {}
                started = clock()
                if path == "file":
                    rgb = load_rgb(item)
                    decoded = clock()
                    stages.frame["decode"] = (decoded - started) * 1000.0
                    origin = str(item)
                else:
                    rgb, origin = item, f"camera#{number}"
                processor.process(Frame(rgb, origin), None)
                total = (clock() - started) * 1000.0
                # The baseline: a bare invoke on the input just set, under the same load.
                begin = clock()
                classifier.interpreter.invoke()
                bare = (clock() - begin) * 1000.0
                if number < warmup:
                    continue
                timed = sum(stages.frame.values())
                for stage in APP_STAGES:
                    value = stages.frame.get(stage)
                    per_stage[stage].append(max(0.0, total - timed) if stage == "other" else value)
                totals.append(total)
                invokes.append(bare)
        finally:
            stages.unwrap()
            store.close()
    return {
        "stage_ms": {
            stage: (float(np.median(values)) if values and None not in values else None)
            for stage, values in per_stage.items()
        },
        "frame_ms": float(np.median(totals)),
        "invoke_ms": float(np.median(invokes)),
        "seconds": float(np.sum(totals)) / 1000.0,
    }


def bench_model(
    model: Path,
    images: Sequence[Path],
    settings: AppBenchSettings,
    progress: Callable[[str], None] | None = None,
    name: str | None = None,
) -> list[AppRow]:
    """One AppRow per path for this model: medians over `settings.repeats` alternating passes.

    `name` is the model's name in tables (default: parent folder / file name).
    """
    classifier = Classifier(
        model, threads=settings.threads, allow_unverified=settings.allow_unverified
    )
    inputs = {"file": list(images)}
    if "camera" in settings.paths:
        # What picamera2 hands the app: decoded RGB arrays. Decoded once here, outside timing.
        inputs["camera"] = [
            load_rgb(path) for path in images[: max(1, min(len(images), settings.frames))]
        ]
    passes: dict[str, list[dict]] = {path: [] for path in settings.paths}
    for repeat in range(settings.repeats):
        for path in settings.paths:  # alternating, so both paths see the same machine load
            if progress:
                progress(f"{model.name} {path} pass {repeat + 1}/{settings.repeats}")
            passes[path].append(
                _pass(classifier, path, inputs[path], settings.frames, settings.warmup)
            )
    rows = []
    runtime = f"{classifier.runtime.name} {classifier.runtime.version}"
    for path, done in passes.items():
        ratios = [p["frame_ms"] / p["invoke_ms"] for p in done]
        stage_ms = {
            stage: (
                float(np.median([p["stage_ms"][stage] for p in done]))
                if all(p["stage_ms"][stage] is not None for p in done)
                else None
            )
            for stage in APP_STAGES
        }
        seconds = sum(p["seconds"] for p in done)
        rows.append(
            app_row(
                model=str(model),
                name=name or table_name(Path(model)),
                variant=classifier.variant,
                path=path,
                threads=classifier.threads,
                runtime=runtime,
                frames=settings.frames,
                repeats=settings.repeats,
                stage_ms=stage_ms,
                frame_ms=float(np.median([p["frame_ms"] for p in done])),
                invoke_ms=float(np.median([p["invoke_ms"] for p in done])),
                overhead_ms=float(np.median([p["frame_ms"] - p["invoke_ms"] for p in done])),
                ratio=float(np.median(ratios)),
                ratios=[round(r, 4) for r in ratios],
                fps=settings.frames * len(done) / seconds if seconds else 0.0,
            )
        )
    return rows


@dataclass
class SoakResult:
    model: str
    frames: int
    seconds: float
    rss_start_mb: float | None
    rss_end_mb: float | None
    stored: int

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        growth = (self.rss_end_mb or 0.0) - (self.rss_start_mb or 0.0)
        return (
            f"soak: {self.frames} frames in {self.seconds:.1f} s ({self.frames / self.seconds:.0f} FPS), "
            f"{self.stored} results stored, RSS {self.rss_start_mb:.1f} MiB at start -> "
            f"{self.rss_end_mb:.1f} MiB at end ({growth:+.1f} MiB)"
        )


def soak(
    model: Path,
    images: str,
    frames: int,
    threads: int | None,
    warmup: int = 200,
    allow_unverified: bool = False,
) -> SoakResult:
    """The real app loop (file source, looping) for `frames` frames; RSS after warm-up and at the end."""
    classifier = Classifier(model, threads=threads, allow_unverified=allow_unverified)
    with tempfile.TemporaryDirectory(prefix="edge-bench-soak-") as folder:
        store = ResultStore(Path(folder) / "soak.sqlite")

        def run(count: int) -> None:
            settings = RunSettings(headless=True, loop=True, max_frames=count)
            processor = FrameProcessor(
                classifier, store, None, settings, QualitySettings(), DecisionSettings(), images
            )
            app = App(lambda: open_source(images, loop=True), processor, settings)
            with contextlib.redirect_stdout(io.StringIO()):  # the JSON lines are not the point here
                app.run()

        run(warmup)
        gc.collect()
        start_rss = rss_mb()
        started = time.perf_counter()
        run(frames)
        seconds = time.perf_counter() - started
        gc.collect()
        end_rss = rss_mb()
        stored = store.count()
        store.close()
    return SoakResult(str(model), frames, seconds, start_rss, end_rss, stored - warmup)


def table(rows: Sequence[AppRow], markdown: bool = False) -> str:
    from leukedge.benchmarks.report import format_table

    headers = [
        "model",
        "variant",
        "path",
        *[f"{s} ms" for s in APP_STAGES],
        "frame ms",
        "bare invoke ms",
        "overhead ms",
        "frame/invoke",
        "range",
        "FPS",
    ]
    cells = []
    for row in rows:
        cells.append(
            [
                row["name"],
                row["variant"] or "-",
                row["path"],
                *[
                    "-" if row["stage_ms"][s] is None else f"{row['stage_ms'][s]:.3f}"
                    for s in APP_STAGES
                ],
                f"{row['frame_ms']:.3f}",
                f"{row['invoke_ms']:.3f}",
                f"{row['overhead_ms']:.3f}",
                f"**{row['ratio']:.2f}**" if markdown else f"{row['ratio']:.2f}",
                f"{min(row['ratios']):.2f}-{max(row['ratios']):.2f}",
                f"{row['fps']:.1f}",
            ]
        )
    return format_table(headers, cells, markdown=markdown)


def verdicts(rows: Sequence[AppRow]) -> list[str]:
    """One line per camera-path row: does it meet the 1.3x target?"""
    lines = []
    for row in rows:
        if row["path"] != "camera":
            continue
        verdict = "meets" if row["ratio"] <= TARGET_RATIO else "misses"
        lines.append(
            f"{Path(row['model']).name} ({row['variant'] or 'unlisted'}), camera path: frame/invoke "
            f"{row['ratio']:.2f} (median of {row['repeats']}, range {min(row['ratios']):.2f}-"
            f"{max(row['ratios']):.2f}) {verdict} the {TARGET_RATIO} target "
            f"({row['frame_ms']:.3f} ms vs {row['invoke_ms']:.3f} ms, {row['threads']} thread(s))"
        )
    return lines
