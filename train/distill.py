"""Knowledge distillation: a trained model's softened probabilities as extra training targets.

The teacher is a run folder of `edge-train` (model.keras, labels.txt, split.csv) or a .tflite
model with labels.txt and split.csv beside it (the released `models/` folder). The student
trains on the teacher's split, so the teacher never saw the student's validation or test images.

Two ways to teach:
- fixed (the default): the teacher's probabilities are computed once per image, on the
  un-augmented image at the teacher's own input size (decoded again from the file, not upscaled
  from the student's smaller pixels), and serve as the soft target of every augmented view of
  that image. One teacher pass over the training and validation images instead of one per step:
  affordable on a 2-core CPU (the teacher is the 224 px alpha 1.0 model, 5-10x the student's
  compute).
- consistent (`--consistent-teaching`): the teacher scores the very view the student sees, each
  augmented training batch resized to the teacher's input size (Beyer et al. 2022, "Knowledge
  distillation: A good teacher is patient and consistent"). A rotated, blurred, noisy view is not
  the clean image, and a fixed target tells the student the wrong thing about it; the price is
  one teacher invoke per training image and epoch. Validation keeps the fixed targets (it is not
  augmented).

Several teachers (`--teacher` given more than once) teach as one ensemble: their probabilities
are averaged, then softened. Where models of other seeds err on different images, their mean can
be right, and a student learns its teacher's mistakes along with the rest; where they all err on
the same image, so does the mean (docs/training.md, "Fourth round"). The members must share the
labels and the split.

Only the checks are imported before TensorFlow; the rest loads the model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukedge.train import dataset
from leukedge.train.config import SettingsError


class TeacherError(SettingsError):
    """The teacher cannot teach this student: missing files, other labels, other split."""


@dataclass(frozen=True)
class Teacher:
    model_path: Path  # model.keras or a .tflite file
    labels: list[str]
    split_file: Path


def check_teacher(
    path: Path, labels: list[str] | None = None, split_file: Path | None = None
) -> Teacher:
    """Find the teacher's model, labels and split; refuse what cannot fit. No TensorFlow.

    `labels` are the student's labels (from its data); they must be the teacher's, in the same
    order, since the soft targets are read column by column. A `split_file` the user passed must
    be the teacher's own split (same rows), since any other split lets the teacher's training
    images into the student's test set.
    """
    path = Path(path)
    if path.is_dir():
        model_path = path / "model.keras"
        folder = path
        if not model_path.is_file():
            raise TeacherError(
                f"--teacher {path} has no model.keras: pass an edge-train run folder "
                "or a .tflite file with labels.txt and split.csv beside it"
            )
    elif path.is_file() and path.suffix in (".tflite", ".keras"):
        model_path, folder = path, path.parent
    else:
        raise TeacherError(
            f"--teacher {path} is neither an edge-train run folder nor a .tflite/.keras file"
        )
    labels_file, teacher_split = folder / "labels.txt", folder / "split.csv"
    for needed in (labels_file, teacher_split):
        if not needed.is_file():
            raise TeacherError(
                f"--teacher {path}: {needed.name} is missing beside the model "
                "(the student trains on the teacher's labels and split)"
            )
    teacher_labels = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
    if labels is not None and list(labels) != teacher_labels:
        raise TeacherError(
            f"--teacher {path} was trained on the labels {teacher_labels}, the data has "
            f"{list(labels)}: a teacher must know exactly the student's classes"
        )
    if split_file is not None and split_rows(split_file) != split_rows(teacher_split):
        raise TeacherError(
            f"--split-file {split_file} is not the teacher's split ({teacher_split}): "
            "leave --split-file out, the student uses the teacher's split"
        )
    return Teacher(model_path, teacher_labels, teacher_split)


def split_rows(split_file: Path) -> set[tuple[str, str]]:
    """A split as a comparable set: (image hash, split) pairs."""
    return {(s.sha256, s.split) for s in dataset.read_split(split_file, check_files=False)}


def check_teachers(
    paths: tuple[Path, ...] | list[Path],
    labels: list[str] | None = None,
    split_file: Path | None = None,
) -> list[Teacher]:
    """`check_teacher` for each member of an ensemble, which must share one split and labels."""
    teachers = [check_teacher(path, labels, split_file) for path in paths]
    models = [t.model_path.resolve() for t in teachers]
    if len(set(models)) < len(models):
        raise TeacherError("the same --teacher is given twice: each member of an ensemble once")
    first = teachers[0] if teachers else None
    first_split = split_rows(first.split_file) if first else None
    for path, teacher in zip(paths[1:], teachers[1:], strict=True):
        if teacher.labels != first.labels:
            raise TeacherError(
                f"--teacher {path} knows the labels {teacher.labels}, --teacher {paths[0]} "
                f"{first.labels}: the teachers of one student must share their labels"
            )
        if split_rows(teacher.split_file) != first_split:
            raise TeacherError(
                f"--teacher {path} was trained on another split than --teacher {paths[0]}: "
                f"train it with --split-file {first.split_file} (the teachers of one student "
                "must share a split, or one's training images are in another's test set)"
            )
    return teachers


def soft_targets(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities softened at `temperature`: softmax(log(p) / T), computed stably."""
    logits = np.log(np.clip(probabilities.astype(np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def load_teacher(teacher: Teacher):
    """The teacher's model, checked against its labels: a LeukEdge Classifier for a .tflite file
    (the runtime's own input preparation and calibrated probabilities), else a Keras model."""
    if teacher.model_path.suffix == ".tflite":
        from leukedge.edge_app.runtime import Classifier, ModelError

        try:
            model = Classifier(teacher.model_path, threads=2, allow_unverified=True)
        except ModelError as error:
            raise TeacherError(f"--teacher: {error}") from None
        if model.labels != teacher.labels:
            raise TeacherError(
                f"--teacher {teacher.model_path} carries the labels {model.labels}, "
                f"its labels.txt says {teacher.labels}"
            )
        return model
    import keras

    model = keras.models.load_model(teacher.model_path, compile=False)
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or shape[1] is None:
        raise TeacherError(
            f"--teacher {teacher.model_path} takes inputs of shape {shape}, not square RGB images"
        )
    if model.output_shape[-1] != len(teacher.labels):
        raise TeacherError(
            f"--teacher {teacher.model_path} has {model.output_shape[-1]} outputs "
            f"for {len(teacher.labels)} labels"
        )
    return model


def teacher_input_size(model) -> int:
    return model.image_size if hasattr(model, "image_size") else int(model.input_shape[1])


def teacher_probabilities(
    models: list, samples: list[dataset.Sample], data_dir: Path, batch_size: int = 32, progress=None
) -> np.ndarray:
    """The teachers' (`load_teacher`) mean probabilities for `samples`, each image decoded at
    each teacher's input size."""
    return np.mean(
        [member_probabilities(m, samples, data_dir, batch_size, progress) for m in models], axis=0
    )


def member_probabilities(
    model, samples: list[dataset.Sample], data_dir: Path, batch_size: int, progress
) -> np.ndarray:
    pixels = dataset.load_pixels(samples, data_dir, teacher_input_size(model), progress=progress)
    if hasattr(model, "classify"):
        return np.stack([model.invoke(model.to_input(image)) for image in pixels])
    return np.concatenate(
        [
            model.predict_on_batch(pixels[i : i + batch_size].astype(np.float32))
            for i in range(0, len(pixels), batch_size)
        ]
    )


def view_soft_targets(models: list, n_classes: int, temperature: float):
    """A TensorFlow function: a batch of augmented views (float 0..255, the student's size) ->
    the teachers' soft targets at `temperature` for exactly those views (consistent teaching)."""
    import tensorflow as tf

    members = [view_probabilities(model, n_classes) for model in models]

    def targets(views):
        # soft_targets, in the graph: softmax(log(p) / T) of the members' mean probabilities.
        mean = tf.add_n([probabilities(views) for probabilities in members]) / len(members)
        logits = tf.math.log(tf.clip_by_value(mean, 1e-12, 1.0))
        return tf.nn.softmax(logits / temperature, axis=-1)

    return targets


def view_probabilities(model, n_classes: int):
    """A TensorFlow function: augmented views -> one teacher's probabilities for them."""
    import tensorflow as tf

    if hasattr(model, "classify"):  # .tflite: the runtime resizes each view as the app would
        lock = threading.Lock()  # one interpreter; tf.data may call from several threads

        def classify(views: np.ndarray) -> np.ndarray:
            frames = np.clip(np.round(views), 0, 255).astype(np.uint8)
            with lock:
                return np.stack([model.classify(frame) for frame in frames]).astype(np.float32)

        def probabilities(views):
            scored = tf.numpy_function(classify, [views], tf.float32, stateful=False)
            scored.set_shape([None, n_classes])
            return scored

    else:
        size = teacher_input_size(model)

        def probabilities(views):
            resized = tf.clip_by_value(tf.image.resize(views, [size, size]), 0.0, 255.0)
            return model(resized, training=False)

    return probabilities


def distillation_loss(n_classes: int, temperature: float, weight: float, label_smoothing: float):
    """Keras loss for targets [one-hot labels | teacher soft targets] (2 x n_classes columns).

    (1 - weight) * cross-entropy with the (smoothed) labels, plus weight * T^2 * the KL divergence
    between the teacher's and the student's probabilities, both softened at T (Hinton et al.
    2015; T^2 keeps the soft term's gradients on the scale of the hard one). The student outputs
    probabilities, so log(p) serves as its logits. Targets of n_classes columns (no teacher)
    fall back to the labels alone, as in validation without soft targets.
    """
    import keras
    import tensorflow as tf

    hard_loss = keras.losses.CategoricalCrossentropy(
        label_smoothing=label_smoothing, reduction=None
    )

    def loss(y_true, y_pred):
        y_true = tf.convert_to_tensor(y_true, tf.float32)
        hard = hard_loss(y_true[:, :n_classes], y_pred)
        if y_true.shape[-1] == n_classes:
            return hard
        soft_teacher = y_true[:, n_classes:]
        student_log = tf.nn.log_softmax(
            tf.math.log(tf.clip_by_value(y_pred, 1e-7, 1.0)) / temperature
        )
        # KL divergence (0 when the student matches the teacher), not plain cross-entropy: same
        # gradients, but the logged loss is not dominated by the teacher's own entropy.
        teacher_log = tf.math.log(tf.clip_by_value(soft_teacher, 1e-12, 1.0))
        soft = tf.reduce_sum(soft_teacher * (teacher_log - student_log), axis=-1) * temperature**2
        return (1.0 - weight) * hard + weight * soft

    return loss


def label_accuracy(n_classes: int):
    """Accuracy against the label columns of [labels | soft targets]."""
    import keras
    import tensorflow as tf

    def accuracy(y_true, y_pred):
        return tf.cast(
            tf.equal(tf.argmax(y_true[:, :n_classes], axis=-1), tf.argmax(y_pred, axis=-1)),
            tf.float32,
        )

    return keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")
