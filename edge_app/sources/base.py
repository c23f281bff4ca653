"""What every frame source provides."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class SourceError(ValueError):
    """The source cannot be used at all (bad spec, no files): a one-line user message."""


class CameraError(RuntimeError):
    """A live camera failed (unplugged, timeout): the app retries with backoff."""


class SkippedFrame(Exception):
    """One frame could not be decoded: the app counts it and moves on."""


@dataclass
class Frame:
    rgb: np.ndarray  # uint8 RGB (height, width, 3): what is classified
    origin: str  # file path, or "<source>#<frame number>"
    full_rgb: np.ndarray | None = None  # a larger image of the same instant, saved instead of rgb
    # The first frame of a new file (every image of an image source, the first frame of a
    # video file): another case begins, so live-mode smoothing starts over.
    new_file: bool = False

    @property
    def saved_rgb(self) -> np.ndarray:
        return self.rgb if self.full_rgb is None else self.full_rgb


class FrameSource:
    """open() once, read() until it returns None (end), close() always."""

    name: str = "source"
    live: bool = False  # a camera: failures are retried, capture mode takes a fresh frame

    def open(self) -> None:
        """Acquire the device or list the files. Raises SourceError or CameraError."""

    def read(self) -> Frame | None:
        """The next frame, None at the end. Raises CameraError or SkippedFrame."""
        raise NotImplementedError

    def fresh(self) -> Frame | None:
        """The current frame for a capture trigger (live sources drop buffered ones)."""
        return self.read()

    def close(self) -> None:
        """Release the device. Safe to call twice."""
