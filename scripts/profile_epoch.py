"""Where a fine-tuning epoch's time goes: the augmentation pipeline alone, then the training step alone.

    python scripts/profile_epoch.py --batches 10            # default model (alpha 1.0, 224 px)
    python scripts/profile_epoch.py --alpha 0.5 --image-size 128 --json runs/profile.json

It builds the default recipe's fine-tuning setup (backbone unfrozen from layer 54, BatchNorm
frozen, Adam, label smoothing, class weights) on real training images and times, per batch of 32:
1. `augment`: the tf.data pipeline of edge-train (shuffle, batch, random flips, rotation, zoom,
   colour, blur, noise) without the model;
2. `step`: one forward and backward pass with the optimizer update, on already-augmented
   batches (so no pipeline cost);
3. `fit`: Keras fit on the real pipeline, the two together as edge-train runs them (tf.data
   prefetches, so the pipeline can overlap the step when a core is free);
4. `frozen_forward`: the forward pass through the frozen layers only (0..53), the part a
   feature cache could skip if the augmentation happened after it (it does not: augmentation is
   on the input image, so this is what caching frozen layers cannot save while augmenting).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from leukedge.train.cli import pool_cpu_memory  # noqa: E402 (TensorFlow-free)

pool_cpu_memory()  # as edge-train runs, before TensorFlow is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from leukedge.train import dataset  # noqa: E402
from leukedge.train.config import TrainConfig  # noqa: E402
from leukedge.train.machine import cpu_model  # noqa: E402
from leukedge.train.model import build_backbone, build_classifier, unfreeze_top  # noqa: E402
from leukedge.train.training import class_weights, cpu_allocator, fine_tune_dataset  # noqa: E402


def timed(fn, batches: int) -> float:
    """Seconds per batch over `batches`, after one untimed warm-up batch (tracing)."""
    fn(1)
    started = time.perf_counter()
    fn(batches)
    return (time.perf_counter() - started) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=dataset.default_data_dir())
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--jit", action="store_true", help="compile the training step with XLA (jit_compile=True)"
    )
    args = parser.parse_args()
    config = TrainConfig(
        data_dir=args.data,
        out_dir=Path("unused"),
        alpha=args.alpha,
        image_size=args.image_size,
        weights=args.weights,
    )
    per_class = (args.batches + 2) * config.batch_size // 4 + 8
    scan = dataset.scan(args.data, image_size=args.image_size, limit_per_class=per_class)
    x = np.stack([scan.images[s.sha256] for s in scan.samples])
    y = np.array([scan.labels.index(s.label) for s in scan.samples])
    n_classes = len(scan.labels)
    targets = np.eye(n_classes, dtype=np.float32)[y]
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    ds = fine_tune_dataset(x, y, class_weights(y, n_classes), targets, config).repeat()

    def augment(n):
        for _ in ds.take(n):
            pass

    base = build_backbone(args.alpha, args.image_size, args.weights)
    model = build_classifier(base, n_classes, config.dropout)
    unfreeze_top(base, config.fine_tune_from)
    model.compile(
        keras.optimizers.Adam(1e-5),
        keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        jit_compile=args.jit,
    )
    cached = list(ds.take(args.batches + 1))

    def step(n):
        for images, labels, weights in cached[:n]:
            model.train_on_batch(images, labels, sample_weight=weights)

    def fit(n):
        model.fit(ds, steps_per_epoch=n, epochs=1, verbose=0)

    frozen = keras.Model(base.input, base.layers[config.fine_tune_from - 1].output)
    scale = keras.layers.Rescaling(1 / 127.5, offset=-1.0)
    call = tf.function(lambda b: frozen(scale(b), training=False))

    def frozen_forward(n):
        for images, _, _ in cached[:n]:
            call(images).numpy()

    steps_per_epoch = int(np.ceil(2260 / config.batch_size))
    result = {
        "alpha": args.alpha,
        "image_size": args.image_size,
        "batch_size": config.batch_size,
        "batches": args.batches,
        "jit_compile": args.jit,
        "cpu": cpu_model(),
        "cpu_allocator": cpu_allocator(),
        "cores": os.cpu_count(),
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
    }
    for name, fn in (
        ("augment", augment),
        ("step", step),
        ("fit", fit),
        ("frozen_forward", frozen_forward),
    ):
        seconds = timed(fn, args.batches)
        result[f"{name}_s_per_batch"] = round(seconds, 3)
        result[f"{name}_s_per_epoch"] = round(seconds * steps_per_epoch, 1)
        print(
            f"{name:15s} {seconds:7.3f} s/batch  ~{seconds * steps_per_epoch:6.0f} s per epoch "
            f"({steps_per_epoch} batches of {config.batch_size})",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
