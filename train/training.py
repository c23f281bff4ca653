"""The training run, top to bottom: data, split, frozen phase, fine-tuning, evaluation, outputs."""

from __future__ import annotations

import csv
import json
import platform
import resource
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from leukedge.train import dataset, report
from leukedge.train.config import STRATEGIES, TrainConfig
from leukedge.train.metrics import classification_metrics
from leukedge.train.model import (
    augmentation,
    build_backbone,
    build_classifier,
    build_head,
    snap_to_int8_grid,
    unfreeze_top,
)
from leukedge.train.run_dir import check_out_dir, publish, staging_dir

PUBLISHED = {"accuracy": 0.9858, "precision": 0.986, "recall": 0.9858, "f1": 0.9857,
             "source": "MobileNetV2, 30 epochs, batch 32, 80:10:10 split (published study)"}


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":  # reads the cluster from TF_CONFIG
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name != "default":
        raise ValueError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    return tf.distribute.get_strategy()


def assign_split(config: TrainConfig, scan: dataset.Scan) -> list[dataset.Sample]:
    if config.split_file is None:
        return dataset.stratified_split(scan.samples, config.seed)
    listed = dataset.read_split(config.split_file, config.data_dir)
    unusable = [s.path for s in listed if s.sha256 not in scan.images]
    if unusable:
        raise dataset.DatasetError(
            f"split file {config.split_file} names {len(unusable)} image(s) that are not usable "
            f"in {config.data_dir} (changed, unreadable or filtered out), e.g. {unusable[0]}"
        )
    unknown = sorted({s.label for s in listed} - set(scan.labels))
    if unknown:
        raise dataset.DatasetError(f"split file {config.split_file} has labels {unknown} not in the data")
    return listed


def arrays(samples: list[dataset.Sample], scan: dataset.Scan, labels: list[str], split: str):
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        raise dataset.DatasetError(f"the {split} split is empty: add images or use a larger --limit-per-class")
    x = np.stack([scan.images[s.sha256] for s in chosen])
    y = np.array([labels.index(s.label) for s in chosen], dtype=np.int64)
    return x, y


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)


def fine_tune_dataset(x, y, weights, n_classes, config: TrainConfig) -> tf.data.Dataset:
    augment = augmentation(config.augment, config.seed)
    one_hot = np.eye(n_classes, dtype=np.float32)[y]
    sample_weights = weights[y].astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, one_hot, sample_weights))
    ds = ds.shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True).batch(config.batch_size)
    ds = ds.map(lambda img, label, w: (augment(tf.cast(img, tf.float32)), label, w),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def predict(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Predictions batch by batch, casting each batch to float: no float copy of the whole set."""
    return np.concatenate([model.predict_on_batch(images[start:start + batch_size].astype(np.float32))
                           for start in range(0, len(images), batch_size)])


def history_rows(history: keras.callbacks.History, phase: str, first_epoch: int) -> list[dict]:
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    n = len(history.history.get("loss", []))
    return [{"epoch": first_epoch + i, "phase": phase,
             **{k: float(history.history[k][i]) for k in keys if k in history.history}}
            for i in range(n)]


def train(config: TrainConfig, echo=print, scan: dataset.Scan | None = None) -> dict:
    """Run the whole training; returns metrics.json's content. Writes config.out_dir."""
    started = time.monotonic()
    out_dir = Path(config.out_dir)
    check_out_dir(out_dir, config.overwrite)
    scan = scan or dataset.scan(config.data_dir, config.subset, config.image_size, config.limit_per_class)
    labels = scan.labels
    samples = assign_split(config, scan)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        arrays(samples, scan, labels, split) for split in dataset.SPLITS)
    echo(f"split: train {len(y_train)}, val {len(y_val)}, test {len(y_test)}")
    decoded = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(config.strategy)

    n_classes = len(labels)
    weights = class_weights(y_train, n_classes)
    smoothing = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    one_hot = np.eye(n_classes, dtype=np.float32)
    with strategy.scope():
        base = build_backbone(config.alpha, config.image_size, config.weights)
        if config.int8_grid:
            frozen_until = config.fine_tune_from if config.fine_tune_epochs > 0 else None
            rounded = snap_to_int8_grid(base, frozen_until, config.int8_per_tensor_layers)
            echo(f"rounded {rounded} frozen backbone kernels to the int8 grid")
        model = build_classifier(base, n_classes, config.dropout)
        head = build_head(model.get_layer("pool").output.shape[-1], n_classes, config.dropout)

    features = keras.Model(model.input, model.get_layer("pool").output)

    def fit_head(learning_rate: float, epochs: int) -> keras.callbacks.History:
        """Train the head alone: the backbone does not change meanwhile, so its features are
        computed once. The trained head then goes into the full model."""
        f_train = predict(features, x_train, config.batch_size)
        f_val = predict(features, x_val, config.batch_size)
        with strategy.scope():
            head.compile(keras.optimizers.Adam(learning_rate), smoothing, metrics=["accuracy"])
        fitted = head.fit(f_train, one_hot[y_train], sample_weight=weights[y_train],
                          validation_data=(f_val, one_hot[y_val]), epochs=epochs,
                          batch_size=config.batch_size, verbose=2, callbacks=[
                              keras.callbacks.EarlyStopping(patience=config.patience, restore_best_weights=True)])
        model.get_layer("probabilities").set_weights(head.get_layer("probabilities").get_weights())
        return fitted

    echo(f"frozen phase: caching backbone features, then up to {config.epochs} head epochs")
    history = history_rows(fit_head(config.learning_rate, config.epochs), "frozen", 1)
    frozen_done = time.monotonic()

    if config.fine_tune_epochs > 0:
        with strategy.scope():
            trainable = unfreeze_top(base, config.fine_tune_from)
            steps = config.fine_tune_epochs * int(np.ceil(len(y_train) / config.batch_size))
            # One epoch of linear warm-up: a fresh optimizer at full rate on the unfrozen layers
            # would first undo what the head learned (seen here: 96% -> 79% train accuracy).
            warmup = int(np.ceil(len(y_train) / config.batch_size))
            schedule = keras.optimizers.schedules.CosineDecay(
                0.0, max(steps - warmup, 1), warmup_target=config.fine_tune_learning_rate, warmup_steps=warmup)
            model.compile(keras.optimizers.Adam(schedule), smoothing, metrics=["accuracy"])
        echo(f"fine-tuning {trainable} backbone layers (from index {config.fine_tune_from}, "
             f"BatchNormalization frozen) for up to {config.fine_tune_epochs} epochs")
        train_ds = fine_tune_dataset(x_train, y_train, weights, n_classes, config)
        val_ds = tf.data.Dataset.from_tensor_slices((x_val, one_hot[y_val])).batch(config.batch_size)
        val_ds = val_ds.map(lambda img, label: (tf.cast(img, tf.float32), label))
        tuned = model.fit(train_ds, validation_data=val_ds,
                          epochs=config.fine_tune_epochs, verbose=1 if sys.stdout.isatty() else 2,
                          callbacks=[keras.callbacks.EarlyStopping(
                              patience=config.patience, restore_best_weights=True)])
        history += history_rows(tuned, "fine-tune", len(history) + 1)
    if config.int8_grid and config.int8_refit_epochs > 0:
        # The fine-tuned kernels go onto the int8 grid too (the converter would round them the
        # same way), and the head refits on what the int8 model's backbone computes.
        echo(f"int8 refit: rounded {snap_to_int8_grid(base, None, config.int8_per_tensor_layers)} kernels; "
             f"head refits for up to {config.int8_refit_epochs} epochs")
        # The head starts from where fine-tuning left it.
        head.get_layer("probabilities").set_weights(model.get_layer("probabilities").get_weights())
        refit = fit_head(config.fine_tune_learning_rate, config.int8_refit_epochs)
        history += history_rows(refit, "int8-refit", len(history) + 1)
    tuned_done = time.monotonic()

    metrics = {"labels": labels}
    for split, x, y in (("val", x_val, y_val), ("test", x_test, y_test)):
        probabilities = predict(model, x, config.batch_size)
        metrics[split] = classification_metrics(y, probabilities.argmax(axis=1), labels)
    finished = time.monotonic()
    metrics.update({
        "data": {
            "root": str(config.data_dir), "image_dir": str(scan.image_dir), "subset": config.subset,
            "usable_per_class": scan.found_per_class, "duplicates_removed": scan.duplicates,
            "skipped": len(scan.skipped),
            "split_counts": {split: {label: sum(1 for s in samples if s.split == split and s.label == label)
                                     for label in labels} for split in dataset.SPLITS},
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "timing_seconds": {"decode_and_split": round(decoded - started, 1),
                           "frozen_phase": round(frozen_done - decoded, 1),
                           "fine_tune_phase": round(tuned_done - frozen_done, 1),
                           "evaluation": round(finished - tuned_done, 1),
                           "total": round(finished - started, 1)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "environment": {"python": platform.python_version(), "tensorflow": tf.__version__,
                        "keras": keras.__version__, "machine": platform.machine()},
        "published_reference": PUBLISHED,
    })
    write_outputs(config, model, labels, samples, scan, history, metrics)
    return metrics


def write_outputs(config, model, labels, samples, scan, history, metrics) -> None:
    out_dir = Path(config.out_dir)
    staging = staging_dir(out_dir)
    try:
        model.save(staging / "model.keras")
        (staging / "labels.txt").write_text("\n".join(labels) + "\n")
        dataset.write_split(samples, staging / "split.csv")
        (staging / "skipped.txt").write_text("".join(f"{p}\t{why}\n" for p, why in scan.skipped))
        with open(staging / "history.csv", "w", newline="") as handle:
            columns = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy"]
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(history)
        report.plot_curves(history, staging / "curves.png")
        report.plot_confusion({s: metrics[s] for s in ("val", "test")}, staging / "confusion_matrix.png")
        (staging / "model_card.md").write_text(report.model_card(metrics))
        # metrics.json last: its presence marks a complete run.
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
