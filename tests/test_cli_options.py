"""Malformed options are refused by every CLI before any work, with click's one-line usage error
(exit 2, no traceback). `float()` takes "nan" and "inf", and click's FloatRange lets them through
(every comparison with nan is false), so a nan limit would silently switch a check off."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from conftest import REPO, run_cli
from leukedge.edge_app.clitools import FiniteFloat


def test_finite_float_keeps_ranges_and_refuses_nan_and_inf():
    @click.command()
    @click.option("--x", type=FiniteFloat(0, 1))
    @click.option("--y", type=FiniteFloat())
    def command(x, y):
        click.echo(f"{x} {y}")

    from click.testing import CliRunner

    runner = CliRunner()
    assert runner.invoke(command, ["--x", "0.5", "--y", "-3e2"]).output == "0.5 -300.0\n"
    for args in (["--x", "nan"], ["--y", "inf"], ["--y", "-inf"], ["--x", "NaN"]):
        result = runner.invoke(command, args)
        assert result.exit_code == 2 and "is not a finite number" in result.output, args
    out_of_range = runner.invoke(command, ["--x", "1.5"])
    assert out_of_range.exit_code == 2 and "0<=x<=1" in out_of_range.output
    # --help states a range only where there is one (click wrote "x<=None" for no bounds).
    help_text = runner.invoke(command, ["--help"]).output
    assert "0<=x<=1" in help_text and "None" not in help_text


@pytest.mark.parametrize(
    "command",
    [
        ("edge-app", "run", "--source", "frames", "--min-confidence", "nan"),
        ("edge-app", "run", "--source", "frames", "--focus-min", "nan"),
        ("edge-app", "run", "--source", "frames", "--save-dir", "f", "--max-disk-mb", "inf"),
        ("edge-train", "--out", "run", "--dropout", "nan"),
        ("edge-train", "--out", "run", "--distill-weight", "nan"),
        ("edge-convert", "run", "--out", "tflite", "--max-drop", "inf"),
        ("edge-convert", "run", "--out", "tflite", "--ood-retention", "nan"),
        ("edge-bench", "run", "models", "--min-accuracy", "nan"),
        ("edge-bench", "samples", "models", "--foreign-rate", "nan"),
        ("edge-bench", "unattended", "--save-every", "inf"),
    ],
    ids=lambda command: " ".join(command[:2]) + " " + command[-2],
)
def test_every_cli_refuses_a_non_finite_number(command):
    result = run_cli(*command, check=False, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"Invalid value for '{command[-2]}'" in result.stderr
    assert "is not a finite number" in result.stderr


@pytest.mark.parametrize(
    ("script", "options", "message"),
    [
        ("choose_ood_retention.py", ("--max-wrong", "nan"), "is not a finite number"),
        ("choose_ood_retention.py", ("--retentions", "0.97,nan"), "give shares between 0 and 1"),
        ("choose_ood_retention.py", ("--retentions", "0.97,1.5"), "give shares between 0 and 1"),
        ("rebuild_keras_from_tflite.py", ("--out", "run", "--alpha", "inf"), "not a finite"),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value),
)
def test_scripts_refuse_non_finite_and_out_of_range_numbers(script, options, message):
    model = REPO / "models" / "model_int8.tflite"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), str(model), *options],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("options", "option", "reason"),
    [
        (("--source", " "), "--source", "is empty"),
        (("--source", "frames", "--sample-id", ""), "--sample-id", "is empty"),
        (("--source", "frames", "--sample-id", "../../etc/x"), "--sample-id", "'..' parts"),
        (("--source", "frames", "--sample-id", "S-1 "), "--sample-id", "ends with a space"),
        (("--source", "frames", "--bright-mean", "-5"), "'--bright-mean'", "not in the range"),
        (
            ("--source", "frames", "--dark-mean", "200", "--bright-mean", "100"),
            "--dark-mean/--bright-mean",
            "every frame would be unfit",
        ),
    ],
)
def test_edge_app_run_refuses_options_that_would_do_the_wrong_thing(
    options, option, reason, tmp_path
):
    db = tmp_path / "results.sqlite"
    result = run_cli("edge-app", "run", *options, "--db", db, check=False, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and f"Invalid value for {option}:" in error[0] and reason in error[0]
    assert not db.exists()  # refused before anything was opened


@pytest.mark.parametrize("source", ["empty", "missing", "missing/*.jpg", "clip.mp4"])
def test_edge_app_run_refuses_a_source_without_frames_before_it_makes_a_database(source, tmp_path):
    (tmp_path / "empty").mkdir()
    db = tmp_path / "results.sqlite"
    result = run_cli(
        "edge-app", "run", "--source", tmp_path / source, "--db", db, check=False, timeout=120
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and f"--source {tmp_path / source}" in error[0], result.stderr
    assert not db.exists()  # no empty database left behind, and no model was loaded


@pytest.mark.parametrize(
    "command",
    [
        ("edge-bench", "run", "models", "--threads", "1,100000"),
        ("edge-bench", "trust", "models", "--threads", "100000"),
        ("edge-bench", "robustness", "models", "--threads", "65"),
        ("edge-bench", "fidelity", "models", "--threads", "99"),
        ("edge-app", "run", "--source", "frames", "--threads", "65"),
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_thread_counts_are_capped_where_the_runtime_would_crash(command):
    """100,000 threads made the runtime fail to spawn its workers and segfault (exit 139)."""
    result = run_cli(*command, check=False, timeout=120)
    assert result.returncode == 2 and "Invalid value for '--threads'" in result.stderr
    assert "64" in result.stderr and "Traceback" not in result.stderr


def test_edge_convert_refuses_trust_settings_with_no_trust(tmp_path):
    result = run_cli(
        "edge-convert", tmp_path / "run", "--out", tmp_path / "out", "--no-trust",
        "--coverage", "0.9", "--ood-retention", "0.97", check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--coverage, --ood-retention set(s) a trust parameter, and --no-trust" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--distill-weight", "0.5"), "--distill-weight: set(s) the distillation loss"),
        (("--distill-temperature", "2"), "needs a --teacher"),
        (("--no-int8-grid", "--int8-refit-epochs", "5"), "--no-int8-grid turns off"),
    ],
)
def test_edge_train_refuses_settings_that_would_do_nothing(options, message, tmp_path):
    result = run_cli("edge-train", "--out", tmp_path / "run", *options, check=False, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and message in error[0], result.stderr
    assert not (tmp_path / "run").exists()
