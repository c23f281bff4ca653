"""The fused training augmentation: each part does what its setting says, on real smear images."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import DATA_DIR
from leukedge.train.augment import augmentation
from leukedge.train.config import SettingsError, TrainConfig

SIZE = 64
NOTHING = {
    "flip": "",
    "rotation": 0.0,
    "zoom": 0.0,
    "brightness": 0.0,
    "contrast": 0.0,
    "saturation": 0.0,
    "hue": 0.0,
    "blur_sigma": 0.01,
    "noise_sigma": 0.0,
}


@pytest.fixture(scope="module")
def smears() -> tf.Tensor:
    files = sorted((DATA_DIR / "Original").rglob("*.jpg"))[::400][:6]
    images = [np.asarray(Image.open(f).convert("RGB").resize((SIZE, SIZE))) for f in files]
    return tf.constant(np.stack(images).astype(np.float32))


def run(smears: tf.Tensor, seed: int = 0, **settings) -> np.ndarray:
    return augmentation({**NOTHING, **settings}, seed, SIZE)(smears).numpy()


def luma(images: np.ndarray) -> np.ndarray:
    return images @ np.array([0.299, 0.587, 0.114], np.float32)


def test_all_ranges_zero_is_the_identity(smears):
    np.testing.assert_allclose(run(smears), smears.numpy(), atol=0.05)


def test_flips_only_mirror_the_image(smears):
    out = run(smears, flip="horizontal")
    original, mirrored = smears.numpy(), smears.numpy()[:, :, ::-1]
    for i in range(len(out)):
        assert np.allclose(out[i], original[i], atol=0.05) or np.allclose(
            out[i], mirrored[i], atol=0.05
        ), f"image {i} is neither itself nor its mirror image"


def spot(offset: float) -> tf.Tensor:
    """Six dark frames with a bright spot `offset` pixels right of the centre."""
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    frame = np.where((xx - offset) ** 2 + yy**2 <= 9, 255.0, 0.0).astype(np.float32)
    return tf.constant(np.repeat(frame[None, :, :, None], 3, axis=3).repeat(6, axis=0))


def centroid_radius(images: np.ndarray) -> np.ndarray:
    weights = images[..., 0]
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    total = weights.sum(axis=(1, 2))
    cx, cy = (weights * xx).sum(axis=(1, 2)) / total, (weights * yy).sum(axis=(1, 2)) / total
    return np.hypot(cx, cy), np.arctan2(cy, cx)


def test_rotation_turns_about_the_centre_and_zoom_scales_from_it():
    radius, angle = centroid_radius(run(spot(12.0), rotation=0.5))
    np.testing.assert_allclose(radius, 12.0, atol=0.5)
    assert np.ptp(angle) > 0.5  # turned, by different angles
    # Zoom +-20% maps output to input by a factor in [0.8, 1.2]: the spot's radius in [10, 15].
    radius, angle = centroid_radius(run(spot(12.0), zoom=0.2))
    assert ((radius > 12 / 1.2 - 0.5) & (radius < 12 / 0.8 + 0.5)).all(), radius
    np.testing.assert_allclose(angle, 0.0, atol=0.05)


def test_brightness_is_one_step_for_every_pixel_within_its_range(smears):
    out = run(smears, brightness=0.1)
    inside = (smears.numpy() > 30) & (smears.numpy() < 220)  # never clipped by a 25.5 step
    for i in range(len(out)):
        step = (out[i] - smears.numpy()[i])[inside[i]]
        assert np.ptp(step) < 0.05, f"image {i}: the step varies over the image"
        assert abs(step.mean()) <= 0.1 * 255 + 0.05


def test_hue_turns_the_colour_and_keeps_the_luma(smears):
    out = run(smears, hue=0.5)
    unclipped = ((out > 0) & (out < 255)).all(axis=-1)
    diff = np.abs(luma(out) - luma(smears.numpy()))[unclipped]
    assert diff.max() < 0.5
    assert np.abs(out - smears.numpy()).max() > 10


def test_saturation_scales_the_chroma_and_keeps_the_luma(smears):
    # Keras' factor: 0.5 keeps the colour; (0.5 - s) / (0.5 + s) is the smallest multiplier.
    out = run(smears, saturation=0.15)  # multipliers 0.54 to 1.86
    chroma_in = np.abs(smears.numpy() - luma(smears.numpy())[..., None]).mean(axis=(1, 2, 3))
    chroma_out = np.abs(out - luma(out)[..., None]).mean(axis=(1, 2, 3))
    assert not np.allclose(chroma_in, chroma_out, rtol=0.05)
    np.testing.assert_allclose(
        luma(out).mean(axis=(1, 2)), luma(smears.numpy()).mean(axis=(1, 2)), atol=3
    )


def test_blur_lowers_the_detail_of_about_half_the_images(smears):
    out = run(smears, blur_sigma=1.5)

    def detail(images):
        return np.abs(np.diff(images, axis=2)).mean(axis=(1, 2, 3))

    ratio = detail(out) / detail(smears.numpy())
    assert (ratio <= 1.0 + 1e-3).all()
    assert ratio.min() < 0.8  # some image was blurred


def test_noise_has_zero_mean_and_at_most_its_sigma(smears):
    base = smears.numpy()
    out = run(smears, noise_sigma=10.0)
    inside = (base > 40) & (base < 215)
    for i in range(len(out)):
        noise = (out[i] - base[i])[inside[i]]
        assert abs(noise.mean()) < 1.0
        assert noise.std() < 10.5


def test_same_seed_same_augmentation(smears):
    settings = TrainConfig(data_dir=".", out_dir=".").augment
    tf.random.set_seed(3)
    first = augmentation(settings, 0, SIZE)(smears).numpy()
    tf.random.set_seed(3)
    again = augmentation(settings, 0, SIZE)(smears).numpy()
    np.testing.assert_array_equal(first, again)
    assert first.shape == smears.shape and first.min() >= 0 and first.max() <= 255


def test_unknown_flip_setting_is_refused():
    with pytest.raises(SettingsError, match="horizontal_and_vertcal"):
        augmentation({**NOTHING, "flip": "horizontal_and_vertcal"}, 0, SIZE)
