"""OpenCV capture: USB microscope cameras (index or /dev/video*), video files, stream URLs."""

from __future__ import annotations

import cv2

from leukedge.edge_app.imaging import to_rgb8
from leukedge.edge_app.settings import CameraSettings
from leukedge.edge_app.sources.base import CameraError, Frame, FrameSource, SourceError

STALE_FRAMES = 4  # frames an OpenCV camera may buffer; dropped before a capture trigger


class OpenCVSource(FrameSource):
    def __init__(self, target: int | str, live: bool, camera: CameraSettings = CameraSettings()):
        self.target, self.live, self.camera = target, live, camera
        self.name = f"camera {target}" if isinstance(target, int) else str(target)
        self.capture: cv2.VideoCapture | None = None
        self._count = 0

    def open(self) -> None:
        self.capture = cv2.VideoCapture(self.target)
        if not self.capture.isOpened():
            self.capture.release()
            self.capture = None
            if self.live:
                raise CameraError(f"{self.name}: cannot open the camera or stream")
            raise SourceError(
                f"--source {self.target}: OpenCV cannot open this video (unsupported codec?)"
            )
        if isinstance(self.target, int) or str(self.target).startswith("/dev/video"):
            width, height = self.camera.size
            self.capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            self.capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)

    def read(self) -> Frame | None:
        if self.capture is None:
            raise CameraError(f"{self.name}: not open")
        ok, bgr = self.capture.read()
        if not ok or bgr is None:
            if self.live:
                raise CameraError(f"{self.name}: no frame (camera unplugged or stream lost?)")
            return None  # end of the video file
        self._count += 1
        return Frame(
            to_rgb8(bgr), f"{self.name}#{self._count}", new_file=not self.live and self._count == 1
        )

    def fresh(self) -> Frame | None:
        if self.live and self.capture is not None:
            for _ in range(STALE_FRAMES):
                self.capture.grab()
        return self.read()

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None
