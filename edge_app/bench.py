"""`edge-app bench`: what the app costs per frame on this machine, stage by stage.

For each model: median milliseconds of decode, quality gate, preprocessing, inference and
storage (decision + SQLite commit) over the same frames, the raw interpreter invoke median
measured in the same run, their ratio, and frames per second of the whole pipeline. An optional
soak run drives the real app loop over thousands of frames and reports RSS at start and end.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leukedge.edge_app.app import App, FrameProcessor
from leukedge.edge_app.imaging import load_rgb
from leukedge.edge_app.runtime import Classifier
from leukedge.edge_app.settings import DecisionSettings, QualitySettings, RunSettings
from leukedge.edge_app.sources import Frame, open_source
from leukedge.edge_app.sources.files import list_images
from leukedge.edge_app.storage import ResultStore, utc_now

STAGES = ("decode", "quality", "preprocess", "inference", "storage")


def rss_mib() -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@dataclass
class BenchResult:
    model: str
    variant: str | None
    runtime: str
    threads: int
    frames: int
    stage_ms: dict[str, float] = field(default_factory=dict)  # medians
    app_ms: float = 0.0  # median of the per-frame sum of stages
    invoke_ms: float = 0.0  # median raw interpreter.invoke(), same run
    fps: float = 0.0  # frames per second of the pipeline (its stages only, not the baseline runs)

    @property
    def ratio(self) -> float:
        return self.app_ms / self.invoke_ms if self.invoke_ms else float("nan")

    def as_dict(self) -> dict:
        return {"model": self.model, "variant": self.variant, "runtime": self.runtime, "threads": self.threads,
                "frames": self.frames, "stage_median_ms": self.stage_ms, "app_median_ms": self.app_ms,
                "invoke_median_ms": self.invoke_ms, "ratio": self.ratio, "fps": self.fps}


def bench_model(model: Path, images: list[Path], frames: int, threads: int | None, warmup: int = 20,
                allow_unverified: bool = False) -> BenchResult:
    classifier = Classifier(model, threads=threads, allow_unverified=allow_unverified)
    settings = RunSettings(headless=True)
    with tempfile.TemporaryDirectory(prefix="leukedge-bench-") as folder:
        store = ResultStore(Path(folder) / "bench.sqlite")
        processor = FrameProcessor(classifier, store, None, settings, QualitySettings(), DecisionSettings(),
                                   "bench")
        times = {stage: [] for stage in STAGES}
        invokes: list[float] = []
        clock = time.perf_counter
        pipeline_s = 0.0
        for number in range(warmup + frames):
            if number == warmup:
                times = {stage: [] for stage in STAGES}
                invokes, pipeline_s = [], 0.0
            path = images[number % len(images)]
            t0 = clock()
            rgb = load_rgb(path)
            t1 = clock()
            quality = processor.gate(rgb)
            t2 = clock()
            tensor = processor.prepare(rgb)
            t3 = clock()
            probabilities, ood_score = classifier.invoke_outputs(tensor)
            t4 = clock()
            decision = processor.decide(quality, probabilities if quality.ok else None, ood_score)
            processor.record(Frame(rgb, str(path)), quality, decision, None, utc_now())
            t5 = clock()
            for stage, (a, b) in zip(STAGES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
                times[stage].append((b - a) * 1000)
            pipeline_s += t5 - t0
            # The baseline: a bare interpreter.invoke() on the same input, right after the
            # frame, so both see the same machine load (other processes, CPU clock).
            t6 = clock()
            classifier.interpreter.invoke()
            invokes.append((clock() - t6) * 1000)
        store.close()
    per_frame = np.sum([times[stage] for stage in STAGES], axis=0)
    return BenchResult(str(model), classifier.variant, f"{classifier.runtime.name} {classifier.runtime.version}",
                       classifier.threads, frames,
                       {stage: float(np.median(values)) for stage, values in times.items()},
                       float(np.median(per_frame)), float(np.median(invokes)), frames / pipeline_s)


@dataclass
class SoakResult:
    frames: int
    seconds: float
    rss_start_mib: float | None
    rss_end_mib: float | None
    stored: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def soak(model: Path, images: str, frames: int, threads: int | None, warmup: int = 200,
         allow_unverified: bool = False) -> SoakResult:
    """The real app loop (file source, looping) for `frames` frames; RSS after warm-up and at the end."""
    classifier = Classifier(model, threads=threads, allow_unverified=allow_unverified)
    with tempfile.TemporaryDirectory(prefix="leukedge-soak-") as folder:
        store = ResultStore(Path(folder) / "soak.sqlite")

        def run(count: int) -> None:
            settings = RunSettings(headless=True, loop=True, max_frames=count)
            processor = FrameProcessor(classifier, store, None, settings, QualitySettings(),
                                       DecisionSettings(), images)
            app = App(lambda: open_source(images, loop=True), processor, settings)
            with contextlib.redirect_stdout(io.StringIO()) as sink:
                app.run()
                del sink
        run(warmup)
        gc.collect()
        start_rss = rss_mib()
        started = time.perf_counter()
        run(frames)
        seconds = time.perf_counter() - started
        gc.collect()
        end_rss = rss_mib()
        stored = store.count()
        store.close()
    return SoakResult(frames, seconds, start_rss, end_rss, stored - warmup)


def find_models(models: tuple[Path, ...]) -> list[Path]:
    """Model files; a folder stands for every variant its manifest.json lists (fp32, fp16, ...)."""
    found: list[Path] = []
    for item in models:
        if item.is_dir():
            manifest = item / "manifest.json"
            if manifest.is_file():
                variants = json.loads(manifest.read_text()).get("variants", {})
                found += [item / entry["file"] for entry in variants.values() if (item / entry["file"]).is_file()]
            else:
                found += sorted(item.glob("*.tflite"))
        else:
            found.append(item)
    return found


def format_table(results: list[BenchResult]) -> str:
    header = ["model", "variant", *[f"{s} ms" for s in STAGES], "app ms", "invoke ms", "app/invoke", "FPS"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [f"{Path(r.model).parent.name}/{Path(r.model).name}", r.variant or "-", *[f"{r.stage_ms[s]:.3f}" for s in STAGES],
                 f"{r.app_ms:.3f}", f"{r.invoke_ms:.3f}", f"{r.ratio:.2f}", f"{r.fps:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def image_list(spec: str) -> list[Path]:
    return list_images(spec)

