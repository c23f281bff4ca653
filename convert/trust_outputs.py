"""Post-process the converted graph's two outputs: stable names and order, and int8 ranges that
keep the OOD score meaningful for far-out inputs.

Names and order. The TFLite converter names output tensors after the SavedModel signature
("StatefulPartitionedCall:1") and may order them by key; MediaPipe and the Android
Interpreter read outputs by index. `name_outputs` names the tensors "probabilities" and
"ood_score" (what the runtime looks up) and puts probabilities first, so index 0 stays the
classifier output every consumer already reads.

int8 ranges. Full-int8 post-training quantization gives each activation the range it reached
on the calibration images, all from the training lab. A frame unlike them would push the OOD
branch past those ranges and saturate at in-distribution values, possibly below the threshold:
the worst failure for an OOD detector. `widen_ood_ranges` therefore sets the branch's ranges
from the float fit instead of from calibration, so that saturation can only happen above a cap
far beyond the threshold:

- projection y = W z: [min_c m_c - R, max_c m_c + R] per tensor, R = sqrt(element_cap);
- difference y - m_c (when the converter keeps it apart): the exact bound that range implies;
- squared differences (the converter fuses SUB and square into SQUARED_DIFFERENCE):
  [0, element_cap], element_cap = 2 x the float threshold T, fine enough for the many small
  per-dimension terms of an in-distribution frame;
- their sum over dimensions, the minimum over classes and the output: [0, cap], cap = 4 x T.

T is the float threshold at the default retention, or at the retention in use when that is
higher (`convert.trust_fit.range_threshold`): at least the threshold in use, and one value for every
retention up to the default, so lowering the retention never changes the int8 scores.

A coordinate clipped at the edge of y's range is R from every class mean, so its square alone
reads element_cap and every class distance is at least 2 x T: far-out frames
land above the threshold, never at an in-distribution value. Inside the ranges the int8 score
is min(distance, cap) up to rounding (steps element_cap / 255 and cap / 255). Changing these
scales is sound because every op on the branch (FULLY_CONNECTED output, SQUARED_DIFFERENCE,
SUM, REDUCE_MIN, QUANTIZE) derives its requantization from the tensors' scales when the interpreter
prepares it, and no weight or bias is quantized with a branch activation's scale.
"""

from __future__ import annotations

import numpy as np
from tensorflow.lite.tools import flatbuffer_utils

from leukedge.edge_app.trust import OOD_OUTPUT, PROBABILITIES_OUTPUT

SCHEMA = flatbuffer_utils.schema_fb
OPS = SCHEMA.BuiltinOperator
INT8, UINT8 = SCHEMA.TensorType.INT8, SCHEMA.TensorType.UINT8
# Ops that pass values through unchanged: their input and output keep one set of parameters.
PASS_THROUGH = {OPS.RESHAPE, OPS.EXPAND_DIMS, OPS.SQUEEZE}


class OutputError(ValueError):
    """The converted graph does not have the outputs the wrapper defined."""


def _opcode(model_object, op) -> int:
    code = model_object.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def name_outputs(model: bytes, n_classes: int) -> bytes:
    """Name the (1, n_classes) output "probabilities" and the (1, 1) one "ood_score", that order."""
    model_object = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    graph = model_object.subgraphs[0]
    outputs = list(graph.outputs)
    shapes = {index: tuple(graph.tensors[index].shape) for index in outputs}
    probabilities = [i for i in outputs if shapes[i] == (1, n_classes)]
    scores = [i for i in outputs if shapes[i] == (1, 1)]
    if len(outputs) != 2 or len(probabilities) != 1 or len(scores) != 1:
        raise OutputError(
            f"the converted model has outputs {list(shapes.values())}, expected "
            f"(1, {n_classes}) probabilities and a (1, 1) OOD score"
        )
    graph.tensors[probabilities[0]].name = PROBABILITIES_OUTPUT.encode()
    graph.tensors[scores[0]].name = OOD_OUTPUT.encode()
    graph.outputs = np.array([probabilities[0], scores[0]], dtype=np.int32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_object))


def _set_range(tensor, low: float, high: float) -> None:
    low, high = min(low, 0.0), max(high, 0.0)  # TFLite ranges always hold zero exactly
    scale = (high - low) / 255.0
    base = -128 if tensor.type == INT8 else 0
    zero_point = int(np.clip(round(base - low / scale), base, base + 255))
    tensor.quantization.scale = np.array([scale], dtype=np.float32)
    tensor.quantization.zeroPoint = np.array([zero_point], dtype=np.int64)


def widen_ood_ranges(
    model: bytes, projected_means: np.ndarray, cap: float, element_cap: float
) -> tuple[bytes, list[str]]:
    """Set the int8 ranges of the OOD branch as the module doc says; returns the model and the
    ops it changed, from the projection to the output."""
    model_object = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    graph = model_object.subgraphs[0]
    producer = {int(out): op for op in graph.operators for out in op.outputs}
    output = [i for i in graph.outputs if graph.tensors[i].name.decode() == OOD_OUTPUT]
    if not output:
        raise OutputError(f"no {OOD_OUTPUT!r} output: run name_outputs first")
    chain = []  # (opcode, op) from the output back to the projection
    index = int(output[0])
    while True:
        op = producer.get(index)
        if op is None:
            raise OutputError("the OOD output is not computed from a FULLY_CONNECTED projection")
        code = _opcode(model_object, op)
        chain.append((code, op))
        if code == OPS.FULLY_CONNECTED:
            break
        # the variable input: the one with no constant buffer (SUB, SQUARED_DIFFERENCE: the means)
        variable = [
            int(i)
            for i in op.inputs
            if i >= 0 and model_object.buffers[graph.tensors[i].buffer].data is None
        ]
        if len(variable) != 1:
            raise OutputError(
                f"op {_op_name(code)} on the OOD branch has {len(variable)} computed inputs"
            )
        index = variable[0]
    means = np.asarray(projected_means, dtype=np.float64)
    radius = float(np.sqrt(element_cap))
    low, high = float(means.min()) - radius, float(means.max()) + radius
    span = high - low
    stage = "projection"
    names = []
    for code, op in reversed(chain):
        tensor = graph.tensors[op.outputs[0]]
        if (
            tensor.type not in (INT8, UINT8)
            or tensor.quantization is None
            or tensor.quantization.scale is None
        ):
            raise OutputError(f"OOD branch tensor {tensor.name.decode()} is not quantized")
        if code == OPS.FULLY_CONNECTED:
            _set_range(tensor, low, high)
        elif code in PASS_THROUGH or code == OPS.QUANTIZE:
            source = graph.tensors[op.inputs[0]]
            tensor.quantization.scale = np.array(source.quantization.scale, dtype=np.float32)
            shift = (
                128
                if (source.type, tensor.type) == (INT8, UINT8)
                else -128
                if (source.type, tensor.type) == (UINT8, INT8)
                else 0
            )
            tensor.quantization.zeroPoint = (
                np.array(source.quantization.zeroPoint, dtype=np.int64) + shift
            )
        elif code in (OPS.SUB, OPS.ADD):
            stage = "difference"
            _set_range(tensor, -span, span)
        elif code in (OPS.SQUARED_DIFFERENCE, OPS.MUL, OPS.SQUARE):
            stage = "squares"
            _set_range(tensor, 0.0, element_cap)
        elif code in (OPS.SUM, OPS.REDUCE_MIN):
            stage = "distance"
            _set_range(tensor, 0.0, cap)
        else:
            raise OutputError(f"unexpected op {code} on the OOD branch ({stage} stage)")
        names.append(f"{_op_name(code)}:{tensor.name.decode()}")
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_object)), names


def _op_name(code: int) -> str:
    return next((name for name, value in vars(OPS).items() if value == code), str(code))
