"""Attach TFLite Model Metadata and the label file to a converted model.

Why not a metadata-writer library: tflite-support's writers need protobuf < 4 and numpy < 2,
mediapipe 0.10's need protobuf 4, and recent mediapipe wheels ship the writer code without its
native helper; none can share an environment with TensorFlow 2.21. So the metadata flatbuffer
is built with the official generated schema classes (edge_app/_vendor, see edge_app.metadata),
and the model itself is re-serialised with TensorFlow's own current TFLite schema classes
(flatbuffer_utils), the same way tflite-support's MetadataPopulator does it. The test suite
checks that MediaPipe Tasks' ImageClassifier, a real consumer, reads the result.
"""

from __future__ import annotations

from tensorflow.lite.tools import flatbuffer_utils

from leukedge.edge_app.metadata import (
    METADATA_NAME,
    ModelMetadata,
    append_files,
    metadata_flatbuffer,
)


def with_metadata(
    model: bytes, info: ModelMetadata, files: dict[str, bytes] | None = None
) -> bytes:
    """`model` with `info` in its TFLITE_METADATA buffer, and labels.txt and `files` (the model-level
    associated files `info.model_files` names, e.g. the trust parameters) packed after it."""
    model_object = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    schema = flatbuffer_utils.schema_fb
    buffer = schema.BufferT()
    buffer.data = list(metadata_flatbuffer(info))
    model_object.metadata = [
        m for m in (model_object.metadata or []) if m.name.decode() != METADATA_NAME
    ]
    model_object.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model_object.buffers) - 1
    model_object.metadata.append(entry)
    packed = flatbuffer_utils.convert_object_to_bytearray(model_object)
    missing = set(info.model_files) ^ set(files or {})
    if missing:
        raise ValueError(
            f"associated files {sorted(missing)} must be both named in the metadata and given"
        )
    return append_files(
        packed, {info.label_file: ("\n".join(info.labels) + "\n").encode(), **(files or {})}
    )
