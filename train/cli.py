"""`edge-train`: command line for the training stage."""

from __future__ import annotations

import os
from pathlib import Path

import click

from leukedge.edge_app.clitools import FiniteFloat
from leukedge.train.config import ALPHAS, STRATEGIES, TrainConfig
from leukedge.train.dataset import SUBSETS, default_data_dir


def _weights(ctx, param, value: str) -> str:
    if value in ("imagenet", "none") or Path(value).is_file():
        return value
    raise click.BadParameter(f"{value!r} is neither imagenet, none, nor an existing .h5 file")


def _layer_names(ctx, param, value: str) -> tuple[str, ...]:
    return (
        ()
        if value.strip().lower() in ("", "none")
        else tuple(n.strip() for n in value.split(",") if n.strip())
    )


def pool_cpu_memory() -> None:
    """Have TensorFlow take CPU tensors from its BFC pool, unless TF_CPU_ALLOCATOR_USE_BFC is set.

    Its default CPU allocator hands every large activation back to the OS and faults it in again
    on the next step: 195 million page faults and a fifth of the CPU time of a default training
    on a 2-core AVX2 EPYC. TensorFlow reads the variable at its first allocation, and on a value
    it cannot parse it logs a warning (hidden in quiet mode) and silently keeps its default, so a
    value other than true/false/1/0 is refused here.
    """
    value = os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    if value.strip().lower() not in ("true", "false", "1", "0"):
        raise click.ClickException(
            f"TF_CPU_ALLOCATOR_USE_BFC={value!r} is not understood by TensorFlow: "
            "set it to true (pooled, faster) or false, or unset it"
        )


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Dataset root (Kaggle layout with Original/ and Segmented/) or a folder of class "
    "folders. Default: $LEUKEDGE_DATA, else ../shared/data/all-leukemia.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Run folder to create (model.keras, metrics.json, plots, model card).",
)
@click.option(
    "--subset",
    type=click.Choice(SUBSETS),
    default="original",
    help="Which Kaggle image set to train on.",
)
@click.option(
    "--alpha",
    type=click.Choice([str(a) for a in ALPHAS]),
    default="1.0",
    help="MobileNetV2 width multiplier (smaller is faster on the Pi).",
)
@click.option(
    "--image-size", type=click.IntRange(32, 512), default=224, help="Square input side in pixels."
)
@click.option(
    "--epochs",
    type=click.IntRange(0),
    default=TrainConfig.epochs,
    help="Frozen-backbone epochs (head only).",
)
@click.option(
    "--fine-tune-epochs",
    type=click.IntRange(0),
    default=TrainConfig.fine_tune_epochs,
    help="Epochs with the top of the backbone unfrozen; 0 skips fine-tuning.",
)
@click.option(
    "--fine-tune-from",
    type=click.IntRange(0),
    default=TrainConfig.fine_tune_from,
    help="First backbone layer index to unfreeze (MobileNetV2 has ~154; 54 is block_6).",
)
@click.option(
    "--int8-grid/--no-int8-grid",
    default=TrainConfig.int8_grid,
    help="Keep the backbone kernels on TFLite's per-channel int8 grid (frozen ones before "
    "training, fine-tuned ones after it, then a short head refit), so the int8 model "
    "computes what the trained model does.",
)
@click.option(
    "--int8-refit-epochs",
    type=click.IntRange(0),
    default=TrainConfig.int8_refit_epochs,
    help="Head epochs after the fine-tuned kernels are rounded (with --int8-grid).",
)
@click.option(
    "--int8-per-tensor",
    "int8_per_tensor_layers",
    callback=_layer_names,
    default=",".join(TrainConfig.int8_per_tensor_layers),
    help="Backbone layers (comma-separated Keras names, or 'none') whose kernels share one "
    "int8 scale instead of one per channel (with --int8-grid); edge-convert then stores "
    "one scale for them, which makes the int8 file smaller.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="Images per training step (the global batch, split over devices or workers).",
)
@click.option(
    "--weights",
    default="imagenet",
    callback=_weights,
    help="Backbone weights: imagenet (looked up in the Keras cache, $LEUKEDGE_WEIGHTS, "
    "../shared/weights, then downloaded), none, or a no-top .h5 path.",
)
@click.option(
    "--seed", type=int, default=0, help="Seed for the split, initialisation and augmentation."
)
@click.option(
    "--split-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Reuse this split.csv exactly (e.g. from an earlier run).",
)
@click.option(
    "--limit-per-class",
    type=click.IntRange(1),
    default=None,
    help="Use only the first N images per class (quick experiments, tests).",
)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default="default",
    help="tf.distribute strategy: mirrored for several GPUs (or CPU devices), multiworker for "
    "several hosts (TF_CONFIG on each; only the chief writes --out). See docs/training.md.",
)
@click.option(
    "--dropout",
    type=FiniteFloat(0.0, 0.9),
    default=TrainConfig.dropout,
    help="Dropout before the softmax layer.",
)
@click.option(
    "--teacher",
    "teachers",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Distil from this model: an edge-train run folder, or a .tflite with labels.txt and "
    "split.csv beside it (e.g. models/model_fp16.tflite). The student uses its split. Give it "
    "again for an ensemble teacher (mean probabilities; the members must share the split).",
)
@click.option(
    "--distill-temperature",
    type=FiniteFloat(1.0, 20.0),
    default=TrainConfig.distill_temperature,
    help="Temperature that softens the teacher's and the student's probabilities (with --teacher).",
)
@click.option(
    "--distill-weight",
    type=FiniteFloat(0.0, 1.0),
    default=TrainConfig.distill_weight,
    help="Share of the soft-target term in the loss; the labels get the rest (with --teacher).",
)
@click.option(
    "--consistent-teaching/--fixed-teaching",
    "distill_consistent",
    default=TrainConfig.distill_consistent,
    help="With --teacher: the teacher scores every augmented view the student sees (one teacher "
    "invoke per image and epoch), instead of each clean image once.",
)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder.")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show TensorFlow's C++ log lines and library warnings (hidden: they are harmless noise).",
)
def main(data_dir: Path, out_dir: Path, alpha: str, verbose: bool, **options) -> None:
    """Train the MobileNetV2 leukemia blood-smear classifier.

    \b
    Examples:
      edge-train --out runs/default
      edge-train --out runs/a035-128 --alpha 0.35 --image-size 128
      edge-train --data ~/leukemia --out runs/reuse --split-file runs/default/split.csv
      edge-train --out runs/fast --alpha 0.35 --image-size 128 --teacher models/model_fp16.tflite
      edge-train --out runs/kd144 --alpha 0.5 --image-size 144 --fine-tune-from 0 --fine-tune-epochs 24 \\
        --teacher models/model_fp16.tflite --consistent-teaching
      edge-train --out runs/kd-ens --alpha 0.5 --image-size 144 --fine-tune-from 0 --fine-tune-epochs 24 \\
        --teacher models/model_fp16.tflite --teacher runs/seed1/tflite/model_fp16.tflite
      TF_CONFIG='{"cluster": {"worker": ["a:2222", "b:2222"]}, "task": {"type": "worker", "index": 0}}' \\
        edge-train --out runs/mw --strategy multiworker    # the same on host b with index 1
    """
    from leukedge.train.quiet import quiet_tensorflow

    quiet_tensorflow(verbose)
    pool_cpu_memory()
    from leukedge.edge_app.clitools import progress_bar
    from leukedge.train import dataset
    from leukedge.train.cluster import WorkerLostError, parse_tf_config
    from leukedge.train.config import SettingsError, WeightsError
    from leukedge.train.distill import check_teachers
    from leukedge.train.run_dir import RunDirError, check_out_dir

    try:
        data_dir = data_dir if data_dir is not None else default_data_dir()
    except dataset.DatasetError as error:
        raise click.ClickException(str(error)) from None
    config = TrainConfig(data_dir=data_dir, out_dir=out_dir, alpha=float(alpha), **options)
    try:
        # Bad output folders, data and split files fail here, before TensorFlow is imported.
        check_out_dir(out_dir, config.overwrite)
        if config.strategy == "multiworker":
            parse_tf_config(os.environ.get("TF_CONFIG"))
        if config.split_file:
            dataset.read_split(config.split_file, data_dir)
        context = click.get_current_context()
        given = {
            name
            for name in ("distill_temperature", "distill_weight", "int8_refit_epochs")
            if context.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
        }
        if config.teachers:
            check_teachers(config.teachers, None, config.split_file)
        elif config.distill_consistent:
            raise SettingsError("--consistent-teaching needs a --teacher to score the views")
        elif given & {"distill_temperature", "distill_weight"}:
            names = sorted(f"--{n.replace('_', '-')}" for n in given if n.startswith("distill"))
            raise SettingsError(
                f"{', '.join(names)}: set(s) the distillation loss, which needs a --teacher: "
                "add one, or leave the option out"
            )
        if "int8_refit_epochs" in given and not config.int8_grid:
            raise SettingsError(
                "--int8-refit-epochs refits the head after the int8 rounding, which "
                "--no-int8-grid turns off: leave one of them out"
            )
        scan = dataset.scan(
            data_dir,
            config.subset,
            config.image_size,
            config.limit_per_class,
            progress=lambda items: progress_bar(items, desc="decode images", unit="img"),
        )
        click.echo(dataset.summary(scan))
        from leukedge.train.training import train

        metrics = train(config, echo=click.echo, scan=scan)
    except (
        dataset.DatasetError,
        RunDirError,
        WeightsError,
        SettingsError,
        WorkerLostError,
    ) as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        raise click.Abort() from None
    if "test" not in metrics:  # a worker other than the chief: the chief reports and writes
        return
    test = metrics["test"]
    click.echo(
        f"test accuracy {test['accuracy']:.2%}, macro-F1 {test['macro']['f1']:.4f} "
        f"(n={test['n']}); {metrics['timing_seconds']['total'] / 60:.1f} min, "
        f"peak RSS {metrics['peak_rss_mb']:.0f} MB"
    )
    click.echo(
        f"wrote {out_dir}/ (model.keras, metrics.json, curves.png, confusion_matrix.png, model_card.md)"
    )
