"""`edge-bench trust`: metrics pinned by hand-computed cases, the decision rules, and the command
end to end on the released model with real out-of-distribution images from ../shared."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import REPO, SHARED, assert_clean_error, run_cli
from leukedge.benchmarks import calibration
from leukedge.benchmarks.decisions import MAX_PROBABILITY_SCORE, DecisionRule, trust_params
from leukedge.benchmarks.trust_eval import evaluate_arrays
from leukedge.edge_app import manifest as manifests
from leukedge.edge_app.trust import ConformalRule, OodRule, TrustParams

MODELS = REPO / "models"
EXTERNAL = SHARED / "data" / "external"

# Four frames, two classes. Confidences 0.95 (right), 0.97 (wrong), 0.62 (wrong), 0.70 (right).
P2 = np.array([[0.95, 0.05], [0.03, 0.97], [0.62, 0.38], [0.30, 0.70]])
Y2 = np.array([0, 0, 1, 1])

# Three classes for the conformal sets.
P3 = np.array([[0.70, 0.20, 0.10], [0.50, 0.45, 0.05], [0.10, 0.10, 0.80], [0.65, 0.30, 0.05]])
Y3 = np.array([0, 1, 1, 0])


def small_trust(conformal_threshold: float = 0.4, ood_threshold: float = 5.0) -> TrustParams:
    return TrustParams(
        temperature=1.5,
        conformal=ConformalRule(
            method="lac",
            target_coverage=0.9,
            threshold=conformal_threshold,
            n_calibration=100,
            split="val",
        ),
        ood=OodRule(
            method="mahalanobis",
            feature="test",
            threshold=ood_threshold,
            retention=0.97,
            n_fit=10,
            fit_splits=("train",),
            threshold_split="val",
            n_threshold=10,
        ),
    )


def test_ece_by_hand():
    # Bins of width 1/15: 0.95 and 0.97 share bin 14 (accuracy 1/2, confidence 0.96); 0.62 is
    # alone in bin 9 (accuracy 0), 0.70 alone in bin 10 (accuracy 1).
    # ECE = 2/4 * |0.5 - 0.96| + 1/4 * |0 - 0.62| + 1/4 * |1 - 0.70| = 0.23 + 0.155 + 0.075.
    assert calibration.expected_calibration_error(P2, Y2) == pytest.approx(0.46)
    bins = calibration.reliability_bins(P2, Y2)
    assert len(bins) == 15 and [b["n"] for b in bins if b["n"]] == [1, 1, 2]
    assert bins[14]["confidence"] == pytest.approx(0.96) and bins[14]["accuracy"] == 0.5
    assert bins[9]["accuracy"] == 0.0 and bins[10]["accuracy"] == 1.0
    # A perfectly calibrated case: confidence 0.75 everywhere, 3 of 4 right.
    p = np.array([[0.75, 0.25]] * 3 + [[0.25, 0.75]])
    assert calibration.expected_calibration_error(p, np.array([0, 0, 0, 0])) == pytest.approx(0.0)


def test_nll_and_brier_by_hand():
    expected_nll = -(math.log(0.95) + math.log(0.03) + math.log(0.38) + math.log(0.70)) / 4
    assert calibration.negative_log_likelihood(P2, Y2) == pytest.approx(expected_nll)
    # Per frame sum of squared errors: 0.005, 1.8818, 0.7688, 0.18.
    assert calibration.brier_score(P2, Y2) == pytest.approx((0.005 + 1.8818 + 0.7688 + 0.18) / 4)
    assert calibration.negative_log_likelihood(
        np.array([[1.0, 0.0]]), np.array([1])
    ) == pytest.approx(-math.log(1e-12))


def test_conformal_coverage_and_set_size_by_hand():
    # Threshold 0.4: a label is in the set when p >= 0.6. Sets {0}, {}, {2}, {0}.
    sets = calibration.lac_sets(P3, 0.4)
    assert sets.tolist() == [
        [True, False, False],
        [False, False, False],
        [False, False, True],
        [True, False, False],
    ]
    rule = ConformalRule("lac", 0.9, 0.4, 100, "val")
    assert [np.flatnonzero(s).tolist() for s in sets] == [rule.prediction_set(p) for p in P3]
    summary = calibration.conformal_summary(sets, Y3, ["a", "b", "c"])
    assert summary["coverage"] == 0.5 and summary["mean_set_size"] == 0.75
    assert summary["singleton_share"] == 0.75
    assert summary["per_class"] == {
        "a": {"n": 2, "coverage": 1.0, "mean_set_size": 1.0},
        "b": {"n": 2, "coverage": 0.0, "mean_set_size": 0.5},
    }
    # Threshold 0.6 (p >= 0.4): sets {0}, {0, 1}, {2}, {0}: 3 of 4 covered, mean size 5/4.
    wider = calibration.conformal_summary(calibration.lac_sets(P3, 0.6), Y3, ["a", "b", "c"])
    assert wider["coverage"] == 0.75 and wider["mean_set_size"] == 1.25


def test_auroc_fpr_and_risk_coverage_by_hand():
    assert calibration.auroc([0.1, 0.2, 0.3], [0.25, 0.4]) == pytest.approx(5 / 6)
    assert calibration.auroc([0.5], [0.5]) == 0.5  # ties count half
    assert (
        calibration.auroc([0.1, 0.2], [0.3, 0.4]) == 1.0 and calibration.auroc([0.3], [0.1]) == 0.0
    )
    inside = np.arange(1, 21) / 100  # 0.01 .. 0.20: keeping 95% (19 of 20) needs threshold 0.19
    assert calibration.fpr_at_tpr(inside, [0.05, 0.19, 0.5, 0.9]) == 0.5
    curve = calibration.risk_coverage([0.9, 0.8, 0.8, 0.6], [True, False, True, False])
    assert curve["coverage"] == [0.25, 0.75, 1.0]  # the two 0.8 frames are answered together
    assert curve["accuracy"] == pytest.approx([1.0, 2 / 3, 0.5])
    assert curve["area"] == pytest.approx(0.25 * 1.0 + 0.5 * 2 / 3 + 0.25 * 0.5)


def test_decision_rules():
    legacy = DecisionRule(None)
    kinds, answer = legacy.decide(P3, None)
    assert kinds.tolist() == [
        "uncertain",
        "uncertain",
        "label",
        "uncertain",
    ] and answer.tolist() == [-1, -1, 2, -1]
    assert legacy.name == "legacy min-confidence 0.80 (model has no trust parameters)"
    rule = DecisionRule(small_trust())
    kinds, answer = rule.decide(
        P3, np.array([1.0, 2.0, 9.0, 5.0])
    )  # 9 > 5: unknown; 5 is not above
    assert kinds.tolist() == ["label", "uncertain", "unknown", "label"] and answer.tolist() == [
        0,
        -1,
        -1,
        0,
    ]
    assert rule.name == "conformal-lac@0.9+ood-mahalanobis"
    with pytest.raises(ValueError, match="no ood_score output"):
        rule.decide(P3, None)


def test_evaluate_arrays_with_trust_parameters():
    ood = {"far": (np.array([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3]]), np.array([20.0, 1.0]))}
    row = evaluate_arrays(
        P3,
        Y3,
        ["a", "b", "c"],
        np.array([1.0, 2.0, 9.0, 5.0]),
        small_trust(),
        ood,
        unfit=np.array([False, False, False, True]),
    )
    assert row["has_trust_params"] and row["ood_score"] == "the model's ood_score output"
    assert row["conformal"]["coverage"] == 0.5 and row["conformal"]["target_coverage"] == 0.9
    # Frame 0 answered (right), 1 uncertain, 2 unknown, 3 would be answered but the gate calls it unfit.
    assert row["outcome_shares"] == {
        "label": 0.25,
        "uncertain": 0.25,
        "unknown": 0.25,
        "unfit": 0.25,
    }
    assert row["answered"] == 0.25 and row["answered_accuracy"] == 1.0
    far = row["ood"][0]
    assert far["auroc"] == pytest.approx(calibration.auroc([1, 2, 9, 5], [20, 1]))
    # OOD frame 0 is unknown (20 > 5); frame 1's set is empty (0.4 < 0.6): nothing answered.
    assert far["answered"] == 0.0 and far["outcome_shares"]["unknown"] == 0.5


def test_evaluate_arrays_without_trust_parameters():
    row = evaluate_arrays(P2, Y2, ["a", "b"], None, None, {"x": (np.array([[0.99, 0.01]]), None)})
    assert not row["has_trust_params"] and row["conformal"] is None
    assert row["ood_score"] == MAX_PROBABILITY_SCORE
    assert row["ece"] == pytest.approx(0.46)
    # Legacy rule: 0.95 and 0.97 answered (one right), 0.62 and 0.70 uncertain.
    assert row["answered"] == 0.5 and row["answered_accuracy"] == 0.5
    # OOD score 1 - max p: test frames 0.05, 0.03, 0.38, 0.30 against 0.01: below them all.
    assert row["ood"][0]["auroc"] == 0.0 and row["ood"][0]["answered_labels"] == {"a": 1}


def test_trust_parameters_are_read_from_the_model_file():
    # The release carries its trust parameters in the file; the manifest lists the same ones.
    released = trust_params(MODELS / "model_int8.tflite")
    listed = manifests.read(MODELS / "manifest.json").variants["int8"].trust
    assert released is not None and released == TrustParams.from_dict(listed)
    assert released.conformal.method == "lac" and released.ood.method == "mahalanobis"


def test_command_on_the_released_model(data_dir, tmp_path):
    out = tmp_path / "t.json"
    plots = tmp_path / "plots"
    result = run_cli(
        "edge-bench",
        "trust",
        MODELS / "model_int8.tflite",
        "--limit-per-class",
        "8",
        "--ood",
        EXTERNAL / "synthetic",
        "--json",
        out,
        "--markdown",
        tmp_path / "t.md",
        "--plots",
        plots,
        "--quiet",
    )
    report = json.loads(out.read_text())
    row = report["rows"][0]
    assert row["n"] == 32 and row["variant"] == "int8" and row["has_trust_params"]
    assert (
        row["ood_score"] != MAX_PROBABILITY_SCORE
        and row["decision_rule"] == "conformal-lac@0.99+ood-mahalanobis"
    )
    assert 0.0 <= row["ece"] <= 1.0 and row["accuracy"] >= 0.9
    assert sum(b["n"] for b in row["reliability"]) == 32
    synthetic = row["ood"][0]
    assert synthetic["folder"] == "synthetic" and synthetic["n"] == 32
    assert 0.5 < synthetic["auroc"] <= 1.0
    assert (
        "OOD score: the model's ood_score output" in result.stdout
        and "| synthetic |" in (tmp_path / "t.md").read_text()
    )
    for name in ("reliability.png", "risk_coverage.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_ood_folders_give_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not an image")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "file.jpg").write_bytes(b"a file, not a folder")
    cases = [
        (empty, "holds no image files"),
        (tmp_path / "notes", "holds no image files"),
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "file.jpg", "not a folder"),
        (broken, "none of its 1 image file(s) could be read"),
    ]
    for folder, message in cases:
        result = run_cli(
            "edge-bench", "trust", MODELS / "model_int8.tflite", "--ood", folder, check=False
        )
        assert_clean_error(result, message)
        assert len([line for line in result.stderr.splitlines() if line.startswith("Error")]) == 1
