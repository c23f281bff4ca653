"""`edge-bench app`: the Pi app's pipeline timed stage by stage on the released model and real images."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, assert_clean_error, run_cli
from leukedge.benchmarks.app import AppBenchSettings, bench_model
from leukedge.benchmarks.schema import APP_STAGES, AppRow
from leukedge.edge_app.sources.files import list_images

MODEL = REPO / "models" / "model_int8.tflite"


@pytest.fixture(scope="module")
def images(data_dir):
    return list_images(str(data_dir / "Original" / "Benign"))[:12]


def test_stages_add_up_and_the_camera_path_has_no_decode(images):
    rows = bench_model(MODEL, images, AppBenchSettings(frames=12, repeats=2, warmup=2, threads=1))
    by_path = {row["path"]: row for row in rows}
    assert set(by_path) == {"camera", "file"} and set(rows[0]) == set(AppRow.__annotations__)
    assert by_path["camera"]["stage_ms"]["decode"] is None
    assert by_path["file"]["stage_ms"]["decode"] > 0
    for row in rows:
        assert row["variant"] == "int8" and row["threads"] == 1 and len(row["ratios"]) == 2
        stages = row["stage_ms"]
        for stage in ("quality", "prepare", "invoke", "decision", "sqlite"):
            assert stages[stage] is not None and stages[stage] > 0, stage  # every wrapped stage ran
        # The invoke stage (set_tensor + invoke + get_tensor) is the bulk of the frame, and a frame
        # costs at least its bare invoke, so the ratio is at least about 1.
        assert stages["invoke"] < row["frame_ms"]
        assert row["ratio"] > 0.8 and row["frame_ms"] > 0 and row["invoke_ms"] > 0
        # Medians of the parts do not add exactly to the median of sums, but closely.
        parts = sum(v for v in stages.values() if v is not None)
        assert parts == pytest.approx(row["frame_ms"], rel=0.35)


def test_command_writes_table_json_and_markdown(data_dir, tmp_path):
    out, md = tmp_path / "app.json", tmp_path / "app.md"
    result = run_cli(
        "edge-bench",
        "app",
        MODEL,
        "--images",
        data_dir / "Original" / "Pro",
        "--frames",
        "10",
        "--repeats",
        "1",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--soak",
        "30",
        "--json",
        out,
        "--markdown",
        md,
    )
    report = json.loads(out.read_text())
    assert [row["path"] for row in report["rows"]] == ["camera", "file"]
    assert report["environment"]["simd"] is not None and report["settings"]["frames"] == 10
    assert report["soak"]["frames"] == 30 and report["soak"]["stored"] == 30
    assert "camera path: frame/invoke" in result.stdout and "target" in result.stdout
    assert all(f"{stage} ms" in result.stdout for stage in APP_STAGES)
    assert "| models/model_int8.tflite | int8 | camera |" in md.read_text()


def test_bad_inputs_give_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (("--images", empty), "the folder holds no image files"),
        ((tmp_path / "missing.tflite", "--images", empty), "does not exist"),
        (("--paths", "usb"), "use camera, file or camera,file"),
        (("--json", tmp_path / "no" / "a.json"), "does not exist"),
    ]
    for args, message in cases:
        assert_clean_error(run_cli("edge-bench", "app", *args, check=False), message)


def test_edge_app_has_no_bench_command_any_more():
    result = run_cli("edge-app", "bench", "--help", check=False)
    assert result.returncode != 0 and "No such command 'bench'" in result.stderr
