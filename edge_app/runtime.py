"""Load a LeukEdge .tflite classifier once and turn RGB frames into class probabilities.

The model's contract travels with it: labels and input normalization come from its TFLite
metadata (else manifest.json / labels.txt beside it), quantization from its tensors. It runs as
verified only when a manifest vouches for it (see `edge_app/verification.py`).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukedge.edge_app import metadata as tflite_metadata
from leukedge.edge_app import verification
from leukedge.edge_app.imaging import prepare
from leukedge.edge_app.manifest import INT8, ManifestError, file_name
from leukedge.models import release_dir

# Most maintained first. tensorflow.lite comes last and is imported only if nothing else is.
RUNTIMES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow.lite"),
)


# The released model ships inside the package (leukedge.models; see models/model_card.md).
RELEASED_MODEL = release_dir() / file_name(INT8)


def default_model_path() -> Path | None:
    """$LEUKEDGE_MODEL, else the released int8 model shipped in the package, else None."""
    if os.environ.get("LEUKEDGE_MODEL"):
        return Path(os.environ["LEUKEDGE_MODEL"])
    return RELEASED_MODEL if RELEASED_MODEL.is_file() else None


class ModelError(ValueError):
    """The model file cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class TensorSpec:
    dtype: str
    shape: tuple[int, ...]
    scale: float  # 0.0 when the tensor is not quantized
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0


@dataclass(frozen=True)
class Runtime:
    name: str
    version: str
    interpreter_class: type


def find_runtime(preferred: str | None = None) -> Runtime:
    """The first importable TFLite runtime (or exactly `preferred`, by its name above)."""
    candidates = [r for r in RUNTIMES if preferred in (None, r[0])]
    if not candidates:
        raise ModelError(f"unknown runtime {preferred!r}: use one of {', '.join(r[0] for r in RUNTIMES)}")
    tried = []
    for name, module_name in candidates:
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # ImportError, or a broken wheel (numpy ABI mismatch)
            tried.append(f"{name}: {type(error).__name__}")
            continue
        package = importlib.import_module(module_name.split(".")[0])
        version = getattr(package, "__version__", "unknown")
        return Runtime(name, version, module.Interpreter)
    raise ModelError("no TFLite runtime could be imported (" + "; ".join(tried) + "): "
                     "pip install ai-edge-litert")


def _tensor_spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(np.dtype(detail["dtype"]).name, tuple(int(d) for d in detail["shape"]),
                      float(scale), int(zero_point))


class Classifier:
    """A loaded model: `classify(rgb_frame)` gives probabilities in `labels` order."""

    def __init__(self, model_path: str | Path, threads: int | None = None,
                 allow_unverified: bool = False, runtime: str | None = None):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise ModelError(f"model file {self.path} does not exist")
        data = self.path.read_bytes()
        if not tflite_metadata.is_tflite(data):
            raise ModelError(f"{self.path} is not a TFLite model (no TFL3 identifier): "
                             "pass a .tflite file written by edge-convert")
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:
            verdict = verification.judge(self.path, self.sha256)
        except (ManifestError, verification.VerificationError) as error:
            raise ModelError(str(error)) from None
        self.variant, self.verified, self.vouched_by = verdict.variant, verdict.verified, verdict.vouched_by
        self._manifest = verdict.manifest
        # A changed copy of a listed file is refused before loading: we know what it should be.
        if verdict.changed and not allow_unverified:
            raise ModelError(verdict.problem)
        self.metadata = self._read_metadata(data)
        self.labels = self._labels()
        self.threads = threads or min(4, os.cpu_count() or 1)
        self.runtime = find_runtime(runtime)
        try:
            self.interpreter = self.runtime.interpreter_class(model_content=data, num_threads=self.threads)
            self.interpreter.allocate_tensors()
        except Exception as error:
            raise ModelError(f"{self.path} could not be loaded by {self.runtime.name} "
                             f"({str(error).splitlines()[0][:200]}): the file may be truncated or corrupt") from None
        input_detail = self.interpreter.get_input_details()[0]
        output_detail = self.interpreter.get_output_details()[0]
        self._input_index, self._output_index = input_detail["index"], output_detail["index"]
        self.input, self.output = _tensor_spec(input_detail), _tensor_spec(output_detail)
        if len(self.input.shape) != 4 or self.input.shape[3] != 3 or self.input.shape[1] != self.input.shape[2]:
            raise ModelError(f"{self.path} input shape {self.input.shape} is not a square RGB image batch")
        if self.output.shape[-1] != len(self.labels):
            raise ModelError(f"{self.path} has {self.output.shape[-1]} outputs but {len(self.labels)} labels")
        # Unlisted or failed models are refused after loading, so a corrupt file is named as such.
        if verdict.problem and not allow_unverified:
            raise ModelError(verdict.problem)
        self.image_size = self.input.shape[1]
        self._mean = np.asarray(self.metadata.mean, dtype=np.float32)
        self._std = np.asarray(self.metadata.std, dtype=np.float32)
        # uint8 pixels map 1:1 onto a uint8 input quantized with scale 1, zero point 0.
        self._raw_uint8 = (self.input.dtype == "uint8" and self.input.scale == 1.0
                           and self.input.zero_point == 0 and not self._mean.any() and (self._std == 1).all())

    def _read_metadata(self, data: bytes) -> tflite_metadata.ModelMetadata:
        try:
            info = tflite_metadata.read_metadata(data)
        except Exception:  # a damaged metadata buffer must not hide the manifest fallback
            info = None
        return info or tflite_metadata.ModelMetadata(name=self.path.stem)

    def _labels(self) -> list[str]:
        if self.metadata.labels:
            return self.metadata.labels
        if self._manifest is not None and self._manifest.labels:
            return list(self._manifest.labels)
        labels_file = self.path.parent / "labels.txt"
        if labels_file.is_file():
            return [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
        raise ModelError(f"{self.path} carries no labels (no metadata, manifest.json or labels.txt beside it): "
                         "convert it with edge-convert")

    def describe(self) -> str:
        vouched = f"verified by {self.vouched_by}" if self.verified else "NOT verified"
        return (f"{self.path.name} ({self.variant or 'unlisted variant'}, {vouched}), "
                f"{self.runtime.name} {self.runtime.version}, {self.threads} thread(s), "
                f"input {self.input.dtype} {self.image_size}x{self.image_size}")

    def to_input(self, pixels: np.ndarray) -> np.ndarray:
        """Prepared uint8 RGB pixels (size x size x 3) as the input tensor (batch of 1)."""
        if self._raw_uint8:
            return pixels[np.newaxis]
        values = (pixels.astype(np.float32) - self._mean) / self._std
        if self.input.quantized:
            info = np.iinfo(self.input.dtype)
            values = np.clip(np.round(values / self.input.scale + self.input.zero_point), info.min, info.max)
        return values.astype(self.input.dtype)[np.newaxis]

    def invoke(self, input_tensor: np.ndarray) -> np.ndarray:
        """Run the model on a ready input tensor; returns float probabilities."""
        self.interpreter.set_tensor(self._input_index, input_tensor)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._output_index)[0]
        if self.output.quantized:
            return (raw.astype(np.float32) - self.output.zero_point) * self.output.scale
        return raw.astype(np.float32)

    def classify(self, rgb: np.ndarray, crop_fraction: float = 1.0) -> np.ndarray:
        """Probabilities for one uint8 RGB frame of any size (centre-cropped and resized)."""
        return self.invoke(self.to_input(prepare(rgb, self.image_size, crop_fraction)))
