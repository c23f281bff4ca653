"""Which Pythons LeukEdge installs on: pyproject's range, the Pi extra per OS release, setup-env."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
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


def _fake_python(folder: Path, version: str) -> Path:
    """A stand-in interpreter that answers as a real one would to what setup-env asks."""
    python = folder / f"python{version}"
    minor = ".".join(version.split(".")[:2])
    python.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = --version ] && echo "Python {version}" && exit 0\n'
        f'[ "$1" = -c ] && echo "{minor}" && exit 0\n'
        "exit 1\n"
    )
    python.chmod(0o755)
    return python


def _setup_env(script: Path, python: Path, venv: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LEUKEDGE_PYTHON": str(python), "LEUKEDGE_VENV": str(venv)}
    return subprocess.run([script], env=env, capture_output=True, text=True, timeout=60)


def test_setup_env_refuses_another_python_in_one_line(tmp_path):
    venv = tmp_path / "venv"
    result = _setup_env(REPO / "scripts" / "setup-env", _fake_python(tmp_path, "3.10.13"), venv)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "need Python 3.11, 3.12 or 3.13" in lines[0] and "found Python 3.10.13" in lines[0]
    assert "LEUKEDGE_PYTHON" in lines[0]
    assert not venv.exists()


@pytest.mark.parametrize("command", ["/bin/true", "no-such-python"])
def test_setup_env_refuses_what_is_not_a_python(tmp_path, command):
    result = _setup_env(REPO / "scripts" / "setup-env", Path(command), tmp_path / "venv")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and command in lines[0], result.stderr
    assert not (tmp_path / "venv").exists()


def test_setup_env_takes_its_range_from_pyproject(tmp_path):
    """pyproject's requires-python is the only statement of the range: narrow it, and
    setup-env refuses the Python it dropped."""
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "setup-env"
    shutil.copy2(REPO / "scripts" / "setup-env", script)
    pyproject = (REPO / "pyproject.toml").read_text()
    line = f'requires-python = "{PROJECT["requires-python"]}"'
    low, high = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", PROJECT["requires-python"]).groups()
    dropped, kept = f"3.{low}", [f"3.{m}" for m in range(int(low) + 1, int(high))]
    narrowed = pyproject.replace(line, f'requires-python = ">=3.{int(low) + 1},<3.{high}"')
    (tmp_path / "pyproject.toml").write_text(narrowed)
    result = _setup_env(script, _fake_python(tmp_path, f"{dropped}.7"), tmp_path / "venv")
    assert result.returncode == 1
    assert f"need Python {', '.join(kept[:-1])} or {kept[-1]}" in result.stderr, result.stderr
    assert f"found Python {dropped}.7" in result.stderr
    assert not (tmp_path / "venv").exists()
