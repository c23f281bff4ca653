"""Raspberry Pi camera modules through picamera2 (apt package python3-picamera2).

Colour matters: stain colour is diagnostic, so frames are always full RGB, never the luma plane.
picamera2 names formats after libcamera/DRM, so the byte order in memory is the reverse of the
name: an "RGB888" array is [B, G, R] per pixel (what OpenCV calls BGR) and "XRGB8888" is
[B, G, R, X]; "BGR888" is [R, G, B]. We request "RGB888" and convert BGR -> RGB here.

The lores stream: on a Pi 4 it can only be YUV420 (I420 planes). capture_array("lores") then
returns a (height * 3 / 2, stride) array whose rows may be padded past the width: we convert
the whole padded image to RGB and then cut the padding off. A Pi 5 can give RGB888 lores.
With the lores stream, the lores frame is classified and the main frame of the same request
(capture_request) is what gets saved for review.

Only documented picamera2 calls are used: Picamera2(camera_num), create_preview_configuration,
configure, start, capture_array, capture_request (make_array, release), stop, close.
"""

from __future__ import annotations

import importlib

import cv2
import numpy as np

from leukedge.edge_app.settings import CameraSettings
from leukedge.edge_app.sources.base import CameraError, Frame, FrameSource, SourceError

# Byte order in memory of each picamera2 format, as the picamera2 manual documents it.
MEMORY_ORDER = {"RGB888": "BGR", "BGR888": "RGB", "XRGB8888": "BGRX", "XBGR8888": "RGBX"}


def picamera2_to_rgb(array: np.ndarray, fmt: str, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB (height, width, 3) from a picamera2 array of format `fmt` and (width, height)."""
    width, height = size
    if fmt in ("YUV420", "YVU420"):
        if array.ndim != 2 or array.shape[0] % 3 or array.shape[1] % 2:
            raise CameraError(
                f"picamera2 {fmt} array has shape {array.shape}, expected "
                f"(height * 3 / 2, stride) for a {width}x{height} stream"
            )
        width = min(width, array.shape[1])  # the array itself is the truth if the size was aligned
        code = cv2.COLOR_YUV2RGB_I420 if fmt == "YUV420" else cv2.COLOR_YUV2RGB_YV12
        # Convert at the padded width (stride) so the chroma planes line up, then drop padding.
        return np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(array), code)[:, :width])
    order = MEMORY_ORDER.get(fmt)
    if order is None:
        raise CameraError(f"picamera2 format {fmt} is not supported: use RGB888 or YUV420")
    if array.ndim != 3 or array.shape[2] != len(order):
        raise CameraError(f"picamera2 {fmt} array has shape {array.shape}")
    pixels = array[:, :width, :3]
    if order.startswith("BGR"):
        return np.ascontiguousarray(pixels[:, :, ::-1])
    return np.ascontiguousarray(pixels)


class PiCameraSource(FrameSource):
    live = True

    def __init__(self, camera_num: int = 0, settings: CameraSettings = CameraSettings()):
        if settings.stream not in ("main", "lores"):
            raise SourceError(f"--camera-stream {settings.stream}: use main or lores")
        self.camera_num, self.settings = camera_num, settings
        self.name = f"picamera2:{camera_num}"
        self.camera = None
        self._count = 0

    def _controls(self) -> dict:
        controls: dict = {}
        if self.settings.exposure_us is not None:
            controls.update(AeEnable=False, ExposureTime=int(self.settings.exposure_us))
        if self.settings.analogue_gain is not None:
            controls["AnalogueGain"] = float(self.settings.analogue_gain)
        if self.settings.colour_gains is not None:
            controls.update(AwbEnable=False, ColourGains=tuple(self.settings.colour_gains))
        return controls

    def open(self) -> None:
        try:
            module = importlib.import_module("picamera2")
        except ImportError:
            raise SourceError(
                "--source picamera2: the picamera2 module is not installed: on Raspberry "
                "Pi OS run 'sudo apt install python3-picamera2' and make the venv with "
                "--system-site-packages (see docs/raspberry-pi.md)"
            ) from None
        try:
            camera = module.Picamera2(self.camera_num)
        except Exception as error:  # no camera attached gives IndexError / RuntimeError
            raise CameraError(f"{self.name}: camera not available ({_first_line(error)})") from None
        self.camera = camera
        lores = None
        if self.settings.stream == "lores":
            lores = {"size": tuple(self.settings.lores_size), "format": self.settings.lores_format}
        kwargs = {"main": {"size": tuple(self.settings.size), "format": "RGB888"}, "lores": lores}
        controls = self._controls()
        if controls:
            kwargs["controls"] = controls
        try:
            config = camera.create_preview_configuration(**kwargs)
            camera.configure(config)
            camera.start()
        except Exception as error:
            self.close()
            raise CameraError(
                f"{self.name}: could not configure/start ({_first_line(error)})"
            ) from None

    def read(self) -> Frame | None:
        if self.camera is None:
            raise CameraError(f"{self.name}: not open")
        try:
            if self.settings.stream == "lores":
                request = self.camera.capture_request()
                try:
                    main = request.make_array("main")
                    lores = request.make_array("lores")
                finally:
                    request.release()
                full = picamera2_to_rgb(main, "RGB888", self.settings.size)
                rgb = picamera2_to_rgb(lores, self.settings.lores_format, self.settings.lores_size)
            else:
                full = None
                rgb = picamera2_to_rgb(
                    self.camera.capture_array("main"), "RGB888", self.settings.size
                )
        except CameraError:
            raise
        except Exception as error:
            raise CameraError(f"{self.name}: capture failed ({_first_line(error)})") from None
        self._count += 1
        return Frame(rgb, f"{self.name}#{self._count}", full_rgb=full)

    def close(self) -> None:
        camera, self.camera = self.camera, None
        if camera is None:
            return
        for step in (camera.stop, camera.close):
            try:
                step()
            except Exception:  # closing a failed camera must not hide the original error
                pass


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__
