"""Rebuild the Keras model of a run from the int8 .tflite that edge-convert made of it.

The released default model was trained on another machine and its model.keras was lost; only
the converted files survived. The converter now adds parts to the graph (calibrated output, OOD
score), so it must be able to convert that network again. Retraining does not reproduce it
(same recipe and split here: 98.23% test accuracy, the release: 99.29%), but the int8 file holds
every weight: this module puts them back into the project's own architecture.

What the converter did, undone here:
- Every BatchNormalization was folded into the convolution before it (kernel times gamma/sigma,
  bias = beta - mean*gamma/sigma). The rebuilt convolution gets the folded kernel and its BN
  becomes an identity plus that bias, so Keras computes the same function.
- Kernels are int8 with one scale per output channel (or one per kernel); biases are int32
  in units of input_scale * kernel_scale, which is the scale the int8 kernels add them in.
- TFLite layouts: CONV_2D kernel [out, h, w, in], DEPTHWISE_CONV_2D [1, h, w, channels],
  FULLY_CONNECTED [out, in].

The rebuilt model carries the int8 weights exactly (in float), so it agrees with the int8 model
up to the int8 rounding of activations.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from tensorflow.lite.tools import flatbuffer_utils

SCHEMA = flatbuffer_utils.schema_fb
OPS = {
    SCHEMA.BuiltinOperator.CONV_2D: "CONV_2D",
    SCHEMA.BuiltinOperator.DEPTHWISE_CONV_2D: "DEPTHWISE_CONV_2D",
    SCHEMA.BuiltinOperator.FULLY_CONNECTED: "FULLY_CONNECTED",
}
# The Keras layer class each TFLite op comes from (exact types: DepthwiseConv2D is no Conv2D).
LAYER_TYPES = {
    "CONV_2D": keras.layers.Conv2D,
    "DEPTHWISE_CONV_2D": keras.layers.DepthwiseConv2D,
    "FULLY_CONNECTED": keras.layers.Dense,
}
NUMPY_TYPES = {
    SCHEMA.TensorType.INT8: np.int8,
    SCHEMA.TensorType.INT32: np.int32,
    SCHEMA.TensorType.FLOAT32: np.float32,
}


class RebuildError(ValueError):
    """The .tflite file and the Keras architecture do not fit together."""


@dataclass
class TfliteKernel:
    """The dequantized weights of one kernel op, already in Keras layout."""

    op: str
    name: str  # the kernel tensor's name in the .tflite (names the layer it came from)
    kernel: np.ndarray
    bias: np.ndarray | None


def _scales(tensor, channels: int) -> np.ndarray:
    quant = tensor.quantization
    if quant is None or quant.scale is None or len(quant.scale) == 0:
        raise RebuildError(f"tensor {tensor.name.decode()} is not quantized")
    if quant.zeroPoint is not None and np.any(np.asarray(quant.zeroPoint) != 0):
        raise RebuildError(
            f"tensor {tensor.name.decode()} has a non-zero zero point (not a weight tensor)"
        )
    scale = np.asarray(quant.scale, dtype=np.float64)
    if len(scale) not in (1, channels):
        raise RebuildError(
            f"tensor {tensor.name.decode()} has {len(scale)} scales for {channels} channels"
        )
    return np.broadcast_to(scale, (channels,))


def _values(model_object, tensor) -> np.ndarray:
    data = model_object.buffers[tensor.buffer].data
    if tensor.type not in NUMPY_TYPES or data is None or len(data) == 0:
        raise RebuildError(
            f"tensor {tensor.name.decode()} is not a stored int8/int32/float32 constant "
            "(only int8 and float32 .tflite files can be rebuilt, not fp16)"
        )
    return np.asarray(data).view(NUMPY_TYPES[tensor.type]).reshape(tensor.shape)


def read_kernels(tflite: bytes) -> list[TfliteKernel]:
    """The kernel ops' float weights, in execution order, in Keras layout."""
    try:
        model_object = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    except Exception as error:
        raise RebuildError(f"not a readable .tflite file ({type(error).__name__})") from None
    graph = model_object.subgraphs[0]
    kernels = []
    for op in graph.operators:  # TFLite stores operators in execution order
        code = model_object.operatorCodes[op.opcodeIndex]
        kind = OPS.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        if kind is None:
            continue
        source, weights = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]]
        bias = graph.tensors[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        raw = _values(model_object, weights)
        # The channel axis the scales run along: output channels, last for depthwise.
        channels = raw.shape[3] if kind == "DEPTHWISE_CONV_2D" else raw.shape[0]
        kernel_scale = None
        if weights.type == SCHEMA.TensorType.FLOAT32:
            kernel = raw.astype(np.float64)
        else:
            kernel_scale = _scales(weights, channels)
            axis_shape = (
                [1, 1, 1, -1] if kind == "DEPTHWISE_CONV_2D" else [-1] + [1] * (raw.ndim - 1)
            )
            kernel = raw * kernel_scale.reshape(axis_shape)
        bias_values = None
        if bias is not None:
            stored = _values(model_object, bias)
            if bias.type == SCHEMA.TensorType.FLOAT32:
                bias_values = stored.astype(np.float64)
            else:
                if (
                    kernel_scale is None
                    or source.quantization is None
                    or not len(source.quantization.scale)
                ):
                    raise RebuildError(
                        f"op on {weights.name.decode()}: an int32 bias needs quantized "
                        "input and kernel"
                    )
                # The int8 kernels add the bias in the accumulator's units: input x kernel scale.
                bias_values = stored * float(source.quantization.scale[0]) * kernel_scale
        # Keras layouts: Conv2D [h, w, in, out], DepthwiseConv2D [h, w, ch, 1], Dense [in, out].
        kernel = kernel.T if kind == "FULLY_CONNECTED" else kernel.transpose(1, 2, 3, 0)
        kernels.append(
            TfliteKernel(
                kind,
                weights.name.decode(),
                kernel.astype(np.float32),
                None if bias_values is None else bias_values.astype(np.float32),
            )
        )
    return kernels


def io_sizes(tflite: bytes) -> tuple[int, int]:
    """(input image size, number of outputs) of a one-input, one-output image classifier."""
    try:
        graph = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite)).subgraphs[0]
    except Exception as error:
        raise RebuildError(f"not a readable .tflite file ({type(error).__name__})") from None
    image, output = (list(graph.tensors[i].shape) for i in (graph.inputs[0], graph.outputs[0]))
    if len(image) != 4 or image[1] != image[2] or image[3] != 3 or len(output) != 2:
        raise RebuildError(f"not an image classifier: input shape {image}, output shape {output}")
    return int(image[1]), int(output[1])


def kernel_layers(model: keras.Model) -> list[tuple[keras.layers.Layer, keras.Model]]:
    """(layer, the model holding it) for every Conv2D, DepthwiseConv2D and Dense, in layer order,
    nested models included (the backbone is one layer of the classifier)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += kernel_layers(layer)
        elif type(layer) in LAYER_TYPES.values():
            found.append((layer, model))
    return found


def following_batch_norm(layer: keras.layers.Layer, parent: keras.Model):
    """The BatchNormalization that takes `layer`'s output directly, or None."""
    index = parent.layers.index(layer)
    following = parent.layers[index + 1] if index + 1 < len(parent.layers) else None
    if isinstance(following, keras.layers.BatchNormalization) and following.input is layer.output:
        return following
    return None


def load_tflite_weights(model: keras.Model, tflite: bytes) -> int:
    """Put the weights of `tflite` (edge-convert's int8 or float32 file of the same architecture)
    into `model`. Returns how many layers were set; raises RebuildError on any mismatch."""
    kernels = read_kernels(tflite)
    layers = kernel_layers(model)
    if len(kernels) != len(layers):
        raise RebuildError(
            f"the .tflite has {len(kernels)} convolution/dense ops, the Keras model "
            f"{len(layers)} such layers: not the same architecture"
        )
    for index, (tfl, (layer, parent)) in enumerate(zip(kernels, layers, strict=True)):
        where = f"op {index} ({tfl.op} {tfl.name}) -> layer {layer.name}"
        if type(layer) is not LAYER_TYPES[tfl.op]:
            raise RebuildError(f"{where}: the layer is a {type(layer).__name__}")
        if tuple(layer.kernel.shape) != tfl.kernel.shape:
            raise RebuildError(
                f"{where}: kernel shape {tfl.kernel.shape} does not fit "
                f"{tuple(layer.kernel.shape)} (another --alpha or image size?)"
            )
        bias = (
            tfl.bias
            if tfl.bias is not None
            else np.zeros(tfl.kernel.shape[-2 if tfl.op == "DEPTHWISE_CONV_2D" else -1], np.float32)
        )
        norm = following_batch_norm(layer, parent)
        if layer.use_bias:
            if norm is not None:
                raise RebuildError(
                    f"{where}: a layer with its own bias before a BatchNormalization "
                    "is not supported"
                )
            layer.set_weights([tfl.kernel, bias])
            continue
        if norm is None:
            if np.any(bias != 0):
                raise RebuildError(
                    f"{where}: the op has a bias but the layer has none and no "
                    "BatchNormalization after it"
                )
            layer.set_weights([tfl.kernel])
            continue
        layer.set_weights([tfl.kernel])
        # The converter folded this BN into the kernel: it becomes x * 1 + bias. The variance is
        # 1 - epsilon so that BN divides by sqrt(1 - epsilon + epsilon) = 1.
        values = ([np.ones_like(bias)] if norm.scale else []) + ([bias] if norm.center else [])
        if not norm.center and np.any(bias != 0):
            raise RebuildError(f"{where}: {norm.name} has no beta to hold the folded bias")
        values += [np.zeros_like(bias), np.full_like(bias, 1.0 - norm.epsilon)]
        norm.set_weights(values)
    return len(layers)


def _predict_tflite(model_path: Path, pixels: np.ndarray) -> np.ndarray:
    from leukedge.edge_app.runtime import Classifier

    classifier = Classifier(model_path, allow_unverified=True)
    return np.stack([classifier.invoke(classifier.to_input(p)) for p in pixels])


def rebuild_run(
    tflite_path: Path,
    out_dir: Path,
    alpha: float = 1.0,
    dropout: float = 0.2,
    labels_file: Path | None = None,
    split_file: Path | None = None,
    data_dir: Path | None = None,
    overwrite: bool = False,
    echo=print,
) -> dict:
    """Write an edge-train-like run folder (model.keras, labels.txt, split.csv, metrics.json)
    rebuilt from `tflite_path`, verified on the split's test images against the .tflite itself.
    Returns metrics.json's content."""
    from leukedge.train import dataset
    from leukedge.train.metrics import classification_metrics
    from leukedge.train.model import build_backbone, build_classifier
    from leukedge.train.run_dir import check_out_dir, publish, staging_dir

    tflite_path, out_dir = Path(tflite_path), Path(out_dir)
    check_out_dir(out_dir, overwrite)
    data = tflite_path.read_bytes()
    size, n_classes = io_sizes(data)
    labels_file = Path(labels_file or tflite_path.parent / "labels.txt")
    split_file = Path(split_file or tflite_path.parent / "split.csv")
    if not labels_file.is_file():
        raise RebuildError(f"labels file {labels_file} does not exist: pass --labels")
    labels = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
    data_dir = Path(data_dir) if data_dir else dataset.default_data_dir()
    samples = dataset.read_split(split_file, data_dir)
    if n_classes != len(labels):
        raise RebuildError(
            f"{tflite_path} has {n_classes} outputs but {labels_file} lists {len(labels)} labels"
        )
    model = build_classifier(build_backbone(alpha, size, "none"), n_classes, dropout)
    layers = load_tflite_weights(model, data)
    echo(f"set {layers} layers from {tflite_path.name}")

    metrics: dict = {"labels": labels}
    agreement = {}
    for split in ("val", "test"):
        chosen = [s for s in samples if s.split == split]
        if not chosen:
            raise RebuildError(f"{split_file} has no {split} images to verify with")
        pixels = dataset.load_pixels(chosen, data_dir, size)
        y_true = np.array([labels.index(s.label) for s in chosen], dtype=np.int64)
        keras_probs = model.predict(pixels.astype(np.float32), batch_size=32, verbose=0)
        tflite_probs = _predict_tflite(tflite_path, pixels)
        metrics[split] = classification_metrics(y_true, keras_probs.argmax(axis=1), labels)
        agreement[split] = {
            "n": len(chosen),
            "top1_agreement": float(
                (keras_probs.argmax(axis=1) == tflite_probs.argmax(axis=1)).mean()
            ),
            "max_abs_prob_diff": float(np.abs(keras_probs - tflite_probs).max()),
            "tflite_accuracy": float((tflite_probs.argmax(axis=1) == y_true).mean()),
        }
        echo(
            f"{split}: Keras accuracy {metrics[split]['accuracy']:.4f}, .tflite "
            f"{agreement[split]['tflite_accuracy']:.4f}, top-1 agreement "
            f"{agreement[split]['top1_agreement']:.4f}, max |prob diff| "
            f"{agreement[split]['max_abs_prob_diff']:.4f}"
        )
    metrics.update(
        {
            "data": {"root": str(data_dir)},
            "settings": {
                "alpha": alpha,
                "image_size": size,
                "dropout": dropout,
                "weights": "none",
                "split_file": str(split_file),
            },
            "rebuilt_from": {
                "file": str(tflite_path),
                "sha256": hashlib.sha256(data).hexdigest(),
                "layers_set": layers,
                "how": "weights dequantized from the int8 file; BatchNormalization folded "
                "(identity plus the folded bias)",
                "verification_against_tflite": agreement,
            },
        }
    )
    staging = staging_dir(out_dir)
    try:
        model.save(staging / "model.keras")
        (staging / "labels.txt").write_text("\n".join(labels) + "\n")
        shutil.copyfile(split_file, staging / "split.csv")
        (staging / "metrics.json").write_text(
            json.dumps(metrics, indent=2) + "\n"
        )  # last: run complete
        publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return metrics
