"""Field shifts on real smear images, and `edge-bench robustness` end to end on a real tiny model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import run_cli
from leukedge.benchmarks.shifts import SEVERITIES, SHIFTS, parse_severities, parse_shifts
from leukedge.edge_app.decision import LABEL, DecisionRule, decide
from leukedge.edge_app.imaging import load_rgb, prepare

# One real image per class, at the dataset's size, and one larger non-square frame (a camera).
CLASS_IMAGES = (
    "Original/Benign/WBC-Benign-001.jpg",
    "Original/Early/WBC-Malignant-Early-001.jpg",
    "Original/Pre/WBC-Malignant-Pre-001.jpg",
    "Original/Pro/WBC-Malignant-Pro-001.jpg",
)


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
    return distance(
        cv2.GaussianBlur(shifted, (0, 0), 12)[centre], cv2.GaussianBlur(image, (0, 0), 12)[centre]
    )


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
        distances = [
            change(name, SHIFTS[name].apply(image, s, seed=11), image) for s in (0, *SEVERITIES)
        ]
        assert distances[0] == 0.0
        assert distances[1] > 0.0, f"{name} severity 1 leaves {relative} unchanged"
        assert all(b > a for a, b in zip(distances, distances[1:], strict=False)), (
            name,
            relative,
            distances,
        )


@pytest.mark.parametrize("name", list(SHIFTS))
def test_same_seed_same_pixels(name, smear):
    first = SHIFTS[name].apply(smear, 3, seed=42)
    assert np.array_equal(first, SHIFTS[name].apply(smear, 3, seed=42))


def test_random_shifts_depend_on_the_seed(smear):
    for name in (
        "motion-blur",
        "hue",
        "saturation",
        "white-balance",
        "gaussian-noise",
        "poisson-noise",
    ):
        outputs = [SHIFTS[name].apply(smear, 4, seed=seed) for seed in range(6)]
        assert any(not np.array_equal(outputs[0], other) for other in outputs[1:]), name


def test_sizes_scale_with_the_frame(smear):
    """A 2x larger frame gets a 2x larger blur: a 2x downscale of both shifted images matches."""
    import cv2

    big = cv2.resize(smear, (448, 448), interpolation=cv2.INTER_CUBIC)
    small_of_big = cv2.resize(
        SHIFTS["defocus"].apply(big, 5), (224, 224), interpolation=cv2.INTER_AREA
    )
    direct = SHIFTS["defocus"].apply(cv2.resize(big, (224, 224), interpolation=cv2.INTER_AREA), 5)
    unscaled = cv2.resize(SHIFTS["defocus"].apply(big, 2), (224, 224), interpolation=cv2.INTER_AREA)
    assert distance(small_of_big, direct) < 0.5 * distance(unscaled, direct)


def test_shift_specific_behaviour(smear):
    grey = smear.astype(np.float64).mean()
    assert (
        SHIFTS["darker"].apply(smear, 3).mean() < grey < SHIFTS["brighter"].apply(smear, 3).mean()
    )
    assert SHIFTS["low-contrast"].apply(smear, 5).std() < 0.5 * smear.std()
    assert (
        SHIFTS["defocus"].apply(smear, 5).astype(np.float64).var() < smear.astype(np.float64).var()
    )
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


# --- edge-bench robustness end to end -------------------------------------------------------


def test_command_end_to_end_matches_a_direct_computation(converted_dir, data_dir, tmp_path):
    """All shifts, two severities, every variant of a real tiny model on 2 real test images per
    class; the clean figures must equal classifying the same files directly."""

    from leukedge.edge_app.quality import assess
    from leukedge.edge_app.runtime import Classifier

    out = {name: tmp_path / name for name in ("r.json", "r.csv", "r.md", "r.png", "m.png")}
    result = run_cli(
        "edge-bench",
        "robustness",
        converted_dir,
        "--data-root",
        data_dir,
        "--limit",
        "2",
        "--severities",
        "1,5",
        "--json",
        out["r.json"],
        "--csv",
        out["r.csv"],
        "--markdown",
        out["r.md"],
        "--plot",
        out["r.png"],
        "--montage",
        out["m.png"],
    )
    report = json.loads(out["r.json"].read_text())
    variants = {m["variant"] for m in report["models"]}
    assert variants == {"fp32", "fp16", "dynamic", "int8"}
    assert all(m["status"] == "ok" for m in report["models"])

    # The images: the first 2 test rows per class of the split.csv written by edge-convert.
    with open(converted_dir / "split.csv", newline="") as handle:
        test_rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    expected = [
        r["path"]
        for label in sorted({r["label"] for r in test_rows})
        for r in [r for r in test_rows if r["label"] == label][:2]
    ]
    assert sorted(i["path"] for i in report["images"]) == sorted(expected)
    images = {i["path"]: load_rgb(data_dir / i["path"]) for i in report["images"]}

    rows = {(r["variant"], r["shift"], r["severity"]): r for r in report["rows"]}
    assert len(rows) == len(report["rows"]) == 4 * (1 + len(SHIFTS) * 2)
    for model in report["models"]:
        classifier = Classifier(model["model"])
        correct = [
            classifier.labels[int(classifier.classify(images[i["path"]]).argmax())] == i["label"]
            for i in report["images"]
        ]
        clean = rows[(model["variant"], "clean", 0)]
        assert clean["accuracy"] == pytest.approx(float(np.mean(correct)))
        assert clean["n"] == len(expected)
        # What the app would do with the clean frames: the quality gate, then the model's own
        # decision rule (its trust parameters: OOD score, then the conformal set).
        rule = DecisionRule.for_model(classifier.trust)
        assert model["decision_rule"] == clean["decision_rule"] == rule.text
        outcomes = []
        for i in report["images"]:
            image = images[i["path"]]
            if not assess(image).ok:
                outcomes.append("referred")
                continue
            p, score = classifier.invoke_outputs(
                classifier.to_input(prepare(image, classifier.image_size))
            )
            decision = decide(p, classifier.labels, rule, score)
            outcomes.append(
                "referred"
                if decision.kind != LABEL
                else "right"
                if decision.label == i["label"]
                else "wrong"
            )
        assert clean["answered_right"] == pytest.approx(outcomes.count("right") / len(outcomes))
        assert clean["answered_wrong"] == pytest.approx(outcomes.count("wrong") / len(outcomes))
        assert clean["referred"] == pytest.approx(outcomes.count("referred") / len(outcomes))
        for row in (r for r in report["rows"] if r["variant"] == model["variant"]):
            assert row["answered_right"] + row["answered_wrong"] + row["referred"] == pytest.approx(
                1.0
            )
            assert row["uncertain"] + row["unknown"] + row["unfit"] == pytest.approx(
                row["referred"]
            )
            assert row["unfit"] == row["gate_reject_fraction"]  # the gate decides before the model
        for row in (r for r in report["rows"] if r["variant"] == model["variant"]):
            matrix = np.array(row["confusion_matrix"])
            assert matrix.sum() == row["n"] and np.trace(matrix) / row["n"] == pytest.approx(
                row["accuracy"]
            )
        # mild/break summary is consistent with the rows it summarises
        for entry in (s for s in report["summary"] if s["variant"] == model["variant"]):
            mild = rows[(model["variant"], entry["shift"], 1)]["accuracy"]
            severe = rows[(model["variant"], entry["shift"], 5)]["accuracy"]
            assert entry["mild_accuracy"] == mild and entry["mild_ok"] == (mild >= 0.95)
            assert entry["first_severity_below_90"] == (
                1 if mild < 0.9 else 5 if severe < 0.9 else None
            )

    # The quality gate figures are the app's own gate applied to the same pixels.
    gate = report["quality_gate"]
    assert gate["available"] and gate["function"] == "leukedge.edge_app.quality.assess"
    gate_rows = {(g["shift"], g["severity"]): g for g in gate["rows"]}
    clean_rejects = np.mean([not assess(image).ok for image in images.values()])
    assert gate_rows[("clean", 0)]["reject_fraction"] == pytest.approx(clean_rejects)
    assert (
        rows[("int8", "defocus", 5)]["gate_reject_fraction"]
        == gate_rows[("defocus", 5)]["reject_fraction"]
    )

    with open(out["r.csv"], newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert len(csv_rows) == len(report["rows"])
    for row in csv_rows:
        assert float(row["accuracy"]) == pytest.approx(
            rows[(row["variant"], row["shift"], int(row["severity"]))]["accuracy"]
        )
    markdown = out["r.md"].read_text()
    for variant in variants:
        clean = rows[(variant, "clean", 0)]["accuracy"]
        assert f"| {variant} | " in markdown and f"| {100 * clean:.1f} |" in markdown
    for name in SHIFTS:
        assert f"| {name} | 5 |" in markdown
    assert "| clean | 0 |" in result.stdout
    assert "answered right / answered wrong / referred" in markdown
    assert {"answered_right", "answered_wrong", "referred"} <= set(csv_rows[0])
    for png in (out["r.png"], out["m.png"]):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_command_is_deterministic(converted_dir, data_dir, tmp_path):
    outputs = []
    for run in range(2):
        path = tmp_path / f"run{run}.json"
        run_cli(
            "edge-bench",
            "robustness",
            converted_dir / "model_int8.tflite",
            "--data",
            converted_dir / "split.csv",
            "--data-root",
            data_dir,
            "--limit",
            "1",
            "--shifts",
            "gaussian-noise,motion-blur,hue",
            "--severities",
            "3",
            "--json",
            path,
            "--quiet",
        )
        outputs.append(
            [
                (r["shift"], r["severity"], r["accuracy"])
                for r in json.loads(path.read_text())["rows"]
            ]
        )
    assert outputs[0] == outputs[1]
    assert [o[:2] for o in outputs[0]] == [
        ("clean", 0),
        ("gaussian-noise", 3),
        ("motion-blur", 3),
        ("hue", 3),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--shifts", "defocsu"), "did you mean 'defocus'"),
        (("--shifts", "blur,jpeg"), "unknown shift 'blur'"),
        (("--severities", "1,7"), "severity '7' is not one of 1, 2, 3, 4, 5"),
        (("--severities", "low"), "severity 'low'"),
        (("--limit", "0"), "--limit"),
        (("--plot", "out.jpg"), "should end in .png"),
        (("--json", "no/such/folder/r.json"), "does not exist"),
    ],
)
def test_bad_options_give_one_line_errors(converted_dir, data_dir, args, message):
    result = run_cli(
        "edge-bench", "robustness", converted_dir, "--data-root", data_dir, *args, check=False
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_models_and_data_give_one_line_errors(converted_dir, data_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    not_a_model = tmp_path / "model.tflite"
    not_a_model.write_bytes(b"not a flatbuffer at all")
    cases = [
        ((tmp_path / "missing.tflite",), "does not exist"),
        ((empty,), "no manifest.json"),
        ((converted_dir, "--data", empty), "no class folders"),
        ((not_a_model, "--data", data_dir / "Original", "--limit", "1"), "is not a TFLite model"),
    ]
    for args, message in cases:
        result = run_cli("edge-bench", "robustness", *args, "--quiet", check=False)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr


def test_ctrl_c_reports_the_finished_conditions(converted_dir, data_dir, tmp_path):
    """SIGINT mid-run: exit 130, outputs written, and every reported condition fully scored."""
    import signal
    import subprocess
    import time

    from conftest import BIN, interruptible

    out = tmp_path / "r.json"
    process = subprocess.Popen(
        [
            str(BIN / "edge-bench"),
            "robustness",
            str(converted_dir),
            "--data-root",
            str(data_dir),
            "--limit",
            "4",
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "r.md"),
            "--plot",
            str(tmp_path / "r.png"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    seen, deadline = "", time.monotonic() + 120
    while "defocus 2" not in seen and time.monotonic() < deadline and process.poll() is None:
        seen += process.stderr.read(64)
    assert "defocus 2" in seen, seen[-2000:]
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "interrupted" in stderr
    report = json.loads(out.read_text())
    assert report["interrupted"] is True
    done = {(r["shift"], r["severity"]) for r in report["rows"]}
    assert ("clean", 0) in done and ("defocus", 1) in done and ("low-resolution", 5) not in done
    for key in done:  # each reported condition was scored on every image by every variant
        assert sorted(
            r["variant"] for r in report["rows"] if (r["shift"], r["severity"]) == key
        ) == sorted(["fp32", "fp16", "dynamic", "int8"])
        assert all(r["n"] == len(report["images"]) for r in report["rows"])
    assert "INTERRUPTED" in stdout and (tmp_path / "r.png").stat().st_size > 0
