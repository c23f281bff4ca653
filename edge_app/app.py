"""The app loop: frames in, quality gate, classification, decision, storage, output.

`FrameProcessor` is one frame's work (also timed stage by stage by `edge-bench app`);
`App.run()` drives it from a source in live or capture mode, survives camera failures with
retry and backoff, and shuts down cleanly on SIGINT/SIGTERM with every committed result intact.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from leukedge.edge_app import leukedge_version
from leukedge.edge_app.decision import (
    LABEL,
    UNCERTAIN,
    UNFIT,
    UNKNOWN,
    Decision,
    DecisionRule,
    Smoother,
    decide,
)
from leukedge.edge_app.imaging import prepare
from leukedge.edge_app.preview import Preview
from leukedge.edge_app.quality import Quality, assess
from leukedge.edge_app.runtime import Classifier
from leukedge.edge_app.settings import (
    CameraSettings,
    DecisionSettings,
    QualitySettings,
    RunSettings,
)
from leukedge.edge_app.sources import CameraError, Frame, FrameSource, SkippedFrame
from leukedge.edge_app.storage import FrameWriter, ResultStore, sample_id_problem, utc_now
from leukedge.edge_app.triggers import CAPTURE, QUIT, Triggers

log = logging.getLogger("leukedge.edge_app")


class AppError(RuntimeError):
    """The run cannot go on (camera gone for too long, disk full): a one-line message."""


@dataclass
class Counts:
    processed: int = 0
    skipped: int = 0
    by_decision: dict[str, int] = field(
        default_factory=lambda: {LABEL: 0, UNCERTAIN: 0, UNKNOWN: 0, UNFIT: 0}
    )
    camera_failures: int = 0

    def summary(self) -> str:
        decisions = ", ".join(f"{n} {kind}" for kind, n in self.by_decision.items())
        return (
            f"processed {self.processed} frame(s) ({decisions}); skipped {self.skipped} "
            f"unreadable; {self.camera_failures} camera failure(s)"
        )


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:64].strip("._") or "sample"


class FrameProcessor:
    """One frame: quality gate -> classify -> decide -> store -> report."""

    def __init__(
        self,
        classifier: Classifier,
        store: ResultStore,
        writer: FrameWriter | None,
        settings: RunSettings,
        quality: QualitySettings,
        decisions: DecisionSettings,
        source_name: str,
    ):
        self.classifier, self.store, self.writer = classifier, store, writer
        self.settings, self.quality_settings, self.decisions = settings, quality, decisions
        self.source_name = source_name
        self.smoother = Smoother(decisions.smoothing if settings.mode == "live" else 1)
        self.version = leukedge_version()
        self.runtime = f"{classifier.runtime.name} {classifier.runtime.version}"
        self.rule = DecisionRule.for_model(classifier.trust, decisions.min_confidence)
        self._saved = 0
        self._case_sample: str | None = None
        self.saver = None  # a budget.FrameSaver (edge-app run --save-dir); None: save every frame

    def start_case_if_new(self, frame: Frame, sample_id: str | None) -> None:
        """Smoothing stays inside one case: a new sample ID or a new file starts it over."""
        if frame.new_file or sample_id != self._case_sample:
            self.smoother.reset()
        self._case_sample = sample_id

    def gate(self, rgb: np.ndarray) -> Quality:
        return assess(rgb, self.quality_settings, self.settings.crop_fraction)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        return self.classifier.to_input(
            prepare(rgb, self.classifier.image_size, self.settings.crop_fraction)
        )

    def decide(
        self, quality: Quality, probabilities: np.ndarray | None, ood_score: float | None = None
    ) -> Decision:
        if not quality.ok or probabilities is None:
            self.smoother.reset()  # the slide moved or went out of focus: do not average across it
            return decide(None, self.classifier.labels, self.rule, fit=False)
        # Live smoothing averages probabilities; the OOD score is the frame's own.
        smoothed = self.smoother.update(probabilities)
        return decide(smoothed, self.classifier.labels, self.rule, ood_score)

    def record(
        self,
        frame: Frame,
        quality: Quality,
        decision: Decision,
        sample_id: str | None,
        timestamp: str,
    ) -> dict:
        image_path = None
        if self.writer is not None:
            stamp = timestamp.replace(":", "").replace("-", "").replace(".", "")
            self._saved += 1
            name = f"{safe_name(sample_id) if sample_id else 'frame'}-{stamp}-{self._saved:06d}"
            if self.saver is None:
                image_path = str(self.writer.save(frame.saved_rgb, name))
            else:  # save policy, disk budget and free space decide (edge_app.budget)
                image_path = self.saver.save(
                    frame.saved_rgb,
                    name,
                    decision.kind,
                    decision.label,
                    sample_id,
                    self.settings.mode,
                    frame.new_file,
                )
        row = {
            "timestamp_utc": timestamp,
            "sample_id": sample_id,
            "mode": self.settings.mode,
            "source": self.source_name,
            "frame_origin": frame.origin,
            "decision": decision.kind,
            "label": decision.label,
            "top_label": decision.top_label,
            "confidence": None if decision.confidence is None else round(decision.confidence, 6),
            "probabilities": None
            if decision.probabilities is None
            else json.dumps(decision.probabilities),
            "quality_ok": int(quality.ok),
            "quality_reason": quality.reason,
            "focus": round(quality.focus, 4),
            "brightness": round(quality.brightness, 4),
            "contrast": round(quality.contrast, 4),
            "clipped": round(quality.clipped, 6),
            "ood_score": decision.ood_score,
            "ood_threshold": decision.ood_threshold,
            "decision_rule": decision.rule,
            "prediction_set": None
            if decision.prediction_set is None
            else json.dumps(decision.prediction_set),
            "model_file": self.classifier.path.name,
            "model_sha256": self.classifier.sha256,
            "model_variant": self.classifier.variant,
            "model_verified": int(self.classifier.verified),
            "runtime": self.runtime,
            "app_version": self.version,
            "image_path": image_path,
        }
        row["id"] = self.store.add(row)
        return row

    def process(self, frame: Frame, sample_id: str | None) -> tuple[dict, Decision, Quality]:
        timestamp = utc_now()
        self.start_case_if_new(frame, sample_id)
        quality = self.gate(frame.rgb)
        probabilities, ood_score = (
            self.classifier.invoke_outputs(self.prepare(frame.rgb)) if quality.ok else (None, None)
        )
        decision = self.decide(quality, probabilities, ood_score)
        return self.record(frame, quality, decision, sample_id, timestamp), decision, quality


def json_line(row: dict, decision: Decision, quality: Quality, frame_number: int) -> str:
    return json.dumps(
        {
            "frame": frame_number,
            "id": row["id"],
            "timestamp_utc": row["timestamp_utc"],
            "sample_id": row["sample_id"],
            "source": row["source"],
            "origin": row["frame_origin"],
            "decision": decision.kind,
            "label": decision.label,
            "top_label": decision.top_label,
            "confidence": row["confidence"],
            "probabilities": decision.probabilities,
            "ood_score": decision.ood_score,
            "ood_threshold": decision.ood_threshold,
            "decision_rule": decision.rule,
            "prediction_set": decision.prediction_set,
            "message": decision.message if quality.ok else f"unfit: {quality.reason}",
            "quality": quality.as_dict(),
            "image_path": row["image_path"],
        },
        separators=(",", ":"),
    )


class App:
    def __init__(
        self,
        source_factory,
        processor: FrameProcessor,
        settings: RunSettings,
        camera: CameraSettings = CameraSettings(),
    ):
        self.open_source = source_factory
        self.processor, self.settings, self.camera = processor, settings, camera
        self.counts = Counts()
        self.stopping = threading.Event()
        self.sample_id = settings.sample_id
        self.source: FrameSource | None = None
        self.preview: Preview | None = None
        self.interval_s = 0.0  # live mode: seconds between classified frames (--rate); 0: no wait

    # -- lifecycle ---------------------------------------------------------------------------
    def _on_signal(self, number, _frame) -> None:
        if self.stopping.is_set():
            return
        log.info(
            "%s received: finishing the frame in flight, then closing the database",
            signal.Signals(number).name,
        )
        self.stopping.set()

    def run(self) -> Counts:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.source = self._open_with_retry(first=True)
            if self.source is None:
                return self.counts
            self.preview = (
                None if self.settings.headless else Preview.try_open(self.settings.preview)
            )
            if self.settings.mode == "capture":
                self._capture_loop()
            else:
                self._live_loop()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            if self.source is not None:
                self.source.close()
            if self.preview is not None:
                self.preview.close()
        return self.counts

    # -- frames ------------------------------------------------------------------------------
    def _open_with_retry(
        self, first: bool = False, failing_since: float | None = None
    ) -> FrameSource | None:
        start = failing_since if failing_since is not None else time.monotonic()
        delay = 0.25
        while not self.stopping.is_set():
            try:
                return self.open_source()
            except CameraError as error:
                if first and failing_since is None and self.camera.retry_for_s <= 0:
                    raise AppError(str(error)) from None
                elapsed = time.monotonic() - start
                if elapsed >= self.camera.retry_for_s:
                    raise AppError(
                        f"{error}; gave up after {elapsed:.0f} s of retries "
                        f"(--camera-retry-s {self.camera.retry_for_s:g}); "
                        f"{self.processor.store.count()} result(s) stored are intact"
                    ) from None
                log.warning("%s; retrying in %.2f s", error, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, self.camera.backoff_max_s)
        return None

    def _read(self, fresh: bool = False) -> Frame | None:
        """The next frame, riding out camera failures; None at the end or when stopping."""
        failing_since = None
        while not self.stopping.is_set():
            try:
                frame = self.source.fresh() if fresh else self.source.read()
            except SkippedFrame as error:
                self.counts.skipped += 1
                log.warning("skipped: %s", error)
                continue
            except CameraError as error:
                self.counts.camera_failures += 1
                if failing_since is None:
                    failing_since = time.monotonic()
                log.warning("camera failure: %s; reconnecting", error)
                self.source.close()
                reopened = self._open_with_retry(failing_since=failing_since)
                if reopened is None:
                    return None
                self.source = reopened
                continue
            if failing_since is not None:
                log.info("camera back after %.1f s", time.monotonic() - failing_since)
            return frame
        return None

    def _handle(self, frame: Frame) -> int:
        row, decision, quality = self.processor.process(frame, self.sample_id)
        self.counts.processed += 1
        self.counts.by_decision[decision.kind] += 1
        if self.settings.headless:
            text = json_line(row, decision, quality, self.counts.processed)
        else:
            status = decision.message if quality.ok else f"unfit: {quality.reason}"
            sample = f" [{self.sample_id}]" if self.sample_id else ""
            text = f"#{self.counts.processed}{sample} {frame.origin}: {status}"
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # the reader went away (e.g. `| head`): stored results are kept
            log.info("stdout closed by the reader: stopping")
            self.stopping.set()
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the interpreter's final flush is quiet
        if self.preview is not None:
            return self.preview.show(frame.rgb, decision, quality, self.sample_id)
        return -1

    def _done(self) -> bool:
        limit = self.settings.max_frames
        return self.stopping.is_set() or (limit is not None and self.counts.processed >= limit)

    def _live_loop(self) -> None:
        interval = self.interval_s
        next_due = time.monotonic()
        while not self._done():
            if interval:  # --rate: classify one frame per interval, the newest a camera has
                self.stopping.wait(max(0.0, next_due - time.monotonic()))
                next_due = max(next_due + interval, time.monotonic())
                if self.stopping.is_set():
                    break
            frame = self._read(fresh=bool(interval) and self.source.live)
            if frame is None:
                break
            key = self._handle(frame)
            if key in (ord("q"), 27):
                break

    def _capture_loop(self) -> None:
        triggers = Triggers(use_stdin=True)
        log.info(
            "capture mode: type a sample ID and press Enter to capture (Enter again for the "
            "same sample, q to quit); SIGUSR1 or 'c' in the preview also captures"
        )
        while not self._done():
            if self.preview is not None:
                triggers.put_key(self.preview.poll(30))
            trigger = triggers.get(timeout=0.05 if self.preview is not None else 0.2)
            if trigger is None:
                continue
            if trigger.kind == QUIT:
                log.info("quit requested (%s)", trigger.via)
                break
            if trigger.kind == CAPTURE:
                if trigger.sample_id:
                    if problem := sample_id_problem(trigger.sample_id):
                        log.warning("sample ID %s; nothing captured", problem)
                        continue
                    self.sample_id = trigger.sample_id
                if not self.sample_id:
                    log.warning("no sample ID yet: type the sample ID and press Enter to capture")
                    continue
                frame = self._read(fresh=True)
                if frame is None:
                    if not self.stopping.is_set():
                        log.info("the source has no more frames")
                    break
                key = self._handle(frame)
                triggers.put_key(key)
