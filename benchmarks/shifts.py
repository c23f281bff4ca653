"""Field shifts: what a different microscope, camera, stain or operator does to a smear image.

Each shift maps a uint8 RGB image to a uint8 RGB image of the same shape, at a severity from 0
(the image unchanged) to 5 (severe). Level 1 is meant to be a shift a clinic would meet on an
ordinary day (a slightly soft focus, a lamp a little dimmer); level 5 is a badly set-up
microscope. Shifts are applied to the full-resolution source image *before*
`edge_app.imaging.prepare`, as a field camera would deliver them.

Sizes (blur radius, motion length) are given in pixels of a 224-pixel-wide image, the size of
the dataset's images, and scale with the image: a 2-pixel blur on a 224-pixel image is an
8-pixel blur on an 896-pixel frame of the same field of view.

Random shifts (noise, blur direction, colour direction, rotation sign) draw from
`numpy.random.default_rng(seed)`: the same image, seed and severity give the same pixels, and
the same seed at two severities gives the same direction with a different strength.
Pure numpy/OpenCV; no TensorFlow.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_SIDE = 224  # the dataset's image size; sizes below are in pixels of this size


@dataclass(frozen=True)
class Shift:
    """One kind of field shift and its parameter at severities 1..5."""

    name: str
    description: str
    parameter: str  # what `levels` measure, with its unit
    levels: tuple[float, ...]  # parameter at severity 1..5
    transform: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

    def value(self, severity: int) -> float:
        """The parameter at `severity` (1..5)."""
        check_severity(severity)
        return self.levels[severity - 1]

    def apply(self, rgb: np.ndarray, severity: int, seed: int = 0) -> np.ndarray:
        """The shifted copy of a uint8 RGB image; severity 0 returns an unchanged copy."""
        check_severity(severity, allow_zero=True)
        check_rgb8(rgb)
        if severity == 0:
            return rgb.copy()
        out = self.transform(rgb, self.value(severity), np.random.default_rng(seed))
        return np.ascontiguousarray(out, dtype=np.uint8)


def check_severity(severity: int, allow_zero: bool = False) -> None:
    lowest = 0 if allow_zero else 1
    if not isinstance(severity, (int, np.integer)) or not lowest <= severity <= len(SEVERITIES):
        raise ValueError(
            f"severity must be an integer from {lowest} to {len(SEVERITIES)}, got {severity!r}"
        )


def check_rgb8(rgb: np.ndarray) -> None:
    if (
        not isinstance(rgb, np.ndarray)
        or rgb.dtype != np.uint8
        or rgb.ndim != 3
        or rgb.shape[2] != 3
    ):
        raise ValueError("shifts take uint8 RGB images of shape (height, width, 3)")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _scale(rgb: np.ndarray) -> float:
    """Pixels of this image per pixel of a 224-pixel image."""
    return min(rgb.shape[:2]) / REFERENCE_SIDE


# sRGB-like gamma: exposure and white balance act on light, not on encoded pixel values.
GAMMA = 2.2


def _to_linear(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float32) / 255.0) ** GAMMA


def _from_linear(linear: np.ndarray) -> np.ndarray:
    return _to_uint8(np.clip(linear, 0.0, 1.0) ** (1.0 / GAMMA) * 255.0)


# --- optics -------------------------------------------------------------------------------


def disk_kernel(radius: float) -> np.ndarray:
    """A normalised, anti-aliased disk (the point spread function of a defocused lens)."""
    half = int(math.ceil(radius))
    supersample = 8
    grid = (np.arange((2 * half + 1) * supersample) + 0.5) / supersample - (half + 0.5)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    inside = (xx**2 + yy**2 <= radius**2).astype(np.float32)
    kernel = inside.reshape(2 * half + 1, supersample, 2 * half + 1, supersample).mean(axis=(1, 3))
    return kernel / kernel.sum()


def defocus(rgb: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    kernel = disk_kernel(max(0.5, radius * _scale(rgb)))
    return cv2.filter2D(rgb, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def line_kernel(length: float, angle_degrees: float) -> np.ndarray:
    """A normalised line of `length` pixels at `angle_degrees` (camera or stage shake)."""
    half = int(math.ceil(length / 2))
    size = 2 * half + 1
    supersample = 8
    kernel = np.zeros((size * supersample, size * supersample), np.float32)
    centre = size * supersample / 2
    dx = math.cos(math.radians(angle_degrees)) * length * supersample / 2
    dy = math.sin(math.radians(angle_degrees)) * length * supersample / 2
    cv2.line(
        kernel,
        (int(round(centre - dx)), int(round(centre - dy))),
        (int(round(centre + dx)), int(round(centre + dy))),
        1.0,
        thickness=supersample,
    )
    kernel = kernel.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return kernel / kernel.sum()


def motion_blur(rgb: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0.0, 180.0)
    kernel = line_kernel(max(1.0, length * _scale(rgb)), angle)
    return cv2.filter2D(rgb, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


# --- illumination -------------------------------------------------------------------------


def exposure(rgb: np.ndarray, gain: float, rng: np.random.Generator) -> np.ndarray:
    """Lamp or exposure time: light scaled by `gain`, highlights clip as a camera's would."""
    return _from_linear(_to_linear(rgb) * gain)


def low_contrast(rgb: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Stray light, glare or a dirty condenser: pixel values pulled towards the image mean."""
    values = rgb.astype(np.float32)
    mean = values.mean(axis=(0, 1), keepdims=True)
    return _to_uint8(mean + (values - mean) * factor)


# --- stain and colour ---------------------------------------------------------------------


def _hsv(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)  # H in degrees


def _rgb(hsv: np.ndarray) -> np.ndarray:
    return _to_uint8(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0)


def hue(rgb: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Stain batch or staining time: every hue rotated by `degrees`, either way."""
    hsv = _hsv(rgb)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    hsv[..., 0] = np.mod(hsv[..., 0] + sign * degrees, 360.0)
    return _rgb(hsv)


def saturation(rgb: np.ndarray, log_factor: float, rng: np.random.Generator) -> np.ndarray:
    """Faded or heavy stain: saturation scaled by exp(+-log_factor)."""
    hsv = _hsv(rgb)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * math.exp(sign * log_factor), 0.0, 1.0)
    return _rgb(hsv)


def white_balance(rgb: np.ndarray, log_gain: float, rng: np.random.Generator) -> np.ndarray:
    """Lamp colour temperature or camera white balance: per-channel gains exp(log_gain * d).

    d is a random direction with zero mean over the channels (so overall brightness is kept)
    and unit length; its largest channel gain is therefore at most exp(0.82 * log_gain).
    """
    direction = rng.normal(size=3)
    direction -= direction.mean()
    direction /= np.linalg.norm(direction)
    gains = np.exp(log_gain * direction).astype(np.float32)
    return _from_linear(_to_linear(rgb) * gains)


# --- camera -------------------------------------------------------------------------------


def jpeg(rgb: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    """Re-encoded as JPEG at `quality` (a phone or a messaging app on the way)."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def gaussian_noise(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Read noise: additive Gaussian noise of standard deviation `sigma` (0..255 scale)."""
    return _to_uint8(
        rgb.astype(np.float32) + rng.normal(0.0, sigma, size=rgb.shape).astype(np.float32)
    )


def poisson_noise(rgb: np.ndarray, full_well: float, rng: np.random.Generator) -> np.ndarray:
    """Shot noise of a small sensor in dim light: `full_well` photons at pixel value 255."""
    photons = rng.poisson(rgb.astype(np.float64) / 255.0 * full_well)
    return _to_uint8(photons / full_well * 255.0)


def low_resolution(rgb: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """A camera with `factor` x fewer pixels per side, upscaled back to the frame size."""
    height, width = rgb.shape[:2]
    small = (max(1, int(round(width / factor))), max(1, int(round(height / factor))))
    down = cv2.resize(rgb, small, interpolation=cv2.INTER_AREA)
    return cv2.resize(down, (width, height), interpolation=cv2.INTER_LINEAR)


# --- geometry -----------------------------------------------------------------------------


def _warp(rgb: np.ndarray, angle: float, scale: float) -> np.ndarray:
    height, width = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, scale)
    return cv2.warpAffine(
        rgb, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )


def rotation(rgb: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """The slide or camera turned by `degrees`, either way; corners filled by reflection."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return _warp(rgb, sign * degrees, 1.0)


def zoom(rgb: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Another objective or camera adapter: the image scaled by `scale` about its centre.

    Below 1 the cell appears smaller and the border is filled by reflection (the neighbouring
    field of a real smear would hold other cells; a reflection is the nearest stand-in).
    """
    return _warp(rgb, 0.0, scale)


SHIFTS: dict[str, Shift] = {
    shift.name: shift
    for shift in (
        Shift(
            "defocus",
            "out-of-focus optics (disk blur)",
            "disk radius, px at 224",
            (1.0, 1.5, 2.0, 3.0, 4.0),
            defocus,
        ),
        Shift(
            "motion-blur",
            "camera or stage shake during exposure",
            "blur length, px at 224",
            (3.0, 5.0, 7.0, 11.0, 15.0),
            motion_blur,
        ),
        Shift(
            "brighter",
            "lamp too bright or exposure too long",
            "exposure gain",
            (1.15, 1.3, 1.5, 1.75, 2.0),
            exposure,
        ),
        Shift(
            "darker",
            "lamp too dim or exposure too short",
            "exposure gain",
            (0.85, 0.7, 0.55, 0.4, 0.25),
            exposure,
        ),
        Shift(
            "low-contrast",
            "glare, stray light or a dirty condenser",
            "contrast factor",
            (0.85, 0.7, 0.55, 0.4, 0.25),
            low_contrast,
        ),
        Shift(
            "hue",
            "stain batch or staining time",
            "hue rotation, degrees (either way)",
            (5.0, 10.0, 20.0, 30.0, 45.0),
            hue,
        ),
        Shift(
            "saturation",
            "faded or heavy stain",
            "log saturation factor (either way)",
            (0.15, 0.3, 0.5, 0.75, 1.0),
            saturation,
        ),
        Shift(
            "white-balance",
            "lamp colour or camera white balance",
            "log per-channel gain",
            (0.05, 0.1, 0.2, 0.3, 0.45),
            white_balance,
        ),
        Shift("jpeg", "JPEG re-compression", "JPEG quality", (80.0, 60.0, 40.0, 20.0, 10.0), jpeg),
        Shift(
            "gaussian-noise",
            "sensor read noise",
            "noise sigma, 0..255",
            (3.0, 6.0, 10.0, 15.0, 25.0),
            gaussian_noise,
        ),
        Shift(
            "poisson-noise",
            "shot noise in dim light",
            "photons at full scale",
            (4000.0, 1500.0, 600.0, 250.0, 100.0),
            poisson_noise,
        ),
        Shift(
            "rotation",
            "slide or camera turned",
            "degrees (either way)",
            (5.0, 10.0, 15.0, 25.0, 35.0),
            rotation,
        ),
        Shift(
            "zoom-in",
            "higher magnification than the training images",
            "scale",
            (1.1, 1.2, 1.35, 1.5, 1.75),
            zoom,
        ),
        Shift(
            "zoom-out",
            "lower magnification than the training images",
            "scale",
            (0.9, 0.8, 0.7, 0.6, 0.5),
            zoom,
        ),
        Shift(
            "low-resolution",
            "a camera with fewer pixels",
            "downsampling factor per side",
            (1.5, 2.0, 3.0, 4.0, 6.0),
            low_resolution,
        ),
    )
}


def closest_shift(name: str) -> str | None:
    """The valid shift name nearest to a mistyped one, if any is close."""
    matches = difflib.get_close_matches(name, list(SHIFTS), n=1, cutoff=0.5)
    return matches[0] if matches else None


def parse_shifts(text: str) -> list[Shift]:
    """'all' or a comma-separated list of names; ValueError naming the first unknown one."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("no shift given: use 'all' or names from " + ", ".join(SHIFTS))
    if names == ["all"]:
        return list(SHIFTS.values())
    chosen: list[Shift] = []
    for name in names:
        key = name.lower().replace("_", "-")
        if key not in SHIFTS:
            suggestion = closest_shift(key)
            hint = f"did you mean {suggestion!r}? " if suggestion else ""
            raise ValueError(f"unknown shift {name!r}: {hint}valid: all, " + ", ".join(SHIFTS))
        if SHIFTS[key] not in chosen:
            chosen.append(SHIFTS[key])
    return chosen


def parse_severities(text: str) -> list[int]:
    """A comma-separated list of severities 1..5, e.g. '1,3,5'; ValueError otherwise."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError("no severity given: use e.g. 1,2,3,4,5")
    severities: list[int] = []
    for part in parts:
        if not part.isdigit() or int(part) not in SEVERITIES:
            raise ValueError(
                f"severity {part!r} is not one of {', '.join(map(str, SEVERITIES))} "
                "(the clean image, severity 0, is always scored)"
            )
        if int(part) not in severities:
            severities.append(int(part))
    return sorted(severities)
