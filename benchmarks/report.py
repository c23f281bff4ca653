"""The benchmark as a console table, JSON, CSV, Markdown and a PNG plot of accuracy vs latency."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from leukedge.benchmarks.runner import BenchResult
from leukedge.benchmarks.schema import bench_row, flat_row
from leukedge.train.machine import SIMD_FLAGS

# (header, how to get the cell from a row); one definition for the console and Markdown tables.
COLUMNS = (
    ("model", lambda r: r["name"]),
    ("variant", lambda r: r["variant"]),
    ("threads", lambda r: str(r["threads"])),
    ("status", lambda r: r["status"]),
    ("size MB", lambda r: _num(r["size_bytes"], 1 / 1e6, 2)),
    ("accuracy", lambda r: _num(r["accuracy"], 100, 2, "%")),
    ("macro-F1", lambda r: _num(r["macro_f1"], 1, 4)),
    ("agreement", lambda r: _num(r["agreement"], 100, 1, "%")),
    ("p50 ms", lambda r: _num(r["latency_ms"]["p50"], 1, 2)),
    ("p90 ms", lambda r: _num(r["latency_ms"]["p90"], 1, 2)),
    ("FPS", lambda r: _num(r["fps"], 1, 1)),
    ("e2e ms", lambda r: _num(r["end_to_end_ms"]["p50"], 1, 2)),
    ("RSS MB", lambda r: _num(r["peak_rss_mb"], 1, 0)),
)


def _num(value, factor: float, digits: int, suffix: str = "") -> str:
    return "-" if value is None else f"{value * factor:.{digits}f}{suffix}"


def format_table(headers: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    """A table of strings: Markdown (`| a | b |`) or aligned columns for the console.

    The one table formatter of every edge-bench command (run, app, trust).
    """
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(out + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def _cells(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    return [name for name, _ in COLUMNS], [
        [cell(row) for _, cell in COLUMNS] for row in result.rows
    ]


def environment_lines(result: BenchResult) -> list[str]:
    env = result.environment
    lines = [
        f"{env['cpu']} ({env['cores']} cores, {env['machine']}), {env['os']}, Python {env['python']}, "
        f"{env['runtime']} {env['runtime_version']}"
    ]
    if env.get("simd") is not None:
        lines.append("SIMD: " + (" ".join(env["simd"]) or "none of " + ", ".join(SIMD_FLAGS[:4])))
    if env.get("board_model"):
        lines.append(f"board: {env['board_model']}")
    for when in ("before", "after"):
        state = env.get(when) or {}
        shown = {k: v for k, v in state.items() if v is not None}
        if shown:
            lines.append(f"{when}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    if result.data:
        lines.append(f"data: {result.data['n']} images, {result.data['source']}")
    return lines


def method_line(result: BenchResult) -> str:
    """How the columns were measured: printed under the table and kept in its Markdown."""
    settings = result.settings
    return (
        f"latency: interpreter.invoke() over {settings['runs']} runs after {settings['warmup']} warm-up; "
        "FPS: 1000 / mean invoke ms; e2e: decode + crop/resize + invoke per image; agreement: "
        "top-1 against the most precise variant of the same model (agreement_reference in the "
        "JSON; that row itself reads 100%); RSS: peak of each row's own process; "
        f"{result.wall_s:.1f} s in all"
    )


def console_table(result: BenchResult) -> str:
    out = environment_lines(result) + ["", format_table(*_cells(result))]
    for row in result.failed:
        out.append(f"{row['name']} ({row['threads']} thread(s)) failed: {row['error']}")
    out += [f"note: {note}" for note in result.notes]
    out.append(method_line(result))
    return "\n".join(out)


def write_json(result: BenchResult, path: Path) -> None:
    Path(path).write_text(json.dumps(result.to_json(), indent=2) + "\n")


def write_csv(result: BenchResult, path: Path) -> None:
    labels = (result.data or {}).get("labels") or []
    rows = [flat_row(row, labels) for row in result.to_json()["rows"]]
    with open(path, "w", newline="") as handle:
        fields = list(rows[0]) if rows else list(flat_row(bench_row(), labels))
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(rows)


def markdown(result: BenchResult) -> str:
    out = [format_table(*_cells(result), markdown=True), ""]
    out += [f"- {line}" for line in environment_lines(result)]
    out += [
        f"- {row['name']} ({row['threads']} thread(s)) failed: {row['error']}"
        for row in result.failed
    ]
    out += [f"- note: {note}" for note in result.notes]
    out.append(f"- {method_line(result)}")
    return "\n".join(out) + "\n"


def write_markdown(result: BenchResult, path: Path) -> None:
    Path(path).write_text(markdown(result))


def write_plot(result: BenchResult, path: Path) -> None:
    """Accuracy against median invoke latency (bar to p90), one point per ok row.

    Colour is the model file, marker the thread count.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        r
        for r in result.rows
        if r["status"] == "ok" and r["accuracy"] is not None and r["latency_ms"]["p50"] is not None
    ]
    names = list(dict.fromkeys(r["name"] for r in rows))
    threads = sorted({r["threads"] for r in rows})
    colours = plt.get_cmap("tab10")
    markers = "osD^v<>p*h"
    figure, axes = plt.subplots(figsize=(8, 4.8))
    for row in rows:
        p50, p90 = row["latency_ms"]["p50"], row["latency_ms"]["p90"]
        colour = colours(names.index(row["name"]) % 10)
        marker = markers[threads.index(row["threads"]) % len(markers)]
        axes.errorbar(
            p50,
            row["accuracy"] * 100,
            xerr=[[0], [max(0.0, p90 - p50)]],
            fmt=marker,
            color=colour,
            markersize=7,
            capsize=3,
            label=f"{row['name']} ({row['variant']}), {row['threads']} thread(s)",
        )
        axes.annotate(
            f"{row['variant']} {row['threads']}t",
            (p50, row["accuracy"] * 100),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    axes.set_xlabel("invoke latency (ms): point p50, bar to p90")
    axes.set_ylabel("top-1 accuracy (%)")
    n = (result.data or {}).get("n")
    axes.set_title(
        f"edge-bench: accuracy vs latency ({n} images)" if n else "edge-bench: accuracy vs latency"
    )
    axes.grid(True, alpha=0.3)
    if rows:
        axes.legend(fontsize=6, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
