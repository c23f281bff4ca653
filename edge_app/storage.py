"""Results that are never lost: SQLite in WAL mode, frames written atomically, owner-only files.

Each result is committed on its own, so a crash, a SIGKILL or a full disk loses at most the
frame in flight. Files and folders are created 0o600 / 0o700: frames may be patient data.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

SCHEMA_VERSION = 1
COLUMNS = (
    ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("timestamp_utc", "TEXT NOT NULL"),
    ("sample_id", "TEXT"),
    ("mode", "TEXT NOT NULL"),
    ("source", "TEXT NOT NULL"),
    ("frame_origin", "TEXT"),
    ("decision", "TEXT NOT NULL"),  # label / uncertain / unfit
    ("label", "TEXT"),  # only for decision = label
    ("top_label", "TEXT"),
    ("confidence", "REAL"),
    ("probabilities", "TEXT"),  # JSON {label: probability}
    ("quality_ok", "INTEGER NOT NULL"),
    ("quality_reason", "TEXT"),
    ("focus", "REAL"),
    ("brightness", "REAL"),
    ("contrast", "REAL"),
    ("clipped", "REAL"),
    ("model_file", "TEXT NOT NULL"),
    ("model_sha256", "TEXT NOT NULL"),
    ("model_variant", "TEXT"),
    ("model_verified", "INTEGER NOT NULL"),
    ("runtime", "TEXT NOT NULL"),
    ("app_version", "TEXT NOT NULL"),
    ("image_path", "TEXT"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)


class StorageError(OSError):
    """The database or frame folder cannot be written; the message says which and why."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _explain(path: Path, error: BaseException) -> str:
    text = str(error)
    if "full" in text.lower() or getattr(error, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return f"{path}: disk full ({text}): free space; results stored so far are intact"
    if "disk i/o error" in text.lower():  # SQLite's word for a write the OS refused (often a full disk)
        return (f"{path}: disk I/O error (disk full or failing storage?): free space or check the "
                "SD card; results stored so far are intact")
    return f"{path}: cannot write ({text}): check the path exists and is writable"


def make_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(path, 0o700)
    except OSError:  # a folder owned by someone else: writing into it decides
        pass


class ResultStore:
    """Append-only results table; `add()` commits each row."""

    def __init__(self, db_path: str | Path, synchronous: str = "NORMAL"):
        self.path = Path(db_path)
        if self.path.is_dir():
            raise StorageError(f"{self.path}: is a folder, expected a database file path")
        try:
            if not self.path.parent.exists():
                make_private_dir(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self.connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.connection.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a committed row survives a crash or kill of the app; only a power cut
            # may lose the last commits. --db-sync full trades speed for power-cut safety.
            self.connection.execute(f"PRAGMA synchronous={synchronous}")
            self.connection.execute("PRAGMA busy_timeout=5000")
            columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS)
            self.connection.execute(f"CREATE TABLE IF NOT EXISTS results ({columns})")
            self.connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as error:
            raise StorageError(_explain(self.path, error)) from None
        self._restrict_sidecars()
        self._insert = (f"INSERT INTO results ({', '.join(COLUMN_NAMES[1:])}) "
                        f"VALUES ({', '.join('?' * (len(COLUMN_NAMES) - 1))})")

    def _restrict_sidecars(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            sidecar = Path(f"{self.path}{suffix}")
            if sidecar.exists():
                try:
                    os.chmod(sidecar, 0o600)
                except OSError:
                    pass

    def add(self, row: dict) -> int:
        values = [row.get(name) for name in COLUMN_NAMES[1:]]
        try:
            cursor = self.connection.execute(self._insert, values)
        except sqlite3.Error as error:
            raise StorageError(_explain(self.path, error)) from None
        return int(cursor.lastrowid)

    def count(self) -> int:
        return int(self.connection.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is None:
            return
        try:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # e.g. disk full: the WAL keeps the rows, SQLite replays it on next open
        connection.close()
        self._restrict_sidecars()


@dataclass
class FrameWriter:
    """Saves frames as <dir>/<date>/<id>.<ext> atomically (temp file + os.replace)."""

    directory: Path
    image_format: str = "jpg"

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).resolve()
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image format must be jpg or png, got {self.image_format!r}")
        try:
            make_private_dir(self.directory)
        except OSError as error:
            raise StorageError(_explain(self.directory, error)) from None

    def save(self, rgb: np.ndarray, name: str) -> Path:
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        folder = self.directory / day
        target = folder / f"{name}.{self.image_format}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if self.image_format == "jpg" else []
        try:
            make_private_dir(folder)
            ok, encoded = cv2.imencode(f".{self.image_format}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise OSError(f"could not encode {self.image_format}")
            fd, temp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=f".{self.image_format}")
            try:
                with os.fdopen(fd, "wb") as handle:  # mkstemp creates it 0o600
                    handle.write(encoded.tobytes())
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, target)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except OSError as error:
            raise StorageError(_explain(target, error)) from None
        return target


def export_csv(db_path: str | Path, csv_path: str | Path) -> int:
    """Write every stored result to CSV (one column per probability); returns the row count."""
    db_path, csv_path = Path(db_path), Path(csv_path)
    if not db_path.is_file():
        raise StorageError(f"{db_path}: no such database")
    try:
        connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT * FROM results ORDER BY id").fetchall()
        connection.close()
    except sqlite3.Error as error:
        raise StorageError(f"{db_path}: not a LeukEdge results database ({error})") from None
    labels: list[str] = []
    for row in rows:
        for label in json.loads(row["probabilities"] or "{}"):
            if label not in labels:
                labels.append(label)
    header = [name for name in COLUMN_NAMES if name != "probabilities"] + [f"p_{label}" for label in labels]
    try:
        fd = os.open(csv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for row in rows:
                probabilities = json.loads(row["probabilities"] or "{}")
                writer.writerow([row[name] for name in COLUMN_NAMES if name != "probabilities"]
                                + [probabilities.get(label, "") for label in labels])
    except OSError as error:
        raise StorageError(_explain(csv_path, error)) from None
    return len(rows)
