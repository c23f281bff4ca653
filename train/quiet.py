"""Quiet TensorFlow for edge-train and edge-convert: its C++ log lines and known harmless
warnings read like failures to a newcomer (`E0000 ... NodeDef mentions attribute
use_unbounded_threadpool ...`), so they are hidden unless --verbose is given.

TensorFlow's C++ code (and absl, before TensorFlow configures it) writes straight to file
descriptor 2, beyond Python's reach. So Python's own stderr (progress bars, click messages,
tracebacks) is moved to a copy of the original descriptor, and descriptor 2 becomes a pipe that
a thread reads line by line: C++ log lines and known noise are dropped, anything else (a fatal
error, a crash report) is passed on unchanged. Must run before TensorFlow is imported.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import re
import sys
import threading
import warnings

# A line of absl / TensorFlow C++ logging: "E0000 00:00:1733... 123 file.cc:45] text" (I/W/E;
# fatal F lines are kept: they explain a crash).
CPP_LOG_LINE = re.compile(rb"^[IWE]\d{4} [\d:]+\.\d+\s+\d+ \S+:\d+\] ")
NOISE = (
    rb"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    rb"oneDNN custom operations are on",
    rb"This TensorFlow binary is optimized to use available CPU instructions",
    rb"To enable the following instructions",
    rb"Unable to register cuDNN factory",
    rb"Unable to register cuFFT factory",
    rb"Unable to register cuBLAS factory",
    rb"computation placer already registered",
    rb"TF-TRT Warning",
    rb"could not open file to read NUMA node",
    rb"Could not find cuda drivers",
    rb"failed call to cuInit",
    rb"Created TensorFlow Lite XNNPACK delegate",
    rb"INFO: Created TensorFlow Lite",
    rb"INFO: Initialized TensorFlow Lite runtime",
)
# Python warnings known to be harmless in these two commands (all from third-party code).
HARMLESS_WARNINGS = (
    (UserWarning, r"keras(\.|$)"),
    (UserWarning, r"tensorflow(\.|$)"),
    (DeprecationWarning, r"(keras|tensorflow|tf_keras|absl|google\.protobuf|h5py)(\.|$)"),
    (FutureWarning, r"(keras|tensorflow)(\.|$)"),
)


def is_noise(line: bytes) -> bool:
    return bool(CPP_LOG_LINE.match(line)) or any(text in line for text in NOISE)


def _pump(read_fd: int, out_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not is_noise(line):
                    os.write(out_fd, line + b"\n")
        if pending and not is_noise(pending):
            os.write(out_fd, pending)


def quiet_tensorflow(verbose: bool) -> None:
    """Hide TensorFlow's C++ logging and known harmless warnings (show all with `verbose`)."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    for category, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", category=category, module=module)
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded): nothing to filter
        return
    # Python's stderr keeps writing to the terminal (progress bars stay live); fd 2 is filtered.
    # Buffered until a newline or flush, so "50%" and its "\r" reach the terminal as one write.
    sys.stderr = io.TextIOWrapper(
        os.fdopen(os.dup(original), "wb"),
        encoding=sys.stderr.encoding or "utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    thread = threading.Thread(
        target=_pump, args=(read_fd, original), name="quiet-stderr", daemon=True
    )
    thread.start()

    def restore() -> None:  # at exit: stop the pipe, let the thread pass on what is left
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # closes the pipe's last write end: the thread sees the end
        thread.join(timeout=2)

    atexit.register(restore)
