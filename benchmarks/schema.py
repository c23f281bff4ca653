"""The rows edge-bench writes: one definition of each row's fields, used by every command.

`edge-bench run` (runner, worker, report), `edge-bench app`, `edge-bench robustness` and
`edge-bench trust` all build their rows from the constructors here, so a field is named once
and a JSON or CSV consumer can rely on it. Rows stay plain dicts (they go straight to JSON);
the TypedDicts document and type-check them. Keys starting with "_" are the runner's private
bookkeeping and never reach an output file.
"""

from __future__ import annotations

from typing import TypedDict

# --- edge-bench run: one row per (model, thread count) -------------------------------------

LATENCY_KEYS = ("init", "first", "mean", "std", "min", "p50", "p90", "p99")
END_TO_END_KEYS = ("mean", "p50", "p90")


class Latency(TypedDict):
    init: float | None  # ms to load the model and allocate tensors
    first: float | None  # ms of the first inference (TFLite: includes the set_tensor copy)
    mean: float | None
    std: float | None
    min: float | None
    p50: float | None
    p90: float | None
    p99: float | None


class EndToEnd(TypedDict):
    mean: float | None  # ms of decode + crop/resize + invoke, one image each
    p50: float | None
    p90: float | None


class BenchRow(TypedDict):
    model: str
    name: str
    variant: str
    kind: str  # "tflite" or "keras"
    threads: int
    status: str  # "ok", "failed" (error says why) or "skipped" (not measurable here)
    error: str | None
    size_bytes: int | None
    accuracy: float | None
    macro_f1: float | None
    per_class_recall: dict[str, float] | None
    agreement: float | None  # top-1 agreement with agreement_reference
    agreement_reference: str | None
    n_images: int | None
    latency_ms: Latency
    end_to_end_ms: EndToEnd
    fps: float | None
    runs: int | None
    peak_rss_mb: float | None
    model_rss_mb: float | None
    runtime: str | None
    labels: list[str] | None
    peak_rss_method: str | None
    image_size: int | None


# What a worker process measures and returns to the runner (the parent scores the rest).
WORKER_KEYS = (
    "status",
    "error",
    "labels",
    "image_size",
    "runtime",
    "latency_ms",
    "runs",
    "fps",
    "peak_rss_mb",
    "model_rss_mb",
    "peak_rss_method",
    "end_to_end_ms",
)
# The scalar fields of a row, in CSV column order (latency, e2e and recall are flattened after).
FLAT_KEYS = (
    "model",
    "name",
    "variant",
    "threads",
    "status",
    "error",
    "size_bytes",
    "accuracy",
    "macro_f1",
    "agreement",
    "fps",
    "peak_rss_mb",
    "model_rss_mb",
    "runs",
    "n_images",
    "runtime",
)


def empty_latency() -> Latency:
    return Latency(**dict.fromkeys(LATENCY_KEYS))


def empty_end_to_end() -> EndToEnd:
    return EndToEnd(**dict.fromkeys(END_TO_END_KEYS))


def bench_row(
    model: str = "",
    name: str = "",
    variant: str = "",
    kind: str = "tflite",
    threads: int = 0,
    size_bytes: int | None = None,
) -> BenchRow:
    """A row before measuring: every figure None, status "failed" until the worker says otherwise."""
    return BenchRow(
        model=model,
        name=name,
        variant=variant,
        kind=kind,
        threads=threads,
        status="failed",
        error=None,
        size_bytes=size_bytes,
        accuracy=None,
        macro_f1=None,
        per_class_recall=None,
        agreement=None,
        agreement_reference=None,
        n_images=None,
        latency_ms=empty_latency(),
        end_to_end_ms=empty_end_to_end(),
        fps=None,
        runs=None,
        peak_rss_mb=None,
        model_rss_mb=None,
        runtime=None,
        labels=None,
        peak_rss_method=None,
        image_size=None,
    )


def public(row: dict) -> dict:
    """The row without the runner's private "_" keys: what goes to JSON."""
    return {key: value for key, value in row.items() if not key.startswith("_")}


def flat_row(row: dict, labels: list[str]) -> dict:
    """One CSV line: scalars, then latency_*_ms, end_to_end_*_ms and recall_<label>."""
    flat = {key: row.get(key) for key in FLAT_KEYS}
    flat.update({f"latency_{k}_ms": (row.get("latency_ms") or {}).get(k) for k in LATENCY_KEYS})
    flat.update(
        {f"end_to_end_{k}_ms": (row.get("end_to_end_ms") or {}).get(k) for k in END_TO_END_KEYS}
    )
    flat.update(
        {f"recall_{label}": (row.get("per_class_recall") or {}).get(label) for label in labels}
    )
    return flat


# --- edge-bench app: the app pipeline, stage by stage --------------------------------------

# The app's stages in frame order. "decode" exists on the file path only: a camera (picamera2)
# delivers decoded RGB arrays. "other" is the frame's total minus the timed stages (the glue in
# FrameProcessor.process), so the stages always add up to the frame.
APP_STAGES = ("decode", "quality", "prepare", "invoke", "decision", "sqlite", "other")
APP_PATHS = ("camera", "file")


class AppRow(TypedDict):
    model: str
    name: str  # the table name (see benchmarks.models.with_unique_names)
    variant: str | None
    path: str  # "camera" (decoded arrays in memory) or "file" (JPEG decoded per frame)
    threads: int
    runtime: str
    frames: int  # timed frames per repeat
    repeats: int
    stage_ms: dict[
        str, float | None
    ]  # median per stage (median over repeats of per-repeat medians)
    frame_ms: float  # median per-frame total of the app's work (all stages)
    invoke_ms: float  # median bare interpreter.invoke(), measured right after each frame
    overhead_ms: float  # frame_ms - invoke_ms (median over repeats): what the app adds per frame
    ratio: float  # frame_ms / invoke_ms: the median over repeats of each repeat's ratio
    ratios: list[float]  # each repeat's ratio, to show the spread
    fps: float  # frames per second of the app's work alone


def app_row(**fields) -> AppRow:
    return AppRow(**fields)


# --- edge-bench robustness: one row per (model, shift, severity) ---------------------------


class RobustnessRow(TypedDict):
    model: str
    variant: str
    name: str
    shift: str  # a shift name from benchmarks.shifts, or "clean"
    severity: int  # 0 for clean, 1 (mild) .. 5 (severe)
    parameter: float | None  # the shift's physical parameter at that severity
    n: int
    accuracy: float  # top-1 accuracy, every frame forced to a label
    macro_f1: float
    per_class_recall: dict[str, float]
    confusion_matrix: list[list[int]]  # rows true, columns predicted
    gate_reject_fraction: float  # share of frames the app's quality gate calls unfit
    accuracy_on_accepted: float | None  # top-1 accuracy on the frames the gate accepts
    # What the app would do with each frame (the model's own decision rule, `decision_rule`):
    answered_right: float  # share of all frames answered with the right label
    answered_wrong: float  # share of all frames answered with a wrong label (the harmful case)
    referred: float  # share sent to an expert: uncertain, unknown or unfit
    uncertain: float
    unknown: float
    unfit: float
    decision_rule: str


ROBUSTNESS_CSV_KEYS = (
    "model",
    "variant",
    "shift",
    "severity",
    "parameter",
    "n",
    "accuracy",
    "macro_f1",
    "gate_reject_fraction",
    "accuracy_on_accepted",
    "answered_right",
    "answered_wrong",
    "referred",
    "uncertain",
    "unknown",
    "unfit",
    "decision_rule",
)


def robustness_row(**fields) -> RobustnessRow:
    missing = set(RobustnessRow.__annotations__) - set(fields)
    if missing:
        raise KeyError(f"robustness row without {', '.join(sorted(missing))}")
    return RobustnessRow(**fields)


# --- edge-bench trust: one row per model ---------------------------------------------------


class OodRow(TypedDict):
    folder: str
    n: int
    auroc: float | None  # in-distribution test frames vs this folder, by the OOD score
    fpr_at_95_tpr: float | None  # share of this folder kept when 95% of test frames are kept
    answered: (
        float  # share of this folder's frames answered with a label (gate passed, rule answered)
    )
    outcome_shares: dict[str, float]  # label / uncertain / unknown / unfit shares
    answered_labels: dict[str, int]  # which labels those answers were


class TrustRow(TypedDict):
    model: str
    variant: str
    name: str
    n: int
    has_trust_params: bool
    ood_score: str  # what the OOD score is: the model's own output, or 1 - max probability
    decision_rule: str
    accuracy: float
    ece: float
    nll: float
    brier: float
    reliability: list[dict]  # per bin: lower, upper, n, confidence, accuracy
    conformal: dict | None  # coverage, mean_set_size, per_class (None without trust parameters)
    answered: float  # share of test frames answered with a label by the decision rule
    answered_accuracy: float | None  # accuracy of those answers
    outcome_shares: dict[
        str, float
    ]  # label / uncertain / unknown / unfit shares on the test frames
    risk_coverage: dict  # coverage and accuracy arrays (answer the most confident first)
    ood: list[OodRow]
