"""`edge-bench robustness`: accuracy, and what the app would answer, under realistic field shifts.

Split as `edge-bench run` is: `settings` (what is evaluated: conditions, seeds, floors),
`evaluation` (the loop: shift, quality gate, model outputs, decision rule, rows), `report`
(JSON, CSV, Markdown), `plots` (PNGs) and `cli` (the command). No TensorFlow here.
"""

from leukedge.benchmarks.robustness.evaluation import Results, evaluate, load_models, summarise
from leukedge.benchmarks.robustness.settings import (
    Condition,
    RobustnessSettings,
    conditions,
    image_seed,
)

__all__ = [
    "Condition",
    "Results",
    "RobustnessSettings",
    "conditions",
    "evaluate",
    "image_seed",
    "load_models",
    "summarise",
]
