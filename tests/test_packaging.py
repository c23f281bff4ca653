"""The wheel as a user gets it: built from the tree, installed with [edge] into a fresh venv outside
the checkout, and run from a project folder that has its own benchmarks/ and train/ packages.

Slow (a few minutes): building the wheel and installing ai-edge-litert, OpenCV and matplotlib into a
new venv (from pip's cache when it is warm).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("Benign", "Early", "Pre", "Pro")

pytestmark = pytest.mark.slow


def run(command: list, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{command} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def source_tree(destination: Path) -> Path:
    """The files git would commit (tracked, and new ones not ignored): no .venv, build/ or runs/."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the fresh venv's bin folder)."""
    root = tmp_path_factory.mktemp("packaging")
    source = source_tree(root / "source")
    built = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-v",  # shows the build backend's own warnings
            source,
            "-w",
            root / "dist",
        ],
        cwd=root,
    )
    # A clean build: setuptools once warned at every build that the review page's templates/ and
    # static/ folders looked like packages missing from `packages`.
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr
    assert "BuildBackendWarning" not in built.stdout + built.stderr
    wheel = next((root / "dist").glob("leukedge-*.whl"))
    venv = root / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=root)
    run(
        [
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            f"{wheel}[edge]",
        ],
        cwd=root,
        timeout=1500,
    )
    return wheel, venv / "bin"


@pytest.fixture(scope="module")
def project(tmp_path_factory, data_dir) -> Path:
    """A user's project folder with its own benchmarks/ and train/ packages (that would shadow
    generic top-level names) and a few real images."""
    folder = tmp_path_factory.mktemp("project")
    for package in ("benchmarks", "train"):
        (folder / package).mkdir()
        (folder / package / "__init__.py").write_text("")
    (folder / "benchmarks" / "worker.py").write_text(
        "raise SystemExit('the project benchmarks.worker ran')\n"
    )
    for name in CLASSES:
        (folder / "data" / name).mkdir(parents=True)
        for image in sorted((data_dir / "Original" / name).glob("*.jpg"))[:2]:
            shutil.copy(image, folder / "data" / name / image.name)
    (folder / "slides").mkdir()
    for image in sorted((folder / "data").rglob("*.jpg"))[::2]:
        shutil.copy(image, folder / "slides" / image.name)
    return folder


def test_the_wheel_installs_only_leukedge_and_ships_the_release(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "leukedge",
        wheel.name.split("-py3")[0] + ".dist-info",
    }
    for released in (
        "model_int8.tflite",
        "model_fp16.tflite",
        "model_fast_int8.tflite",
        "manifest.json",
        "labels.txt",
        "split.csv",
    ):
        assert f"leukedge/models/{released}" in names
    assert wheel.stat().st_size < 10 * 1024 * 1024  # docs/architecture.md states the measured size


def test_the_installed_app_runs_the_packaged_model_verified_from_a_project_folder(
    installed, project
):
    _, bin_dir = installed
    db = project / "results.sqlite"
    result = run(
        [bin_dir / "edge-app", "run", "--source", "slides", "--headless", "--db", db], cwd=project
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(CLASSES)
    packaged = (
        bin_dir.parent
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / "site-packages"
        / "leukedge"
        / "models"
    )
    assert (
        f"model_int8.tflite (int8, verified by {packaged / 'manifest.json'}, trust: lac"
        in result.stderr
    )
    connection = sqlite3.connect(db)
    rows = connection.execute("SELECT model_variant, model_verified FROM results").fetchall()
    connection.close()
    assert rows == [("int8", 1)] * len(CLASSES)


def test_the_installed_bench_measures_the_packaged_model_with_no_model_argument(installed, project):
    _, bin_dir = installed
    report = project / "bench.json"
    run(
        [
            bin_dir / "edge-bench",
            "--data",
            "data",
            "--threads",
            "1",
            "--runs",
            "5",
            "--warmup",
            "1",
            "--json",
            report,
        ],
        cwd=project,
    )
    rows = json.loads(report.read_text())["rows"]
    assert [(row["variant"], row["status"]) for row in rows] == [("int8", "ok")], rows
    assert "site-packages/leukedge/models/model_int8.tflite" in rows[0]["model"]
    assert rows[0]["n_images"] == 2 * len(CLASSES) and rows[0]["accuracy"] is not None


def test_only_leukedge_is_importable_from_the_venv(installed, tmp_path):
    _, bin_dir = installed
    python = bin_dir / "python"
    for name in ("train", "benchmarks", "convert", "edge_app", "models"):
        result = subprocess.run(
            [python, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True
        )
        assert result.returncode != 0 and f"No module named '{name}'" in result.stderr
    check = (
        "import sys, leukedge.edge_app.cli, leukedge.benchmarks.cli; "
        "assert 'tensorflow' not in sys.modules; print(leukedge.edge_app.cli.__file__)"
    )
    result = run([python, "-c", check], cwd=tmp_path)
    assert str(bin_dir.parent) in result.stdout
    # no checkout to look beside: the dataset default says how to get the data
    no_data = subprocess.run(
        [python, "-c", "from leukedge.train.dataset import default_data_dir; default_data_dir()"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert (
        no_data.returncode != 0
        and "mehradaria/leukemia" in no_data.stderr
        and "LEUKEDGE_DATA" in no_data.stderr
    )
