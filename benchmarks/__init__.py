"""Compare model variants on the target hardware (`edge-bench`). Never imports TensorFlow."""
