"""Every setting of the Pi app in one place, with its default and what it means.

Defaults of the quality gate were measured on the shared dataset (2,863 real smear images at
224 px): every real image passes, frames blurred with a Gaussian of sigma >= 4 px, dark, blown
out or empty fields fail. See docs/raspberry-pi.md for the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

# Interpreter threads any command accepts: far above any board's cores, and far below the
# counts that make the runtime fail to spawn its workers and crash (100,000 segfaulted).
MAX_THREADS = 64

DISCLAIMER = (
    "LeukEdge is a research and screening aid, not a diagnostic device: every result "
    "must be reviewed by a qualified hematologist."
)
UNCERTAIN_MESSAGE = "uncertain: refer for expert review"
UNKNOWN_MESSAGE = (
    "not like the images this model was trained on (check magnification, stain, focus): "
    "refer for expert review"
)


@dataclass(frozen=True)
class QualitySettings:
    """Thresholds of the image quality gate, measured on a 224 px grey centre crop."""

    analysis_size: int = (
        224  # pixels; metrics are computed at this fixed scale, whatever the camera
    )
    focus_min: float = 4.0  # variance of the Laplacian after a sigma-1 denoise; real images >= 5.5
    dark_mean: float = 40.0  # mean grey below this: too dark (real images >= 169)
    bright_mean: float = 250.0  # mean grey above this: too bright (real images <= 244)
    clipped_max: float = (
        0.5  # fraction of pixels saturated (all channels >= 254 or <= 1); real <= 0.21
    )
    empty_contrast: float = 5.0  # std of 4x4-block mean grey below this: empty field (real >= 13)


@dataclass(frozen=True)
class DecisionSettings:
    """How probabilities become an answer."""

    # None: the model's own rule (its conformal set; 0.80 top probability for an older model
    # without trust parameters). A value overrides the conformal set with that confidence rule.
    min_confidence: float | None = None
    smoothing: int = 1  # live mode: average the probabilities of the last N classified frames


@dataclass(frozen=True)
class CameraSettings:
    """Frame capture from picamera2 or OpenCV cameras."""

    size: tuple[int, int] = (1280, 960)  # main stream (width, height)
    stream: str = "main"  # picamera2: classify the "main" stream or the small "lores" one
    lores_size: tuple[int, int] = (320, 240)  # lores stream; must be >= the model input after crop
    lores_format: str = "YUV420"  # Pi 4 lores is YUV420 only; Pi 5 also offers RGB888
    exposure_us: int | None = None  # fixed exposure time (disables auto exposure)
    analogue_gain: float | None = None
    colour_gains: tuple[float, float] | None = (
        None  # fixed (red, blue) gains: disables auto white balance
    )
    retry_for_s: float = 60.0  # keep retrying a failing camera this long, then exit non-zero
    backoff_max_s: float = 5.0  # retries wait 0.25 s, doubling up to this


@dataclass(frozen=True)
class RunSettings:
    mode: str = "live"  # "live" (classify every frame) or "capture" (on a trigger)
    sample_id: str | None = None
    crop_fraction: float = 1.0  # centre square crop, as a fraction of the shorter side
    headless: bool = False
    preview: bool | None = None  # None: show a window when a display and GUI OpenCV exist
    max_frames: int | None = None  # stop after this many processed frames
    loop: bool = False  # replay an image file/folder source forever (demos, soak runs)
    image_format: str = "jpg"  # saved frames: "jpg" (quality 95) or "png" (lossless)
