"""Which manifest vouches for a model file, and what the runtime does when none does.

A model runs as verified only when a manifest lists it by file name, with its sha256 and the
status "ok" (it passed its conversion's accuracy check): the manifest.json beside it, or the
packaged release's (`leukedge.models`) for a released model copied elsewhere. Everything else
(a failed conversion, an unlisted or renamed file, no manifest at all) runs only when the user
allows unverified models, and every stored result then says model_verified = 0.

A packaged model that does not match the packaged manifest is never run: the installation is
damaged, and reinstalling is the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from leukedge.edge_app import manifest as manifests
from leukedge.edge_app.manifest import Manifest, ManifestError
from leukedge.models import release_dir

REINSTALL = "pip install --force-reinstall leukedge[edge]"
ALLOW_FLAG = "--allow-unverified"


class VerificationError(ValueError):
    """The model may not run (or not without --allow-unverified); the message says why."""


@dataclass(frozen=True)
class Verdict:
    variant: str | None  # the variant name in the manifest that lists the file, if any
    verified: bool
    vouched_by: Path | None  # the manifest that vouched for the file (verified only)
    manifest: Manifest | None  # the manifest that lists the file (labels fallback), if any
    problem: str | None = None  # why it is not verified: refused unless unverified runs are allowed
    changed: bool = False  # listed, but the file's sha256 differs: a changed or damaged copy


def _is_packaged(path: Path) -> bool:
    try:
        return path.resolve().parent == release_dir().resolve()
    except OSError:
        return False


def _damaged_release(detail: str) -> VerificationError:
    return VerificationError(
        f"{detail}: the installed release is damaged; reinstall it with "
        f"`{REINSTALL}` (in a source checkout: `git checkout models/`)"
    )


def _listed_in(manifest: Manifest, source: Path, path: Path, sha256: str) -> Verdict | None:
    found = manifest.entry_for_file(path.name)
    if found is None:
        return None
    variant, entry = found
    if entry.sha256 != sha256:
        return Verdict(
            variant,
            False,
            None,
            manifest,
            f"{path} does not match the sha256 in {source}: the file was changed or damaged; "
            f"restore it, or pass {ALLOW_FLAG}",
            changed=True,
        )
    if not entry.ok:
        return Verdict(
            variant,
            False,
            None,
            manifest,
            f"{path} is listed in {source} with status {entry.status!r}, not 'ok' (it did not "
            f"pass its conversion's accuracy check): convert it again, or pass {ALLOW_FLAG} to "
            "run it anyway (every result is stored with model_verified = 0)",
        )
    return Verdict(variant, True, source, manifest)


def judge(path: str | Path, sha256: str) -> Verdict:
    """The verdict for the model file `path` with content hash `sha256`.

    Raises VerificationError for a damaged packaged release (never runs) and ManifestError for
    an unreadable manifest beside the model; other problems come back in `Verdict.problem`.
    """
    path = Path(path)
    beside = manifests.manifest_path(path.parent.resolve())
    packaged = _is_packaged(path)
    manifest = None
    try:
        manifest = manifests.find(path.parent)
    except ManifestError as error:
        if packaged:
            raise _damaged_release(str(error)) from None
        raise
    if manifest is not None:
        verdict = _listed_in(manifest, beside, path, sha256)
        if verdict is not None:
            if packaged and verdict.changed:
                raise _damaged_release(f"{path} does not match the sha256 in {beside}")
            return verdict
    if packaged:
        raise _damaged_release(
            f"{path} is not listed in {beside}" if manifest else f"{beside} is missing"
        )
    # A released model copied elsewhere under its own name: the packaged manifest vouches for it.
    release_manifest = manifests.manifest_path(release_dir().resolve())
    if release_manifest.is_file():
        try:
            released = manifests.read(release_manifest)
        except ManifestError as error:
            raise _damaged_release(str(error)) from None
        verdict = _listed_in(released, release_manifest, path, sha256)
        if verdict is not None and verdict.verified:
            return verdict
    where = str(beside) if manifest is not None else "a manifest.json beside it (there is none)"
    return Verdict(
        None,
        False,
        None,
        None,
        f"{path} is not listed in {where} nor in the packaged release: only models written by "
        f"edge-convert, under their own names, run as verified; pass {ALLOW_FLAG} to run it "
        "anyway (every result is stored with model_verified = 0)",
    )
