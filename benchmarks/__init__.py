"""Stage 4: compare model variants on the target hardware (`edge-bench`). Never imports TensorFlow.

Shared with `edge-bench robustness`: `benchmarks.models` (which models, by variant name) and
`benchmarks.evaluation` (which labelled images, predictions, scores). Names load on first use.
"""

from leukedge.edge_app.facade import lazy_exports

_EXPORTS = {
    "ModelEntry": "leukedge.benchmarks.models",
    "discover_models": "leukedge.benchmarks.models",
    "EvalSet": "leukedge.benchmarks.evaluation",
    "resolve_eval_set": "leukedge.benchmarks.evaluation",
    "BenchSettings": "leukedge.benchmarks.runner",
    "BenchResult": "leukedge.benchmarks.runner",
    "run_benchmark": "leukedge.benchmarks.runner",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
