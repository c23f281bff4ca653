"""manifest.json through its one owner, leukedge.edge_app.manifest: the released manifest reads and
writes back byte for byte, and bad manifests are refused with the file and the field named."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from conftest import run_cli
from leukedge.edge_app import manifest as manifests
from leukedge.edge_app.manifest import (
    FAST_INT8,
    INT8,
    SCHEMA_VERSION,
    ManifestError,
    VariantEntry,
)

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture()
def release_copy(tmp_path) -> Path:
    """A copy of the released int8 model and its manifest, to change."""
    folder = tmp_path / "release"
    folder.mkdir()
    for name in ("model_int8.tflite", "manifest.json"):
        shutil.copy(MODELS / name, folder / name)
    return folder


def edit(folder: Path, change) -> Path:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))
    return path


def test_the_released_manifest_reads_typed_and_writes_back_unchanged(tmp_path):
    manifest = manifests.read(MODELS)
    assert manifest.format_version == SCHEMA_VERSION
    assert list(manifest.variants) == [INT8, "fp16", FAST_INT8]
    int8 = manifest.variants[INT8]
    assert isinstance(int8, VariantEntry) and int8.ok and int8.input.dtype == "uint8"
    assert int8.verification.n == manifest.reference.n == 283
    fast = manifest.variants[FAST_INT8]
    assert fast.source_model.sha256 != manifest.source_model.sha256 and fast.alpha == 0.5
    assert manifest.entry_for_file("model_fast_int8.tflite") == (FAST_INT8, fast)
    assert manifest.entry_for_file("renamed.tflite") is None
    written = manifests.write(manifest, tmp_path)
    assert written.read_text() == (MODELS / "manifest.json").read_text()


def test_unknown_keys_and_trust_survive_a_round_trip(release_copy):
    trust = {"schema": 1, "temperature": 1.3}
    edit(
        release_copy,
        lambda d: (
            d["variants"]["int8"].update(trust=trust, newer_key=[1, 2]),
            d.update(newer_top={"a": 1}),
        ),
    )
    manifest = manifests.read(release_copy)
    assert manifest.variants[INT8].trust == trust
    assert manifest.variants[INT8].extra["newer_key"] == [1, 2]
    assert manifest.extra["newer_top"] == {"a": 1}
    manifests.write(manifest, release_copy)
    again = json.loads((release_copy / "manifest.json").read_text())
    assert again["variants"]["int8"]["trust"] == trust and again["newer_top"] == {"a": 1}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(format_version=2), "field format_version is 2"),
        (lambda d: d.pop("format_version"), "missing field format_version"),
        (lambda d: d.pop("labels"), "missing field labels"),
        (lambda d: d["variants"]["int8"].pop("sha256"), "missing field variants.int8.sha256"),
        (
            lambda d: d["variants"]["int8"]["input"].pop("dtype"),
            "missing field variants.int8.input.dtype",
        ),
        (
            lambda d: d["variants"]["fp16"]["verification"].pop("n"),
            "missing field variants.fp16.verification.n",
        ),
        (
            lambda d: d["variants"]["int8"].update(bytes="big"),
            "field variants.int8.bytes must be a number",
        ),
        (lambda d: d.update(variants=[]), "field variants must be an object"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_file_and_the_field(release_copy, change, field):
    path = edit(release_copy, change)
    with pytest.raises(ManifestError) as error:
        manifests.read(path)
    assert str(path) in str(error.value) and field in str(error.value)


def test_not_json_and_missing_files_name_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="manifest.json is not readable JSON"):
        manifests.read(tmp_path)
    with pytest.raises(ManifestError, match="does not exist"):
        manifests.read(tmp_path / "other" / "manifest.json")
    assert manifests.find(tmp_path / "other") is None


def test_write_is_atomic_and_never_writes_an_invalid_manifest(release_copy):
    manifest = manifests.read(release_copy)
    before = (release_copy / "manifest.json").read_text()
    manifest.variants[INT8].verification.n = "many"  # a bug in a writer
    with pytest.raises(ManifestError, match="variants.int8.verification.n must be a number"):
        manifests.write(manifest, release_copy)
    assert (release_copy / "manifest.json").read_text() == before
    manifest.variants[INT8].verification.n = 283
    manifest.variants[INT8].status = "failed: accuracy drop"
    manifests.write(manifest, release_copy)
    assert manifests.read(release_copy).variants[INT8].failed
    assert sorted(p.name for p in release_copy.iterdir()) == [
        "manifest.json",
        "model_int8.tflite",
    ]  # no temp
    assert stat.S_IMODE((release_copy / "manifest.json").stat().st_mode) == 0o644


def test_check_writable_refuses_a_read_only_manifest(release_copy):
    """Also as root (who may write anything): a manifest without write bits means "keep"."""
    (release_copy / "manifest.json").chmod(0o444)
    with pytest.raises(ManifestError, match="read-only"):
        manifests.check_writable(release_copy / "manifest.json")
    (release_copy / "manifest.json").chmod(0o644)
    manifests.check_writable(release_copy / "manifest.json")


def test_the_app_names_the_file_and_field_of_a_bad_manifest(release_copy, data_dir, tmp_path):
    path = edit(release_copy, lambda d: d.update(format_version=7))
    slides = tmp_path / "slides"  # a source that gives frames: the model is what is refused
    slides.mkdir()
    shutil.copy(next((data_dir / "Original" / "Benign").glob("*.jpg")), slides)
    result = run_cli(
        "edge-app",
        "run",
        "--model",
        release_copy / "model_int8.tflite",
        "--source",
        slides,
        "--headless",
        "--db",
        tmp_path / "r.sqlite",
        check=False,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(errors) == 1 and str(path) in errors[0] and "format_version is 7" in errors[0]
    assert not (tmp_path / "r.sqlite").exists()
