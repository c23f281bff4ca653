"""The image quality gate: is this frame fit to classify at all?

A blurred, dark, blown-out or empty field gets an honest "unfit" with the reason instead of a
label. Metrics are computed on a fixed-size grey centre crop (the part the model sees), so the
thresholds do not depend on the camera resolution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from leukedge.edge_app.imaging import center_crop, resize_square
from leukedge.edge_app.settings import QualitySettings


@dataclass(frozen=True)
class Quality:
    ok: bool
    reason: str | None  # None when ok, else a short human reason
    focus: float
    brightness: float
    contrast: float
    clipped: float

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def measure(
    rgb: np.ndarray, crop_fraction: float = 1.0, size: int = 224
) -> tuple[float, float, float, float]:
    """(focus, brightness, contrast, clipped) of the centre crop of a uint8 RGB frame.

    Written with whole-image OpenCV calls: per-pixel numpy reductions over the channel axis
    cost milliseconds per frame, more than the int8 model itself.
    """
    crop = resize_square(center_crop(rgb, crop_fraction), size)
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    # A light denoise first: sensor noise alone gives a high Laplacian variance on a blurred frame.
    smooth = cv2.GaussianBlur(grey, (5, 5), 1.0)
    _, laplacian_std = cv2.meanStdDev(cv2.Laplacian(smooth, cv2.CV_16S))
    mean, _ = cv2.meanStdDev(grey)
    # Contrast of 4x4 block means: texture of cells, not pixel noise.
    blocks = cv2.resize(grey, (size // 4, size // 4), interpolation=cv2.INTER_AREA)
    _, contrast = cv2.meanStdDev(blocks)
    saturated = cv2.countNonZero(
        cv2.inRange(crop, (254, 254, 254), (255, 255, 255))
    ) + cv2.countNonZero(cv2.inRange(crop, (0, 0, 0), (1, 1, 1)))
    return (
        float(laplacian_std[0, 0]) ** 2,
        float(mean[0, 0]),
        float(contrast[0, 0]),
        saturated / float(grey.size),
    )


def assess(
    rgb: np.ndarray, settings: QualitySettings = QualitySettings(), crop_fraction: float = 1.0
) -> Quality:
    focus, brightness, contrast, clipped = measure(rgb, crop_fraction, settings.analysis_size)
    reason = None
    if brightness < settings.dark_mean:
        reason = f"too dark (mean {brightness:.0f} < {settings.dark_mean:.0f})"
    elif brightness > settings.bright_mean:
        reason = f"too bright (mean {brightness:.0f} > {settings.bright_mean:.0f})"
    elif clipped > settings.clipped_max:
        reason = f"clipped exposure ({clipped:.0%} of pixels saturated)"
    elif contrast < settings.empty_contrast:
        reason = f"empty field (contrast {contrast:.1f} < {settings.empty_contrast:g})"
    elif focus < settings.focus_min:
        reason = f"out of focus (focus {focus:.1f} < {settings.focus_min:g})"
    return Quality(reason is None, reason, focus, brightness, contrast, clipped)
