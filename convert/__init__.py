"""Stage 2: convert a trained Keras model to verified TFLite variants (`edge-convert`)."""
