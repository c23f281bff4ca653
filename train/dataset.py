"""Find, deduplicate and split the labelled blood-smear images. No TensorFlow here.

`convert` and `benchmarks` read the split through this module too, so it stays importable on
the Pi. Paths in `split.csv` are relative to the dataset root, so a split made here can be
reused on a copy of the dataset anywhere else (`--data` says where).
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leukedge.edge_app.imaging import ImageDecodeError, is_image_file, load_rgb, prepare

CANONICAL_LABELS = ("Benign", "Early Pre-B", "Pre-B", "Pro-B")
SUBSETS = ("original", "segmented")
SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ("path", "sha256", "label", "split")

# Folder names of both public releases (Kaggle "mehradaria/leukemia" and the original
# "Blood cells Cancer (ALL)" layout), compared after lower-casing and dropping non-letters.
_FOLDER_ALIASES = {
    "benign": "Benign",
    "hematogones": "Benign",
    "early": "Early Pre-B",
    "earlypreb": "Early Pre-B",
    "malignantearlypreb": "Early Pre-B",
    "pre": "Pre-B",
    "preb": "Pre-B",
    "malignantpreb": "Pre-B",
    "pro": "Pro-B",
    "prob": "Pro-B",
    "malignantprob": "Pro-B",
}


class DatasetError(ValueError):
    """The dataset or split file cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the dataset root, with forward slashes
    sha256: str
    label: str
    split: str = ""


@dataclass
class Scan:
    """Result of scanning a dataset folder: usable samples, their pixels and what was skipped."""

    root: Path
    image_dir: Path
    labels: list[str]
    samples: list[Sample]
    images: dict[str, np.ndarray]  # sha256 -> decoded RGB uint8
    skipped: list[tuple[str, str]]  # (path, reason)
    duplicates: int
    found_per_class: dict[str, int]
    ignored_folders: list[tuple[str, str]] = field(default_factory=list)  # (folder name, why)


def default_data_dir() -> Path:
    """$LEUKEDGE_DATA, else ../shared/data/all-leukemia beside a source checkout; else DatasetError
    saying how to get the data (an installed wheel has no checkout to look beside)."""
    from leukedge.edge_app.checkout import beside_checkout

    env = os.environ.get("LEUKEDGE_DATA")
    if env:
        return Path(env)
    beside_repo = beside_checkout("shared", "data", "all-leukemia")
    if beside_repo is not None and beside_repo.is_dir():
        return beside_repo
    looked = f", nor at {beside_repo}" if beside_repo is not None else ""
    raise DatasetError(
        f"no dataset given: --data is not set, $LEUKEDGE_DATA is not set{looked}. Download "
        "the Kaggle dataset mehradaria/leukemia (https://www.kaggle.com/datasets/mehradaria/"
        "leukemia), unzip it and pass --data PATH or set LEUKEDGE_DATA=PATH"
    )


def canonical_label(folder_name: str) -> str:
    key = re.sub(r"[^a-z]", "", folder_name.lower())
    return _FOLDER_ALIASES.get(key, folder_name)


def ordered_labels(labels: Iterable[str]) -> list[str]:
    """Known labels in their canonical order, then any others alphabetically."""
    labels = set(labels)
    known = [label for label in CANONICAL_LABELS if label in labels]
    return known + sorted(labels - set(known))


# Folders that archivers and operating systems leave beside the data: never classes.
METADATA_FOLDERS = frozenset(
    {
        "__macosx",
        "@eadir",
        "$recycle.bin",
        "system volume information",
        "lost+found",
        "thumbs.db",
        ".ds_store",
    }
)


def is_metadata_name(name: str) -> bool:
    """Hidden (.name, AppleDouble ._name) or archive/OS metadata (__MACOSX, @eaDir ...)."""
    return name.startswith(".") or name.lower() in METADATA_FOLDERS


def known_label(folder_name: str) -> str | None:
    """The label a folder name stands for, or None when it names no known class."""
    label = canonical_label(folder_name)
    return label if label in CANONICAL_LABELS else None


def suggest_label(folder_name: str) -> str | None:
    """The known label a mistyped folder name is closest to ("Benigne" -> "Benign")."""
    from leukedge.edge_app.clitools import closest

    key = re.sub(r"[^a-z]", "", folder_name.lower())
    names = {
        **_FOLDER_ALIASES,
        **{re.sub(r"[^a-z]", "", label.lower()): label for label in CANONICAL_LABELS},
    }
    match = closest(key, names) if key else None
    return names[match] if match else None


def survey(
    data_dir: Path, subset: str = "original"
) -> tuple[Path, dict[str, Path], list[tuple[str, str]]]:
    """The folder holding class folders, label -> folder, and (folder, why) for each folder ignored.

    Accepts the Kaggle root (with Original/ and Segmented/) or any folder of class folders.
    Hidden and archive/OS metadata folders (__MACOSX ...) are ignored, and so is any folder whose
    name maps to no known label (with the closest known label as a suggestion).
    """
    if not data_dir.exists():
        raise DatasetError(f"data dir {data_dir} does not exist: pass --data or set LEUKEDGE_DATA")
    if not data_dir.is_dir():
        raise DatasetError(f"data dir {data_dir} is not a folder")
    subset_dirs = {p.name.lower(): p for p in data_dir.iterdir() if p.is_dir()}
    image_dir = subset_dirs.get(subset, data_dir) if subset in SUBSETS else data_dir
    folders: dict[str, Path] = {}
    ignored: list[tuple[str, str]] = []
    for folder in sorted(p for p in image_dir.iterdir() if p.is_dir()):
        if is_metadata_name(folder.name):
            ignored.append((folder.name, "hidden or archive/OS metadata folder"))
            continue
        label = known_label(folder.name)
        if label is None:
            if folder.name.lower() in SUBSETS:
                ignored.append(
                    (
                        folder.name,
                        f"a Kaggle image set: choose it with --subset {folder.name.lower()}",
                    )
                )
                continue
            hint = suggest_label(folder.name)
            ignored.append(
                (
                    folder.name,
                    "not a known label"
                    + (f"; did you mean {hint}?" if hint else f" ({', '.join(CANONICAL_LABELS)})"),
                )
            )
            continue
        if label in folders:
            raise DatasetError(
                f"folders {folders[label].name!r} and {folder.name!r} in {image_dir} both map "
                f"to label {label!r}: keep one"
            )
        folders[label] = folder
    if not folders:
        found = "; ".join(f"{name}: {why}" for name, why in ignored) or "none"
        raise DatasetError(
            f"{image_dir} has no class folders: expected Original/<class>/*.jpg (Kaggle layout) "
            f"or <class>/*.jpg with classes {', '.join(CANONICAL_LABELS)} (folders found: {found})"
        )
    return image_dir, folders, ignored


def class_folders(data_dir: Path, subset: str = "original") -> tuple[Path, dict[str, Path]]:
    """The folder holding class folders, and label -> folder (see `survey`)."""
    image_dir, folders, _ = survey(data_dir, subset)
    return image_dir, folders


def class_images(folder: Path) -> list[Path]:
    """The image files under a class folder, leaving out hidden and metadata files and folders."""
    return sorted(
        p
        for p in folder.rglob("*")
        if is_image_file(p)
        and not any(is_metadata_name(part) for part in p.relative_to(folder).parts)
    )


def scan(
    data_dir: Path,
    subset: str = "original",
    image_size: int | None = None,
    limit_per_class: int | None = None,
    progress=None,
) -> Scan:
    """Decode every image once, drop unreadable ones and content duplicates.

    Images whose bytes are identical are kept once (the first path in sorted order); content
    that appears under two different labels is dropped altogether, since neither label can be
    trusted. `image_size` resizes the kept pixels to the model input size.
    """
    data_dir = Path(data_dir)
    image_dir, folders, ignored = survey(data_dir, subset)
    by_hash: dict[str, Sample] = {}
    conflicting: set[str] = set()
    images: dict[str, np.ndarray] = {}
    skipped: list[tuple[str, str]] = []
    found: dict[str, int] = {}
    duplicates = 0
    files_per_class = {label: class_images(folder) for label, folder in folders.items()}
    if limit_per_class:
        files_per_class = {k: v[:limit_per_class] for k, v in files_per_class.items()}
    todo = [(label, path) for label, paths in files_per_class.items() for path in paths]
    for label, path in progress(todo) if progress else todo:
        relative = path.relative_to(data_dir).as_posix()
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if digest in by_hash:
            duplicates += 1
            if by_hash[digest].label != label:
                conflicting.add(digest)
                skipped.append(
                    (relative, f"same content as {by_hash[digest].path} with another label")
                )
            continue
        try:
            pixels = load_rgb(path)
        except ImageDecodeError as error:
            skipped.append((relative, str(error).split(": ", 1)[-1]))
            continue
        by_hash[digest] = Sample(relative, digest, label)
        images[digest] = prepare(pixels, image_size) if image_size else pixels
        found[label] = found.get(label, 0) + 1
    for digest in conflicting:
        sample = by_hash.pop(digest)
        images.pop(digest)
        found[sample.label] -= 1
        skipped.append((sample.path, "same content appears under another label"))
    empty = [label for label in folders if found.get(label, 0) == 0]
    if empty:
        raise DatasetError(
            f"class folder(s) with no usable images in {image_dir}: "
            + ", ".join(folders[label].name for label in empty)
        )
    if len(folders) < 2:
        raise DatasetError(
            f"{image_dir} has only one class folder ({next(iter(folders))}); need at least 2"
        )
    labels = ordered_labels(folders)
    samples = sorted(by_hash.values(), key=lambda s: (labels.index(s.label), s.path))
    return Scan(
        data_dir,
        image_dir,
        labels,
        samples,
        images,
        skipped,
        duplicates,
        {label: found[label] for label in labels},
        ignored,
    )


def summary(scan: Scan) -> str:
    counts = ", ".join(f"{label} {n}" for label, n in scan.found_per_class.items())
    skipped = f"{len(scan.skipped)} file(s) skipped" + (
        " (listed in skipped.txt)" if scan.skipped else ""
    )
    text = f"found in {scan.image_dir}: {counts}; {scan.duplicates} duplicate(s) removed, {skipped}"
    if scan.ignored_folders:
        text += "; ignored folder(s): " + "; ".join(
            f"{name} ({why})" for name, why in scan.ignored_folders
        )
    return text


def stratified_split(
    samples: Sequence[Sample],
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    twins: Sequence[Sequence[str]] = (),
) -> list[Sample]:
    """Assign train/val/test per class with a seeded shuffle; same inputs, same split.

    `twins` (groups of sha256, from `twins.twin_groups`) stay together in one split. The images
    are shuffled as without them; a group then takes the place of its first member in that order
    and goes to the first split it fits in whole, so the per-class counts stay the same and only
    the twins and the images they displace move. A group with several labels counts under its
    most common one.
    """
    group_of = {sha: tuple(sorted(group)) for group in twins for sha in group}
    by_label: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_label[sample.label].append(sample)
    rank: dict[str, int] = {}
    for label in sorted(by_label):
        order = sorted(by_label[label], key=lambda s: s.sha256)
        random.Random(f"{seed}:{label}").shuffle(order)
        rank.update((s.sha256, index) for index, s in enumerate(order))
    units: dict[tuple[str, ...], list[Sample]] = defaultdict(list)
    for sample in samples:
        units[group_of.get(sample.sha256, (sample.sha256,))].append(sample)
    units_by_label: dict[str, list[list[Sample]]] = defaultdict(list)
    for unit in units.values():
        label = Counter(s.label for s in unit).most_common(1)[0][0]
        units_by_label[label].append(unit)
    result: list[Sample] = []
    for label, label_units in sorted(units_by_label.items()):
        label_units.sort(key=lambda unit: min(rank[s.sha256] for s in unit if s.label == label))
        size = sum(len(unit) for unit in label_units)
        n_test = max(1, round(size * fractions[2])) if size >= 3 else 0
        n_val = max(1, round(size * fractions[1])) if size >= 3 else 0
        room = {"test": n_test, "val": n_val}
        for unit in label_units:
            split = next((name for name in ("test", "val") if room[name] >= len(unit)), "train")
            if split != "train":
                room[split] -= len(unit)
            result.extend(Sample(s.path, s.sha256, s.label, split) for s in unit)
    return sorted(result, key=lambda s: (SPLITS.index(s.split), s.label, s.path))


def write_split(samples: Sequence[Sample], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")  # plain lines for awk and grep
        writer.writerow(SPLIT_COLUMNS)
        for sample in samples:
            writer.writerow([sample.path, sample.sha256, sample.label, sample.split])


def read_split(path: Path, data_dir: Path | None = None, check_files: bool = True) -> list[Sample]:
    """Read a split.csv; with `check_files`, every listed image must exist under `data_dir`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split file {path} does not exist")
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != SPLIT_COLUMNS:
                raise DatasetError(
                    f"split file {path} must have the columns {','.join(SPLIT_COLUMNS)}, "
                    f"found {reader.fieldnames}"
                )
            samples = []
            for row in reader:
                if None in row.values() or None in row:  # too few or too many fields
                    raise DatasetError(
                        f"split file {path} line {reader.line_num}: expected the "
                        f"{len(SPLIT_COLUMNS)} fields {','.join(SPLIT_COLUMNS)}, found another "
                        "count: fix the line or write the split again"
                    )
                samples.append(Sample(row["path"], row["sha256"], row["label"], row["split"]))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"split file {path} is not a readable CSV: {error}") from None
    bad = [s.split for s in samples if s.split not in SPLITS]
    if bad:
        raise DatasetError(
            f"split file {path} has unknown split name {bad[0]!r} (use train/val/test)"
        )
    if not samples:
        raise DatasetError(f"split file {path} lists no images")
    counts = Counter(s.sha256 for s in samples)
    leaks = [digest for digest, n in counts.items() if n > 1]
    if leaks:
        rows = [s.path for s in samples if s.sha256 == leaks[0]]
        raise DatasetError(
            f"split file {path} gives {len(rows)} rows the same sha256 ({leaks[0][:12]}...: "
            f"{', '.join(rows[:3])}{', ...' if len(rows) > 3 else ''})"
            + (f" and {len(leaks) - 1} more group(s) share one" if len(leaks) > 1 else "")
            + ": one image may stand in one row only"
        )
    if check_files and data_dir is not None:
        missing = [s.path for s in samples if not (Path(data_dir) / s.path).is_file()]
        if missing:
            raise DatasetError(
                f"split file {path} names {len(missing)} file(s) missing under {data_dir}, "
                f"e.g. {missing[0]}: point --data at the dataset the split was made from"
            )
    return samples


def changed_files(samples: Sequence[Sample], data_dir: Path) -> list[str]:
    """The paths whose file content no longer has the sha256 the split recorded (rows without a
    recorded sha256, as a labelled folder gives them, are not checked)."""
    return [
        s.path
        for s in samples
        if s.sha256
        and hashlib.sha256((Path(data_dir) / s.path).read_bytes()).hexdigest() != s.sha256
    ]


def load_pixels(
    samples: Sequence[Sample], data_dir: Path, image_size: int, progress=None
) -> np.ndarray:
    """Decode and prepare the images of `samples` as one uint8 array (n, size, size, 3)."""
    out = np.empty((len(samples), image_size, image_size, 3), dtype=np.uint8)
    indexed = list(enumerate(samples))
    for index, sample in progress(indexed) if progress else indexed:
        try:
            out[index] = prepare(load_rgb(Path(data_dir) / sample.path), image_size)
        except (ImageDecodeError, OSError) as error:
            raise DatasetError(f"cannot read {sample.path}: {error}") from None
    return out


def labelled_folder(data_dir: Path, subset: str = "original") -> list[Sample]:
    """Every image under a folder of class folders, unsplit (split='test'), for evaluation."""
    data_dir = Path(data_dir)
    image_dir, folders, ignored = survey(data_dir, subset)
    # Training may leave an unknown folder out (and says so); an evaluation that silently dropped
    # a labelled folder would report figures on less than the user gave it.
    unknown = [f"{name!r} ({why})" for name, why in ignored if why.startswith("not a known label")]
    if unknown:
        raise DatasetError(
            f"{image_dir}: class folder(s) {', '.join(unknown)}: the models do not know these "
            "labels; remove or rename them"
        )
    samples = [
        Sample(path.relative_to(data_dir).as_posix(), "", label, "test")
        for label, folder in folders.items()
        for path in class_images(folder)
    ]
    if not samples:
        raise DatasetError(f"{image_dir} has class folders but no images in them")
    return samples
