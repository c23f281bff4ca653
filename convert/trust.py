"""Fit the trust parameters during conversion and give each variant its own thresholds.

Order of work (see docs/trust.md):
1. Pixels of the TRAIN and VAL splits through the converter's loader (`dataset.load_pixels`,
   the Pi's own `prepare`), no augmentation; pooled features and logits from the Keras model.
2. Temperature on VAL logits (NLL); Mahalanobis statistics on TRAIN features.
3. The wrapper model (calibrated probabilities + OOD score) is what gets converted.
4. For each converted variant, its own outputs on VAL give the conformal threshold (LAC at
   `coverage`) and the OOD threshold (`ood_retention` of VAL frames kept), both with the
   finite-sample quantile ceil((n+1) * level) / n. So an int8 model's thresholds are those of
   the numbers the int8 model computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from leukedge.convert.trust_fit import (
    FitError,
    MahalanobisFit,
    brier,
    check_counts,
    conformal_quantile,
    expected_calibration_error,
    fit_mahalanobis,
    fit_temperature,
    nll,
    range_threshold,
    softmax,
)
from leukedge.convert.trust_graph import features_and_logits, trust_model
from leukedge.convert.trust_outputs import name_outputs, widen_ood_ranges
from leukedge.edge_app.metadata import ModelMetadata
from leukedge.edge_app.trust import OOD_OUTPUT, TRUST_FILE, ConformalRule, OodRule, TrustParams
from leukedge.train import dataset

OOD_METHOD = "mahalanobis"


@dataclass
class Fitted:
    """What the fit produced, and the per-variant steps that use it."""

    model: object  # keras.Model with outputs {probabilities, ood_score}
    labels: list[str]
    temperature: float
    mahalanobis: MahalanobisFit
    float_threshold: float  # OOD threshold of the Keras wrapper on VAL
    cap: float
    coverage: float
    retention: float
    val_pixels: np.ndarray
    y_val: np.ndarray
    before_after: dict = field(default_factory=dict)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return self.model.predict(pixels.astype(np.float32), batch_size=32, verbose=0)[
            "probabilities"
        ]

    @property
    def feature_text(self) -> str:
        return (
            f"global average pool ({self.mahalanobis.projection.shape[1]}) whitened to "
            f"{self.mahalanobis.dims} principal directions of the shared within-class covariance"
        )

    def summary(self) -> dict:
        m = self.mahalanobis
        return {
            "temperature": self.temperature,
            "ood_method": OOD_METHOD,
            "ood_dims": m.dims,
            "ledoit_wolf_shrinkage": round(m.shrinkage, 6),
            "explained_variance": round(m.explained, 6),
            "n_train": m.n_fit,
            "n_val": int(len(self.y_val)),
            "keras_ood_threshold": self.float_threshold,
            "int8_ood_cap": self.cap,
            "int8_ood_element_cap": self.cap / 2,
            **self.before_after,
        }

    def prepare_outputs(self, tflite: bytes, variant: str) -> tuple[bytes, list[str]]:
        tflite = name_outputs(tflite, len(self.labels))
        if variant == "int8":
            return widen_ood_ranges(
                tflite, self.mahalanobis.projected_means, self.cap, element_cap=self.cap / 2
            )
        return tflite, []

    def metadata(self, info: ModelMetadata, with_trust_file: bool = True) -> ModelMetadata:
        from dataclasses import replace

        return replace(
            info,
            output_description=(
                f"Calibrated probabilities (temperature {self.temperature:.4g} applied in the "
                f"graph) of the {len(self.labels)} classes, in labels.txt order."
            ),
            score_output=OOD_OUTPUT,
            score_description=(
                "Out-of-distribution score: squared Mahalanobis distance of the pooled "
                "features to the nearest class mean (larger: less like the training "
                f"images). Compare with ood.threshold in {TRUST_FILE}."
            ),
            model_files={
                TRUST_FILE: "LeukEdge trust parameters: temperature, conformal (LAC) threshold "
                "and target coverage, OOD method, threshold and retention share."
            }
            if with_trust_file
            else {},
        )

    def files(self, params: TrustParams) -> dict[str, bytes]:
        return {TRUST_FILE: params.to_json().encode()}

    def outputs(self, classifier, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        results = [classifier.invoke_outputs(classifier.to_input(p)) for p in pixels]
        return np.stack([r[0] for r in results]), np.array(
            [r[1] for r in results], dtype=np.float64
        )

    def params_for(self, classifier) -> TrustParams:
        """Thresholds from this variant's own outputs on the validation split."""
        probabilities, scores = self.outputs(classifier, self.val_pixels)
        n = len(self.y_val)
        lac = 1.0 - probabilities[np.arange(n), self.y_val].astype(np.float64)
        conformal = ConformalRule(
            method="lac",
            target_coverage=self.coverage,
            threshold=conformal_quantile(
                lac, self.coverage, "conformal threshold on the val split"
            ),
            n_calibration=n,
            split="val",
        )
        ood = OodRule(
            method=OOD_METHOD,
            feature=self.feature_text,
            threshold=conformal_quantile(scores, self.retention, "OOD threshold on the val split"),
            retention=self.retention,
            n_fit=self.mahalanobis.n_fit,
            fit_splits=("train",),
            threshold_split="val",
            n_threshold=n,
        )
        return TrustParams(temperature=self.temperature, conformal=conformal, ood=ood)

    def far_out_check(self, classifier) -> dict:
        """Generated frames nothing like a smear (flat colours, noise): the variant must call them
        unknown; for int8 this is where a saturating OOD branch would show."""
        size = classifier.image_size
        rng = np.random.default_rng(0)
        frames = [
            np.full((size, size, 3), c, np.uint8)
            for c in ((0, 0, 0), (255, 255, 255), (128, 128, 128), (220, 190, 210))
        ]
        frames += [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(4)]
        _, scores = self.outputs(classifier, np.stack(frames))
        return {
            "frames": len(frames),
            "unknown": int(sum(classifier.trust.ood.is_unknown(s) for s in scores)),
            "min_score": float(scores.min()),
        }

    def test_summary(self, classifier, pixels: np.ndarray, y: np.ndarray) -> dict:
        """What the variant's embedded rule does on the test split (also in the report)."""
        probabilities, scores = self.outputs(classifier, pixels)
        trust = classifier.trust
        sets = [trust.conformal.prediction_set(p) for p in probabilities]
        unknown = np.array([trust.ood.is_unknown(s) for s in scores])
        singleton = np.array([len(s) == 1 for s in sets])
        answered = singleton & ~unknown
        right = probabilities.argmax(axis=1) == y
        return {
            "n": int(len(y)),
            "ece_15": expected_calibration_error(probabilities, y),
            "nll": nll(probabilities, y),
            "brier": brier(probabilities, y),
            "coverage": float(np.mean([yi in s for yi, s in zip(y, sets)])),
            "mean_set_size": float(np.mean([len(s) for s in sets])),
            "unknown": float(unknown.mean()),
            "answered": float(answered.mean()),
            "answered_right": float(right[answered].mean()) if answered.any() else None,
        }


def fit(
    model, samples: list[dataset.Sample], labels: list[str], root, size: int, config, echo, bar
) -> Fitted:
    """Fit the temperature and OOD statistics; the thresholds come later, per variant."""
    train = [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val"]
    y_train = np.array([labels.index(s.label) for s in train], dtype=np.int64)
    y_val = np.array([labels.index(s.label) for s in val], dtype=np.int64)
    check_counts(labels, y_val, "val", minimum=1)
    for level, what in ((config.coverage, "--coverage"), (config.ood_retention, "--ood-retention")):
        needed = math.ceil(level / (1.0 - level) - 1e-9)
        if len(val) < needed:
            raise FitError(
                f"the val split has {len(val)} image(s); {what} {level:g} needs at least {needed}: "
                f"lower {what} or re-split with more validation images"
            )
    echo(f"fitting trust parameters: features of {len(train)} train and {len(val)} val images")
    train_pixels = dataset.load_pixels(train, root, size, bar("load train images"))
    f_train, _ = features_and_logits(model, train_pixels)
    del train_pixels
    val_pixels = dataset.load_pixels(val, root, size, bar("load val images"))
    f_val, logits_val = features_and_logits(model, val_pixels)
    temperature = fit_temperature(logits_val, y_val)
    mahalanobis = fit_mahalanobis(f_train, y_train, labels, config.ood_dims)
    val_scores = mahalanobis.scores(f_val)
    float_threshold = conformal_quantile(val_scores, config.ood_retention, "OOD threshold")
    before, after = softmax(logits_val), softmax(logits_val, temperature)
    echo(
        f"temperature {temperature:.4g} (val NLL {nll(before, y_val):.4f} -> {nll(after, y_val):.4f}); "
        f"Mahalanobis in {mahalanobis.dims} dims (shrinkage {mahalanobis.shrinkage:.3f}), "
        f"Keras OOD threshold {float_threshold:.4g}"
    )
    return Fitted(
        model=trust_model(model, mahalanobis, temperature),
        labels=labels,
        temperature=temperature,
        mahalanobis=mahalanobis,
        float_threshold=float_threshold,
        cap=config.ood_cap * range_threshold(val_scores, config.ood_retention, float_threshold),
        coverage=config.coverage,
        retention=config.ood_retention,
        val_pixels=val_pixels,
        y_val=y_val,
        before_after={
            "val_nll_before": nll(before, y_val),
            "val_nll_after": nll(after, y_val),
            "val_ece_before": expected_calibration_error(before, y_val),
            "val_ece_after": expected_calibration_error(after, y_val),
        },
    )
