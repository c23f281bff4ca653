"""`edge-app run/export` end to end: real model (edge-convert output), real images, real SQLite.

The Pi camera is the fake in tests/fakes/picamera2 (documented API, real dataset images).
Set LEUKEDGE_TEST_CONVERTED to an existing edge-convert folder to skip building one while iterating.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import BIN, run_cli
from leukedge.edge_app import manifest as manifests
from leukedge.edge_app.imaging import load_rgb
from leukedge.edge_app.runtime import Classifier

FAKES = Path(__file__).parent / "fakes"
CLASSES = ("Benign", "Early", "Pre", "Pro")


@pytest.fixture(scope="module")
def models(request) -> Path:
    reuse = os.environ.get("LEUKEDGE_TEST_CONVERTED")
    return Path(reuse) if reuse else request.getfixturevalue("converted_dir")


@pytest.fixture(scope="module")
def model(models) -> Path:
    return models / "model_int8.tflite"


@pytest.fixture(scope="module")
def slides(data_dir, tmp_path_factory) -> Path:
    """Two real images per class in one folder."""
    folder = tmp_path_factory.mktemp("slides")
    for name in CLASSES:
        for path in sorted((data_dir / "Original" / name).glob("*.jpg"))[:2]:
            shutil.copy(path, folder / path.name)
    return folder


def rows(db: Path) -> list[dict]:
    connection = sqlite3.connect(db)
    connection.row_factory = sqlite3.Row
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    result = [dict(row) for row in connection.execute("SELECT * FROM results ORDER BY id")]
    connection.close()
    return result


def json_lines(stdout: str) -> list[dict]:
    lines = stdout.splitlines()
    return [json.loads(line) for line in lines]  # every stdout line must be one JSON object


def edge_app(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return run_cli("edge-app", *args, check=False, env=env, timeout=180, **kwargs)


def fake_camera_env(images: Path, **extra) -> dict:
    env = {"PYTHONPATH": str(FAKES), "FAKE_PICAMERA2_IMAGES": str(images)}
    env.update({key: str(value) for key, value in extra.items()})
    return env


def assert_clean_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and text in error_lines[0], result.stderr


def test_folder_source_stores_every_result(model, slides, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(slides, folder)
    (folder / "broken.jpg").write_bytes(
        (slides / sorted(os.listdir(slides))[0]).read_bytes()[:1500]
    )
    (folder / "empty.png").write_bytes(b"")
    db, frames = tmp_path / "results.sqlite", tmp_path / "frames"
    result = edge_app(
        "run",
        "--model",
        model,
        "--source",
        folder,
        "--headless",
        "--db",
        db,
        "--save-dir",
        frames,
        "--sample-id",
        "S-001",
    )
    assert result.returncode == 0, result.stderr
    emitted = json_lines(result.stdout)
    stored = rows(db)
    assert len(emitted) == len(stored) == 8
    assert "skipped 2 unreadable" in result.stderr
    assert "not a diagnostic device" in result.stderr
    manifest = manifests.read(model.parent)
    classifier = Classifier(model)
    for line, row in zip(emitted, stored):
        assert line["id"] == row["id"] and line["decision"] == row["decision"]
        assert row["sample_id"] == "S-001" and row["mode"] == "live"
        assert row["model_sha256"] == manifest.variants["int8"].sha256
        assert row["model_variant"] == "int8" and row["model_verified"] == 1
        assert row["app_version"] and row["runtime"].startswith(
            ("ai-edge-litert", "tflite-runtime")
        )
        assert row["quality_ok"] == 1 and row["focus"] > 0
        probabilities = json.loads(row["probabilities"])
        assert list(probabilities) == classifier.labels
        expected = classifier.classify(load_rgb(row["frame_origin"]))
        assert np.allclose(list(probabilities.values()), expected, atol=1e-5)
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=0.02)
        top = classifier.labels[int(np.argmax(expected))]
        assert row["top_label"] == top
        # The converted model carries trust parameters: its own rule decides (docs/trust.md).
        line = next(line for line in emitted if line["id"] == row["id"])
        unknown = classifier.trust.ood.is_unknown(line["ood_score"])
        one_label = classifier.trust.conformal.prediction_set(expected) == [
            int(np.argmax(expected))
        ]
        if row["decision"] == "label":
            assert row["label"] == top and one_label and not unknown
        elif row["decision"] == "unknown":
            assert unknown and row["label"] is None
        else:
            assert (
                row["decision"] == "uncertain"
                and row["label"] is None
                and not one_label
                and not unknown
            )
        saved = Path(row["image_path"])
        assert saved.is_file() and stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert load_rgb(saved).shape == (224, 224, 3)
    out = tmp_path / "results.csv"
    exported = edge_app("export", "--db", db, "--csv", out)
    assert exported.returncode == 0, exported.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 9 and all(f"p_{label}" in lines[0] for label in classifier.labels)


def test_a_run_that_could_read_no_image_fails(model, tmp_path):
    """A folder of unreadable files: each is named, and the run exits 1 (a script must not take
    a run that classified nothing for a finished one)."""
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"not an image")
    db = tmp_path / "r.sqlite"
    result = edge_app("run", "--model", model, "--source", folder, "--db", db, "--headless")
    assert_clean_error(result, "none of its 2 image(s) could be read")
    assert "a.jpg" in result.stderr and "b.png" in result.stderr
    assert result.stdout == "" and rows(db) == []


def test_min_confidence_routes_to_expert_review(model, slides, tmp_path):
    db = tmp_path / "r.sqlite"
    result = edge_app(
        "run",
        "--model",
        model,
        "--source",
        slides,
        "--headless",
        "--db",
        db,
        "--min-confidence",
        "1.0",
    )
    assert result.returncode == 0, result.stderr
    assert {line["decision"] for line in json_lines(result.stdout)} == {"uncertain"}
    assert all(
        line["message"].startswith("uncertain: refer for expert review")
        for line in json_lines(result.stdout)
    )


def test_video_file_source(model, slides, tmp_path):
    video = tmp_path / "slides.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (224, 224))
    images = sorted(slides.glob("*.jpg"))
    for path in images:
        writer.write(cv2.imread(str(path)))
    writer.release()
    db = tmp_path / "r.sqlite"
    result = edge_app("run", "--model", model, "--source", video, "--headless", "--db", db)
    assert result.returncode == 0, result.stderr
    stored = rows(db)
    assert len(stored) == len(images) == len(json_lines(result.stdout))
    assert [row["frame_origin"] for row in stored] == [
        f"{video}#{n}" for n in range(1, len(images) + 1)
    ]
    assert all(row["quality_ok"] == 1 for row in stored)
    # OpenCV decodes BGR; the app must classify RGB like the file source does.
    classifier = Classifier(model)
    agree = sum(
        row["top_label"] == classifier.labels[int(np.argmax(classifier.classify(load_rgb(path))))]
        for row, path in zip(stored, images)
    )
    assert agree >= len(images) - 1


def test_picamera2_main_stream_gives_the_same_answers_as_the_files(model, slides, tmp_path):
    log = tmp_path / "calls.log"
    db = tmp_path / "r.sqlite"
    env = fake_camera_env(slides, FAKE_PICAMERA2_LOG=log)
    result = edge_app(
        "run",
        "--model",
        model,
        "--source",
        "picamera2",
        "--headless",
        "--db",
        db,
        "--camera-size",
        "224x224",
        "--max-frames",
        "8",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    stored = rows(db)
    assert len(stored) == 8 and stored[0]["source"] == "picamera2"
    classifier = Classifier(model)
    for row, path in zip(stored, sorted(slides.glob("*.jpg"))):
        expected = classifier.classify(load_rgb(path))
        assert np.allclose(list(json.loads(row["probabilities"]).values()), expected, atol=1e-5), (
            path
        )
    documented = {
        "Picamera2",
        "Picamera2.create_preview_configuration",
        "Picamera2.configure",
        "Picamera2.start",
        "Picamera2.capture_array",
        "Picamera2.stop",
        "Picamera2.close",
    }
    calls = log.read_text().split()
    assert set(calls) <= documented and calls[-2:] == ["Picamera2.stop", "Picamera2.close"]


def test_picamera2_lores_yuv420_stream_with_padded_stride(model, slides, tmp_path):
    db, frames = tmp_path / "r.sqlite", tmp_path / "frames"
    env = fake_camera_env(slides, FAKE_PICAMERA2_BOARD="pi4")
    result = edge_app(
        "run",
        "--model",
        model,
        "--source",
        "picamera2",
        "--headless",
        "--db",
        db,
        "--camera-stream",
        "lores",
        "--lores-size",
        "300x224",
        "--camera-size",
        "600x448",
        "--save-dir",
        frames,
        "--save-policy",
        "all",
        "--max-frames",
        "4",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    stored = rows(db)
    assert len(stored) == 4 and all(row["quality_ok"] == 1 for row in stored)
    assert all(
        load_rgb(row["image_path"]).shape == (448, 600, 3) for row in stored
    )  # main is saved
    # Pi 4 has no RGB lores stream: a clear error, not a traceback.
    refused = edge_app(
        "run",
        "--model",
        model,
        "--source",
        "picamera2",
        "--db",
        db,
        "--headless",
        "--camera-stream",
        "lores",
        "--lores-format",
        "RGB888",
        "--camera-retry-s",
        "0",
        env=env,
    )
    assert_clean_error(refused, "lores stream must be YUV on Pi 4")
    assert len(rows(db)) == 4


def test_camera_failure_mid_run_recovers(model, slides, tmp_path):
    db = tmp_path / "r.sqlite"
    env = fake_camera_env(slides, FAKE_PICAMERA2_FAIL_AFTER=3, FAKE_PICAMERA2_FAIL_COUNT=3)
    result = edge_app(
        "run",
        "--model",
        model,
        "--source",
        "picamera2",
        "--headless",
        "--db",
        db,
        "--max-frames",
        "6",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "camera failure" in result.stderr and "camera back after" in result.stderr
    assert len(rows(db)) == len(json_lines(result.stdout)) == 6


def test_camera_gone_for_good_exits_cleanly_with_results_intact(model, slides, tmp_path):
    db = tmp_path / "r.sqlite"
    env = fake_camera_env(slides, FAKE_PICAMERA2_FAIL_AFTER=3, FAKE_PICAMERA2_FAIL_COUNT=-1)
    started = time.monotonic()
    result = edge_app(
        "run",
        "--model",
        model,
        "--source",
        "picamera2",
        "--headless",
        "--db",
        db,
        "--camera-retry-s",
        "1.5",
        env=env,
    )
    assert_clean_error(result, "gave up after")
    assert time.monotonic() - started < 60
    assert "retrying in" in result.stderr
    assert len(rows(db)) == len(json_lines(result.stdout)) == 3


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_leaves_a_consistent_database(model, slides, tmp_path, signal_number):
    db = tmp_path / "r.sqlite"
    env = {**os.environ, **fake_camera_env(slides, FAKE_PICAMERA2_FPS=30)}
    process = subprocess.Popen(
        [
            str(BIN / "edge-app"),
            "run",
            "--model",
            str(model),
            "--source",
            "picamera2",
            "--headless",
            "--db",
            str(db),
            "--save-dir",
            str(tmp_path / "frames"),
            "--save-policy",
            "all",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    received = [process.stdout.readline() for _ in range(5)]
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "received" in stderr
    emitted = json_lines("".join(received) + stdout)
    stored = rows(db)
    assert len(stored) >= len(emitted) >= 5
    assert [row["id"] for row in stored][: len(emitted)] == [line["id"] for line in emitted]
    assert all(Path(row["image_path"]).is_file() for row in stored)
    assert not list((tmp_path / "frames").rglob(".tmp-*"))


def test_capture_mode_takes_sample_ids_and_triggers_from_stdin(model, slides, tmp_path):
    db = tmp_path / "r.sqlite"
    result = edge_app(
        "run",
        "--model",
        model,
        "--source",
        slides,
        "--mode",
        "capture",
        "--db",
        db,
        "--headless",
        input="S-1\n\nS-2\nq\n",
    )
    assert result.returncode == 0, result.stderr
    stored = rows(db)
    assert [row["sample_id"] for row in stored] == ["S-1", "S-1", "S-2"]
    assert all(row["mode"] == "capture" for row in stored)
    assert [line["sample_id"] for line in json_lines(result.stdout)] == ["S-1", "S-1", "S-2"]


def test_unwritable_db_path_and_full_disk_are_clear_errors(model, slides, tmp_path):
    result = edge_app(
        "run", "--model", model, "--source", slides, "--db", "/proc/leukedge/r.sqlite"
    )
    assert_clean_error(result, "cannot write")
    db, frames = tmp_path / "r.sqlite", tmp_path / "frames"

    def small_files():  # every file the app writes is capped at 200 kB: the "disk" fills up
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    full = edge_app(
        "run",
        "--model",
        model,
        "--source",
        slides,
        "--db",
        db,
        "--headless",
        "--loop",
        "--save-dir",
        frames,
        "--image-format",
        "png",
        preexec_fn=small_files,
    )
    assert_clean_error(full, "disk")
    assert "results stored so far are intact" in full.stderr
    stored = rows(db)
    assert len(stored) == len(json_lines(full.stdout)) > 0
    assert all(Path(row["image_path"]).is_file() for row in stored)


def test_missing_corrupt_or_changed_model_is_a_one_line_error(model, slides, tmp_path):
    assert_clean_error(
        edge_app(
            "run",
            "--model",
            tmp_path / "nope.tflite",
            "--source",
            slides,
            "--db",
            tmp_path / "r.sqlite",
        ),
        "does not exist",
    )
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"this is not a model\n" * 200)
    assert_clean_error(
        edge_app("run", "--model", corrupt, "--source", slides, "--db", tmp_path / "r.sqlite"),
        "not a TFLite model",
    )
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(model.read_bytes()[: len(model.read_bytes()) // 2])
    assert_clean_error(
        edge_app("run", "--model", truncated, "--source", slides, "--db", tmp_path / "r.sqlite"),
        "truncated.tflite",
    )
    # Named as truncated even with no labels beside it (its metadata went with its tail).
    assert (
        "may be truncated or corrupt"
        in edge_app(
            "run", "--model", truncated, "--source", slides, "--db", tmp_path / "r.sqlite"
        ).stderr
    )
    changed_dir = tmp_path / "changed"
    changed_dir.mkdir()
    shutil.copy(model.parent / "manifest.json", changed_dir)
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    (changed_dir / model.name).write_bytes(bytes(data))
    assert_clean_error(
        edge_app(
            "run",
            "--model",
            changed_dir / model.name,
            "--source",
            slides,
            "--db",
            tmp_path / "r.sqlite",
        ),
        "--allow-unverified",
    )


BLOCK_TENSORFLOW = """
import sys
class _BlockTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError("tensorflow is blocked in this test")
        return None
sys.meta_path.insert(0, _BlockTensorFlow())
"""


def test_edge_app_runs_where_tensorflow_cannot_be_imported(model, slides, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_TENSORFLOW)
    env = {"PYTHONPATH": f"{blocker}{os.pathsep}{FAKES}"}
    probe = subprocess.run(
        [str(BIN / "python"), "-c", "import tensorflow"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert probe.returncode != 0 and "blocked" in probe.stderr  # the blocker works
    modules = subprocess.run(
        [
            str(BIN / "python"),
            "-c",
            "import sys, leukedge.edge_app.cli, leukedge.edge_app.app, leukedge.edge_app.sources.picamera, "
            "leukedge.edge_app.sources.opencv, leukedge.benchmarks.app, leukedge.benchmarks.trust_cli; "
            "print(sorted(m for m in sys.modules if m.startswith('tensorflow')))",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert modules.returncode == 0 and modules.stdout.strip() == "[]", modules.stderr
    db = tmp_path / "r.sqlite"
    result = edge_app(
        "run", "--model", model, "--source", slides, "--headless", "--db", db, env=env
    )
    assert result.returncode == 0, result.stderr
    assert len(rows(db)) == 8


def test_help_shows_examples_and_the_disclaimer():
    for args in (("--help",), ("run", "--help")):
        result = edge_app(*args)
        assert result.returncode == 0
        assert "not a diagnostic device" in " ".join(result.stdout.split())
    assert "edge-app export --db results.sqlite --csv" in edge_app("export", "--help").stdout
    bad = edge_app("export", "--db", "/nonexistent/r.sqlite", "--csv", "/tmp/x.csv")
    assert_clean_error(bad, "no such database")


def test_capture_mode_triggered_by_sigusr1_as_a_service(model, slides, tmp_path):
    db = tmp_path / "r.sqlite"
    process = subprocess.Popen(
        [
            str(BIN / "edge-app"),
            "run",
            "--model",
            str(model),
            "--source",
            str(slides),
            "--mode",
            "capture",
            "--sample-id",
            "S-9",
            "--headless",
            "--db",
            str(db),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stderr:  # wait until the triggers are armed
        if "capture mode" in line:
            break
    lines = []
    for _ in range(2):
        process.send_signal(signal.SIGUSR1)
        lines.append(process.stdout.readline())
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert [line["sample_id"] for line in json_lines("".join(lines) + stdout)] == ["S-9", "S-9"]
    assert [row["sample_id"] for row in rows(db)] == ["S-9", "S-9"]


def test_preview_degrades_without_gui_opencv(model, slides, tmp_path):
    result = edge_app(
        "run",
        "--model",
        model,
        "--source",
        slides,
        "--db",
        tmp_path / "r.sqlite",
        "--preview",
        "--max-frames",
        "2",
        env={"DISPLAY": ":99"},
    )
    assert result.returncode == 0, result.stderr
    assert "without a preview window" in result.stderr
    assert len(result.stdout.splitlines()) == 2 and "%" in result.stdout  # one human line per frame
