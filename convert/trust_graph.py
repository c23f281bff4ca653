"""The trust parameters inside the graph: one invoke gives calibrated probabilities and an OOD score.

`trust_model` wraps a trained edge-train classifier: the temperature is folded into the final
Dense layer (softmax(logits / T) costs nothing extra), and a second output computes the squared
Mahalanobis distance of the pooled backbone features ("pool") to the nearest class mean in the
whitened subspace fit by `trust_fit.fit_mahalanobis`: one (features x dims) matrix product, a
subtraction, a square and two reductions.

`features_and_logits` reads what the fit needs from the same model, on pixels loaded by the
converter's own loader (no augmentation, dropout off).
"""

from __future__ import annotations

import keras
import numpy as np

from leukedge.convert.trust_fit import FitError, MahalanobisFit
from leukedge.edge_app.trust import OOD_OUTPUT, PROBABILITIES_OUTPUT

FEATURE_LAYER = "pool"
HEAD_LAYER = "probabilities"


def _head(model: keras.Model) -> keras.layers.Dense:
    try:
        model.get_layer(FEATURE_LAYER)
        head = model.get_layer(HEAD_LAYER)
    except ValueError:
        raise FitError(
            f"the model has no {FEATURE_LAYER!r} and {HEAD_LAYER!r} layers (not an edge-train "
            "model): convert with --no-trust"
        ) from None
    if not isinstance(head, keras.layers.Dense):
        raise FitError(
            f"layer {HEAD_LAYER!r} is a {type(head).__name__}, expected Dense: convert with --no-trust"
        )
    return head


def features_and_logits(
    model: keras.Model, pixels: np.ndarray, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (n, d) and logits (n, classes) of uint8 pixels (n, s, s, 3)."""
    head = _head(model)
    extractor = keras.Model(model.input, model.get_layer(FEATURE_LAYER).output)
    features = extractor.predict(pixels.astype(np.float32), batch_size=batch_size, verbose=0)
    kernel, bias = head.get_weights()
    return features.astype(np.float32), (features @ kernel + bias).astype(np.float32)


class NearestMeanDistance(keras.layers.Layer):
    """min over classes of sum((y - m_c)^2): (batch, dims) -> (batch, 1)."""

    def __init__(self, means: np.ndarray, **kwargs):
        super().__init__(**kwargs)
        self.means = np.asarray(means, dtype=np.float32)

    def call(self, y):
        difference = keras.ops.expand_dims(y, 1) - keras.ops.convert_to_tensor(self.means)[None]
        return keras.ops.min(
            keras.ops.sum(keras.ops.square(difference), axis=2), axis=1, keepdims=True
        )


def trust_model(model: keras.Model, fit: MahalanobisFit, temperature: float) -> keras.Model:
    """The classifier with outputs {probabilities: softmax(logits / T), ood_score: distance}."""
    head = _head(model)
    features = model.get_layer(FEATURE_LAYER).output
    kernel, bias = head.get_weights()
    calibrated = keras.layers.Dense(
        kernel.shape[1], activation="softmax", name=PROBABILITIES_OUTPUT
    )
    probabilities = calibrated(features)
    calibrated.set_weights([kernel / temperature, bias / temperature])
    projection = keras.layers.Dense(fit.dims, use_bias=False, name="ood_projection")
    projected = projection(features)
    projection.set_weights([fit.projection.T])
    score = NearestMeanDistance(fit.projected_means, name=OOD_OUTPUT)(projected)
    return keras.Model(
        model.input, {PROBABILITIES_OUTPUT: probabilities, OOD_OUTPUT: score}, name="leukedge_trust"
    )
