"""edge-convert on a small real model: files, metadata, manifest, verification, bad inputs."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from conftest import assert_clean_error, run_cli
from edge_app.metadata import read_metadata
from edge_app.runtime import Classifier
from train.dataset import load_pixels, read_split
from train.metrics import classification_metrics

VARIANTS = ("fp32", "fp16", "dynamic", "int8")


def test_writes_every_file(converted_dir):
    names = {p.name for p in converted_dir.iterdir()}
    assert {f"model_{v}.tflite" for v in VARIANTS} | {"labels.txt", "manifest.json",
                                                      "conversion_report.md", "split.csv"} == names


def test_manifest_matches_the_files(converted_dir, tiny_run):
    manifest = json.loads((converted_dir / "manifest.json").read_text())
    labels = (tiny_run / "labels.txt").read_text().split()
    assert manifest["labels"] == (converted_dir / "labels.txt").read_text().splitlines()
    assert len(manifest["labels"]) == 4 and manifest["image_size"] == 96
    source = (tiny_run / "model.keras").read_bytes()
    assert manifest["source_model"]["sha256"] == hashlib.sha256(source).hexdigest()
    assert manifest["calibration"]["samples"] == 64
    assert set(manifest["variants"]) == set(VARIANTS)
    for variant, entry in manifest["variants"].items():
        data = (converted_dir / entry["file"]).read_bytes()
        assert entry["file"] == f"model_{variant}.tflite"
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
        assert entry["input"]["shape"] == [1, 96, 96, 3] and entry["output"]["shape"] == [1, 4]
        assert set(entry["verification"]) == {"accuracy", "macro_f1", "agreement", "max_abs_prob_diff", "n"}
    assert labels[0] == "Benign"


def test_metadata_carries_labels_and_normalization(converted_dir):
    labels = (converted_dir / "labels.txt").read_text().splitlines()
    for variant in VARIANTS:
        info = read_metadata((converted_dir / f"model_{variant}.tflite").read_bytes())
        assert info is not None, variant
        assert info.labels == labels
        assert info.mean == [0.0] and info.std == [1.0]  # the model takes raw 0..255 pixels
        assert "not a diagnostic device" in info.description
        assert info.name and info.version and info.author and info.license


def test_int8_takes_camera_pixels_as_they_are(converted_dir):
    manifest = json.loads((converted_dir / "manifest.json").read_text())
    int8 = manifest["variants"]["int8"]
    assert int8["input"] == {"dtype": "uint8", "shape": [1, 96, 96, 3], "scale": 1.0, "zero_point": 0}
    assert int8["output"]["dtype"] == "uint8" and int8["output"]["scale"] > 0
    for variant in ("fp32", "fp16", "dynamic"):
        assert manifest["variants"][variant]["input"]["dtype"] == "float32"
    sizes = {v: e["bytes"] for v, e in manifest["variants"].items()}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]


def test_verification_figures_match_a_direct_computation(converted_dir, tiny_run, data_dir):
    import keras

    manifest = json.loads((converted_dir / "manifest.json").read_text())
    labels = manifest["labels"]
    test = [s for s in read_split(converted_dir / "split.csv", data_dir) if s.split == "test"]
    pixels = load_pixels(test, data_dir, 96)
    y = np.array([labels.index(s.label) for s in test])
    keras_probs = keras.models.load_model(tiny_run / "model.keras").predict(pixels.astype("float32"), verbose=0)
    reference = classification_metrics(y, keras_probs.argmax(1), labels)
    assert manifest["reference"]["accuracy"] == pytest.approx(reference["accuracy"])
    for variant in VARIANTS:
        classifier = Classifier(converted_dir / f"model_{variant}.tflite")
        assert classifier.verified and classifier.variant == variant
        probs = np.stack([classifier.invoke(classifier.to_input(p)) for p in pixels])
        figures = manifest["variants"][variant]["verification"]
        assert figures["n"] == len(test)
        assert figures["accuracy"] == pytest.approx(float((probs.argmax(1) == y).mean()))
        assert figures["agreement"] == pytest.approx(float((probs.argmax(1) == keras_probs.argmax(1)).mean()))
        assert figures["max_abs_prob_diff"] == pytest.approx(float(np.abs(probs - keras_probs).max()), abs=1e-6)
    assert "| int8 | model_int8.tflite |" in (converted_dir / "conversion_report.md").read_text()


def test_int8_io_option_and_accuracy_gate(tiny_run, data_dir, tmp_path):
    out = tmp_path / "int8io"
    result = run_cli("edge-convert", tiny_run, "--out", out, "--variants", "int8", "--int8-io", "int8",
                     "--calibration-samples", "32", "--data", data_dir, "--max-drop", "0", check=False)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["variants"]["int8"]
    assert entry["input"]["dtype"] == "int8" and entry["input"]["zero_point"] == -128
    assert entry["input"]["scale"] == 1.0
    assert {p.name for p in out.glob("*.tflite")} == {"model_int8.tflite"}
    drop = manifest["reference"]["accuracy"] - entry["verification"]["accuracy"]
    assert (result.returncode != 0) == (drop > 0), result.stdout + result.stderr



def test_bad_inputs(tiny_run, converted_dir, data_dir, tmp_path):
    assert_clean_error(run_cli("edge-convert", tmp_path / "nope", "--out", tmp_path / "o1", check=False),
                       "does not exist")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.keras").write_bytes(b"PK\x03\x04 not really a keras file")
    assert_clean_error(run_cli("edge-convert", corrupt, "--out", tmp_path / "o2", check=False),
                       "not a readable Keras model")
    assert_clean_error(run_cli("edge-convert", tiny_run, "--out", converted_dir, check=False),
                       "--overwrite")
    assert_clean_error(run_cli("edge-convert", tiny_run, "--out", tmp_path / "o3", "--variants", "int9",
                               check=False), "unknown variant 'int9'", "did you mean int8")
    assert_clean_error(run_cli("edge-convert", tiny_run, "--out", tmp_path / "o4", "--variants", "int8",
                               "--calibration-samples", "100000", "--data", data_dir, check=False),
                       "--calibration-samples")
    assert not (tmp_path / "o4" / "model_int8.tflite").exists()
    # the refused overwrite left the earlier models untouched
    manifest = json.loads((converted_dir / "manifest.json").read_text())
    data = (converted_dir / "model_int8.tflite").read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest["variants"]["int8"]["sha256"]


def test_rejects_a_model_that_is_not_an_image_classifier(tmp_path, tiny_run):
    import keras

    run = tmp_path / "tabular"
    run.mkdir()
    inputs = keras.Input((10,))
    keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(inputs)).save(run / "model.keras")
    shutil.copy(tiny_run / "labels.txt", run)
    result = run_cli("edge-convert", run, "--out", tmp_path / "o", check=False)
    assert_clean_error(result, "not an image classifier")


def test_packed_label_file_is_reproducible():
    import time

    from edge_app.metadata import append_files

    first = append_files(b"model bytes", {"labels.txt": b"a\nb\n"})
    time.sleep(2.1)  # zip timestamps have 2-second resolution
    assert append_files(b"model bytes", {"labels.txt": b"a\nb\n"}) == first


def _int8_kernel(interpreter, layer_name: str) -> np.ndarray | None:
    """The int8 model's (BatchNorm-folded) depthwise kernel of `layer_name`, dequantized."""
    for detail in interpreter.get_tensor_details():
        if f"/{layer_name}_BN" in detail["name"] and len(detail["shape"]) == 4 and detail["dtype"] == np.int8:
            scales = detail["quantization_parameters"]["scales"]
            return interpreter.get_tensor(detail["index"])[0].astype(np.float64) * scales
    return None


def test_trained_kernels_reach_the_int8_model_unchanged(tiny_run, converted_dir):
    """edge-train keeps every kernel on TFLite's per-channel int8 grid (frozen ones before
    training, fine-tuned ones after, then refits the head): the int8 model then holds exactly the
    kernels of the Keras model the metrics describe, BatchNormalization folded in."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    model = keras.models.load_model(tiny_run / "model.keras", compile=False)
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    interpreter = Interpreter(str(converted_dir / "model_int8.tflite"))
    interpreter.allocate_tensors()
    errors = {}
    for layer in backbone.layers:
        if not isinstance(layer, keras.layers.DepthwiseConv2D):
            continue
        norm = backbone.get_layer(f"{layer.name}_BN")
        gamma, _, _, variance = norm.get_weights()
        folded = layer.get_weights()[0][..., 0] * gamma / np.sqrt(variance + norm.epsilon)
        int8 = _int8_kernel(interpreter, layer.name)
        assert int8 is not None, f"no int8 kernel for {layer.name}"
        errors[layer.name] = np.abs(int8 - folded).max() / np.abs(folded).max()
    assert len(errors) == 17  # MobileNetV2's depthwise layers
    # Float rounding only; an unrounded kernel is off by up to half a step (~4e-3 of its max).
    assert max(errors.values()) < 1e-5, errors
