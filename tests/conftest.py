"""Shared fixtures: the real dataset from ../shared, and small real models trained once per session."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA_DIR = Path(os.environ.get("LEUKEDGE_DATA", SHARED / "data" / "all-leukemia"))
WEIGHTS_DIR = SHARED / "weights"
BIN = Path(sys.executable).parent


def run_cli(
    *args: str, check: bool = True, env: dict | None = None, timeout: float = 900, **kwargs
) -> subprocess.CompletedProcess:
    """Run one of the installed console scripts (edge-train, ...) as a user would."""
    command = [str(BIN / args[0]), *map(str, args[1:])]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def interruptible() -> None:
    """Popen preexec_fn: SIGINT back to its default in the child, as a terminal would leave it.

    A test suite started in the background by a non-interactive shell (`.ci/run &`, nohup)
    inherits SIGINT ignored, and Python then never raises KeyboardInterrupt in the CLI under test.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def assert_clean_error(result, *fragments):
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert DATA_DIR.is_dir(), f"the dataset is expected at {DATA_DIR} (set LEUKEDGE_DATA)"
    return DATA_DIR


@pytest.fixture(scope="session", autouse=True)
def offline_keras_home(tmp_path_factory) -> Path:
    """A Keras cache holding the shared ImageNet files, so weights='imagenet' works offline."""
    home = tmp_path_factory.mktemp("keras_home")
    (home / "models").mkdir()
    for weights in WEIGHTS_DIR.glob("*.h5"):
        (home / "models" / weights.name).symlink_to(weights)
    os.environ["KERAS_HOME"] = str(home)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return home


TINY_TRAIN_ARGS = (
    "--alpha",
    "0.35",
    "--image-size",
    "96",
    "--limit-per-class",
    "40",
    "--epochs",
    "8",
    "--fine-tune-epochs",
    "2",
    "--batch-size",
    "16",
    "--seed",
    "1",
)


# The tiny run has 15 validation images: enough for 90% conformal coverage and OOD retention
# (a 0.99 guarantee needs 99). Its 124 training images give a 60-dimensional OOD subspace.
TINY_TRUST_ARGS = ("--coverage", "0.9", "--ood-retention", "0.9")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir) -> Path:
    """A real edge-train run on 40 real images per class (alpha 0.35, 96 px, a few epochs)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    reuse = os.environ.get("LEUKEDGE_TEST_TINY_RUN")  # a finished run made with TINY_TRAIN_ARGS
    if reuse:  # saves minutes on a loaded machine; the run is copied, never changed
        return Path(shutil.copytree(reuse, out))
    run_cli("edge-train", "--data", data_dir, "--out", out, *TINY_TRAIN_ARGS)
    return out


@pytest.fixture()
def tiny_run_copy(tiny_run, tmp_path) -> Path:
    """A copy of the tiny run a test may change."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.fixture(scope="session")
def converted_dir(tmp_path_factory, tiny_run, data_dir) -> Path:
    """edge-convert output (all four variants, manifest, split) of the tiny run."""
    out = tmp_path_factory.mktemp("converted") / "tflite"
    run_cli(
        "edge-convert",
        tiny_run,
        "--out",
        out,
        "--calibration-samples",
        "64",
        "--data",
        data_dir,
        "--max-drop",
        "100",
        *TINY_TRUST_ARGS,
    )
    return out


# Tests that need a trained or converted model are slow (the session trains one the first time).
# `models` is test_edge_app_run.py's: converted_dir, resolved at run time (or $LEUKEDGE_TEST_CONVERTED).
SLOW_FIXTURES = {"tiny_run", "tiny_run_copy", "converted_dir", "models"}


def pytest_collection_modifyitems(config, items) -> None:
    """Mark every test that uses a trained/converted model `slow`, so `-m "not slow"` (the fast
    lane) never trains; tests that build wheels or run long jobs carry the marker themselves."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
