"""Raspberry Pi OS 64-bit userland (Bookworm: Debian 12 arm64, Python 3.11; Trixie: Debian 13
arm64, Python 3.13) in a folder we own.

No root filesystem is booted and no binfmt handler is registered: qemu-aarch64-static runs the
arm64 python binary directly, and QEMU_LD_PREFIX makes the emulated loader find its
libraries in the unpacked tree. apt works on its own lists, cache, state and sources list
inside that folder, so the host's apt state is never changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-aarch64-static"
QEMU_CPU = "cortex-a72"  # the Raspberry Pi 4's core
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# What Debian's python3 needs to run the edge packages: the interpreter, its standard library,
# and the C libraries those link against (checked by import_check below). libstdc++6, libgcc-s1
# and libgomp1 serve the C++ wheels (LiteRT, OpenCV, numpy's OpenBLAS).
COMMON_PACKAGES = [
    "libc6",
    "libgcc-s1",
    "libstdc++6",
    "libgomp1",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libbz2-1.0",
    "liblzma5",
    "libsqlite3-0",
    "libuuid1",
    "libcrypt1",
    "libncursesw6",
    "libtinfo6",
]
# Standard modules edge_app, benchmarks and their wheels import; a missing C library shows here.
STDLIB_PROBE = (
    "import platform, sqlite3, hashlib, ssl, ctypes, lzma, bz2, zlib, json, uuid, "
    "decimal, multiprocessing, signal; print(platform.machine(), platform.python_version())"
)


@dataclass(frozen=True)
class Release:
    """One Raspberry Pi OS release, as its Debian arm64 userland and Python."""

    name: str
    debian: str  # "Debian 12"
    python: str  # "3.11"
    glibc_minor: int  # manylinux_2_N wheels run there up to this N
    packages: tuple[str, ...]  # besides COMMON_PACKAGES

    @property
    def sources(self) -> list[str]:
        return [
            f"http://deb.debian.org/debian {self.name} main",
            f"http://deb.debian.org/debian {self.name}-updates main",
            f"http://deb.debian.org/debian-security {self.name}-security main",
        ]

    @property
    def interpreter(self) -> str:
        return f"usr/bin/python{self.python}"

    def all_packages(self) -> list[str]:
        return [
            f"python{self.python}-minimal",
            f"libpython{self.python}-minimal",
            f"libpython{self.python}-stdlib",
            *COMMON_PACKAGES,
            *self.packages,
        ]


RELEASES = {
    # Raspberry Pi OS Bookworm 64-bit: Debian 12, Python 3.11.2, glibc 2.36.
    "bookworm": Release(
        "bookworm", "Debian 12", "3.11", 36, ("libssl3", "libdb5.3", "libreadline8")
    ),
    # Raspberry Pi OS Trixie 64-bit: Debian 13, Python 3.13, glibc 2.41. Debian 13 renamed some
    # libraries for its 64-bit time_t move (t64) and links Python's decimal to libmpdec.
    "trixie": Release(
        "trixie",
        "Debian 13",
        "3.13",
        41,
        ("libssl3t64", "libzstd1", "libreadline8t64", "libmpdec4"),
    ),
}


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


def prepare_apt_dir(apt_dir: Path, release: Release) -> None:
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
        "".join(
            f"deb [arch=arm64 signed-by={DEBIAN_KEYRING}] {source}\n" for source in release.sources
        )
    )


def release_dir(cache: Path, release: Release, name: str) -> Path:
    """Bookworm keeps the folder names of the check's first version, so an existing cache is
    reused or rebuilt in place rather than left beside a new one."""
    return cache / (name if release.name == "bookworm" else f"{name}-{release.name}")


def merge_usr(tree: Path) -> None:
    """Debian 13's packages ship only under /usr; /lib -> usr/lib and friends come from
    base-files, which we do not unpack. qemu looks for the loader at /lib/ld-linux-aarch64.so.1."""
    for name in ("bin", "lib", "sbin"):
        if not (tree / name).exists() and (tree / "usr" / name).is_dir():
            (tree / name).symlink_to(Path("usr") / name)


def build_tree(cache: Path, release: Release) -> Path:
    """The unpacked arm64 userland (cached: rebuilt only when its packages change)."""
    tree = release_dir(cache, release, "rootfs")
    stamp = tree / ".packages"
    packages = release.all_packages()
    wanted = "\n".join(packages)
    if stamp.is_file() and stamp.read_text() == wanted:
        return tree
    apt_dir, debs = release_dir(cache, release, "apt"), release_dir(cache, release, "debs")
    prepare_apt_dir(apt_dir, release)
    options = apt_options(apt_dir)
    print(f"downloading {release.debian} arm64 packages for Python {release.python}")
    # Error-Mode=any: by default apt-get update exits 0 even when no list could be fetched.
    run_quiet(
        ["apt-get", *options, "-oAPT::Update::Error-Mode=any", "update"],
        f"apt-get update ({release.debian} arm64 package lists from deb.debian.org: network or proxy?)",
    )
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    run_quiet(
        ["apt-get", *options, "download", *packages], "apt-get download (arm64 .debs)", cwd=debs
    )
    staging = tree.with_name(tree.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        run_quiet(["dpkg", "-x", str(deb), str(staging)], f"dpkg -x {deb.name}")
    merge_usr(staging)
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


def python_command(qemu: str, tree: Path, release: Release) -> list[str]:
    return [qemu, str(tree / release.interpreter)]


def exec_wrapper(cache: Path, qemu: str, tree: Path, release: Release) -> Path:
    """A host script that starts the emulated python, for code that runs `sys.executable`.

    qemu-user emulates one process: when the emulated python exec()s its own binary (edge-bench
    runs each model in a worker process), the host kernel refuses the arm64 file (no binfmt
    handler, deliberately). The checked commands set sys.executable to this script, which goes
    back through qemu with the inherited QEMU_* environment; on a real Pi the binary runs as is.
    """
    wrapper = cache / "bin" / f"python{release.python}-emulated"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(f'#!/bin/sh\nexec "{qemu}" "{tree / release.interpreter}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def import_check(qemu: str, tree: Path, release: Release, base_env: dict[str, str]) -> str:
    """'aarch64 3.11.2' when the emulated interpreter and its C libraries work."""
    result = run_quiet(
        [*python_command(qemu, tree, release), "-c", STDLIB_PROBE],
        f"emulated python{release.python} self-test",
        env=emulated_env(tree, [], base_env),
    )
    answer = result.stdout.strip()
    if not answer.startswith(f"aarch64 {release.python}."):
        raise SetupError(
            f"emulated python{release.python} reported {answer!r}, expected aarch64 {release.python}.x"
        )
    return answer
