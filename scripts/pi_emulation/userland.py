"""Raspberry Pi OS Bookworm 64-bit userland (Debian 12 arm64, Python 3.11.2) in a folder we own.

No root filesystem is booted and no binfmt handler is registered: qemu-aarch64-static runs the
arm64 python3.11 binary directly, and QEMU_LD_PREFIX makes the emulated loader find its
libraries in the unpacked tree. apt works on its own lists, cache, state and sources list
inside that folder, so the host's apt state is never changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

QEMU = "qemu-aarch64-static"
QEMU_CPU = "cortex-a72"  # the Raspberry Pi 4's core
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCES = [
    "http://deb.debian.org/debian bookworm main",
    "http://deb.debian.org/debian bookworm-updates main",
    "http://deb.debian.org/debian-security bookworm-security main",
]
# What `python3.11` from Debian 12 needs to run the edge packages: the interpreter, its
# standard library, and the C libraries those link against (checked by import_check below).
# libstdc++6/libgcc-s1/libgomp1 serve the C++ wheels (LiteRT, OpenCV, numpy's OpenBLAS).
PACKAGES = [
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "libgcc-s1",
    "libstdc++6",
    "libgomp1",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libssl3",
    "libbz2-1.0",
    "liblzma5",
    "libsqlite3-0",
    "libuuid1",
    "libcrypt1",
    "libdb5.3",
    "libncursesw6",
    "libtinfo6",
    "libreadline8",
]
PYTHON = "usr/bin/python3.11"
# Standard modules edge_app, benchmarks and their wheels import; a missing C library shows here.
STDLIB_PROBE = (
    "import platform, sqlite3, hashlib, ssl, ctypes, lzma, bz2, zlib, json, uuid, "
    "decimal, multiprocessing, signal; print(platform.machine(), platform.python_version())"
)


class SetupError(RuntimeError):
    """A prerequisite is missing or a download failed; the message says what to do."""


def run_quiet(command: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a setup command; on failure raise SetupError with the tail of its output."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    except FileNotFoundError as error:
        raise SetupError(f"{what}: {error}") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise SetupError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result


def ensure_qemu(install: bool) -> str:
    """Path of qemu-aarch64-static, installing Debian's qemu-user-static if allowed and needed."""
    found = shutil.which(QEMU)
    if found:
        return found
    if not install:
        raise SetupError(
            f"{QEMU} not found: apt-get install qemu-user-static (or drop --no-install-qemu)"
        )
    if os.geteuid() != 0:
        raise SetupError(
            f"{QEMU} not found and not root: run `sudo apt-get install qemu-user-static`"
        )
    print("installing qemu-user-static with apt (the one change this check makes to the host)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install_cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "qemu-user-static"]
    if subprocess.run(install_cmd, capture_output=True, env=env).returncode != 0:
        # A fresh machine may have no package lists yet.
        run_quiet(["apt-get", "update", "-q"], "apt-get update", env=env)
        run_quiet(install_cmd, "apt-get install qemu-user-static", env=env)
    found = shutil.which(QEMU)
    if not found:
        raise SetupError(f"qemu-user-static installed but {QEMU} is not on PATH")
    return found


def apt_options(apt_dir: Path) -> list[str]:
    """apt-get options that point every piece of state at apt_dir and select arm64 only."""
    return [
        "-oAPT::Architecture=arm64",
        "-oAPT::Architectures=arm64",
        f"-oDir::State={apt_dir / 'state'}",
        f"-oDir::State::Lists={apt_dir / 'lists'}",
        f"-oDir::State::status={apt_dir / 'state' / 'status'}",  # empty: nothing "installed"
        f"-oDir::Cache={apt_dir / 'cache'}",
        f"-oDir::Etc::SourceList={apt_dir / 'sources.list'}",
        f"-oDir::Etc::SourceParts={apt_dir / 'sources.list.d'}",  # empty: ignore the host's
        f"-oDir::Etc::Preferences={apt_dir / 'preferences'}",
        f"-oDir::Etc::PreferencesParts={apt_dir / 'preferences.d'}",
        "-oAPT::Sandbox::User=root",  # the _apt user may not be able to write into our folder
        "-q",
    ]


def prepare_apt_dir(apt_dir: Path) -> None:
    for sub in (
        "state",
        "lists/partial",
        "cache/archives/partial",
        "sources.list.d",
        "preferences.d",
    ):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "state" / "status").touch()
    if not Path(DEBIAN_KEYRING).is_file():
        raise SetupError(f"{DEBIAN_KEYRING} missing: apt-get install debian-archive-keyring")
    (apt_dir / "sources.list").write_text(
        "".join(f"deb [arch=arm64 signed-by={DEBIAN_KEYRING}] {source}\n" for source in SOURCES)
    )


def build_tree(cache: Path) -> Path:
    """The unpacked arm64 userland (cached: rebuilt only when PACKAGES change)."""
    tree = cache / "rootfs"
    stamp = tree / ".packages"
    wanted = "\n".join(PACKAGES)
    if stamp.is_file() and stamp.read_text() == wanted:
        return tree
    apt_dir, debs = cache / "apt", cache / "debs"
    prepare_apt_dir(apt_dir)
    options = apt_options(apt_dir)
    print("downloading Debian 12 arm64 packages for Python 3.11")
    # Error-Mode=any: by default apt-get update exits 0 even when no list could be fetched.
    run_quiet(
        ["apt-get", *options, "-oAPT::Update::Error-Mode=any", "update"],
        "apt-get update (Debian 12 arm64 package lists from deb.debian.org: network or proxy?)",
    )
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    run_quiet(
        ["apt-get", *options, "download", *PACKAGES], "apt-get download (arm64 .debs)", cwd=debs
    )
    staging = cache / "rootfs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        run_quiet(["dpkg", "-x", str(deb), str(staging)], f"dpkg -x {deb.name}")
    (staging / ".packages").write_text(wanted)
    shutil.rmtree(tree, ignore_errors=True)
    staging.rename(tree)  # a half-unpacked tree is never mistaken for a finished one
    return tree


def emulated_env(tree: Path, pythonpath: list[Path], base: dict[str, str]) -> dict[str, str]:
    """Environment for qemu-aarch64-static running the tree's python on our wheels and repo."""
    return {
        **base,
        "QEMU_LD_PREFIX": str(tree),
        "QEMU_CPU": QEMU_CPU,
        "PYTHONPATH": os.pathsep.join(map(str, pythonpath)),
    }


def python_command(qemu: str, tree: Path) -> list[str]:
    return [qemu, str(tree / PYTHON)]


def exec_wrapper(cache: Path, qemu: str, tree: Path) -> Path:
    """A host script that starts the emulated python, for code that runs `sys.executable`.

    qemu-user emulates one process: when the emulated python exec()s its own binary (edge-bench
    runs each model in a worker process), the host kernel refuses the arm64 file (no binfmt
    handler, deliberately). The checked commands set sys.executable to this script, which goes
    back through qemu with the inherited QEMU_* environment; on a real Pi the binary runs as is.
    """
    wrapper = cache / "bin" / "python3.11-emulated"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(f'#!/bin/sh\nexec "{qemu}" "{tree / PYTHON}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def import_check(qemu: str, tree: Path, base_env: dict[str, str]) -> str:
    """'aarch64 3.11.2' when the emulated interpreter and its C libraries work."""
    result = run_quiet(
        [*python_command(qemu, tree), "-c", STDLIB_PROBE],
        "emulated python3.11 self-test",
        env=emulated_env(tree, [], base_env),
    )
    answer = result.stdout.strip()
    if not answer.startswith("aarch64 3.11"):
        raise SetupError(f"emulated python3.11 reported {answer!r}, expected aarch64 3.11.x")
    return answer
