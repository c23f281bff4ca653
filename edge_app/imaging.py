"""How pixels become model input: the one definition every stage uses.

Training (`train`), verification (`convert`), the Pi app and the benchmarks all call these
functions, so a model never sees pixels prepared differently from the ones it was trained on.
Images are numpy arrays: uint8, RGB, shape (height, width, 3). OpenCV decodes to BGR; the
conversion to RGB happens here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageDecodeError(ValueError):
    """A file that exists but does not decode to an image."""


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB, whatever its channels and bit depth.

    Grey, grey+alpha, RGBA and 16-bit images are converted (alpha is dropped, 16-bit is scaled
    to 8-bit). Raises ImageDecodeError for empty, truncated or non-image files.
    """
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageDecodeError(f"{path}: empty file (0 bytes)")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageDecodeError(f"{path}: not a readable image (corrupt, truncated or wrong format)")
    if _looks_truncated(path, data):
        raise ImageDecodeError(f"{path}: truncated JPEG (no end-of-image marker)")
    return to_rgb8(image)


def _looks_truncated(path: Path, data: np.ndarray) -> bool:
    # libjpeg pads a truncated JPEG with grey and only warns, so check the end-of-image marker.
    is_jpeg = data.size >= 2 and data[0] == 0xFF and data[1] == 0xD8
    if not is_jpeg:
        return False
    tail = data[-64:].tobytes()
    return b"\xff\xd9" not in tail


def to_rgb8(image: np.ndarray, bgr: bool = True) -> np.ndarray:
    """Convert a decoded OpenCV image (grey, BGR, BGRA; 8 or 16 bit) to uint8 RGB."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 2:  # grey + alpha
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else np.ascontiguousarray(image)


def center_crop(image: np.ndarray, fraction: float = 1.0) -> np.ndarray:
    """The centred square of side `fraction` x the shorter image side."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    height, width = image.shape[:2]
    side = max(1, int(round(min(height, width) * fraction)))
    top = (height - side) // 2
    left = (width - side) // 2
    return image[top : top + side, left : left + side]


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a square image to size x size (area averaging down, bilinear up)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    shrinking = image.shape[0] > size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def prepare(image: np.ndarray, size: int, crop_fraction: float = 1.0) -> np.ndarray:
    """Model input from an RGB frame: centre square crop, then resize. Stays uint8 RGB."""
    return np.ascontiguousarray(resize_square(center_crop(image, crop_fraction), size))


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
