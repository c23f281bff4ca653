"""A real consumer reads what edge-convert writes: MediaPipe Tasks' ImageClassifier, the task
runtime Android apps use, loads the models, reads the labels from their metadata and agrees
with LeukEdge's runtime on real images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from leukedge.edge_app.imaging import load_rgb, prepare
from leukedge.edge_app.runtime import Classifier
from leukedge.train.dataset import read_split

MEDIAPIPE_VERSION = "1.2.3"
MEDIAPIPE_ENV = Path(__file__).resolve().parents[1] / ".ci-cache" / "mediapipe-venv"


@pytest.fixture(scope="session")
def mediapipe_python() -> Path:
    """An isolated environment with mediapipe (numpy 2, opencv-contrib): made once, then reused."""
    python = MEDIAPIPE_ENV / "bin" / "python"
    probe = [
        str(python),
        "-c",
        "import mediapipe, sys; sys.exit(mediapipe.__version__ != sys.argv[1])",
        MEDIAPIPE_VERSION,
    ]
    if not python.exists() or subprocess.run(probe, capture_output=True).returncode != 0:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(MEDIAPIPE_ENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"mediapipe=={MEDIAPIPE_VERSION}"],
            check=True,
            timeout=600,
        )
    return python


@pytest.mark.parametrize("variant", ["int8", "fp16"])
def test_mediapipe_reads_labels_and_agrees_with_leukedge(
    variant, converted_dir, data_dir, mediapipe_python, tmp_path
):
    model = converted_dir / f"model_{variant}.tflite"
    classifier = Classifier(model)
    test = [s for s in read_split(converted_dir / "split.csv", data_dir) if s.split == "test"]
    images, expected = [], {}
    for sample in test[:24]:
        # Images at the model's input size, lossless: both runtimes then see identical pixels,
        # so any disagreement comes from labels, normalization or quantization, not resizing.
        pixels = prepare(load_rgb(data_dir / sample.path), classifier.image_size)
        path = tmp_path / f"{len(images):03d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        images.append(path)
        expected[str(path)] = classifier.labels[int(classifier.classify(pixels).argmax())]

    result = subprocess.run(
        [
            str(mediapipe_python),
            str(Path(__file__).parent / "mediapipe_classify.py"),
            str(model),
            *map(str, images),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(images)
    for row in rows:
        assert set(row["scores"]) == set(classifier.labels), (
            "labels must come from the model's metadata"
        )
        assert row["top"] == expected[row["path"]], row
