"""edge-convert on a small real model: files, metadata, manifest, verification, bad inputs."""

from __future__ import annotations

import hashlib
import re
import shutil

import numpy as np
import pytest

from conftest import TINY_TRUST_ARGS, assert_clean_error, run_cli
from leukedge.edge_app import manifest as manifests
from leukedge.edge_app.manifest import CONVERTED_VARIANTS as VARIANTS
from leukedge.edge_app.metadata import read_metadata
from leukedge.edge_app.runtime import Classifier
from leukedge.train.dataset import load_pixels, read_split
from leukedge.train.metrics import classification_metrics


def test_writes_every_file(converted_dir):
    names = {p.name for p in converted_dir.iterdir()}
    assert {f"model_{v}.tflite" for v in VARIANTS} | {
        "labels.txt",
        "manifest.json",
        "conversion_report.md",
        "split.csv",
    } == names


def test_manifest_matches_the_files(converted_dir, tiny_run):
    manifest = manifests.read(converted_dir)
    labels = (tiny_run / "labels.txt").read_text().split()
    assert manifest.labels == (converted_dir / "labels.txt").read_text().splitlines()
    assert len(manifest.labels) == 4 and manifest.image_size == 96
    source = (tiny_run / "model.keras").read_bytes()
    assert manifest.source_model.sha256 == hashlib.sha256(source).hexdigest()
    assert manifest.calibration.samples == 64
    assert set(manifest.variants) == set(VARIANTS)
    for variant, entry in manifest.variants.items():
        data = (converted_dir / entry.file).read_bytes()
        assert entry.file == f"model_{variant}.tflite"
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        assert entry.bytes == len(data)
        assert entry.input.shape == [1, 96, 96, 3] and entry.output.shape == [1, 4]
        assert entry.verification.n > 0 and entry.ok
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
    manifest = manifests.read(converted_dir)
    int8 = manifest.variants["int8"]
    assert int8.input.to_dict() == {
        "dtype": "uint8",
        "shape": [1, 96, 96, 3],
        "scale": 1.0,
        "zero_point": 0,
    }
    assert int8.output.dtype == "uint8" and int8.output.scale > 0
    for variant in ("fp32", "fp16", "dynamic"):
        assert manifest.variants[variant].input.dtype == "float32"
    sizes = {v: e.bytes for v, e in manifest.variants.items()}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]


def test_verification_figures_match_a_direct_computation(converted_dir, tiny_run, data_dir):
    import keras

    manifest = manifests.read(converted_dir)
    labels = manifest.labels
    test = [s for s in read_split(converted_dir / "split.csv", data_dir) if s.split == "test"]
    pixels = load_pixels(test, data_dir, 96)
    y = np.array([labels.index(s.label) for s in test])
    keras_probs = keras.models.load_model(tiny_run / "model.keras").predict(
        pixels.astype("float32"), verbose=0
    )
    reference = classification_metrics(y, keras_probs.argmax(1), labels)
    # The variants give calibrated probabilities: softmax(logits / T), and log p are the logits up to
    # a constant per image.
    temperature = manifest.extra["trust_fit"]["temperature"]
    scaled = np.log(keras_probs.astype(np.float64)) / temperature
    calibrated = np.exp(scaled - scaled.max(1, keepdims=True))
    calibrated /= calibrated.sum(1, keepdims=True)
    assert manifest.reference.accuracy == pytest.approx(reference["accuracy"])
    for variant in VARIANTS:
        classifier = Classifier(converted_dir / f"model_{variant}.tflite")
        assert classifier.verified and classifier.variant == variant
        probs = np.stack([classifier.invoke(classifier.to_input(p)) for p in pixels])
        figures = manifest.variants[variant].verification
        assert figures.n == len(test)
        assert figures.accuracy == pytest.approx(float((probs.argmax(1) == y).mean()))
        assert figures.agreement == pytest.approx(
            float((probs.argmax(1) == keras_probs.argmax(1)).mean())
        )
        assert figures.max_abs_prob_diff == pytest.approx(
            float(np.abs(probs - calibrated).max()), abs=1e-5
        )
    report = (converted_dir / "conversion_report.md").read_text()
    assert "| int8 | model_int8.tflite |" in report and "not a diagnostic device" in report


def test_int8_io_option_and_accuracy_gate(tiny_run, data_dir, tmp_path):
    out = tmp_path / "int8io"
    result = run_cli(
        "edge-convert",
        tiny_run,
        "--out",
        out,
        "--variants",
        "int8",
        "--int8-io",
        "int8",
        "--calibration-samples",
        "32",
        "--data",
        data_dir,
        "--max-drop",
        "0",
        *TINY_TRUST_ARGS,
        check=False,
    )
    manifest = manifests.read(out)
    entry = manifest.variants["int8"]
    assert entry.input.dtype == "int8" and entry.input.zero_point == -128
    assert entry.input.scale == 1.0
    assert {p.name for p in out.glob("*.tflite")} == {"model_int8.tflite"}
    drop = manifest.reference.accuracy - entry.verification.accuracy
    assert (result.returncode != 0) == (drop > 0), result.stdout + result.stderr


def test_bad_inputs(tiny_run, converted_dir, data_dir, tmp_path):
    assert_clean_error(
        run_cli("edge-convert", tmp_path / "nope", "--out", tmp_path / "o1", check=False),
        "does not exist",
    )
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.keras").write_bytes(b"PK\x03\x04 not really a keras file")
    assert_clean_error(
        run_cli("edge-convert", corrupt, "--out", tmp_path / "o2", check=False),
        "not a readable Keras model",
    )
    (corrupt / "model.keras").write_text("a text file, not an archive\n")
    assert_clean_error(
        run_cli("edge-convert", corrupt, "--out", tmp_path / "o2", check=False),
        "truncated or of another format",
    )
    converted = next(converted_dir.glob("model_*.tflite"))
    assert_clean_error(
        run_cli("edge-convert", converted, "--out", tmp_path / "o2", check=False),
        "is a .tflite file, already converted",
    )
    assert_clean_error(
        run_cli("edge-convert", tiny_run, "--out", converted_dir, check=False), "--overwrite"
    )
    assert_clean_error(
        run_cli(
            "edge-convert", tiny_run, "--out", tmp_path / "o3", "--variants", "int9", check=False
        ),
        "unknown variant 'int9'",
        "did you mean int8",
    )
    assert_clean_error(
        run_cli(
            "edge-convert",
            tiny_run,
            "--out",
            tmp_path / "o4",
            "--variants",
            "int8",
            "--calibration-samples",
            "100000",
            "--data",
            data_dir,
            check=False,
        ),
        "--calibration-samples",
    )
    assert not (tmp_path / "o4" / "model_int8.tflite").exists()
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_run, damaged)
    (damaged / "metrics.json").write_text("[1, 2]")
    assert_clean_error(
        run_cli("edge-convert", damaged, "--out", tmp_path / "o5", check=False),
        "metrics.json: not the JSON object edge-train writes",
    )
    (damaged / "labels.txt").write_bytes(b"\xff\xfe\x00binary")
    assert_clean_error(
        run_cli("edge-convert", damaged, "--out", tmp_path / "o6", "--data", data_dir, check=False),
        "labels.txt: cannot be read as text",
    )
    no_test = tmp_path / "no-test.csv"
    rows = (tiny_run / "split.csv").read_text().splitlines()
    no_test.write_text("\n".join(r for r in rows if not r.endswith(",test")) + "\n")
    assert_clean_error(
        run_cli(
            "edge-convert",
            tiny_run,
            "--out",
            tmp_path / "o7",
            "--split-file",
            no_test,
            "--data",
            data_dir,
            "--no-trust",
            check=False,
        ),
        "no test rows to verify",
        "--no-verify",
    )
    # the refused overwrite left the earlier models untouched
    manifest = manifests.read(converted_dir)
    data = (converted_dir / "model_int8.tflite").read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest.variants["int8"].sha256


def test_rejects_a_model_that_is_not_an_image_classifier(tmp_path, tiny_run):
    import keras

    run = tmp_path / "tabular"
    run.mkdir()
    inputs = keras.Input((10,))
    keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(inputs)).save(
        run / "model.keras"
    )
    shutil.copy(tiny_run / "labels.txt", run)
    result = run_cli("edge-convert", run, "--out", tmp_path / "o", check=False)
    assert_clean_error(result, "not an image classifier")


def test_packed_label_file_is_reproducible():
    import time

    from leukedge.edge_app.metadata import append_files

    first = append_files(b"model bytes", {"labels.txt": b"a\nb\n"})
    time.sleep(2.1)  # zip timestamps have 2-second resolution
    assert append_files(b"model bytes", {"labels.txt": b"a\nb\n"}) == first


PER_TENSOR_LAYERS = (
    "block_14_expand",
    "block_15_expand",
    "block_16_expand",
    "Conv_1",
)  # edge-train's default


def _int8_kernels(model_path) -> dict[str, tuple[object, np.ndarray]]:
    """Each convolution's int8 kernel tensor and its values (BatchNorm folded, dequantized, in
    Keras layout), by Keras layer name, read straight from the flatbuffer."""
    from tensorflow.lite.tools import flatbuffer_utils

    from leukedge.convert.per_tensor import is_convolution

    model = flatbuffer_utils.read_model(str(model_path))
    graph = model.subgraphs[0]
    kernels = {}
    for op in graph.operators:
        if not is_convolution(model, op):
            continue
        tensor = graph.tensors[op.inputs[1]]
        match = re.search(r"/(\w+)_1/(convolution|depthwise)", tensor.name.decode())
        if len(tensor.shape) != 4 or not match:
            continue
        quant = tensor.quantization
        values = (
            np.asarray(model.buffers[tensor.buffer].data)
            .view(np.int8)
            .reshape(tensor.shape)
            .astype(np.float64)
        )
        scales = np.asarray(quant.scale).reshape(
            [-1 if a == quant.quantizedDimension else 1 for a in range(4)]
        )
        values = values * scales
        # TFLite: depthwise (1, h, w, channels), conv (out, h, w, in); Keras: (h, w, channels), (h, w, in, out)
        kernels[match.group(1)] = (
            tensor,
            values[0] if match.group(2) == "depthwise" else values.transpose(1, 2, 3, 0),
        )
    return kernels


def test_trained_kernels_reach_the_int8_model_unchanged(tiny_run, converted_dir):
    """edge-train keeps every kernel on TFLite's int8 grid (frozen ones before training,
    fine-tuned ones after, then refits the head): the int8 model then holds exactly the kernels of
    the Keras model the metrics describe, BatchNormalization folded in. That includes the layers
    trained on one grid per kernel, which the converter stores with one scale."""
    import keras

    from leukedge.train.model import batch_norm_fold

    model = keras.models.load_model(tiny_run / "model.keras", compile=False)
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    int8 = _int8_kernels(converted_dir / "model_int8.tflite")
    errors = {}
    for index, layer in enumerate(backbone.layers):
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        if not depthwise and layer.name not in PER_TENSOR_LAYERS:
            continue
        kernel = layer.get_weights()[0]
        folded = (kernel[..., 0] if depthwise else kernel) * batch_norm_fold(backbone, index)
        assert layer.name in int8, f"no int8 kernel for {layer.name}"
        errors[layer.name] = np.abs(int8[layer.name][1] - folded).max() / np.abs(folded).max()
    assert len(errors) == 17 + len(
        PER_TENSOR_LAYERS
    )  # MobileNetV2's depthwise layers and the shared-grid ones
    # Float rounding only; an unrounded kernel is off by up to half a step (~4e-3 of its max).
    assert max(errors.values()) < 1e-5, errors


def test_kernels_trained_on_one_grid_are_stored_with_one_scale(converted_dir):
    """The per-tensor kernels and only they: every other kernel keeps one scale per channel
    (a kernel not trained on one grid must fail the converter's exactness test)."""
    manifest = manifests.read(converted_dir)
    listed = manifest.variants["int8"].per_tensor_kernels
    kernels = _int8_kernels(converted_dir / "model_int8.tflite")
    assert len(kernels) == 52  # MobileNetV2's convolutions
    one_scale = {
        name for name, (tensor, _) in kernels.items() if len(tensor.quantization.scale) == 1
    }
    assert one_scale == set(PER_TENSOR_LAYERS)
    assert {
        tensor.name.decode() for name, (tensor, _) in kernels.items() if name in one_scale
    } == set(listed)
    for name, (tensor, _) in kernels.items():
        if name not in one_scale:
            assert (
                len(tensor.quantization.scale)
                == tensor.shape[tensor.quantization.quantizedDimension]
            ), name
    assert "one scale for the whole kernel" in (converted_dir / "conversion_report.md").read_text()


def test_calibration_images_default_to_1000_capped_at_the_train_split():
    from leukedge.convert.calibration_images import DEFAULT_CALIBRATION_SAMPLES, calibration_set
    from leukedge.train.dataset import DatasetError, Sample

    def split(counts: dict[str, int]) -> list[Sample]:
        samples = [
            Sample(f"{label}/{i}.jpg", f"{label}{i:05d}", label, "train")
            for label, count in counts.items()
            for i in range(count)
        ]
        return samples + [Sample("val/0.jpg", "v", "Benign", "val")]

    large = split({"Benign": 900, "Pre-B": 1800})
    chosen = calibration_set(large, None, seed=0)
    assert DEFAULT_CALIBRATION_SAMPLES == 1000 and len(chosen) == 1000
    assert {s.split for s in chosen} == {"train"} and len(set(chosen)) == 1000
    by_label = {label: sum(s.label == label for s in chosen) for label in ("Benign", "Pre-B")}
    assert by_label == {"Benign": 333, "Pre-B": 667}  # the train split's 1:2
    assert calibration_set(large, None, seed=0) == chosen  # seeded
    assert calibration_set(large, None, seed=1) != chosen
    assert len(calibration_set(large, 300, seed=0)) == 300

    small = split({"Benign": 40, "Pre-B": 80})
    assert len(calibration_set(small, None, seed=0)) == 120  # the default takes what there is
    with pytest.raises(
        DatasetError, match="only 120 training images for --calibration-samples 500"
    ):
        calibration_set(small, 500, seed=0)  # an explicit count is not silently lowered
    with pytest.raises(DatasetError, match="only 0 training images"):
        calibration_set([Sample("v.jpg", "v", "Benign", "val")], None, seed=0)
