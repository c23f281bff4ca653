"""The run folder: refuse to clobber, write into a staging folder, publish only when complete."""

from __future__ import annotations

import shutil
from pathlib import Path

from leukedge.edge_app.files import cannot_write_in


class RunDirError(ValueError):
    """The output folder cannot be used."""


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise RunDirError(f"--out {out_dir} is a file, not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise RunDirError(
            f"--out {out_dir} is not empty: choose another folder or pass --overwrite"
        )
    # The run is staged beside out_dir: a folder that cannot be written fails now, not after
    # the training.
    reason = cannot_write_in(out_dir.parent)
    if reason:
        raise RunDirError(f"--out {out_dir}: cannot write in {out_dir.parent} ({reason})")


def staging_dir(out_dir: Path) -> Path:
    """A sibling folder the run writes into; renamed to out_dir only when everything is there."""
    staging = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
