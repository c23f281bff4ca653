"""Trust parameters end to end on the tiny real run: fit in edge-convert, carried in the .tflite
and the manifest, read by the runtime, applied by the app. Real images from ../shared."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import SHARED, TINY_TRUST_ARGS, assert_clean_error, run_cli
from leukedge.edge_app.decision import DecisionRule, decide
from leukedge.edge_app.imaging import is_image_file, load_rgb, prepare
from leukedge.edge_app.metadata import associated_files, read_metadata
from leukedge.edge_app.runtime import Classifier, ModelError
from leukedge.edge_app.trust import OOD_OUTPUT, PROBABILITIES_OUTPUT, TRUST_FILE, TrustParams
from leukedge.train.dataset import read_split

pytestmark = pytest.mark.slow
NATURAL = SHARED / "data" / "external" / "natural-photos"
TRUSTED = ("int8", "fp16", "fp32", "dynamic")


def decisions(classifier: Classifier, frames) -> list[str]:
    rule = DecisionRule.for_model(classifier.trust)
    out = []
    for frame in frames:
        probabilities, score = classifier.invoke_outputs(
            classifier.to_input(prepare(frame, classifier.image_size))
        )
        out.append(decide(probabilities, classifier.labels, rule, score).kind)
    return out


def uniform_frames(size: int = 224) -> list[np.ndarray]:
    colours = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 170, 190), (90, 60, 120)]
    return [np.full((size, size, 3), c, np.uint8) for c in colours]


@pytest.mark.parametrize("variant", TRUSTED)
def test_every_variant_carries_its_own_trust_parameters(converted_dir, variant):
    manifest = json.loads((converted_dir / "manifest.json").read_text())
    entry = manifest["variants"][variant]
    data = (converted_dir / entry["file"]).read_bytes()
    embedded = TrustParams.from_json(associated_files(data)[TRUST_FILE])
    assert TrustParams.from_dict(entry["trust"]) == embedded
    assert embedded.temperature == pytest.approx(manifest["trust_fit"]["temperature"])
    assert embedded.conformal.method == "lac" and embedded.conformal.target_coverage == 0.9
    assert embedded.conformal.split == "val" and embedded.ood.fit_splits == ("train",)
    assert embedded.ood.n_threshold == embedded.conformal.n_calibration == 15
    assert 0 < embedded.conformal.threshold <= 1 and embedded.ood.threshold > 0
    info = read_metadata(data)
    assert info.score_output == OOD_OUTPUT and TRUST_FILE in info.model_files
    classifier = Classifier(converted_dir / entry["file"])
    assert classifier.trust == embedded
    names = [d["name"] for d in classifier.interpreter.get_output_details()]
    assert names == [PROBABILITIES_OUTPUT, OOD_OUTPUT]  # probabilities stay output 0
    assert entry["ood_output"]["shape"] == [1, 1]


def test_thresholds_are_each_variants_own(converted_dir):
    """The int8 and float variants compute different numbers; each threshold is its own
    finite-sample quantile of its own validation outputs."""
    manifest = json.loads((converted_dir / "manifest.json").read_text())
    thresholds = {v: manifest["variants"][v]["trust"]["ood"]["threshold"] for v in TRUSTED}
    assert thresholds["int8"] != thresholds["fp32"]
    # Recompute the int8 one from its own outputs on the val split.
    from leukedge.convert.trust_fit import conformal_quantile
    from leukedge.train.dataset import load_pixels

    data_dir = Path(manifest["data_dir"])
    val = [s for s in read_split(converted_dir / "split.csv", data_dir) if s.split == "val"]
    classifier = Classifier(converted_dir / "model_int8.tflite")
    scores = [
        classifier.invoke_outputs(classifier.to_input(p))[1] for p in load_pixels(val, data_dir, 96)
    ]
    assert conformal_quantile(np.array(scores), 0.9) == pytest.approx(thresholds["int8"])


def test_int8_ood_output_saturates_above_its_threshold(converted_dir):
    """Far-out inputs must not saturate at in-distribution values: the int8 OOD branch's range ends
    at a cap above the threshold, and frames that reach it read as unknown."""
    manifest = json.loads((converted_dir / "manifest.json").read_text())
    entry = manifest["variants"]["int8"]
    top = (255 - entry["ood_output"]["zero_point"]) * entry["ood_output"]["scale"]
    assert top > 2 * entry["trust"]["ood"]["threshold"]
    assert top == pytest.approx(manifest["trust_fit"]["int8_ood_cap"], rel=0.01)


@pytest.mark.parametrize("variant", ["int8", "fp16"])
def test_uniform_frames_and_natural_photos_are_unknown_test_images_answered(
    converted_dir, data_dir, variant
):
    classifier = Classifier(converted_dir / f"model_{variant}.tflite")
    assert set(decisions(classifier, uniform_frames())) == {"unknown"}
    photos = [p for p in sorted(NATURAL.rglob("*")) if is_image_file(p)]
    assert len(photos) >= 80
    kinds = decisions(classifier, [load_rgb(p) for p in photos])
    assert kinds.count("unknown") >= 0.9 * len(kinds), kinds
    assert kinds.count("label") <= 0.05 * len(kinds)
    test = [s for s in read_split(converted_dir / "split.csv", data_dir) if s.split == "test"]
    kinds = decisions(classifier, [load_rgb(data_dir / s.path) for s in test])
    assert kinds.count("label") >= 0.6 * len(kinds), kinds


def test_app_stores_unknown_rows_with_their_scores(converted_dir, data_dir, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for index, frame in enumerate(uniform_frames(96)):
        cv2.imwrite(str(slides / f"u{index}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    test = [s for s in read_split(converted_dir / "split.csv", data_dir) if s.split == "test"]
    for sample in test[:4]:
        shutil.copy(data_dir / sample.path, slides / Path(sample.path).name)
    db = tmp_path / "r.sqlite"
    result = run_cli(
        "edge-app",
        "run",
        "--model",
        converted_dir / "model_int8.tflite",
        "--source",
        slides,
        "--headless",
        "--db",
        db,
        "--focus-min",
        "0",
        "--empty-contrast",
        "0",
        "--dark-mean",  # a mean grey is never below 0 nor above 255: the gate lets all through
        "0",
        "--bright-mean",
        "255",
        "--clipped-max",
        "1",
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 9
    by_origin = {Path(line["origin"]).name: line for line in lines}
    manifest = json.loads((converted_dir / "manifest.json").read_text())
    threshold = manifest["variants"]["int8"]["trust"]["ood"]["threshold"]
    for index in range(5):
        line = by_origin[f"u{index}.png"]
        assert line["decision"] == "unknown" and line["label"] is None
        assert line["ood_score"] > threshold
        assert line["message"].startswith("unknown: not like the images this model was trained on")
    for line in lines:
        assert line["decision_rule"] == "conformal-lac@0.9+ood-mahalanobis"
        assert isinstance(line["prediction_set"], list) and isinstance(line["ood_score"], float)
    with sqlite3.connect(db) as connection:
        connection.row_factory = sqlite3.Row
        stored = {
            Path(r["frame_origin"]).name: dict(r)
            for r in connection.execute("SELECT * FROM results")
        }
    assert {stored[f"u{i}.png"]["decision"] for i in range(5)} == {"unknown"}
    assert stored["u0.png"]["ood_score"] == pytest.approx(by_origin["u0.png"]["ood_score"])
    assert stored["u0.png"]["decision_rule"] == "conformal-lac@0.9+ood-mahalanobis"
    # Every frame the model judged records the threshold it was judged by, as the JSON line does.
    for name, row in stored.items():
        assert row["ood_threshold"] == pytest.approx(threshold)
        assert by_origin[name]["ood_threshold"] == pytest.approx(threshold)
    assert "decision rule: conformal-lac@0.9+ood-mahalanobis" in result.stderr


def test_model_without_trust_runs_on_the_legacy_rule(tiny_run, data_dir, tmp_path):
    # A model converted without trust parameters stands for an older release.
    out = tmp_path / "legacy"
    run_cli(
        "edge-convert",
        tiny_run,
        "--out",
        out,
        "--variants",
        "int8",
        "--no-trust",
        "--calibration-samples",
        "32",
        "--data",
        data_dir,
        "--max-drop",
        "100",
    )
    released = out / "model_int8.tflite"
    assert Classifier(released).trust is None
    frames = tmp_path / "f"
    frames.mkdir()
    cv2.imwrite(str(frames / "a.png"), np.full((224, 224, 3), 128, np.uint8))
    result = run_cli(
        "edge-app",
        "run",
        "--model",
        released,
        "--source",
        frames,
        "--headless",
        "--db",
        tmp_path / "r.sqlite",
        "--empty-contrast",
        "0",
    )
    line = json.loads(result.stdout.splitlines()[0])
    assert line["decision_rule"] == "legacy min-confidence 0.80 (model has no trust parameters)"
    assert line["ood_score"] is None and line["prediction_set"] is None
    assert "carries no trust parameters" in result.stderr


def test_mismatched_trust_parameters_are_refused(converted_dir, data_dir, tmp_path):
    copy = Path(shutil.copytree(converted_dir, tmp_path / "copy"))
    slides = tmp_path / "slides"  # a source that gives frames: the model is what is refused
    slides.mkdir()
    shutil.copy(next((data_dir / "Original" / "Benign").glob("*.jpg")), slides)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["variants"]["int8"]["trust"]["ood"]["threshold"] *= 10  # someone loosened it
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="trust parameters in manifest.json differ"):
        Classifier(copy / "model_int8.tflite")
    result = run_cli(
        "edge-app",
        "run",
        "--model",
        copy / "model_int8.tflite",
        "--source",
        slides,
        "--headless",
        "--db",
        tmp_path / "r.sqlite",
        check=False,
    )
    assert_clean_error(result, "differ from those embedded")
    # A trust-less copy of a two-output model has unknown thresholds: refused.
    from leukedge.convert.metadata import with_metadata

    data = (converted_dir / "model_fp32.tflite").read_bytes()
    info = read_metadata(data)
    info.model_files = {}
    (tmp_path / "bare.tflite").write_bytes(with_metadata(data, info))
    shutil.copy(converted_dir / "labels.txt", tmp_path / "labels.txt")
    with pytest.raises(ModelError, match="has an 'ood_score' output but no leukedge_trust.json"):
        Classifier(tmp_path / "bare.tflite")


def test_fit_errors_name_the_class_and_the_count(tiny_run, data_dir, tmp_path):
    out = tmp_path / "o"
    result = run_cli(
        "edge-convert",
        tiny_run,
        "--out",
        out,
        "--variants",
        "fp32",
        "--data",
        data_dir,
        "--no-verify",
        check=False,
    )
    assert_clean_error(result, "the val split has 15 image(s); --coverage 0.99 needs at least 99")
    rows = list(csv.DictReader((tiny_run / "split.csv").open()))
    for row in rows:
        if row["label"] == "Pro-B" and row["split"] == "val":
            row["split"] = "train"
    split = tmp_path / "split.csv"
    with split.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = run_cli(
        "edge-convert",
        tiny_run,
        "--out",
        out,
        "--variants",
        "fp32",
        "--data",
        data_dir,
        "--split-file",
        split,
        "--no-verify",
        *TINY_TRUST_ARGS,
        check=False,
    )
    assert_clean_error(result, "class 'Pro-B' has 0 image(s) in the val split")
    result = run_cli(
        "edge-convert",
        tiny_run,
        "--out",
        out,
        "--variants",
        "fp32",
        "--data",
        data_dir,
        "--no-verify",
        "--coverage",
        "0.9",
        "--ood-retention",
        "0.9",
        "--ood-dims",
        "200",
        check=False,
    )
    assert_clean_error(
        result,
        "the train split has 124 image(s) for a 200-dimensional OOD subspace",
        "--ood-dims 60",
    )
    assert not (out / "model_fp32.tflite").exists()
