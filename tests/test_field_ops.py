"""Months unattended: smoothing per case, the save policy and disk budget, did-you-mean CLIs,
datasets with metadata folders, quiet TensorFlow output, the Pi check's environment.

Real parts: the released int8 model and real images from ../shared, SQLite, files, a real
tmpfs size limit (as root), the installed console scripts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO, WEIGHTS_DIR, assert_clean_error, run_cli
from leukedge.edge_app.app import FrameProcessor
from leukedge.edge_app.budget import (
    FrameSaver,
    ImageBudget,
    SavePolicy,
    SaveSettings,
    awaiting_review,
)
from leukedge.edge_app.imaging import load_rgb
from leukedge.edge_app.runtime import Classifier
from leukedge.edge_app.settings import DecisionSettings, QualitySettings, RunSettings
from leukedge.edge_app.sources import Frame
from leukedge.edge_app.storage import FrameWriter, ResultStore

MODEL = REPO / "models" / "model_int8.tflite"
CLASSES = ("Benign", "Early", "Pre", "Pro")


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(MODEL)


@pytest.fixture(scope="module")
def images(data_dir) -> dict[str, Path]:
    """One real image per class folder."""
    return {name: sorted((data_dir / "Original" / name).glob("*.jpg"))[0] for name in CLASSES}


@pytest.fixture(scope="module")
def slides(data_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    for name in CLASSES:
        for path in sorted((data_dir / "Original" / name).glob("*.jpg"))[:3]:
            shutil.copy(path, folder / path.name)
    return folder


def edge_app(*args, **kwargs) -> subprocess.CompletedProcess:
    return run_cli("edge-app", *args, check=False, timeout=300, **kwargs)


def rows(db: Path) -> list[dict]:
    connection = sqlite3.connect(db)
    connection.row_factory = sqlite3.Row
    result = [dict(row) for row in connection.execute("SELECT * FROM results ORDER BY id")]
    connection.close()
    return result


# -- smoothing stays inside one case -------------------------------------------------------------
def _processor(classifier, tmp_path, smoothing=3) -> FrameProcessor:
    store = ResultStore(tmp_path / "r.sqlite")
    return FrameProcessor(
        classifier,
        store,
        None,
        RunSettings(mode="live", headless=True),
        QualitySettings(),
        DecisionSettings(smoothing=smoothing),
        "test",
    )


def _alone(classifier, rgb) -> list[float]:
    return [round(float(p), 6) for p in classifier.classify(rgb)]


def test_smoothing_averages_within_one_case(classifier, images, tmp_path):
    """The control: same sample, same stream (not a new file): probabilities are averaged."""
    processor = _processor(classifier, tmp_path)
    first, second = load_rgb(images["Benign"]), load_rgb(images["Pro"])
    processor.process(Frame(first, "cam#1"), "S-1")
    _, decision, _ = processor.process(Frame(second, "cam#2"), "S-1")
    mean = (classifier.classify(first) + classifier.classify(second)) / 2
    assert list(decision.probabilities.values()) == pytest.approx(mean.tolist(), abs=1e-5)
    assert list(decision.probabilities.values()) != pytest.approx(
        _alone(classifier, second), abs=1e-3
    )


def test_smoothing_resets_on_a_new_sample_id(classifier, images, tmp_path):
    processor = _processor(classifier, tmp_path)
    processor.process(Frame(load_rgb(images["Benign"]), "cam#1"), "S-1")
    second = load_rgb(images["Pro"])
    _, decision, _ = processor.process(Frame(second, "cam#2"), "S-2")
    assert list(decision.probabilities.values()) == pytest.approx(
        _alone(classifier, second), abs=1e-5
    )


def test_smoothing_resets_after_an_unfit_frame(classifier, images, tmp_path):
    processor = _processor(classifier, tmp_path)
    processor.process(Frame(load_rgb(images["Benign"]), "cam#1"), "S-1")
    _, unfit_decision, quality = processor.process(
        Frame(np.zeros((224, 224, 3), np.uint8), "cam#2"), "S-1"
    )
    assert not quality.ok and unfit_decision.kind == "unfit"
    second = load_rgb(images["Pro"])
    _, decision, _ = processor.process(Frame(second, "cam#3"), "S-1")
    assert list(decision.probabilities.values()) == pytest.approx(
        _alone(classifier, second), abs=1e-5
    )


def test_smoothing_resets_on_every_new_file_of_a_file_source(classifier, images, tmp_path):
    from leukedge.edge_app.sources import open_source

    folder = tmp_path / "two"
    folder.mkdir()
    shutil.copy(images["Benign"], folder / "a.jpg")
    shutil.copy(images["Pro"], folder / "b.jpg")
    source = open_source(str(folder))
    frames = [source.read(), source.read()]
    assert all(frame.new_file for frame in frames)
    processor = _processor(classifier, tmp_path)
    results = [processor.process(frame, "S-1")[1] for frame in frames]
    for frame, decision in zip(frames, results):
        assert list(decision.probabilities.values()) == pytest.approx(
            _alone(classifier, frame.rgb), abs=1e-5
        )


def test_smoothing_resets_at_each_video_file(classifier, images, tmp_path):
    import cv2

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (224, 224))
    for _ in range(3):
        writer.write(cv2.imread(str(images["Pre"])))
    writer.release()
    from leukedge.edge_app.sources import open_source

    source = open_source(str(video))
    flags = [source.read().new_file for _ in range(3)]
    assert flags == [True, False, False]


# -- save policy and budget (units) --------------------------------------------------------------
def test_save_policy_keeps_answers_periodically_and_referrals_on_change():
    policy = SavePolicy("changes", every_s=10)
    saved = []
    stream = [
        (0, "label", "Pro-B"),
        (3, "label", "Pro-B"),
        (10, "label", "Pro-B"),
        (12, "uncertain", None),
        (21, "uncertain", None),
        (25, "uncertain", None),
        (31, "uncertain", None),
        (33, "unfit", None),
        (45, "label", "Pre-B"),
        (50, "unknown", None),
        (60, "unknown", None),
    ]
    for now, kind, label in stream:
        if policy.wants(kind, label, now):
            policy.saved(kind, label, now)
            saved.append(now)
    # 0 first; 10 periodic answer; 21 the first uncertain frame the interval allows (a change);
    # 31 not (same referral); unfit never; 45 answer; 60 the change to unknown, once due.
    assert saved == [0, 10, 21, 45, 60]
    assert SavePolicy("changes", 10).wants("uncertain", None, 0, mode="capture")
    assert SavePolicy("changes", 10).wants("unfit", None, 0, new_file=True)
    assert SavePolicy("all", 10).wants("unfit", None, 0)


def _reviews_db(path: Path, reviewed: list[str], samples: list[str]) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute(
        "CREATE TABLE results (id INTEGER PRIMARY KEY, sample_id TEXT, image_path TEXT)"
    )
    connection.execute("CREATE TABLE samples (sample_id TEXT PRIMARY KEY)")
    connection.execute(
        "CREATE TABLE reviews (id INTEGER PRIMARY KEY, sample_id TEXT, verdict TEXT)"
    )
    connection.executemany("INSERT INTO samples VALUES (?)", [(s,) for s in samples])
    connection.executemany(
        "INSERT INTO reviews (sample_id, verdict) VALUES (?, 'ok')", [(s,) for s in reviewed]
    )
    return connection


def test_awaiting_review_is_every_sample_without_a_review(tmp_path):
    bare = sqlite3.connect(tmp_path / "bare.sqlite")
    bare.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, sample_id TEXT, image_path TEXT)")
    bare.execute("INSERT INTO results (sample_id) VALUES ('S-1')")
    assert awaiting_review(bare) == set()  # no reviews table yet: nothing can await review
    connection = _reviews_db(tmp_path / "r.sqlite", reviewed=["S-1"], samples=["S-1", "S-2"])
    connection.execute("INSERT INTO results (sample_id) VALUES ('S-3')")
    assert awaiting_review(connection) == {"S-2", "S-3"}


def test_budget_prunes_oldest_first_but_never_images_awaiting_review(tmp_path, images):
    connection = _reviews_db(tmp_path / "r.sqlite", reviewed=["done"], samples=["done", "waiting"])
    writer = FrameWriter(tmp_path / "frames")
    rgb = load_rgb(images["Benign"])
    probe = writer.save(rgb, "probe")
    size = probe.stat().st_size
    probe.unlink()
    clock = [time.time()]
    saver = FrameSaver(
        writer,
        SaveSettings("all", 0, max_disk_mb=5.5 * size / 2**20, min_free_mb=0),
        connection,
        clock=lambda: clock[0],
    )
    paths = []
    for index in range(12):
        clock[0] += 1
        sample = "waiting" if index < 2 else "done"
        path = saver.save(rgb, f"f{index:02d}", "label", "Benign", sample)
        connection.execute(
            "INSERT INTO results (sample_id, image_path) VALUES (?, ?)", (sample, path)
        )
        paths.append(Path(path))
    alive = [path.exists() for path in paths]
    assert alive[:2] == [True, True]  # the oldest two await review: kept
    assert sum(alive) == 5 and alive[-3:] == [
        True,
        True,
        True,
    ]  # then the newest, within 5.5 images
    assert saver.budget.total <= 5.5 * size
    pruned = connection.execute(
        "SELECT image_path, reason FROM pruned_images ORDER BY id"
    ).fetchall()
    assert [Path(p) for p, _ in pruned] == paths[2:9] and {r for _, r in pruned} == {"max-disk-mb"}
    # age: everything older than a day goes, except what awaits review
    old = ImageBudget(
        writer.directory,
        connection,
        SaveSettings(keep_days=1, min_free_mb=0),
        clock=lambda: time.time() + 2 * 86400,
    )
    old.enforce()
    assert [path.exists() for path in paths] == [True, True] + [False] * 10


def test_a_budget_smaller_than_one_image_keeps_none_and_says_why(tmp_path, images, caplog):
    writer = FrameWriter(tmp_path / "frames")
    saver = FrameSaver(writer, SaveSettings("all", 0, max_disk_mb=0.001, min_free_mb=0), None)
    rgb = load_rgb(images["Benign"])
    with caplog.at_level("WARNING"):
        paths = [saver.save(rgb, f"f{i}", "label", "Benign", None) for i in range(3)]
    assert paths == [None] * 3 and not list(writer.directory.rglob("*.jpg"))
    assert saver.budget.pruned == 0 and saver.not_saved_budget == 0
    warnings = [
        r.getMessage() for r in caplog.records if "smaller than one image" in r.getMessage()
    ]
    assert len(warnings) == 1 and "--max-disk-mb 0.001" in warnings[0]  # said once, not per frame
    summary = saver.summary()
    assert "3 frame(s) not saved: each image alone is larger than --max-disk-mb 0.001" in summary
    assert "pruned" not in summary and "awaiting review" not in summary


# -- the app with a budget, a full disk and a read-only folder ----------------------------------
def _disk_usage(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_app_keeps_images_within_max_disk_mb_and_loses_no_row(slides, tmp_path):
    db, frames = tmp_path / "r.sqlite", tmp_path / "frames"
    result = edge_app(
        "run",
        "--model",
        MODEL,
        "--source",
        slides,
        "--loop",
        "--max-frames",
        "60",
        "--headless",
        "--db",
        db,
        "--save-dir",
        frames,
        "--max-disk-mb",
        "0.25",
        "--min-free-mb",
        "0",
    )
    assert result.returncode == 0, result.stderr
    stored = rows(db)
    assert len(stored) == len(result.stdout.splitlines()) == 60
    assert _disk_usage(frames) <= 0.25 * 2**20
    existing = [row for row in stored if row["image_path"] and Path(row["image_path"]).is_file()]
    assert 0 < len(existing) < 60 and existing == stored[-len(existing) :]  # the newest are kept
    pruned = sqlite3.connect(db).execute("SELECT COUNT(*) FROM pruned_images").fetchone()[0]
    assert pruned == 60 - len(existing)
    assert f"pruned {pruned} old image(s)" in result.stderr


def test_low_free_space_stops_saving_keeps_rows_and_warns_once(slides, tmp_path):
    free_mb = shutil.disk_usage(tmp_path).free / 2**20
    db, frames = tmp_path / "r.sqlite", tmp_path / "frames"
    result = edge_app(
        "run",
        "--model",
        MODEL,
        "--source",
        slides,
        "--headless",
        "--db",
        db,
        "--save-dir",
        frames,
        "--min-free-mb",
        f"{free_mb * 2:.0f}",
    )
    assert result.returncode == 0, result.stderr
    assert len(rows(db)) == 12 and all(row["image_path"] is None for row in rows(db))
    warned = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("edge-app: warning") and "MB free" in line
    ]
    assert len(warned) == 1  # one warning ...
    assert "12 frame(s) not saved for lack of disk space" in result.stderr  # ... and the summary


def test_budget_options_refuse_impossible_values(slides, tmp_path):
    for args, text in (
        (("--max-disk-mb", "0"), "--max-disk-mb 0: must be above 0"),
        (("--keep-days", "-2"), "--keep-days -2: must be above 0"),
    ):
        result = edge_app(
            "run",
            "--model",
            MODEL,
            "--source",
            slides,
            "--db",
            tmp_path / "r.sqlite",
            "--save-dir",
            tmp_path / "f",
            *args,
        )
        assert result.returncode == 2 and text in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r.sqlite").exists()
    no_dir = edge_app("run", "--source", slides, "--max-disk-mb", "10")
    assert no_dir.returncode == 2 and "add --save-dir" in no_dir.stderr


def test_unwritable_save_folder_at_start_stores_rows_without_images(slides, tmp_path):
    db = tmp_path / "r.sqlite"
    result = edge_app(
        "run",
        "--model",
        MODEL,
        "--source",
        slides,
        "--headless",
        "--db",
        db,
        "--save-dir",
        "/proc/leukedge-frames",
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "/proc/leukedge-frames" in line]
    assert len(warnings) == 2 and "cannot take images" in warnings[0]  # the warning and the summary
    assert len(rows(db)) == 12 and all(row["image_path"] is None for row in rows(db))
    refused = edge_app(
        "run",
        "--model",
        MODEL,
        "--source",
        slides,
        "--db",
        "/proc/leukedge/r.sqlite",
        "--save-dir",
        tmp_path / "frames",
    )
    assert_clean_error(refused, "cannot write")


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A real 1 MiB filesystem (tmpfs), unmounted after the test."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_budget_holds_on_a_small_real_filesystem(slides, tmp_path, small_tmpfs):
    db, frames = tmp_path / "r.sqlite", small_tmpfs / "frames"
    result = edge_app(
        "run",
        "--model",
        MODEL,
        "--source",
        slides,
        "--loop",
        "--max-frames",
        "80",
        "--headless",
        "--image-format",
        "png",
        "--db",
        db,
        "--save-dir",
        frames,
        "--max-disk-mb",
        "0.6",
        "--min-free-mb",
        "0",
    )
    assert result.returncode == 0, result.stderr
    assert len(rows(db)) == 80 and "disk full" not in result.stderr
    assert _disk_usage(frames) <= 0.6 * 2**20
    assert all(Path(row["image_path"]).is_file() for row in rows(db)[-2:])


def test_a_full_filesystem_stops_images_not_rows(slides, tmp_path, small_tmpfs):
    db, frames = tmp_path / "r.sqlite", small_tmpfs / "frames"
    result = edge_app(
        "run",
        "--model",
        MODEL,
        "--source",
        slides,
        "--loop",
        "--max-frames",
        "80",
        "--headless",
        "--image-format",
        "png",
        "--db",
        db,
        "--save-dir",
        frames,
        "--min-free-mb",
        "0",
    )
    assert result.returncode == 0, result.stderr
    stored = rows(db)
    assert len(stored) == len(result.stdout.splitlines()) == 80  # no row lost
    saved = [row for row in stored if row["image_path"]]
    assert 0 < len(saved) < 80 and all(Path(row["image_path"]).is_file() for row in saved)
    warned = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("edge-app: warning") and "disk full" in line
    ]
    assert (
        len(warned) == 1 and "not saved for lack of disk space" in result.stderr
    )  # warned once, summary


def test_read_only_filesystem_at_start(slides, tmp_path, small_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    db = tmp_path / "r.sqlite"
    result = edge_app(
        "run",
        "--model",
        MODEL,
        "--source",
        slides,
        "--headless",
        "--db",
        db,
        "--save-dir",
        small_tmpfs / "frames",
    )
    assert result.returncode == 0, result.stderr
    assert sum("cannot take images" in line for line in result.stderr.splitlines()) == 1
    assert len(rows(db)) == 12


def test_rate_limits_live_classification(slides, tmp_path):
    env = {"PYTHONPATH": str(REPO / "tests" / "fakes"), "FAKE_PICAMERA2_IMAGES": str(slides)}
    started = time.monotonic()
    result = edge_app(
        "run",
        "--model",
        MODEL,
        "--source",
        "picamera2",
        "--headless",
        "--db",
        tmp_path / "r.sqlite",
        "--rate",
        "4",
        "--max-frames",
        "9",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    stamps = [json.loads(line)["timestamp_utc"] for line in result.stdout.splitlines()]
    from datetime import datetime

    times = [datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in stamps]
    assert len(times) == 9 and times[-1] - times[0] >= 8 * 0.25 - 0.05
    assert time.monotonic() - started < 120


# -- did you mean --------------------------------------------------------------------------------
def test_mistyped_subcommands_get_a_suggestion(tmp_path):
    from leukedge.benchmarks.cli import main as bench_main
    from leukedge.edge_app.cli import main as app_main

    runner = CliRunner()
    typo = runner.invoke(bench_main, ["robustnes"])
    assert typo.exit_code == 2 and "Did you mean 'robustness'?" in typo.output
    assert "does not exist" not in typo.output
    assert "Did you mean 'run'?" in runner.invoke(app_main, ["rn"]).output
    assert "Did you mean 'export'?" in runner.invoke(app_main, ["exprt"]).output
    # An existing path with a command-like name is still a model path for the default `run`.
    (tmp_path / "robustnes").mkdir()
    os.chdir(tmp_path)
    try:
        as_path = runner.invoke(bench_main, ["robustnes", "--runs", "1"])
    finally:
        os.chdir(REPO)
    assert "Did you mean" not in as_path.output
    # A word nearer to a path here than to any command is a mistyped model path.
    (tmp_path / "models").mkdir()
    os.chdir(tmp_path)
    try:
        mistyped = runner.invoke(bench_main, ["modles"])
    finally:
        os.chdir(REPO)
    assert mistyped.exit_code == 2 and "Did you mean the path 'models'?" in mistyped.output
    convert = run_cli(
        "edge-convert", "x", "--out", tmp_path / "o", "--variant", "int8", check=False
    )
    assert (
        convert.returncode == 2
        and "Did you mean" in convert.stderr
        and "'--variants'" in convert.stderr
    )
    train = run_cli("edge-train", "--out", tmp_path / "o", "--weight", "none", check=False)
    assert train.returncode == 2 and "Did you mean" in train.stderr and "--weights" in train.stderr


# -- progress bars -------------------------------------------------------------------------------
def test_progress_bar_in_a_log_redraws_seldom_and_keeps_its_final_count():
    """Piped to a file, a bar redrawn ten times a second filled logs with one line of copies."""
    script = textwrap.dedent(
        """
        import time
        from leukedge.edge_app.clitools import progress_bar
        for _ in progress_bar(range(300), desc="calibrate int8", unit="img"):
            time.sleep(0.005)
        for _ in progress_bar(range(5), desc="hidden", unit="img", enabled=False):
            pass
        """
    )
    # Bytes: text mode would turn the bar's "\r" into newlines.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    redraws = [part for part in re.split(r"[\r\n]", stderr) if part.strip()]
    # About 1.5 s of work: the start and the end only (a terminal would get about 15).
    assert len(redraws) <= 3, redraws
    assert redraws[-1].startswith("calibrate int8: 100%") and "300/300" in redraws[-1]
    assert "hidden" not in stderr


# -- datasets as people have them ----------------------------------------------------------------
def test_metadata_and_unknown_folders_are_ignored_and_listed(data_dir, tmp_path):
    from leukedge.train import dataset

    root = tmp_path / "leukemia" / "Original"
    for name in ("Benign", "Pro"):
        (root / name).mkdir(parents=True)
        for image in sorted((data_dir / "Original" / name).glob("*.jpg"))[:3]:
            (root / name / image.name).symlink_to(image)
        (root / name / f"._{name}.jpg").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS resource fork
    (root / "__MACOSX" / "Benign").mkdir(parents=True)
    (root / "__MACOSX" / "Benign" / "._x.jpg").write_bytes(b"\0\5\26\7")
    (root / ".ipynb_checkpoints").mkdir()
    (root / "Benign" / ".DS_Store").mkdir()
    (root / "Erly").mkdir()
    (root / "Erly" / "a.jpg").symlink_to(sorted((data_dir / "Original" / "Early").glob("*.jpg"))[0])
    scan = dataset.scan(tmp_path / "leukemia")
    assert scan.labels == ["Benign", "Pro-B"] and scan.skipped == []
    assert scan.found_per_class == {"Benign": 3, "Pro-B": 3}
    text = dataset.summary(scan)
    for name in (
        "__MACOSX",
        ".ipynb_checkpoints",
        "Erly (not a known label; did you mean Early Pre-B?)",
    ):
        assert name in text


def test_a_dataset_of_unknown_folders_is_refused_with_a_suggestion(tmp_path):
    from leukedge.train import dataset

    (tmp_path / "Benine").mkdir()
    (tmp_path / "Cats").mkdir()
    with pytest.raises(
        dataset.DatasetError, match="Benine: not a known label; did you mean Benign"
    ):
        dataset.class_folders(tmp_path)


# -- quiet TensorFlow ----------------------------------------------------------------------------
def test_cpp_log_lines_are_filtered_and_other_stderr_passes():
    script = textwrap.dedent("""
        import os, sys, warnings
        from leukedge.train.quiet import quiet_tensorflow
        quiet_tensorflow(verbose=len(sys.argv) > 1)
        os.write(2, b"E0000 00:00:1733.123456  4242 grappler.cc:12] NodeDef mentions attribute x\\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
        os.write(2, b"F0000 00:00:1733.123456  4242 core.cc:1] a real fatal error\\n")
        print("progress 50%", end="\\r", file=sys.stderr, flush=True)
        print("python stderr line", file=sys.stderr)
    """)
    raw = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert b"progress 50%\r" in raw.stderr  # a progress bar's carriage return passes untouched
    quiet = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert quiet.returncode == 0, quiet.stderr
    assert "E0000" not in quiet.stderr and "absl::InitializeLog" not in quiet.stderr
    assert "a real fatal error" in quiet.stderr and "python stderr line" in quiet.stderr
    loud = subprocess.run(
        [sys.executable, "-c", script, "-v"], capture_output=True, text=True, timeout=60
    )
    assert "E0000" in loud.stderr


@pytest.mark.slow
def test_edge_train_prints_no_tensorflow_noise(data_dir, tmp_path):
    from conftest import TINY_TRAIN_ARGS

    result = run_cli(
        "edge-train",
        "--data",
        data_dir,
        "--out",
        tmp_path / "run",
        *TINY_TRAIN_ARGS,
        env={"TF_CPP_MIN_LOG_LEVEL": ""},
    )
    output = result.stdout + result.stderr
    for noise in ("E0000", "W0000", "I0000", "UserWarning", "absl::InitializeLog"):
        assert noise not in output, output[-3000:]
    assert (
        "test accuracy" in result.stdout and "decode images" in result.stderr
    )  # summary and bar stay
    card = (
        tmp_path / "run" / "model_card.md"
    ).read_text()  # provenance without this machine's folders
    for folder in (
        tmp_path,
        data_dir.resolve(),
    ):  # only as a relative path (../../tmp/...), never absolute
        assert not re.search(r"(?<![\w.])" + re.escape(str(folder)), card), card
    assert "edge-train --data " in card


# -- ImageNet weights lookup ---------------------------------------------------------------------
def test_imagenet_weights_are_found_in_order(tmp_path, monkeypatch):
    from leukedge.train import model

    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    said: list[str] = []
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras"))
    monkeypatch.delenv("LEUKEDGE_WEIGHTS", raising=False)
    assert model.imagenet_weights_file(0.35, said.append) == model.SHARED_WEIGHTS / name
    assert WEIGHTS_DIR.resolve() == model.SHARED_WEIGHTS and "../shared/weights" in said[-1]
    elsewhere = tmp_path / "weights"
    elsewhere.mkdir()
    (elsewhere / name).symlink_to(WEIGHTS_DIR / name)
    monkeypatch.setenv("LEUKEDGE_WEIGHTS", str(elsewhere))
    assert (
        model.imagenet_weights_file(0.35, said.append) == elsewhere / name
        and "$LEUKEDGE_WEIGHTS" in said[-1]
    )
    monkeypatch.setenv("LEUKEDGE_WEIGHTS", str(elsewhere / name))
    assert model.imagenet_weights_file(0.35, said.append) == elsewhere / name
    cache = tmp_path / "keras" / "models"
    cache.mkdir(parents=True)
    (cache / name).symlink_to(WEIGHTS_DIR / name)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert (
        model.imagenet_weights_file(0.35, said.append) == cache / name and "Keras cache" in said[-1]
    )


@pytest.mark.slow
def test_quickstart_completes_with_an_empty_keras_cache(tmp_path):
    env = {
        "QUICK": "1",
        "KERAS_HOME": str(tmp_path / "keras"),
        "RUN_DIR": str(tmp_path / "run"),
        "LEUKEDGE_VENV": sys.prefix,
    }
    env.pop("LEUKEDGE_WEIGHTS", None)
    result = subprocess.run(
        [str(REPO / "scripts" / "quickstart")],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**{k: v for k, v in os.environ.items() if k != "LEUKEDGE_WEIGHTS"}, **env},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "from ../shared/weights beside the checkout" in result.stderr
    # 15 validation images cannot support a retention chosen under shifts: the step says so.
    assert "3/5 OOD retention: skipped for the smoke model" in result.stderr
    assert not (tmp_path / "run" / "ood_retention.json").exists()
    assert not list((tmp_path / "keras").rglob("*.h5"))  # nothing downloaded
    for produced in ("model_card.md", "tflite/model_int8.tflite", "results.csv", "bench.md"):
        assert (tmp_path / "run" / produced).is_file()


# -- the Pi check finds the project's environment ------------------------------------------------
def _check_copy(tmp_path) -> Path:
    repo = tmp_path / "checkout"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "pi-emulation-check", repo / "scripts")
    shutil.copytree(REPO / "scripts" / "pi_emulation", repo / "scripts" / "pi_emulation")
    shutil.copy(REPO / "pyproject.toml", repo)
    return repo


def test_pi_emulation_check_without_an_environment_says_how_to_make_one(tmp_path):
    bare = Path(sys.base_prefix) / "bin" / "python3"
    assert (
        subprocess.run([bare, "-c", "import cv2"], capture_output=True).returncode != 0
    )  # no deps there
    repo = _check_copy(tmp_path)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LEUKEDGE_VENV", "VIRTUAL_ENV", "PYTHONPATH")
    }
    result = subprocess.run(
        [bare, repo / "scripts" / "pi-emulation-check", "--no-install-qemu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert "no project environment found" in result.stderr and "scripts/setup-env" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # With $LEUKEDGE_VENV pointing at an environment that has the project, it gets past that
    # (and stops at the bad --runtime given here, before any download).
    found = subprocess.run(
        [bare, repo / "scripts" / "pi-emulation-check", "--runtime", "no-such-runtime"],
        capture_output=True,
        text=True,
        env={**env, "LEUKEDGE_VENV": sys.prefix},
        timeout=300,
    )
    assert "no project environment" not in found.stderr and "Traceback" not in found.stderr
    assert found.returncode == 2 and "no-such-runtime" in found.stderr


def test_unattended_benchmark_loses_no_frame(tmp_path):
    out = tmp_path / "u.json"
    result = run_cli(
        "edge-bench",
        "unattended",
        "--frames",
        "120",
        "--chunk",
        "40",
        "--max-disk-mb",
        "0.2",
        "--save-every",
        "2",
        "--images",
        REPO.parent / "shared" / "data" / "all-leukemia" / "Original" / "Pro",
        "--json",
        out,
        "--work-dir",
        tmp_path / "work",
    )
    report = json.loads(out.read_text())
    assert (
        report["frames"] == report["rows"] == report["json_lines"] == 120
        and report["frames_lost"] == 0
    )
    assert [c["frames"] for c in report["chunks"]] == [40, 80, 120]
    assert all(c["images_mb"] <= 0.2 for c in report["chunks"])
    assert report["chunks"][-1]["images_pruned"] > 0 and "frames lost: 0" in result.stdout
    bad = run_cli("edge-bench", "unattended", "--max-disk-mb", "0", check=False)
    assert bad.returncode == 2 and "--max-disk-mb 0" in bad.stderr


@pytest.mark.slow
def test_manifest_names_the_dataset_relative_to_itself(
    converted_dir, data_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv(
        "LEUKEDGE_DATA", str(tmp_path / "elsewhere")
    )  # the fallback must not be what finds it
    manifest = json.loads((converted_dir / "manifest.json").read_text())
    assert not Path(manifest["data_dir"]).is_absolute()
    assert (converted_dir / manifest["data_dir"]).resolve() == data_dir.resolve()
    from leukedge.benchmarks.evaluation import resolve_eval_set
    from leukedge.benchmarks.models import discover_models

    eval_set = resolve_eval_set(
        None, discover_models((converted_dir,))
    )  # found through the relative path
    assert eval_set.data_root.resolve() == data_dir.resolve() and all(
        p.is_file() for p in eval_set.paths()
    )
