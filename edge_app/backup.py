"""Copy the results database and the saved field images to another disk (a USB stick, a
network share), so that a lost or worn-out SD card loses no result.

The database is copied with SQLite's online backup API: a consistent snapshot even while
`edge-app run` or the review server write to it (WAL mode lets them go on). The copy is checked
(`PRAGMA integrity_check`) before it replaces the previous backup, so a failed or interrupted
backup leaves the last good one in place. Images are copied incrementally (new or changed files
only) and never deleted from the backup: when the storage budget prunes old images on the Pi,
the backup keeps them. The backup is a plain LeukEdge database: `edge-app serve --db
BACKUP/results.sqlite --save-dir BACKUP/frames` reviews from it on any computer.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from leukedge.edge_app.files import TEMP_PREFIX, replacing
from leukedge.edge_app.storage import (
    StorageError,
    check_database_file,
    connect,
    explain_write_error,
    make_private_dir,
)

DATABASE_NAME = "results.sqlite"
IMAGES_NAME = "frames"
# Room kept free on the backup disk beyond what the copy needs.
SPARE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class BackupSummary:
    database: str
    frames: int
    samples: int
    reviews: int
    integrity: str
    images_copied: int
    images_present: int
    bytes_copied: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def _images_to_copy(save_dir: Path, target: Path) -> tuple[list[tuple[Path, Path, int]], int]:
    """(source, destination, size) of every image new or changed since the last backup; the
    count of those already there."""
    todo, present = [], 0
    for folder, _, names in sorted(os.walk(save_dir)):
        for name in sorted(names):
            if name.startswith(TEMP_PREFIX):  # a frame being written
                continue
            source = Path(folder, name)
            destination = target / source.relative_to(save_dir)
            try:
                here = source.stat()
            except FileNotFoundError:  # pruned by the storage budget since the walk listed it
                continue
            if not stat.S_ISREG(here.st_mode):
                continue
            try:
                there = destination.stat()
            except FileNotFoundError:
                there = None
            if there and (there.st_size, int(there.st_mtime)) == (here.st_size, int(here.st_mtime)):
                present += 1
            else:
                todo.append((source, destination, here.st_size))
    return todo, present


def _check_room(destination: Path, need: int) -> None:
    usage = shutil.disk_usage(destination)
    if usage.total == 0:  # /proc, /sys and the like: no disk behind the folder
        raise StorageError(
            f"--to {destination}: is not on a disk that can hold files (a system folder?): "
            "give the backup disk's folder"
        )
    free = usage.free
    if free < need + SPARE_BYTES:
        raise StorageError(
            f"--to {destination}: {free / 1e6:.1f} MB free, the backup needs about "
            f"{(need + SPARE_BYTES) / 1e6:.1f} MB: use a larger disk or free space on it; "
            "the previous backup there is untouched"
        )


# Rows are never deleted or changed (storage's triggers), so an earlier backup of a database
# holds a prefix of its rows: the newest frame and review of the backup are still in it, the same.
_IDENTITY = (
    ("results", "id, timestamp_utc, sample_id, source"),
    ("reviews", "id, reviewed_utc, sample_id, reviewer"),
)


def _check_same_database(source: sqlite3.Connection, db: Path, target: Path) -> None:
    """Refuse to replace a backup that is not an earlier copy of `db` (another Pi's database, or
    an older one the SD card held before it was replaced): that would lose its results."""
    if not target.exists():
        return
    try:
        check_database_file(target)  # a file of that name that is not a database stays
    except StorageError:
        raise StorageError(
            f"--to {target.parent}: holds a {target.name} that is not an SQLite database: move "
            "it away or back up to another folder"
        ) from None
    earlier = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    try:
        for table, columns in _IDENTITY:
            query = f"SELECT {columns} FROM {table}"
            try:
                last = earlier.execute(f"{query} ORDER BY id DESC LIMIT 1").fetchone()
            except sqlite3.OperationalError:  # an older schema without that table
                continue
            if last is None:
                continue
            try:
                here = source.execute(f"{query} WHERE id = ?", (last[0],)).fetchone()
            except sqlite3.OperationalError:
                here = None
            if here is None or tuple(here) != tuple(last):
                raise StorageError(
                    f"--to {target.parent}: its {target.name} is not an earlier backup of {db} "
                    f"({table} row {last[0]} differs or is missing): it may hold another Pi's or "
                    "an older database's results, which this backup would replace; back up to "
                    "another folder"
                )
    except sqlite3.DatabaseError as error:
        raise StorageError(
            f"--to {target.parent}: its {target.name} cannot be read ({error}): move it away or "
            "back up to another folder"
        ) from None
    finally:
        earlier.close()


def _copy_database(source: sqlite3.Connection, target: Path) -> tuple[int, int, int, str]:
    """Snapshot `source` into `target` atomically; (frames, samples, reviews, integrity)."""
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".backup-", suffix=".sqlite")  # 0600
    os.close(fd)
    try:
        copy = sqlite3.connect(temp, isolation_level=None)
        try:
            source.backup(copy)
            # One self-contained file (no -wal beside it), readable from a stick on any computer.
            copy.execute("PRAGMA journal_mode=DELETE")
            integrity = copy.execute("PRAGMA integrity_check").fetchone()[0]
            counts = [
                copy.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                if copy.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
                ).fetchone()
                else 0
                for table in ("results", "samples", "reviews")
            ]
        finally:
            copy.close()
        if integrity != "ok":
            raise StorageError(
                f"--to {target.parent}: the copy failed its integrity check ({integrity}): "
                "the disk may be failing; the previous backup there is untouched"
            )
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return counts[0], counts[1], counts[2], integrity


def _copy_file(source: Path, destination: Path) -> int | None:
    """Copy one image, owner-only and atomically; its size, or None when the storage budget
    pruned it since it was listed."""
    try:
        image = source.open("rb")
    except FileNotFoundError:
        return None
    make_private_dir(destination.parent)
    with image, replacing(destination) as out:
        shutil.copyfileobj(image, out)
        copied = os.fstat(image.fileno())
    # The mtime tells the next backup that the image is already there.
    os.utime(destination, ns=(copied.st_atime_ns, copied.st_mtime_ns))
    return copied.st_size


def backup(
    db: Path,
    destination: Path,
    save_dir: Path | None = None,
    progress: Callable[[Iterable], Iterable] = lambda items: items,
) -> BackupSummary:
    """Back up `db` (and the images under `save_dir`) into the existing folder `destination`."""
    started = time.perf_counter()
    db, destination = Path(db), Path(destination)
    if destination.exists() and not destination.is_dir():
        raise StorageError(
            f"--to {destination}: is a file, not a folder: give the backup disk's folder"
        )
    if not destination.is_dir():
        # Never create it: an unmounted stick's mount point would silently fill the SD card.
        raise StorageError(
            f"--to {destination}: no such folder: plug in and mount the backup disk, or create "
            "the folder first"
        )
    if not os.access(destination, os.W_OK | os.X_OK):
        raise StorageError(
            f"--to {destination}: this user cannot write there: mount the disk writable, or "
            "give a folder of your own on it"
        )
    resolved = destination.resolve()
    for name, folder in (("--save-dir", save_dir), ("--db's folder", db.parent)):
        if folder is not None and resolved == Path(folder).resolve():
            raise StorageError(f"--to {destination}: is {name}; back up to another disk")
    if save_dir is not None:
        if not Path(save_dir).is_dir():
            raise StorageError(f"--save-dir {save_dir}: no such folder")
        if resolved.is_relative_to(Path(save_dir).resolve()):
            raise StorageError(f"--to {destination}: is inside --save-dir; back up to another disk")
    images = destination / IMAGES_NAME
    todo, present = _images_to_copy(Path(save_dir), images) if save_dir else ([], 0)
    source = connect(db, read_only=True, upgrade=False)  # refuses a missing or foreign --db
    try:
        wal = db.with_name(db.name + "-wal")  # committed rows not yet folded into the file
        size = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        _check_room(destination, size + sum(size for _, _, size in todo))
        target = destination / DATABASE_NAME
        _check_same_database(source, db, target)
        frames, samples, reviews, integrity = _copy_database(source, target)
        copied_files = copied = 0
        if todo:
            make_private_dir(images)
        for image, file, _ in progress(todo) if todo else ():
            size = _copy_file(image, file)
            if size is not None:
                copied_files, copied = copied_files + 1, copied + size
    except StorageError:
        raise
    except (OSError, sqlite3.Error) as error:
        raise StorageError(explain_write_error(destination, error)) from None
    finally:
        source.close()
    return BackupSummary(
        str(target),
        frames,
        samples,
        reviews,
        integrity,
        copied_files,
        present,
        copied,
        round(time.perf_counter() - started, 2),
    )
