"""`edge-bench robustness`: accuracy of each model variant under realistic field shifts.

Every test image is shifted at full resolution (`benchmarks.shifts`), then goes through the
model's standard `prepare` and `Classifier`, exactly as a frame from a field camera would. One
shifted image is scored by every variant, so the variants are compared on identical pixels.
If `edge_app.quality` provides the app's quality gate, the fraction of shifted images the gate
would reject is reported too (see `QualityGate`). No TensorFlow here.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import platform
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from leukedge.benchmarks.evaluation import (
    EvalSet,
    LabelMismatchError,
    label_indices,
    load_rgb_images,
    resolve_eval_set,
    score,
)
from leukedge.benchmarks.models import ModelDiscoveryError, ModelEntry, discover_models
from leukedge.benchmarks.shifts import SEVERITIES, SHIFTS, Shift, parse_severities, parse_shifts
from leukedge.edge_app.runtime import Classifier, ModelError
from leukedge.train.dataset import DatasetError

MILD_FLOOR = 0.95  # issue 6: at severity 1 of every shift, accuracy stays at least this
BREAK_FLOOR = 0.90  # issue 6: report the first severity that brings accuracy under this
CLEAN = "clean"


@dataclass(frozen=True)
class RobustnessSettings:
    """What `edge-bench robustness` evaluates; defaults are the full report."""

    shifts: tuple[str, ...] = tuple(SHIFTS)  # names from benchmarks.shifts.SHIFTS
    severities: tuple[int, ...] = SEVERITIES  # 1 (mild) .. 5 (severe); the clean image is always scored
    seed: int = 0  # base seed of the random shifts (noise, blur direction, colour direction)
    threads: int | None = None  # interpreter threads; None lets the runtime choose (min(4, cores))
    limit_per_class: int | None = None  # at most this many images per class; None for all


# --- the app's quality gate, when edge_app provides one -----------------------------------

# Names tried in edge_app.quality, in order. The gate is owned by edge_app (issue 4); this
# module only asks it "would you reject this frame?" and never re-implements it.
GATE_FUNCTIONS = ("assess", "check_quality", "assess_quality", "quality_gate", "evaluate", "check")
_PASS_FIELDS = ("ok", "passed", "fit", "acceptable", "accepted", "usable")


@dataclass
class QualityGate:
    """Adapter over edge_app.quality: `rejects(rgb)` is True when the app would not classify."""

    function: Callable
    name: str

    @classmethod
    def find(cls) -> QualityGate | None:
        try:
            module = importlib.import_module("leukedge.edge_app.quality")
        except ImportError:
            return None
        for name in GATE_FUNCTIONS:
            function = getattr(module, name, None)
            if callable(function):
                return cls(function, f"leukedge.edge_app.quality.{name}")
        return None

    def check(self, rgb: np.ndarray) -> str | None:
        """None when the gate accepts the frame, else its reason (without the measured numbers)."""
        result = self.function(rgb)
        if isinstance(result, (bool, np.bool_)):
            return None if result else "rejected"
        for key in _PASS_FIELDS:
            passed = _field(result, key)
            if passed is not None:
                return None if passed else str(_field(result, "reason") or "rejected").split(" (")[0]
        raise TypeError(f"{self.name} returned {type(result).__name__} with none of the fields "
                        f"{', '.join(_PASS_FIELDS)}")


def _field(result: object, key: str) -> object:
    return result.get(key) if isinstance(result, dict) else getattr(result, key, None)


# --- evaluation ---------------------------------------------------------------------------

@dataclass
class LoadedModel:
    entry: ModelEntry
    classifier: Classifier | None = None
    y_true: np.ndarray | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Condition:
    shift: Shift | None  # None: the clean image
    severity: int

    @property
    def name(self) -> str:
        return self.shift.name if self.shift else CLEAN

    @property
    def parameter(self) -> float | None:
        return self.shift.value(self.severity) if self.shift else None


@dataclass
class Results:
    settings: RobustnessSettings
    eval_set: EvalSet
    models: list[LoadedModel]
    rows: list[dict] = field(default_factory=list)
    gate: str | None = None
    gate_rows: list[dict] = field(default_factory=list)
    completed: list[Condition] = field(default_factory=list)  # all of them unless interrupted
    interrupted: bool = False  # Ctrl-C: only the completed conditions are scored


def image_seed(base_seed: int, shift_name: str, sample_path: str) -> int:
    """The seed for one image under one shift: the same at every severity and for every model,
    so severities differ only in strength and variants see identical pixels."""
    return zlib.crc32(f"{base_seed}:{shift_name}:{sample_path}".encode())


def conditions(settings: RobustnessSettings) -> list[Condition]:
    found = [Condition(None, 0)]
    for name in settings.shifts:
        found += [Condition(SHIFTS[name], severity) for severity in settings.severities]
    return found


def load_models(entries: Sequence[ModelEntry], eval_set: EvalSet, threads: int | None) -> list[LoadedModel]:
    """Each model loaded once; a model that cannot be used keeps its one-line reason."""
    loaded = []
    for entry in entries:
        if entry.kind != "tflite":
            loaded.append(LoadedModel(entry, error=f"{entry.kind} models are not evaluated here "
                                                   "(robustness runs the TFLite variants only)"))
            continue
        try:
            classifier = Classifier(entry.path, threads=threads)
            loaded.append(LoadedModel(entry, classifier, label_indices(eval_set, classifier.labels)))
        except (ModelError, LabelMismatchError) as error:
            loaded.append(LoadedModel(entry, error=str(error)))
    return loaded


def evaluate(models: list[LoadedModel], eval_set: EvalSet, images: Sequence[np.ndarray],
             settings: RobustnessSettings, gate: QualityGate | None = None,
             progress: bool = True) -> Results:
    """Score every working model on every condition; one shifted image serves all models.

    Ctrl-C stops after the image in flight; the conditions finished by then are still scored.
    """
    usable = [m for m in models if m.ok]
    todo = conditions(settings)
    predictions = {(id(m), c.name, c.severity): np.empty(len(images), np.int64) for m in usable for c in todo}
    rejected = {(c.name, c.severity): np.zeros(len(images), bool) for c in todo}
    reasons: dict[tuple[str, int], Counter] = {(c.name, c.severity): Counter() for c in todo}
    bar = tqdm(total=len(todo) * len(images), desc="robustness", unit="image", disable=not progress,
               file=None, dynamic_ncols=True)
    completed: list[Condition] = []
    interrupted = False
    try:
        for condition in todo:
            bar.set_postfix_str(f"{condition.name} {condition.severity}")
            for index, (sample, image) in enumerate(zip(eval_set.samples, images, strict=True)):
                shifted = image if condition.shift is None else condition.shift.apply(
                    image, condition.severity, image_seed(settings.seed, condition.name, sample.path))
                if gate is not None:
                    reason = gate.check(shifted)
                    if reason is not None:
                        rejected[(condition.name, condition.severity)][index] = True
                        reasons[(condition.name, condition.severity)][reason] += 1
                for model in usable:
                    probabilities = model.classifier.classify(shifted)
                    predictions[(id(model), condition.name, condition.severity)][index] = int(probabilities.argmax())
                bar.update(1)
            completed.append(condition)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    results = Results(settings, eval_set, models, gate=gate.name if gate else None,
                      completed=completed, interrupted=interrupted)
    for condition in completed:
        key = (condition.name, condition.severity)
        reject = rejected[key] if gate is not None else None
        if gate is not None:
            results.gate_rows.append({"shift": condition.name, "severity": condition.severity,
                                      "parameter": condition.parameter,
                                      "reject_fraction": float(reject.mean()),
                                      "reasons": dict(reasons[key].most_common())})
        for model in usable:
            y_pred = predictions[(id(model), *key)]
            scores = score(model.y_true, y_pred, model.classifier.labels)
            row = {
                "model": str(model.entry.path), "variant": model.entry.variant, "name": model.entry.name,
                "shift": condition.name, "severity": condition.severity, "parameter": condition.parameter,
                "n": scores["n"], "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
                "per_class_recall": scores["per_class_recall"],
                "confusion_matrix": scores["metrics"]["confusion_matrix"],  # rows true, columns predicted
                "gate_reject_fraction": None, "accuracy_on_accepted": None,
            }
            if gate is not None:
                row["gate_reject_fraction"] = float(reject.mean())
                accepted = ~reject
                row["accuracy_on_accepted"] = (float((y_pred[accepted] == model.y_true[accepted]).mean())
                                               if accepted.any() else None)
            results.rows.append(row)
    return results


def summarise(results: Results) -> list[dict]:
    """Per variant and shift: accuracy at the mildest severity, and where it first drops under 90%."""
    summary = []
    for model in results.models:
        if not model.ok:
            continue
        mine = [r for r in results.rows if r["model"] == str(model.entry.path)]
        clean = next((r["accuracy"] for r in mine if r["shift"] == CLEAN), None)
        for name in results.settings.shifts:
            by_severity = {r["severity"]: r["accuracy"] for r in mine if r["shift"] == name}
            if not by_severity:  # interrupted before this shift
                continue
            mild = by_severity.get(1)
            below = [s for s in sorted(by_severity) if by_severity[s] < BREAK_FLOOR]
            worst = min(by_severity, key=lambda s: (by_severity[s], -s))
            recall = next(r["per_class_recall"] for r in mine if r["shift"] == name and r["severity"] == worst)
            # The class that loses most: with class-dependent acquisition, a shift can push
            # every image of one class into another.
            weakest = min(recall, key=recall.get) if recall else None
            summary.append({
                "model": str(model.entry.path), "variant": model.entry.variant, "shift": name,
                "clean_accuracy": clean,
                "mild_accuracy": mild,
                "mild_ok": None if mild is None else mild >= MILD_FLOOR,
                "first_severity_below_90": below[0] if below else None,
                "worst_accuracy": by_severity[worst],
                "worst_severity": worst,
                "weakest_class_at_worst": weakest,
                "weakest_class_recall_at_worst": recall.get(weakest) if weakest else None,
            })
    return summary


# --- reports ------------------------------------------------------------------------------

def environment() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version()}


def to_json(results: Results) -> dict:
    models = []
    for model in results.models:
        info = {"model": str(model.entry.path), "variant": model.entry.variant, "name": model.entry.name,
                "status": "ok" if model.ok else "failed", "error": model.error}
        if model.ok:
            classifier = model.classifier
            info.update(image_size=classifier.image_size, labels=list(classifier.labels),
                        sha256=classifier.sha256, runtime=f"{classifier.runtime.name} {classifier.runtime.version}",
                        threads=classifier.threads)
        models.append(info)
    return {
        "environment": environment(),
        "settings": {**asdict(results.settings), "data": results.eval_set.source,
                     "data_root": str(results.eval_set.data_root), "n_images": len(results.eval_set.samples),
                     "mild_floor": MILD_FLOOR, "break_floor": BREAK_FLOOR},
        "shifts": {name: {"description": SHIFTS[name].description, "parameter": SHIFTS[name].parameter,
                          "levels": {str(s): SHIFTS[name].value(s) for s in results.settings.severities}}
                   for name in results.settings.shifts},
        "models": models,
        "images": [{"path": s.path, "label": s.label} for s in results.eval_set.samples],
        "rows": results.rows,
        "summary": summarise(results),
        "quality_gate": {"available": results.gate is not None, "function": results.gate,
                         "rows": results.gate_rows},
        "interrupted": results.interrupted,
    }


CSV_COLUMNS = ("model", "variant", "shift", "severity", "parameter", "n", "accuracy", "macro_f1",
               "gate_reject_fraction", "accuracy_on_accepted")


def write_csv(results: Results, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in results.rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS})


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _variant_names(results: Results) -> list[tuple[str, str]]:
    """(model path, column title) of each working model; titles unique."""
    ok = [m for m in results.models if m.ok]
    variants = [m.entry.variant for m in ok]
    return [(str(m.entry.path), m.entry.variant if variants.count(m.entry.variant) == 1 else m.entry.name)
            for m in ok]


def markdown(results: Results) -> str:
    """Clean accuracy, the pass/fail summary per shift, and the full shift x severity table."""
    columns = _variant_names(results)
    accuracy = {(r["model"], r["shift"], r["severity"]): r["accuracy"] for r in results.rows}
    gate = {(r["shift"], r["severity"]): r["reject_fraction"] for r in results.gate_rows}
    summary = summarise(results)
    lines = [f"Images: {results.eval_set.describe()}. Seed {results.settings.seed}. "
             f"Accuracy in %; mild = severity 1 (target >= {MILD_FLOOR:.0%}); "
             f"'breaks at' = first severity under {BREAK_FLOOR:.0%} ('-': never, among those run).", ""]
    failed = [m for m in results.models if not m.ok]
    for model in failed:
        lines.append(f"- {model.entry.name}: failed: {model.error}")
    if failed:
        lines.append("")
    lines += ["| variant | model | clean accuracy | shifts with mild >= 95% |", "|---|---|---|---|"]
    for path, title in columns:
        mine = [s for s in summary if s["model"] == path]
        passing = sum(bool(s["mild_ok"]) for s in mine)
        mild_known = sum(s["mild_ok"] is not None for s in mine)
        lines.append(f"| {title} | {path} | {_percent(accuracy.get((path, CLEAN, 0)))} | "
                     f"{passing}/{mild_known} |")
    lines += ["", "| shift | " + " | ".join(f"{t} mild | {t} breaks at" for _, t in columns) + " |",
              "|---|" + "---|---|" * len(columns)]
    for name in results.settings.shifts:
        cells = []
        for path, _ in columns:
            entry = next((s for s in summary if s["model"] == path and s["shift"] == name), None)
            if entry is None:  # interrupted before this shift
                cells.append("- | -")
                continue
            flag = "" if entry["mild_ok"] is None else (" ok" if entry["mild_ok"] else " FAIL")
            cells.append(f"{_percent(entry['mild_accuracy'])}{flag} | {entry['first_severity_below_90'] or '-'}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    gate_title = " | gate rejects" if results.gate else ""
    lines += ["", "| shift | severity | parameter | " + " | ".join(t for _, t in columns) + gate_title + " |",
              "|---|---|---|" + "---|" * (len(columns) + bool(results.gate))]
    for condition in results.completed:
        key = (condition.name, condition.severity)
        parameter = "" if condition.parameter is None else f"{condition.parameter:g} ({condition.shift.parameter})"
        cells = [_percent(accuracy[(path, *key)]) for path, _ in columns]
        if results.gate:
            cells.append(_percent(gate[key]))
        lines.append(f"| {condition.name} | {condition.severity} | {parameter} | " + " | ".join(cells) + " |")
    if results.interrupted:
        lines += ["", f"INTERRUPTED: only {len(results.completed)} of {len(conditions(results.settings))} "
                      "conditions (clean, shift x severity) were finished and are reported."]
    if results.gate:
        lines += ["", f"Gate rejects: % of shifted images `{results.gate}` would not classify."]
    else:
        lines += ["", "Quality gate: edge_app.quality was not available, so gate rejections are not reported."]
    return "\n".join(lines) + "\n"


def plot(results: Results, path: Path) -> None:
    """One panel per shift: accuracy against severity (0 = clean), one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results.settings.shifts)
    columns = _variant_names(results)
    ncols = min(5, len(names))
    nrows = math.ceil(len(names) / ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), squeeze=False,
                                sharey=True)
    severities = [0, *results.settings.severities]
    for axis, name in zip(axes.flat, names, strict=False):
        for model_path, title in columns:
            by_key = {(r["shift"], r["severity"]): r["accuracy"] for r in results.rows if r["model"] == model_path}
            values = [by_key.get((CLEAN, 0) if s == 0 else (name, s), math.nan) for s in severities]
            axis.plot(severities, values, marker="o", markersize=3, label=title)
        if results.gate_rows:
            gate = {(r["shift"], r["severity"]): r["reject_fraction"] for r in results.gate_rows}
            axis.plot(severities, [gate.get((CLEAN, 0) if s == 0 else (name, s), math.nan) for s in severities],
                      color="grey", linestyle=":", label="gate rejects")
        axis.axhline(MILD_FLOOR, color="green", linewidth=0.7, linestyle="--")
        axis.axhline(BREAK_FLOOR, color="red", linewidth=0.7, linestyle="--")
        axis.set_title(name, fontsize=10)
        axis.set_xticks(severities)
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
    for axis in axes.flat[len(names):]:
        axis.set_visible(False)
    for axis in axes[:, 0]:
        axis.set_ylabel("accuracy")
    for axis in axes[-1, :]:
        axis.set_xlabel("severity (0 = clean)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels) + 2, frameon=False)
    figure.suptitle(f"Accuracy under field shifts ({len(results.eval_set.samples)} images; "
                    f"dashed: {MILD_FLOOR:.0%} and {BREAK_FLOOR:.0%})")
    figure.tight_layout(rect=(0, 0.05, 1, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def montage(image: np.ndarray, shifts: Sequence[Shift], severities: Sequence[int], seed: int,
            sample_path: str, path: Path) -> None:
    """One image under each shift (rows) at each severity (columns), to show what levels mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [0, *severities]
    figure, axes = plt.subplots(len(shifts), len(columns), figsize=(1.7 * len(columns), 1.8 * len(shifts)),
                                squeeze=False)
    for row, shift in enumerate(shifts):
        for col, severity in enumerate(columns):
            axis = axes[row, col]
            axis.imshow(shift.apply(image, severity, image_seed(seed, shift.name, sample_path)))
            axis.set_xticks([])
            axis.set_yticks([])
            title = "clean" if severity == 0 else f"{severity}: {shift.value(severity):g}"
            axis.set_title(title, fontsize=7)
        axes[row, 0].set_ylabel(shift.name, fontsize=8)
    figure.suptitle(f"{sample_path}: each shift at each severity", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.99))
    options = {"pil_kwargs": {"quality": 92}} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    figure.savefig(path, dpi=110, **options)
    plt.close(figure)


# --- command ------------------------------------------------------------------------------

def _shifts_option(ctx, param, value: str) -> tuple[str, ...]:
    try:
        return tuple(shift.name for shift in parse_shifts(value))
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _severities_option(ctx, param, value: str) -> tuple[int, ...]:
    try:
        return tuple(parse_severities(value))
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _writable(path: Path | None, option: str) -> None:
    if path is not None and not path.parent.is_dir():
        raise click.BadParameter(f"folder {path.parent} does not exist", param_hint=option)


EXAMPLES = """
\b
Examples:
  edge-bench robustness models/model_int8.tflite --limit 20
  edge-bench robustness runs/convert_out --markdown robustness.md --plot robustness.png
  edge-bench robustness runs/convert_out --shifts defocus,jpeg --severities 1,3,5 --json r.json
  edge-bench robustness model_int8.tflite --data ../shared/data/all-leukemia/Original --limit 10
\b
Shifts (severity 1 = mild .. 5 = severe):
""" + "\n".join(f"  {s.name:15} {s.description}" for s in SHIFTS.values())


@click.command("robustness", epilog=EXAMPLES)
@click.argument("models", nargs=-1, type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Dataset folder of class folders, or a split.csv (its test rows). "
                   "Default: the test rows of the split.csv beside the model(s).")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Where split.csv paths are resolved. Default: the manifest's data_dir, else the shared dataset.")
@click.option("--shifts", "shift_names", default="all", show_default=True, callback=_shifts_option,
              help="'all' or comma-separated shift names.")
@click.option("--severities", default="1,2,3,4,5", show_default=True, callback=_severities_option,
              help="Comma-separated severities, 1 (mild) to 5 (severe). Clean is always scored.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="At most N images per class (quick runs). Default: every image.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random shifts.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Interpreter threads. Default: min(4, cores).")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), help="Write results as JSON.")
@click.option("--csv", "csv_out", type=click.Path(path_type=Path, dir_okay=False),
              help="Write one row per variant x shift x severity.")
@click.option("--markdown", "markdown_out", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the tables as Markdown.")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path, dir_okay=False),
              help="Write a PNG grid: accuracy against severity, one panel per shift.")
@click.option("--montage", "montage_out", type=click.Path(path_type=Path, dir_okay=False),
              help="Write a PNG (or .jpg) of the first test image under every shift and severity.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def robustness_command(models: tuple[Path, ...], data: Path | None, data_root: Path | None,
                       shift_names: tuple[str, ...], severities: tuple[int, ...], limit: int | None,
                       seed: int, threads: int | None, json_out: Path | None, csv_out: Path | None,
                       markdown_out: Path | None, plot_out: Path | None, montage_out: Path | None,
                       quiet: bool) -> None:
    """Accuracy of each model variant on the test images under field shifts.

    Each image is shifted at full resolution (blur, exposure, stain colour, JPEG, noise,
    rotation, zoom, camera resolution) at each severity, then prepared and classified as a
    camera frame would be. Prints accuracy per shift x severity x variant, the mildest-severity
    accuracy of each shift and the severity where accuracy first falls under 90%.
    MODELS are .tflite files or edge-convert folders (default: models/model_int8.tflite).
    Ctrl-C stops early and still reports the conditions already finished.
    """
    for path, option in ((json_out, "--json"), (csv_out, "--csv"), (markdown_out, "--markdown"),
                         (plot_out, "--plot"), (montage_out, "--montage")):
        _writable(path, option)
    if plot_out is not None and plot_out.suffix.lower() != ".png":
        raise click.BadParameter(f"{plot_out} should end in .png", param_hint="--plot")
    if montage_out is not None and montage_out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise click.BadParameter(f"{montage_out} should end in .png (or .jpg, 10x smaller)", param_hint="--montage")
    settings = RobustnessSettings(shift_names, severities, seed, threads, limit)
    try:
        entries = discover_models(models)
        eval_set = resolve_eval_set(data, entries, data_root=data_root, limit_per_class=limit)
        images = load_rgb_images(eval_set)
    except (ModelDiscoveryError, DatasetError) as error:
        raise click.ClickException(str(error)) from None
    loaded = load_models(entries, eval_set, threads)
    for model in loaded:
        if model.ok:
            click.echo(f"model: {model.classifier.describe()}", err=True)
        else:
            click.echo(f"model {model.entry.path}: failed: {model.error}", err=True)
    if not any(m.ok for m in loaded):
        raise click.ClickException("no model could be evaluated (reasons above)")
    gate = QualityGate.find()
    click.echo(f"data: {eval_set.describe()}", err=True)
    click.echo(f"quality gate: {gate.name if gate else 'not available (edge_app.quality not found)'}", err=True)
    if montage_out is not None:
        montage(images[0], [SHIFTS[n] for n in shift_names], severities, seed,
                eval_set.samples[0].path, montage_out)
    results = evaluate(loaded, eval_set, images, settings, gate, progress=not quiet)
    report = markdown(results)
    click.echo(report)
    if json_out is not None:
        json_out.write_text(json.dumps(to_json(results), indent=2) + "\n")
    if csv_out is not None:
        write_csv(results, csv_out)
    if markdown_out is not None:
        markdown_out.write_text(f"# Robustness: accuracy under field shifts\n\n{report}")
    if plot_out is not None:
        plot(results, plot_out)
    if results.interrupted:
        click.echo("edge-bench robustness: interrupted; the figures above cover the finished conditions only",
                   err=True)
        raise SystemExit(130)
    failed = [m for m in loaded if not m.ok]
    if failed:
        raise click.ClickException(f"{len(failed)} model(s) could not be evaluated: "
                                   + "; ".join(f"{m.entry.path}: {m.error}" for m in failed))


if __name__ == "__main__":  # python -m benchmarks.robustness, before edge-bench registers it
    robustness_command()
