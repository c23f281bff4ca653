"""The robustness results as JSON, CSV and Markdown tables."""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

from leukedge.benchmarks.environment import describe_environment
from leukedge.benchmarks.robustness.evaluation import Results, summarise
from leukedge.benchmarks.robustness.settings import (
    BREAK_FLOOR,
    CLEAN,
    MILD_FLOOR,
    WRONG_CEILING,
    conditions,
)
from leukedge.benchmarks.schema import ROBUSTNESS_CSV_KEYS
from leukedge.benchmarks.shifts import SHIFTS


def to_json(results: Results) -> dict:
    models = []
    for model in results.models:
        info = {
            "model": str(model.entry.path),
            "variant": model.entry.variant,
            "name": model.entry.name,
            "status": "ok" if model.ok else "failed",
            "error": model.error,
        }
        if model.ok:
            classifier = model.classifier
            info.update(
                image_size=classifier.image_size,
                labels=list(classifier.labels),
                sha256=classifier.sha256,
                runtime=f"{classifier.runtime.name} {classifier.runtime.version}",
                threads=classifier.threads,
                decision_rule=model.rule.name,
                has_trust_params=model.rule.trust is not None,
            )
        models.append(info)
    return {
        "environment": describe_environment(),
        "settings": {
            **asdict(results.settings),
            "data": results.eval_set.source,
            "data_root": str(results.eval_set.data_root),
            "n_images": len(results.eval_set.samples),
            "mild_floor": MILD_FLOOR,
            "break_floor": BREAK_FLOOR,
            "wrong_ceiling": WRONG_CEILING,
        },
        "shifts": {
            name: {
                "description": SHIFTS[name].description,
                "parameter": SHIFTS[name].parameter,
                "levels": {str(s): SHIFTS[name].value(s) for s in results.settings.severities},
            }
            for name in results.settings.shifts
        },
        "models": models,
        "images": [{"path": s.path, "label": s.label} for s in results.eval_set.samples],
        "rows": results.rows,
        "summary": summarise(results),
        "quality_gate": {"available": True, "function": results.gate, "rows": results.gate_rows},
        "interrupted": results.interrupted,
    }


def write_csv(results: Results, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ROBUSTNESS_CSV_KEYS, extrasaction="ignore")
        writer.writeheader()
        for row in results.rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in ROBUSTNESS_CSV_KEYS})


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def variant_names(results: Results) -> list[tuple[str, str]]:
    """(model path, column title) of each working model; titles unique."""
    ok = [m for m in results.models if m.ok]
    variants = [m.entry.variant for m in ok]
    return [
        (
            str(m.entry.path),
            m.entry.variant if variants.count(m.entry.variant) == 1 else m.entry.name,
        )
        for m in ok
    ]


def markdown(results: Results) -> str:
    """Clean accuracy, the pass/fail summary per shift, the shift x severity accuracy table, and
    what the app would do (answered right / wrong / referred) at each shift and severity."""
    columns = variant_names(results)
    rows = {(r["model"], r["shift"], r["severity"]): r for r in results.rows}
    gate = {(r["shift"], r["severity"]): r["reject_fraction"] for r in results.gate_rows}
    summary = summarise(results)
    lines = [
        f"Images: {results.eval_set.describe()}. Seed {results.settings.seed}. "
        f"Accuracy in %; mild = severity 1 (target >= {MILD_FLOOR:.0%}); "
        f"'breaks at' = first severity under {BREAK_FLOOR:.0%} ('-': never, among those run).",
        "",
    ]
    failed = [m for m in results.models if not m.ok]
    for model in failed:
        lines.append(f"- {model.entry.name}: failed: {model.error}")
    if failed:
        lines.append("")
    lines += [
        "| variant | model | clean accuracy | shifts with mild >= 95% | max answered wrong | decision rule |",
        "|---|---|---|---|---|---|",
    ]
    for path, title in columns:
        mine = [s for s in summary if s["model"] == path]
        passing = sum(bool(s["mild_ok"]) for s in mine)
        mild_known = sum(s["mild_ok"] is not None for s in mine)
        clean = rows.get((path, CLEAN, 0))
        wrong = max(
            [r["answered_wrong"] for (p, _, _), r in rows.items() if p == path], default=None
        )
        rule = next(m.rule.name for m in results.models if m.ok and str(m.entry.path) == path)
        lines.append(
            f"| {title} | {path} | {_percent(clean['accuracy'] if clean else None)} | "
            f"{passing}/{mild_known} | {_percent(wrong)} | {rule} |"
        )
    lines += [
        "",
        "| shift | " + " | ".join(f"{t} mild | {t} breaks at" for _, t in columns) + " |",
        "|---|" + "---|---|" * len(columns),
    ]
    for name in results.settings.shifts:
        cells = []
        for path, _ in columns:
            entry = next((s for s in summary if s["model"] == path and s["shift"] == name), None)
            if entry is None:  # interrupted before this shift
                cells.append("- | -")
                continue
            flag = "" if entry["mild_ok"] is None else (" ok" if entry["mild_ok"] else " FAIL")
            cells.append(
                f"{_percent(entry['mild_accuracy'])}{flag} | {entry['first_severity_below_90'] or '-'}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| shift | severity | parameter | "
        + " | ".join(t for _, t in columns)
        + " | gate rejects |",
        "|---|---|---|" + "---|" * (len(columns) + 1),
    ]
    for condition in results.completed:
        key = condition.key
        parameter = (
            ""
            if condition.parameter is None
            else f"{condition.parameter:g} ({condition.shift.parameter})"
        )
        cells = [_percent(rows[(path, *key)]["accuracy"]) for path, _ in columns] + [
            _percent(gate[key])
        ]
        lines.append(
            f"| {condition.name} | {condition.severity} | {parameter} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "What the app would do, % of all frames: answered right / answered wrong / referred "
        "(uncertain + unknown + unfit):",
        "",
        "| shift | severity | "
        + " | ".join(f"{t} right | {t} wrong | {t} referred" for _, t in columns)
        + " |",
        "|---|---|" + "---|---|---|" * len(columns),
    ]
    for condition in results.completed:
        cells = []
        for path, _ in columns:
            row = rows[(path, *condition.key)]
            flag = " FAIL" if row["answered_wrong"] > WRONG_CEILING else ""
            cells.append(
                f"{_percent(row['answered_right'])} | {_percent(row['answered_wrong'])}{flag} | "
                f"{_percent(row['referred'])}"
            )
        lines.append(f"| {condition.name} | {condition.severity} | " + " | ".join(cells) + " |")
    if results.interrupted:
        lines += [
            "",
            f"INTERRUPTED: only {len(results.completed)} of {len(conditions(results.settings))} "
            "conditions (clean, shift x severity) were finished and are reported.",
        ]
    lines += [
        "",
        f"Gate rejects: % of shifted images `{results.gate}` would not classify (the app's own gate). "
        f"Answered wrong above {WRONG_CEILING:.0%} is marked FAIL (the project's target, docs/trust.md). Decision rule "
        "per model in the first table: the model's own trust parameters when it carries them, else "
        "the legacy min-confidence rule.",
    ]
    return "\n".join(lines) + "\n"
