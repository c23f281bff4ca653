"""edge-bench building blocks and the bad inputs that need no model: real data, real CLI."""

from __future__ import annotations

import csv
import hashlib
import statistics
import subprocess
import sys

import click
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import run_cli
from leukedge.benchmarks.cli import main
from leukedge.benchmarks.evaluation import (
    LabelMismatchError,
    agreement,
    label_indices,
    resolve_eval_set,
)
from leukedge.benchmarks.measure import summarize
from leukedge.benchmarks.models import ModelDiscoveryError, discover_models
from leukedge.benchmarks.options import ThreadCounts
from leukedge.train.dataset import DatasetError


def test_thread_counts_parse_and_reject():
    parse = ThreadCounts().convert
    assert parse("1,2,4", None, None) == (1, 2, 4)
    assert parse(" 2 , 2,1", None, None) == (2, 1)
    assert parse("64", None, None) == (64,)
    for bad in ("1,x", "0", "", "1;2", "-1", "1.5", "65", "1,100000"):
        with pytest.raises(
            click.BadParameter, match="comma-separated list of thread counts from 1"
        ):
            parse(bad, None, None)


def test_summarize_matches_statistics():
    times = [3.0, 1.0, 2.0, 10.0, 4.0]
    summary = summarize(times)
    assert summary["mean"] == pytest.approx(statistics.mean(times))
    assert summary["std"] == pytest.approx(statistics.stdev(times))
    assert summary["min"] == 1.0
    assert summary["p50"] == 3.0
    assert summary["p90"] == pytest.approx(np.percentile(times, 90))
    assert summary["min"] <= summary["p50"] <= summary["p90"] <= summary["p99"] <= max(times)


def test_discovery_errors_name_the_path(tmp_path):
    with pytest.raises(ModelDiscoveryError, match="does not exist"):
        discover_models([tmp_path / "missing.tflite"])
    with pytest.raises(ModelDiscoveryError, match="no manifest.json and no .tflite"):
        discover_models([tmp_path])
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelDiscoveryError, match="not readable JSON"):
        discover_models([tmp_path])


def test_files_become_entries_with_variant_names(tmp_path):
    (tmp_path / "model_int8.tflite").write_bytes(b"x")
    (tmp_path / "model.keras").write_bytes(b"x")
    entries = discover_models([tmp_path, tmp_path / "model_int8.tflite"])  # duplicate dropped
    assert [(e.variant, e.kind) for e in entries] == [("keras", "keras"), ("int8", "tflite")]


def test_models_with_the_same_folder_and_file_name_get_names_that_tell_them_apart(tmp_path):
    # Two edge-convert runs both hold tflite/model_int8.tflite: the tables must not show one
    # name twice, while a model that clashes with nothing keeps its short name.
    for run in ("student-a", "student-b"):
        (tmp_path / run / "tflite").mkdir(parents=True)
        (tmp_path / run / "tflite" / "model_int8.tflite").write_bytes(b"x")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model_int8.tflite").write_bytes(b"x")
    entries = discover_models(
        [
            tmp_path / "models" / "model_int8.tflite",
            tmp_path / "student-a" / "tflite" / "model_int8.tflite",
            tmp_path / "student-b" / "tflite" / "model_int8.tflite",
        ]
    )
    assert [e.name for e in entries] == [
        "models/model_int8.tflite",
        "student-a/tflite/model_int8.tflite",
        "student-b/tflite/model_int8.tflite",
    ]


def test_eval_set_from_a_data_folder(data_dir):
    eval_set = resolve_eval_set(data_dir, limit_per_class=2)
    assert eval_set.labels == ["Benign", "Early Pre-B", "Pre-B", "Pro-B"]
    assert len(eval_set.samples) == 8
    assert all(path.is_file() for path in eval_set.paths())
    indices = label_indices(eval_set, ["Pro-B", "Pre-B", "Early Pre-B", "Benign"])
    assert indices.tolist() == [3, 3, 2, 2, 1, 1, 0, 0]
    with pytest.raises(LabelMismatchError, match="'Pro-B'.*does not know"):
        label_indices(eval_set, ["Benign", "Early Pre-B", "Pre-B"])


def test_eval_set_errors(tmp_path, data_dir):
    with pytest.raises(DatasetError, match="no split.csv beside"):
        resolve_eval_set(None, [])
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_eval_set(tmp_path / "nothing.csv")
    (tmp_path / "empty" / "Benign").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        resolve_eval_set(tmp_path / "empty")
    split = tmp_path / "split.csv"
    image = next((data_dir / "Original" / "Benign").iterdir())
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    with open(split, "w", newline="") as handle:
        csv.writer(handle).writerows(
            [
                ("path", "sha256", "label", "split"),
                (image.relative_to(data_dir).as_posix(), digest, "Benign", "train"),
            ]
        )
    with pytest.raises(DatasetError, match="lists no 'test' images"):
        resolve_eval_set(split, data_root=data_dir)
    assert len(resolve_eval_set(split, data_root=data_dir, split="train").samples) == 1
    with pytest.raises(DatasetError, match="missing under"):
        resolve_eval_set(split, data_root=tmp_path, split="train")
    # A file whose content is not the one the split recorded: the figures would not be the split's.
    changed = tmp_path / "changed.csv"
    changed.write_text(split.read_text().replace(digest, "0" * 64))
    with pytest.raises(DatasetError, match="1 image.s. under .* differ from the sha256"):
        resolve_eval_set(changed, data_root=data_dir, split="train")
    # A short row, and two rows of one content, are named as such.
    short = tmp_path / "short.csv"
    short.write_text("path,sha256,label,split\nOriginal/Benign/x.jpg,abc,Benign\n")
    with pytest.raises(DatasetError, match="line 2: expected the 4 fields"):
        resolve_eval_set(short, data_root=data_dir)
    twice = tmp_path / "twice.csv"
    row = f"{image.relative_to(data_dir).as_posix()},{digest},Benign"
    twice.write_text(f"path,sha256,label,split\n{row},test\n{row.replace('.jpg', '-b.jpg')},val\n")
    with pytest.raises(DatasetError, match="gives 2 rows the same sha256"):
        resolve_eval_set(twice, data_root=data_dir)


def test_agreement():
    assert agreement([0, 1, 2, 3], [0, 1, 2, 0]) == 0.75
    with pytest.raises(ValueError):
        agreement([0, 1], [0])


def test_group_runs_the_default_command_unless_a_subcommand_is_named():
    runner = CliRunner()
    result = runner.invoke(main, ["--threads", "1,zero"])
    assert result.exit_code == 2 and "'1,zero' is not a comma-separated list" in result.output
    assert "fidelity" in runner.invoke(main, ["--help"]).output
    assert (
        "Compare edge-bench's mean invoke latency"
        in runner.invoke(main, ["fidelity", "--help"]).output
    )
    assert "--min-accuracy" in runner.invoke(main, ["run", "--help"]).output
    assert runner.invoke(main, ["robustness", "--help"]).exit_code == 0


def _one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr


@pytest.mark.slow
def test_bad_inputs_without_a_model_give_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(
        run_cli("edge-bench", tmp_path / "empty", check=False), "no manifest.json and no .tflite"
    )
    _one_line_error(run_cli("edge-bench", tmp_path / "none.tflite", check=False), "does not exist")
    model = tmp_path / "m.tflite"
    model.write_bytes(b"not a model")
    (tmp_path / "nolabels" / "Benign").mkdir(parents=True)
    (tmp_path / "nolabels" / "notes.txt").write_text("no class folders with images here")
    _one_line_error(
        run_cli("edge-bench", model, "--data", tmp_path / "nolabels", check=False), "no images"
    )
    _one_line_error(
        run_cli("edge-bench", model, "--threads", "two", check=False),
        "'two' is not a comma-separated",
    )
    _one_line_error(
        run_cli("edge-bench", model, "--json", tmp_path / "no" / "out.json", check=False),
        "does not exist: create it first",
    )
    (tmp_path / "afile").write_text("a file, not a folder")
    _one_line_error(
        run_cli("edge-bench", model, "--csv", "/proc/bench.csv", check=False), "cannot write"
    )
    _one_line_error(
        run_cli("edge-bench", "trust", model, "--plots", tmp_path / "afile" / "p", check=False),
        "afile is a file, not a folder",
    )
    earlier = tmp_path / "earlier-run"
    earlier.mkdir()
    (earlier / "results.sqlite").write_bytes(b"")
    _one_line_error(  # its rows would be counted as this simulation's
        run_cli("edge-bench", "unattended", "--work-dir", earlier, check=False), "is not empty"
    )


def test_benchmarks_never_import_tensorflow_at_module_level():
    code = (
        "import sys, leukedge.benchmarks.cli, leukedge.benchmarks.runner, leukedge.benchmarks.worker, "
        "leukedge.benchmarks.report, leukedge.benchmarks.fidelity, leukedge.benchmarks.evaluation; "
        "assert not any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules), 'TF imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
