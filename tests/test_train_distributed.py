"""Distributed training (mirrored on two CPU devices, multi-worker on 127.0.0.1) and distillation.

scripts/multiworker-check (run by .ci/run) covers two workers against one; here: TF_CONFIG
parsing, mirrored on two logical CPU devices against one, a worker killed mid-run, and the
teacher checks of --teacher.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, REPO, WEIGHTS_DIR, assert_clean_error, run_cli
from leukedge.train import cli as train_cli
from leukedge.train.cluster import ClusterError, parse_tf_config

sys.path.insert(0, str(REPO / "scripts"))

# The tiny model and the local cluster of scripts/multiworker-check, so that the two checks of
# multi-worker training train the same thing the same way.
from multiworker_check import TINY as TINY_MODEL  # noqa: E402
from multiworker_check import free_ports, tf_config  # noqa: E402

WEIGHTS = WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
TINY = (*TINY_MODEL, "--weights", str(WEIGHTS))


def test_tf_config_is_checked_before_anything_runs():
    with pytest.raises(ClusterError, match="needs the TF_CONFIG environment variable"):
        parse_tf_config(None)
    with pytest.raises(ClusterError, match="not valid JSON"):
        parse_tf_config("{cluster: [")
    with pytest.raises(ClusterError, match="'cluster' and a 'task'"):
        parse_tf_config('{"cluster": {"worker": ["a:1"]}}')
    with pytest.raises(ClusterError, match="host:port"):
        parse_tf_config('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}')
    for port in ("notaport", "99999", "0", ""):  # TensorFlow would fail only after the decoding
        with pytest.raises(ClusterError, match="host:port"):
            parse_tf_config(
                f'{{"cluster": {{"worker": ["localhost:{port}"]}}, '
                '"task": {"type": "worker", "index": 0}}'
            )
    with pytest.raises(ClusterError, match="not one of the cluster's tasks"):
        parse_tf_config(
            '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}'
        )
    role = parse_tf_config(tf_config([1, 2], 1))
    assert (role.workers, role.index, role.is_chief) == (2, 1, False)
    assert parse_tf_config(tf_config([1, 2], 0)).is_chief
    with_chief = parse_tf_config(
        '{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}'
    )
    assert (with_chief.workers, with_chief.is_chief) == (2, False)


def test_multiworker_without_tf_config_is_one_line(tmp_path, data_dir):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run(
        [
            str(BIN / "edge-train"),
            "--data",
            str(data_dir),
            "--out",
            str(tmp_path / "o"),
            "--strategy",
            "multiworker",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert_clean_error(result, "TF_CONFIG")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_an_allocator_setting_tensorflow_cannot_parse_is_refused(tmp_path, data_dir):
    # TensorFlow itself would log a hidden warning and fall back to its slow default allocator.
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "yes"}
    result = subprocess.run(
        [str(BIN / "edge-train"), "--data", str(data_dir), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert_clean_error(result, "TF_CPU_ALLOCATOR_USE_BFC='yes'", "set it to true")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


MIRRORED = """
import sys
import tensorflow as tf
devices = int(sys.argv[1])
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
from leukedge.train.cli import main
main(sys.argv[2:])
"""


def mirrored_run(devices: int, out: Path, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            MIRRORED,
            str(devices),
            "--data",
            str(data_dir),
            "--out",
            str(out),
            "--strategy",
            "mirrored",
            *TINY,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def history(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "history.csv").read_text().splitlines()))


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_equals_one(tmp_path, data_dir):
    one, two = (mirrored_run(n, tmp_path / f"d{n}", data_dir) for n in (1, 2))
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    assert "mirrored: 1 worker(s), 2 replica(s)" in two.stdout
    steps = [
        r.stdout.split("training steps run by this worker: ")[1].split()[0] for r in (one, two)
    ]
    assert steps[0] == steps[1] and int(steps[0]) > 0
    rows_one, rows_two = history(tmp_path / "d1"), history(tmp_path / "d2")
    assert len(rows_one) == len(rows_two) == 4
    for a, b in zip(rows_one, rows_two):
        for key in ("loss", "val_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-3), (key, a, b)
    m1, m2 = (json.loads((tmp_path / f"d{n}" / "metrics.json").read_text()) for n in (1, 2))
    assert m2["distributed"]["replicas"] == 2 and m1["distributed"]["replicas"] == 1
    for split in ("val", "test"):
        assert m1[split]["confusion_matrix"] == m2[split]["confusion_matrix"]


@pytest.mark.slow
def test_a_worker_killed_mid_run_stops_the_other_cleanly(tmp_path, data_dir):
    ports = free_ports(2)
    out = tmp_path / "mw"
    slow = [
        a if a != "1" or TINY[i - 1] != "--fine-tune-epochs" else "20" for i, a in enumerate(TINY)
    ]
    workers = [
        subprocess.Popen(
            [
                str(BIN / "edge-train"),
                "--data",
                str(data_dir),
                "--out",
                str(out if i == 0 else tmp_path / "w1"),
                "--strategy",
                "multiworker",
                *slow,
            ],
            env={**os.environ, "TF_CONFIG": tf_config(ports, i), "TF_CPP_MIN_LOG_LEVEL": "2"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    # Kill worker 1 once it is fine-tuning (its log says so), i.e. mid-run.
    seen = ""
    for line in workers[1].stdout:
        seen += line
        if "Epoch 1/20" in line:
            break
    assert "Epoch 1/20" in seen, seen + workers[1].stderr.read()
    workers[1].send_signal(signal.SIGKILL)
    workers[1].wait()
    started = time.monotonic()
    chief_out, chief_err = workers[0].communicate(timeout=600)
    assert workers[0].returncode == 1, chief_out[-2000:] + chief_err[-2000:]
    assert "another worker failed or became unreachable" in chief_err, chief_err[-2000:]
    assert "Traceback" not in chief_err
    assert time.monotonic() - started < 300
    assert not out.exists() and not (tmp_path / ".mw.partial").exists()
    assert not (tmp_path / "w1").exists()


def test_teacher_that_does_not_fit_is_refused(tmp_path, data_dir):
    from leukedge.train import dataset

    # A teacher folder as edge-train writes it; the refusals happen before its model is loaded.
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.keras").write_bytes(b"not loaded before the checks")
    samples = dataset.stratified_split(dataset.scan(data_dir, limit_per_class=10).samples, seed=0)
    dataset.write_split(samples, teacher / "split.csv")
    (teacher / "labels.txt").write_text("Benign\nPre-B\nEarly Pre-B\nPro-B\n")  # wrong order
    out = tmp_path / "student"

    def student(*args):
        return run_cli(
            "edge-train",
            "--data",
            data_dir,
            "--out",
            out,
            "--limit-per-class",
            "10",
            "--epochs",
            "1",
            "--fine-tune-epochs",
            "0",
            *args,
            check=False,
        )

    assert_clean_error(student("--teacher", tmp_path), "has no model.keras")
    assert_clean_error(student("--teacher", teacher), "exactly the student's classes")
    (teacher / "labels.txt").write_text("\n".join(dataset.CANONICAL_LABELS) + "\n")
    other = tmp_path / "other.csv"
    dataset.write_split(dataset.stratified_split(samples, seed=1), other)
    assert_clean_error(
        student("--teacher", teacher, "--split-file", other), "not the teacher's split"
    )
    # An ensemble's members must share the split and be distinct.
    second = tmp_path / "second"
    second.mkdir()
    for name in ("model.keras", "labels.txt"):
        (second / name).write_bytes((teacher / name).read_bytes())
    dataset.write_split(dataset.stratified_split(samples, seed=1), second / "split.csv")
    assert_clean_error(
        student("--teacher", teacher, "--teacher", second), "trained on another split"
    )
    assert_clean_error(student("--teacher", teacher, "--teacher", teacher), "given twice")
    (teacher / "split.csv").unlink()
    assert_clean_error(student("--teacher", teacher), "split.csv is missing")
    assert_clean_error(student("--consistent-teaching"), "--consistent-teaching needs a --teacher")
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("teaching", ["fixed", "consistent"])
def test_distilled_student_trains_on_the_teachers_split(
    tmp_path, data_dir, tiny_run, converted_dir, teaching
):
    import keras

    # Fixed teaching from an ensemble (the run folder's Keras model and its conversion, which
    # share the split), consistent from one file of the released kind.
    fp16 = converted_dir / "model_fp16.tflite"
    teachers = [tiny_run, fp16] if teaching == "fixed" else [fp16]
    out = tmp_path / "student"
    run_cli(
        "edge-train",
        "--data",
        data_dir,
        "--out",
        out,
        "--alpha",
        "0.35",
        "--image-size",
        "64",
        "--epochs",
        "2",
        "--fine-tune-epochs",
        "1",
        "--int8-refit-epochs",
        "1",
        "--limit-per-class",
        "40",
        "--batch-size",
        "16",
        *[arg for teacher in teachers for arg in ("--teacher", teacher)],
        f"--{teaching}-teaching",
        "--weights",
        WEIGHTS,
    )
    assert (out / "split.csv").read_text() == (tiny_run / "split.csv").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher"] == {
        "models": [str(t / "model.keras" if t.is_dir() else t) for t in teachers],
        "temperature": 4.0,
        "soft_target_weight": 0.7,
        "consistent": teaching == "consistent",
    }
    # The card's command reproduces the student: the teacher and how it taught are in it, and
    # edge-train accepts every option as written.
    card = (out / "model_card.md").read_text()
    command = re.search(r"Reproduce: `edge-train (.+)`", card).group(1)
    params = train_cli.main.make_context("edge-train", shlex.split(command)).params
    assert [Path(p).resolve() for p in params["teachers"]] == [t.resolve() for t in teachers]
    assert params["distill_consistent"] == (teaching == "consistent")
    assert f"({teaching} teaching)" in card
    assert ("an ensemble of 2 teachers" in card) == (len(teachers) == 2)
    model = keras.models.load_model(out / "model.keras")  # loads without LeukEdge's loss code
    assert model.input_shape[1:] == (64, 64, 3)
    losses = [float(row["loss"]) for row in history(out)]
    assert all(loss == loss and loss >= 0 for loss in losses)  # finite, KL + cross-entropy >= 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "teacher_files",
    [["model.keras"], ["model_fp16.tflite"], ["model.keras", "model_fp16.tflite"]],
    ids=["keras", "tflite", "ensemble"],
)
def test_consistent_teacher_scores_the_view_it_is_given(
    tiny_run, converted_dir, data_dir, teacher_files
):
    import numpy as np
    import tensorflow as tf

    from leukedge.train import dataset, distill

    teachers = distill.check_teachers(
        [tiny_run if name == "model.keras" else converted_dir / name for name in teacher_files]
    )
    models = [distill.load_teacher(teacher) for teacher in teachers]
    samples = [s for s in dataset.read_split(teachers[0].split_file, check_files=False)][:6]
    probabilities = distill.teacher_probabilities(models, samples, data_dir)
    # An ensemble's probabilities are its members' mean.
    members = [distill.teacher_probabilities([m], samples, data_dir) for m in models]
    np.testing.assert_allclose(probabilities, np.mean(members, axis=0), atol=1e-6)
    if len(models) > 1:
        assert np.abs(members[0] - members[1]).max() > 1e-3  # two different teachers
    fixed = distill.soft_targets(probabilities, 2.0)
    size = distill.teacher_input_size(models[0])  # the tiny run's size for both members
    views = tf.constant(dataset.load_pixels(samples, data_dir, size).astype(np.float32))
    scored = distill.view_soft_targets(models, len(teachers[0].labels), 2.0)
    # A clean view at the teacher's own size is the clean image: the fixed targets, to rounding.
    np.testing.assert_allclose(scored(views).numpy(), fixed, atol=1e-4)
    # A turned view at half the size (as a smaller student sees it) is scored as what it is.
    turned = scored(tf.image.resize(tf.image.rot90(views), [size // 2, size // 2])).numpy()
    assert turned.shape == fixed.shape
    np.testing.assert_allclose(turned.sum(axis=1), 1.0, atol=1e-4)
    assert np.abs(turned - fixed).max() > 1e-3
