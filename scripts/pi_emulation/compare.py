"""Compare what edge-app wrote on x86 with what it wrote under ARM emulation.

Pure functions on plain values (JSON lines, SQLite rows): each returns a list of differences,
empty when the two runs agree. What counts as agreement:
- strings (decision, label, sample ID, model sha256, ...) and integers: exactly equal;
- probabilities (any value under a key or column whose name contains "prob", and the
  "confidence" column, the top probability): within `prob_tolerance` (default 2/256: two
  steps of a uint8 softmax output) plus 1e-6, as the app stores them rounded to 6 decimals;
- other floats (quality metrics): within 1e-6 relative or 1e-4 absolute, whichever is larger:
  the same pixels summed by different SIMD code differ in the last bits, and the app stores
  focus, brightness and contrast rounded to 4 decimals, so such a bit can flip the last one;
- keys and columns in IGNORED, which differ legitimately between the two machines.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

PROB_TOLERANCE = 2 / 256
FLOAT_RELATIVE = 1e-6
FLOAT_ABSOLUTE = 1e-4  # one unit in the 4th decimal, where the app rounds quality metrics
STORED_ROUNDING = 1e-6  # probabilities and confidence are stored rounded to 6 decimals
# Legitimately different on the two machines, and nothing else is ignored:
# timestamp_utc (when the frame was processed), image_path (where its saved copy went: a
# per-run folder), runtime (LiteRT build name and version: 2.1.6 on the Pi vs the host's),
# app_version (the emulated side runs from the source tree, without installed package
# metadata, so it reads "unknown"), message (text derived from decision and confidence,
# which are compared themselves).
# created_utc: when a sample record was first filed (the samples table of schema 2).
IGNORED = frozenset(
    {"timestamp_utc", "created_utc", "image_path", "runtime", "app_version", "message"}
)


def _is_prob(path: str) -> bool:
    """Probabilities, and the confidence (the top probability), get the quantization tolerance."""
    name = path.lower()
    return "prob" in name or name.endswith(".confidence")


def _maybe_json(value: Any) -> Any:
    """JSON text stored in a SQLite column (probabilities, quality) compared as its content."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def compare_values(
    x86: Any, arm: Any, path: str, prob_tolerance: float = PROB_TOLERANCE
) -> list[str]:
    """Differences between two values found at `path` (e.g. 'row 3.probabilities.Benign')."""
    x86, arm = _maybe_json(x86), _maybe_json(arm)
    if isinstance(x86, dict) and isinstance(arm, dict):
        keys = (set(x86) | set(arm)) - IGNORED
        missing = sorted(k for k in keys if (k in x86) != (k in arm))
        found = [f"{path}: key {k!r} only on {'x86' if k in x86 else 'arm'}" for k in missing]
        for key in sorted(keys - set(missing), key=str):
            found += compare_values(x86[key], arm[key], f"{path}.{key}", prob_tolerance)
        return found
    if isinstance(x86, list) and isinstance(arm, list):
        if len(x86) != len(arm):
            return [f"{path}: {len(x86)} items on x86, {len(arm)} on arm"]
        found = []
        for index, (a, b) in enumerate(zip(x86, arm, strict=True)):
            found += compare_values(a, b, f"{path}[{index}]", prob_tolerance)
        return found
    numbers = (int, float)
    if (
        isinstance(x86, numbers)
        and isinstance(arm, numbers)
        and not isinstance(x86, bool)
        and not isinstance(arm, bool)
        and (isinstance(x86, float) or isinstance(arm, float))
    ):
        if math.isnan(x86) and math.isnan(arm):
            return []
        if _is_prob(path):
            limit = prob_tolerance + STORED_ROUNDING
        else:
            limit = max(FLOAT_RELATIVE * max(abs(x86), abs(arm)), FLOAT_ABSOLUTE)
        if abs(x86 - arm) <= limit * (1 + 1e-9):  # the limit itself passes, whatever the float bits
            return []
        return [f"{path}: x86 {x86!r} vs arm {arm!r} (|diff| {abs(x86 - arm):.3g} > {limit:.3g})"]
    if x86 != arm:
        return [f"{path}: x86 {x86!r} vs arm {arm!r}"]
    return []


def compare_result_lines(
    x86: list[dict], arm: list[dict], prob_tolerance: float = PROB_TOLERANCE
) -> list[str]:
    """edge-app --headless output: one JSON object per frame, in processing order."""
    if len(x86) != len(arm):
        return [f"headless output: {len(x86)} frames on x86, {len(arm)} on arm"]
    found = []
    for index, (a, b) in enumerate(zip(x86, arm, strict=True)):
        found += compare_values(a, b, f"frame {index}", prob_tolerance)
    return found


def read_tables(db: Path) -> dict[str, list[dict]]:
    """Every user table's rows (as dicts, in rowid order) from a SQLite file, read-only."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = [
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        tables = {}
        for name in names:
            cursor = connection.execute(f'SELECT * FROM "{name}" ORDER BY rowid')
            columns = [d[0] for d in cursor.description]
            tables[name] = [dict(zip(columns, row, strict=True)) for row in cursor]
        return tables
    finally:
        connection.close()


def compare_tables(
    x86: dict[str, list[dict]], arm: dict[str, list[dict]], prob_tolerance: float = PROB_TOLERANCE
) -> list[str]:
    """Same tables, same row count, and rows equal column by column (see module docstring)."""
    found = [
        f"table {name!r} only on {'x86' if name in x86 else 'arm'}"
        for name in sorted(set(x86) ^ set(arm))
    ]
    for name in sorted(set(x86) & set(arm)):
        if len(x86[name]) != len(arm[name]):
            found.append(f"table {name!r}: {len(x86[name])} rows on x86, {len(arm[name])} on arm")
            continue
        for index, (a, b) in enumerate(zip(x86[name], arm[name], strict=True)):
            found += compare_values(a, b, f"{name} row {index + 1}", prob_tolerance)
    return found


def max_prob_difference(x86: list[dict], arm: list[dict]) -> float:
    """Largest |p_x86 - p_arm| over all frames (reported even when within tolerance)."""
    worst = 0.0

    def walk(a: Any, b: Any, path: str) -> None:
        nonlocal worst
        if isinstance(a, dict) and isinstance(b, dict):
            for key in set(a) & set(b):
                walk(a[key], b[key], f"{path}.{key}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for x, y in zip(a, b, strict=True):
                walk(x, y, path)
        elif isinstance(a, float) and isinstance(b, float) and _is_prob(path):
            worst = max(worst, abs(a - b))

    for a, b in zip(x86, arm, strict=False):
        walk(a, b, "")
    return worst
