"""What `edge-bench robustness` evaluates: settings, the conditions (clean + shift x severity), seeds."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from leukedge.benchmarks.shifts import SEVERITIES, SHIFTS, Shift

MILD_FLOOR = 0.95  # issue 6: at severity 1 of every shift, accuracy stays at least this
BREAK_FLOOR = 0.90  # issue 6: report the first severity that brings accuracy under this
WRONG_CEILING = 0.03  # issue 12: answered-wrong stays at most this at every shift and severity
CLEAN = "clean"
GATE_FUNCTION = "leukedge.edge_app.quality.assess"  # the app's quality gate, called directly


@dataclass(frozen=True)
class RobustnessSettings:
    """What `edge-bench robustness` evaluates; defaults are the full report."""

    shifts: tuple[str, ...] = tuple(SHIFTS)  # names from benchmarks.shifts.SHIFTS
    severities: tuple[int, ...] = (
        SEVERITIES  # 1 (mild) .. 5 (severe); the clean image is always scored
    )
    seed: int = 0  # base seed of the random shifts (noise, blur direction, colour direction)
    threads: int | None = None  # interpreter threads; None lets the runtime choose (min(4, cores))
    limit_per_class: int | None = None  # at most this many images per class; None for all


@dataclass
class Condition:
    shift: Shift | None  # None: the clean image
    severity: int

    @property
    def name(self) -> str:
        return self.shift.name if self.shift else CLEAN

    @property
    def parameter(self) -> float | None:
        return self.shift.value(self.severity) if self.shift else None

    @property
    def key(self) -> tuple[str, int]:
        return self.name, self.severity

    def apply(self, image: np.ndarray, sample_path: str, base_seed: int) -> np.ndarray:
        """The image as this condition shows it (seeded per image, see `image_seed`)."""
        if self.shift is None:
            return image
        return self.shift.apply(image, self.severity, image_seed(base_seed, self.name, sample_path))


def image_seed(base_seed: int, shift_name: str, sample_path: str) -> int:
    """The seed for one image under one shift: the same at every severity and for every model,
    so severities differ only in strength and variants see identical pixels."""
    return zlib.crc32(f"{base_seed}:{shift_name}:{sample_path}".encode())


def conditions(settings: RobustnessSettings) -> list[Condition]:
    found = [Condition(None, 0)]
    for name in settings.shifts:
        found += [Condition(SHIFTS[name], severity) for severity in settings.severities]
    return found
