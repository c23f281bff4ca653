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
from leukedge.edge_app.trust import (
    OOD_OUTPUT,
    PROBABILITIES_OUTPUT,
    TRUST_FILE,
    TrustError,
    TrustParams,
)
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
        raise ModelError(
            f"unknown runtime {preferred!r}: use one of {', '.join(r[0] for r in RUNTIMES)}"
        )
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
    raise ModelError(
        "no TFLite runtime could be imported (" + "; ".join(tried) + "): pip install ai-edge-litert"
    )


def _tensor_spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        np.dtype(detail["dtype"]).name,
        tuple(int(d) for d in detail["shape"]),
        float(scale),
        int(zero_point),
    )


def _dequantize(raw: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantized:
        return (raw.astype(np.float32) - spec.zero_point) * spec.scale
    return raw.astype(np.float32)


class Classifier:
    """A loaded model: `classify(rgb_frame)` gives probabilities in `labels` order.

    A model converted with trust parameters has two outputs, found by name: "probabilities"
    (calibrated) and "ood_score"; `trust` then holds the rule the model carries (None for an
    older single-output model). `require_trust=False` only serves the converter, which runs a
    fresh model on the validation split to compute the thresholds it is about to embed.
    """

    def __init__(
        self,
        model_path: str | Path,
        threads: int | None = None,
        allow_unverified: bool = False,
        runtime: str | None = None,
        require_trust: bool = True,
    ):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise ModelError(f"model file {self.path} does not exist")
        data = self.path.read_bytes()
        if not tflite_metadata.is_tflite(data):
            raise ModelError(
                f"{self.path} is not a TFLite model (no TFL3 identifier): "
                "pass a .tflite file written by edge-convert"
            )
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:
            verdict = verification.judge(self.path, self.sha256)
        except (ManifestError, verification.VerificationError) as error:
            raise ModelError(str(error)) from None
        self.variant, self.verified, self.vouched_by = (
            verdict.variant,
            verdict.verified,
            verdict.vouched_by,
        )
        self._manifest = verdict.manifest
        # A changed copy of a listed file is refused before loading: we know what it should be.
        if verdict.changed and not allow_unverified:
            raise ModelError(verdict.problem)
        self.metadata = self._read_metadata(data)
        self.threads = threads or min(4, os.cpu_count() or 1)
        self.runtime = find_runtime(runtime)
        try:
            self.interpreter = self.runtime.interpreter_class(
                model_content=data, num_threads=self.threads
            )
            self.interpreter.allocate_tensors()
        except Exception as error:
            raise ModelError(
                f"{self.path} could not be loaded by {self.runtime.name} "
                f"({str(error).splitlines()[0][:200]}): the file may be truncated or corrupt"
            ) from None
        # After loading: a truncated file loses its metadata too, and is named as truncated.
        self.labels = self._labels()
        input_detail = self.interpreter.get_input_details()[0]
        output_detail, score_detail = self._outputs()
        self._input_index, self._output_index = input_detail["index"], output_detail["index"]
        self.input, self.output = _tensor_spec(input_detail), _tensor_spec(output_detail)
        self._score_index = None if score_detail is None else score_detail["index"]
        self.ood_output = None if score_detail is None else _tensor_spec(score_detail)
        self.trust = self._read_trust(data, require_trust)
        if (
            len(self.input.shape) != 4
            or self.input.shape[3] != 3
            or self.input.shape[1] != self.input.shape[2]
        ):
            raise ModelError(
                f"{self.path} input shape {self.input.shape} is not a square RGB image batch"
            )
        if self.output.shape[-1] != len(self.labels):
            raise ModelError(
                f"{self.path} has {self.output.shape[-1]} outputs but {len(self.labels)} labels"
            )
        # Unlisted or failed models are refused after loading, so a corrupt file is named as such.
        if verdict.problem and not allow_unverified:
            raise ModelError(verdict.problem)
        self.image_size = self.input.shape[1]
        self._mean = np.asarray(self.metadata.mean, dtype=np.float32)
        self._std = np.asarray(self.metadata.std, dtype=np.float32)
        # uint8 pixels map 1:1 onto a uint8 input quantized with scale 1, zero point 0.
        self._raw_uint8 = (
            self.input.dtype == "uint8"
            and self.input.scale == 1.0
            and self.input.zero_point == 0
            and not self._mean.any()
            and (self._std == 1).all()
        )

    def _outputs(self) -> tuple[dict, dict | None]:
        """(probabilities, ood_score or None) output details: one unnamed output (older models),
        or the two named outputs of a model converted with trust parameters."""
        details = self.interpreter.get_output_details()
        if len(details) == 1:
            return details[0], None
        by_name = {detail["name"]: detail for detail in details}
        if len(details) != 2 or set(by_name) != {PROBABILITIES_OUTPUT, OOD_OUTPUT}:
            raise ModelError(
                f"{self.path} has outputs {sorted(by_name)}, expected one output or exactly "
                f"{PROBABILITIES_OUTPUT!r} and {OOD_OUTPUT!r}: convert it with edge-convert"
            )
        if details[0]["name"] != PROBABILITIES_OUTPUT:
            raise ModelError(
                f"{self.path}: output 0 is {details[0]['name']!r}, expected {PROBABILITIES_OUTPUT!r} "
                "(Android and MediaPipe read output 0): convert it with edge-convert"
            )
        score = by_name[OOD_OUTPUT]
        if tuple(score["shape"]) != (1, 1):
            raise ModelError(
                f"{self.path}: output {OOD_OUTPUT!r} has shape {tuple(score['shape'])}, expected (1, 1)"
            )
        return by_name[PROBABILITIES_OUTPUT], score

    def _read_trust(self, data: bytes, require_trust: bool) -> TrustParams | None:
        """The trust parameters embedded in the model, checked against its outputs and manifest."""
        embedded = tflite_metadata.associated_files(data).get(TRUST_FILE)
        if not require_trust:
            return None
        listed_entry = (
            self._manifest.variants.get(self.variant)
            if self._manifest is not None and self.variant
            else None
        )
        manifest_trust = listed_entry.trust if listed_entry is not None else None
        if embedded is None:
            if self._score_index is not None:
                raise ModelError(
                    f"{self.path} has an {OOD_OUTPUT!r} output but no {TRUST_FILE} in its metadata: "
                    "its thresholds are unknown; convert it again with edge-convert"
                )
            if manifest_trust is not None:
                raise ModelError(
                    f"{self.path}: manifest.json gives trust parameters but the model carries none: "
                    "the manifest belongs to another model; restore the matching files"
                )
            return None
        try:
            trust = TrustParams.from_json(embedded, f"{self.path} {TRUST_FILE}")
        except TrustError as error:
            raise ModelError(str(error)) from None
        if self._score_index is None:
            raise ModelError(
                f"{self.path} carries {TRUST_FILE} but has no {OOD_OUTPUT!r} output: "
                "its trust parameters do not fit the graph; convert it again with edge-convert"
            )
        try:
            listed = (
                None
                if manifest_trust is None
                else TrustParams.from_dict(manifest_trust, "manifest.json")
            )
        except TrustError as error:
            raise ModelError(f"{self.path}: {error}") from None
        if listed is not None and listed != trust:
            raise ModelError(
                f"{self.path}: the trust parameters in manifest.json differ from those embedded "
                "in the model: restore the matching manifest.json or convert again"
            )
        return trust

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
        raise ModelError(
            f"{self.path} carries no labels (no metadata, manifest.json or labels.txt beside it): "
            "convert it with edge-convert"
        )

    def describe(self) -> str:
        vouched = f"verified by {self.vouched_by}" if self.verified else "NOT verified"
        trust = (
            f"trust: {self.trust.conformal.method} at {self.trust.conformal.target_coverage:g}, "
            f"ood {self.trust.ood.method}"
            if self.trust
            else "no trust parameters"
        )
        return (
            f"{self.path.name} ({self.variant or 'unlisted variant'}, {vouched}, {trust}), "
            f"{self.runtime.name} {self.runtime.version}, {self.threads} thread(s), "
            f"input {self.input.dtype} {self.image_size}x{self.image_size}"
        )

    def to_input(self, pixels: np.ndarray) -> np.ndarray:
        """Prepared uint8 RGB pixels (size x size x 3) as the input tensor (batch of 1)."""
        if self._raw_uint8:
            return pixels[np.newaxis]
        values = (pixels.astype(np.float32) - self._mean) / self._std
        if self.input.quantized:
            info = np.iinfo(self.input.dtype)
            values = np.clip(
                np.round(values / self.input.scale + self.input.zero_point), info.min, info.max
            )
        return values.astype(self.input.dtype)[np.newaxis]

    def invoke(self, input_tensor: np.ndarray) -> np.ndarray:
        """Run the model on a ready input tensor; returns float probabilities."""
        return self.invoke_outputs(input_tensor)[0]

    def invoke_outputs(self, input_tensor: np.ndarray) -> tuple[np.ndarray, float | None]:
        """Run the model once; (float probabilities, OOD score or None for older models)."""
        self.interpreter.set_tensor(self._input_index, input_tensor)
        self.interpreter.invoke()
        probabilities = _dequantize(self.interpreter.get_tensor(self._output_index)[0], self.output)
        if self._score_index is None:
            return probabilities, None
        score = _dequantize(self.interpreter.get_tensor(self._score_index)[0], self.ood_output)
        return probabilities, float(score[0])

    def classify(self, rgb: np.ndarray, crop_fraction: float = 1.0) -> np.ndarray:
        """Probabilities for one uint8 RGB frame of any size (centre-cropped and resized)."""
        return self.invoke(self.to_input(prepare(rgb, self.image_size, crop_fraction)))
