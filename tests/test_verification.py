"""Models must prove themselves: only an "ok" entry of the manifest beside a model, or of the packaged
release, vouches for it; everything else runs only with --allow-unverified, and every stored row
says so. Real released model files, copied and changed here."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import run_cli
from leukedge.edge_app import verification
from leukedge.edge_app.runtime import Classifier, ModelError

MODELS = Path(__file__).resolve().parents[1] / "models"
INT8_FILE = "model_int8.tflite"


@pytest.fixture()
def beside(tmp_path) -> Path:
    """The released int8 model with the released manifest beside it."""
    folder = tmp_path / "beside"
    folder.mkdir()
    for name in (INT8_FILE, "manifest.json"):
        shutil.copy(MODELS / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def slides(data_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    for name in ("Benign", "Pro"):
        for path in sorted((data_dir / "Original" / name).glob("*.jpg"))[:1]:
            shutil.copy(path, folder / path.name)
    return folder


def set_status(folder: Path, status: str) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data["variants"]["int8"]["status"] = status
    path.write_text(json.dumps(data, indent=2))


def test_an_ok_entry_of_the_manifest_beside_the_model_vouches(beside):
    classifier = Classifier(beside / INT8_FILE)
    assert classifier.verified and classifier.variant == "int8"
    assert classifier.vouched_by == (beside / "manifest.json").resolve()
    assert f"verified by {classifier.vouched_by}" in classifier.describe()


def test_the_packaged_release_vouches_for_the_released_model(tmp_path):
    packaged = Classifier(MODELS / INT8_FILE)
    assert packaged.verified and packaged.vouched_by == (MODELS / "manifest.json").resolve()
    alone = tmp_path / INT8_FILE  # a copy elsewhere, under its own name, without a manifest
    shutil.copy(MODELS / INT8_FILE, alone)
    copy = Classifier(alone)
    assert copy.verified and copy.variant == "int8" and copy.vouched_by == packaged.vouched_by


@pytest.mark.parametrize("status", ["failed: accuracy drop", "ok (not verified)"])
def test_a_model_whose_entry_is_not_ok_runs_only_when_allowed(beside, status):
    set_status(beside, status)
    with pytest.raises(ModelError) as error:
        Classifier(beside / INT8_FILE)
    assert repr(status) in str(error.value) and "--allow-unverified" in str(error.value)
    allowed = Classifier(beside / INT8_FILE, allow_unverified=True)
    assert not allowed.verified and allowed.variant == "int8" and allowed.vouched_by is None
    assert "NOT verified" in allowed.describe()


def test_renamed_and_unlisted_models_run_only_when_allowed(beside, tmp_path):
    renamed = beside / "my_model.tflite"
    shutil.copy(beside / INT8_FILE, renamed)
    lonely = tmp_path / "lonely" / "model.tflite"
    lonely.parent.mkdir()
    shutil.copy(MODELS / INT8_FILE, lonely)
    for path, where in ((renamed, str(beside / "manifest.json")), (lonely, "there is none")):
        with pytest.raises(ModelError) as error:
            Classifier(path)
        assert "is not listed in" in str(error.value) and where in str(error.value)
        assert "--allow-unverified" in str(error.value)
        allowed = Classifier(path, allow_unverified=True)
        assert not allowed.verified and allowed.variant is None
        assert allowed.labels == [
            "Benign",
            "Early Pre-B",
            "Pre-B",
            "Pro-B",
        ]  # from the model's metadata


def test_a_packaged_model_that_does_not_match_is_refused_with_how_to_reinstall(
    tmp_path, monkeypatch
):
    damaged = tmp_path / "site-packages" / "leukedge" / "models"
    shutil.copytree(MODELS, damaged)
    data = bytearray((damaged / INT8_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / INT8_FILE).write_bytes(bytes(data))
    monkeypatch.setattr(verification, "release_dir", lambda: damaged)
    for allow in (False, True):  # a damaged installation is never run
        with pytest.raises(ModelError) as error:
            Classifier(damaged / INT8_FILE, allow_unverified=allow)
        message = str(error.value)
        assert (
            "does not match the sha256" in message
            and "pip install --force-reinstall leukedge[edge]" in message
        )
    (damaged / "manifest.json").unlink()
    with pytest.raises(ModelError, match="manifest.json is missing.*force-reinstall"):
        Classifier(damaged / "model_fp16.tflite", allow_unverified=True)


def stored(db: Path) -> list[tuple]:
    connection = sqlite3.connect(db)
    rows = connection.execute("SELECT model_variant, model_verified FROM results").fetchall()
    connection.close()
    return rows


def test_the_app_names_the_vouching_manifest_and_marks_unverified_rows(beside, slides, tmp_path):
    db = tmp_path / "ok.sqlite"
    result = run_cli(
        "edge-app",
        "run",
        "--model",
        beside / INT8_FILE,
        "--source",
        slides,
        "--headless",
        "--db",
        db,
    )
    assert f"verified by {(beside / 'manifest.json').resolve()}" in result.stderr
    assert stored(db) == [("int8", 1)] * 2
    set_status(beside, "failed: accuracy drop")
    refused = run_cli(
        "edge-app",
        "run",
        "--model",
        beside / INT8_FILE,
        "--source",
        slides,
        "--headless",
        "--db",
        tmp_path / "refused.sqlite",
        check=False,
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "--allow-unverified" in refused.stderr and not (tmp_path / "refused.sqlite").exists()
    db = tmp_path / "allowed.sqlite"
    allowed = run_cli(
        "edge-app",
        "run",
        "--model",
        beside / INT8_FILE,
        "--source",
        slides,
        "--headless",
        "--db",
        db,
        "--allow-unverified",
    )
    assert "NOT verified" in allowed.stderr and "model_verified = 0" in allowed.stderr
    assert stored(db) == [("int8", 0)] * 2
