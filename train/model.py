"""Model building blocks: MobileNetV2 backbone with preprocessing inside, a small head."""

from __future__ import annotations

import os
import sys
import zipfile
from collections.abc import Callable, Collection
from pathlib import Path

import keras
import numpy as np

from leukedge.train.config import ModelFileError, SettingsError, WeightsError

WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
# The project's shared folder sits beside the checkout (../shared), as the dataset does.
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"


def load_saved(path: Path) -> keras.Model:
    """The model.keras edge-train wrote, uncompiled; ModelFileError saying why it is not one.

    Keras says "File not found" for a truncated archive and "File format not supported" for a
    .tflite, which send users looking in the wrong place."""
    path = Path(path)
    if path.suffix == ".tflite":
        raise ModelFileError(
            f"{path} is a .tflite file, already converted: pass an edge-train run folder or its "
            "model.keras"
        )
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path} is not a readable Keras model (a .keras file is a zip archive; this one is "
            "truncated or of another format): use the model.keras edge-train wrote"
        )
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:
        raise ModelFileError(
            f"{path} is not a readable Keras model "
            f"({type(error).__name__}: {str(error).splitlines()[0][:150]})"
        ) from None


def imagenet_weights_file(alpha: float, echo: Callable[[str], None] | None = None) -> Path:
    """The no-top ImageNet weights for `alpha`, found in this order (and `echo` says where):

    1. the Keras cache ($KERAS_HOME/models, else ~/.keras/models);
    2. $LEUKEDGE_WEIGHTS: the file itself, or a folder holding it;
    3. ../shared/weights/ beside the checkout (where the project's shared data sits);
    4. a download into the Keras cache.

    Keras would look for a size-specific file (`_160_` for a 160 input); no-top weights fit any
    input size, so the 224 file is always used.
    """
    echo = echo or (lambda message: print(message, file=sys.stderr))
    name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_224_no_top.h5"
    cache_dir = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    env = os.environ.get("LEUKEDGE_WEIGHTS")
    candidates = [("the Keras cache", cache_dir / name)]
    if env:
        candidates.append(
            ("$LEUKEDGE_WEIGHTS", Path(env) if Path(env).is_file() else Path(env) / name)
        )
    candidates.append(("../shared/weights beside the checkout", SHARED_WEIGHTS / name))
    for where, path in candidates:
        if path.is_file():
            echo(f"ImageNet weights: {path.name} from {where}")
            return path
    try:
        path = Path(keras.utils.get_file(name, WEIGHTS_URL + name, cache_subdir="models"))
    except Exception as error:  # no network, proxy, disk: all mean the same to the user
        looked = ", ".join(str(path) for _, path in candidates)
        raise WeightsError(
            f"ImageNet weights {name} are not in the Keras cache, $LEUKEDGE_WEIGHTS or "
            f"../shared/weights (looked at {looked}) and could not be downloaded "
            f"({type(error).__name__}). Copy the file to one of them (see ../shared/weights/README.md), "
            "set LEUKEDGE_WEIGHTS=/path/to/file.h5 or pass --weights PATH"
        ) from None
    echo(f"ImageNet weights: {name} downloaded into the Keras cache ({path.parent})")
    return path


def build_backbone(alpha: float, image_size: int, weights: str) -> keras.Model:
    weights_path = None
    if weights == "imagenet":
        weights_path = str(imagenet_weights_file(alpha))
    elif weights != "none":
        if not Path(weights).is_file():
            raise WeightsError(
                f"weights file {weights} does not exist (use imagenet, none or a path)"
            )
        weights_path = weights
    base = keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3), alpha=alpha, include_top=False, weights=None
    )
    if weights_path:
        try:
            base.load_weights(weights_path)
        except Exception as error:
            raise WeightsError(
                f"weights file {weights_path} does not fit MobileNetV2 alpha {alpha} "
                f"({type(error).__name__}: {str(error).splitlines()[0][:160]})"
            ) from None
    base.trainable = False
    return base


def snap_to_int8_grid(
    base: keras.Model, before_layer: int | None = None, per_tensor: Collection[str] = ()
) -> int:
    """Round convolution kernels to the int8 grid full-int8 TFLite will use.

    Post-training int8 rounds every kernel per output channel to 255 levels. Measured on our
    fine-tuned models, that rounding in the early, always-frozen depthwise layers alone flips
    predictions (weight-only int8 of blocks 0-5: 2 of 283 test images; all layers: 5), because the
    trained head learned on features of the unrounded kernels. Rounding the frozen kernels before
    training means the head learns on exactly what the int8 model computes there: the converter
    folds BatchNormalization (one factor per output channel) into the kernel and rounds again,
    which lands on the same grid. Layers from `before_layer` on are left as they are (they are
    fine-tuned later).

    Layers named in `per_tensor` go onto one grid for the whole kernel instead, taken after the
    BatchNormalization fold (a per-channel factor would break a shared grid). `edge-convert`
    then stores them with one scale instead of one per channel (convert/per_tensor.py), which
    saves 24 bytes per channel in the int8 file. Returns how many layers were rounded.
    """
    unknown = sorted(set(per_tensor) - {layer.name for layer in base.layers})
    if unknown:
        raise SettingsError(
            f"--int8-per-tensor: the backbone has no layer named {', '.join(unknown)} "
            "(use Keras MobileNetV2 layer names such as Conv_1, block_16_expand, or 'none')"
        )
    rounded = 0
    for index, layer in enumerate(base.layers):
        if before_layer is not None and index >= before_layer:
            break
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            axis = 2  # kernel (h, w, channels, multiplier): one scale per channel
        elif isinstance(layer, keras.layers.Conv2D):
            axis = 3  # kernel (h, w, in, out): one scale per output channel
        else:
            continue
        weights = layer.get_weights()
        kernel = weights[0]
        if layer.name in per_tensor:
            fold = batch_norm_fold(base, index).reshape(
                [-1 if i == axis else 1 for i in range(kernel.ndim)]
            )
            folded = kernel * fold
            step = max(float(np.abs(folded).max()) / 127.0, np.finfo(np.float32).tiny)
            weights[0] = (np.round(folded / step) * step / fold).astype(kernel.dtype)
        else:
            others = tuple(i for i in range(kernel.ndim) if i != axis)
            step = np.abs(kernel).max(axis=others, keepdims=True) / 127.0
            step[step == 0] = 1.0  # an all-zero channel stays zero
            weights[0] = (np.round(kernel / step) * step).astype(kernel.dtype)
        layer.set_weights(weights)
        rounded += 1
    return rounded


def batch_norm_fold(base: keras.Model, index: int) -> np.ndarray:
    """Per-channel factor the converter multiplies into conv `index` (1 without a BN after it)."""
    layer = base.layers[index]
    following = base.layers[index + 1] if index + 1 < len(base.layers) else None
    channels = layer.kernel.shape[2 if isinstance(layer, keras.layers.DepthwiseConv2D) else 3]
    if (
        not isinstance(following, keras.layers.BatchNormalization)
        or following.input is not layer.output
    ):
        return np.ones(channels, dtype=np.float32)
    gamma = following.gamma.numpy() if following.scale else 1.0
    return (gamma / np.sqrt(following.moving_variance.numpy() + following.epsilon)).astype(
        np.float32
    )


def build_classifier(base: keras.Model, n_classes: int, dropout: float) -> keras.Model:
    """Raw RGB pixels 0..255 in, class probabilities out.

    The [-1, 1] scaling MobileNetV2 expects is the first layer, so TFLite, Android and the Pi
    all feed raw pixels and cannot get the normalization wrong.
    """
    size = base.input_shape[1]
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_minus1_1")(inputs)
    # training=False keeps BatchNormalization in inference mode even while fine-tuning.
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="leukedge_mobilenetv2")


def build_head(feature_size: int, n_classes: int, dropout: float) -> keras.Model:
    """The classifier head alone, trained on cached backbone features in the frozen phase."""
    inputs = keras.Input((feature_size,), name="features")
    x = keras.layers.Dropout(dropout, name="dropout")(inputs)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="head")


def unfreeze_top(base: keras.Model, from_layer: int) -> int:
    """Make backbone layers from `from_layer` on trainable, BatchNormalization excepted.

    Training BN statistics on a small dataset makes validation accuracy collapse (seen here:
    96% train, 75% validation), so every BN layer stays frozen. Returns how many layers train.
    """
    base.trainable = True
    trainable = 0
    for index, layer in enumerate(base.layers):
        train_it = index >= from_layer and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = train_it
        trainable += train_it
    return trainable
