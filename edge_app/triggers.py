"""Capture-mode triggers: a line on stdin, SIGUSR1, or a key in the preview window.

stdin protocol (one line each): a sample ID followed by Enter sets the sample and captures;
an empty line captures again for the current sample; `q` or `quit` stops. SIGUSR1 captures
for the current sample (for a foot switch or GPIO button daemon: `kill -USR1 <pid>`).
"""

from __future__ import annotations

import os
import queue
import signal
import stat
import sys
import threading
from dataclasses import dataclass

CAPTURE, QUIT = "capture", "quit"


@dataclass(frozen=True)
class Trigger:
    kind: str  # CAPTURE or QUIT
    sample_id: str | None = None  # a new sample ID typed with this trigger
    via: str = "stdin"


def stdin_ends_session() -> bool:
    """EOF on a terminal, pipe or file means "done"; /dev/null (a service) means "no stdin"."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return sys.stdin.isatty() or stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


class Triggers:
    def __init__(self, use_stdin: bool = True, use_signal: bool = True):
        self.queue: queue.Queue[Trigger] = queue.Queue()
        if use_signal and hasattr(signal, "SIGUSR1"):
            signal.signal(
                signal.SIGUSR1, lambda *_: self.queue.put(Trigger(CAPTURE, via="SIGUSR1"))
            )
        if use_stdin and sys.stdin is not None:
            self._ends = stdin_ends_session()
            threading.Thread(target=self._read_stdin, name="stdin-triggers", daemon=True).start()

    def _read_stdin(self) -> None:
        for line in sys.stdin:
            text = line.strip()
            if text.lower() in ("q", "quit", "exit"):
                self.queue.put(Trigger(QUIT))
                return
            self.queue.put(Trigger(CAPTURE, sample_id=text or None))
        if self._ends:
            self.queue.put(Trigger(QUIT, via="end of stdin"))

    def put_key(self, key: int) -> None:
        if key in (ord("q"), 27):
            self.queue.put(Trigger(QUIT, via="key"))
        elif key in (ord("c"), ord(" "), 13):
            self.queue.put(Trigger(CAPTURE, via="key"))

    def get(self, timeout: float) -> Trigger | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
