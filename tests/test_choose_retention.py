"""Choosing the OOD retention on the val split under field shifts (scripts/choose_ood_retention.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO, assert_clean_error
from leukedge.edge_app.trust import OodRule

SCRIPT = REPO / "scripts" / "choose_ood_retention.py"


def choose(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_the_choice_follows_its_rule_on_the_val_split(converted_dir, tmp_path):
    out = tmp_path / "retention.json"
    result = choose(
        converted_dir / "model_int8.tflite", "--retentions", "0.5,0.9,0.7", "--json", out
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val split" in result.stdout
    report = json.loads(out.read_text())
    rows, n = report["rows"], report["n_images"]
    assert [row["retention"] for row in rows] == [0.9, 0.7, 0.5]  # largest first
    thresholds = [row["threshold"] for row in rows]
    assert thresholds == sorted(thresholds, reverse=True)
    for row in rows:
        # The threshold keeps ceil((n+1) r) of the n clean frames: no more can be answered.
        assert row["clean_answered"] <= math.ceil((n + 1) * row["retention"] - 1e-9) / n + 1e-9
        assert 0 <= row["worst_answered_wrong"] <= 1
    # The rule: the largest retention with no condition over --max-wrong, else none.
    passing = [row["retention"] for row in rows if row["conditions_over"] == 0]
    assert report["chosen"] == (passing[0] if passing else None)
    assert f"chosen: {report['chosen']:g}" in result.stdout if passing else "none" in result.stdout
    # Whether converting again would change anything: only when the chosen threshold moves.
    manifest = json.loads((converted_dir / "manifest.json").read_text())
    ood = manifest["variants"]["int8"]["trust"]["ood"]
    assert (report["current_retention"], report["current_threshold"]) == pytest.approx(
        (ood["retention"], ood["threshold"])
    )
    chosen_threshold = next(
        (r["threshold"] for r in rows if r["retention"] == report["chosen"]), None
    )
    moves = (
        chosen_threshold is not None
        and report["chosen"] < ood["retention"]  # only a lower one: the int8 ranges stay
        and not math.isclose(chosen_threshold, ood["threshold"], rel_tol=1e-6)
    )
    assert report["convert_again"] is moves
    assert ("convert again with --ood-retention" in result.stdout) is moves
    # The model's own retention, allowed any wrong share, is chosen and gives its own threshold.
    same = choose(
        converted_dir / "model_int8.tflite",
        "--retentions",
        f"{ood['retention']:g}",
        "--max-wrong",
        "1",
        "--json",
        out,
    )
    assert same.returncode == 0, same.stderr[-3000:]
    again = json.loads(out.read_text())
    assert again["chosen"] == pytest.approx(ood["retention"]) and again["convert_again"] is False
    assert "nothing to convert again" in same.stdout


def test_only_a_lower_retention_that_moves_the_threshold_is_converted_again():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from choose_ood_retention import advise
    finally:
        sys.path.pop(0)
    current = OodRule("mahalanobis", "pool", 461.4, 0.945, 2260, ("train",), "val", 283)
    again, advice = advise({"retention": 0.92, "threshold": 410.1}, current)
    assert again and advice.startswith("convert again with --ood-retention 0.92")
    again, advice = advise({"retention": 0.95, "threshold": 461.4}, current)
    assert not again and "nothing to convert" in advice
    again, advice = advise({"retention": 0.98, "threshold": 580.0}, current)
    assert not again and "higher retention" in advice
    assert advise(None, current) == (False, "kept at 0.945")


@pytest.mark.slow
def test_a_retention_the_val_split_cannot_support_is_a_clear_error(converted_dir):
    # The tiny run has a few val images per class: a 0.999 quantile needs 999 of them.
    result = choose(converted_dir / "model_int8.tflite", "--retentions", "0.999")
    assert_clean_error(result, "--retentions 0.999")


def test_bad_options_are_clear_errors(tmp_path):
    not_a_model = tmp_path / "model.tflite"
    not_a_model.write_text("not a model")
    assert_clean_error(choose(not_a_model, "--retentions", "high"), "--retentions")
    assert_clean_error(
        choose(not_a_model, "--json", tmp_path / "missing" / "r.json"), "does not exist"
    )
