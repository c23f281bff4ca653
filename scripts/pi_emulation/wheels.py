"""aarch64 wheels for the Pi: the project's core dependencies plus its `pi` extra, per runtime.

pip runs on the host but resolves for the Pi (Bookworm: cp311, glibc 2.36; Trixie: cp313, glibc
2.41; aarch64) and installs into a
folder (--target); nothing is installed into any Python. Each runtime gets its own folder so
the runtime selection in edge_app.runtime sees exactly one LiteRT runtime.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare Python: pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement

from pi_emulation.userland import Release, SetupError, run_quiet


def platforms(release: Release) -> list[str]:
    """Every manylinux tag up to the release's glibc runs there (Debian 12: 2.36)."""
    newest = release.glibc_minor
    return [
        "manylinux2014_aarch64",
        *(f"manylinux_2_{minor}_aarch64" for minor in range(17, newest + 1)),
    ]


# The last tflite-runtime release (2023), and the Pythons it has wheels for.
TFLITE_RUNTIME = "tflite-runtime==2.14.0"
TFLITE_RUNTIME_PYTHONS = ("3.11",)
RUNTIME_NAMES = ("ai-edge-litert", "tflite-runtime")


def runtimes_for(python: str) -> tuple[str, ...]:
    """The LiteRT runtimes that install on this Python: the check's default set."""
    return tuple(
        name
        for name in RUNTIME_NAMES
        if name != "tflite-runtime" or python in TFLITE_RUNTIME_PYTHONS
    )


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


def for_python(requirements: list[str], python: str) -> list[str]:
    """The requirements that apply on this Python, markers dropped: pip on the host would
    otherwise judge `python_version` markers by the host's Python, not the Pi's."""
    chosen = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"python_version": python}):
            requirement.marker = None
            chosen.append(str(requirement))
    return chosen


def pi_requirements(pyproject: Path, runtime: str, python: str = "3.11") -> list[str]:
    """Core dependencies + the `pi` extra as the Pi's Python sees it, with the LiteRT runtime
    chosen by `runtime`.

    `runtime` is a runtime name (ai-edge-litert: the `pi` extra's own pin; tflite-runtime:
    2.14.0) or a full requirement such as `ai-edge-litert==2.2.0` to try another version.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    extra = for_python(project["optional-dependencies"]["pi"], python)
    name = requirement_name(runtime)
    if name not in RUNTIME_NAMES:
        raise SetupError(
            f"--runtime {runtime!r}: expected one of {', '.join(RUNTIME_NAMES)} (optionally with a version)"
        )
    if name not in runtimes_for(python):
        raise SetupError(
            f"--runtime {runtime!r}: tflite-runtime has no wheels for Python {python}; "
            "use ai-edge-litert, or --release bookworm"
        )
    if runtime == "tflite-runtime":
        runtime = TFLITE_RUNTIME
    core = for_python(project["dependencies"], python)
    keep = [r for r in core + extra if requirement_name(r) not in RUNTIME_NAMES]
    pinned = [r for r in extra if requirement_name(r) == name]
    chosen = pinned if runtime == name and pinned else [runtime]
    return sorted(set(keep)) + chosen


def site_dir(cache: Path, requirements: list[str]) -> Path:
    """Where these requirements live: one folder per distinct requirement set."""
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
    return cache / "site" / key


def install_wheels(
    cache: Path,
    host_python: str,
    requirements: list[str],
    platforms: list[str],
    python_version: str = "3.11",
) -> Path:
    """pip --target install of `requirements` for `platforms` (cached per requirement set)."""
    target = site_dir(cache, requirements)
    stamp = target / ".requirements"
    if stamp.is_file() and stamp.read_text() == "\n".join(requirements + platforms):
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    command = [
        host_python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-warn-conflicts",
        "--disable-pip-version-check",
        "--no-compile",
        "--target",
        str(staging),
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
    ]
    for platform in platforms:
        command += ["--platform", platform]
    # pip's cache stays in our folder too, so a second cold tree reuses the downloads.
    env = {**os.environ, "PIP_CACHE_DIR": str(cache / "pip-cache"), "PIP_NO_INPUT": "1"}
    print(f"installing wheels ({', '.join(requirements)}) for {platforms[-1]}")
    run_quiet(command + requirements, "pip install --target (wheels for the Pi)", env=env)
    (staging / ".requirements").write_text("\n".join(requirements + platforms))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def install_project(cache: Path, host_python: str, repo: Path) -> Path:
    """The project itself, built as a wheel and installed (no dependencies) into its own folder,
    as it would be on a Pi: the `leukedge` namespace and the released models, nothing from the
    checkout on the path. Pure Python, so the host's pip builds it for any platform."""
    target = cache / "project"
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    command = [
        host_python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-compile",
        "--disable-pip-version-check",
        "--target",
        str(staging),
        str(repo),
    ]
    env = {**os.environ, "PIP_CACHE_DIR": str(cache / "pip-cache"), "PIP_NO_INPUT": "1"}
    print("installing the project (wheel built from the checkout)")
    run_quiet(command, "pip install --target (the project)", env=env)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
