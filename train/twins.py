"""Near-twins: the same microscope field saved twice, slightly moved or re-encoded.

The public ALL data holds byte-identical copies (removed by `dataset.scan`) and also pairs that
differ in their bytes but show the same cells: a field photographed again after a small stage
move, or saved again. Split apart, one twin in training and one in the test split, they leak.
Twins are found by the correlation of 32 x 32 grey thumbnails (zero mean, unit norm), which
survives small shifts, re-encoding and exposure changes but not a different field. No
TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

THUMBNAIL = 32
# Nearest-neighbour correlations in the ALL data are bimodal: 2,705 of 2,826 images have none
# above 0.5 (most 0.2-0.35), and the pairs above it that were looked at are the same field.
TWIN_CORRELATION = 0.5
_BLOCK = 1024  # rows of the correlation matrix held at once: memory grows with n, not n^2


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """A field's signature: 32 x 32 grey, zero mean, unit norm (flat frames give zeros)."""
    grey = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA)
    vector = small.astype(np.float32).ravel()
    vector -= vector.mean()
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-6 else vector


def twin_pairs(
    thumbnails: np.ndarray, threshold: float = TWIN_CORRELATION
) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose thumbnails correlate at `threshold` or more."""
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(thumbnails), _BLOCK):
        block = thumbnails[start : start + _BLOCK] @ thumbnails.T
        rows, columns = np.nonzero(block >= threshold)
        pairs.extend(
            (start + i, j) for i, j in zip(rows.tolist(), columns.tolist()) if start + i < j
        )
    return pairs


def twin_groups(
    keys: Sequence[str], images: Mapping[str, np.ndarray], threshold: float = TWIN_CORRELATION
) -> list[list[str]]:
    """Groups of two or more keys (sha256) whose images are near-twins, directly or through a
    chain of twins; each group sorted, groups in order of their first key."""
    if len(keys) < 2:
        return []
    thumbnails = np.stack([thumbnail(images[key]) for key in keys])
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in twin_pairs(thumbnails, threshold):
        parent[root(i)] = root(j)
    members: dict[int, list[str]] = {}
    for index, key in enumerate(keys):
        members.setdefault(root(index), []).append(key)
    return sorted(sorted(group) for group in members.values() if len(group) > 1)


def split_apart(split_of: Mapping[str, str], groups: Sequence[Sequence[str]]) -> set[str]:
    """The keys (of `split_of`) whose group spans more than one split: the leaked images."""
    leaked: set[str] = set()
    for group in groups:
        members = [sha for sha in group if sha in split_of]
        if len({split_of[sha] for sha in members}) > 1:
            leaked.update(members)
    return leaked


def across_splits(split_of: Mapping[str, str], groups: Sequence[Sequence[str]]) -> dict[str, int]:
    """Per split, how many images have a twin in another split (0 everywhere: no leak)."""
    counts = dict.fromkeys(("train", "val", "test"), 0)
    for sha in split_apart(split_of, groups):
        counts[split_of[sha]] += 1
    return counts
