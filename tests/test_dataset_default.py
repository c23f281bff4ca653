"""Where the dataset is looked for by default: $LEUKEDGE_DATA, then ../shared/data/all-leukemia
beside a source checkout (recognised by its pyproject.toml, not by counting folders), then a clear
error that says how to get the data. The installed-wheel case runs for real in test_packaging.py."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from leukedge.edge_app import checkout
from leukedge.train.dataset import DatasetError, default_data_dir

REPO = Path(__file__).resolve().parents[1]


def test_leukedge_data_comes_first(monkeypatch, tmp_path):
    monkeypatch.setenv("LEUKEDGE_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_beside_the_checkout_when_running_from_one(monkeypatch):
    monkeypatch.delenv("LEUKEDGE_DATA", raising=False)
    assert checkout.checkout_root() == REPO
    expected = REPO.parent / "shared" / "data" / "all-leukemia"
    assert expected.is_dir()  # this checkout has ../shared beside it (see tests/conftest.py)
    assert default_data_dir() == expected


def load_copy(path: Path):
    spec = importlib.util.spec_from_file_location("checkout_copy", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["checkout_copy"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["checkout_copy"]
    return module


def test_an_installed_copy_is_not_a_checkout(tmp_path):
    # the same file where a wheel puts it, with a pyproject.toml of another project above it
    installed = tmp_path / "site-packages" / "leukedge" / "edge_app" / "checkout.py"
    installed.parent.mkdir(parents=True)
    shutil.copy(REPO / "edge_app" / "checkout.py", installed)
    assert load_copy(installed).checkout_root() is None
    other = tmp_path / "other" / "edge_app" / "checkout.py"
    other.parent.mkdir(parents=True)
    shutil.copy(REPO / "edge_app" / "checkout.py", other)
    (tmp_path / "other" / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    assert load_copy(other).checkout_root() is None
    (tmp_path / "other" / "pyproject.toml").write_text('[project]\nname = "leukedge"\n')
    assert load_copy(other).checkout_root() == tmp_path / "other"


def test_no_data_anywhere_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("LEUKEDGE_DATA", raising=False)
    monkeypatch.setattr(checkout, "checkout_root", lambda: None)  # as from an installed wheel
    with pytest.raises(DatasetError) as error:
        default_data_dir()
    message = str(error.value)
    assert "kaggle.com/datasets/mehradaria/leukemia" in message and "--data" in message
    assert "LEUKEDGE_DATA" in message
