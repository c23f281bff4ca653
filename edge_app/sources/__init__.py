"""Frame sources: where the app's RGB frames come from.

`open_source(spec)` picks one from the `--source` text:
- `picamera2` or `picamera2:N` (Pi camera modules), see `edge_app.sources.picamera`;
- a camera index (`0`), a device (`/dev/video0`), a video file or a stream URL (OpenCV);
- an image file, a folder (searched recursively) or a glob (`'slides/*.png'`).
`check_source(spec)` refuses, without opening anything, a file source that can give no frame.

Every source returns uint8 RGB frames: each module converts its native channel order here,
so nothing downstream guesses.
"""

from __future__ import annotations

from pathlib import Path

from leukedge.edge_app.settings import CameraSettings
from leukedge.edge_app.sources.base import (
    CameraError,
    Frame,
    FrameSource,
    SkippedFrame,
    SourceError,
)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".mjpeg", ".mjpg", ".h264", ".webm")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://", "rtmp://")

__all__ = [
    "CameraError",
    "Frame",
    "FrameSource",
    "SkippedFrame",
    "SourceError",
    "check_source",
    "open_source",
]


def _is_camera_or_stream(text: str) -> bool:
    return (
        text == "picamera2"
        or text.startswith("picamera2:")
        or text.isdigit()
        or text.startswith("/dev/video")
        or text.lower().startswith(STREAM_SCHEMES)
    )


def check_source(spec: str) -> None:
    """SourceError now for a file, folder, glob or video that cannot give a frame, so that
    `edge-app run` says so before it loads the model and creates the database. A camera or a
    stream is only known once it is opened (it may come up late), so it passes here."""
    text = spec.strip()
    if _is_camera_or_stream(text):
        return
    if Path(text).suffix.lower() in VIDEO_EXTENSIONS:
        if not Path(text).is_file():
            raise SourceError(f"--source {spec}: no such video file")
        return
    from leukedge.edge_app.sources.files import list_images

    list_images(text)


def open_source(
    spec: str, camera: CameraSettings = CameraSettings(), loop: bool = False
) -> FrameSource:
    """A ready (opened) source for the `--source` text, or SourceError saying what is wrong."""
    text = spec.strip()
    if text == "picamera2" or text.startswith("picamera2:"):
        from leukedge.edge_app.sources.picamera import PiCameraSource

        number = text.partition(":")[2] or "0"
        if not number.isdigit():
            raise SourceError(f"--source {spec}: expected picamera2 or picamera2:N (camera number)")
        source: FrameSource = PiCameraSource(int(number), camera)
    elif _is_camera_or_stream(text):  # picamera2 is taken above
        from leukedge.edge_app.sources.opencv import OpenCVSource

        source = OpenCVSource(int(text) if text.isdigit() else text, live=True, camera=camera)
    elif Path(text).suffix.lower() in VIDEO_EXTENSIONS:
        from leukedge.edge_app.sources.opencv import OpenCVSource

        if not Path(text).is_file():
            raise SourceError(f"--source {spec}: no such video file")
        source = OpenCVSource(text, live=False, camera=camera)
    else:
        from leukedge.edge_app.sources.files import ImageFileSource

        source = ImageFileSource(text, loop=loop)
    source.open()
    return source
