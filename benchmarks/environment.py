"""What the figures were measured on: CPU, OS, Python, runtime, and a Pi's board state.

Board model, CPU governor, temperature and throttling are read from the files and the
`vcgencmd` tool Raspberry Pi OS provides; each is None where it does not exist (e.g. x86).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np

from leukedge.edge_app.runtime import ModelError, find_runtime
from leukedge.train.machine import cpu_model, simd_flags


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def board_state() -> dict:
    """Governor, SoC temperature (deg C) and throttling flags now; None where not available."""
    temperature = _read("/sys/class/thermal/thermal_zone0/temp")
    throttled = None
    if shutil.which("vcgencmd"):
        try:
            out = subprocess.run(
                ["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5
            )
            throttled = out.stdout.strip().split("=")[-1] or None  # "throttled=0x0" -> "0x0"
        except (OSError, subprocess.SubprocessError):
            throttled = None
    try:
        celsius = round(int(temperature) / 1000, 1) if temperature else None
    except ValueError:
        celsius = None
    return {
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cpu_freq_mhz": _freq_mhz(),
        "temperature_c": celsius,
        "throttled": throttled,
    }


def _freq_mhz() -> float | None:
    value = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    try:
        return int(value) / 1000 if value else None
    except ValueError:
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe_environment() -> dict:
    """The static part of the environment block (board state is added before and after the run)."""
    try:
        runtime = find_runtime()
        runtime_name, runtime_version = runtime.name, runtime.version
    except ModelError:
        runtime_name, runtime_version = None, None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "simd": simd_flags(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "runtime": runtime_name,
        "runtime_version": runtime_version,
        "leukedge": _version("leukedge"),
        "board_model": _read("/proc/device-tree/model"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
