"""The trust arithmetic on hand-computed cases: conformal quantile and coverage, ECE, temperature,
Mahalanobis fit, the decision rule and the contract's round trip. Fast, numpy only."""

from __future__ import annotations

import numpy as np
import pytest

from leukedge.convert.trust_fit import (
    DEFAULT_OOD_RETENTION,
    FitError,
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
from leukedge.edge_app.decision import LABEL, UNCERTAIN, UNFIT, UNKNOWN, DecisionRule, decide
from leukedge.edge_app.trust import ConformalRule, OodRule, TrustError, TrustParams

LABELS = ["Benign", "Early Pre-B", "Pre-B", "Pro-B"]


def params(conformal_threshold=0.1, ood_threshold=5.0) -> TrustParams:
    return TrustParams(
        temperature=1.5,
        conformal=ConformalRule("lac", 0.99, conformal_threshold, 283, "val"),
        ood=OodRule("mahalanobis", "pool", ood_threshold, 0.99, 2260, ("train",), "val", 283),
    )


def test_int8_ranges_come_from_one_threshold_for_every_retention_up_to_the_default():
    scores = np.arange(1.0, 201.0)  # n = 200: the 0.945 quantile is the ceil(201 * 0.945) = 190th
    assert DEFAULT_OOD_RETENTION == 0.945
    default = conformal_quantile(scores, DEFAULT_OOD_RETENTION)
    assert default == 190.0
    # Lower retentions (the choice under field shifts lowers it) keep the default's ranges ...
    for retention in (0.9, 0.92, 0.94, 0.945):
        own = conformal_quantile(scores, retention)
        assert range_threshold(scores, retention, own) == default
    # ... a higher one needs ranges past its own, higher threshold.
    assert range_threshold(scores, 0.98, conformal_quantile(scores, 0.98)) == 197.0
    # A val split too small for the default retention (18 images needed) keeps its own.
    few = np.arange(1.0, 11.0)
    assert conformal_quantile(few, 0.9) == 10.0
    assert range_threshold(few, 0.9, 10.0) == 10.0


def test_conformal_quantile_is_the_finite_sample_order_statistic():
    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6])  # n = 9, shuffled
    # ceil((n + 1) * level)-th smallest: ceil(8.0) = 8 -> 0.8, ceil(9.0) = 9 -> 0.9, ceil(5) = 5 -> 0.5
    assert conformal_quantile(scores, 0.8) == 0.8
    assert conformal_quantile(scores, 0.9) == 0.9
    assert conformal_quantile(scores, 0.5) == 0.5
    assert conformal_quantile(scores, 0.81) == 0.9  # ceil(8.1) = 9
    with pytest.raises(
        FitError, match=r"9 image\(s\) cannot give a 0.95 guarantee \(need at least 19\)"
    ):
        conformal_quantile(scores, 0.95)
    assert (
        conformal_quantile(np.arange(99) / 100, 0.99) == 0.98
    )  # ceil(100 * 0.99) = 99: the largest


def test_conformal_sets_reach_the_target_coverage_on_exchangeable_data():
    rng = np.random.default_rng(0)
    coverages = []
    for _ in range(40):
        probabilities = rng.dirichlet(np.full(4, 0.3), size=1200)
        y = np.array([rng.choice(4, p=p) for p in probabilities])  # labels drawn from the model
        lac = 1.0 - probabilities[np.arange(1200), y]
        threshold = conformal_quantile(lac[:200], 0.9)
        rule = ConformalRule("lac", 0.9, threshold, 200, "val")
        coverages.append(
            np.mean([y[i] in rule.prediction_set(probabilities[i]) for i in range(200, 1200)])
        )
    # Marginal coverage lies in [0.9, 0.9 + 1/(n+1)] on average over calibration draws.
    assert 0.9 - 0.01 <= np.mean(coverages) <= 0.9 + 1 / 201 + 0.01


def test_ece_nll_brier_on_a_hand_computed_case():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 0, 1])
    # bin (13/15, 14/15]: accuracy 1, confidence 0.9; bin (8/15, 9/15]: accuracy 0.5, confidence 0.6
    assert expected_calibration_error(p, y) == pytest.approx(1 / 3 * 0.1 + 2 / 3 * 0.1)
    assert nll(p, y) == pytest.approx(-(np.log(0.9) + np.log(0.6) + np.log(0.4)) / 3)
    assert brier(p, y) == pytest.approx((0.02 + 0.32 + 0.72) / 3)


def test_temperature_recovers_the_temperature_that_generated_the_labels():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 4, size=(4000, 4))
    y = np.array([rng.choice(4, p=p) for p in softmax(logits, 2.5)])
    assert fit_temperature(logits, y) == pytest.approx(2.5, rel=0.08)


def test_mahalanobis_scores_far_points_higher_and_names_bad_inputs():
    rng = np.random.default_rng(2)
    means = rng.normal(0, 3, size=(4, 40))
    y = np.repeat(np.arange(4), 60)
    features = means[y] + rng.normal(0, 1, size=(240, 40))
    fit = fit_mahalanobis(features, y, LABELS, dims=8)
    assert fit.projection.shape == (8, 40) and fit.projected_means.shape == (4, 8)
    inside = fit.scores(means[[0, 1, 2, 3]] + rng.normal(0, 1, size=(4, 40)))
    outside = fit.scores(means[[0, 1, 2, 3]] + 25.0)
    assert outside.min() > 10 * inside.max()
    with pytest.raises(FitError, match=r"train split has 240 image\(s\) for a 200-dimensional"):
        fit_mahalanobis(np.hstack([features] * 6), y, LABELS, dims=200)
    with pytest.raises(FitError, match="class 'Pro-B' has 0 image"):
        check_counts(LABELS, np.array([0, 1, 2, 2]), "val")


def test_decision_order_unfit_unknown_conformal():
    rule = DecisionRule.for_model(params())
    assert rule.text == "conformal-lac@0.99+ood-mahalanobis"
    sure = np.array([0.95, 0.03, 0.01, 0.01])
    unsure = np.array([0.6, 0.38, 0.01, 0.01])
    answered = decide(sure, LABELS, rule, ood_score=1.0)
    assert (answered.kind, answered.label, answered.prediction_set) == (LABEL, "Benign", ["Benign"])
    referred = decide(unsure, LABELS, rule, ood_score=1.0)
    assert referred.kind == UNCERTAIN and referred.label is None and referred.prediction_set == []
    unknown = decide(sure, LABELS, rule, ood_score=5.01)
    assert unknown.kind == UNKNOWN and unknown.label is None and unknown.ood_score == 5.01
    assert unknown.message == (
        "unknown: not like the images this model was trained on (check "
        "magnification, stain, focus): refer for expert review"
    )
    assert decide(sure, LABELS, rule, ood_score=5.0).kind == LABEL  # at the threshold: kept
    assert decide(sure, LABELS, rule, ood_score=99.0, fit=False).kind == UNFIT
    two = decide(
        unsure, LABELS, DecisionRule.for_model(params(conformal_threshold=0.7)), ood_score=0.0
    )
    assert two.kind == UNCERTAIN and two.prediction_set == ["Benign", "Early Pre-B"]
    assert "could be Benign or Early Pre-B" in two.message


def test_min_confidence_is_an_override_and_legacy_models_keep_the_old_rule():
    override = DecisionRule.for_model(params(), min_confidence=0.5)
    unsure = np.array([0.6, 0.38, 0.01, 0.01])
    assert decide(unsure, LABELS, override, ood_score=1.0).kind == LABEL
    assert decide(unsure, LABELS, override, ood_score=9.0).kind == UNKNOWN  # OOD still applies
    assert override.text == "min-confidence 0.50 (override)+ood-mahalanobis"
    legacy = DecisionRule.for_model(None)
    assert legacy.legacy and legacy.min_confidence == 0.8
    assert legacy.text == "legacy min-confidence 0.80 (model has no trust parameters)"
    assert decide(np.array([0.85, 0.05, 0.05, 0.05]), LABELS, legacy).kind == LABEL
    old = decide(unsure, LABELS, legacy)
    assert old.kind == UNCERTAIN and old.ood_score is None and old.prediction_set is None
    with pytest.raises(ValueError, match="OOD score"):
        decide(unsure, LABELS, DecisionRule.for_model(params()))


def test_trust_params_round_trip_and_refuse_malformed():
    original = params()
    assert TrustParams.from_json(original.to_json()) == original
    data = original.to_dict()
    del data["ood"]["threshold"]
    with pytest.raises(TrustError, match="missing field ood.threshold"):
        TrustParams.from_dict(data, "model.tflite")
    with pytest.raises(TrustError, match="not valid JSON"):
        TrustParams.from_json(b"{", "model.tflite")
    with pytest.raises(TrustError, match="trust schema 7"):
        TrustParams.from_dict({**original.to_dict(), "schema": 7})
