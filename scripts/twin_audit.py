"""How much a split leaks through near-twins (the same field saved twice), and what the models
score on the test images that have no twin in train or val.

    .venv/bin/python scripts/twin_audit.py models/split.csv models/model_int8.tflite \
        models/model_fast_int8.tflite [--data ../shared/data/all-leukemia] [--json audit.json]

`edge-train` keeps twins in one split for every new split; a split made before that (the
released models' models/split.csv) can hold twins on both sides. Prints one line per model.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from leukedge.edge_app.files import write_atomic
from leukedge.edge_app.imaging import ImageDecodeError, load_rgb
from leukedge.edge_app.runtime import Classifier, ModelError
from leukedge.train import dataset, twins


@click.command()
@click.argument("split_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("models", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(split_file: Path, models: tuple[Path, ...], data: Path | None, json_path: Path | None):
    try:
        audit(split_file, models, data or dataset.default_data_dir(), json_path)
    except (dataset.DatasetError, ModelError, ImageDecodeError, OSError) as error:
        raise click.ClickException(str(error)) from None


def audit(split_file: Path, models: tuple[Path, ...], data: Path, json_path: Path | None) -> None:
    samples = dataset.read_split(split_file, data)
    images = {s.sha256: load_rgb(data / s.path) for s in samples}
    groups = twins.twin_groups([s.sha256 for s in samples], images)
    split_of = {s.sha256: s.split for s in samples}
    leaked = twins.across_splits(split_of, groups)
    twinned = twins.split_apart(split_of, groups)
    test = [s for s in samples if s.split == "test"]
    clean = [s for s in test if s.sha256 not in twinned]
    result = {"split": split_file.name, "groups": len(groups), "leaked": leaked, "models": {}}
    click.echo(
        f"{split_file}: {len(groups)} near-twin group(s); images with a twin in another split: "
        f"train {leaked['train']}, val {leaked['val']}, test {leaked['test']} of {len(test)}"
    )
    for path in models:
        model = Classifier(path, threads=2, allow_unverified=True)
        pixels = dataset.load_pixels(test, data, model.image_size)
        right = {
            s.sha256: model.labels[int(model.classify(x).argmax())] == s.label
            for s, x in zip(test, pixels)
        }
        n_all, n_clean = sum(right.values()), sum(right[s.sha256] for s in clean)
        result["models"][path.name] = {
            "test": [n_all, len(test)],
            "test_without_twins": [n_clean, len(clean)],
        }
        click.echo(
            f"{path.name}: test {n_all}/{len(test)} ({100 * n_all / len(test):.2f}%), "
            f"without the twinned images {n_clean}/{len(clean)} "
            f"({100 * n_clean / len(clean):.2f}%)"
        )
    if json_path:
        write_atomic(json_path, (json.dumps(result, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
