"""Official FlatBuffers classes generated from the TFLite and TFLite Metadata schemas.

Copied unmodified from the tflite-support 0.4.4 wheel
(tensorflow_lite_support/metadata/{metadata_schema,schema}_py_generated.py, Apache-2.0,
see LICENSE here). tflite-support itself cannot be installed beside TensorFlow 2.21 (it pins
protobuf < 4 and numpy < 2), but these two files need only the `flatbuffers` package, so both
the writer (convert) and the reader (edge_app, on the Pi) use them.
"""
