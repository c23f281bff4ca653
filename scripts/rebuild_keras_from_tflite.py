#!/usr/bin/env python
"""Rebuild a run folder (model.keras, labels.txt, split.csv, metrics.json) from an int8 .tflite.

For a released model whose model.keras is lost: edge-convert can then convert it again. The
weights come from the .tflite (see leukedge/convert/rebuild.py); the architecture is the
project's own (edge-train's MobileNetV2 classifier), so pass the --alpha it was trained with.

    scripts/rebuild_keras_from_tflite.py models/model_int8.tflite --out runs/release-rebuilt \\
        --data ../shared/data/all-leukemia
    edge-convert runs/release-rebuilt --out runs/release-rebuilt/tflite
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from leukedge.edge_app.clitools import FiniteFloat


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("tflite", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Run folder to write (model.keras, labels.txt, split.csv, metrics.json).",
)
@click.option(
    "--alpha",
    type=FiniteFloat(0, min_open=True),
    default=1.0,
    help="MobileNetV2 width the model was trained with.",
)
@click.option(
    "--dropout",
    type=FiniteFloat(0, 1),
    default=0.2,
    help="Dropout of the head (inactive at inference; kept for the saved config).",
)
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="labels.txt in output order. Default: the one beside TFLITE.",
)
@click.option(
    "--split-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="split.csv to verify with (copied into the run). Default: the one beside TFLITE.",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Dataset root the split's paths are relative to. Default: $LEUKEDGE_DATA.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
def main(tflite: Path, out_dir: Path, **options) -> None:
    """Rebuild the Keras model of TFLITE (an edge-convert int8 or float32 file) and verify it
    against TFLITE on the split's val and test images.

    \b
    Examples:
      rebuild_keras_from_tflite.py models/model_int8.tflite --out runs/release-rebuilt
      rebuild_keras_from_tflite.py out/model_int8.tflite --out runs/tiny --alpha 0.35 \\
          --labels runs/tiny/labels.txt --split-file runs/tiny/split.csv
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from leukedge.train.run_dir import RunDirError, check_out_dir

    try:
        check_out_dir(out_dir, options["overwrite"])  # before the slow TensorFlow import
        from leukedge.convert.rebuild import RebuildError, rebuild_run
        from leukedge.train.dataset import DatasetError

        try:
            rebuild_run(tflite, out_dir, echo=lambda m: click.echo(m, err=True), **options)
        except (RebuildError, DatasetError) as error:
            raise click.ClickException(str(error)) from None
    except RunDirError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {out_dir}/ (model.keras, labels.txt, split.csv, metrics.json)")


if __name__ == "__main__":
    main()
