"""What a figure was measured on: the CPU's model name and the SIMD flags that decide which kernels run.

TensorFlow-free, so the training report (metrics.json) and edge-bench describe a machine the same way.
"""

from __future__ import annotations

import platform
from pathlib import Path


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (x86 "model name", a Pi's "Model"), else the platform's."""
    info = _cpuinfo()
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
    info = _cpuinfo()
    present: set[str] = set()
    for line in info.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features") and ":" in line:
            present.update(line.split(":", 1)[1].split())
    return [flag for flag in SIMD_FLAGS if flag in present]
