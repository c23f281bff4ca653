"""edge-train: a real small run end to end, the split's properties, and bad inputs."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import WEIGHTS_DIR, assert_clean_error, run_cli
from leukedge.edge_app.imaging import ImageDecodeError, load_rgb
from leukedge.train import dataset
from leukedge.train.machine import simd_flags
from leukedge.train.metrics import classification_metrics

ARTIFACTS = {
    "model.keras",
    "labels.txt",
    "split.csv",
    "history.csv",
    "metrics.json",
    "curves.png",
    "confusion_matrix.png",
    "model_card.md",
    "skipped.txt",
}
QUICK = (
    "--alpha",
    "0.35",
    "--image-size",
    "64",
    "--epochs",
    "1",
    "--fine-tune-epochs",
    "0",
    "--batch-size",
    "16",
)


def test_run_writes_every_artifact(tiny_run):
    assert {p.name for p in tiny_run.iterdir()} >= ARTIFACTS
    assert (tiny_run / "labels.txt").read_text().splitlines() == list(dataset.CANONICAL_LABELS)
    for plot in ("curves.png", "confusion_matrix.png"):
        assert cv2.imread(str(tiny_run / plot)) is not None
    history = list(csv.DictReader((tiny_run / "history.csv").read_text().splitlines()))
    assert {row["phase"] for row in history} == {"frozen", "fine-tune", "int8-refit"}
    card = (tiny_run / "model_card.md").read_text()
    assert "not a diagnostic device" in card and "edge-train" in card


def test_metrics_match_the_models_predictions(tiny_run, data_dir):
    import keras

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    labels = metrics["labels"]
    model = keras.models.load_model(tiny_run / "model.keras")
    samples = dataset.read_split(tiny_run / "split.csv", data_dir)
    # A new split keeps near-twins together: none is scored against its own twin.
    twins = metrics["data"]["near_twins"]
    assert twins["images_with_a_twin_in_another_split"] == {"train": 0, "val": 0, "test": 0}
    assert twins["correlation_threshold"] == 0.5 and twins["images"] >= 2 * twins["groups"]
    for split in ("val", "test"):
        chosen = [s for s in samples if s.split == split]
        pixels = dataset.load_pixels(chosen, data_dir, 96)
        predicted = model.predict(pixels.astype("float32"), verbose=0).argmax(axis=1)
        truth = [labels.index(s.label) for s in chosen]
        expected = classification_metrics(truth, predicted, labels)
        assert metrics[split]["confusion_matrix"] == expected["confusion_matrix"]
        assert metrics[split]["accuracy"] == pytest.approx(expected["accuracy"])
        assert metrics[split]["macro"]["f1"] == pytest.approx(expected["macro"]["f1"])
        assert metrics[split]["n"] == len(chosen)
    assert metrics["peak_rss_mb"] > 0 and metrics["timing_seconds"]["total"] > 0
    # What the time was measured on, and edge-train's pooled CPU allocator really in use.
    assert metrics["environment"]["simd"] == simd_flags()
    assert metrics["environment"]["cpu_allocator"] == "bfc"


def test_split_is_stratified_deduplicated_and_deterministic(data_dir):
    scan = dataset.scan(data_dir, limit_per_class=60)
    # Pro holds byte-identical pairs; each content is kept once.
    assert scan.duplicates > 0
    assert len({s.sha256 for s in scan.samples}) == len(scan.samples)
    split = dataset.stratified_split(scan.samples, seed=3)
    assert split == dataset.stratified_split(scan.samples, seed=3)
    assert split != dataset.stratified_split(scan.samples, seed=4)
    by_hash = {}
    for sample in split:
        assert by_hash.setdefault(sample.sha256, sample.split) == sample.split
    for label, n in scan.found_per_class.items():
        counts = Counter(s.split for s in split if s.label == label)
        assert counts["test"] == round(n * 0.1) and counts["val"] == round(n * 0.1)
        assert counts["train"] == n - counts["test"] - counts["val"]


def test_tiny_run_split_has_no_leak(tiny_run, data_dir):
    rows = list(csv.DictReader((tiny_run / "split.csv").read_text().splitlines()))
    assert set(rows[0]) == {"path", "sha256", "label", "split"}
    hashes = [row["sha256"] for row in rows]
    assert len(hashes) == len(set(hashes))
    for row in rows[:20]:
        assert hashlib.sha256((data_dir / row["path"]).read_bytes()).hexdigest() == row["sha256"]


def test_folder_names_of_both_releases_map_to_canonical_labels():
    for name, label in [
        ("Benign", "Benign"),
        ("Early", "Early Pre-B"),
        ("[Malignant] early Pre-B", "Early Pre-B"),
        ("Pre", "Pre-B"),
        ("[Malignant] Pre-B", "Pre-B"),
        ("Pro", "Pro-B"),
        ("[Malignant] Pro-B", "Pro-B"),
        ("Lymphocyte", "Lymphocyte"),
    ]:
        assert dataset.canonical_label(name) == label


def real_image(data_dir: Path, label_folder: str, index: int = 0) -> Path:
    return sorted((data_dir / "Original" / label_folder).glob("*.jpg"))[index]


@pytest.fixture()
def messy_dataset(tmp_path, data_dir) -> Path:
    """Real images in the other release's folder names, plus every kind of awkward file."""
    root = tmp_path / "messy"
    names = {
        "Benign": "Benign",
        "Early": "[Malignant] early Pre-B",
        "Pre": "[Malignant] Pre-B",
        "Pro": "[Malignant] Pro-B",
    }
    for source, target in names.items():
        (root / target).mkdir(parents=True)
        for path in sorted((data_dir / "Original" / source).glob("*.jpg"))[20:32]:
            os.symlink(path, root / target / path.name)
    benign = root / "Benign"
    jpeg = real_image(data_dir, "Benign").read_bytes()
    (benign / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (benign / "empty.jpg").write_bytes(b"")
    (benign / "notes.jpg").write_text("this is not an image")
    bgr = cv2.imread(str(real_image(data_dir, "Pre", 40)))
    cv2.imwrite(str(root / "[Malignant] Pre-B" / "grey.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(root / "[Malignant] Pre-B" / "rgba.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(root / "[Malignant] Pro-B" / "deep16.png"), bgr.astype(np.uint16) * 257)
    cv2.imwrite(str(root / "[Malignant] Pro-B" / "wide.jpg"), cv2.resize(bgr, (300, 200)))
    return root


@pytest.mark.slow
def test_awkward_files_are_converted_or_skipped_and_listed(messy_dataset, tmp_path):
    out = tmp_path / "run"
    result = run_cli("edge-train", "--data", messy_dataset, "--out", out, *QUICK)
    skipped = dict(line.split("\t") for line in (out / "skipped.txt").read_text().splitlines())
    assert set(skipped) == {"Benign/truncated.jpg", "Benign/empty.jpg", "Benign/notes.jpg"}
    assert "3 file(s) skipped" in result.stdout
    kept = {row["path"] for row in csv.DictReader((out / "split.csv").read_text().splitlines())}
    assert {
        "[Malignant] Pre-B/grey.png",
        "[Malignant] Pre-B/rgba.png",
        "[Malignant] Pro-B/deep16.png",
        "[Malignant] Pro-B/wide.jpg",
    } <= kept
    assert (out / "labels.txt").read_text().splitlines() == list(dataset.CANONICAL_LABELS)


def test_load_rgb_converts_every_layout(messy_dataset):
    for name in (
        "[Malignant] Pre-B/grey.png",
        "[Malignant] Pre-B/rgba.png",
        "[Malignant] Pro-B/deep16.png",
    ):
        image = load_rgb(messy_dataset / name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    for name in ("truncated.jpg", "empty.jpg", "notes.jpg"):
        with pytest.raises(ImageDecodeError, match=name):
            load_rgb(messy_dataset / "Benign" / name)


def test_split_file_is_reused_exactly(tiny_run, data_dir, tmp_path):
    out = tmp_path / "reuse"
    run_cli(
        "edge-train",
        "--data",
        data_dir,
        "--out",
        out,
        "--split-file",
        tiny_run / "split.csv",
        "--limit-per-class",
        "40",
        *QUICK,
    )
    assert (out / "split.csv").read_text() == (tiny_run / "split.csv").read_text()


def test_bad_inputs_fail_cleanly_and_write_nothing(tmp_path, data_dir, tiny_run):
    out = tmp_path / "out"

    def train(*args):
        return run_cli("edge-train", "--out", out, *QUICK, *args, check=False)

    assert_clean_error(train("--data", tmp_path / "missing"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_clean_error(train("--data", tmp_path / "empty"), "no class folders")
    one = tmp_path / "one"
    (one / "Benign").mkdir(parents=True)
    os.symlink(real_image(data_dir, "Benign"), one / "Benign" / "a.jpg")
    assert_clean_error(train("--data", one), "only one class folder")
    (one / "Pro").mkdir()
    assert_clean_error(train("--data", one), "no usable images", "Pro")
    (one / "Pro" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert_clean_error(train("--data", one), "no usable images")
    assert not out.exists(), "a failed run must not leave a run folder"

    lost = tmp_path / "lost.csv"
    lost.write_text((tiny_run / "split.csv").read_text().replace("WBC-", "GONE-"))
    assert_clean_error(train("--data", data_dir, "--split-file", lost), "missing under")

    alpha_one = run_cli(
        "edge-train",
        "--out",
        out,
        "--data",
        data_dir,
        "--limit-per-class",
        "10",
        "--alpha",
        "1.0",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--fine-tune-epochs",
        "0",
        "--weights",
        WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
        check=False,
    )
    assert_clean_error(alpha_one, "does not fit MobileNetV2 alpha 1.0")
    assert not out.exists()

    assert_clean_error(run_cli("edge-train", "--out", tiny_run, *QUICK, check=False), "--overwrite")
    assert (tiny_run / "metrics.json").is_file(), "a refused run must leave the earlier one intact"
    assert_clean_error(train("--weights", tmp_path / "nope.h5"), "--weights")
    # An --out that cannot be written is refused before the training, not after it.
    (tmp_path / "afile").write_text("a file, not a folder")
    through_a_file = run_cli(
        "edge-train", "--out", tmp_path / "afile" / "run", *QUICK, "--data", data_dir, check=False
    )
    assert_clean_error(through_a_file, "cannot write in", "is a file, not a folder")
    assert "Epoch" not in through_a_file.stdout + through_a_file.stderr
    assert_clean_error(
        train("--data", data_dir, "--int8-per-tensor", "Conv_1,block_99_expand"),
        "--int8-per-tensor",
        "block_99_expand",
    )
    assert not out.exists()
    # Past the backbone's last layer nothing would fine-tune: refused before any epoch.
    too_far = train(
        "--data", data_dir, "--limit-per-class", "10",
        "--fine-tune-epochs", "1", "--fine-tune-from", "9999",
    )  # fmt: skip
    assert_clean_error(too_far, "--fine-tune-from 9999: the backbone has", "layers (0 to")
    assert "Epoch" not in too_far.stdout + too_far.stderr and not out.exists()


def test_defaults_match_the_documented_interface():
    result = run_cli("edge-train", "--help")
    for option in (
        "--data",
        "--out",
        "--subset",
        "--alpha",
        "--image-size",
        "--epochs",
        "--fine-tune-epochs",
        "--batch-size",
        "--weights",
        "--seed",
        "--split-file",
        "--limit-per-class",
        "--strategy",
        "--overwrite",
    ):
        assert option in result.stdout


def test_remaining_time_is_estimated_from_the_mean_epoch(monkeypatch):
    from leukedge.train import training

    # train begins, then three epochs end, after 60 s, 120 s and 2 s
    clock = iter([0.0, 60.0, 180.0, 182.0])
    monkeypatch.setattr(training.time, "monotonic", lambda: next(clock))
    lines: list[str] = []
    eta = training.EtaCallback("fine-tune", 12, echo=lines.append)
    eta.on_train_begin()
    for epoch in range(3):
        eta.on_epoch_end(epoch)
    assert lines[0].startswith("fine-tune: epoch 1/12 done after 1.0 min; about 11.0 min left")
    assert "if all 12 epochs run (until " in lines[0]
    assert lines[1].startswith("fine-tune: epoch 2/12 done after 3.0 min; about 15.0 min left")
    assert len(lines) == 3  # the mean epoch is still over 5 s: the third line is printed too
    assert "about 9.1 min left" in lines[2]  # 182 s / 3 epochs x 9 left = 546 s

    clock = iter([0.0, 2.0, 4.0])  # seconds-long head epochs stay quiet
    quiet = training.EtaCallback("head", 30, echo=lines.append)
    quiet.on_train_begin()
    quiet.on_epoch_end(0)
    quiet.on_epoch_end(1)
    assert len(lines) == 3


def test_near_twins_are_found_and_kept_in_one_split(data_dir, tmp_path):
    """WBC-Benign-114 and -117 are the same field saved twice (different bytes, correlation
    0.98): a new split never separates them; unrelated fields are not grouped."""
    from leukedge.train import twins

    benign, early = (
        sorted((data_dir / "Original" / c).glob("*.jpg"))[:6] for c in ("Benign", "Early")
    )
    twins_found = [data_dir / "Original" / "Benign" / f"WBC-Benign-{n}.jpg" for n in (114, 117)]
    for label, paths in {"Benign": [*benign, *twins_found], "Early": early}.items():
        (tmp_path / "Original" / label).mkdir(parents=True)
        for path in paths:
            shutil.copy(path, tmp_path / "Original" / label)
    scan = dataset.scan(tmp_path)
    by_name = {Path(s.path).stem: s.sha256 for s in scan.samples}
    assert by_name["WBC-Benign-114"] != by_name["WBC-Benign-117"]  # not byte duplicates
    groups = twins.twin_groups([s.sha256 for s in scan.samples], scan.images)
    assert groups == [sorted([by_name["WBC-Benign-114"], by_name["WBC-Benign-117"]])]
    separated = 0
    for seed in range(12):
        plain = {s.sha256: s.split for s in dataset.stratified_split(scan.samples, seed)}
        kept = dataset.stratified_split(scan.samples, seed, twins=groups)
        split_of = {s.sha256: s.split for s in kept}
        assert split_of[by_name["WBC-Benign-114"]] == split_of[by_name["WBC-Benign-117"]]
        assert twins.across_splits(split_of, groups) == {"train": 0, "val": 0, "test": 0}
        # the per-class counts are those of a split without twins
        assert Counter((s.label, s.split) for s in kept) == Counter(
            (s.label, plain[s.sha256]) for s in kept
        )
        separated += plain[by_name["WBC-Benign-114"]] != plain[by_name["WBC-Benign-117"]]
    assert separated > 0  # without the groups, some seeds split the twins (the leak)


def test_twin_thumbnails_survive_re_encoding_but_not_another_field(data_dir):
    from leukedge.train import twins

    first = load_rgb(data_dir / "Original" / "Pre" / "WBC-Malignant-Pre-001.jpg")
    other = load_rgb(data_dir / "Original" / "Pre" / "WBC-Malignant-Pre-002.jpg")
    ok, jpeg = cv2.imencode(".jpg", first[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 60])
    re_encoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[:, :, ::-1]
    moved = np.roll(first, 6, axis=1)  # a small stage move
    vectors = np.stack([twins.thumbnail(x) for x in (first, re_encoded, moved, other)])
    assert {pair for pair in twins.twin_pairs(vectors)} == {(0, 1), (0, 2), (1, 2)}
    flat = twins.thumbnail(np.full((64, 64, 3), 200, np.uint8))
    assert not flat.any()  # a flat frame twins with nothing, itself included
