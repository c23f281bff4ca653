"""Largest probability difference between two LiteRT runtimes on the same images and model.

    python scripts/runtime_diff.py models/model_int8.tflite ../shared/data/all-leukemia/Original

Takes the last 8 images of each class folder (the images scripts/pi-emulation-check uses) and
runs them through ai-edge-litert and tflite-runtime (both must be importable; tflite-runtime 2.14
needs numpy < 2). Prints the largest |p| difference in steps of the uint8 output (1/256) and how
many top labels differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from leukedge.edge_app.imaging import load_rgb
from leukedge.edge_app.runtime import Classifier


def main(
    model: Path, data: Path, runtimes: tuple[str, str] = ("ai-edge-litert", "tflite-runtime")
) -> None:
    images = [
        p
        for folder in sorted(d for d in data.iterdir() if d.is_dir())
        for p in sorted(folder.glob("*.jpg"))[-8:]
    ]
    first, second = (Classifier(model, threads=1, runtime=name) for name in runtimes)
    worst, flips = 0.0, 0
    for path in images:
        rgb = load_rgb(path)
        a, b = first.classify(rgb), second.classify(rgb)
        worst = max(worst, float(np.max(np.abs(a - b))))
        flips += int(np.argmax(a) != np.argmax(b))
    print(
        f"{first.runtime.name} {first.runtime.version} vs {second.runtime.name} {second.runtime.version}, "
        f"{len(images)} images: max |p diff| {worst * 256:.1f}/256, top label differs on {flips}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/runtime_diff.py MODEL.tflite DATASET_FOLDER")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
