"""Training on several devices or hosts with tf.distribute, without Keras's `fit`.

Keras 3 (3.15 here) cannot run `model.fit` under `tf.distribute.MultiWorkerMirroredStrategy`
(keras-team/keras issue 20585; the two failures are quoted in docs/training.md): `fit` first
averages a batch of data across workers to build the model (`strategy.reduce` on a tuple, which
TensorFlow refuses), and then averages its scalar logs along an axis they do not have. The
strategy itself, its collective all-reduce and Keras's optimizers work; so distributed runs use
the custom-training-loop form TensorFlow documents for this strategy: `strategy.run` of one
gradient step, the optimizer's own cross-replica gradient sum, and Keras's EarlyStopping
callback for the same stopping rule as the single-machine path.

Data: the global batch (`--batch-size`) is split across all replicas. The input pipeline
(shuffle, augmentation) runs whole on every worker with the same seeds, and tf.data's DATA
auto-sharding hands each worker its part of every global batch. So global batch i holds the same
images, augmented the same way, as batch i of a single-worker run, and the result differs from
one only by the order of floating-point sums (and by dropout, whose masks depend on how a batch
is split). The price: augmentation is not split between workers, only the forward and backward
passes are.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from leukedge.train.cluster import ClusterError, Role, WorkerLostError, parse_tf_config
from leukedge.train.config import SettingsError

__all__ = [
    "ClusterError",
    "Role",
    "WorkerLostError",
    "fit",
    "make_strategy",
    "parse_tf_config",
    "predict",
]


def make_strategy(name: str) -> tuple[tf.distribute.Strategy, Role]:
    """The strategy for `--strategy`, and this process's role in it."""
    if name == "default":
        return tf.distribute.get_strategy(), Role("default")
    if name == "mirrored":
        # All GPUs; without any, every (logical) CPU device, so the path runs and is tested on CPUs.
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        return strategy, Role("mirrored", 1, replicas=strategy.num_replicas_in_sync)
    if name == "multiworker":
        role = parse_tf_config(os.environ.get("TF_CONFIG"))
        # A lost peer must end the run, not hang it: collectives time out, and TensorFlow's
        # coordination service reports workers that stop sending heartbeats.
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=float(os.environ.get("LEUKEDGE_COLLECTIVE_TIMEOUT", "600"))
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        return strategy, Role(
            "multiworker",
            role.workers,
            role.task_type,
            role.index,
            strategy.num_replicas_in_sync,
            has_chief_task=role.has_chief_task,
        )
    raise SettingsError(f"unknown strategy {name!r}: use default, mirrored or multiworker")


def distribute(
    strategy: tf.distribute.Strategy, ds: tf.data.Dataset
) -> tf.distribute.DistributedDataset:
    """Split every global batch of `ds` across the replicas (DATA sharding, same batches as one worker)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(ds.with_options(options))


def fit(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    loss_fn: Callable,
    optimizer,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
    n_classes: int,
    echo=print,
) -> tuple[dict, int]:
    """Train `model` on (images, targets, weights) batches; returns (history dict, steps run).

    `loss_fn(targets, probabilities)` gives one loss per example; the step loss is the weighted
    sum over the global batch divided by its size (what Keras's `fit` minimises on one device),
    and the optimizer sums the replicas' gradients.
    """
    with strategy.scope():
        optimizer.build(model.trainable_variables)
    train_dist, val_dist = distribute(strategy, train_ds), distribute(strategy, val_ds)
    # Every worker runs the same number of steps (batches of a worker can be empty at the end).
    train_steps, val_steps = int(train_ds.cardinality()), int(val_ds.cardinality())

    def train_replica(x, y, w):
        with tf.GradientTape() as tape:
            p = model(x, training=True)
            per_example = loss_fn(y, p) * w
            n = tf.distribute.get_replica_context().all_reduce(
                "SUM", tf.cast(tf.shape(x)[0], tf.float32)
            )
            loss = tf.reduce_sum(per_example) / tf.maximum(n, 1.0)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return _sums(y, p, per_example, n_classes)

    def val_replica(x, y):
        p = model(x, training=False)
        return _sums(y, p, loss_fn(y, p), n_classes)

    @tf.function
    def train_step(iterator):
        return _reduce(strategy, strategy.run(train_replica, args=next(iterator)))

    @tf.function
    def val_step(iterator):
        return _reduce(strategy, strategy.run(val_replica, args=next(iterator)))

    history: dict[str, list[float]] = {
        "loss": [],
        "accuracy": [],
        "val_loss": [],
        "val_accuracy": [],
    }
    model.stop_training = False
    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin()
    steps = 0
    for epoch in range(epochs):
        started = time.monotonic()
        for callback in callbacks:
            callback.on_epoch_begin(epoch)
        totals = np.zeros(3)
        iterator = iter(train_dist)
        for _ in range(train_steps):
            totals += [float(v) for v in train_step(iterator)]
            steps += 1
        val_totals = np.zeros(3)
        iterator = iter(val_dist)
        for _ in range(val_steps):
            val_totals += [float(v) for v in val_step(iterator)]
        logs = {
            "loss": totals[0] / totals[2],
            "accuracy": totals[1] / totals[2],
            "val_loss": val_totals[0] / val_totals[2],
            "val_accuracy": val_totals[1] / val_totals[2],
        }
        for key, value in logs.items():
            history[key].append(float(value))
        echo(
            f"Epoch {epoch + 1}/{epochs} - {time.monotonic() - started:.0f}s - "
            + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        )
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for callback in callbacks:
        callback.on_train_end()
    return history, steps


def _sums(y, p, per_example_loss, n_classes: int):
    correct = tf.equal(tf.argmax(y[:, :n_classes], axis=-1), tf.argmax(p, axis=-1))
    return (
        tf.reduce_sum(per_example_loss),
        tf.reduce_sum(tf.cast(correct, tf.float32)),
        tf.cast(tf.shape(p)[0], tf.float32),
    )


def _reduce(strategy: tf.distribute.Strategy, values):
    return tuple(strategy.reduce("SUM", v, axis=None) for v in values)


def predict(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Local predictions on this worker, outside Keras's distributed predict (which would need
    every worker to take part: it gathers the outputs of all replicas)."""
    call = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    return np.concatenate(
        [
            call(tf.constant(images[i : i + batch_size], tf.float32)).numpy()
            for i in range(0, len(images), batch_size)
        ]
    )
