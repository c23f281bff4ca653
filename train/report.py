"""Plots and the model card of a training run."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or the Pi
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def portable_path(path: str | Path) -> str:
    """A path as the model card shows it: relative to the folder the command ran in, never an
    absolute path of the build machine (a card travels with the model; nobody else has /work/...)."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    return os.path.relpath(text)


def plot_curves(history: list[dict], path: Path) -> None:
    """Accuracy and loss per epoch, train against validation; a line marks fine-tuning."""
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, key in zip(axes, ("accuracy", "loss")):
        axis.plot(epochs, [row.get(key) for row in history], marker=".", label="train")
        axis.plot(
            epochs, [row.get(f"val_{key}") for row in history], marker=".", label="validation"
        )
        for phase in ("fine-tune", "int8-refit"):
            starts = [row["epoch"] for row in history if row["phase"] == phase]
            if starts:
                axis.axvline(starts[0] - 0.5, color="grey", linestyle="--", linewidth=1)
                axis.text(starts[0] - 0.4, axis.get_ylim()[1], f" {phase}", va="top", fontsize=8)
        axis.set_xlabel("epoch")
        axis.set_title(key)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_confusion(metrics_by_split: dict[str, dict], path: Path) -> None:
    """One confusion matrix panel per split, counts in the cells."""
    figure, axes = plt.subplots(
        1, len(metrics_by_split), figsize=(5.5 * len(metrics_by_split), 4.8)
    )
    axes = np.atleast_1d(axes)
    for axis, (split, metrics) in zip(axes, metrics_by_split.items()):
        matrix = np.array(metrics["confusion_matrix"])
        labels = metrics["labels"]
        axis.imshow(matrix, cmap="Blues")
        for (row, col), count in np.ndenumerate(matrix):
            colour = "white" if count > matrix.max() / 2 else "black"
            axis.text(col, row, str(count), ha="center", va="center", color=colour)
        axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        axis.set_yticks(range(len(labels)), labels)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(f"{split}: accuracy {metrics['accuracy']:.2%} (n={metrics['n']})")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def model_card(metrics: dict) -> str:
    settings, data, test, val = (
        metrics["settings"],
        metrics["data"],
        metrics["test"],
        metrics["val"],
    )
    rows = "\n".join(
        f"| {label} | {test['per_class'][label]['precision']:.4f} | "
        f"{test['per_class'][label]['recall']:.4f} | {test['per_class'][label]['f1']:.4f} | "
        f"{test['per_class'][label]['support']} |"
        for label in metrics["labels"]
    )
    int8_note = (
        " Kernels kept on TFLite's per-channel int8 grid (frozen ones before training, the "
        f"fine-tuned ones after it, then up to {settings.get('int8_refit_epochs', 0)} head epochs on "
        "the rounded backbone), so the int8 model computes what this model does."
        + (
            f" Layers sharing one int8 scale per kernel: {', '.join(settings['int8_per_tensor_layers'])}."
            if settings.get("int8_per_tensor_layers")
            else ""
        )
        if settings.get("int8_grid")
        else ""
    )
    counts = "\n".join(
        f"| {label} | {data['usable_per_class'][label]} | "
        + " | ".join(str(data["split_counts"][s][label]) for s in ("train", "val", "test"))
        + " |"
        for label in metrics["labels"]
    )
    weights = (
        portable_path(settings["weights"])
        if settings["weights"] not in ("imagenet", "none")
        else settings["weights"]
    )
    teacher = metrics.get("teacher")
    teacher_note = ""
    if teacher:
        members = [portable_path(m) for m in teacher["models"]]
        who = (
            f"the teacher {members[0]} (its split)"
            if len(members) == 1
            else f"an ensemble of {len(members)} teachers (their mean probabilities; "
            f"their shared split): {', '.join(members)}"
        )
        how = (
            "scoring every augmented view in fine-tuning (consistent teaching)."
            if teacher.get("consistent")
            else "scoring each clean image once (fixed teaching)."
        )
        teacher_note = (
            f" Distilled from {who}: soft targets at temperature {teacher['temperature']:g} with "
            f"weight {teacher['soft_target_weight']:g}, the labels with the rest, the "
            f"{'teachers' if len(members) > 1 else 'teacher'} {how}"
        )
    command = (
        f"edge-train --data {portable_path(data['root'])} --out {portable_path(settings['out_dir'])} "
        f"--subset {settings['subset']} "
        f"--alpha {settings['alpha']} --image-size {settings['image_size']} --epochs {settings['epochs']} "
        f"--fine-tune-epochs {settings['fine_tune_epochs']} --fine-tune-from {settings['fine_tune_from']} "
        f"--batch-size {settings['batch_size']} --dropout {settings['dropout']} "
        f"--weights {weights} --seed {settings['seed']}"
        + (
            f" --int8-grid --int8-refit-epochs {settings.get('int8_refit_epochs', 0)} --int8-per-tensor "
            f"{','.join(settings.get('int8_per_tensor_layers') or ()) or 'none'}"
            if settings.get("int8_grid")
            else " --no-int8-grid"
        )
        + (
            f" --split-file {portable_path(settings['split_file'])}"
            if settings["split_file"]
            else ""
        )
        + (
            f" --limit-per-class {settings['limit_per_class']}"
            if settings["limit_per_class"]
            else ""
        )
        + (
            "".join(f" --teacher {portable_path(m)}" for m in settings["teachers"])
            + f" --distill-temperature {teacher['temperature']:g} "
            f"--distill-weight {teacher['soft_target_weight']:g} "
            + ("--consistent-teaching" if teacher.get("consistent") else "--fixed-teaching")
            if teacher
            else ""
        )
    )
    return f"""# Model card: LeukEdge MobileNetV2 ALL blood-smear classifier

**Intended use.** Research and screening aid that sorts microscope images of peripheral blood
smears (fields at 100x, as in the training data) into {", ".join(metrics["labels"])}. It is **not a diagnostic device**: every result must be
reviewed by a qualified hematologist, and low-confidence results are routed to expert review.

## Model
MobileNetV2 (alpha {settings["alpha"]}, input {settings["image_size"]}x{settings["image_size"]} RGB,
raw pixels 0..255; the scaling to [-1, 1] is the model's first layer), ImageNet weights
({weights}), GlobalAveragePooling2D, Dropout {settings["dropout"]}, Dense softmax.
Frozen-backbone phase (up to {settings["epochs"]} epochs on cached features), then fine-tuning from
backbone layer {settings["fine_tune_from"]} with BatchNormalization frozen (up to
{settings["fine_tune_epochs"]} epochs, Adam {settings["fine_tune_learning_rate"]} with cosine decay),
one warm-up epoch, label smoothing {settings["label_smoothing"]}, class weights, early stopping on
validation loss.{int8_note}{teacher_note} Augmentation: {", ".join(f"{k} {v}" for k, v in settings["augment"].items())}.

Reproduce: `{command}`

## Data
{portable_path(data["image_dir"])} ({data["subset"]} subset): {sum(data["usable_per_class"].values())} usable images
after removing {data["duplicates_removed"]} byte-identical duplicate(s) and skipping {data["skipped"]}
unreadable file(s). Stratified, seeded 80:10:10 split by image content (`split.csv`).

| class | usable | train | val | test |
|---|---|---|---|---|
{counts}

## Results (test split, n={test["n"]})
Accuracy **{test["accuracy"]:.2%}**, macro-F1 **{test["macro"]["f1"]:.4f}**
(validation: {val["accuracy"]:.2%}, macro-F1 {val["macro"]["f1"]:.4f}).
Published MobileNetV2 reference on the same public dataset: {metrics["published_reference"]["accuracy"]:.2%}.

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

Training took {metrics["timing_seconds"]["total"] / 60:.1f} min, peak RSS
{metrics["peak_rss_mb"] / 1024:.2f} GiB ({metrics["environment"]["machine"]}, TensorFlow
{metrics["environment"]["tensorflow"]}).

## Limitations
- The split is by image, not by patient: images of one patient's smear can sit in train and test,
  so these figures overstate accuracy on new patients.
- All images come from one laboratory, one microscope and one camera. Acquisition differs
  between classes (background tint, focus), so a model can partly learn the slide instead of the
  cell. Expect lower accuracy on other microscopes, cameras and stains; see docs/robustness.md.
- Four classes only: the network gives every image, whatever it shows (other leukemias, other
  cell types, artefacts), a top label among these four. The app's quality gate, its
  out-of-distribution score (`unknown`) and conformal referral (`uncertain`) catch many such
  images (docs/trust.md), not all of them.
"""
