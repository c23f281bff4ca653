"""Training settings: one dataclass, every field with its default and meaning."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # widths Keras publishes MobileNetV2 weights for
STRATEGIES = ("default", "mirrored", "multiworker")


class WeightsError(ValueError):
    """The requested backbone weights cannot be found or do not fit the model."""


class ModelFileError(ValueError):
    """A saved model (model.keras) cannot be read: the message names the file and what to pass."""


class SettingsError(ValueError):
    """A training setting does not fit the model being built."""


@dataclass
class TrainConfig:
    data_dir: Path  # dataset root (Kaggle layout) or a folder of class folders
    out_dir: Path  # run folder; everything the run produces goes here
    subset: str = "original"  # Kaggle sub-folder: original (as captured) or segmented
    alpha: float = 1.0  # MobileNetV2 width multiplier
    image_size: int = 224  # square model input side, pixels
    epochs: int = 30  # frozen-backbone epochs (head only, on cached backbone features)
    # Epochs with the top of the backbone unfrozen, 0 to skip. 12 rather than 20 since the fused
    # augmentation: the same mean test accuracy over three seeds, int8 = Keras on all three, in
    # 0.31x the time (docs/training.md, "Fused augmentation").
    fine_tune_epochs: int = 12
    fine_tune_from: int = (
        54  # first backbone layer index to unfreeze (of ~154): block_6, the 14x14 stage
    )
    batch_size: int = 32
    learning_rate: float = 1e-3  # head phase (Adam)
    fine_tune_learning_rate: float = 1e-4  # fine-tuning phase (Adam, cosine decay)
    dropout: float = 0.2  # before the softmax layer
    label_smoothing: float = 0.1
    int8_grid: bool = True  # kernels on TFLite's int8 grid: frozen ones before training, all after
    int8_refit_epochs: int = (
        10  # head epochs on the all-int8-grid backbone after fine-tuning (Adam, fine-tune rate)
    )
    # Wide 1x1 layers rounded to one int8 grid per kernel instead of per channel (with int8_grid):
    # edge-convert stores them with one scale, 24 bytes less per channel (4,160 here, ~100 KB).
    int8_per_tensor_layers: tuple[str, ...] = (
        "block_14_expand",
        "block_15_expand",
        "block_16_expand",
        "Conv_1",
    )
    patience: int = 8  # early stopping on validation loss, best weights restored
    weights: str = "imagenet"  # imagenet | none | path to a no-top .h5 file
    seed: int = 0
    split_file: Path | None = None  # reuse this split.csv exactly instead of making one
    limit_per_class: int | None = None  # use only the first N images of each class (quick runs)
    strategy: str = "default"  # tf.distribute strategy: default | mirrored | multiworker
    # Knowledge distillation: trained models (run folders or .tflite files with labels.txt and
    # split.csv beside them) whose mean probabilities, softened at `distill_temperature`, are
    # learned alongside the labels; `distill_weight` is the share of the soft-target term in the
    # loss. Empty: no distillation; more than one: an ensemble teacher (distill.py).
    teachers: tuple[Path, ...] = ()
    distill_temperature: float = 4.0
    distill_weight: float = 0.7
    # The teacher scores each augmented view the student sees, not once the clean image (distill.py).
    distill_consistent: bool = False
    overwrite: bool = False  # replace a non-empty out_dir
    augment: dict = field(
        default_factory=lambda: {
            "flip": "horizontal_and_vertical",
            "rotation": 0.5,  # fraction of a full turn, both ways: cells have no "up"
            "zoom": 0.2,
            "brightness": 0.15,
            "contrast": 0.15,
            "saturation": 0.15,
            "hue": 0.04,  # stain tint varies between labs and microscopes
            "blur_sigma": 1.5,  # pixels: focus varies between microscopes and technicians
            "noise_sigma": 10.0,  # on 0..255: small camera sensors are noisy
        }
    )
