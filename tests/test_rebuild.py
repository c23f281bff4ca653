"""Rebuilding a Keras model from edge-convert's int8 file (scripts/rebuild_keras_from_tflite.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, assert_clean_error, run_cli
from leukedge.train.dataset import load_pixels, read_split

SCRIPT = REPO / "scripts" / "rebuild_keras_from_tflite.py"


def rebuild(*args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=900
    )
    if check and result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr[-4000:])
    return result


@pytest.mark.slow
def test_rebuilt_model_computes_what_the_int8_model_computes(tiny_run, data_dir, tmp_path):
    import keras

    from leukedge.train.model import batch_norm_fold

    # The rebuild reads the plain classifier graph: a conversion without the trust outputs.
    converted_dir = tmp_path / "plain"
    run_cli(
        "edge-convert",
        tiny_run,
        "--out",
        converted_dir,
        "--variants",
        "int8",
        "--no-trust",
        "--calibration-samples",
        "64",
        "--data",
        data_dir,
        "--max-drop",
        "100",
    )

    out = tmp_path / "rebuilt"
    rebuild(
        converted_dir / "model_int8.tflite",
        "--out",
        out,
        "--alpha",
        "0.35",
        "--data",
        data_dir,
        "--labels",
        tiny_run / "labels.txt",
        "--split-file",
        tiny_run / "split.csv",
    )
    assert {p.name for p in out.iterdir()} == {
        "model.keras",
        "labels.txt",
        "split.csv",
        "metrics.json",
    }
    original = keras.models.load_model(tiny_run / "model.keras", compile=False)
    rebuilt = keras.models.load_model(out / "model.keras", compile=False)
    base, rebuilt_base = original.layers[2], rebuilt.layers[2]
    assert [layer.name for layer in rebuilt_base.layers] == [layer.name for layer in base.layers]
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in original.layers]

    # Each rebuilt kernel is the original one with its BatchNormalization folded in, rounded to
    # int8: within half a quantization step (per output channel) of the folded original.
    for index, layer in enumerate(base.layers):
        if not isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D):
            continue
        axis = 2 if isinstance(layer, keras.layers.DepthwiseConv2D) else 3
        shape = [-1 if i == axis else 1 for i in range(4)]
        folded = layer.kernel.numpy() * batch_norm_fold(base, index).reshape(shape)
        others = tuple(i for i in range(4) if i != axis)
        half_step = np.abs(folded).max(axis=others, keepdims=True) / 127 / 2
        error = np.abs(rebuilt_base.layers[index].kernel.numpy() - folded)
        assert np.all(error <= half_step * 1.01 + 1e-7), layer.name

    # Top-1 on the test split: the rebuilt model agrees with the original Keras model as often as
    # the int8 model does (the int8 file is all it was built from).
    split = read_split(tiny_run / "split.csv", data_dir)
    test = [s for s in split if s.split == "test"]
    pixels = load_pixels(test, data_dir, 96).astype(np.float32)
    original_top1 = original.predict(pixels, verbose=0).argmax(axis=1)
    rebuilt_top1 = rebuilt.predict(pixels, verbose=0).argmax(axis=1)
    manifest = json.loads((converted_dir / "manifest.json").read_text())
    int8_agreement = manifest["variants"]["int8"]["verification"]["agreement"]
    assert (rebuilt_top1 == original_top1).mean() >= int8_agreement - 1 / len(test)

    metrics = json.loads((out / "metrics.json").read_text())
    against = metrics["rebuilt_from"]["verification_against_tflite"]["test"]
    assert against["n"] == len(test) and against["top1_agreement"] >= 1 - 1 / len(test)
    assert against["max_abs_prob_diff"] < 0.15
    labels = metrics["labels"]
    y_true = np.array([labels.index(s.label) for s in test])
    assert metrics["test"]["accuracy"] == pytest.approx((rebuilt_top1 == y_true).mean())

    # Another width does not fit the file: a clear error, and nothing written.
    result = rebuild(
        converted_dir / "model_int8.tflite",
        "--out",
        tmp_path / "wide",
        "--alpha",
        "1.0",
        "--data",
        data_dir,
        "--labels",
        tiny_run / "labels.txt",
        "--split-file",
        tiny_run / "split.csv",
        check=False,
    )
    assert_clean_error(result, "--alpha")
    assert not (tmp_path / "wide").exists()


def test_bad_inputs(tmp_path):
    assert_clean_error(
        rebuild(tmp_path / "nope.tflite", "--out", tmp_path / "o", check=False), "does not exist"
    )
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    (tmp_path / "m.tflite").write_bytes(b"not a model")
    assert_clean_error(
        rebuild(tmp_path / "m.tflite", "--out", tmp_path / "full", check=False), "--overwrite"
    )
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    assert_clean_error(
        rebuild(tmp_path / "m.tflite", "--out", tmp_path / "o", check=False),
        "not a readable .tflite file",
    )
    assert not (tmp_path / "o").exists()
