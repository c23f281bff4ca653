"""`edge-convert`: command line for the conversion stage."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from leukedge.convert.calibration_images import DEFAULT_CALIBRATION_SAMPLES
from leukedge.convert.trust_fit import DEFAULT_COVERAGE, DEFAULT_OOD_RETENTION
from leukedge.edge_app.clitools import FiniteFloat
from leukedge.edge_app.manifest import CONVERTED_VARIANTS as VARIANT_NAMES


def _variants(ctx, param, value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    for name in names:
        if name not in VARIANT_NAMES:
            import difflib

            close = difflib.get_close_matches(name, VARIANT_NAMES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise click.BadParameter(
                f"unknown variant {name!r}{hint}; choose from {','.join(VARIANT_NAMES)}"
            )
    if not names:
        raise click.BadParameter("name at least one variant")
    return tuple(dict.fromkeys(names))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for model_<variant>.tflite, labels.txt, manifest.json, conversion_report.md.",
)
@click.option(
    "--variants",
    default=",".join(VARIANT_NAMES),
    callback=_variants,
    help="Comma-separated variants to write.",
)
@click.option(
    "--calibration-samples",
    type=click.IntRange(1),
    default=None,
    help="Training images used to calibrate int8 (stratified by class). Default: "
    f"{DEFAULT_CALIBRATION_SAMPLES}, or the whole train split if it has fewer.",
)
@click.option(
    "--int8-io",
    type=click.Choice(["uint8", "int8", "float32"]),
    default="uint8",
    help="Input/output type of the int8 model (uint8: camera pixels go in as they are).",
)
@click.option(
    "--max-drop",
    type=FiniteFloat(0),
    default=1.0,
    help="Exit 1 if a variant's test accuracy is more than this many points below Keras.",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Dataset root the split's paths are relative to. Default: the run's, else $LEUKEDGE_DATA.",
)
@click.option(
    "--split-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="split.csv to calibrate and verify with. Default: the one beside the model.",
)
@click.option("--seed", type=int, default=0, help="Seed for picking calibration images.")
@click.option(
    "--no-verify",
    "verify",
    flag_value=False,
    default=True,
    show_default=False,
    help="Skip the accuracy check on the test split.",
)
@click.option(
    "--no-trust",
    "trust",
    flag_value=False,
    default=True,
    show_default=False,
    help="Skip the trust parameters (calibration, conformal referral, OOD score): a "
    "single-output model that the app runs on the legacy 0.80 rule.",
)
@click.option(
    "--coverage",
    type=FiniteFloat(0.5, 0.999),
    default=DEFAULT_COVERAGE,
    show_default=True,
    help="Conformal target coverage: the prediction set holds the true label this often.",
)
@click.option(
    "--ood-retention",
    type=FiniteFloat(0.5, 0.999),
    default=DEFAULT_OOD_RETENTION,
    show_default=True,
    help="Share of validation frames the OOD threshold keeps (the rest would be 'unknown'); "
    "the default was chosen under field shifts on the val split (docs/trust.md).",
)
@click.option(
    "--ood-dims",
    type=click.IntRange(1, 1280),
    default=None,
    help="Whitened dimensions of the Mahalanobis OOD score (features x dims weights in the "
    "model). Default: as many as the train split supports, at most 256.",
)
@click.option("--overwrite", is_flag=True, help="Replace earlier models in --out.")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show TensorFlow's C++ log lines and library warnings (hidden: they are harmless noise).",
)
def main(source: Path, out_dir: Path, verbose: bool, **options) -> None:
    """Convert a trained model (edge-train RUN_DIR or MODEL.keras) to TFLite.

    Writes float32, float16, dynamic-range and full-int8 models, each with TFLite metadata
    (labels, input normalization) that Android tooling reads, verifies each against the Keras
    model on the run's test split, and records hashes, tensors and figures in manifest.json.

    Unless --no-trust, each model also gets its trust parameters (docs/trust.md): temperature
    scaling fit on the val split folded into the graph, a second output "ood_score"
    (Mahalanobis distance of the pooled features, statistics from the train split), and that
    variant's own conformal (LAC) and OOD thresholds from its outputs on the val split, written
    into the model as leukedge_trust.json and into manifest.json.

    \b
    Examples:
      edge-convert runs/default --out runs/default/tflite
      edge-convert runs/default/model.keras --out models --variants int8,fp16
      edge-convert runs/default --out out --int8-io float32 --calibration-samples 500
      edge-convert runs/default --out out --coverage 0.99 --ood-retention 0.97
    """
    context = click.get_current_context()
    given = [
        f"--{name.replace('_', '-')}"
        for name in ("coverage", "ood_retention", "ood_dims")
        if context.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    ]
    if not options["trust"] and given:
        raise click.UsageError(
            f"{', '.join(given)} set(s) a trust parameter, and --no-trust fits none: "
            "leave out one or the other"
        )
    from leukedge.train.quiet import quiet_tensorflow

    quiet_tensorflow(verbose)
    from leukedge.convert.conversion import ConversionError, ConvertConfig, check_out_dir
    from leukedge.convert.report import verification_table
    from leukedge.edge_app.runtime import ModelError
    from leukedge.train.dataset import DatasetError

    config = ConvertConfig(source=source, out_dir=out_dir, **options)
    try:
        check_out_dir(out_dir, config.overwrite)  # before the slow TensorFlow import
        from leukedge.convert.conversion import convert

        manifest = convert(config, echo=lambda m: click.echo(m, err=True))
    except (ConversionError, DatasetError, ModelError) as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        raise click.Abort() from None
    click.echo(verification_table(manifest))
    click.echo(
        f"wrote {out_dir}/ in {manifest.conversion_seconds:.0f} s "
        "(model_*.tflite, labels.txt, manifest.json, conversion_report.md)"
    )
    failed = [name for name, entry in manifest.variants.items() if entry.failed]
    if failed:
        click.echo(
            f"error: {', '.join(failed)} lost more than {config.max_drop} accuracy points "
            "against Keras (see conversion_report.md)",
            err=True,
        )
        sys.exit(1)
