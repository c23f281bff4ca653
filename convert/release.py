"""Build the release folder (models/) from finished edge-train runs.

    python -m leukedge.convert.release RUN_DIR [FAST_RUN_DIR] [--models models]
    scripts/release RUN_DIR [FAST_RUN_DIR]          (the same, from a checkout)

The default run is converted to int8 and fp16; the fast run, if given, to int8, which ships as
`model_fast_int8.tflite` with its own entry in the manifest (source model, Keras reference,
width, input size, the training settings that differ). Everything is converted and verified in
a staging folder first; the release folder is touched only when all of it passed, each file is
replaced atomically, and manifest.json goes last. A manifest that cannot be replaced stops the
release before any model file is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import click

from leukedge.convert.calibration_images import DEFAULT_CALIBRATION_SAMPLES
from leukedge.convert.trust_fit import DEFAULT_COVERAGE, DEFAULT_OOD_RETENTION
from leukedge.edge_app import manifest as manifests
from leukedge.edge_app.clitools import FiniteFloat
from leukedge.edge_app.files import SHARED_MODE, write_atomic
from leukedge.edge_app.manifest import (
    FAST_INT8,
    FP16,
    INT8,
    MANIFEST_FILE,
    Manifest,
    ManifestError,
    file_name,
)

MAX_DROP = 1.0  # accuracy points a variant may lose against its Keras model
DEFAULT_VARIANTS = (INT8, FP16)
CARD = "model_card.md"
REPORT = "conversion_report.md"
# What a release folder holds; anything else in it is left alone.
RELEASE_FILES = (
    *(file_name(v) for v in (*DEFAULT_VARIANTS, FAST_INT8)),
    "labels.txt",
    "split.csv",
    REPORT,
    CARD,
    MANIFEST_FILE,
)


class ReleaseError(ValueError):
    """The release cannot be built or published; the message names the file and what to do."""


def shown(path: Path) -> str:
    """A path as the release records it: relative to the current folder (no build-machine paths)."""
    return os.path.relpath(Path(path).resolve())


def training_settings(run: Path) -> dict:
    metrics = run / "metrics.json"
    try:
        return json.loads(metrics.read_text())["settings"]
    except (OSError, ValueError, KeyError) as error:
        raise ReleaseError(
            f"{metrics} is not an edge-train metrics.json ({type(error).__name__}: {error}): "
            "pass a finished edge-train run folder"
        ) from None


def differences(settings: dict, default: dict) -> dict:
    """Training settings that differ from the default run's (paths aside)."""
    return {
        k: v
        for k, v in settings.items()
        if k not in ("out_dir", "data_dir") and default.get(k) != v
    }


def check_runs(run: Path, fast: Path | None) -> None:
    for folder in (run, fast):
        if folder is not None and not (folder / "metrics.json").is_file():
            raise ReleaseError(f"{folder} is not a finished edge-train run (no metrics.json)")
    if fast is not None and (run / "split.csv").read_bytes() != (fast / "split.csv").read_bytes():
        raise ReleaseError(
            f"{fast} was trained on another split than {run}: retrain it with "
            f"--split-file {run / 'split.csv'}"
        )


def check_publishable(models: Path) -> None:
    """Refuse before anything is converted or replaced when the release folder cannot take it."""
    if models.exists() and not models.is_dir():
        raise ReleaseError(f"--models {models} is a file, not a folder")
    try:
        if models.is_dir():
            manifests.check_writable(models / MANIFEST_FILE)
        elif not models.parent.is_dir() or not manifests.writable(models.parent):
            raise ManifestError(
                f"{models.parent} is not a writable folder, so --models {models} cannot be made"
            )
    except ManifestError as error:
        raise ReleaseError(f"release refused, nothing was replaced: {error}") from None
    for name in RELEASE_FILES:
        path = models / name
        if path.exists() and not manifests.writable(path):
            raise ReleaseError(f"release refused, nothing was replaced: {path} is read-only")


def fast_entry(default: Manifest, fast: Manifest, fast_run: Path, default_run: Path):
    """The fast model's variant entry: its int8 entry plus what differs from the default model."""
    if fast.labels != default.labels:
        raise ReleaseError(f"{fast_run} has labels {fast.labels}, the default run {default.labels}")
    settings = training_settings(fast_run)
    entry = fast.variants[INT8]
    return replace(
        entry,
        file=file_name(FAST_INT8),
        description=f"MobileNetV2 alpha {settings['alpha']} at {fast.image_size} px, int8 weights "
        "and activations: the faster, smaller model",
        alpha=settings["alpha"],
        image_size=fast.image_size,
        source_model=fast.source_model,
        reference=fast.reference,
        calibration=fast.calibration,
        run=shown(fast_run),
        settings_differing_from_default=differences(settings, training_settings(default_run)),
    )


def fast_card(manifest: Manifest) -> str:
    """The model card section of the fast model."""
    fast, default = manifest.variants[FAST_INT8], manifest.variants[INT8]
    v, d = fast.verification, default.verification
    changed = (
        ", ".join(f"{k} {x}" for k, x in (fast.settings_differing_from_default or {}).items())
        or "none"
    )
    return "\n".join(
        [
            "",
            f"## Fast model (`{fast.file}`)",
            f"MobileNetV2 alpha {fast.alpha} at {fast.image_size} px, trained by edge-train ({fast.run}) "
            f"with the default model's seed, split and settings except {changed}, converted to int8 the same "
            f"way. On the same {v.n} test images: {v.accuracy:.2%} accuracy, macro-F1 {v.macro_f1:.4f} "
            f"(default int8: {d.accuracy:.2%}, {d.macro_f1:.4f}); Keras reference {fast.reference.accuracy:.2%}, "
            f"agreement with it {v.agreement:.2%}. {fast.bytes / 1024:.0f} KB "
            f"(default int8: {default.bytes / 1024:.0f} KB). Latency: see docs/benchmarks.md.",
            "",
        ]
    )


def model_card(
    run: Path, fast: Path | None, manifest: Manifest, report: str, commands: list[str]
) -> str:
    lines = [
        (run / CARD).read_text().rstrip("\n") if (run / CARD).is_file() else "# Model card",
        "",
        "## Release",
        f"Built by `scripts/release {shown(run)}{' ' + shown(fast) if fast else ''}` "
        "(`leukedge.convert.release`), which converts as these commands would:",
        "",
    ]
    lines += [f"    {command}" for command in commands]
    lines.append("")
    verification = report[report.index("## Verification") :] if "## Verification" in report else ""
    text = "\n".join(lines) + "\n" + verification
    if fast is not None:
        text += fast_card(manifest) + "\n"
    return text


def publish(staging: Path, models: Path) -> None:
    """Replace the release files in `models` with those in `staging`: each atomically, models first,
    manifest.json last, then remove release files the new manifest no longer lists."""
    check_publishable(models)  # again: the conversion took minutes
    models.mkdir(parents=True, exist_ok=True)
    names = [name for name in RELEASE_FILES if (staging / name).is_file()]
    if MANIFEST_FILE not in names:
        raise ReleaseError(f"{staging} holds no {MANIFEST_FILE}: nothing to publish")
    for name in sorted(names, key=lambda n: n == MANIFEST_FILE):
        write_atomic(models / name, (staging / name).read_bytes(), SHARED_MODE)
    for name in RELEASE_FILES:
        if name not in names and name.endswith(".tflite"):
            (models / name).unlink(missing_ok=True)  # an old variant must not outlive its manifest


def build(
    run: Path,
    fast: Path | None,
    models: Path,
    data_dir: Path | None = None,
    calibration_samples: int | None = None,
    max_drop: float = MAX_DROP,
    echo=print,
    coverage: float = DEFAULT_COVERAGE,
    ood_retention: float = DEFAULT_OOD_RETENTION,
) -> Manifest:
    """Convert, verify and publish; returns the published manifest. Raises ReleaseError."""
    run, models = Path(run), Path(models)
    fast = Path(fast) if fast else None
    check_runs(run, fast)
    check_publishable(models)
    from leukedge.convert.conversion import ConversionError, ConvertConfig, convert
    from leukedge.edge_app.runtime import ModelError
    from leukedge.train.dataset import DatasetError

    settings = " ".join(
        part
        for part in (
            f"--calibration-samples {calibration_samples}" if calibration_samples else "",
            f"--max-drop {max_drop:g}" if max_drop != MAX_DROP else "",
            f"--coverage {coverage:g}" if coverage != DEFAULT_COVERAGE else "",
            f"--ood-retention {ood_retention:g}" if ood_retention != DEFAULT_OOD_RETENTION else "",
        )
        if part
    )
    commands = [
        f"edge-convert {shown(run)} --out {shown(models)} --variants {','.join(DEFAULT_VARIANTS)} "
        + (f"{settings} --overwrite" if settings else "--overwrite")
    ]
    if fast is not None:
        commands.append(
            f"edge-convert {shown(fast)} --out TMP --variants {INT8} {settings}".rstrip()
        )
    parent = models.parent if models.parent.is_dir() else Path.cwd()
    staging = Path(tempfile.mkdtemp(prefix=".release-", dir=parent))
    try:
        echo(f"release: converting {shown(run)} ({', '.join(DEFAULT_VARIANTS)})")
        default_out = staging / "release"
        manifest = convert(
            ConvertConfig(
                source=run,
                out_dir=default_out,
                variants=DEFAULT_VARIANTS,
                calibration_samples=calibration_samples,
                max_drop=max_drop,
                data_dir=data_dir,
                coverage=coverage,
                ood_retention=ood_retention,
            ),
            echo,
        )
        if fast is not None:
            echo(f"release: converting the fast model {shown(fast)} ({INT8})")
            fast_out = staging / "fast"
            fast_manifest = convert(
                ConvertConfig(
                    source=fast,
                    out_dir=fast_out,
                    variants=(INT8,),
                    calibration_samples=calibration_samples,
                    max_drop=max_drop,
                    data_dir=data_dir,
                    coverage=coverage,
                    ood_retention=ood_retention,
                ),
                echo,
            )
            manifest.variants[FAST_INT8] = fast_entry(manifest, fast_manifest, fast, run)
            shutil.copyfile(fast_out / file_name(INT8), default_out / file_name(FAST_INT8))
        failed = [
            f"{name} ({entry.status})" for name, entry in manifest.variants.items() if not entry.ok
        ]
        if failed:
            raise ReleaseError(
                f"release refused, nothing was replaced: {', '.join(failed)} did not pass "
                "the accuracy check (see the conversion report)"
            )
        manifest.data_dir = shown(Path(manifest.data_dir))  # provenance without build-machine paths
        report = (default_out / REPORT).read_text()
        (default_out / CARD).write_text(model_card(run, fast, manifest, report, commands))
        manifests.write(manifest, default_out / MANIFEST_FILE)
        publish(default_out, models)
    except (ConversionError, DatasetError, ManifestError, ModelError) as error:
        raise ReleaseError(str(error)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifests.read(models)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run", type=click.Path(path_type=Path, file_okay=False))
@click.argument("fast_run", type=click.Path(path_type=Path, file_okay=False), required=False)
@click.option(
    "--models",
    type=click.Path(path_type=Path),
    default=Path("models"),
    show_default=True,
    help="The release folder to (re)build.",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Dataset root the runs' split paths are relative to. Default: the runs' own.",
)
@click.option(
    "--calibration-samples",
    type=click.IntRange(1),
    default=None,
    help="Training images that calibrate int8 (as edge-convert). Default: "
    f"{DEFAULT_CALIBRATION_SAMPLES}, or the whole train split if it has fewer.",
)
@click.option(
    "--max-drop",
    type=FiniteFloat(0),
    default=MAX_DROP,
    show_default=True,
    help="Refuse the release if a variant loses more accuracy points than this against Keras.",
)
@click.option(
    "--coverage",
    type=FiniteFloat(0.5, 0.999),
    default=DEFAULT_COVERAGE,
    show_default=True,
    help="Conformal target coverage (as edge-convert).",
)
@click.option(
    "--ood-retention",
    type=FiniteFloat(0.5, 0.999),
    default=DEFAULT_OOD_RETENTION,
    show_default=True,
    help="Share of validation frames the OOD threshold keeps (as edge-convert).",
)
def main(
    run: Path,
    fast_run: Path | None,
    models: Path,
    data_dir: Path | None,
    calibration_samples: int | None,
    max_drop: float,
    coverage: float,
    ood_retention: float,
) -> None:
    """Build the release folder from finished edge-train runs (int8 + fp16, and the fast model).

    FAST_RUN, if given, ships as model_fast_int8.tflite; it must share RUN's split.csv.
    Nothing in --models is replaced unless every variant converted and passed its check.

    \b
    Examples:
      scripts/release runs/default
      scripts/release runs/default runs/map/a0.5-s224
      python -m leukedge.convert.release runs/default --models /tmp/release
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        manifest = build(
            run,
            fast_run,
            models,
            data_dir,
            calibration_samples,
            max_drop,
            echo=lambda m: click.echo(m, err=True),
            coverage=coverage,
            ood_retention=ood_retention,
        )
    except ReleaseError as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        raise click.Abort() from None
    size = sum(p.stat().st_size for p in models.iterdir() if p.is_file())
    click.echo(f"release: {models}/ holds {', '.join(manifest.variants)} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    sys.exit(main())
