"""Stage 1: train the MobileNetV2 classifier (`edge-train`).

Public surface: `TrainConfig` and `train` (TensorFlow is imported only when `train` is called,
so `train.dataset` and `train.metrics` stay usable on machines without TensorFlow).
"""

from leukedge.train.config import TrainConfig

__all__ = ["TrainConfig", "train"]


def train(config: TrainConfig, echo=print) -> dict:
    from leukedge.train.training import train as run

    return run(config, echo)
