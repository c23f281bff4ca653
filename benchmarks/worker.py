"""Measure one row (one model at one thread count) in a fresh process.

`python -P -m leukedge.benchmarks.worker SPEC.json RESULT.json`. A fresh process per row makes the peak
RSS that model's own, and a model that crashes the interpreter (a truncated file can) costs
only its row. The parent (`benchmarks.runner`) writes the spec and reads the result; the
probabilities go to RESULT.npy for the parent to score.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from leukedge.benchmarks import measure
from leukedge.benchmarks.evaluation import LabelMismatchError, label_indices
from leukedge.benchmarks.schema import END_TO_END_KEYS, WORKER_KEYS, empty_end_to_end
from leukedge.edge_app.imaging import ImageDecodeError, load_rgb, prepare
from leukedge.edge_app.runtime import Classifier, ModelError
from leukedge.train.dataset import DatasetError, Sample, load_pixels


class SkipRow(Exception):
    """The row cannot be measured here for a reason that is not the model's fault."""


def _cached_pixels(spec: dict, image_size: int) -> np.ndarray:
    """The prepared evaluation images at this size, decoded once per run and shared via a .npy file."""
    cache = Path(spec["cache_dir"]) / f"pixels_{image_size}.npy"
    if cache.is_file():
        return np.load(cache)
    samples = [
        Sample(path, "", label)
        for path, label in zip(spec["image_paths"], spec["image_labels"], strict=True)
    ]
    pixels = load_pixels(samples, Path(spec["data_root"]), image_size)
    partial = cache.with_suffix(".partial.npy")
    np.save(partial, pixels)
    partial.replace(cache)
    return pixels


class TFLiteModel:
    """The row's model through the app's own Classifier; latency is interpreter.invoke() alone."""

    def __init__(self, spec: dict):
        self.classifier = Classifier(
            spec["model"],
            threads=spec["threads"],
            allow_unverified=spec.get("allow_unverified", False),
        )
        self.labels = self.classifier.labels
        self.image_size = self.classifier.image_size
        self.runtime = f"{self.classifier.runtime.name} {self.classifier.runtime.version}"

    def set_input(self, prepared: np.ndarray | None) -> None:
        if prepared is None:  # no data given (fidelity runs): random input, as benchmark tools use
            spec = self.classifier.input
            rng = np.random.default_rng(0)
            tensor = (
                rng.integers(0, 256, spec.shape).astype(spec.dtype)
                if spec.dtype in ("uint8", "int8")
                else rng.uniform(0, 255, spec.shape).astype(spec.dtype)
            )
            self.classifier.interpreter.set_tensor(
                self.classifier.interpreter.get_input_details()[0]["index"], tensor
            )
        else:
            self.classifier.invoke(self.classifier.to_input(prepared))

    def invoke(self) -> None:
        self.classifier.interpreter.invoke()

    def classify_prepared(self, prepared: np.ndarray) -> np.ndarray:
        return self.classifier.invoke(self.classifier.to_input(prepared))

    def predict_all(self, pixels: np.ndarray) -> np.ndarray:
        return (
            np.stack([self.classify_prepared(p) for p in pixels])
            if len(pixels)
            else np.zeros((0, len(self.labels)))
        )


class KerasModel:
    """The Keras baseline: TensorFlow imported here only, RGB 0..255 float input (the contract)."""

    def __init__(self, spec: dict):
        try:
            import tensorflow as tf
        except Exception as error:  # ImportError, or a broken install
            raise SkipRow(
                f"TensorFlow is not importable here ({type(error).__name__}): "
                "the Keras baseline row needs the train extra"
            ) from None
        tf.config.threading.set_intra_op_parallelism_threads(spec["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from leukedge.train.config import ModelFileError
        from leukedge.train.model import load_saved

        path = Path(spec["model"])
        try:
            self.model = load_saved(path)
        except ModelFileError as error:
            raise ModelError(str(error)) from None
        labels_file = path.parent / "labels.txt"
        if not labels_file.is_file():
            raise ModelError(
                f"{path} has no labels.txt beside it: pass the edge-train run folder's model.keras"
            )
        self.labels = [
            line.strip() for line in labels_file.read_text().splitlines() if line.strip()
        ]
        self.image_size = int(self.model.input_shape[1])
        self.runtime = f"tensorflow {tf.__version__}"
        # A traced call, as a served Keras model runs; eager calls would mostly time Python.
        self._call = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        self._tensor = None

    def set_input(self, prepared: np.ndarray | None) -> None:
        if prepared is None:
            prepared = np.random.default_rng(0).integers(
                0, 256, (self.image_size, self.image_size, 3)
            )
        self._tensor = prepared[np.newaxis].astype(np.float32)
        np.asarray(self._call(self._tensor))  # the first call traces the graph

    def invoke(self) -> None:
        np.asarray(self._call(self._tensor))

    def classify_prepared(self, prepared: np.ndarray) -> np.ndarray:
        return np.asarray(self._call(prepared[np.newaxis].astype(np.float32)))[0]

    def predict_all(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(pixels.astype(np.float32), batch_size=32, verbose=0))


def measure_here(spec: dict, result_path: Path) -> dict:
    """Everything edge-bench reports for one row except the scores (the parent computes those)."""
    result: dict = {"status": "ok", "error": None}
    rss_before_model = measure.rss_mb()
    result["peak_rss_method"] = (
        "VmHWM reset before loading" if measure.reset_peak_rss() else "ru_maxrss of the process"
    )
    started = time.perf_counter()
    model = KerasModel(spec) if spec["kind"] == "keras" else TFLiteModel(spec)
    init_ms = (time.perf_counter() - started) * 1000.0
    result.update(labels=model.labels, image_size=model.image_size, runtime=model.runtime)
    if spec["image_labels"]:
        label_indices([Sample("", "", label) for label in spec["image_labels"]], model.labels)

    paths = [Path(spec["data_root"]) / path for path in spec["image_paths"]]
    first_image = prepare(load_rgb(paths[0]), model.image_size) if paths else None
    started = time.perf_counter()
    model.set_input(first_image)  # the first inference (TFLite: includes the set_tensor copy)
    first_ms = (time.perf_counter() - started) * 1000.0
    for _ in range(spec["warmup"]):
        model.invoke()
    times = measure.time_runs(model.invoke, spec["runs"], spec.get("max_seconds"))
    result["latency_ms"] = {"init": init_ms, "first": first_ms, **measure.summarize(times)}
    result["runs"] = len(times)
    result["fps"] = 1000.0 / result["latency_ms"]["mean"] if result["latency_ms"]["mean"] else None
    result["peak_rss_mb"] = measure.peak_rss_mb()
    result["model_rss_mb"] = (
        (result["peak_rss_mb"] - rss_before_model) if rss_before_model is not None else None
    )

    if paths:
        end_to_end = []  # what a user waits for: decode + crop/resize + invoke, one image each
        for path in paths[: len(times)]:
            begin = time.perf_counter()
            model.classify_prepared(prepare(load_rgb(path), model.image_size))
            end_to_end.append((time.perf_counter() - begin) * 1000.0)
        summary = measure.summarize(end_to_end)
        result["end_to_end_ms"] = {key: summary[key] for key in END_TO_END_KEYS}
        probabilities = model.predict_all(_cached_pixels(spec, model.image_size))
        np.save(result_path.with_suffix(".npy"), probabilities.astype(np.float32))
    else:
        result["end_to_end_ms"] = empty_end_to_end()
    return result


def main(argv: list[str]) -> int:
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    try:
        result = measure_here(spec, result_path)
    except SkipRow as error:
        result = {"status": "skipped", "error": str(error)}
    except (ModelError, LabelMismatchError, DatasetError, ImageDecodeError, OSError) as error:
        result = {"status": "failed", "error": str(error).splitlines()[0]}
    except Exception as error:  # an unexpected failure still becomes a row, with its type
        last = traceback.extract_tb(error.__traceback__)[-1]
        result = {
            "status": "failed",
            "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''} "
            f"({Path(last.filename).name}:{last.lineno})",
        }
    # Only the fields the row schema knows travel back (schema.WORKER_KEYS).
    result_path.write_text(json.dumps({key: result[key] for key in WORKER_KEYS if key in result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
