#!/usr/bin/env python
"""Speed/accuracy map: train, convert (int8) and benchmark MobileNetV2 at several widths and input sizes.

Every step is one of the project's own commands, so each point of the map can be reproduced:
    edge-train --alpha A --image-size S --out runs/map/a{A}-s{S}        (default recipe, seed 0)
    edge-convert runs/map/a{A}-s{S} --out runs/map/a{A}-s{S}/tflite --variants int8
    edge-bench runs/map/*/tflite/model_int8.tflite --threads 2 --runs 100

Run (about an hour on 2 CPU cores; finished runs are reused, so it can be resumed):
    .venv/bin/python scripts/speed_map.py --out runs/map
    .venv/bin/python scripts/speed_map.py --out runs/map --alphas 0.35 --sizes 128   # one point
    .venv/bin/python scripts/speed_map.py --out runs/map --include a0.5-s224-ft100   # + a run trained by hand
    .venv/bin/python scripts/speed_map.py --out runs/kdmap --alphas 1.0 --sizes 224 \
        --include kd-a0.5-s144   # a distilled student (edge-train --teacher ...) beside the default
Writes OUT/map.json, OUT/map.md and OUT/map.png (accuracy against latency, Pareto front marked).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

from leukedge.train.config import TrainConfig

BIN = Path(sys.executable).parent
DEFAULT_FINE_TUNE_EPOCHS = TrainConfig.fine_tune_epochs


def run(*command: str) -> None:
    click.echo("$ " + " ".join(command), err=True)
    code = subprocess.run([str(BIN / command[0]), *command[1:]]).returncode
    if code != 0:
        raise click.ClickException(
            f"{command[0]} {command[1]} failed with exit status {code} (its message is above)"
        )


def recipe(settings: dict) -> str:
    """The training settings that changed between map runs, so older points are told apart."""
    grid = ", int8 grid" if settings.get("int8_grid") else ""
    epochs = settings.get("fine_tune_epochs")
    schedule = f" for {epochs} epochs" if epochs not in (None, DEFAULT_FINE_TUNE_EPOCHS) else ""
    teacher = (
        f", distilled (T={settings['distill_temperature']:g}, w={settings['distill_weight']:g})"
        if settings.get("teachers") or settings.get("teacher")  # "teacher": runs before ensembles
        else ""
    )
    return f"fine-tune from {settings['fine_tune_from']}{schedule}{grid}{teacher}"


def fastest_close_to(points: list[dict], reference: str, max_drop: float = 0.005) -> dict | None:
    """The fastest point faster than the reference whose int8 test accuracy is within `max_drop`
    of the reference's; None when there is none."""
    base = next((p for p in points if p["name"] == reference), None)
    if base is None:
        return None
    close = [
        p
        for p in points
        if p["p50_ms"] < base["p50_ms"] and p["accuracy"] >= base["accuracy"] - max_drop - 1e-9
    ]
    return min(close, key=lambda p: p["p50_ms"], default=None)


def pareto(points: list[dict]) -> set[str]:
    """Names of points no other point beats on both latency (lower) and accuracy (higher)."""
    front = set()
    for p in points:
        dominated = any(
            q["p50_ms"] <= p["p50_ms"]
            and q["accuracy"] >= p["accuracy"]
            and (q["p50_ms"], q["accuracy"]) != (p["p50_ms"], p["accuracy"])
            for q in points
        )
        if not dominated:
            front.add(p["name"])
    return front


def plot(
    points: list[dict], front: set[str], fast: dict | None, reference: str, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for p in points:
        on_front = p["name"] in front
        axis.scatter(
            p["p50_ms"],
            100 * p["accuracy"],
            s=30 + p["bytes"] / 4e4,
            color="tab:red" if on_front else "tab:blue",
            alpha=0.8,
        )
    # Points on one spot (same accuracy, latency within 3% of the axis) share one label; a
    # label near another on the same row goes above its point instead of below.
    span = max(p["p50_ms"] for p in points) - min(p["p50_ms"] for p in points) or 1.0
    spots: list[tuple[float, float, list[str]]] = []
    for p in sorted(points, key=lambda p: p["p50_ms"]):
        near = [s for s in spots if s[1] == p["accuracy"] and p["p50_ms"] - s[0] < 0.03 * span]
        if near:
            near[0][2].append(p["name"])
        else:
            spots.append((p["p50_ms"], p["accuracy"], [p["name"]]))
    for index, (p50, accuracy, names) in enumerate(spots):
        crowded = any(s[1] == accuracy and 0 < p50 - s[0] < 0.25 * span for s in spots[:index])
        axis.annotate(
            "\n".join(names),
            (p50, 100 * accuracy),
            fontsize=7,
            xytext=(5, 6 if crowded else -4),
            textcoords="offset points",
            va="bottom" if crowded else "top",
        )
    if fast:
        axis.scatter(
            fast["p50_ms"],
            100 * fast["accuracy"],
            s=220,
            marker="*",
            color="gold",
            edgecolor="black",
            zorder=3,
            label=f"fastest within 0.5 points of {reference} ({fast['name']})",
        )
    ordered = sorted((p for p in points if p["name"] in front), key=lambda p: p["p50_ms"])
    axis.plot(
        [p["p50_ms"] for p in ordered],
        [100 * p["accuracy"] for p in ordered],
        "--",
        color="tab:red",
        linewidth=1,
        label="Pareto front",
    )
    axis.set_xlabel("int8 invoke latency p50, ms (this machine, 2 threads)")
    axis.set_ylabel("test accuracy, %")
    axis.set_title("MobileNetV2 width x input size (marker area ~ file size)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(loc="center right", fontsize=8)
    axis.margins(y=0.1)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/map"), show_default=True)
@click.option("--alphas", default="1.0,0.5,0.35", show_default=True)
@click.option("--sizes", default="224,160,128", show_default=True)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Dataset root (default as edge-train).",
)
@click.option("--runs", "bench_runs", type=int, default=100, show_default=True)
@click.option(
    "--reference",
    default="a1.0-s224",
    show_default=True,
    help="The default model's point: the fast pick must be within 0.5 points of it.",
)
@click.option(
    "--include",
    multiple=True,
    help="Also map this finished run folder of OUT (trained with other options; converted if needed).",
)
def main(
    out: Path,
    alphas: str,
    sizes: str,
    data: Path | None,
    bench_runs: int,
    reference: str,
    include: tuple[str, ...],
) -> None:
    data_args = ("--data", str(data)) if data else ()
    names = []
    for alpha in alphas.split(","):
        for size in sizes.split(","):
            name = f"a{alpha}-s{size}"
            run_dir = out / name
            if not (run_dir / "metrics.json").is_file():
                run(
                    "edge-train",
                    "--alpha",
                    alpha,
                    "--image-size",
                    size,
                    "--out",
                    str(run_dir),
                    "--overwrite",
                    *data_args,
                )
            names.append(name)
    for name in include:
        if not (out / name / "metrics.json").is_file():
            raise click.BadParameter(
                f"{out / name} is not a finished edge-train run (no metrics.json)",
                param_hint="--include",
            )
    names += include
    for name in names:
        if not (out / name / "tflite" / "manifest.json").is_file():
            run(
                "edge-convert",
                str(out / name),
                "--out",
                str(out / name / "tflite"),
                "--variants",
                "int8",
                "--overwrite",
                *data_args,
            )
    bench = out / "bench.json"
    run(
        "edge-bench",
        "run",
        *[str(out / n / "tflite" / "model_int8.tflite") for n in names],
        "--threads",
        "2",
        "--runs",
        str(bench_runs),
        "--json",
        str(bench),
        *(("--data-root", str(data)) if data else ()),
    )  # scored on each run's own test split
    rows = {Path(r["model"]).parents[1].name: r for r in json.loads(bench.read_text())["rows"]}
    points = []
    for name in names:
        metrics = json.loads((out / name / "metrics.json").read_text())
        row = rows[name]
        points.append(
            {
                "name": name,
                "alpha": metrics["settings"]["alpha"],
                "image_size": metrics["settings"]["image_size"],
                "keras_accuracy": metrics["test"]["accuracy"],
                "accuracy": row["accuracy"],
                "macro_f1": row["macro_f1"],
                "p50_ms": row["latency_ms"]["p50"],
                "bytes": row["size_bytes"],
                "train_minutes": metrics["timing_seconds"]["total"] / 60,
                "recipe": recipe(metrics["settings"]),
            }
        )
    front = pareto(points)
    for p in points:
        p["pareto"] = p["name"] in front
    fast = fastest_close_to(points, reference)
    (out / "map.json").write_text(
        json.dumps({"points": points, "fast": fast and fast["name"]}, indent=2) + "\n"
    )
    lines = [
        "| model | Keras test acc | int8 test acc | int8 macro-F1 | int8 p50 ms | int8 size KB | train min "
        "| recipe | Pareto |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {p['name']} | {p['keras_accuracy']:.2%} | {p['accuracy']:.2%} | {p['macro_f1']:.4f} | "
        f"{p['p50_ms']:.2f} | {p['bytes'] / 1024:.0f} | {p['train_minutes']:.1f} | {p['recipe']} "
        f"| {'yes' if p['pareto'] else ''} |"
        for p in sorted(points, key=lambda p: p["p50_ms"])
    ]
    lines += [
        "",
        f"Fastest within 0.5 points of {reference} (int8 test accuracy): "
        f"{fast['name'] if fast else 'none'}",
    ]
    (out / "map.md").write_text("\n".join(lines) + "\n")
    plot(points, front, fast, reference, out / "map.png")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
