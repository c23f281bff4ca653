"""A fake of the documented picamera2 API subset edge_app uses, serving real images.

See tests/fakes/README.md. Behaviour follows the picamera2 manual: configurations are dicts with
"main"/"lores" stream dicts; capture needs configure() and start(); format names describe the
pixel as a DRM fourcc, so the bytes in memory run the other way ("RGB888" arrays are BGR).
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import cv2
import numpy as np

__all__ = ["Picamera2", "CompletedRequest"]

SENSOR_SIZE = (2028, 1520)
STRIDE_ALIGN = 64  # ISP output rows are padded to this many bytes
_state = {"captures": 0, "failures_left": None}


def _log(name: str) -> None:
    path = os.environ.get("FAKE_PICAMERA2_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(name + "\n")


def _images() -> list[str]:
    spec = os.environ.get("FAKE_PICAMERA2_IMAGES", "")
    files = (
        sorted(glob.glob(os.path.join(spec, "**", "*.jpg"), recursive=True))
        if os.path.isdir(spec)
        else sorted(glob.glob(spec))
    )
    if not files:
        raise RuntimeError(f"fake picamera2: FAKE_PICAMERA2_IMAGES={spec!r} holds no images")
    return files


def _failing() -> bool:
    """True while the simulated camera is unplugged / timing out."""
    fail_after = os.environ.get("FAKE_PICAMERA2_FAIL_AFTER")
    if fail_after is None or _state["captures"] < int(fail_after):
        return False
    if _state["failures_left"] is None:
        _state["failures_left"] = int(os.environ.get("FAKE_PICAMERA2_FAIL_COUNT", "-1"))
    if _state["failures_left"] == 0:
        return False
    if _state["failures_left"] > 0:
        _state["failures_left"] -= 1
    return True


def _aligned_stride(bytes_per_row: int) -> int:
    return -(-bytes_per_row // STRIDE_ALIGN) * STRIDE_ALIGN


def _to_format(rgb: np.ndarray, fmt: str) -> np.ndarray:
    """An RGB image in the memory layout picamera2 documents for `fmt`."""
    height, width = rgb.shape[:2]
    if fmt == "RGB888":
        return np.ascontiguousarray(rgb[:, :, ::-1])  # [B, G, R]
    if fmt == "BGR888":
        return np.ascontiguousarray(rgb)  # [R, G, B]
    alpha = np.full((height, width, 1), 255, np.uint8)
    if fmt == "XRGB8888":
        return np.concatenate([rgb[:, :, ::-1], alpha], axis=2)
    if fmt == "XBGR8888":
        return np.concatenate([rgb, alpha], axis=2)
    if fmt == "YUV420":
        i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).reshape(-1)
        stride = _aligned_stride(width)
        y = i420[: width * height].reshape(height, width)
        u = i420[width * height : width * height * 5 // 4].reshape(height // 2, width // 2)
        v = i420[width * height * 5 // 4 :].reshape(height // 2, width // 2)
        pad = lambda plane, row: np.pad(plane, ((0, 0), (0, row - plane.shape[1])))  # noqa: E731
        planes = [
            pad(y, stride).reshape(-1),
            pad(u, stride // 2).reshape(-1),
            pad(v, stride // 2).reshape(-1),
        ]
        return np.concatenate(planes).reshape(height * 3 // 2, stride)
    raise RuntimeError(f"fake picamera2: format {fmt} not simulated")


def _stream(defaults: dict, given: dict | None) -> dict:
    stream = dict(defaults)
    stream.update(given or {})
    stream["size"] = tuple(stream["size"])
    return stream


class CompletedRequest:
    def __init__(self, camera: Picamera2, arrays: dict[str, np.ndarray]):
        self._camera, self._arrays, self._released = camera, arrays, False

    def make_array(self, name: str) -> np.ndarray:
        _log("CompletedRequest.make_array")
        if self._released:
            raise RuntimeError("request already released")
        return self._arrays[name].copy()

    def get_metadata(self) -> dict:
        return {"SensorTimestamp": time.monotonic_ns()}

    def release(self) -> None:
        _log("CompletedRequest.release")
        self._released = True


class Picamera2:
    def __init__(self, camera_num: int = 0, tuning=None):
        _log("Picamera2")
        if camera_num != 0:
            raise IndexError(
                "list index out of range"
            )  # what picamera2 raises for a missing camera
        if _failing():
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        self.camera_config: dict | None = None
        self.started = False
        self.closed = False
        self._files = _images()
        self._last = 0.0

    def _configuration(
        self,
        use_case: str,
        main_defaults: dict,
        main=None,
        lores=None,
        raw=None,
        transform=None,
        colour_space=None,
        buffer_count=4,
        controls=None,
        display=None,
        encode=None,
        queue=True,
        sensor=None,
    ) -> dict:
        config = {
            "use_case": use_case,
            "transform": transform,
            "colour_space": colour_space,
            "buffer_count": buffer_count,
            "queue": queue,
            "display": display,
            "encode": encode,
            "sensor": sensor or {},
            "controls": dict(controls or {}),
            "main": _stream(main_defaults, main),
            "raw": raw,
            "lores": None
            if lores is None
            else _stream({"format": "YUV420", "size": (640, 480)}, lores),
        }
        return config

    def create_preview_configuration(
        self,
        main=None,
        lores=None,
        raw=None,
        transform=None,
        colour_space=None,
        buffer_count=4,
        controls=None,
        display="main",
        encode="main",
        queue=True,
        sensor=None,
    ) -> dict:
        _log("Picamera2.create_preview_configuration")
        return self._configuration(
            "preview",
            {"format": "XBGR8888", "size": (640, 480)},
            main,
            lores,
            raw,
            transform,
            colour_space,
            buffer_count,
            controls,
            display,
            encode,
            queue,
            sensor,
        )

    def create_still_configuration(
        self,
        main=None,
        lores=None,
        raw=None,
        transform=None,
        colour_space=None,
        buffer_count=1,
        controls=None,
        display=None,
        encode=None,
        queue=True,
        sensor=None,
    ) -> dict:
        _log("Picamera2.create_still_configuration")
        return self._configuration(
            "still",
            {"format": "BGR888", "size": SENSOR_SIZE},
            main,
            lores,
            raw,
            transform,
            colour_space,
            buffer_count,
            controls,
            display,
            encode,
            queue,
            sensor,
        )

    def create_video_configuration(
        self,
        main=None,
        lores=None,
        raw=None,
        transform=None,
        colour_space=None,
        buffer_count=6,
        controls=None,
        display="main",
        encode="main",
        queue=True,
        sensor=None,
    ) -> dict:
        _log("Picamera2.create_video_configuration")
        return self._configuration(
            "video",
            {"format": "XBGR8888", "size": (1280, 720)},
            main,
            lores,
            raw,
            transform,
            colour_space,
            buffer_count,
            controls,
            display,
            encode,
            queue,
            sensor,
        )

    def configure(self, camera_config=None) -> None:
        _log("Picamera2.configure")
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if not isinstance(camera_config, dict):
            raise RuntimeError("fake picamera2: pass a configuration from create_*_configuration")
        lores = camera_config.get("lores")
        if lores is not None:
            board = os.environ.get("FAKE_PICAMERA2_BOARD", "pi4")
            if board == "pi4" and lores["format"] not in ("YUV420", "YVU420"):
                raise RuntimeError(
                    "lores stream must be YUV on Pi 4"
                )  # as picamera2 raises on a Pi 4
            main_size = camera_config["main"]["size"]
            if lores["size"][0] > main_size[0] or lores["size"][1] > main_size[1]:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
        self.camera_config = camera_config

    def start(self, config=None, show_preview=False) -> None:
        _log("Picamera2.start")
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def _frame(self) -> dict[str, np.ndarray]:
        if not self.started or self.closed:
            raise RuntimeError("Camera is not running")
        if _failing():
            raise RuntimeError("Camera frontend has timed out!")
        fps = float(os.environ.get("FAKE_PICAMERA2_FPS", "0"))
        if fps > 0:
            wait = self._last + 1.0 / fps - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()
        path = self._files[_state["captures"] % len(self._files)]
        _state["captures"] += 1
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        arrays = {}
        for name in ("main", "lores"):
            stream = self.camera_config.get(name)
            if stream is not None:
                width, height = stream["size"]
                scaled = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
                arrays[name] = _to_format(scaled, stream["format"])
        return arrays

    def capture_array(self, name: str = "main", wait=None, signal_function=None) -> np.ndarray:
        _log("Picamera2.capture_array")
        return self._frame()[name]

    def capture_request(self, wait=None, flush=None, signal_function=None) -> CompletedRequest:
        _log("Picamera2.capture_request")
        return CompletedRequest(self, self._frame())

    def stop(self) -> None:
        _log("Picamera2.stop")
        self.started = False

    def close(self) -> None:
        _log("Picamera2.close")
        self.started = False
        self.closed = True


FAKE_SOURCE = Path(__file__)
