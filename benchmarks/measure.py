"""Timing statistics and process memory, measured the way TFLite's benchmark_model does.

Latency is one `interpreter.invoke()` on an input already set (no copies, no pre/post
processing), after `warmup` runs; memory is the process's peak resident set (VmHWM).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def summarize(times_ms: Sequence[float]) -> dict:
    """mean, std (sample), min, p50, p90, p99 of a list of milliseconds."""
    values = np.asarray(times_ms, dtype=np.float64)
    if values.size == 0:
        return {key: None for key in ("mean", "std", "min", "p50", "p90", "p99")}
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min": float(values.min()),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
    }


def time_runs(
    run: Callable[[], object], runs: int, max_seconds: float | None = None
) -> list[float]:
    """Milliseconds of each call: `runs` calls, stopping early once `max_seconds` have passed."""
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(max(1, runs)):
        begin = time.perf_counter()
        run()
        end = time.perf_counter()
        times.append((end - begin) * 1000.0)
        if max_seconds is not None and end - started >= max_seconds:
            break
    return times


def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Current resident set size of this process in MiB (Linux), else None."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (VmHWM on Linux, ru_maxrss elsewhere)."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
