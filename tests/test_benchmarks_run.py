"""edge-bench end to end on the session's small real models and real images."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, interruptible, run_cli
from leukedge.edge_app import manifest as manifests
from leukedge.edge_app.runtime import Classifier
from leukedge.train.dataset import load_pixels, read_split
from leukedge.train.metrics import classification_metrics

VARIANTS = ("fp32", "fp16", "dynamic", "int8")
LATENCY_KEYS = ("init", "first", "mean", "std", "min", "p50", "p90", "p99")
FAST = ("--runs", "10", "--warmup", "2")

# Makes tensorflow and keras unimportable in every process started with it on PYTHONPATH.
TF_BLOCKER = """
import sys

class _BlockTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras"):
            raise ImportError(f"{name} is blocked for this test", name=name)
        return None

sys.meta_path.insert(0, _BlockTensorFlow())
"""


@pytest.fixture(scope="module")
def bench(converted_dir, tiny_run, tmp_path_factory):
    """One full run: every converted variant and the Keras model, 1 and 2 threads, every output."""
    out = tmp_path_factory.mktemp("bench")
    result = run_cli(
        "edge-bench",
        converted_dir,
        tiny_run / "model.keras",
        "--threads",
        "1,2",
        *FAST,
        "--json",
        out / "b.json",
        "--csv",
        out / "b.csv",
        "--markdown",
        out / "b.md",
        "--plot",
        out / "b.png",
    )
    return out, json.loads((out / "b.json").read_text()), result


def _rows(report: dict) -> dict:
    return {(row["variant"], row["threads"]): row for row in report["rows"]}


def test_json_has_every_contract_field(bench, converted_dir, tiny_run):
    _, report, _ = bench
    rows = _rows(report)
    assert set(rows) == {(v, t) for v in (*VARIANTS, "keras") for t in (1, 2)}
    environment = report["environment"]
    for key in (
        "cpu",
        "cores",
        "os",
        "python",
        "runtime",
        "runtime_version",
        "board_model",
        "before",
        "after",
    ):
        assert key in environment
    for state in (environment["before"], environment["after"]):
        assert set(state) >= {"cpu_governor", "temperature_c", "throttled"}
    assert environment["runtime"] == "ai-edge-litert"
    manifest = manifests.read(converted_dir)
    n_test = sum(
        s.split == "test" for s in read_split(converted_dir / "split.csv", check_files=False)
    )
    for (variant, threads), row in rows.items():
        assert row["status"] == "ok" and row["error"] is None
        assert row["threads"] == threads and isinstance(row["threads"], int)
        expected_file = (
            tiny_run / "model.keras"
            if variant == "keras"
            else converted_dir / manifest.variants[variant].file
        )
        assert Path(row["model"]).resolve() == expected_file.resolve()
        assert row["size_bytes"] == expected_file.stat().st_size
        for key in ("accuracy", "macro_f1", "agreement"):
            assert 0.0 <= row[key] <= 1.0
        assert set(row["per_class_recall"]) == set(manifest.labels)
        assert all(0.0 <= value <= 1.0 for value in row["per_class_recall"].values())
        latency = row["latency_ms"]
        assert set(latency) >= set(LATENCY_KEYS) and all(
            latency[k] > 0 for k in LATENCY_KEYS if k != "std"
        )
        assert latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
        assert row["fps"] == pytest.approx(1000.0 / latency["mean"])
        assert (
            set(row["end_to_end_ms"]) >= {"mean", "p50", "p90"} and row["end_to_end_ms"]["p50"] > 0
        )
        assert row["peak_rss_mb"] > 10 and row["n_images"] == n_test and row["runs"] == 10
    assert rows[("keras", 1)]["agreement"] == 1.0  # the most precise variant is the reference
    assert all("keras" in row["agreement_reference"] for row in rows.values())


def test_accuracy_equals_a_direct_computation(bench, converted_dir, tiny_run, data_dir):
    _, report, _ = bench
    rows = _rows(report)
    samples = [s for s in read_split(converted_dir / "split.csv", data_dir) if s.split == "test"]
    predictions = {}
    for variant in VARIANTS:
        classifier = Classifier(converted_dir / f"model_{variant}.tflite", threads=1)
        pixels = load_pixels(samples, data_dir, classifier.image_size)
        predicted = [int(np.argmax(classifier.classify(image))) for image in pixels]
        truth = [classifier.labels.index(s.label) for s in samples]
        metrics = classification_metrics(truth, predicted, classifier.labels)
        for threads in (1, 2):
            row = rows[(variant, threads)]
            assert row["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-12)
            assert row["macro_f1"] == pytest.approx(metrics["macro"]["f1"], abs=1e-12)
            assert row["per_class_recall"] == pytest.approx(
                {label: values["recall"] for label, values in metrics["per_class"].items()}
            )
        predictions[variant] = np.array(predicted)
    import keras  # the reference row is the Keras model: recompute agreement with it directly

    model = keras.models.load_model(tiny_run / "model.keras", compile=False)
    reference = model.predict(
        load_pixels(samples, data_dir, model.input_shape[1]).astype(np.float32), verbose=0
    ).argmax(axis=1)
    for variant in VARIANTS:
        assert rows[(variant, 1)]["agreement"] == pytest.approx(
            float((predictions[variant] == reference).mean())
        )


def test_csv_markdown_and_png(bench):
    out, report, result = bench
    with open(out / "b.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert len(lines) == len(report["rows"])
    by_key = {(line["variant"], int(line["threads"])): line for line in lines}
    for key, row in _rows(report).items():
        assert float(by_key[key]["accuracy"]) == pytest.approx(row["accuracy"])
        assert float(by_key[key]["latency_p90_ms"]) == pytest.approx(row["latency_ms"]["p90"])
    table = [line for line in (out / "b.md").read_text().splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(report["rows"]) and "accuracy" in table[0] and "p90 ms" in table[0]
    # The Markdown says how its columns were measured, as the console does.
    method = f"- latency: interpreter.invoke() over {report['settings']['runs']} runs"
    assert method in (out / "b.md").read_text() and "agreement: top-1 against" in result.stdout
    assert (out / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(out / "b.png").shape[0] > 100
    for variant in (*VARIANTS, "keras"):
        assert variant in result.stdout  # the console table
    assert "Traceback" not in result.stderr


def _relabelled_copy(converted_dir, data_dir, out: Path) -> Path:
    """Real test images filed under the wrong class folder, so the model must score badly."""
    samples = [s for s in read_split(converted_dir / "split.csv", data_dir) if s.split == "test"]
    labels = sorted({s.label for s in samples})
    for sample in samples:
        wrong = labels[(labels.index(sample.label) + 1) % len(labels)]
        (out / wrong).mkdir(parents=True, exist_ok=True)
        shutil.copy(data_dir / sample.path, out / wrong / Path(sample.path).name)
    return out


def test_min_accuracy_gate(converted_dir, data_dir, tmp_path):
    wrong = _relabelled_copy(converted_dir, data_dir, tmp_path / "wrong")
    model = converted_dir / "model_int8.tflite"
    below = run_cli(
        "edge-bench",
        model,
        "--data",
        wrong,
        "--threads",
        "1",
        *FAST,
        "--min-accuracy",
        "0.5",
        "--json",
        tmp_path / "b.json",
        check=False,
    )
    accuracy = json.loads((tmp_path / "b.json").read_text())["rows"][0]["accuracy"]
    assert accuracy < 0.5
    assert below.returncode == 3 and "below --min-accuracy 0.5000" in below.stderr
    at_the_floor = math.floor(accuracy * 1e6) / 1e6  # printed rounded up, 1/15 would sit above it
    passing = run_cli(
        "edge-bench",
        model,
        "--data",
        wrong,
        "--threads",
        "1",
        *FAST,
        "--min-accuracy",
        f"{at_the_floor:.6f}",
        check=False,
    )
    assert passing.returncode == 0, passing.stderr


def test_runs_with_tensorflow_unimportable(converted_dir, tiny_run, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(TF_BLOCKER)
    probe = subprocess.run(
        [str(BIN / "python"), "-c", "import tensorflow"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(blocker)},
    )
    assert "blocked for this test" in probe.stderr  # the blocker really works
    result = run_cli(
        "edge-bench",
        converted_dir / "model_int8.tflite",
        tiny_run / "model.keras",
        "--threads",
        "1",
        *FAST,
        "--json",
        tmp_path / "b.json",
        env={"PYTHONPATH": str(blocker)},
    )
    report = json.loads((tmp_path / "b.json").read_text())
    assert [(row["variant"], row["status"]) for row in report["rows"]] == [("int8", "ok")]
    assert any(
        "model.keras: skipped, TensorFlow is not importable" in note for note in report["notes"]
    )
    assert "note: " in result.stdout and "TensorFlow is not importable" in result.stdout


def test_bad_models_become_failed_rows_and_the_rest_still_run(converted_dir, data_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "labels.txt").write_text((converted_dir / "labels.txt").read_text())
    (bad / "notes.tflite").write_text("this is a text file, not a model\n")
    data = (converted_dir / "model_int8.tflite").read_bytes()
    (bad / "truncated.tflite").write_bytes(data[: len(data) // 2])
    (bad / "keras").mkdir()
    (bad / "keras" / "labels.txt").write_text((converted_dir / "labels.txt").read_text())
    (bad / "keras" / "model.keras").write_text("a text file, not a Keras archive\n")
    result = run_cli(
        "edge-bench",
        bad / "notes.tflite",
        bad / "truncated.tflite",
        bad / "keras" / "model.keras",
        converted_dir / "model_int8.tflite",
        "--data",
        converted_dir / "split.csv",
        "--threads",
        "1",
        *FAST,
        "--json",
        tmp_path / "b.json",
        check=False,
    )
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    rows = {row["variant"]: row for row in json.loads((tmp_path / "b.json").read_text())["rows"]}
    assert rows["notes"]["status"] == "failed" and "is not a TFLite model" in rows["notes"]["error"]
    assert (
        rows["truncated"]["status"] == "failed"
        and "truncated or corrupt" in rows["truncated"]["error"]
    )
    # Keras itself says "File not found" for a file that is there but is no archive.
    assert (
        rows["keras"]["status"] == "failed"
        and "truncated or of another format" in rows["keras"]["error"]
    )
    assert rows["int8"]["status"] == "ok" and rows["int8"]["accuracy"] is not None
    assert "3 of 4 row(s) failed" in result.stderr.splitlines()[-1]


def test_labels_the_model_does_not_know(converted_dir, data_dir, tmp_path):
    for label, source in (("Benign", "Benign"), ("Monocyte", "Pro")):
        (tmp_path / "data" / label).mkdir(parents=True)
        for image in sorted((data_dir / "Original" / source).iterdir())[:2]:
            shutil.copy(image, tmp_path / "data" / label / image.name)
    result = run_cli(
        "edge-bench",
        converted_dir / "model_int8.tflite",
        "--data",
        tmp_path / "data",
        "--threads",
        "1",
        *FAST,
        check=False,
    )
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    last = result.stderr.splitlines()[-1]
    assert "'Monocyte' (not a known label" in last and "the models do not know these labels" in last


def test_ctrl_c_prints_what_was_measured(converted_dir, tmp_path):
    command = [
        str(BIN / "edge-bench"),
        converted_dir,
        "--threads",
        "1,2",
        "--runs",
        "100000000",
        "--max-seconds",
        "2",
        "--json",
        str(tmp_path / "b.json"),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=interruptible,
    )
    seen = []
    while not any(line.startswith("row 1/8 done:") for line in seen):  # the first row is measured
        line = process.stderr.readline()
        assert line, f"edge-bench ended before a row was measured: {seen}"
        seen.append(line)
    time.sleep(0.5)  # inside the second row's worker
    os.killpg(process.pid, signal.SIGINT)  # what a terminal sends to the whole foreground group
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stdout + stderr
    # Piped, as into a log: the row lines are the progress, with no bar redrawn beside them.
    assert "\r" not in "".join(seen) + stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["interrupted"] is True and 1 <= len(report["rows"]) < 8
    assert all(row["status"] == "ok" for row in report["rows"])
    assert "interrupted" in stdout and report["rows"][0]["name"] in stdout


def test_no_model_means_the_released_default(converted_dir, tmp_path):
    from leukedge.edge_app.runtime import RELEASED_MODEL

    released = tmp_path / "models"
    released.mkdir()
    for name in ("model_int8.tflite", "manifest.json", "labels.txt", "split.csv"):
        shutil.copy(converted_dir / name, released / name)
    chosen = released / "model_int8.tflite"
    run_cli(
        "edge-bench",
        "--threads",
        "1",
        *FAST,
        "--json",
        tmp_path / "b.json",
        env={"LEUKEDGE_MODEL": str(chosen)},
    )
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [(row["model"], row["variant"], row["status"]) for row in rows] == [
        (str(chosen), "int8", "ok")
    ]
    environment = {k: v for k, v in os.environ.items() if k != "LEUKEDGE_MODEL"}
    result = subprocess.run(
        [str(BIN / "edge-bench"), "--threads", "1", *FAST, "--json", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [(row["model"], row["variant"]) for row in rows] == [(str(RELEASED_MODEL), "int8")]


def test_fidelity_reports_both_tools(converted_dir, tmp_path):
    run_cli(
        "edge-bench",
        "fidelity",
        converted_dir,
        "--variants",
        "int8",
        "--threads",
        "1",
        "--runs",
        "20",
        "--repeats",
        "1",
        "--tolerance",
        "1",
        "--json",
        tmp_path / "f.json",
    )
    rows = json.loads((tmp_path / "f.json").read_text())["rows"]
    assert [(row["variant"], row["threads"]) for row in rows] == [("int8", 1)]
    assert rows[0]["edge_bench_mean_ms"] > 0 and rows[0]["litert_tool_mean_ms"] > 0
    assert rows[0]["ratio"] == pytest.approx(
        rows[0]["edge_bench_mean_ms"] / rows[0]["litert_tool_mean_ms"]
    )
