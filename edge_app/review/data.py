"""What the review page, the report and the export read and write: samples, their frames, the
sample result (computed on read by `leukedge.edge_app.samples`) and append-only reviews.

Every function takes an open connection (`leukedge.edge_app.storage.connect`); the server opens
one per request, so it never holds a lock while `edge-app run` writes.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from leukedge.edge_app.samples import DEFAULT_RULE, LABEL, SampleResult, SampleRule
from leukedge.edge_app.storage import utc_now

AWAITING, CONFIRMED, OVERRIDDEN, REFERRED = "awaiting review", "confirmed", "overridden", "referred"
CONFIRM, OVERRIDE = "confirm", "override"
REFER_CHOICE = "refer"  # an override that withholds an answer: "not assessable, refer"
FRAME_FIELDS = (
    "id",
    "timestamp_utc",
    "sample_id",
    "decision",
    "label",
    "top_label",
    "confidence",
    "probabilities",
    "quality_ok",
    "quality_reason",
    "focus",
    "brightness",
    "contrast",
    "clipped",
    "model_file",
    "model_sha256",
    "model_variant",
    "model_verified",
    "app_version",
    "image_path",
    "ood_score",
    "ood_threshold",
    "decision_rule",
    "prediction_set",
    "frame_origin",
)
_RESULT_FIELDS = "id, sample_id, decision, label, confidence, probabilities"


class ReviewError(ValueError):
    """A review that cannot be stored (no reason, unknown sample, ...): the message says why."""


@dataclass
class SampleSummary:
    sample_id: str
    created_utc: str
    operator: str | None
    site: str | None
    notes: str | None
    result: SampleResult
    last_frame_id: int | None
    last_review: dict | None = None
    reviews: list[dict] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.last_review is not None:
            return CONFIRMED if self.last_review["action"] == CONFIRM else OVERRIDDEN
        return REFERRED if self.result.referred else AWAITING

    @property
    def final(self) -> dict:
        """What stands now: the last review's answer, else the machine's."""
        if self.last_review is not None:
            return json.loads(self.last_review["after"])
        return machine_summary(self.result)

    @property
    def new_frames_since_review(self) -> bool:
        return (
            self.last_review is not None
            and self.last_frame_id is not None
            and (self.last_review["last_frame_id"] or 0) < self.last_frame_id
        )

    def as_dict(self) -> dict:
        return {
            "sample_id": self.sample_id,
            "created_utc": self.created_utc,
            "operator": self.operator,
            "site": self.site,
            "notes": self.notes,
            "n_frames": self.result.n_frames,
            "decision": self.result.decision,
            "label": self.result.label,
            "confidence": self.result.confidence,
            "message": self.result.message,
            "status": self.status,
            "final": self.final,
            "result": self.result.as_dict(),
            "last_review": self.last_review,
            "new_frames_since_review": self.new_frames_since_review,
        }


def machine_summary(result: SampleResult) -> dict:
    """The part of a sample result a review records as "before"."""
    return {
        "decision": result.decision,
        "label": result.label,
        "confidence": None if result.confidence is None else round(result.confidence, 6),
        "message": result.message,
        "n_frames": result.n_frames,
        "n_fit": result.n_fit,
    }


# What waits for an expert: a sample never reviewed, or one that gained fields after its last
# review (the condition of `SampleSummary.new_frames_since_review`, in SQL so that the queue
# pages in the database, not in Python). Both subqueries use the (sample_id, id) indexes.
_TO_REVIEW_SQL = """(
  NOT EXISTS (SELECT 1 FROM reviews r WHERE r.sample_id = samples.sample_id)
  OR COALESCE((SELECT r.last_frame_id FROM reviews r WHERE r.sample_id = samples.sample_id
               ORDER BY r.id DESC LIMIT 1), 0)
     < COALESCE((SELECT MAX(x.id) FROM results x WHERE x.sample_id = samples.sample_id), 0)
)"""


def _where(to_review: bool, search: str | None) -> tuple[str, tuple]:
    """The WHERE clause (with its parameters) of the sample list's filters."""
    clauses, params = [], ()
    if to_review:
        clauses.append(_TO_REVIEW_SQL)
    if search:
        # a substring of the sample ID, case-insensitive; % and _ typed by the user are literal
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append("sample_id LIKE ? ESCAPE '\\'")
        params = (f"%{escaped}%",)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def count_samples(
    connection: sqlite3.Connection, to_review: bool = False, search: str | None = None
) -> int:
    """All samples, those waiting for a review (`to_review`), those whose ID contains `search`."""
    where, params = _where(to_review, search)
    return int(connection.execute(f"SELECT COUNT(*) FROM samples{where}", params).fetchone()[0])


class ResultCache:
    """Sample results by (sample, frame count, last frame id): frames are append-only and their
    answers can never change (a trigger forbids it), so an entry is valid while both match. Lets
    the list page recompute only the samples that gained fields."""

    def __init__(self, size: int = 50_000):
        self.size = size
        self._entries: dict[str, tuple[tuple[int, int], SampleResult]] = {}

    def get(self, sample_id: str, key: tuple[int, int]) -> SampleResult | None:
        entry = self._entries.get(sample_id)
        return entry[1] if entry is not None and entry[0] == key else None

    def put(self, sample_id: str, key: tuple[int, int], result: SampleResult) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()  # simple and bounded; the next page refills what it needs
        self._entries[sample_id] = (key, result)


def next_to_review(connection: sqlite3.Connection, after: str) -> str | None:
    """The newest sample other than `after` that waits for a review, or None."""
    row = connection.execute(
        f"SELECT sample_id FROM samples WHERE sample_id != ? AND {_TO_REVIEW_SQL} "
        "ORDER BY created_utc DESC, sample_id LIMIT 1",
        (after,),
    ).fetchone()
    return None if row is None else row[0]


def list_samples(
    connection: sqlite3.Connection,
    limit: int | None = None,
    offset: int = 0,
    rule: SampleRule = DEFAULT_RULE,
    cache: ResultCache | None = None,
    to_review: bool = False,
    search: str | None = None,
) -> list[SampleSummary]:
    """Samples, newest first, each with its computed result and last review; with `to_review`,
    only those never reviewed or with fields added since their last review; with `search`, only
    those whose ID contains it (any case)."""
    where, params = _where(to_review, search)
    query = f"SELECT * FROM samples{where} ORDER BY created_utc DESC, sample_id"
    if limit is not None:
        query += " LIMIT ? OFFSET ?"
        params = (*params, limit, offset)
    records = connection.execute(query, params).fetchall()
    if not records:
        return []
    ids = [record["sample_id"] for record in records]
    keys: dict[str, tuple[int, int]] = {}
    reviews: dict[str, dict] = {}
    for chunk in _chunks(ids, 500):  # SQLite's host parameter limit
        marks = ",".join("?" * len(chunk))
        for row in connection.execute(
            f"SELECT sample_id, COUNT(*), MAX(id) FROM results WHERE sample_id "
            f"IN ({marks}) GROUP BY sample_id",
            chunk,
        ):
            keys[row[0]] = (row[1], row[2])
        for row in connection.execute(
            f"SELECT * FROM reviews WHERE id IN (SELECT MAX(id) FROM reviews WHERE sample_id IN "
            f"({marks}) GROUP BY sample_id)",
            chunk,
        ):
            reviews[row["sample_id"]] = dict(row)
    results: dict[str, SampleResult] = {}
    for sample_id in ids:
        cached = cache.get(sample_id, keys.get(sample_id, (0, 0))) if cache is not None else None
        if cached is not None:
            results[sample_id] = cached
    missing = [sample_id for sample_id in ids if sample_id not in results]
    frames: dict[str, list[dict]] = {sample_id: [] for sample_id in missing}
    for chunk in _chunks(missing, 500):
        marks = ",".join("?" * len(chunk))
        for row in connection.execute(
            f"SELECT {_RESULT_FIELDS} FROM results WHERE sample_id IN ({marks}) ORDER BY id", chunk
        ):
            frames[row["sample_id"]].append(dict(row))
    for sample_id in missing:
        results[sample_id] = rule.combine(frames[sample_id])
        if cache is not None:
            # keyed by what was read, so frames added meanwhile invalidate it on the next page
            mine = frames[sample_id]
            cache.put(
                sample_id, (len(mine), mine[-1]["id"]) if mine else (0, 0), results[sample_id]
            )
    return [
        SampleSummary(
            record["sample_id"],
            record["created_utc"],
            record["operator"],
            record["site"],
            record["notes"],
            results[record["sample_id"]],
            keys.get(record["sample_id"], (0, None))[1],
            reviews.get(record["sample_id"]),
        )
        for record in records
    ]


def get_sample(
    connection: sqlite3.Connection, sample_id: str, rule: SampleRule = DEFAULT_RULE
) -> tuple[SampleSummary, list[dict]] | None:
    """(summary with every review, frames) of one sample; None if there is no such sample."""
    record = connection.execute(
        "SELECT * FROM samples WHERE sample_id = ?", (sample_id,)
    ).fetchone()
    if record is None:
        return None
    frames = sample_frames(connection, sample_id)
    reviews = sample_reviews(connection, sample_id)
    summary = SampleSummary(
        record["sample_id"],
        record["created_utc"],
        record["operator"],
        record["site"],
        record["notes"],
        rule.combine(frames),
        frames[-1]["id"] if frames else None,
        reviews[-1] if reviews else None,
        reviews,
    )
    return summary, frames


def sample_frames(connection: sqlite3.Connection, sample_id: str) -> list[dict]:
    columns = _existing(connection, FRAME_FIELDS)
    return [
        _decoded(dict(row))
        for row in connection.execute(
            f"SELECT {', '.join(columns)} FROM results WHERE sample_id = ? ORDER BY id",
            (sample_id,),
        )
    ]


def frames_page(
    connection: sqlite3.Connection, sample_id: str | None, limit: int, offset: int
) -> list[dict]:
    columns = ", ".join(_existing(connection, FRAME_FIELDS))
    if sample_id is None:
        rows = connection.execute(
            f"SELECT {columns} FROM results ORDER BY id LIMIT ? OFFSET ?", (limit, offset)
        )
    else:
        rows = connection.execute(
            f"SELECT {columns} FROM results WHERE sample_id = ? ORDER BY id LIMIT ? OFFSET ?",
            (sample_id, limit, offset),
        )
    return [_decoded(dict(row)) for row in rows]


def sample_reviews(connection: sqlite3.Connection, sample_id: str | None = None) -> list[dict]:
    if sample_id is None:
        rows = connection.execute("SELECT * FROM reviews ORDER BY id")
    else:
        rows = connection.execute(
            "SELECT * FROM reviews WHERE sample_id = ? ORDER BY id", (sample_id,)
        )
    return [dict(row) for row in rows]


def frame_image_path(connection: sqlite3.Connection, frame_id: int) -> str | None:
    row = connection.execute("SELECT image_path FROM results WHERE id = ?", (frame_id,)).fetchone()
    return None if row is None else row["image_path"]


def add_review(
    connection: sqlite3.Connection,
    sample_id: str,
    reviewer: str,
    action: str,
    reason: str,
    override_label: str | None = None,
    labels: list[str] | None = None,
    rule: SampleRule = DEFAULT_RULE,
) -> dict:
    """Append one review (never updates one). The machine result it saw is stored as "before"."""
    reason, reviewer = (reason or "").strip(), (reviewer or "").strip()
    if action not in (CONFIRM, OVERRIDE):
        raise ReviewError(f"unknown review action {action!r}: confirm or override")
    if not reason:
        raise ReviewError("a reason is required for every review")
    if not reviewer:
        raise ReviewError("the reviewer's name is required")
    connection.execute("BEGIN IMMEDIATE")  # the result and the review are read and written as one
    try:
        found = get_sample(connection, sample_id, rule)
        if found is None:
            raise ReviewError(f"no sample {sample_id!r}")
        summary, _frames = found
        before = machine_summary(summary.result)
        if action == CONFIRM:
            after = {**before, "by": reviewer}
        else:
            if override_label == REFER_CHOICE:
                after = {"decision": "uncertain", "label": None, "message": "refer (reviewer)"}
            elif override_label and override_label in (
                labels or summary.result.votes or [override_label]
            ):
                after = {"decision": LABEL, "label": override_label, "message": override_label}
            else:
                given = f", got {override_label!r}" if override_label else ", none was chosen"
                raise ReviewError(
                    f"override needs a label from {', '.join(labels or [])} or "
                    f"{REFER_CHOICE!r}{given}"
                )
            after["by"] = reviewer
        cursor = connection.execute(
            "INSERT INTO reviews (sample_id, reviewed_utc, reviewer, action, before, after, reason, "
            "n_frames, last_frame_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sample_id,
                utc_now(),
                reviewer,
                action,
                json.dumps(before),
                json.dumps(after),
                reason,
                summary.result.n_frames,
                summary.last_frame_id,
            ),
        )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return dict(
        connection.execute("SELECT * FROM reviews WHERE id = ?", (cursor.lastrowid,)).fetchone()
    )


def model_labels(connection: sqlite3.Connection) -> list[str]:
    """Class labels as the stored frames name them (from their probabilities)."""
    row = connection.execute(
        "SELECT probabilities FROM results WHERE probabilities IS NOT NULL ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return list(json.loads(row["probabilities"])) if row else []


def within(path: str | Path | None, folder: Path | None) -> Path | None:
    """`path` resolved, if it is a file inside `folder` (symlinks resolved); else None."""
    if not path or folder is None:
        return None
    try:
        resolved = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_file() or not resolved.is_relative_to(folder.resolve()):
        return None
    return resolved


def field_image(stored: str | None, save_dir: Path | None) -> Path | None:
    """A field's saved image under `save_dir`: at its stored path, or, for a database moved with
    its images (an `edge-app backup`, another computer), by its `<date>/<file>` name in the
    save folder's layout (`storage.FrameWriter`). Never a file outside `save_dir`."""
    found = within(stored, save_dir)
    if found is None and stored and save_dir is not None:
        moved = Path(stored)
        found = within(save_dir / moved.parent.name / moved.name, save_dir)
    return found


def _existing(connection: sqlite3.Connection, names: tuple[str, ...]) -> list[str]:
    present = {row["name"] for row in connection.execute("PRAGMA table_info(results)")}
    return [name for name in names if name in present]


def _decoded(row: dict) -> dict:
    for name in ("probabilities", "prediction_set"):
        if isinstance(row.get(name), str):
            try:
                row[name] = json.loads(row[name])
            except ValueError:
                pass
    return row


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]
