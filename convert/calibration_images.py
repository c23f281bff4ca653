"""Which training images calibrate the int8 model's activation ranges.

TFLite calibrates each activation by the min and max it sees, so the ranges are extremes of a
sample and move with the draw. On the AVX2 study's three default runs, 1,000 images (draw 0)
kept int8 equal to Keras on every test image where 300 flipped one on seed 0; neither size is a
guarantee, since one draw in three flipped a near-tie image at both (docs/conversion.md, "How
many calibration images").
"""

from __future__ import annotations

import numpy as np

from leukedge.train.dataset import DatasetError, Sample

DEFAULT_CALIBRATION_SAMPLES = 1000  # or the whole train split, if it has fewer images
MIN_CALIBRATION = 50  # fewer images set the activation ranges from too few extremes


def calibration_set(samples: list[Sample], count: int | None, seed: int) -> list[Sample]:
    """`count` training images (None: the default, capped at the train split), stratified by class.

    An explicit `count` larger than the train split is an error rather than silently fewer
    images: the manifest would otherwise record a calibration the user did not ask for.
    """
    train = sorted((s for s in samples if s.split == "train"), key=lambda s: s.sha256)
    wanted = DEFAULT_CALIBRATION_SAMPLES if count is None else count
    if not train or (count is not None and len(train) < count):
        raise DatasetError(
            f"only {len(train)} training images for --calibration-samples {wanted}: "
            f"lower --calibration-samples (at least {MIN_CALIBRATION} recommended)"
        )
    wanted = min(wanted, len(train))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted({s.label for s in train}):
        group = [s for s in train if s.label == label]
        take = max(1, round(wanted * len(group) / len(train)))
        chosen += [group[i] for i in rng.permutation(len(group))[:take]]
    return chosen[:wanted]
