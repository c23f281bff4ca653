"""Stage 1: train the MobileNetV2 classifier (`edge-train`), and the shared dataset/metrics layer.

Public surface: `TrainConfig` and `train` (TensorFlow is imported only when `train` is called),
and the TensorFlow-free layer every later stage reuses: `train.dataset` (labels, splits, image
loading) and `train.metrics` (`classification_metrics`, behind every accuracy figure).
"""

from leukedge.edge_app.facade import lazy_exports
from leukedge.train.config import TrainConfig

_EXPORTS = {
    "classification_metrics": "leukedge.train.metrics",
    "DatasetError": "leukedge.train.dataset",
    "default_data_dir": "leukedge.train.dataset",
    "read_split": "leukedge.train.dataset",
    "load_pixels": "leukedge.train.dataset",
}
__all__ = ["TrainConfig", "train", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


def train(config: TrainConfig, echo=print) -> dict:
    from leukedge.train.training import train as run

    return run(config, echo)
