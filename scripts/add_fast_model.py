#!/usr/bin/env python
"""Add an edge-convert int8 model of a second run to models/ as model_fast_int8.tflite.

    add_fast_model.py CONVERTED_DIR MODELS_DIR RUN_DIR DEFAULT_RUN_DIR   copy the file, add its entry
    add_fast_model.py --card MODELS_DIR                  print the model card section for it

The entry is the converted int8 entry plus what differs from the default model (source model,
Keras reference accuracy, width, input size), so the app and edge-bench verify the file by its
sha256 like any other released model. Called by scripts/release.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

FAST_FILE = "model_fast_int8.tflite"


def training_settings(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["settings"]


def differences(settings: dict, default: dict) -> dict:
    """Training settings that differ from the default run's (paths aside)."""
    return {k: v for k, v in settings.items() if k not in ("out_dir", "data_dir") and default.get(k) != v}


def add(converted: Path, models: Path, run: Path, default_run: Path) -> None:
    source = json.loads((converted / "manifest.json").read_text())
    manifest = json.loads((models / "manifest.json").read_text())
    if source["labels"] != manifest["labels"]:
        sys.exit(f"add_fast_model: {converted} has labels {source['labels']}, models/ has {manifest['labels']}")
    settings = training_settings(run)
    entry = {**source["variants"]["int8"], "file": FAST_FILE,
             "description": f"MobileNetV2 alpha {settings['alpha']} at {source['image_size']} px, "
                            "int8 weights and activations: the faster, smaller model",
             "alpha": settings["alpha"], "image_size": source["image_size"],
             "source_model": source["source_model"], "reference": source["reference"],
             "calibration": source["calibration"], "run": os.path.relpath(run),
             "settings_differing_from_default": differences(settings, training_settings(default_run))}
    shutil.copyfile(converted / "model_int8.tflite", models / (FAST_FILE + ".tmp"))
    (models / (FAST_FILE + ".tmp")).replace(models / FAST_FILE)
    manifest["variants"]["fast_int8"] = entry
    (models / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def card(models: Path) -> str:
    manifest = json.loads((models / "manifest.json").read_text())
    fast, default = manifest["variants"]["fast_int8"], manifest["variants"]["int8"]
    v, d = fast["verification"], default["verification"]
    return "\n".join([
        "", "## Fast model (`model_fast_int8.tflite`)",
        f"MobileNetV2 alpha {fast['alpha']} at {fast['image_size']} px, trained by edge-train ({fast['run']}) "
        f"with the default model's seed, split and settings except "
        f"{', '.join(f'{k} {x}' for k, x in fast['settings_differing_from_default'].items())}, "
        f"converted to int8 the same way. On the same {v['n']} "
        f"test images: {v['accuracy']:.2%} accuracy, macro-F1 {v['macro_f1']:.4f} (default int8: "
        f"{d['accuracy']:.2%}, {d['macro_f1']:.4f}); Keras reference {fast['reference']['accuracy']:.2%}, "
        f"agreement with it {v['agreement']:.2%}. {fast['bytes'] / 1024:.0f} KB "
        f"(default int8: {default['bytes'] / 1024:.0f} KB). Latency: see docs/benchmarks.md.", ""])


if __name__ == "__main__":
    if sys.argv[1] == "--card":
        print(card(Path(sys.argv[2])))
    else:
        add(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
