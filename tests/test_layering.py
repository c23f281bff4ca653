"""The layering of docs/architecture.md, enforced: `edge_app` (the TensorFlow-free runtime core at
the bottom) imports no other stage, and no module of `edge_app` or `benchmarks` imports TensorFlow
or Keras when it is imported (the Pi has neither)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("train", "convert", "benchmarks", "edge_app")
HEAVY = ("tensorflow", "keras")


def imported_names(path: Path, package: str) -> set[str]:
    """Every module a file imports, anywhere in it (inside functions too), as absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    parts = package.split(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = parts[: len(parts) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def package_of(path: Path, root: Path, name: str) -> str:
    relative = path.relative_to(root).with_suffix("")
    parts = [name, *relative.parts[:-1]]
    return ".".join(parts)


def test_the_import_parser_sees_absolute_relative_and_function_level_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nfrom . import sibling\nfrom ..other import thing\n"
        "def f():\n    from leukedge.train import dataset\n"
    )
    names = imported_names(sample, "leukedge.edge_app.sources")
    assert {
        "os",
        "leukedge.edge_app.sources.sibling",
        "leukedge.edge_app.other.thing",
        "leukedge.train.dataset",
    } <= names


def test_edge_app_imports_no_other_stage():
    root = REPO / "edge_app"
    files = sorted(root.rglob("*.py"))
    assert len(files) > 15
    forbidden = (
        [f"leukedge.{stage}" for stage in STAGES if stage != "edge_app"]
        + [stage for stage in STAGES if stage != "edge_app"]
        + list(HEAVY)
    )
    offenders = []
    for path in files:
        for name in imported_names(path, package_of(path, root, "leukedge.edge_app")):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert offenders == []


IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
heavy = {heavy!r}
found, culprits = [], []
for package in {packages!r}:
    module = importlib.import_module(package)
    found.append(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        importlib.import_module(info.name)
        found.append(info.name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
        if loaded:
            culprits.append([info.name, loaded[:3]])
            break
print(json.dumps({{"modules": found, "culprits": culprits}}))
"""


def import_every_module(*packages: str) -> dict:
    """Import each module of `packages` in a fresh interpreter; the first that loads TF is a culprit."""
    code = IMPORT_EVERY_MODULE.format(heavy=HEAVY, packages=packages)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO.parent
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_no_module_of_edge_app_or_benchmarks_imports_tensorflow_at_import_time():
    report = import_every_module("leukedge.edge_app", "leukedge.benchmarks")
    assert report["culprits"] == []
    expected = {
        f"leukedge.edge_app.{p.stem}"
        for p in (REPO / "edge_app").glob("*.py")
        if p.stem != "__init__"
    }
    expected |= {
        f"leukedge.benchmarks.{p.stem}"
        for p in (REPO / "benchmarks").glob("*.py")
        if p.stem != "__init__"
    }
    assert expected <= set(report["modules"])  # every module was really imported


@pytest.mark.slow
def test_the_import_check_catches_a_stage_that_imports_tensorflow():
    """The same check pointed at convert, which does import TensorFlow (slow: it loads TF)."""
    culprits = import_every_module("leukedge.convert")["culprits"]
    assert len(culprits) == 1 and culprits[0][0].startswith("leukedge.convert.")
    assert any(name.split(".")[0] in HEAVY for name in culprits[0][1])


def test_the_shared_dataset_layer_of_train_imports_no_tensorflow():
    """train.dataset, train.twins and train.metrics serve the TF-free benchmarks on the Pi."""
    code = (
        "import sys, leukedge.train.dataset, leukedge.train.twins, leukedge.train.metrics; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
