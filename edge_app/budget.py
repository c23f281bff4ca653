"""A storage budget for months unattended: which frames are saved, and how saved images are pruned.

The SD card of a Pi beside a microscope must not fill up. Rows (results) are small and are
never pruned; images are large and are the only thing this module deletes.

Save policy for camera streams (live mode). Capture mode saves every captured frame (someone
asked for it), and a file source saves every image file (each is a slide someone chose):
- `changes` (default): at most one frame per `--save-every` seconds, and only a classified one
  (never unfit: its quality figures are in the row). An answered frame (a label) is saved
  whenever the interval allows; an uncertain or unknown frame only when the answer differs from
  the last saved frame's, so a long referred stretch keeps one picture, not thousands.
- `all`: every processed frame (short runs, debugging).

Budget (`--max-disk-mb`, `--keep-days`): after each save, the oldest images are deleted until the
folder is within the size limit, and images older than the age limit are deleted; images of
samples still awaiting review are never deleted. Each deleted image is recorded in the
`pruned_images` table of the results database (its row keeps the old `image_path`).

Free space (`--min-free-mb`): when the save folder's filesystem has less free space than this,
or refuses a write (full), the app stops saving images, keeps storing rows, warns once and says
so in its summary. Saving resumes if space comes back (e.g. after pruning).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukedge.edge_app.storage import FrameWriter, StorageError, utc_now

log = logging.getLogger("leukedge.edge_app")

POLICIES = ("changes", "all")
MB = 1024 * 1024
PROTECTED_REFRESH_S = 30.0  # how stale the "awaiting review" list may be (reviews are rare)


@dataclass(frozen=True)
class SaveSettings:
    """How frames are saved and how much of the disk they may take."""

    policy: str = "changes"  # "changes" or "all" (see the module docstring)
    every_s: float = 10.0  # changes policy: at most one saved frame per this many seconds
    max_disk_mb: float | None = None  # saved images above this total: oldest pruned first
    keep_days: float | None = None  # saved images older than this: pruned
    min_free_mb: float = 256.0  # below this free space on the save folder's disk: stop saving


def check_budget_options(
    max_disk_mb: float | None, keep_days: float | None, save_every_s: float, min_free_mb: float
) -> None:
    """ValueError with a one-line message naming the option, for values that cannot work."""
    if max_disk_mb is not None and max_disk_mb <= 0:
        raise ValueError(
            f"--max-disk-mb {max_disk_mb:g}: must be above 0 (megabytes of saved images to keep)"
        )
    if keep_days is not None and keep_days <= 0:
        raise ValueError(
            f"--keep-days {keep_days:g}: must be above 0 (days to keep saved images); "
            "leave it out to keep them until --max-disk-mb needs the space"
        )
    if save_every_s < 0:
        raise ValueError(f"--save-every {save_every_s:g}: must be 0 or more seconds")
    if min_free_mb < 0:
        raise ValueError(f"--min-free-mb {min_free_mb:g}: must be 0 or more megabytes")


def awaiting_review(connection: sqlite3.Connection) -> set[str]:
    """Sample IDs whose images must be kept: every sample without a review.

    Nothing is protected while the database has no `reviews` table (an app version without
    review): then no sample can be waiting for one. With it, every sample ID known to the
    database (the `samples` table if there is one, and the results' sample IDs) that has no
    row in `reviews` is awaiting review.
    """
    tables = {
        row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    if "reviews" not in tables:
        return set()
    known: set[str] = set()
    if "samples" in tables:
        known |= {
            row[0]
            for row in connection.execute(
                f"SELECT {_id_column(connection, 'samples')} FROM samples"
            )
            if row[0] is not None
        }
    if "results" in tables:
        known |= {
            row[0]
            for row in connection.execute(
                "SELECT DISTINCT sample_id FROM results WHERE sample_id IS NOT NULL"
            )
        }
    reviewed = {
        row[0]
        for row in connection.execute(
            f"SELECT DISTINCT {_id_column(connection, 'reviews')} FROM reviews"
        )
        if row[0] is not None
    }
    return {str(sample) for sample in known - reviewed}


def _id_column(connection: sqlite3.Connection, table: str) -> str:
    """The column naming the sample: `sample_id`, else (in `samples`) `id`."""
    columns = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
    if "sample_id" in columns:
        return "sample_id"
    if table == "samples" and "id" in columns:
        return "id"
    raise sqlite3.OperationalError(f"table {table} has no sample_id column")


class SavePolicy:
    """Which frames to save (see the module docstring)."""

    def __init__(self, policy: str = "changes", every_s: float = 10.0):
        if policy not in POLICIES:
            raise ValueError(f"save policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy, self.every_s = policy, every_s
        self._last_saved_at: float | None = None
        self._last_answer: tuple[str, str | None] | None = None

    def wants(
        self, kind: str, label: str | None, now: float, mode: str = "live", new_file: bool = False
    ) -> bool:
        if self.policy == "all" or mode == "capture" or new_file:
            return True
        if kind == "unfit":
            return False
        due = self._last_saved_at is None or now - self._last_saved_at >= self.every_s
        # Answered frames are saved periodically; an uncertain or unknown frame only when the
        # answer changed since the last saved frame (one picture per referred stretch is enough).
        return due and (kind == "label" or (kind, label) != self._last_answer)

    def saved(self, kind: str, label: str | None, now: float) -> None:
        self._last_saved_at, self._last_answer = now, (kind, label)


@dataclass
class _Image:
    path: Path
    size: int
    saved_at: float  # time.time() seconds (file mtime for images found at start-up)
    sample_id: str | None


class ImageBudget:
    """Keeps the save folder within --max-disk-mb / --keep-days, oldest first, never pruning
    the images of samples awaiting review, and watches free space."""

    def __init__(
        self,
        directory: Path,
        connection: sqlite3.Connection | None,
        settings: SaveSettings,
        clock: Callable[[], float] = time.time,
    ):
        self.directory, self.connection, self.settings, self.clock = (
            Path(directory),
            connection,
            settings,
            clock,
        )
        self.max_bytes = None if settings.max_disk_mb is None else int(settings.max_disk_mb * MB)
        self.images: deque[_Image] = deque()
        self.total = 0
        self.pruned = 0
        self.pruned_bytes = 0
        self._protected: set[str] = set()
        self._protected_at: float | None = None
        self._ensure_log_table()
        self._scan()

    # -- start-up ----------------------------------------------------------------------------
    def _ensure_log_table(self) -> None:
        if self.connection is not None:
            self.connection.execute(
                "CREATE TABLE IF NOT EXISTS pruned_images (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "image_path TEXT NOT NULL, sample_id TEXT, bytes INTEGER, reason TEXT NOT NULL, "
                "pruned_utc TEXT NOT NULL)"
            )

    def _scan(self) -> None:
        """Images saved by earlier runs count against the budget too (oldest first)."""
        samples: dict[str, str | None] = {}
        if self.connection is not None:
            samples = dict(
                self.connection.execute(
                    "SELECT image_path, sample_id FROM results WHERE image_path IS NOT NULL"
                )
            )
        found = []
        for path in self.directory.rglob("*"):
            if path.name.startswith(".tmp-") or not path.is_file():
                continue
            stat = path.stat()
            found.append(_Image(path, stat.st_size, stat.st_mtime, samples.get(str(path))))
        found.sort(key=lambda image: image.saved_at)
        self.images.extend(found)
        self.total = sum(image.size for image in found)

    # -- bookkeeping -------------------------------------------------------------------------
    def added(self, path: Path, sample_id: str | None) -> None:
        self.images.append(_Image(Path(path), Path(path).stat().st_size, self.clock(), sample_id))
        self.total += self.images[-1].size

    def protected(self) -> set[str]:
        now = time.monotonic()
        if self.connection is not None and (
            self._protected_at is None or now - self._protected_at >= PROTECTED_REFRESH_S
        ):
            try:
                self._protected = awaiting_review(self.connection)
            except sqlite3.Error as error:  # a schema this version does not know: keep everything
                log.warning(
                    "warning: cannot tell which samples await review (%s): no image is pruned",
                    error,
                )
                self._protected = {"*"}
            self._protected_at = now
        return self._protected

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.directory).free

    # -- pruning -----------------------------------------------------------------------------
    def enforce(self) -> int:
        """Prune what the limits require; returns how many images were deleted."""
        if self.max_bytes is None and self.settings.keep_days is None:
            return 0
        protected = self.protected()
        if "*" in protected:
            return 0
        oldest_allowed = (
            None
            if self.settings.keep_days is None
            else self.clock() - self.settings.keep_days * 86400
        )
        deleted = 0
        kept: list[_Image] = []  # protected images met on the way, put back in order
        while self.images:
            image = self.images[0]
            too_big = self.max_bytes is not None and self.total > self.max_bytes
            too_old = oldest_allowed is not None and image.saved_at < oldest_allowed
            if not (too_big or too_old):
                break
            self.images.popleft()
            if image.sample_id is not None and image.sample_id in protected:
                kept.append(image)
                continue
            self._delete(image, "max-disk-mb" if too_big else "keep-days")
            deleted += 1
        self.images.extendleft(reversed(kept))
        return deleted

    def _delete(self, image: _Image, reason: str) -> None:
        try:
            image.path.unlink()
        except FileNotFoundError:
            pass  # removed by hand: it no longer takes space either way
        except OSError as error:
            log.warning("warning: cannot prune %s (%s)", image.path, error)
            return
        self.total -= image.size
        self.pruned += 1
        self.pruned_bytes += image.size
        if self.connection is not None:
            self.connection.execute(
                "INSERT INTO pruned_images (image_path, sample_id, bytes, reason, pruned_utc) "
                "VALUES (?, ?, ?, ?, ?)",
                (str(image.path), image.sample_id, image.size, reason, utc_now()),
            )

    def over_budget_with_protected_only(self) -> bool:
        return self.max_bytes is not None and self.total > self.max_bytes


class FrameSaver:
    """Decides, saves and prunes: the one object the app asks "save this frame?"."""

    def __init__(
        self,
        writer: FrameWriter,
        settings: SaveSettings,
        connection: sqlite3.Connection | None,
        clock: Callable[[], float] = time.time,
    ):
        self.writer, self.settings, self.clock = writer, settings, clock
        self.policy = SavePolicy(settings.policy, settings.every_s)
        self.budget = ImageBudget(writer.directory, connection, settings, clock)
        self.saved = 0
        self.not_saved_low_space = 0
        self.not_saved_budget = 0
        self.not_saved_too_large = 0  # one image alone is over --max-disk-mb
        self.stopped_reason: str | None = None  # why saving is paused right now
        self.write_failed = False  # the disk refused a write: no more tries this run
        self._warned: set[str] = set()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("warning: %s", message)

    def _low_space(self) -> str | None:
        try:
            free = self.budget.free_bytes()
        except OSError as error:
            return f"cannot read free space of {self.writer.directory} ({error})"
        if free < self.settings.min_free_mb * MB:
            return (
                f"only {free / MB:.0f} MB free on the disk of {self.writer.directory} "
                f"(--min-free-mb {self.settings.min_free_mb:g})"
            )
        return None

    def save(
        self,
        rgb: np.ndarray,
        name: str,
        kind: str,
        label: str | None,
        sample_id: str | None,
        mode: str = "live",
        new_file: bool = False,
    ) -> str | None:
        """The saved image's path, or None when the policy, the budget or the disk says no."""
        now = self.clock()
        if not self.policy.wants(kind, label, now, mode, new_file):
            return None
        if self.write_failed:
            self.not_saved_low_space += 1
            return None
        low = self._low_space()
        if low is not None:
            self.not_saved_low_space += 1
            self.stopped_reason = low
            self._warn_once(
                "low",
                f"{low}: not saving images until space is free again; results are still stored",
            )
            return None
        if self.budget.over_budget_with_protected_only():
            self.not_saved_budget += 1
            self._warn_once(
                "budget",
                f"--max-disk-mb {self.settings.max_disk_mb:g} is taken by images of "
                "samples awaiting review: not saving images until they are reviewed; "
                "results are still stored",
            )
            return None
        try:
            path = self.writer.save(rgb, name)
        except StorageError as error:  # full or failing disk: rows matter more than images
            self.not_saved_low_space += 1
            self.stopped_reason = str(error)
            self._warn_once(
                "write", f"{error}; not saving images any more this run; results are still stored"
            )
            self.write_failed = True
            return None
        if self.stopped_reason is not None:
            log.info("saving images again (%s no longer holds)", self.stopped_reason)
            self.stopped_reason = None
            self._warned.discard("low")
        size = path.stat().st_size
        if self.budget.max_bytes is not None and size > self.budget.max_bytes:
            # Pruning would delete this very image and report it as an old one.
            path.unlink(missing_ok=True)
            self.not_saved_too_large += 1
            self._warn_once(
                "too large",
                f"--max-disk-mb {self.settings.max_disk_mb:g} is smaller than one image "
                f"({size / 1024:.0f} KB): no image is kept; results are still stored. "
                "Raise --max-disk-mb",
            )
            return None
        self.policy.saved(kind, label, now)
        self.budget.added(path, sample_id)
        self.budget.enforce()
        if not path.exists():  # the budget is all images awaiting review: this one had to go
            self.not_saved_budget += 1
            return None
        self.saved += 1
        return str(path)

    def summary(self) -> str:
        text = (
            f"saved {self.saved} image(s) ({self.settings.policy} policy), "
            f"{self.budget.total / MB:.1f} MB in {self.writer.directory}"
        )
        if self.budget.pruned:
            text += f"; pruned {self.budget.pruned} old image(s) ({self.budget.pruned_bytes / MB:.1f} MB)"
        if self.not_saved_low_space:
            text += (
                f"; {self.not_saved_low_space} frame(s) not saved for lack of disk space "
                f"({self.stopped_reason or 'space came back'})"
            )
        if self.not_saved_budget:
            text += f"; {self.not_saved_budget} frame(s) not saved: budget held by images awaiting review"
        if self.not_saved_too_large:
            text += (
                f"; {self.not_saved_too_large} frame(s) not saved: each image alone is larger "
                f"than --max-disk-mb {self.settings.max_disk_mb:g}"
            )
        return text


def open_saver(
    save_dir: Path,
    image_format: str,
    settings: SaveSettings,
    connection: sqlite3.Connection | None,
    clock: Callable[[], float] = time.time,
) -> FrameSaver | None:
    """The saver for --save-dir, or None (with one warning line) when the folder cannot take images:
    read-only, full or unwritable. The caller goes on storing rows."""
    try:
        writer = FrameWriter(save_dir, image_format)
        fd, probe = tempfile.mkstemp(dir=writer.directory, prefix=".tmp-probe-")
        os.close(fd)
        os.unlink(probe)
    except (StorageError, OSError) as error:
        reason = (
            str(error)
            if isinstance(error, StorageError)
            else f"{save_dir}: cannot write ({error.strerror or error})"
        )
        log.warning(
            "warning: --save-dir %s cannot take images (%s): results are stored without images",
            save_dir,
            reason.split(": ", 1)[-1],
        )
        return None
    saver = FrameSaver(writer, settings, connection, clock)
    low = saver._low_space()
    if low is not None:
        log.warning(
            "warning: --save-dir %s: %s: images are not saved until space is free; results are "
            "still stored",
            save_dir,
            low,
        )
        saver._warned.add("low")
    return saver
