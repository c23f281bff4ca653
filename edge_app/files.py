"""Writing a file all at once or not at all, the one way every LeukEdge stage replaces a file.

Models, manifests, saved frames, reports, the users file and backed-up images are written to a
temporary name beside the target, flushed to the disk, then renamed over it: a power cut on the
Pi or a full disk leaves the previous file or none, never half of one. Temporary names start with
`TEMP_PREFIX`, so the storage budget and the backup skip a frame still being written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".tmp-"
# Models and manifests are meant to be shared (copied to Android teams, served read-only).
SHARED_MODE = 0o644


@contextmanager
def replacing(path: str | Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into; it replaces `path` only when the block
    ends without an error, else it is removed and `path` is left as it was.

    `mode` defaults to owner-only (results are patient data); models and manifests pass
    `SHARED_MODE`.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        if mode != 0o600:  # mkstemp made it 0o600
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def cannot_write_in(folder: str | Path) -> str | None:
    """Why no file can be written in `folder` (made with its parents when missing), or None.

    Checked by writing a scratch file there, so a read-only disk, a path through a file or a
    system folder is refused before minutes or hours of work, not after them.
    """
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=TEMP_PREFIX):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return None


def write_atomic(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` all at once (see `replacing`)."""
    with replacing(path, mode) as out:
        out.write(data)
