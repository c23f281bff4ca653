"""Store one int8 scale per kernel where the trained weights sit on one grid.

Full-int8 TFLite quantizes every convolution kernel per output channel, and each channel costs a
float32 scale and an int64 zero point, for the kernel and again for its int32 bias: 24 bytes.
MobileNetV2 has 17,060 such channels, about 410 KB or 4.6% of the float32 file. Per-tensor int8
(one scale for the whole kernel) is TFLite's original scheme, which every kernel and delegate runs,
but the converter only emits it for all layers or none, and for all layers it ruins the depthwise
convolutions. `edge-train` therefore puts a few wide 1x1 kernels on one shared grid
(`--int8-per-tensor`, after the BatchNormalization fold, which is what the converter quantizes);
the converter then rounds them per channel as usual, and this pass finds such kernels and
stores them with one scale.

The rewrite is exact for such kernels and never worse than the converter's own rounding for any
kernel it accepts: a kernel is taken only if every per-tensor weight lies within half a
per-channel step of the per-channel int8 weight. A kernel that was not trained on one grid fails
that test (a channel at 30% of the widest one passes it for ~30% of its weights) and stays as it is.
"""

from __future__ import annotations

import numpy as np
from tensorflow.lite.tools import flatbuffer_utils

SCHEMA = flatbuffer_utils.schema_fb
KERNEL_OPS = (SCHEMA.BuiltinOperator.CONV_2D, SCHEMA.BuiltinOperator.DEPTHWISE_CONV_2D)
# The converter folds BatchNormalization in float32, so a weight on the grid comes back within a
# few float32 ulps of it, not exactly.
FLOAT_SLACK = 1e-3


def is_convolution(model_object, op) -> bool:
    """Whether `op` is a CONV_2D or DEPTHWISE_CONV_2D (its input 1 is a kernel)."""
    code = model_object.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode) in KERNEL_OPS


def compact_kernels(model: bytes) -> tuple[bytes, list[str]]:
    """`model` with per-channel int8 kernels that sit on one grid stored per tensor.

    Returns the new model and the names of the kernels it rewrote (the model unchanged if none).
    """
    model_object = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    rewritten = []
    for graph in model_object.subgraphs:
        buffer_users = np.bincount(
            [t.buffer for t in graph.tensors], minlength=len(model_object.buffers)
        )
        for op in graph.operators:
            if not is_convolution(model_object, op):
                continue
            kernel = graph.tensors[op.inputs[1]]
            bias = graph.tensors[op.inputs[2]] if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
            tensors = [kernel] + ([bias] if bias is not None else [])
            if any(buffer_users[t.buffer] != 1 for t in tensors):
                continue  # a shared buffer would change under another tensor
            if _to_per_tensor(model_object, graph.tensors[op.inputs[0]], kernel, bias):
                rewritten.append(kernel.name.decode())
    if not rewritten:
        return model, []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_object)), rewritten


def _to_per_tensor(model_object, input_tensor, kernel, bias) -> bool:
    quant = kernel.quantization
    if (
        kernel.type != SCHEMA.TensorType.INT8
        or quant is None
        or quant.scale is None
        or len(quant.scale) < 2
        or np.any(quant.zeroPoint != 0)
    ):
        return False
    scales = np.asarray(quant.scale, dtype=np.float64)
    step = scales.max()
    if step <= 0:
        return False
    data = model_object.buffers[kernel.buffer].data
    weights = np.asarray(data).view(np.int8).reshape(kernel.shape)
    shape = [-1 if axis == quant.quantizedDimension else 1 for axis in range(weights.ndim)]
    ratio = (scales / step).reshape(shape)
    on_grid = weights * ratio  # the per-channel weights in units of the shared step
    shared = np.round(on_grid)
    if np.any(np.abs(on_grid - shared) > 0.5 * ratio + FLOAT_SLACK):
        return False
    if bias is not None:
        if (
            bias.type != SCHEMA.TensorType.INT32
            or bias.quantization is None
            or len(bias.quantization.scale) != len(scales)
        ):
            return False
        input_scale = float(input_tensor.quantization.scale[0])
        bias_values = (
            np.asarray(model_object.buffers[bias.buffer].data).view("<i4").astype(np.float64)
        )
        new_scale = input_scale * step
        new_bias = np.round(bias_values * np.asarray(bias.quantization.scale) / new_scale)
        model_object.buffers[bias.buffer].data = new_bias.astype("<i4").view(np.uint8)
        _one_scale(bias, new_scale)
    model_object.buffers[kernel.buffer].data = (
        np.clip(shared, -127, 127).astype(np.int8).reshape(-1).view(np.uint8)
    )
    _one_scale(kernel, step)
    return True


def _one_scale(tensor, scale: float) -> None:
    tensor.quantization.scale = np.array([scale], dtype=np.float32)
    tensor.quantization.zeroPoint = np.array([0], dtype=np.int64)
    tensor.quantization.quantizedDimension = 0
