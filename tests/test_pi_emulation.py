"""Fast pure-logic parts of scripts/pi-emulation-check (the emulated run itself is run by .ci/run)."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from pi_emulation import compare, userland, wheels  # noqa: E402

ROW = {
    "id": 1,
    "timestamp_utc": "2026-11-25T21:00:00.000Z",
    "decision": "label",
    "label": "Pre-B",
    "top_label": "Pre-B",
    "confidence": 0.90625,
    "focus": 59.4136,
    "quality_ok": 1,
    "probabilities": json.dumps({"Benign": 0.03125, "Pre-B": 0.90625}),
    "runtime": "ai-edge-litert 2.3.0",
    "app_version": "0.1.0",
    "image_path": "/x86/frames/a.jpg",
}


def arm_row(**changes) -> dict:
    return {
        **ROW,
        "runtime": "ai-edge-litert 2.1.6",
        "app_version": "unknown",
        "timestamp_utc": "2026-11-25T21:05:00.000Z",
        "image_path": "/arm/frames/a.jpg",
        **changes,
    }


def test_ignored_columns_may_differ_and_nothing_else_is_ignored():
    assert compare.compare_values(ROW, arm_row(), "row") == []
    assert {
        "timestamp_utc",
        "created_utc",
        "image_path",
        "runtime",
        "app_version",
        "message",
    } == compare.IGNORED


@pytest.mark.parametrize(
    "changes, where",
    [
        ({"decision": "uncertain"}, "row.decision"),
        ({"label": "Pro-B"}, "row.label"),
        ({"quality_ok": 0}, "row.quality_ok"),
        ({"confidence": 0.90625 + 3 / 256}, "row.confidence"),
        (
            {"probabilities": json.dumps({"Benign": 0.03125 + 3 / 256, "Pre-B": 0.90625})},
            "row.probabilities.Benign",
        ),
        (
            {"probabilities": json.dumps({"Benign": 0.03125})},
            "row.probabilities: key 'Pre-B' only on x86",
        ),
        ({"focus": 59.4139}, "row.focus"),
    ],
)
def test_real_differences_are_reported(changes, where):
    found = compare.compare_values(ROW, arm_row(**changes), "row")
    assert len(found) == 1 and found[0].startswith(where), found


def test_quantization_steps_and_stored_rounding_are_tolerated():
    # Two uint8 steps in a probability (stored rounded to 6 decimals), one in the 4th decimal of focus.
    changes = {
        "confidence": round(0.90625 - 2 / 256, 6),
        "focus": 59.4137,
        "probabilities": json.dumps({"Benign": 0.03125 + 2 / 256, "Pre-B": 0.90625 - 1 / 256}),
    }
    assert compare.compare_values(ROW, arm_row(**changes), "row") == []
    assert (
        compare.max_prob_difference(
            [json.loads(ROW["probabilities"])], [json.loads(changes["probabilities"])]
        )
        == 0
    )


def test_result_lines_must_cover_the_same_frames():
    line = {"frame": 1, "decision": "label", "probabilities": {"Pre-B": 0.5}}
    assert compare.compare_result_lines([line, line], [line]) == [
        "headless output: 2 frames on x86, 1 on arm"
    ]
    assert (
        compare.max_prob_difference([line], [{**line, "probabilities": {"Pre-B": 0.5 + 5 / 256}}])
        == 5 / 256
    )


def write_db(path: Path, rows: list[dict]) -> Path:
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE results (id INTEGER PRIMARY KEY, timestamp_utc TEXT, decision TEXT, "
            "label TEXT, top_label TEXT, confidence REAL, focus REAL, quality_ok INTEGER, "
            "probabilities TEXT, runtime TEXT, app_version TEXT, image_path TEXT)"
        )
        for row in rows:
            db.execute(
                f"INSERT INTO results ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
    return path


def test_sqlite_rows_compared_column_by_column(tmp_path):
    x86 = compare.read_tables(write_db(tmp_path / "x86.sqlite", [ROW, {**ROW, "id": 2}]))
    same = compare.read_tables(write_db(tmp_path / "same.sqlite", [arm_row(), arm_row(id=2)]))
    other = compare.read_tables(
        write_db(tmp_path / "other.sqlite", [arm_row(), arm_row(id=2, decision="unfit")])
    )
    short = compare.read_tables(write_db(tmp_path / "short.sqlite", [arm_row()]))
    assert compare.compare_tables(x86, same) == []
    assert compare.compare_tables(x86, other) == [
        "results row 2.decision: x86 'label' vs arm 'unfit'"
    ]
    assert compare.compare_tables(x86, short) == ["table 'results': 2 rows on x86, 1 on arm"]
    assert compare.compare_tables(x86, {}) == ["table 'results' only on x86"]


def test_pi_requirements_follow_the_pi_extra():
    litert = wheels.pi_requirements(REPO / "pyproject.toml", "ai-edge-litert")
    tflite = wheels.pi_requirements(REPO / "pyproject.toml", "tflite-runtime")
    other = wheels.pi_requirements(REPO / "pyproject.toml", "ai-edge-litert==2.2.0")
    assert "numpy<2,>=1.24" in litert and any(
        r.startswith("opencv-python-headless") and "<4.12" in r for r in litert
    )
    assert [r for r in litert if r.startswith("ai-edge-litert")] == ["ai-edge-litert<2.2,>=2.0"]
    assert tflite[-1] == "tflite-runtime==2.14.0" and not any(
        r.startswith("ai-edge-litert") for r in tflite
    )
    assert other[-1] == "ai-edge-litert==2.2.0" and other[:-1] == litert[:-1]
    with pytest.raises(userland.SetupError, match="--runtime 'tensorflow'"):
        wheels.pi_requirements(REPO / "pyproject.toml", "tensorflow")


def test_trixie_gets_the_numpy_2_stack_and_no_tflite_runtime():
    trixie = wheels.pi_requirements(REPO / "pyproject.toml", "ai-edge-litert", "3.13")
    assert "numpy>=2" in trixie and not any(";" in r for r in trixie)
    assert [r for r in trixie if r.startswith("ai-edge-litert")] == ["ai-edge-litert<2.2,>=2.0"]
    assert "opencv-python-headless>=4.8" in trixie
    with pytest.raises(userland.SetupError, match="no wheels for Python 3.13"):
        wheels.pi_requirements(REPO / "pyproject.toml", "tflite-runtime", "3.13")
    assert wheels.runtimes_for("3.13") == ("ai-edge-litert",)
    assert wheels.runtimes_for("3.11") == ("ai-edge-litert", "tflite-runtime")


def test_apt_state_stays_inside_the_check_folder(tmp_path):
    options = userland.apt_options(tmp_path)
    dirs = [o.split("=", 1)[1] for o in options if o.startswith("-oDir::")]
    assert len(dirs) == 8 and all(d.startswith(str(tmp_path)) for d in dirs)
    assert "-oAPT::Architectures=arm64" in options
    bookworm = wheels.platforms(userland.RELEASES["bookworm"])
    assert all(p.startswith("manylinux") and p.endswith("_aarch64") for p in bookworm)
    assert "manylinux_2_36_aarch64" in bookworm and "manylinux_2_37_aarch64" not in bookworm
    trixie = wheels.platforms(userland.RELEASES["trixie"])
    assert "manylinux_2_41_aarch64" in trixie and "manylinux_2_42_aarch64" not in trixie


def test_each_release_has_its_own_folders_and_interpreter(tmp_path):
    bookworm, trixie = userland.RELEASES["bookworm"], userland.RELEASES["trixie"]
    assert userland.release_dir(tmp_path, bookworm, "rootfs") == tmp_path / "rootfs"
    assert userland.release_dir(tmp_path, trixie, "rootfs") == tmp_path / "rootfs-trixie"
    assert (
        trixie.interpreter == "usr/bin/python3.13" and "python3.13-minimal" in trixie.all_packages()
    )
    assert all(" trixie" in source for source in trixie.sources)
    userland.prepare_apt_dir(tmp_path / "apt", trixie)
    assert (tmp_path / "apt" / "sources.list").read_text().count("trixie") == 3


def test_a_usr_only_tree_gets_the_merged_usr_links(tmp_path):
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "usr" / "bin").mkdir()
    (tmp_path / "sbin").mkdir()  # a real folder stays as it is
    userland.merge_usr(tmp_path)
    assert (tmp_path / "lib").is_symlink() and (tmp_path / "lib").resolve() == (
        tmp_path / "usr" / "lib"
    ).resolve()
    assert (tmp_path / "bin").is_symlink() and not (tmp_path / "sbin").is_symlink()
