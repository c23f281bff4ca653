"""`edge-bench fidelity`: edge-bench's invoke latency next to LiteRT's own benchmark tool.

Both run on the same model file and thread count in the same command, alternating
(edge-bench, LiteRT, edge-bench, LiteRT, ...) so background load hits both alike; each figure
is the median over `--repeats` of the mean latency of `--runs` invocations. LiteRT's tool is
`ai_edge_litert/tools/benchmark_litert_model.py` (its CompiledModel API, random input).

    edge-bench fidelity runs/default_converted --threads 1,2 --runs 200 --repeats 5
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from leukedge.benchmarks.models import ModelDiscoveryError, discover_models
from leukedge.benchmarks.options import models_argument, output_option, thread_counts_option
from leukedge.benchmarks.runner import run_worker
from leukedge.edge_app.clitools import FiniteFloat, closest
from leukedge.edge_app.manifest import CONVERTED_VARIANTS, FAST_INT8

KNOWN_VARIANTS = (*CONVERTED_VARIANTS, FAST_INT8)

LITERT_TOOL = "ai_edge_litert.tools.benchmark_litert_model"


def litert_mean_ms(model: Path, threads: int, runs: int, warmup: int, workdir: Path) -> float:
    """Mean latency (ms) reported by LiteRT's benchmark_litert_model in its --result_json."""
    out = Path(tempfile.mkstemp(suffix=".json", dir=workdir)[1])
    command = [
        sys.executable,
        "-m",
        LITERT_TOOL,
        "--model",
        str(model),
        "--num_runs",
        str(runs),
        "--warmup_runs",
        str(warmup),
        "--num_threads",
        str(threads),
        "--result_json",
        str(out),
    ]
    process = subprocess.run(command, capture_output=True, text=True, timeout=900)
    try:
        return float(json.loads(out.read_text())["latency"]["avg_ms"])
    except (OSError, ValueError, KeyError):
        last = (process.stderr or process.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise click.ClickException(
            f"LiteRT's benchmark tool failed on {model}: {last[0][:200]}"
        ) from None


def edge_bench_mean_ms(
    model: Path, threads: int, runs: int, warmup: int, workdir: Path, allow_unverified: bool = False
) -> float:
    """Mean invoke latency (ms) measured by edge-bench's own worker (no data: random input)."""
    spec = {
        "model": str(model),
        "kind": "tflite",
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "max_seconds": None,
        "allow_unverified": allow_unverified,
        "cache_dir": str(workdir),
        "data_root": "",
        "image_paths": [],
        "image_labels": [],
    }
    result, _ = run_worker(spec, workdir, timeout_s=900)
    if result["status"] != "ok":
        raise click.ClickException(f"edge-bench could not measure {model}: {result['error']}")
    return float(result["latency_ms"]["mean"])


@click.command("fidelity")
@models_argument()
@click.option(
    "--variants",
    default="int8,fp32",
    show_default=True,
    help="Which variants of an edge-convert folder to compare (comma-separated).",
)
@thread_counts_option("Interpreter thread counts, one comparison each.")
@click.option(
    "--runs",
    type=click.IntRange(min=2),
    default=200,
    show_default=True,
    help="Timed invocations per measurement, for both tools.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Untimed invokes before the timed ones, in both tools.",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Alternating measurements per tool; the median of their means is reported.",
)
@click.option(
    "--tolerance",
    type=FiniteFloat(0, 1),
    default=0.10,
    show_default=True,
    help="Exit 1 if edge-bench's mean differs from LiteRT's by more than this fraction.",
)
@output_option("--json", "json_path", "Write the comparison as JSON.", dir_okay=True)
@click.option(
    "--allow-unverified",
    is_flag=True,
    help="Also time .tflite files no manifest vouches for (changed, unlisted or renamed).",
)
def fidelity_command(
    models: tuple[Path, ...],
    variants: str,
    threads: tuple[int, ...],
    runs: int,
    warmup: int,
    repeats: int,
    tolerance: float,
    json_path: Path | None,
    allow_unverified: bool,
) -> None:
    """Compare edge-bench's mean invoke latency with LiteRT's benchmark tool on the same models.

    \b
    edge-bench fidelity runs/default_converted --threads 1,2
    edge-bench fidelity models/model_int8.tflite --runs 500 --repeats 5 --json fidelity.json
    """
    wanted = {v.strip() for v in variants.split(",") if v.strip()}
    for name in sorted(wanted - set(KNOWN_VARIANTS)):
        hint = closest(name, KNOWN_VARIANTS)
        raise click.BadParameter(
            f"unknown variant {name!r}"
            + (
                f": did you mean {hint!r}?"
                if hint
                else f": choose from {', '.join(KNOWN_VARIANTS)}"
            ),
            param_hint="--variants",
        )
    try:
        entries = [e for e in discover_models(models) if e.kind == "tflite"]
    except ModelDiscoveryError as error:
        raise click.ClickException(str(error)) from None
    in_folders = [e for e in entries if e.manifest is not None]
    entries = (
        [e for e in entries if e.manifest is None or e.variant in wanted] if in_folders else entries
    )
    if not entries:
        raise click.ClickException(
            f"no .tflite model of variant(s) {variants} among the given paths"
        )
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-fidelity-") as scratch:
        for entry in entries:
            for count in threads:
                ours, theirs = [], []
                for _ in range(repeats):
                    ours.append(
                        edge_bench_mean_ms(
                            entry.path, count, runs, warmup, Path(scratch), allow_unverified
                        )
                    )
                    theirs.append(litert_mean_ms(entry.path, count, runs, warmup, Path(scratch)))
                row = {
                    "model": str(entry.path),
                    "variant": entry.variant,
                    "threads": count,
                    "runs": runs,
                    "repeats": repeats,
                    "edge_bench_mean_ms": statistics.median(ours),
                    "litert_tool_mean_ms": statistics.median(theirs),
                    "edge_bench_means_ms": ours,
                    "litert_tool_means_ms": theirs,
                }
                row["ratio"] = row["edge_bench_mean_ms"] / row["litert_tool_mean_ms"]
                rows.append(row)
                click.echo(
                    f"{entry.name:40s} {entry.variant:8s} {count} thread(s): edge-bench "
                    f"{row['edge_bench_mean_ms']:8.3f} ms  LiteRT tool {row['litert_tool_mean_ms']:8.3f} ms  "
                    f"ratio {row['ratio']:.3f}"
                )
    if json_path is not None:
        json_path.write_text(json.dumps({"tolerance": tolerance, "rows": rows}, indent=2) + "\n")
    outside = [r for r in rows if abs(r["ratio"] - 1) > tolerance]
    if outside:
        click.echo(
            f"edge-bench fidelity: {len(outside)} comparison(s) differ by more than "
            f"{tolerance:.0%}",
            err=True,
        )
        sys.exit(1)
