"""Labelled images for a model, predictions over them, and the scores edge-bench reports.

Shared by `edge-bench` and `edge-bench robustness`; no TensorFlow here. Images are prepared by
`edge_app.imaging` (through `train.dataset`), so a model sees exactly the pixels it was
trained and verified on. Typical use:

    eval_set = resolve_eval_set(data, discover_models(paths))
    pixels = load_prepared(eval_set, classifier.image_size)
    y_true = label_indices(eval_set, classifier.labels)
    predictions, probabilities = predict(classifier, pixels)
    scores = score(y_true, predictions, classifier.labels)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukedge.benchmarks.models import ModelEntry, split_file_of
from leukedge.edge_app.imaging import ImageDecodeError, load_rgb
from leukedge.edge_app.manifest import Manifest
from leukedge.edge_app.runtime import Classifier
from leukedge.train.dataset import (
    SPLITS,
    DatasetError,
    Sample,
    changed_files,
    default_data_dir,
    labelled_folder,
    load_pixels,
    ordered_labels,
    read_split,
)
from leukedge.train.metrics import classification_metrics

Progress = Callable[[Iterable], Iterable] | None


class LabelMismatchError(ValueError):
    """The data holds labels the model does not know."""


@dataclass(frozen=True)
class EvalSet:
    """Labelled images to score models on. Sample paths are relative to `data_root`."""

    samples: list[Sample]
    data_root: Path
    source: str  # human-readable: which split of which file, or which folder

    @property
    def labels(self) -> list[str]:
        return ordered_labels(s.label for s in self.samples)

    def paths(self) -> list[Path]:
        return [self.data_root / s.path for s in self.samples]

    def describe(self) -> str:
        counts = {label: sum(s.label == label for s in self.samples) for label in self.labels}
        return f"{len(self.samples)} images ({self.source}): " + ", ".join(
            f"{k} {v}" for k, v in counts.items()
        )


def data_root_for(
    manifest: Manifest | None, data_root: str | Path | None = None, manifest_dir: Path | None = None
) -> Path:
    """Where split.csv paths are resolved: --data-root, else the manifest's data_dir (relative to
    the manifest's folder), else the default."""
    if data_root is not None:
        return Path(data_root)
    recorded = manifest.data_dir if manifest is not None else None
    if recorded and manifest_dir is not None and not Path(recorded).is_absolute():
        recorded = str(Path(manifest_dir) / recorded)
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return default_data_dir()


def _limit(samples: list[Sample], limit_per_class: int | None) -> list[Sample]:
    if not limit_per_class:
        return samples
    taken: dict[str, int] = {}
    kept = []
    for sample in samples:
        if taken.get(sample.label, 0) < limit_per_class:
            taken[sample.label] = taken.get(sample.label, 0) + 1
            kept.append(sample)
    return kept


def resolve_eval_set(
    data: str | Path | None,
    models: Sequence[ModelEntry] = (),
    data_root: str | Path | None = None,
    split: str = "test",
    limit_per_class: int | None = None,
) -> EvalSet:
    """The labelled images: `data` is a folder of class folders or a split.csv.

    Without `data`, the `split` rows of the split.csv beside the models (an edge-convert or
    edge-train folder). Raises DatasetError with a one-line message when nothing usable is found.
    """
    if split not in SPLITS:
        raise DatasetError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    with_manifest = next((m for m in models if m.manifest is not None), None)
    manifest = with_manifest.manifest if with_manifest is not None else None
    manifest_dir = with_manifest.manifest_dir if with_manifest is not None else None
    if data is None:
        found = split_file_of(models)
        if found is None:
            raise DatasetError(
                "no labelled images: no split.csv beside the model(s); "
                "pass --data DATASET_DIR or --data SPLIT_CSV"
            )
        if found[1] is not None:
            manifest, manifest_dir = found[1], Path(found[0]).parent
        data = found[0]
    data = Path(data)
    if data.is_dir():
        samples = labelled_folder(data)
        limited = (
            f"the first {limit_per_class} images per class" if limit_per_class else "every image"
        )
        return EvalSet(_limit(samples, limit_per_class), data, f"{limited} in {data}")
    if not data.exists():
        raise DatasetError(f"--data {data} does not exist: pass a dataset folder or a split.csv")
    root = data_root_for(manifest, data_root, manifest_dir)
    wanted = [s for s in read_split(data, root, check_files=False) if s.split == split]
    if not wanted:
        raise DatasetError(f"split file {data} lists no {split!r} images")
    missing = [s.path for s in wanted if not (root / s.path).is_file()]
    if missing:
        raise DatasetError(
            f"split file {data} names {len(missing)} file(s) missing under {root}, "
            f"e.g. {missing[0]}: pass --data-root DATASET_DIR"
        )
    changed = changed_files(wanted, root)
    if changed:
        raise DatasetError(
            f"split file {data}: {len(changed)} image(s) under {root} differ from the sha256 the "
            f"split recorded, e.g. {changed[0]}: the figures would not be the split's; pass the "
            "dataset the split was made from"
        )
    limited = f" (first {limit_per_class} per class)" if limit_per_class else ""
    return EvalSet(_limit(wanted, limit_per_class), root, f"{split} split of {data}{limited}")


def load_prepared(eval_set: EvalSet, image_size: int, progress: Progress = None) -> np.ndarray:
    """Decoded, centre-cropped, resized uint8 RGB images: (n, size, size, 3)."""
    return load_pixels(eval_set.samples, eval_set.data_root, image_size, progress=progress)


def load_rgb_images(eval_set: EvalSet, progress: Progress = None) -> list[np.ndarray]:
    """Decoded uint8 RGB images at their stored size (for shifts applied before `prepare`)."""
    images = []
    for path in progress(eval_set.paths()) if progress else eval_set.paths():
        try:
            images.append(load_rgb(path))
        except (ImageDecodeError, OSError) as error:
            raise DatasetError(f"cannot read {path}: {error}") from None
    return images


def label_indices(eval_set: EvalSet | Sequence[Sample], model_labels: Sequence[str]) -> np.ndarray:
    """Index of each sample's label in the model's label order; raises LabelMismatchError."""
    samples = eval_set.samples if isinstance(eval_set, EvalSet) else eval_set
    known = {label: index for index, label in enumerate(model_labels)}
    unknown = sorted({s.label for s in samples} - set(known))
    if unknown:
        raise LabelMismatchError(
            f"the data has label(s) {', '.join(map(repr, unknown))} that the model does not "
            f"know (its labels: {', '.join(model_labels)})"
        )
    return np.array([known[s.label] for s in samples], dtype=np.int64)


def predict(
    classifier: Classifier, prepared: np.ndarray, progress: Progress = None
) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 indices (n,), probabilities (n, classes) float32) for prepared uint8 images."""
    probabilities = np.empty((len(prepared), len(classifier.labels)), dtype=np.float32)
    indices = range(len(prepared))
    for index in progress(indices) if progress else indices:
        probabilities[index] = classifier.invoke(classifier.to_input(prepared[index]))
    return probabilities.argmax(axis=1), probabilities


def score(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """accuracy, macro_f1, per_class_recall (only classes present in the data), n, and the full metrics."""
    metrics = classification_metrics(y_true, y_pred, labels)
    present = {label for label, values in metrics["per_class"].items() if values["support"] > 0}
    return {
        "n": metrics["n"],
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro"]["f1"],
        "per_class_recall": {
            label: metrics["per_class"][label]["recall"] for label in labels if label in present
        },
        "metrics": metrics,
    }


def agreement(predictions: Sequence[int], reference: Sequence[int]) -> float:
    """Fraction of images whose top-1 class is the same in both."""
    predictions, reference = np.asarray(predictions), np.asarray(reference)
    if predictions.shape != reference.shape:
        raise ValueError(f"cannot compare {predictions.shape} predictions with {reference.shape}")
    return float((predictions == reference).mean()) if len(predictions) else 0.0
