"""edge_app building blocks that need no model: quality gate, decisions, storage, sources."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from leukedge.edge_app.decision import LABEL, UNCERTAIN, DecisionRule, Smoother, decide
from leukedge.edge_app.imaging import load_rgb
from leukedge.edge_app.quality import assess
from leukedge.edge_app.settings import QualitySettings
from leukedge.edge_app.sources import SkippedFrame, SourceError, open_source
from leukedge.edge_app.sources.picamera import picamera2_to_rgb
from leukedge.edge_app.storage import (
    COLUMN_NAMES,
    FrameWriter,
    ResultStore,
    StorageError,
    export_csv,
)

FAKES = Path(__file__).parent / "fakes"


@pytest.fixture(scope="module")
def real_images(data_dir) -> list[Path]:
    return sorted((data_dir / "Original").rglob("*.jpg"))


@pytest.mark.slow
def test_every_real_image_passes_the_quality_gate(real_images):
    assert len(real_images) > 2000
    failures = []
    for path in real_images:
        quality = assess(load_rgb(path))
        if not quality.ok:
            failures.append((path.name, quality.reason))
    assert failures == []


def test_blurred_dark_bright_clipped_and_empty_frames_fail(real_images):
    rng = np.random.default_rng(0)
    sample = real_images[::60]
    for path in sample:
        rgb = load_rgb(path)
        blurred = cv2.GaussianBlur(rgb, (0, 0), 4)
        noisy_blur = np.clip(blurred + rng.normal(0, 3, rgb.shape), 0, 255).astype(np.uint8)
        assert "out of focus" in assess(noisy_blur).reason, path
        assert "too dark" in assess((rgb * 0.12).astype(np.uint8)).reason, path
        assert "too bright" in assess(np.full_like(rgb, 253)).reason
        assert assess(np.clip(rgb.astype(int) + 200, 0, 255).astype(np.uint8)).ok is False
    blank = np.clip(rng.normal(205, 4, (480, 640, 3)), 0, 255).astype(np.uint8)
    assert "empty field" in assess(blank).reason
    # Half the field blown out to white: clipped exposure.
    rgb = load_rgb(sample[0])
    rgb[: rgb.shape[0] * 3 // 4] = 255
    assert "clipped" in assess(rgb).reason


def test_quality_thresholds_are_configurable(real_images):
    rgb = load_rgb(real_images[0])
    strict = QualitySettings(focus_min=1e9)
    assert assess(rgb, strict).reason.startswith("out of focus")


def test_quality_metrics_do_not_depend_on_frame_resolution(real_images):
    rgb = load_rgb(real_images[5])
    big = cv2.resize(rgb, (960, 960), interpolation=cv2.INTER_CUBIC)
    small, large = assess(rgb), assess(big)
    assert large.ok and small.ok
    assert abs(large.brightness - small.brightness) < 2


def test_decisions_never_give_a_confident_label_below_threshold():
    labels = ["Benign", "Early Pre-B", "Pre-B", "Pro-B"]
    rule = DecisionRule.for_model(None, 0.8)
    confident = decide(np.array([0.05, 0.9, 0.03, 0.02]), labels, rule)
    assert (confident.kind, confident.label, confident.top_label) == (
        LABEL,
        "Early Pre-B",
        "Early Pre-B",
    )
    unsure = decide(np.array([0.1, 0.5, 0.3, 0.1]), labels, rule)
    assert unsure.kind == UNCERTAIN and unsure.label is None and unsure.top_label == "Early Pre-B"
    assert unsure.message.startswith("uncertain: refer for expert review")


def test_smoother_averages_the_last_frames():
    smoother = Smoother(3)
    for probs in ([1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]):
        out = smoother.update(np.array(probs))
    assert out.tolist() == [0.0, 1.0]
    assert Smoother(2).update(np.array([0.3, 0.7])).tolist() == pytest.approx([0.3, 0.7])
    with pytest.raises(ValueError):
        Smoother(0)


def _row(**extra) -> dict:
    row = {name: None for name in COLUMN_NAMES[1:]}
    row.update(
        timestamp_utc="2026-01-01T00:00:00Z",
        mode="live",
        source="s",
        decision="label",
        label="Pre-B",
        quality_ok=1,
        model_file="m.tflite",
        model_sha256="0" * 64,
        model_verified=1,
        runtime="ai-edge-litert",
        app_version="0.1.0",
        probabilities=json.dumps({"Pre-B": 0.9, "Pro-B": 0.1}),
    )
    row.update(extra)
    return row


def test_store_is_wal_owner_only_and_exports(tmp_path):
    db = tmp_path / "new" / "results.sqlite"
    store = ResultStore(db)
    for number in range(3):
        assert store.add(_row(sample_id=f"S{number}")) == number + 1
    store.close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    connection = sqlite3.connect(db)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("SELECT sample_id FROM results ORDER BY id").fetchall() == [
        ("S0",),
        ("S1",),
        ("S2",),
    ]
    connection.close()
    out = tmp_path / "out.csv"
    assert export_csv(db, out) == 3
    lines = out.read_text().splitlines()
    assert lines[0].endswith("p_Pre-B,p_Pro-B") and lines[1].endswith("0.9,0.1")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_unwritable_db_path_is_a_clear_error(tmp_path):
    with pytest.raises(StorageError, match="cannot write"):
        ResultStore("/proc/leukedge/results.sqlite")
    with pytest.raises(StorageError, match="is a folder"):
        ResultStore(tmp_path)
    with pytest.raises(StorageError, match="no such database"):
        export_csv(tmp_path / "missing.sqlite", tmp_path / "x.csv")


def test_frame_writer_is_atomic_and_owner_only(tmp_path, real_images):
    writer = FrameWriter(tmp_path / "frames", "png")
    rgb = load_rgb(real_images[0])
    path = writer.save(rgb, "S1-frame")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert np.array_equal(load_rgb(path), rgb)  # png is lossless and RGB order is kept
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    from leukedge.edge_app.files import SHARED_MODE, replacing, write_atomic

    target = tmp_path / "export.csv"
    write_atomic(target, b"first export\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # results are patient data
    with pytest.raises(OSError, match="disk full"), replacing(target) as out:
        out.write(b"half of the sec")
        raise OSError("disk full")
    assert target.read_bytes() == b"first export\n"  # the earlier file is whole
    assert [p.name for p in tmp_path.iterdir()] == ["export.csv"]  # no temp file left behind
    write_atomic(target, b"model", SHARED_MODE)
    assert target.read_bytes() == b"model" and stat.S_IMODE(target.stat().st_mode) == 0o644


def test_an_unwritable_output_folder_is_found_before_the_work(tmp_path):
    from leukedge.edge_app.files import cannot_write_in

    assert cannot_write_in(tmp_path / "new" / "run") is None  # made, with its parents
    assert (tmp_path / "new" / "run").is_dir() and not any((tmp_path / "new" / "run").iterdir())
    (tmp_path / "afile").write_text("x")
    assert "afile is a file, not a folder" in cannot_write_in(tmp_path / "afile" / "run")
    assert cannot_write_in("/proc/leukedge") is not None  # a system folder, even for root


def test_folder_source_skips_and_reports_corrupt_files(tmp_path, real_images):
    folder = tmp_path / "slides"
    folder.mkdir()
    for path in real_images[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "zz-truncated.jpg").write_bytes(real_images[3].read_bytes()[:2000])
    (folder / "zz-empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    source = open_source(str(folder))
    frames, skipped = [], []
    while True:
        try:
            frame = source.read()
        except SkippedFrame as error:
            skipped.append(str(error))
            continue
        if frame is None:
            break
        frames.append(frame)
    assert len(frames) == 3 and len(skipped) == 2
    assert np.array_equal(frames[0].rgb, load_rgb(real_images[0]))
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "nothing-here"))
    with pytest.raises(SourceError, match="matches no image"):
        open_source(str(tmp_path / "*.bmp"))


@pytest.mark.parametrize("fmt", ["RGB888", "BGR888", "XRGB8888", "XBGR8888", "YUV420"])
def test_picamera2_layouts_become_rgb(fmt, real_images, monkeypatch):
    monkeypatch.syspath_prepend(str(FAKES))
    sys.modules.pop("picamera2", None)
    import picamera2  # the fake: tests/fakes/picamera2

    rgb = cv2.resize(load_rgb(real_images[10]), (300, 240))  # 300 px rows pad to a 320 stride
    array = picamera2._to_format(rgb, fmt)
    if fmt == "YUV420":
        assert array.shape == (360, 320)  # (height * 3 / 2, stride): padded rows
    out = picamera2_to_rgb(array, fmt, (300, 240))
    assert out.shape == rgb.shape
    error = np.abs(out.astype(int) - rgb.astype(int)).mean()
    swapped = np.abs(out[:, :, ::-1].astype(int) - rgb.astype(int)).mean()
    assert error < (3.0 if fmt == "YUV420" else 0.01)
    assert swapped > 4 * max(error, 0.5)  # stain colour: red and blue differ, so a swap would show
    if fmt == "YUV420":  # ignoring the stride misplaces the chroma planes
        naive = cv2.cvtColor(np.ascontiguousarray(array[:, :300]), cv2.COLOR_YUV2RGB_I420)
        assert np.abs(naive.astype(int) - rgb.astype(int)).mean() > 4 * error
    sys.modules.pop("picamera2", None)


def test_open_source_names_what_to_do_without_picamera2(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails as on a machine without it
    with pytest.raises(SourceError, match="apt install python3-picamera2"):
        open_source("picamera2")


def test_private_permissions_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        store = ResultStore(tmp_path / "db" / "r.sqlite")
        store.add(_row())
        store.close()
    finally:
        os.umask(old)
    for path in (tmp_path / "db").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_spreadsheet_cells_never_start_a_formula():
    from leukedge.edge_app.storage import spreadsheet_cell

    for text in ("=1+1", "+44 20", "-north-", "@SUM(A1)", "\tx", "\rx"):
        assert spreadsheet_cell(text) == "'" + text
    for value in ("Pre-B", "S-0042", "", None, -3, 0.25, "it's = fine"):
        assert spreadsheet_cell(value) == value
