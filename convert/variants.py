"""The four TFLite variants and how the TFLite converter makes each one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from leukedge.edge_app.manifest import CONVERTED_VARIANTS, DYNAMIC, FP16, FP32, INT8

VARIANTS = CONVERTED_VARIANTS  # the names are defined once, in leukedge.edge_app.manifest
INT8_IO = ("uint8", "int8", "float32")
DESCRIPTIONS = {
    FP32: "float32 weights and activations (the reference)",
    FP16: "float16 weights, float32 compute",
    DYNAMIC: "int8 weights, float activations (dynamic-range quantization)",
    INT8: "int8 weights and activations, calibrated on training images",
}


def representative_dataset(
    pixels: np.ndarray, progress: Callable | None = None
) -> Callable[[], Iterator]:
    """Calibration frames fed exactly as in production: raw RGB pixels, batch of one.

    The first frame gets one black and one white pixel, so the calibrated input range is the
    full 0..255 a camera produces. That makes the uint8 input's quantization scale 1, zero
    point 0: a camera frame then goes into the model with no arithmetic at all.
    """

    def generate() -> Iterator[list[np.ndarray]]:
        frames = progress(range(len(pixels))) if progress else range(len(pixels))
        for index in frames:
            frame = pixels[index].astype(np.float32)
            if index == 0:
                frame[0, 0], frame[0, 1] = 0.0, 255.0
            yield [frame[np.newaxis]]

    return generate


def convert_variant(
    saved_model: Path, variant: str, calibration: Callable | None = None, int8_io: str = "uint8"
) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if variant == FP16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == DYNAMIC:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == INT8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}[int8_io]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    elif variant != FP32:
        raise ValueError(f"unknown variant {variant!r}")
    return converter.convert()
