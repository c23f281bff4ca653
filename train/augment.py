"""Training-time augmentation: random geometry, colour, focus and sensor noise, fused.

Field cameras differ from the dataset's in focus, noise and stain colour; noise and blur were
added after the robustness report showed sensor noise of sigma 6 costing 10 points.

The same draws as the chain of eight Keras preprocessing layers this replaces (flip, rotation,
zoom, brightness, contrast, saturation, hue, Gaussian blur), in three passes over a batch
instead of about fifteen: on 2 cores that chain cost 0.5 s of one core per batch of 32, more
than the training step's forward pass, and tf.data could not hide it behind the step. Here:
1. one projective warp per image: flips, rotation and zoom in one matrix, reflect fill;
2. one 3x3 colour matrix and offset per image: brightness, contrast, and saturation and hue as a
   scale and a rotation of the chroma plane (YIQ);
3. a separable Gaussian blur with a sigma per image, then additive noise, taken from a pool of
   Gaussian noise fields drawn once (drawing 4.8 million normal numbers per batch cost a third of
   the rest).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from leukedge.train.config import SettingsError

# RGB <-> YIQ: luma and two chroma axes; hue is an angle and saturation a radius in the chroma
# plane, so both are linear there. NumPy, not TensorFlow: a tensor made at import would start
# TensorFlow's runtime before edge-train can set up a multi-worker strategy.
RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ).astype(np.float32)
BLUR_KERNEL = 5  # taps of the Gaussian blur, as the Keras layer used before
FLIPS = ("", "horizontal", "vertical", "horizontal_and_vertical")
NOISE_FIELDS = 64  # noise pool; each batch picks fields at random and shifts them at random


def augmentation(settings: dict, seed: int, image_size: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """A function that augments a batch of 0..255 float images [B, image_size, image_size, 3].

    `settings` is TrainConfig.augment; the ranges mean what they meant for Keras' layers:
    rotation and hue are fractions of a full turn (hue: up to half the value each way),
    saturation is Keras' factor (a multiplier from (0.5 - s)/(0.5 + s) to its inverse), and
    half the images are blurred with a sigma drawn up to `blur_sigma` pixels.
    """
    flip = settings["flip"]
    if flip not in FLIPS:
        raise SettingsError(f"augment flip {flip!r} is not one of {', '.join(map(repr, FLIPS))}")
    flip_x = flip in ("horizontal", "horizontal_and_vertical")
    flip_y = flip in ("vertical", "horizontal_and_vertical")

    noise_fields = tf.random.stateless_normal([NOISE_FIELDS, image_size, image_size, 3], [seed, 0])

    def uniform(shape, low, high, offset):
        return tf.random.uniform(shape, low, high, seed=seed + offset)

    def sign(n, enabled, offset):
        if not enabled:
            return tf.ones([n])
        return tf.where(uniform([n], 0.0, 1.0, offset) < 0.5, -1.0, 1.0)

    def warp(images: tf.Tensor) -> tf.Tensor:
        n, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
        turn = settings["rotation"] * 2 * math.pi
        angle = uniform([n], -turn, turn, 1)
        zoom = uniform([n], 1 - settings["zoom"], 1 + settings["zoom"], 2)
        sx, sy = zoom * sign(n, flip_x, 3), zoom * sign(n, flip_y, 4)
        cos, sin = tf.cos(angle), tf.sin(angle)
        # Output pixel -> input pixel, about the image centre: centre + R(angle) S (out - centre).
        a0, a1, b0, b1 = cos * sx, -sin * sy, sin * sx, cos * sy
        cx = (tf.cast(width, tf.float32) - 1) / 2
        cy = (tf.cast(height, tf.float32) - 1) / 2
        a2 = cx - a0 * cx - a1 * cy
        b2 = cy - b0 * cx - b1 * cy
        zeros = tf.zeros([n])
        transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=tf.stack([height, width]),
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="REFLECT",
        )

    def colour(images: tf.Tensor) -> tf.Tensor:
        n = tf.shape(images)[0]
        # One brightness step per image, the same in every channel (broadcast below).
        offset = uniform([n, 1, 1], -settings["brightness"], settings["brightness"], 5) * 255.0
        contrast = uniform([n, 1, 1], 1 - settings["contrast"], 1 + settings["contrast"], 6)
        mean = tf.reduce_mean(images, axis=[1, 2])[:, None, :]  # [n, 1, 3]
        s = settings["saturation"]
        factor = uniform([n], 0.5 - s, 0.5 + s, 7)
        chroma = factor / (1 - factor)
        hue = uniform([n], 0.0, settings["hue"], 8) * 0.5 * sign(n, True, 9) * 2 * math.pi
        cos, sin = tf.cos(hue) * chroma, tf.sin(hue) * chroma
        ones, zeros = tf.ones([n]), tf.zeros([n])
        in_yiq = tf.reshape(
            tf.stack([ones, zeros, zeros, zeros, cos, -sin, zeros, sin, cos], axis=1), [n, 3, 3]
        )
        # [n, 3, 3], acting on column vectors: to YIQ, scale and turn the chroma, back to RGB.
        matrix = tf.constant(YIQ_TO_RGB)[None] @ in_yiq @ tf.constant(RGB_TO_YIQ)[None]
        # y = M (c (x - mean) + mean + offset): one matrix and one offset per image.
        bias = tf.einsum("nij,nkj->nki", matrix, (1 - contrast) * mean + offset)
        scaled = tf.einsum("nhwj,nij->nhwi", images, matrix * contrast)
        return scaled + bias[:, :, None, :]

    def blur(images: tf.Tensor) -> tf.Tensor:
        n, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
        sigma = uniform([n], 0.01, settings["blur_sigma"], 10)
        sigma = tf.where(uniform([n], 0.0, 1.0, 11) < 0.5, sigma, 0.01)  # 0.01: no blur
        taps = tf.range(BLUR_KERNEL, dtype=tf.float32) - (BLUR_KERNEL - 1) / 2
        kernel = tf.exp(-(taps[None, :] ** 2) / (2 * sigma[:, None] ** 2))
        kernel /= tf.reduce_sum(kernel, axis=1, keepdims=True)  # [n, taps]
        kernel = tf.repeat(kernel, 3, axis=0)  # one per image and channel
        # Every (image, channel) becomes a channel of one image, so each gets its own kernel.
        stacked = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), [1, height, width, n * 3])
        pad = BLUR_KERNEL // 2
        stacked = tf.pad(stacked, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        across = tf.transpose(kernel)[None, :, :, None]  # [1, taps, n*3, 1]
        down = tf.transpose(kernel)[:, None, :, None]  # [taps, 1, n*3, 1]
        stacked = tf.nn.depthwise_conv2d(stacked, across, [1, 1, 1, 1], "VALID")
        stacked = tf.nn.depthwise_conv2d(stacked, down, [1, 1, 1, 1], "VALID")
        return tf.transpose(tf.reshape(stacked, [height, width, n, 3]), [2, 0, 1, 3])

    def augment(images: tf.Tensor) -> tf.Tensor:
        images = tf.clip_by_value(colour(warp(images)), 0.0, 255.0)
        images = blur(images)
        # Additive sensor noise, its sigma drawn per image from [0, noise_sigma].
        n = tf.shape(images)[0]
        sigma = uniform([n, 1, 1, 1], 0.0, settings["noise_sigma"], 12)
        fields = tf.random.uniform([n], 0, NOISE_FIELDS, tf.int32, seed=seed + 13)
        shift = tf.random.uniform([2], 0, image_size, tf.int32, seed=seed + 14)
        noise = tf.roll(tf.gather(noise_fields, fields), shift, axis=[1, 2]) * sigma
        return tf.clip_by_value(images + noise, 0.0, 255.0)

    return augment
