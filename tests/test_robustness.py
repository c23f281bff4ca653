"""Field shifts on real smear images, and `edge-bench robustness` end to end on a real tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.shifts import SEVERITIES, SHIFTS, parse_severities, parse_shifts
from edge_app.imaging import load_rgb

# One real image per class, at the dataset's size, and one larger non-square frame (a camera).
CLASS_IMAGES = ("Original/Benign/WBC-Benign-001.jpg", "Original/Early/WBC-Malignant-Early-001.jpg",
                "Original/Pre/WBC-Malignant-Pre-001.jpg", "Original/Pro/WBC-Malignant-Pro-001.jpg")


@pytest.fixture(scope="module")
def smear(data_dir) -> np.ndarray:
    return load_rgb(data_dir / CLASS_IMAGES[0])


@pytest.fixture(scope="module")
def camera_frame(data_dir) -> np.ndarray:
    """A 300x400 frame: a real image tiled and cropped, so sizes scale with the frame."""
    tiled = np.concatenate([load_rgb(data_dir / p) for p in CLASS_IMAGES[:2]], axis=1)
    tiled = np.concatenate([tiled, tiled], axis=0)
    return np.ascontiguousarray(tiled[:300, :400])


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


GEOMETRIC = ("rotation", "zoom-in", "zoom-out")


def change(name: str, shifted: np.ndarray, image: np.ndarray) -> float:
    """How much a shift changed an image. Pixel differences saturate once structures move by
    more than their own width, so geometric shifts are compared at a coarse scale (Gaussian
    sigma 12 px) on the central half, which no reflected border reaches at any severity."""
    if name not in GEOMETRIC:
        return distance(shifted, image)
    import cv2

    h, w = image.shape[:2]
    centre = (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))
    return distance(cv2.GaussianBlur(shifted, (0, 0), 12)[centre], cv2.GaussianBlur(image, (0, 0), 12)[centre])


@pytest.mark.parametrize("name", list(SHIFTS))
def test_every_severity_gives_uint8_rgb_of_the_same_shape(name, smear, camera_frame):
    for image in (smear, camera_frame):
        for severity in (0, *SEVERITIES):
            out = SHIFTS[name].apply(image, severity, seed=7)
            assert out.dtype == np.uint8 and out.shape == image.shape, (name, severity)
            assert out.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("name", list(SHIFTS))
def test_severity_zero_is_identity_and_never_aliases_the_input(name, smear):
    original = smear.copy()
    out = SHIFTS[name].apply(smear, 0, seed=3)
    assert np.array_equal(out, smear)
    assert out is not smear
    SHIFTS[name].apply(smear, 5, seed=3)
    assert np.array_equal(smear, original), "a shift changed its input in place"


@pytest.mark.parametrize("name", list(SHIFTS))
def test_higher_severity_changes_the_image_more(name, data_dir):
    for relative in CLASS_IMAGES:
        image = load_rgb(data_dir / relative)
        distances = [change(name, SHIFTS[name].apply(image, s, seed=11), image) for s in (0, *SEVERITIES)]
        assert distances[0] == 0.0
        assert distances[1] > 0.0, f"{name} severity 1 leaves {relative} unchanged"
        assert all(b > a for a, b in zip(distances, distances[1:], strict=False)), (name, relative, distances)


@pytest.mark.parametrize("name", list(SHIFTS))
def test_same_seed_same_pixels(name, smear):
    first = SHIFTS[name].apply(smear, 3, seed=42)
    assert np.array_equal(first, SHIFTS[name].apply(smear, 3, seed=42))


def test_random_shifts_depend_on_the_seed(smear):
    for name in ("motion-blur", "hue", "saturation", "white-balance", "gaussian-noise", "poisson-noise"):
        outputs = [SHIFTS[name].apply(smear, 4, seed=seed) for seed in range(6)]
        assert any(not np.array_equal(outputs[0], other) for other in outputs[1:]), name


def test_sizes_scale_with_the_frame(smear):
    """A 2x larger frame gets a 2x larger blur: a 2x downscale of both shifted images matches."""
    import cv2

    big = cv2.resize(smear, (448, 448), interpolation=cv2.INTER_CUBIC)
    small_of_big = cv2.resize(SHIFTS["defocus"].apply(big, 5), (224, 224), interpolation=cv2.INTER_AREA)
    direct = SHIFTS["defocus"].apply(cv2.resize(big, (224, 224), interpolation=cv2.INTER_AREA), 5)
    unscaled = cv2.resize(SHIFTS["defocus"].apply(big, 2), (224, 224), interpolation=cv2.INTER_AREA)
    assert distance(small_of_big, direct) < 0.5 * distance(unscaled, direct)


def test_shift_specific_behaviour(smear):
    grey = smear.astype(np.float64).mean()
    assert SHIFTS["darker"].apply(smear, 3).mean() < grey < SHIFTS["brighter"].apply(smear, 3).mean()
    assert SHIFTS["low-contrast"].apply(smear, 5).std() < 0.5 * smear.std()
    assert SHIFTS["defocus"].apply(smear, 5).astype(np.float64).var() < smear.astype(np.float64).var()
    # zoom-out keeps the centre pixel's neighbourhood, only smaller; zoom-in enlarges it.
    assert not np.array_equal(SHIFTS["zoom-in"].apply(smear, 1), SHIFTS["zoom-out"].apply(smear, 1))


def test_parse_shifts_and_severities():
    assert [s.name for s in parse_shifts("all")] == list(SHIFTS)
    assert [s.name for s in parse_shifts("jpeg, defocus,jpeg")] == ["jpeg", "defocus"]
    with pytest.raises(ValueError, match="did you mean 'defocus'"):
        parse_shifts("defocsu")
    with pytest.raises(ValueError, match="unknown shift 'xyz'"):
        parse_shifts("xyz")
    assert parse_severities("5,1,3") == [1, 3, 5]
    for bad in ("0", "6", "1,x", "", "2.5"):
        with pytest.raises(ValueError):
            parse_severities(bad)
