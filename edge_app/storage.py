"""Results that are never lost: SQLite in WAL mode, frames written atomically, owner-only files.

Each result is committed on its own, so a crash, a SIGKILL or a full disk loses at most the
frame in flight. Files and folders are created 0o600 / 0o700: frames may be patient data.

The schema has a version (`PRAGMA user_version`) and ordered migrations (`MIGRATIONS`): a
database written by an older release is upgraded in one transaction when it is opened (every
row kept); a database written by a newer release is refused. Version 1 is the first release's
`results` table (one row per frame); version 2 adds samples, append-only reviews and the trust
columns of a frame (see docs/review.md); version 3 records the OOD threshold a frame was judged
by, so a reviewer can read its OOD score against it. The sample result is not stored: it is
computed on read from the sample's frames by `leukedge.edge_app.samples`, so it can never
disagree with them; a review stores the result it saw ("before") next to the reviewer's
("after").
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from leukedge.edge_app.files import write_atomic

# Version 1, frozen: exactly what the first release created. Never edit; add a migration instead.
V1_RESULTS_SQL = """CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY AUTOINCREMENT, \
timestamp_utc TEXT NOT NULL, sample_id TEXT, mode TEXT NOT NULL, source TEXT NOT NULL, \
frame_origin TEXT, decision TEXT NOT NULL, label TEXT, top_label TEXT, confidence REAL, \
probabilities TEXT, quality_ok INTEGER NOT NULL, quality_reason TEXT, focus REAL, brightness REAL, \
contrast REAL, clipped REAL, model_file TEXT NOT NULL, model_sha256 TEXT NOT NULL, \
model_variant TEXT, model_verified INTEGER NOT NULL, runtime TEXT NOT NULL, \
app_version TEXT NOT NULL, image_path TEXT)"""

_APPEND_ONLY = "SELECT RAISE(ABORT, 'reviews are append-only: add a new review instead')"
V2_SQL = (
    # Trust fields of a frame, filled when the model carries them (`edge_app.decision`).
    "ALTER TABLE results ADD COLUMN ood_score REAL",
    "ALTER TABLE results ADD COLUMN decision_rule TEXT",
    "ALTER TABLE results ADD COLUMN prediction_set TEXT",
    "CREATE INDEX IF NOT EXISTS results_by_sample ON results (sample_id, id)",
    """CREATE TABLE samples (sample_id TEXT PRIMARY KEY, created_utc TEXT NOT NULL,
       operator TEXT, site TEXT, notes TEXT)""",
    # Samples that version 1 knew only as a column of their frames become records.
    """INSERT INTO samples (sample_id, created_utc) SELECT sample_id, MIN(timestamp_utc)
       FROM results WHERE sample_id IS NOT NULL GROUP BY sample_id""",
    """CREATE TABLE reviews (id INTEGER PRIMARY KEY AUTOINCREMENT,
       sample_id TEXT NOT NULL REFERENCES samples (sample_id),
       reviewed_utc TEXT NOT NULL, reviewer TEXT NOT NULL,
       action TEXT NOT NULL CHECK (action IN ('confirm', 'override')),
       before TEXT NOT NULL, after TEXT NOT NULL,
       reason TEXT NOT NULL CHECK (length(trim(reason)) > 0),
       n_frames INTEGER NOT NULL, last_frame_id INTEGER)""",
    "CREATE INDEX reviews_by_sample ON reviews (sample_id, id)",
    f"CREATE TRIGGER reviews_no_update BEFORE UPDATE ON reviews BEGIN {_APPEND_ONLY}; END",
    f"CREATE TRIGGER reviews_no_delete BEFORE DELETE ON reviews BEGIN {_APPEND_ONLY}; END",
    # A machine result is never overwritten (deleting a frame, e.g. by a retention job, stays possible).
    """CREATE TRIGGER results_keep_answers BEFORE UPDATE OF decision, label, top_label, confidence,
       probabilities, ood_score, decision_rule, prediction_set ON results
       BEGIN SELECT RAISE(ABORT, 'a stored machine result is never changed'); END""",
)
_KEEP_ANSWERS = """CREATE TRIGGER results_keep_answers BEFORE UPDATE OF decision, label,
   top_label, confidence, probabilities, ood_score, ood_threshold, decision_rule, prediction_set
   ON results BEGIN SELECT RAISE(ABORT, 'a stored machine result is never changed'); END"""
V3_SQL = (
    # The threshold of the model's OOD rule (NULL: no OOD rule, and for rows stored before).
    "ALTER TABLE results ADD COLUMN ood_threshold REAL",
    "DROP TRIGGER results_keep_answers",
    _KEEP_ANSWERS,
)
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (V1_RESULTS_SQL,)),
    (2, V2_SQL),
    (3, V3_SQL),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
SQLITE_MAGIC = b"SQLite format 3\x00"

COLUMNS = (
    ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("timestamp_utc", "TEXT NOT NULL"),
    ("sample_id", "TEXT"),
    ("mode", "TEXT NOT NULL"),
    ("source", "TEXT NOT NULL"),
    ("frame_origin", "TEXT"),
    ("decision", "TEXT NOT NULL"),  # label / uncertain / unknown / unfit
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
    (
        "ood_score",
        "REAL",
    ),  # version 2: larger is less like the training images; None: no OOD output
    ("decision_rule", "TEXT"),  # version 2: which rule decided (`edge_app.decision`)
    ("prediction_set", "TEXT"),  # version 2: JSON list of labels (conformal set)
    ("ood_threshold", "REAL"),  # version 3: above it the frame is unknown; None: no OOD rule
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
JSON_COLUMNS = ("probabilities", "prediction_set")
SAMPLE_FIELDS = ("operator", "site", "notes")


class StorageError(OSError):
    """The database or frame folder cannot be written; the message says which and why."""


class SchemaError(StorageError):
    """The file is not a LeukEdge database, or one written by a newer LeukEdge."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sample_id_problem(sample_id: str) -> str | None:
    """Why `sample_id` cannot name a sample, or None. The review page puts the ID in its URLs
    (`/samples/<id>`): a browser resolves `.` and `..` segments and Werkzeug merges `//`, so such
    an ID would open another page or none; control characters do not print on a report."""
    if not sample_id.strip():
        return "is empty: give the slide's ID, or leave the option out"
    if sample_id != sample_id.strip():
        return f"{sample_id!r} starts or ends with a space: give the ID without it"
    if any(not character.isprintable() for character in sample_id):
        return f"{sample_id!r} holds a control character: type the ID again"
    if any(segment in ("", ".", "..") for segment in sample_id.split("/")):
        return (
            f"{sample_id!r}: '/' may only separate parts of the ID (no leading, trailing or "
            "double '/', no '.' or '..' parts)"
        )
    if len(sample_id) > 120:
        return f"is {len(sample_id)} characters long: at most 120"
    return None


def explain_write_error(path: Path, error: BaseException) -> str:
    text = str(error)
    if "full" in text.lower() or getattr(error, "errno", None) in (
        errno.ENOSPC,
        errno.EFBIG,
        errno.EDQUOT,
    ):
        return f"{path}: disk full ({text}): free space; results stored so far are intact"
    if (
        "disk i/o error" in text.lower()
    ):  # SQLite's word for a write the OS refused (often a full disk)
        return (
            f"{path}: disk I/O error (disk full or failing storage?): free space or check the "
            "SD card; results stored so far are intact"
        )
    return f"{path}: cannot write ({text}): check the path exists and is writable"


def make_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(path, 0o700)
    except OSError:  # a folder owned by someone else: writing into it decides
        pass


def check_database_file(path: Path) -> None:
    """Refuse, with a message naming the file, anything that is not an SQLite database."""
    if path.is_dir():
        raise StorageError(f"{path}: is a folder, expected a database file path")
    if not path.is_file():
        raise StorageError(f"{path}: no such database (written by `edge-app run --db {path.name}`)")
    try:
        with path.open("rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except OSError as error:
        raise StorageError(f"{path}: cannot read ({error})") from None
    if head and head != SQLITE_MAGIC:
        raise SchemaError(
            f"{path}: not an SQLite database: give the --db file written by edge-app run"
        )


def schema_version(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def check_schema(connection: sqlite3.Connection, path: Path) -> int:
    """The database's schema version; SchemaError if it is newer than this app or not ours."""
    try:
        version = schema_version(connection)
        tables = {
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
    except sqlite3.DatabaseError as error:
        raise SchemaError(f"{path}: not a LeukEdge results database ({error})") from None
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{path}: written by a newer LeukEdge (database schema {version}, this "
            f"app reads up to {SCHEMA_VERSION}): update LeukEdge; the file is untouched"
        )
    if version == 0 and tables - {"results"}:
        raise SchemaError(
            f"{path}: not a LeukEdge results database (tables "
            f"{', '.join(sorted(tables))}): give the --db file written by edge-app run"
        )
    return version


def migrate(connection: sqlite3.Connection, path: Path) -> int:
    """Apply every migration newer than the database, all in one transaction; the new version.

    Either the whole upgrade lands or none of it does (SQLite DDL is transactional), so a crash
    or a full disk mid-way leaves the old, readable database.
    """
    version = check_schema(connection, path)
    if version == SCHEMA_VERSION:
        return version
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = check_schema(connection, path)  # another process may have upgraded meanwhile
        for target, statements in MIGRATIONS:
            if target <= version:
                continue
            for statement in statements:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version={target}")
            version = target
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return version


def connect(
    path: str | Path,
    *,
    create: bool = False,
    upgrade: bool = True,
    read_only: bool = False,
    synchronous: str = "NORMAL",
) -> sqlite3.Connection:
    """A connection to a LeukEdge database, upgraded to this schema (unless `upgrade` is False).

    WAL mode with a busy timeout, so the review server's short read and write transactions and
    `edge-app run`'s one-row commits never fail with "database is locked". `read_only` sets
    `query_only`: nothing can be written through this connection.
    """
    path = Path(path)
    try:
        if create:
            if path.is_dir():
                raise StorageError(f"{path}: is a folder, expected a database file path")
            if not path.parent.exists():
                make_private_dir(path.parent)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        check_database_file(path)
        connection = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=10
        )
        connection.execute("PRAGMA busy_timeout=10000")
        if create or not read_only:
            connection.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a committed row survives a crash or kill of the app; only a power cut
            # may lose the last commits. --db-sync full trades speed for power-cut safety.
            connection.execute(f"PRAGMA synchronous={synchronous}")
        if upgrade and not read_only:
            migrate(connection, path)
        else:
            version = check_schema(connection, path)
            if upgrade and version < SCHEMA_VERSION:
                raise SchemaError(
                    f"{path}: database schema {version} needs an upgrade to "
                    f"{SCHEMA_VERSION}: open it once without --read-only"
                )
        if read_only:
            connection.execute("PRAGMA query_only=ON")
        connection.row_factory = sqlite3.Row
    except StorageError:
        raise
    except (OSError, sqlite3.Error) as error:
        raise StorageError(explain_write_error(path, error)) from None
    return connection


class ResultStore:
    """Append-only results table; `add()` commits each row and files it under its sample.

    `operator`, `site` and `notes` are sample fields: every sample this store sees gets a record
    (created on its first frame) carrying them.
    """

    def __init__(
        self,
        db_path: str | Path,
        synchronous: str = "NORMAL",
        *,
        operator: str | None = None,
        site: str | None = None,
        notes: str | None = None,
    ):
        self.path = Path(db_path)
        self.connection = connect(self.path, create=True, synchronous=synchronous)
        self.connection.row_factory = None
        self.sample_fields = {"operator": operator, "site": site, "notes": notes}
        self._known_samples: set[str] = set()
        self._restrict_sidecars()
        self._insert = (
            f"INSERT INTO results ({', '.join(COLUMN_NAMES[1:])}) "
            f"VALUES ({', '.join('?' * (len(COLUMN_NAMES) - 1))})"
        )

    def ensure_sample(self, sample_id: str, **fields: str | None) -> None:
        """Create the sample record if new; set the given non-empty fields (operator, site, notes)."""
        given = {
            key: value
            for key, value in {**self.sample_fields, **fields}.items()
            if key in SAMPLE_FIELDS and value
        }
        try:
            self.connection.execute(
                "INSERT OR IGNORE INTO samples (sample_id, created_utc) VALUES (?, ?)",
                (sample_id, utc_now()),
            )
            if given:
                self.connection.execute(
                    f"UPDATE samples SET {', '.join(f'{key} = ?' for key in given)} WHERE sample_id = ?",
                    (*given.values(), sample_id),
                )
        except sqlite3.Error as error:
            raise StorageError(explain_write_error(self.path, error)) from None
        self._known_samples.add(sample_id)

    def _restrict_sidecars(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            sidecar = Path(f"{self.path}{suffix}")
            if sidecar.exists():
                try:
                    os.chmod(sidecar, 0o600)
                except OSError:
                    pass

    def add(self, row: dict) -> int:
        sample_id = row.get("sample_id")
        if sample_id and sample_id not in self._known_samples:
            self.ensure_sample(sample_id)
        values = [_stored(name, row.get(name)) for name in COLUMN_NAMES[1:]]
        try:
            cursor = self.connection.execute(self._insert, values)
        except sqlite3.Error as error:
            raise StorageError(explain_write_error(self.path, error)) from None
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


def _stored(name: str, value):
    """JSON columns accept either JSON text or the Python list/dict."""
    if name in JSON_COLUMNS and value is not None and not isinstance(value, str):
        return json.dumps(value)
    return value


@dataclass
class FrameWriter:
    """Saves frames as <dir>/<date>/<id>.<ext>, owner-only and atomically (`files.write_atomic`)."""

    directory: Path
    image_format: str = "jpg"

    def __post_init__(self) -> None:
        self.directory = Path(self.directory).resolve()
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image format must be jpg or png, got {self.image_format!r}")
        try:
            make_private_dir(self.directory)
        except OSError as error:
            raise StorageError(explain_write_error(self.directory, error)) from None

    def save(self, rgb: np.ndarray, name: str) -> Path:
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        folder = self.directory / day
        target = folder / f"{name}.{self.image_format}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if self.image_format == "jpg" else []
        try:
            make_private_dir(folder)
            ok, encoded = cv2.imencode(
                f".{self.image_format}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params
            )
            if not ok:
                raise OSError(f"could not encode {self.image_format}")
            write_atomic(target, encoded.tobytes())
        except OSError as error:
            raise StorageError(explain_write_error(target, error)) from None
        return target


# A text cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets
# ("CSV injection"): free text typed by an operator or reviewer must not run when a clinic opens
# an export.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value):
    """`value` for a CSV cell: text that a spreadsheet would evaluate gets a leading apostrophe
    (OWASP's advice); numbers and other text pass unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def export_csv(db_path: str | Path, csv_path: str | Path) -> int:
    """Write every stored result to CSV (one column per probability); returns the row count."""
    db_path, csv_path = Path(db_path), Path(csv_path)
    connection = connect(db_path, read_only=True, upgrade=False)  # exports any version as it is
    try:
        rows = connection.execute("SELECT * FROM results ORDER BY id").fetchall()
    except sqlite3.Error as error:
        raise StorageError(f"{db_path}: not a LeukEdge results database ({error})") from None
    finally:
        connection.close()
    names = [name for name in COLUMN_NAMES if rows and name in rows[0].keys()]  # noqa: SIM118 - a Row's `in` tests values or list(COLUMN_NAMES)
    labels: list[str] = []
    for row in rows:
        for label in json.loads(row["probabilities"] or "{}"):
            if label not in labels:
                labels.append(label)
    header = [name for name in names if name != "probabilities"] + [
        f"p_{label}" for label in labels
    ]
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    for row in rows:
        probabilities = json.loads(row["probabilities"] or "{}")
        writer.writerow(
            [spreadsheet_cell(row[name]) for name in names if name != "probabilities"]
            + [probabilities.get(label, "") for label in labels]
        )
    try:  # an earlier export of that name stays whole if this one fails
        write_atomic(csv_path, text.getvalue().encode())
    except OSError as error:
        raise StorageError(explain_write_error(csv_path, error)) from None
    return len(rows)
