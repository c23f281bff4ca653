"""The live preview window, only where a display and a GUI build of OpenCV exist.

opencv-python-headless has no GUI: cv2.namedWindow raises cv2.error there. We detect that
once and carry on without a window instead of failing.
"""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np

from leukedge.edge_app.decision import LABEL, UNCERTAIN, UNKNOWN, Decision
from leukedge.edge_app.quality import Quality

log = logging.getLogger("leukedge.edge_app")
WINDOW = "LeukEdge (research aid, not a diagnosis)"
COLOURS = {
    LABEL: (0, 160, 0),
    UNCERTAIN: (0, 140, 255),
    UNKNOWN: (200, 0, 200),
}  # BGR; unfit is red


def display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class Preview:
    """A window showing the frame with decision, confidence and quality drawn on it."""

    def __init__(self) -> None:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)  # raises cv2.error without GUI support

    @classmethod
    def try_open(cls, wanted: bool | None) -> Preview | None:
        if wanted is False:
            return None
        if not display_available():
            if wanted:
                log.warning(
                    "no display (DISPLAY/WAYLAND_DISPLAY unset): running without a preview window"
                )
            return None
        try:
            return cls()
        except cv2.error:
            level = logging.WARNING if wanted else logging.INFO
            log.log(
                level,
                "this OpenCV build has no GUI (opencv-python-headless?): running without "
                "a preview window; install python3-opencv from apt for one",
            )
            return None

    def show(
        self, rgb: np.ndarray, decision: Decision, quality: Quality, sample_id: str | None
    ) -> int:
        """Draw and show; returns the key pressed (-1 if none)."""
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        scale = max(1.0, image.shape[1] / 640)
        colour = COLOURS.get(decision.kind, (0, 0, 220))
        lines = [
            decision.message if quality.ok else f"unfit: {quality.reason}",
            f"focus {quality.focus:.1f}  brightness {quality.brightness:.0f}"
            + (f"  sample {sample_id}" if sample_id else ""),
            "research aid, not a diagnosis",
        ]
        for number, text in enumerate(lines):
            origin = (int(10 * scale), int((30 + 28 * number) * scale))
            cv2.putText(
                image,
                text,
                origin,
                cv2.FONT_HERSHEY_SIMPLEX,
                0.7 * scale,
                (0, 0, 0),
                int(4 * scale),
                cv2.LINE_AA,
            )
            cv2.putText(
                image,
                text,
                origin,
                cv2.FONT_HERSHEY_SIMPLEX,
                0.7 * scale,
                colour if number == 0 else (255, 255, 255),
                int(2 * scale),
                cv2.LINE_AA,
            )
        cv2.imshow(WINDOW, image)
        return self.poll()

    def poll(self, wait_ms: int = 1) -> int:
        key = cv2.waitKey(wait_ms)
        return -1 if key < 0 else key & 0xFF

    def close(self) -> None:
        try:
            cv2.destroyWindow(WINDOW)
        except cv2.error:
            pass
