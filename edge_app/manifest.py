"""manifest.json, the contract between `edge-convert`, the release, the runtime and `edge-bench`.

This module is the one owner of the format: every reader and writer goes through `read()` /
`Manifest.from_dict()` and `write()`. It is TensorFlow-free (the Pi reads it) and also the one
definition of the variant names.

Schema version 1 (`format_version`): the conversion settings and Keras reference at the top, and
one entry per variant under `variants`, keyed by variant name (never by order). Keys this version
does not know are kept on a round trip (`extra`), so a newer writer's additions are not lost.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from leukedge.edge_app.files import SHARED_MODE, write_atomic

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1
SCHEMA_KEY = "format_version"  # the name the first manifests used for the schema version

# The variant names. `edge-convert` writes the first four; the release adds the fast model.
FP32, FP16, DYNAMIC, INT8, FAST_INT8 = "fp32", "fp16", "dynamic", "int8", "fast_int8"
CONVERTED_VARIANTS = (FP32, FP16, DYNAMIC, INT8)
RELEASE_VARIANTS = (INT8, FP16, FAST_INT8)
# Most precise first (edge-bench measures agreement against the first one present).
PRECISION_ORDER = (FP32, FP16, DYNAMIC, INT8)

STATUS_OK = "ok"  # verified against Keras on the test split within --max-drop
STATUS_NOT_VERIFIED = "ok (not verified)"  # edge-convert --no-verify
STATUS_FAILED_PREFIX = "failed"


def file_name(variant: str) -> str:
    """The name other tools and docs rely on: model_<variant>.tflite."""
    return f"model_{variant}.tflite"


class ManifestError(ValueError):
    """A manifest that cannot be read or used; the message names the file and the field."""


# -- parsing helpers ----------------------------------------------------------------------------

_NUMBER = (int, float)


def _check(value: Any, kind: type | tuple, where: str, source: str) -> Any:
    # bool is an int in Python; a JSON true where a number belongs is still a mistake
    if isinstance(value, bool) and kind in (int, _NUMBER):
        raise ManifestError(f"{source}: field {where} must be a number, not {value!r}")
    if not isinstance(value, kind):
        expected = {
            str: "a string",
            int: "an integer",
            dict: "an object",
            list: "a list",
            _NUMBER: "a number",
        }.get(kind, str(kind))
        raise ManifestError(
            f"{source}: field {where} must be {expected}, not {type(value).__name__}"
        )
    return value


def _need(data: dict, key: str, kind: type | tuple, where: str, source: str) -> Any:
    if key not in data:
        raise ManifestError(
            f"{source}: missing field {where}{key}: rewrite it with edge-convert "
            "(or restore the original)"
        )
    return _check(data[key], kind, where + key, source)


def _maybe(data: dict, key: str, kind: type | tuple, where: str, source: str) -> Any:
    value = data.get(key)
    return None if value is None else _check(value, kind, where + key, source)


def _drop_none(mapping: dict) -> dict:
    return {k: v for k, v in mapping.items() if v is not None}


# -- the typed parts ----------------------------------------------------------------------------


@dataclass
class TensorInfo:
    """One input or output tensor of a .tflite variant (scale 0 when not quantized)."""

    dtype: str
    shape: list[int]
    scale: float = 0.0
    zero_point: int = 0

    @classmethod
    def from_dict(cls, data: Any, where: str, source: str) -> TensorInfo:
        _check(data, dict, where.rstrip("."), source)
        return cls(
            dtype=_need(data, "dtype", str, where, source),
            shape=[int(d) for d in _need(data, "shape", list, where, source)],
            scale=float(_maybe(data, "scale", _NUMBER, where, source) or 0.0),
            zero_point=int(_maybe(data, "zero_point", _NUMBER, where, source) or 0),
        )

    def to_dict(self) -> dict:
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "scale": self.scale,
            "zero_point": self.zero_point,
        }


@dataclass
class Verification:
    """A variant scored in the LeukEdge runtime on the test split, against the Keras model."""

    accuracy: float
    macro_f1: float
    agreement: float
    max_abs_prob_diff: float
    n: int

    @classmethod
    def from_dict(cls, data: Any, where: str, source: str) -> Verification:
        _check(data, dict, where.rstrip("."), source)
        values = {f.name: _need(data, f.name, _NUMBER, where, source) for f in fields(cls)}
        return cls(**{k: (int(v) if k == "n" else float(v)) for k, v in values.items()})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class SourceModel:
    file: str
    sha256: str
    bytes: int

    @classmethod
    def from_dict(cls, data: Any, where: str, source: str) -> SourceModel:
        _check(data, dict, where.rstrip("."), source)
        return cls(
            _need(data, "file", str, where, source),
            _need(data, "sha256", str, where, source),
            int(_need(data, "bytes", _NUMBER, where, source)),
        )

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "bytes": self.bytes}


@dataclass
class Reference:
    """The Keras model's own score on the test split (what variants are held against)."""

    model: str
    accuracy: float
    macro_f1: float
    n: int

    @classmethod
    def from_dict(cls, data: Any, where: str, source: str) -> Reference:
        _check(data, dict, where.rstrip("."), source)
        return cls(
            _need(data, "model", str, where, source),
            float(_need(data, "accuracy", _NUMBER, where, source)),
            float(_need(data, "macro_f1", _NUMBER, where, source)),
            int(_need(data, "n", _NUMBER, where, source)),
        )

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "n": self.n,
        }


@dataclass
class Calibration:
    """The training images that calibrated int8."""

    samples: int
    source: str
    seed: int

    @classmethod
    def from_dict(cls, data: Any, where: str, source: str) -> Calibration:
        _check(data, dict, where.rstrip("."), source)
        return cls(
            int(_need(data, "samples", _NUMBER, where, source)),
            _need(data, "source", str, where, source),
            int(_need(data, "seed", _NUMBER, where, source)),
        )

    def to_dict(self) -> dict:
        return {"samples": self.samples, "source": self.source, "seed": self.seed}


@dataclass
class VariantEntry:
    """One model file: its hash, tensors, verification and status.

    A variant that comes from another training run than the manifest's (the release's fast model)
    carries its own `source_model`, `reference`, `calibration`, `image_size`, `alpha`, `run` and
    the training settings that differ from the default run.
    """

    file: str
    sha256: str
    bytes: int
    description: str
    input: TensorInfo
    output: TensorInfo
    status: str
    conversion_seconds: float | None = None
    verification: Verification | None = None
    per_tensor_kernels: list[str] | None = None
    trust: dict | None = None  # TrustParams.to_dict() (see edge_app/trust.py); parsed there
    # -- a variant from another training run (the fast model of the release)
    alpha: float | None = None
    image_size: int | None = None
    source_model: SourceModel | None = None
    reference: Reference | None = None
    calibration: Calibration | None = None
    run: str | None = None
    settings_differing_from_default: dict | None = None
    extra: dict = field(default_factory=dict)  # keys this schema version does not know

    @property
    def ok(self) -> bool:
        """Verified against Keras within the conversion's --max-drop (the only status that vouches)."""
        return self.status == STATUS_OK

    @property
    def failed(self) -> bool:
        return self.status.startswith(STATUS_FAILED_PREFIX)

    @classmethod
    def from_dict(cls, data: Any, where: str, source: str) -> VariantEntry:
        _check(data, dict, where.rstrip("."), source)
        known = {f.name for f in fields(cls)} - {"extra"}
        verification = data.get("verification")
        sub = {"source_model": SourceModel, "reference": Reference, "calibration": Calibration}
        return cls(
            file=_need(data, "file", str, where, source),
            sha256=_need(data, "sha256", str, where, source),
            bytes=int(_need(data, "bytes", _NUMBER, where, source)),
            description=_need(data, "description", str, where, source),
            input=TensorInfo.from_dict(
                _need(data, "input", dict, where, source), where + "input.", source
            ),
            output=TensorInfo.from_dict(
                _need(data, "output", dict, where, source), where + "output.", source
            ),
            status=_need(data, "status", str, where, source),
            conversion_seconds=_maybe(data, "conversion_seconds", _NUMBER, where, source),
            verification=None
            if verification is None
            else Verification.from_dict(verification, where + "verification.", source),
            per_tensor_kernels=_maybe(data, "per_tensor_kernels", list, where, source),
            trust=_maybe(data, "trust", dict, where, source),
            alpha=_maybe(data, "alpha", _NUMBER, where, source),
            image_size=_maybe(data, "image_size", int, where, source),
            run=_maybe(data, "run", str, where, source),
            settings_differing_from_default=_maybe(
                data, "settings_differing_from_default", dict, where, source
            ),
            **{
                key: None
                if data.get(key) is None
                else kind.from_dict(data[key], f"{where}{key}.", source)
                for key, kind in sub.items()
            },
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict:
        out = {
            "file": self.file,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "description": self.description,
            "input": self.input.to_dict(),
            "output": self.output.to_dict(),
            "conversion_seconds": self.conversion_seconds,
            "per_tensor_kernels": self.per_tensor_kernels,
            "verification": self.verification.to_dict() if self.verification else None,
            "status": self.status,
            "trust": self.trust,
            "alpha": self.alpha,
            "image_size": self.image_size,
            "source_model": self.source_model.to_dict() if self.source_model else None,
            "reference": self.reference.to_dict() if self.reference else None,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "run": self.run,
            "settings_differing_from_default": self.settings_differing_from_default,
        }
        return {**_drop_none(out), **self.extra}


@dataclass
class Manifest:
    """The whole manifest.json of an edge-convert folder or of the release (models/)."""

    created_utc: str
    leukedge_version: str
    source_model: SourceModel
    data_dir: str
    split_file: str
    labels: list[str]
    image_size: int
    input: dict  # colour, layout, pixel range and normalization of the float input
    max_drop_points: float
    variants: dict[str, VariantEntry] = field(default_factory=dict)
    calibration: Calibration | None = None
    reference: Reference | None = None
    conversion_seconds: float | None = None
    format_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    def entry_for_file(self, name: str) -> tuple[str, VariantEntry] | None:
        """(variant, entry) of the variant stored in file `name`, None when it is not listed."""
        for variant, entry in self.variants.items():
            if entry.file == name:
                return variant, entry
        return None

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST_FILE) -> Manifest:
        _check(data, dict, "(top level)", source)
        version = data.get(SCHEMA_KEY)
        if version is None:
            raise ManifestError(
                f"{source}: missing field {SCHEMA_KEY} (the schema version): "
                "rewrite it with edge-convert"
            )
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"{source}: field {SCHEMA_KEY} is {version!r}, this LeukEdge reads schema "
                f"{SCHEMA_VERSION}: use the LeukEdge version that wrote it, or reconvert"
            )
        variants = _need(data, "variants", dict, "", source)
        known = {f.name for f in fields(cls)} - {"extra"}
        calibration, reference = data.get("calibration"), data.get("reference")
        return cls(
            created_utc=_need(data, "created_utc", str, "", source),
            leukedge_version=_need(data, "leukedge_version", str, "", source),
            source_model=SourceModel.from_dict(
                _need(data, "source_model", dict, "", source), "source_model.", source
            ),
            data_dir=_need(data, "data_dir", str, "", source),
            split_file=_need(data, "split_file", str, "", source),
            labels=[
                _check(label, str, "labels[]", source)
                for label in _need(data, "labels", list, "", source)
            ],
            image_size=_need(data, "image_size", int, "", source),
            input=_need(data, "input", dict, "", source),
            max_drop_points=float(_need(data, "max_drop_points", _NUMBER, "", source)),
            variants={
                _check(name, str, "variants", source): VariantEntry.from_dict(
                    entry, f"variants.{name}.", source
                )
                for name, entry in variants.items()
            },
            calibration=None
            if calibration is None
            else Calibration.from_dict(calibration, "calibration.", source),
            reference=None
            if reference is None
            else Reference.from_dict(reference, "reference.", source),
            conversion_seconds=_maybe(data, "conversion_seconds", _NUMBER, "", source),
            format_version=version,
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict:
        out = {
            SCHEMA_KEY: self.format_version,
            "created_utc": self.created_utc,
            "leukedge_version": self.leukedge_version,
            "source_model": self.source_model.to_dict(),
            "data_dir": self.data_dir,
            "split_file": self.split_file,
            "labels": list(self.labels),
            "image_size": self.image_size,
            "input": self.input,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "reference": self.reference.to_dict() if self.reference else None,
            "max_drop_points": self.max_drop_points,
            "variants": {name: entry.to_dict() for name, entry in self.variants.items()},
            "conversion_seconds": self.conversion_seconds,
        }
        # calibration and reference are written as null when absent (the first manifests did so)
        out = {k: v for k, v in out.items() if v is not None or k in ("calibration", "reference")}
        return {**out, **self.extra}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


# -- files --------------------------------------------------------------------------------------


def manifest_path(folder: str | Path) -> Path:
    return Path(folder) / MANIFEST_FILE


def read(path: str | Path) -> Manifest:
    """The manifest in `path` (a manifest.json, or the folder holding one). Raises ManifestError
    naming the file (and the field) when it is missing, unreadable or invalid."""
    path = Path(path)
    if path.is_dir():
        path = manifest_path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ManifestError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path} is not readable ({error}): restore it") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(
            f"{path} is not readable JSON ({error}): restore it or rewrite it with edge-convert"
        ) from None
    return Manifest.from_dict(data, str(path))


def find(folder: str | Path) -> Manifest | None:
    """The manifest of `folder`, None when it has none (invalid ones still raise)."""
    path = manifest_path(folder)
    return read(path) if path.is_file() else None


def writable(path: Path) -> bool:
    """Writable by us, and not marked read-only: root may write anything, but a file or folder
    without any write bit says "keep" all the same."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def check_writable(path: str | Path) -> None:
    """Raise ManifestError unless `path` (a manifest.json) can be replaced: its folder must take a
    new file and an existing manifest must itself be writable (read-only means "keep")."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise ManifestError(f"{folder} (for {path.name}) is not a folder")
    if not writable(folder):
        raise ManifestError(
            f"{folder} is not writable, so {path} cannot be replaced: fix its permissions"
        )
    if path.exists() and not writable(path):
        raise ManifestError(f"{path} is read-only: make it writable (chmod u+w) to replace it")


def write(manifest: Manifest, path: str | Path) -> Path:
    """Validate and write atomically (temporary file + os.replace); returns the path written.

    A folder stands for its manifest.json. The dict is parsed back before writing, so a manifest
    this module would refuse to read is never written.
    """
    path = Path(path)
    if path.is_dir():
        path = manifest_path(path)
    Manifest.from_dict(json.loads(manifest.to_json()), str(path))
    write_atomic(path, manifest.to_json().encode(), SHARED_MODE)
    return path
