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

from leukedge.train import dataset, distill, distributed, report, twins
from leukedge.train.augment import augmentation
from leukedge.train.config import SettingsError, TrainConfig
from leukedge.train.machine import cpu_model, simd_flags
from leukedge.train.metrics import classification_metrics
from leukedge.train.model import (
    build_backbone,
    build_classifier,
    build_head,
    snap_to_int8_grid,
    unfreeze_top,
)
from leukedge.train.run_dir import check_out_dir, publish, staging_dir

PUBLISHED = {
    "accuracy": 0.9858,
    "precision": 0.986,
    "recall": 0.9858,
    "f1": 0.9857,
    "source": "MobileNetV2, 30 epochs, batch 32, 80:10:10 split (published study)",
}


def assign_split(
    config: TrainConfig,
    scan: dataset.Scan,
    split_file: Path | None = None,
    twin_groups: list[list[str]] | None = None,
) -> list[dataset.Sample]:
    """The run's split: a new one keeps near-twins together; a given one is used as it is."""
    split_file = split_file or config.split_file
    if split_file is None:
        return dataset.stratified_split(scan.samples, config.seed, twins=twin_groups or ())
    listed = dataset.read_split(split_file, config.data_dir)
    unusable = [s.path for s in listed if s.sha256 not in scan.images]
    if unusable:
        raise dataset.DatasetError(
            f"split file {split_file} names {len(unusable)} image(s) that are not usable "
            f"in {config.data_dir} (changed, unreadable or filtered out), e.g. {unusable[0]}"
        )
    unknown = sorted({s.label for s in listed} - set(scan.labels))
    if unknown:
        raise dataset.DatasetError(f"split file {split_file} has labels {unknown} not in the data")
    return listed


def near_twin_report(samples: list[dataset.Sample], groups: list[list[str]], echo) -> dict:
    """Say how the split treats near-twins (the same field saved twice); for metrics.json."""
    leaked = twins.across_splits({s.sha256: s.split for s in samples}, groups)
    images = sum(len(group) for group in groups)
    if any(leaked.values()):
        echo(
            f"warning: the split puts near-twins (the same field saved twice) in different "
            f"splits: {leaked['test']} test and {leaked['val']} val image(s) have a twin in "
            "another split, so their scores may flatter the model (a new split keeps twins together)"
        )
    elif groups:
        echo(f"near-twins: {len(groups)} group(s), {images} images, each kept in one split")
    return {
        "correlation_threshold": twins.TWIN_CORRELATION,
        "groups": len(groups),
        "images": images,
        "images_with_a_twin_in_another_split": leaked,
    }


def arrays(samples: list[dataset.Sample], scan: dataset.Scan, labels: list[str], split: str):
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        raise dataset.DatasetError(
            f"the {split} split is empty: add images (or, if you gave --limit-per-class, a "
            "larger one)"
        )
    x = np.stack([scan.images[s.sha256] for s in chosen])
    y = np.array([labels.index(s.label) for s in chosen], dtype=np.int64)
    return x, y


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)


def fine_tune_dataset(
    x, y, weights, targets, config: TrainConfig, view_targets=None
) -> tf.data.Dataset:
    """Shuffled, augmented training batches; `view_targets` (consistent teaching) appends the
    teacher's soft targets for each augmented view to its labels."""
    augment = augmentation(config.augment, config.seed, config.image_size)
    sample_weights = weights[y].astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, targets, sample_weights))
    ds = ds.shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True).batch(
        config.batch_size
    )
    ds = ds.map(
        lambda img, label, w: (augment(tf.cast(img, tf.float32)), label, w),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if view_targets is not None:
        ds = ds.map(lambda img, label, w: (img, tf.concat([label, view_targets(img)], axis=1), w))
    return ds.prefetch(tf.data.AUTOTUNE)


def predict(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Predictions batch by batch, casting each batch to float: no float copy of the whole set."""
    return np.concatenate(
        [
            model.predict_on_batch(images[start : start + batch_size].astype(np.float32))
            for start in range(0, len(images), batch_size)
        ]
    )


def json_value(value):
    """A setting as JSON holds it: paths as strings, also inside tuples and lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [json_value(item) for item in value]
    return value


def history_rows(history: dict[str, list[float]], phase: str, first_epoch: int) -> list[dict]:
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    n = len(history.get("loss", []))
    return [
        {
            "epoch": first_epoch + i,
            "phase": phase,
            **{k: float(history[k][i]) for k in keys if k in history},
        }
        for i in range(n)
    ]


def train(config: TrainConfig, echo=print, scan: dataset.Scan | None = None) -> dict:
    """Run the whole training; returns metrics.json's content. Writes config.out_dir.

    With `--strategy multiworker` every worker runs this; only the chief writes config.out_dir.
    """
    started = time.monotonic()
    out_dir = Path(config.out_dir)
    check_out_dir(out_dir, config.overwrite)
    scan = scan or dataset.scan(
        config.data_dir, config.subset, config.image_size, config.limit_per_class
    )
    labels = scan.labels
    # edge-train's CLI checks the teachers before decoding; here with the data's labels too.
    teachers = distill.check_teachers(config.teachers, labels, config.split_file)
    teacher = teachers[0] if teachers else None  # the split, labels and "distilled or not"
    groups = twins.twin_groups([s.sha256 for s in scan.samples], scan.images)
    samples = assign_split(config, scan, teacher.split_file if teacher else None, groups)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        arrays(samples, scan, labels, split) for split in dataset.SPLITS
    )
    echo(f"split: train {len(y_train)}, val {len(y_val)}, test {len(y_test)}")
    twin_report = near_twin_report(samples, groups, echo)
    n_classes = len(labels)
    one_hot = np.eye(n_classes, dtype=np.float32)
    targets_train, targets_val = one_hot[y_train], one_hot[y_val]
    view_targets = None
    if teacher:
        # Soft targets once per image (see distill.py); the columns follow the labels' order.
        # The head phases see clean images, so these are their targets even with consistent
        # teaching, which scores the augmented views of fine-tuning as they are drawn.
        teacher_models = [distill.load_teacher(member) for member in teachers]
        echo(
            f"teacher {' + '.join(str(t.model_path) for t in teachers)}: soft targets at "
            f"temperature {config.distill_temperature:g}"
            + (", and on every augmented view in fine-tuning" if config.distill_consistent else "")
        )
        soft = distill.soft_targets(
            distill.teacher_probabilities(
                teacher_models,
                [s for split in ("train", "val") for s in samples if s.split == split],
                config.data_dir,
                config.batch_size,
            ),
            config.distill_temperature,
        )
        targets_train = np.concatenate([targets_train, soft[: len(y_train)]], axis=1)
        targets_val = np.concatenate([targets_val, soft[len(y_train) :]], axis=1)
        if config.distill_consistent:
            view_targets = distill.view_soft_targets(
                teacher_models, n_classes, config.distill_temperature
            )
    decoded = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    strategy, role = distributed.make_strategy(config.strategy)
    distributed_run = config.strategy != "default"
    if distributed_run:
        echo(role.describe())

    weights = class_weights(y_train, n_classes)
    # loss_fn gives one loss per example: Keras's fit weights and averages it itself, the
    # distributed loop sums it over the global batch.
    if teacher:
        loss_fn = distill.distillation_loss(
            n_classes, config.distill_temperature, config.distill_weight, config.label_smoothing
        )
        fit_loss = loss_fn
    else:
        loss_fn = keras.losses.CategoricalCrossentropy(
            label_smoothing=config.label_smoothing, reduction=None
        )
        fit_loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)

    def accuracy():
        return distill.label_accuracy(n_classes) if teacher else "accuracy"

    with strategy.scope():
        base = build_backbone(config.alpha, config.image_size, config.weights)
        if config.fine_tune_epochs > 0 and config.fine_tune_from >= len(base.layers):
            # Found here, before any epoch: past the last layer nothing would fine-tune.
            raise SettingsError(
                f"--fine-tune-from {config.fine_tune_from}: the backbone has "
                f"{len(base.layers)} layers (0 to {len(base.layers) - 1}): give a smaller index, "
                "or --fine-tune-epochs 0 to train the head alone"
            )
        if config.int8_grid:
            frozen_until = config.fine_tune_from if config.fine_tune_epochs > 0 else None
            rounded = snap_to_int8_grid(base, frozen_until, config.int8_per_tensor_layers)
            echo(f"rounded {rounded} frozen backbone kernels to the int8 grid")
        model = build_classifier(base, n_classes, config.dropout)
        head = build_head(model.get_layer("pool").output.shape[-1], n_classes, config.dropout)

    features = keras.Model(model.input, model.get_layer("pool").output)
    local_predict = distributed.predict if distributed_run else predict
    worker_steps = 0

    def run_fit(target_model, optimizer, train_ds, val_ds, epochs, phase, **fit_args) -> dict:
        """One phase of training, on one machine (Keras fit) or distributed (distributed.fit)."""
        nonlocal worker_steps
        callbacks = [
            keras.callbacks.EarlyStopping(patience=config.patience, restore_best_weights=True),
            EtaCallback(phase, epochs, echo),
        ]
        if not distributed_run:
            with strategy.scope():
                target_model.compile(optimizer, fit_loss, metrics=[accuracy()])
            fitted = target_model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=epochs,
                verbose=1 if sys.stdout.isatty() and phase == "fine-tune" else 2,
                callbacks=callbacks,
                **fit_args,
            )
            return fitted.history
        history, steps = distributed.fit(
            strategy,
            target_model,
            loss_fn,
            optimizer,
            train_ds,
            val_ds,
            epochs,
            callbacks,
            n_classes,
            echo,
        )
        worker_steps += steps
        return history

    def fit_head(learning_rate: float, epochs: int, phase: str) -> dict:
        """Train the head alone: the backbone does not change meanwhile, so its features are
        computed once. The trained head then goes into the full model."""
        f_train = local_predict(features, x_train, config.batch_size)
        f_val = local_predict(features, x_val, config.batch_size)
        sample_weights = weights[y_train].astype(np.float32)
        with strategy.scope():
            optimizer = keras.optimizers.Adam(learning_rate)
        if distributed_run:
            train_ds = tf.data.Dataset.from_tensor_slices((f_train, targets_train, sample_weights))
            train_ds = train_ds.shuffle(len(f_train), seed=config.seed).batch(config.batch_size)
            val_ds = tf.data.Dataset.from_tensor_slices((f_val, targets_val)).batch(
                config.batch_size
            )
            history = run_fit(head, optimizer, train_ds, val_ds, epochs, phase)
        else:  # arrays, Keras shuffles them itself (the recipe of the released model)
            history = run_fit(
                head,
                optimizer,
                f_train,
                (f_val, targets_val),
                epochs,
                phase,
                y=targets_train,
                sample_weight=weights[y_train],
                batch_size=config.batch_size,
            )
        model.get_layer("probabilities").set_weights(head.get_layer("probabilities").get_weights())
        return history

    try:
        echo(f"frozen phase: caching backbone features, then up to {config.epochs} head epochs")
        history = history_rows(fit_head(config.learning_rate, config.epochs, "frozen"), "frozen", 1)
        frozen_done = time.monotonic()

        if config.fine_tune_epochs > 0:
            with strategy.scope():
                trainable = unfreeze_top(base, config.fine_tune_from)
                steps = config.fine_tune_epochs * int(np.ceil(len(y_train) / config.batch_size))
                # One epoch of linear warm-up: a fresh optimizer at full rate on the unfrozen layers
                # would first undo what the head learned (seen here: 96% -> 79% train accuracy).
                warmup = int(np.ceil(len(y_train) / config.batch_size))
                schedule = keras.optimizers.schedules.CosineDecay(
                    0.0,
                    max(steps - warmup, 1),
                    warmup_target=config.fine_tune_learning_rate,
                    warmup_steps=warmup,
                )
                optimizer = keras.optimizers.Adam(schedule)
            echo(
                f"fine-tuning {trainable} backbone layers (from index {config.fine_tune_from}, "
                f"BatchNormalization frozen) for up to {config.fine_tune_epochs} epochs"
            )
            fine_tune_targets = targets_train[:, :n_classes] if view_targets else targets_train
            train_ds = fine_tune_dataset(
                x_train, y_train, weights, fine_tune_targets, config, view_targets
            )
            val_ds = tf.data.Dataset.from_tensor_slices((x_val, targets_val)).batch(
                config.batch_size
            )
            val_ds = val_ds.map(lambda img, label: (tf.cast(img, tf.float32), label))
            tuned = run_fit(
                model, optimizer, train_ds, val_ds, config.fine_tune_epochs, "fine-tune"
            )
            history += history_rows(tuned, "fine-tune", len(history) + 1)
        if config.int8_grid and config.int8_refit_epochs > 0:
            # The fine-tuned kernels go onto the int8 grid too (the converter would round them the
            # same way), and the head refits on what the int8 model's backbone computes.
            echo(
                f"int8 refit: rounded {snap_to_int8_grid(base, None, config.int8_per_tensor_layers)} kernels; "
                f"head refits for up to {config.int8_refit_epochs} epochs"
            )
            # The head starts from where fine-tuning left it.
            head.get_layer("probabilities").set_weights(
                model.get_layer("probabilities").get_weights()
            )
            refit = fit_head(config.fine_tune_learning_rate, config.int8_refit_epochs, "int8-refit")
            history += history_rows(refit, "int8-refit", len(history) + 1)
    except tf.errors.OpError as error:
        if not distributed_run:
            raise
        # A collective that lost its peer: say so in one line; nothing was written yet.
        first = str(error).strip().splitlines()[0][:300]
        raise distributed.WorkerLostError(
            f"distributed training stopped: another worker failed or became unreachable "
            f"({type(error).__name__}: {first}); no run folder was written, restart all workers"
        ) from None
    tuned_done = time.monotonic()
    if distributed_run:
        echo(f"training steps run by this worker: {worker_steps}")
    if not role.is_chief:
        echo(f"{role.task_type} {role.index}: done; only the chief writes the run folder")
        return {"role": "worker", "worker_steps": worker_steps, "labels": labels}

    metrics = {"labels": labels}
    for split, x, y in (("val", x_val, y_val), ("test", x_test, y_test)):
        probabilities = local_predict(model, x, config.batch_size)
        metrics[split] = classification_metrics(y, probabilities.argmax(axis=1), labels)
    finished = time.monotonic()
    metrics.update(
        {
            "data": {
                "root": str(config.data_dir),
                "image_dir": str(scan.image_dir),
                "subset": config.subset,
                "usable_per_class": scan.found_per_class,
                "duplicates_removed": scan.duplicates,
                "near_twins": twin_report,
                "skipped": len(scan.skipped),
                "split_counts": {
                    split: {
                        label: sum(1 for s in samples if s.split == split and s.label == label)
                        for label in labels
                    }
                    for split in dataset.SPLITS
                },
            },
            "settings": {k: json_value(v) for k, v in asdict(config).items()},
            "timing_seconds": {
                "decode_and_split": round(decoded - started, 1),
                "frozen_phase": round(frozen_done - decoded, 1),
                "fine_tune_phase": round(tuned_done - frozen_done, 1),
                "evaluation": round(finished - tuned_done, 1),
                "total": round(finished - started, 1),
            },
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "environment": {
                "python": platform.python_version(),
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "machine": platform.machine(),
                "cpu": cpu_model(),
                "simd": simd_flags(),
                "cpu_allocator": cpu_allocator(),
            },
            "published_reference": PUBLISHED,
        }
    )
    if distributed_run:
        metrics["distributed"] = {
            "strategy": role.strategy,
            "workers": role.workers,
            "replicas": role.replicas,
            "global_batch_size": config.batch_size,
            "chief_steps": worker_steps,
        }
    if teacher:
        # The saved model needs no LeukEdge code to load: plain cross-entropy in its compile config.
        model.compile(
            keras.optimizers.Adam(config.fine_tune_learning_rate),
            "categorical_crossentropy",
            metrics=["accuracy"],
        )
        metrics["teacher"] = {
            "models": [str(member.model_path) for member in teachers],
            "temperature": config.distill_temperature,
            "soft_target_weight": config.distill_weight,
            "consistent": config.distill_consistent,
        }
    write_outputs(config, model, labels, samples, scan, history, metrics)
    return metrics


def cpu_allocator() -> str:
    """Where TensorFlow's CPU tensors come from: "bfc" (its pool, edge-train's default, see
    cli.pool_cpu_memory) or "default". TensorFlow itself says: only the BFC pool keeps statistics."""
    try:
        tf.config.experimental.get_memory_info("CPU:0")
    except ValueError:
        return "default"
    return "bfc"


class EtaCallback(keras.callbacks.Callback):
    """After each epoch: the phase's time so far and an estimate of what is left if it runs to
    its last epoch (the mean epoch time so far; early stopping can end it sooner), so a long run
    says when it will be done. An estimate, not a bound: epochs can slow down."""

    def __init__(self, phase: str, epochs: int, echo=print):
        super().__init__()
        self.phase, self.epochs, self.echo = phase, epochs, echo

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.monotonic() - self.started
        left = self.epochs - epoch - 1
        if left and elapsed / (epoch + 1) >= 5:  # quiet for the seconds-long head epochs
            eta = elapsed / (epoch + 1) * left
            until = time.strftime("%H:%M", time.localtime(time.time() + eta))
            self.echo(
                f"{self.phase}: epoch {epoch + 1}/{self.epochs} done after {elapsed / 60:.1f} min; "
                f"about {eta / 60:.1f} min left if all {self.epochs} epochs run (until {until})"
            )


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
        report.plot_confusion(
            {s: metrics[s] for s in ("val", "test")}, staging / "confusion_matrix.png"
        )
        (staging / "model_card.md").write_text(report.model_card(metrics))
        # metrics.json last: its presence marks a complete run.
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
