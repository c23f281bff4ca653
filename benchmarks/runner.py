"""Run the benchmark: one fresh worker process per (model, threads) row, then score the rows.

A row that fails (bad file, crash, unknown labels) is recorded with its reason and the other
rows still run. Ctrl-C stops after the current row's process and keeps what was measured.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from leukedge.benchmarks.environment import board_state, describe_environment
from leukedge.benchmarks.evaluation import EvalSet, agreement, label_indices, score
from leukedge.benchmarks.models import ModelEntry
from leukedge.benchmarks.schema import WORKER_KEYS, BenchRow, bench_row, public


@dataclass
class BenchSettings:
    threads: tuple[int, ...] = (1, 2)  # interpreter thread counts, one row each
    runs: int = 50  # timed invocations per row (after warm-up)
    warmup: int = 5  # untimed invocations before timing
    max_seconds: float | None = None  # stop a row's timed runs early after this many seconds
    allow_unverified: bool = (
        False  # benchmark .tflite files whose sha256 differs from manifest.json
    )
    row_timeout_s: float = 900.0  # a worker running longer than this is stopped and its row failed


@dataclass
class BenchResult:
    environment: dict
    settings: dict
    data: dict | None
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    wall_s: float = 0.0

    def to_json(self) -> dict:
        rows = [public(row) for row in self.rows]
        return {
            "environment": self.environment,
            "settings": self.settings,
            "data": self.data,
            "notes": self.notes,
            "interrupted": self.interrupted,
            "wall_s": self.wall_s,
            "rows": rows,
        }

    @property
    def failed(self) -> list[dict]:
        return [row for row in self.rows if row["status"] != "ok"]


def group_key(entry: ModelEntry) -> str:
    """Models of one training run share a group: agreement is measured inside a group."""
    if entry.manifest is not None:
        listed = entry.manifest.variants.get(entry.variant)
        # a variant from another training run (the release's fast model) names its own source
        source = (
            listed.source_model if listed is not None else None
        ) or entry.manifest.source_model
        return source.sha256
    if entry.kind == "keras" and entry.path.is_file():
        return hashlib.sha256(entry.path.read_bytes()).hexdigest()
    return str(entry.path.parent.resolve())


def _empty_row(entry: ModelEntry, threads: int) -> BenchRow:
    row = bench_row(
        str(entry.path),
        entry.name,
        entry.variant,
        entry.kind,
        threads,
        entry.path.stat().st_size if entry.path.is_file() else None,
    )
    # The runner's bookkeeping, never written out (see schema.public).
    row.update(_group=group_key(entry), _rank=entry.precision_rank)  # type: ignore[typeddict-unknown-key]
    return row


def run_worker(spec: dict, workdir: Path, timeout_s: float) -> tuple[dict, np.ndarray | None]:
    """Run benchmarks.worker on `spec` in a fresh interpreter; (result, probabilities or None)."""
    handle, spec_name = tempfile.mkstemp(suffix=".json", dir=workdir)
    os.close(handle)
    spec_path = Path(spec_name)
    result_path = spec_path.with_name(spec_path.stem + "_result.json")
    spec_path.write_text(json.dumps(spec))
    try:
        process = subprocess.run(
            [
                sys.executable,
                "-P",
                "-m",
                "leukedge.benchmarks.worker",
                str(spec_path),
                str(result_path),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"did not finish within {timeout_s:.0f} s"}, None
    if not result_path.is_file():
        tail = [line for line in (process.stderr or "").splitlines() if line.strip()][-1:] or [""]
        how = (
            f"signal {-process.returncode}"
            if process.returncode < 0
            else f"exit code {process.returncode}"
        )
        return {
            "status": "failed",
            "error": f"the runtime crashed ({how}) {tail[0][:200]}".strip(),
        }, None
    result = json.loads(result_path.read_text())
    probabilities_path = result_path.with_suffix(".npy")
    probabilities = np.load(probabilities_path) if probabilities_path.is_file() else None
    return result, probabilities


def _spec(
    entry: ModelEntry,
    threads: int,
    eval_set: EvalSet | None,
    settings: BenchSettings,
    cache_dir: Path,
) -> dict:
    return {
        "model": str(entry.path),
        "kind": entry.kind,
        "threads": threads,
        "runs": settings.runs,
        "warmup": settings.warmup,
        "max_seconds": settings.max_seconds,
        "allow_unverified": settings.allow_unverified,
        "cache_dir": str(cache_dir),
        "data_root": str(eval_set.data_root) if eval_set else "",
        "image_paths": [s.path for s in eval_set.samples] if eval_set else [],
        "image_labels": [s.label for s in eval_set.samples] if eval_set else [],
    }


def measure_row(
    entry: ModelEntry,
    threads: int,
    eval_set: EvalSet | None,
    settings: BenchSettings,
    cache_dir: Path,
) -> dict:
    """One finished row: timings from the worker, scores computed here from its probabilities."""
    row = _empty_row(entry, threads)
    result, probabilities = run_worker(
        _spec(entry, threads, eval_set, settings, cache_dir), cache_dir, settings.row_timeout_s
    )
    row.update({k: v for k, v in result.items() if k in WORKER_KEYS})
    if row["status"] == "ok" and eval_set is not None and probabilities is not None:
        predictions = probabilities.argmax(axis=1)
        scores = score(label_indices(eval_set, row["labels"]), predictions, row["labels"])
        row.update(
            accuracy=scores["accuracy"],
            macro_f1=scores["macro_f1"],
            per_class_recall=scores["per_class_recall"],
            n_images=scores["n"],
        )
        row["_predictions"] = predictions
    return row


def add_agreement(rows: Sequence[dict]) -> None:
    """Top-1 agreement of each row with the most precise ok variant of its group (fewest threads)."""
    for row in rows:
        if "_predictions" not in row:
            continue
        peers = [r for r in rows if r["_group"] == row["_group"] and "_predictions" in r]
        reference = min(peers, key=lambda r: (r["_rank"], r["threads"]))
        row["agreement"] = agreement(row["_predictions"], reference["_predictions"])
        row["agreement_reference"] = (
            f"{reference['variant']} ({reference['name']}, {reference['threads']} thread(s))"
        )


def run_benchmark(
    entries: Sequence[ModelEntry],
    eval_set: EvalSet | None,
    settings: BenchSettings,
    progress: Callable[[Iterable], Iterable] | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> BenchResult:
    """Measure every (model, threads) row. Never raises for one model's failure."""
    started = time.perf_counter()
    result = BenchResult(
        environment={**describe_environment(), "before": board_state()},
        settings=asdict(settings),
        data=(
            {
                "source": eval_set.source,
                "data_root": str(eval_set.data_root),
                "n": len(eval_set.samples),
                "labels": eval_set.labels,
            }
            if eval_set
            else None
        ),
    )
    plan = [(entry, threads) for entry in entries for threads in settings.threads]
    skipped_models: set[Path] = set()
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as scratch:
        try:
            for entry, threads in progress(plan) if progress else plan:
                if entry.path in skipped_models:
                    continue
                row = measure_row(entry, threads, eval_set, settings, Path(scratch))
                if row["status"] == "skipped":
                    skipped_models.add(entry.path)
                    result.notes.append(f"{entry.name}: skipped, {row['error']}")
                    continue
                result.rows.append(row)
                if on_row:
                    on_row(row)
        except KeyboardInterrupt:
            result.interrupted = True
            result.notes.append(f"interrupted: {len(result.rows)} of {len(plan)} rows measured")
    add_agreement(result.rows)
    result.environment["after"] = board_state()
    result.wall_s = time.perf_counter() - started
    return result
