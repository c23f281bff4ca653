"""The conversion run: Keras model -> verified TFLite variants with metadata and a manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np

from leukedge.convert import report
from leukedge.convert.calibration_images import MIN_CALIBRATION, calibration_set
from leukedge.convert.metadata import with_metadata
from leukedge.convert.per_tensor import compact_kernels
from leukedge.convert.trust_fit import DEFAULT_COVERAGE, DEFAULT_OOD_RETENTION, FitError
from leukedge.convert.variants import (
    DESCRIPTIONS,
    VARIANTS,
    convert_variant,
    representative_dataset,
)
from leukedge.edge_app import leukedge_version
from leukedge.edge_app import manifest as manifests
from leukedge.edge_app.clitools import progress_bar
from leukedge.edge_app.files import SHARED_MODE, cannot_write_in, write_atomic
from leukedge.edge_app.manifest import (
    INT8,
    MANIFEST_FILE,
    Calibration,
    Manifest,
    Reference,
    SourceModel,
    TensorInfo,
    VariantEntry,
    Verification,
    file_name,
)
from leukedge.edge_app.metadata import ModelMetadata
from leukedge.edge_app.runtime import Classifier
from leukedge.train import dataset
from leukedge.train.config import ModelFileError
from leukedge.train.metrics import classification_metrics
from leukedge.train.model import load_saved

OUTPUT_FILES = tuple(file_name(v) for v in VARIANTS) + (
    "labels.txt",
    "split.csv",
    MANIFEST_FILE,
    "conversion_report.md",
)


class ConversionError(ValueError):
    """The source model, data or output folder cannot be used."""


@dataclass
class ConvertConfig:
    source: Path  # run folder of edge-train, or a .keras file
    out_dir: Path
    variants: tuple[str, ...] = VARIANTS
    # None: DEFAULT_CALIBRATION_SAMPLES, capped at the train split
    calibration_samples: int | None = None
    int8_io: str = "uint8"  # input/output type of the int8 model
    max_drop: float = 1.0  # accuracy points a variant may lose against Keras before exit 1
    data_dir: Path | None = None  # dataset root for split.csv paths (default: the run's)
    split_file: Path | None = None  # default: split.csv beside the model
    seed: int = 0
    overwrite: bool = False
    verify: bool = True
    trust: bool = True  # fit and embed the trust parameters (temperature, conformal, OOD)
    coverage: float = DEFAULT_COVERAGE  # conformal target coverage
    ood_retention: float = DEFAULT_OOD_RETENTION  # share of val frames the OOD threshold keeps
    ood_dims: int | None = None  # whitened Mahalanobis dimensions; None: trust_fit.auto_dims
    ood_cap: float = 4.0  # int8 OOD branch saturates at this multiple of the float threshold
    notes: dict = field(default_factory=dict)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def locate_source(config: ConvertConfig) -> tuple[Path, Path | None, Path | None]:
    """(model.keras, split.csv or None, metrics.json or None) from a run dir or a .keras path."""
    source = Path(config.source)
    model_path = source / "model.keras" if source.is_dir() else source
    if not model_path.is_file():
        raise ConversionError(
            f"{model_path} does not exist: pass an edge-train run folder or a .keras file"
        )
    split = config.split_file or model_path.parent / "split.csv"
    metrics = model_path.parent / "metrics.json"
    return (
        model_path,
        (split if split.is_file() else None),
        (metrics if metrics.is_file() else None),
    )


def load_classifier(model_path: Path) -> keras.Model:
    try:
        model = load_saved(model_path)
    except ModelFileError as error:
        raise ConversionError(str(error)) from None
    shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
    if (
        shape is None
        or len(shape) != 4
        or shape[3] != 3
        or shape[1] != shape[2]
        or shape[1] is None
    ):
        raise ConversionError(
            f"{model_path} is not an image classifier: input shape {model.input_shape}, "
            "expected (None, size, size, 3)"
        )
    if len(model.output_shape) != 2:
        raise ConversionError(
            f"{model_path} is not a classifier: output shape {model.output_shape}"
        )
    return model


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError(f"--out {out_dir} is a file, not a folder")
    folder = out_dir if out_dir.is_dir() else out_dir.parent  # before minutes of converting
    reason = cannot_write_in(folder)
    if reason:
        raise ConversionError(f"--out {out_dir}: cannot write in {folder} ({reason})")
    earlier = [name for name in OUTPUT_FILES if (out_dir / name).exists()]
    if earlier and not overwrite:
        raise ConversionError(
            f"--out {out_dir} already holds {', '.join(earlier[:3])}"
            f"{' ...' if len(earlier) > 3 else ''}: choose another folder or pass --overwrite"
        )


def data_root(config: ConvertConfig, metrics_path: Path | None) -> Path:
    if config.data_dir:
        return Path(config.data_dir)
    if metrics_path:
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            metrics = error
        if not isinstance(metrics, dict):
            raise ConversionError(
                f"{metrics_path}: not the JSON object edge-train writes: restore it, or pass "
                "--data (the dataset folder)"
            )
        data = metrics.get("data")
        recorded = data.get("root") if isinstance(data, dict) else None
        if isinstance(recorded, str) and recorded and Path(recorded).is_dir():
            return Path(recorded)
    return dataset.default_data_dir()


def tensor_entry(spec) -> TensorInfo:
    return TensorInfo(spec.dtype, list(spec.shape), spec.scale, spec.zero_point)


def verify(
    classifier: Classifier,
    pixels: np.ndarray,
    y_true: np.ndarray,
    keras_probs: np.ndarray,
    labels: list[str],
) -> Verification:
    probs = np.stack([classifier.invoke(classifier.to_input(p)) for p in pixels])
    predicted = probs.argmax(axis=1)
    metrics = classification_metrics(y_true, predicted, labels)
    return Verification(
        accuracy=metrics["accuracy"],
        macro_f1=metrics["macro"]["f1"],
        agreement=float((predicted == keras_probs.argmax(axis=1)).mean()),
        max_abs_prob_diff=float(np.abs(probs - keras_probs).max()),
        n=int(len(y_true)),
    )


def convert(config: ConvertConfig, echo=print) -> Manifest:
    """Run the conversion; returns the manifest. Raises ConversionError for unusable inputs."""
    started = time.monotonic()
    unknown = [v for v in config.variants if v not in VARIANTS]
    if unknown:
        raise ConversionError(f"unknown variant {unknown[0]!r}: choose from {', '.join(VARIANTS)}")
    out_dir = Path(config.out_dir)
    check_out_dir(out_dir, config.overwrite)
    model_path, split_path, metrics_path = locate_source(config)
    model = load_classifier(model_path)
    size = int(model.input_shape[1])
    labels_file = model_path.parent / "labels.txt"
    try:
        labels = (
            labels_file.read_text(encoding="utf-8").split("\n") if labels_file.is_file() else []
        )
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(
            f"{labels_file}: cannot be read as text ({type(error).__name__}): restore the "
            "labels.txt edge-train wrote (one label per line)"
        ) from None
    labels = [label.strip() for label in labels if label.strip()]
    if len(labels) != model.output_shape[-1]:
        raise ConversionError(
            f"{labels_file} must list {model.output_shape[-1]} labels (one per line), "
            f"found {len(labels)}"
        )
    if split_path is None:
        raise ConversionError(
            f"no split.csv beside {model_path}: pass --split-file (from edge-train)"
        )
    root = data_root(config, metrics_path)
    samples = dataset.read_split(split_path, root)
    unknown_labels = sorted({s.label for s in samples} - set(labels))
    if unknown_labels:
        raise ConversionError(
            f"{split_path} has labels {unknown_labels} that the model does not know"
        )

    needs_calibration = INT8 in config.variants
    calibration = (
        calibration_set(samples, config.calibration_samples, config.seed)
        if needs_calibration
        else []
    )
    if needs_calibration and len(calibration) < MIN_CALIBRATION:
        echo(
            f"warning: int8 is calibrated on only {len(calibration)} training image(s) "
            f"({MIN_CALIBRATION} or more recommended): check its verification figures"
        )
    if config.verify and not any(s.split == "test" for s in samples):
        raise ConversionError(
            f"{split_path} has no test rows to verify the models against: use the split.csv "
            "edge-train wrote, or pass --no-verify to convert without verification"
        )
    bar = lambda desc: lambda items: progress_bar(items, desc=desc, unit="img", leave=False)  # noqa: E731
    calibration_pixels = dataset.load_pixels(
        calibration, root, size, bar("load calibration images")
    )
    test = [s for s in samples if s.split == "test"] if config.verify else []
    test_pixels = dataset.load_pixels(test, root, size, bar("load test images"))
    y_test = np.array([labels.index(s.label) for s in test], dtype=np.int64)

    fitted = None
    if config.trust:
        from leukedge.convert import trust

        try:
            fitted = trust.fit(model, samples, labels, root, size, config, echo, bar)
        except FitError as error:
            raise ConversionError(f"cannot fit the trust parameters: {error}") from None

    model_bytes = model_path.read_bytes()
    source_sha = sha256_bytes(model_bytes)
    manifest = Manifest(
        created_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        leukedge_version=leukedge_version(),
        source_model=SourceModel(model_path.name, source_sha, len(model_bytes)),
        # Relative to the manifest's folder: an absolute path of the build machine means nothing
        # on another one (readers resolve it against the manifest's folder).
        data_dir=os.path.relpath(Path(root).resolve(), Path(config.out_dir).resolve()),
        split_file="split.csv",
        labels=labels,
        image_size=size,
        input={"color": "RGB", "layout": "NHWC", "range": [0, 255], "mean": [0.0], "std": [1.0]},
        calibration=Calibration(len(calibration), "train split, stratified", config.seed)
        if needs_calibration
        else None,
        max_drop_points=config.max_drop,
    )
    info = ModelMetadata(
        name="LeukEdge ALL blood-smear classifier",
        description=(
            "MobileNetV2 classifier of peripheral blood smear images into "
            f"{', '.join(labels)} (acute lymphoblastic leukemia subtypes). Research and "
            "screening aid, not a diagnostic device: results need expert review."
        ),
        version=f"{leukedge_version()}+{source_sha[:12]}",
        author="LeukEdge developers",
        license="Apache-2.0. Trained on the ALL image dataset (Aria et al., 2021, doi:10.34740/KAGGLE/DSV/2175623).",
        labels=labels,
        input_description=(
            f"RGB image, {size}x{size}, raw pixel values 0..255 (uint8 models take the pixels "
            "as they are; float models take the same values as float32). The model "
            "scales them internally."
        ),
        output_description=f"Probabilities of the {len(labels)} classes, in labels.txt order.",
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    # Staged inside out_dir, so publishing is a rename within one file system.
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=out_dir))
    try:
        # With trust parameters the reference is the wrapper's calibrated output (same argmax).
        keras_probs = (
            (
                fitted.probabilities(test_pixels)
                if fitted
                else model.predict(test_pixels.astype(np.float32), batch_size=32, verbose=0)
            )
            if len(test)
            else np.zeros((0, len(labels)))
        )
        if len(test):
            reference = classification_metrics(y_test, keras_probs.argmax(axis=1), labels)
            manifest.reference = Reference(
                "keras", reference["accuracy"], reference["macro"]["f1"], len(test)
            )
        saved_model = staging / "saved_model"
        (fitted.model if fitted else model).export(str(saved_model), verbose=False)
        if fitted:
            manifest.extra["trust_fit"] = fitted.summary()
        for variant in config.variants:
            echo(f"converting {variant}: {DESCRIPTIONS[variant]}")
            t0 = time.monotonic()
            calibrate = (
                representative_dataset(calibration_pixels, bar("calibrate int8"))
                if variant == INT8
                else None
            )
            try:
                tflite = convert_variant(saved_model, variant, calibrate, config.int8_io)
            except Exception as error:
                raise ConversionError(
                    f"TFLite conversion of {variant} failed: {str(error).splitlines()[0][:200]}"
                ) from None
            shared_scale = []
            if variant == INT8:
                unpacked = len(tflite)
                tflite, shared_scale = compact_kernels(tflite)
                if shared_scale:
                    echo(
                        f"int8: {len(shared_scale)} kernels trained on one int8 grid stored with one scale "
                        f"({(unpacked - len(tflite)) / 1024:.0f} KB smaller)"
                    )
            path = staging / file_name(variant)
            trust_entry = None
            if fitted:
                tflite, widened = fitted.prepare_outputs(tflite, variant)
                if widened:
                    echo(
                        f"{variant}: OOD branch ranges set from the fit ({len(widened)} tensors, "
                        f"cap {fitted.cap:.4g})"
                    )
                # Thresholds from this variant's own outputs on the validation split.
                write_atomic(
                    path,
                    with_metadata(tflite, fitted.metadata(info, with_trust_file=False)),
                    SHARED_MODE,
                )
                params = fitted.params_for(
                    Classifier(path, allow_unverified=True, require_trust=False)
                )
                trust_entry = params.to_dict()
                echo(
                    f"{variant}: OOD threshold {params.ood.threshold:.4g}, conformal threshold "
                    f"{params.conformal.threshold:.4g}"
                )
                tflite = with_metadata(tflite, fitted.metadata(info), fitted.files(params))
            else:
                tflite = with_metadata(tflite, info)
            write_atomic(path, tflite, SHARED_MODE)
            classifier = Classifier(path, allow_unverified=True)
            entry = VariantEntry(
                file=path.name,
                sha256=sha256_bytes(tflite),
                bytes=len(tflite),
                description=DESCRIPTIONS[variant],
                input=tensor_entry(classifier.input),
                output=tensor_entry(classifier.output),
                status=manifests.STATUS_NOT_VERIFIED,
                conversion_seconds=round(time.monotonic() - t0, 1),
            )
            if trust_entry is not None:
                entry.trust = trust_entry
                entry.extra["ood_output"] = tensor_entry(classifier.ood_output).to_dict()
                far_out = fitted.far_out_check(classifier)
                entry.extra["far_out_check"] = far_out
                if far_out["unknown"] < far_out["frames"]:
                    echo(
                        f"warning: {variant} calls only {far_out['unknown']} of "
                        f"{far_out['frames']} flat or noise frames unknown"
                    )
                if len(test):
                    entry.extra["trust_test"] = fitted.test_summary(classifier, test_pixels, y_test)
            if variant == INT8:
                entry.per_tensor_kernels = shared_scale
            if len(test):
                entry.verification = verify(classifier, test_pixels, y_test, keras_probs, labels)
                drop = 100 * (manifest.reference.accuracy - entry.verification.accuracy)
                entry.status = (
                    manifests.STATUS_OK
                    if drop <= config.max_drop
                    else f"{manifests.STATUS_FAILED_PREFIX}: accuracy drop"
                )
            manifest.variants[variant] = entry
        shutil.rmtree(saved_model)
        manifest.conversion_seconds = round(time.monotonic() - started, 1)
        (staging / "labels.txt").write_text("\n".join(labels) + "\n")
        shutil.copyfile(split_path, staging / "split.csv")
        (staging / "conversion_report.md").write_text(report.conversion_report(manifest))
        manifests.write(manifest, staging / MANIFEST_FILE)
        publish(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def publish(staging: Path, out_dir: Path) -> None:
    """Move the finished files into out_dir, replacing earlier outputs; manifest last."""
    for name in OUTPUT_FILES:
        if not (staging / name).exists():
            (out_dir / name).unlink(missing_ok=True)  # an old variant must not outlive its manifest
    for name in sorted(OUTPUT_FILES, key=lambda n: n == MANIFEST_FILE):
        if (staging / name).exists():
            shutil.move(str(staging / name), str(out_dir / name))
