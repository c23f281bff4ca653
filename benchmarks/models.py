"""Which models to benchmark: `.tflite`/`.keras` files, or folders written by `edge-convert`.

A folder is read through its manifest.json (variants keyed by name, never by order). Every
model becomes a `ModelEntry` naming its variant, so rows and the agreement reference are
keyed by name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from leukedge.edge_app import manifest as manifests
from leukedge.edge_app.manifest import Manifest, ManifestError
from leukedge.edge_app.runtime import RELEASED_MODEL, default_model_path

KERAS = "keras"
# Most precise first: agreement is measured against the first of these present in a group.
PRECISION_ORDER = (KERAS, *manifests.PRECISION_ORDER)
MODEL_SUFFIXES = (".tflite", ".keras")


class ModelDiscoveryError(ValueError):
    """A path given as a model cannot be used; the message names it and what to pass instead."""


@dataclass(frozen=True)
class ModelEntry:
    path: Path  # the model file
    variant: str  # fp32 | fp16 | dynamic | int8 | keras, else the file's stem
    kind: str  # "tflite" or "keras"
    manifest: Manifest | None = None  # manifest.json of the folder the model sits in, if any
    label: str = ""  # the table name discover_models chose; "" means parent folder / file name

    @property
    def name(self) -> str:
        """A short name for tables: parent folder / file name, longer where two would clash."""
        return self.label or table_name(self.path)

    @property
    def manifest_dir(self) -> Path | None:
        return self.path.parent if self.manifest is not None else None

    @property
    def precision_rank(self) -> int:
        """0 for the most precise variant; unknown variants rank after int8."""
        return (
            PRECISION_ORDER.index(self.variant)
            if self.variant in PRECISION_ORDER
            else len(PRECISION_ORDER)
        )


def _path_tail(path: Path, parts: int) -> str:
    return "/".join(path.parts[-parts:])


def table_name(path: Path) -> str:
    """A model's name in tables when nothing clashes with it: parent folder / file name."""
    return _path_tail(path, 2)


def with_unique_names(entries: Sequence[ModelEntry]) -> list[ModelEntry]:
    """The entries with names that tell them apart: the shortest path tail unique among them.

    Two edge-convert folders both hold `tflite/model_int8.tflite`; a table that shows that name
    twice cannot be read, so those names grow by a folder until they differ.
    """
    # As the user named them (symlinks kept), made absolute so every name can grow.
    absolute = [Path(os.path.abspath(entry.path)) for entry in entries]
    labels = [table_name(entry.path) for entry in entries]
    for parts in range(3, max((len(p.parts) for p in absolute), default=0) + 1):
        clashing = {label for label in labels if labels.count(label) > 1}
        if not clashing:
            break
        labels = [
            _path_tail(path, parts) if label in clashing else label
            for label, path in zip(labels, absolute)
        ]
    return [replace(entry, label=label) for entry, label in zip(entries, labels)]


def read_manifest(folder: Path) -> Manifest | None:
    """manifest.json of `folder`, None when there is none; raises on an unreadable or invalid one."""
    try:
        return manifests.find(folder)
    except ManifestError as error:
        raise ModelDiscoveryError(str(error)) from None


def _variant_of(path: Path, manifest: Manifest | None) -> str:
    if path.suffix == ".keras":
        return KERAS
    found = manifest.entry_for_file(path.name) if manifest is not None else None
    if found is not None:
        return found[0]
    stem = path.stem
    return stem[len("model_") :] if stem.startswith("model_") else stem


def entry_for_file(path: Path) -> ModelEntry:
    """A single model file. Its kind comes from the suffix (anything else is tried as TFLite)."""
    path = Path(path)
    manifest = None
    if path.suffix != ".keras":
        try:
            manifest = read_manifest(path.parent)
        except ModelDiscoveryError:
            manifest = None  # the runtime reports the broken manifest on the row itself
    kind = KERAS if path.suffix == ".keras" else "tflite"
    return ModelEntry(path, _variant_of(path, manifest), kind, manifest)


def entries_in_folder(folder: Path) -> list[ModelEntry]:
    """The variants listed in an edge-convert folder's manifest, else every model file in it."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is not None and manifest.variants:
        entries = [
            ModelEntry(folder / entry.file, variant, "tflite", manifest)
            for variant, entry in manifest.variants.items()
        ]
    else:
        entries = [
            entry_for_file(path)
            for path in sorted(folder.iterdir())
            if path.is_file() and path.suffix in MODEL_SUFFIXES
        ]
    if not entries:
        raise ModelDiscoveryError(
            f"{folder} has no manifest.json and no .tflite or .keras model: "
            "pass model files or a folder written by edge-convert"
        )
    return sorted(entries, key=lambda e: (e.precision_rank, e.path.name))


def discover_models(paths: Sequence[str | Path]) -> list[ModelEntry]:
    """ModelEntry for each file or edge-convert folder, in the order given, duplicates dropped.

    With no paths, the released default model (models/model_int8.tflite).
    """
    if not paths:
        default = default_model_path()  # $LEUKEDGE_MODEL, else the released int8 model
        if default is None or not default.is_file():
            raise ModelDiscoveryError(
                f"no model given and the default {default or RELEASED_MODEL} does not "
                "exist: pass a .tflite file or an edge-convert folder"
            )
        paths = [default]
    found: list[ModelEntry] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ModelDiscoveryError(f"model {path} does not exist")
        entries = entries_in_folder(path) if path.is_dir() else [entry_for_file(path)]
        for entry in entries:
            key = entry.path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(entry)
    return with_unique_names(found)


def split_file_of(entries: Sequence[ModelEntry]) -> tuple[Path, Manifest | None] | None:
    """The first split.csv beside the given models (an edge-convert or edge-train folder).

    Returns (split.csv path, manifest of that folder or None), preferring manifest folders.
    """
    ordered = sorted(entries, key=lambda e: e.manifest is None)
    for entry in ordered:
        name = entry.manifest.split_file if entry.manifest is not None else "split.csv"
        candidate = entry.path.parent / name
        if candidate.is_file():
            return candidate, entry.manifest
    return None
