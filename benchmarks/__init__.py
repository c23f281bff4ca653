"""Compare model variants on the target hardware (`edge-bench`). Never imports TensorFlow.

Shared with `edge-bench robustness`: `benchmarks.models` (which models, by variant name) and
`benchmarks.evaluation` (which labelled images, predictions, scores).
"""
