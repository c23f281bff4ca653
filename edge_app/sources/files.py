"""Images from a file, a folder (recursive) or a glob: replayed slides, tests, soak runs."""

from __future__ import annotations

import glob
from pathlib import Path

from leukedge.edge_app.imaging import ImageDecodeError, is_image_file, load_rgb
from leukedge.edge_app.sources.base import Frame, FrameSource, SkippedFrame, SourceError

GLOB_CHARACTERS = set("*?[")


def list_images(spec: str) -> list[Path]:
    path = Path(spec)
    if GLOB_CHARACTERS & set(spec):
        matches = [Path(p) for p in sorted(glob.glob(spec, recursive=True))]
        files = [p for p in matches if is_image_file(p)]
        if not files:
            raise SourceError(f"--source {spec}: the pattern matches no image files")
        return files
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if is_image_file(p))
        if not files:
            raise SourceError(
                f"--source {spec}: the folder holds no image files "
                "(.jpg .jpeg .png .bmp .tif .tiff .webp)"
            )
        return files
    if path.is_file():
        return [path]
    raise SourceError(
        f"--source {spec}: no such file, folder, camera or URL "
        "(use picamera2, a camera index like 0, a video, an image, a folder or a glob)"
    )


class ImageFileSource(FrameSource):
    live = False

    def __init__(self, spec: str, loop: bool = False):
        self.spec, self.loop, self.name = spec, loop, spec
        self.files: list[Path] = []
        self._next = 0

    def open(self) -> None:
        self.files = list_images(self.spec)

    def read(self) -> Frame | None:
        if self._next >= len(self.files):
            if not self.loop:
                return None
            self._next = 0
        path = self.files[self._next]
        self._next += 1
        try:
            return Frame(load_rgb(path), str(path), new_file=True)
        except (ImageDecodeError, OSError) as error:
            raise SkippedFrame(
                str(error)
                if isinstance(error, ImageDecodeError)
                else f"{path}: unreadable ({error.strerror or error})"
            ) from None
