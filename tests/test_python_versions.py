"""Which Pythons LeukEdge installs on: pyproject's range, the Pi extra per OS release, setup-env."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
sys.path.insert(0, str(REPO / "scripts"))

from pi_emulation.wheels import for_python  # noqa: E402


def pi_requirements(python_version: str) -> dict[str, SpecifierSet]:
    """The `pi` extra as pip sees it on a Pi with this Python: one specifier per package."""
    chosen: dict[str, SpecifierSet] = {}
    for line in for_python(PROJECT["optional-dependencies"]["pi"], python_version):
        requirement = Requirement(line)
        assert requirement.name not in chosen, f"{requirement.name} twice for {python_version}"
        chosen[requirement.name] = requirement.specifier
    return chosen


def test_python_3_11_to_3_13_are_supported():
    supported = SpecifierSet(PROJECT["requires-python"])
    assert all(v in supported for v in ("3.11.2", "3.12.1", "3.13.0"))
    assert not any(v in supported for v in ("3.10.13", "3.14.0"))


def test_the_pi_extra_follows_the_apt_numpy_of_each_raspberry_pi_os():
    bookworm, trixie = pi_requirements("3.11"), pi_requirements("3.13")
    assert set(bookworm) == set(trixie)
    # Bookworm's picamera2 stack is built against numpy 1.24: numpy 2 would break it.
    assert "1.26.4" in bookworm["numpy"] and "2.0.0" not in bookworm["numpy"]
    assert "4.12.0.88" not in bookworm["opencv-python-headless"]
    # Trixie's is built against numpy 2, and numpy 1 has no wheels for Python 3.13.
    assert "2.2.4" in trixie["numpy"] and "1.26.4" not in trixie["numpy"]
    # LiteRT 2.2+ crashes on aarch64 under emulation, whatever the Python.
    assert all("2.1.6" in r["ai-edge-litert"] for r in (bookworm, trixie))
    assert not any("2.2.0" in r["ai-edge-litert"] for r in (bookworm, trixie))


def test_setup_env_refuses_another_python_in_one_line(tmp_path):
    python = tmp_path / "python3.10"
    python.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && echo "Python 3.10.13" && exit 0\nexit 1\n'
    )
    python.chmod(0o755)
    venv = tmp_path / "venv"
    env = {**os.environ, "LEUKEDGE_PYTHON": str(python), "LEUKEDGE_VENV": str(venv)}
    result = subprocess.run(
        [REPO / "scripts" / "setup-env"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "need Python 3.11, 3.12 or 3.13" in lines[0] and "found Python 3.10.13" in lines[0]
    assert "LEUKEDGE_PYTHON" in lines[0]
    assert not venv.exists()
