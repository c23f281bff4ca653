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


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def cpu_model() -> str:
    info = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in info.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# The instruction-set flags that decide which XNNPACK kernels run: without VNNI (avx512_vnni or
# avx_vnni on x86, asimddp "dotprod" on ARM) int8 convolutions gain little over fp16/fp32.
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "neon",
    "asimd",
    "asimdhp",
    "asimddp",
    "fphp",
)


def simd_flags() -> list[str]:
    """Which of SIMD_FLAGS this CPU has (from /proc/cpuinfo 'flags' or 'Features')."""
    info = _read("/proc/cpuinfo") or ""
    present: set[str] = set()
    for line in info.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features") and ":" in line:
            present.update(line.split(":", 1)[1].split())
    return [flag for flag in SIMD_FLAGS if flag in present]


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
