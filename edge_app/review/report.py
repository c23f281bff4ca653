"""The printable per-sample report (PDF via fpdf2, and standalone HTML), and the sample export.

Both report formats carry the same facts: sample, site and operator, times, the model(s) with
sha256, the sample result with its reason, the reviewer's decision with the reason, per-class
field counts, a quality summary, thumbnails of the fields that drove the result, and the
statement that LeukEdge is a screening aid, not a diagnostic device.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import cv2

from leukedge.edge_app.clitools import closest
from leukedge.edge_app.files import write_atomic
from leukedge.edge_app.review.data import SampleSummary, field_image, get_sample, list_samples
from leukedge.edge_app.samples import LABEL, UNFIT, UNKNOWN
from leukedge.edge_app.settings import DISCLAIMER
from leukedge.edge_app.storage import StorageError, spreadsheet_cell, utc_now

THUMBNAILS = 6
# The printed report is signed by hand: these lines stay blank, whatever the database holds.
SIGN_OFF_LINES = ("Hematologist (name)", "Signature", "Date")
THUMB_PX = 160


class ReportError(ValueError):
    """No report can be made (unknown sample, no frames, unwritable output): says why."""


@dataclass
class Report:
    summary: SampleSummary
    frames: list[dict]
    models: list[dict]  # file, sha256, variant, app_version, frames
    class_counts: dict[str, int]  # answered fields per label
    decision_counts: dict[str, int]
    quality: dict
    thumbnails: list[tuple[dict, bytes]]  # (frame, JPEG bytes)
    generated_utc: str


def thumbnail(path: Path, size: int = THUMB_PX) -> bytes | None:
    """A small JPEG of an image file (None if it cannot be read)."""
    from leukedge.edge_app.imaging import ImageDecodeError, load_rgb

    try:
        rgb = load_rgb(path)
    except (ImageDecodeError, OSError, ValueError):
        return None
    height, width = rgb.shape[:2]
    scale = size / max(height, width)
    small = cv2.resize(
        rgb,
        (max(1, round(width * scale)), max(1, round(height * scale))),
        interpolation=cv2.INTER_AREA,
    )
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85]
    )
    return encoded.tobytes() if ok else None


def driving_frames(summary: SampleSummary, frames: list[dict]) -> list[dict]:
    """The fields behind the result: the answered fields voting for the answer; for a referral the
    out-of-distribution fields, else the fit fields, most confident first."""
    by_id = {frame["id"]: frame for frame in frames}
    if summary.result.decision == LABEL:
        chosen = [by_id[i] for i in summary.result.driving_frames if i in by_id]
    else:
        unknown = [f for f in frames if f["decision"] == UNKNOWN]
        chosen = unknown or sorted(
            (f for f in frames if f["decision"] != UNFIT),
            key=lambda f: -(f.get("confidence") or 0.0),
        )
    return chosen[:THUMBNAILS]


def build_report(
    connection: sqlite3.Connection,
    sample_id: str,
    save_dir: Path | None = None,
    confined: bool = False,
) -> Report:
    """Gather a sample's report. With `confined`, images are read only from under `save_dir`."""
    found = get_sample(connection, sample_id)
    if found is None:
        known = [row[0] for row in connection.execute("SELECT sample_id FROM samples")]
        hint = closest(sample_id, known)
        raise ReportError(
            f"no sample {sample_id!r} in the database"
            + (f"; did you mean {hint!r}?" if hint else "")
            + " (`edge-app export --db DB --samples-csv samples.csv` lists every sample)"
        )
    summary, frames = found
    if not frames:
        raise ReportError(
            f"sample {sample_id!r} has no frames: nothing to report; capture fields "
            "for it with edge-app run --sample-id first"
        )
    models: dict[tuple, dict] = {}
    for frame in frames:
        key = (
            frame["model_file"],
            frame["model_sha256"],
            frame.get("model_variant"),
            frame["app_version"],
        )
        entry = models.setdefault(
            key,
            {
                "file": key[0],
                "sha256": key[1],
                "variant": key[2],
                "app_version": key[3],
                "frames": 0,
            },
        )
        entry["frames"] += 1
    fit = [frame for frame in frames if frame["decision"] != UNFIT]
    reasons = Counter(
        frame["quality_reason"] or "unfit" for frame in frames if not frame["quality_ok"]
    )
    focus = [frame["focus"] for frame in frames if frame.get("focus") is not None]
    quality = {
        "fields": len(frames),
        "fit": len(fit),
        "unfit": len(frames) - len(fit),
        "unfit_reasons": dict(reasons),
        "median_focus": round(median(focus), 2) if focus else None,
    }
    thumbs = []
    for frame in driving_frames(summary, frames):
        path = (
            field_image(frame.get("image_path"), save_dir)
            if confined
            else (Path(frame["image_path"]) if frame.get("image_path") else None)
        )
        data = thumbnail(path) if path is not None and path.is_file() else None
        if data is not None:
            thumbs.append((frame, data))
    return Report(
        summary,
        frames,
        list(models.values()),
        dict(summary.result.votes),
        dict(Counter(frame["decision"] for frame in frames)),
        quality,
        thumbs,
        utc_now(),
    )


def _review_line(summary: SampleSummary) -> tuple[str, str]:
    review = summary.last_review
    if review is None:
        return "not reviewed yet", ""
    after = json.loads(review["after"])
    verdict = (
        "confirmed" if review["action"] == "confirm" else f"overridden to {after.get('message')}"
    )
    return f"{verdict} by {review['reviewer']} at {review['reviewed_utc']}", review["reason"]


def _facts(report: Report) -> list[tuple[str, str]]:
    s, r = report.summary, report.summary.result
    review, reason = _review_line(s)
    confidence = (
        ""
        if r.confidence is None or r.decision == LABEL
        else f" (candidate {r.candidate}, {r.confidence:.1%})"
    )
    return [
        ("Sample ID", s.sample_id),
        ("Site", s.site or "-"),
        ("Operator", s.operator or "-"),
        ("Sample created (UTC)", s.created_utc),
        (
            "Fields captured (UTC)",
            f"{report.frames[0]['timestamp_utc']} to {report.frames[-1]['timestamp_utc']}",
        ),
        ("Report generated (UTC)", report.generated_utc),
        ("Machine result", f"{r.message}{confidence}"),
        ("Why", r.reason),
        ("Reviewer decision", review),
        ("Reviewer reason", reason or "-"),
        ("Status", s.status),
        ("Notes", s.notes or "-"),
    ]


def _sign_off_note(summary: SampleSummary) -> str:
    """What the signature confirms: the recorded review, or a warning that there is none."""
    if summary.last_review is None:
        return (
            "Not reviewed on the review page yet: the machine result alone is not a finding. "
            "Review the fields before signing."
        )
    review, _reason = _review_line(summary)
    return f"Recorded review: {review}. Signing confirms the result as it now stands."


def _counts_text(report: Report) -> list[str]:
    counts = (
        ", ".join(f"{label}: {n}" for label, n in sorted(report.class_counts.items())) or "none"
    )
    kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(report.decision_counts.items()))
    q = report.quality
    reasons = ", ".join(f"{reason} {n}" for reason, n in q["unfit_reasons"].items()) or "none"
    return [
        f"Answered fields per class: {counts}",
        f"Field decisions: {kinds}",
        f"Quality: {q['fit']} of {q['fields']} fields fit; unfit reasons: {reasons}; "
        f"median focus {q['median_focus']}",
    ]


def _atomic_write(path: Path, data: bytes) -> None:
    path = Path(path)
    if path.is_dir():
        raise ReportError(f"--out {path}: is a folder, give a file name")
    if not path.parent.is_dir():
        raise ReportError(f"--out {path}: folder {path.parent} does not exist")
    try:
        write_atomic(path, data)  # owner-only: a report names a patient's sample
    except OSError as error:
        raise ReportError(f"--out {path}: cannot write ({error.strerror or error})") from None


def _caption(frame: dict) -> str:
    """`#12 Pre-B 97.0%` for an answered field; a referred one says its decision first, so an
    out-of-distribution field never reads as a confident answer: `#11 unknown, top Benign 99.6%`."""
    confidence = "" if frame.get("confidence") is None else f" {frame['confidence']:.1%}"
    if frame["decision"] == LABEL:
        return f"#{frame['id']} {frame.get('label')}{confidence}"
    top = frame.get("top_label")
    return f"#{frame['id']} {frame['decision']}" + (f", top {top}{confidence}" if top else "")


def _figure(frame: dict, data: bytes) -> str:
    source = base64.b64encode(data).decode()
    return (
        f"<figure><img alt='field {frame['id']}' src='data:image/jpeg;base64,{source}'>"
        f"<figcaption>{html.escape(_caption(frame))}</figcaption></figure>"
    )


def render_html(report: Report) -> bytes:
    """A standalone HTML page (thumbnails inlined, no external asset)."""
    e = html.escape
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _facts(report))
    models = "".join(
        f"<li>{e(m['file'])} ({e(m['variant'] or 'unlisted variant')}, LeukEdge "
        f"{e(m['app_version'])}, {m['frames']} fields)<br><code>sha256 {e(m['sha256'])}</code></li>"
        for m in report.models
    )
    counts = "".join(f"<li>{e(line)}</li>" for line in _counts_text(report))
    thumbs = "".join(_figure(frame, data) for frame, data in report.thumbnails)
    sign = "".join(f"<tr><th>{e(line)}</th><td></td></tr>" for line in SIGN_OFF_LINES)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>LeukEdge sample report {e(report.summary.sample_id)}</title>
<style>body{{font-family:sans-serif;max-width:52rem;margin:1rem auto;padding:0 1rem}}
th{{text-align:left;padding-right:1rem;vertical-align:top}}figure{{display:inline-block;margin:.3rem}}
.statement{{border:2px solid #a33;padding:.5rem;font-weight:bold}}code{{word-break:break-all}}
.sign th{{padding:1.6rem 1rem 0 0;white-space:nowrap}}.sign td{{border-bottom:1px solid #000;width:24rem}}</style>
</head><body><h1>LeukEdge sample report</h1>
<p class="statement">{e(DISCLAIMER)}</p>
<table>{rows}</table><h2>Model</h2><ul>{models}</ul><h2>Fields</h2><ul>{counts}</ul>
<h2>Fields that drove the result</h2><div>{thumbs or "<p>no saved images (run edge-app with --save-dir)</p>"}</div>
<h2>Sign-off</h2><p id="sign-off-note">{e(_sign_off_note(report.summary))}</p>
<table class="sign">{sign}</table>
<p class="statement">{e(DISCLAIMER)}</p></body></html>
"""
    return page.encode()


def _latin1(text: str) -> str:
    return (
        str(text)
        .replace("\u2013", "-")
        .replace("\u2014", "-")
        .encode("latin-1", "replace")
        .decode("latin-1")
    )


def render_pdf(report: Report) -> bytes:
    from fpdf import FPDF

    sample_id = _latin1(report.summary.sample_id)

    class ReportPDF(FPDF):
        def footer(self) -> None:
            # Pages of a printed report come apart: each one names its sample.
            self.set_y(-12)
            self.set_font("helvetica", "", 7)
            self.set_text_color(90, 90, 90)
            self.cell(
                0,
                5,
                f"LeukEdge sample report {sample_id} - page {self.page_no()} of {{nb}} - "
                "screening aid, not a diagnostic device",
                align="C",
            )

    pdf = ReportPDF(format="A4")
    pdf.set_auto_page_break(True, margin=18)
    pdf.add_page()
    pdf.set_title(_latin1(f"LeukEdge sample report {report.summary.sample_id}"))
    pdf.set_font("helvetica", "B", 16)
    pdf.cell(0, 10, "LeukEdge sample report", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "B", 10)
    pdf.set_text_color(150, 30, 30)
    pdf.multi_cell(0, 5, _latin1(DISCLAIMER), border=1, new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.ln(2)
    for key, value in _facts(report):
        pdf.set_font("helvetica", "B", 9)
        pdf.cell(45, 5, _latin1(key))
        pdf.set_font("helvetica", "", 9)
        pdf.multi_cell(0, 5, _latin1(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("helvetica", "B", 11)
    pdf.cell(0, 7, "Model", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 9)
    for model in report.models:
        pdf.multi_cell(
            0,
            5,
            _latin1(
                f"{model['file']} ({model['variant'] or 'unlisted variant'}, LeukEdge "
                f"{model['app_version']}, {model['frames']} fields)"
            ),
            new_x="LMARGIN",
            new_y="NEXT",
        )
        pdf.set_font("courier", "", 8)
        pdf.cell(0, 5, f"sha256 {model['sha256']}", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("helvetica", "", 9)
    pdf.ln(2)
    pdf.set_font("helvetica", "B", 11)
    pdf.cell(0, 7, "Fields", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 9)
    for line in _counts_text(report):
        pdf.multi_cell(0, 5, _latin1(line), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("helvetica", "B", 11)
    pdf.cell(0, 7, "Fields that drove the result", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 8)
    if not report.thumbnails:
        pdf.cell(
            0, 5, "no saved images (run edge-app with --save-dir)", new_x="LMARGIN", new_y="NEXT"
        )
    # One row of THUMBNAILS across the page, so that the sign-off fits on the first page.
    columns, gap = THUMBNAILS, 3.0
    size = (pdf.epw - (columns - 1) * gap) / columns
    pdf.set_font("helvetica", "", 7)
    x0, y = pdf.l_margin, pdf.get_y()
    if y + size + 10 > pdf.h - pdf.b_margin:
        pdf.add_page()
        y = pdf.get_y()
    for index, (frame, data) in enumerate(report.thumbnails):
        column = index % columns
        if index and column == 0:
            y += size + 10
            if y + size + 10 > pdf.h - pdf.b_margin:
                pdf.add_page()
                y = pdf.get_y()
        x = x0 + column * (size + gap)
        pdf.image(io.BytesIO(data), x=x, y=y, w=size, h=size, keep_aspect_ratio=True)
        pdf.set_xy(x, y + size + 1)
        pdf.cell(size, 4, _latin1(_caption(frame)))
    if report.thumbnails:
        pdf.set_xy(x0, y + size + 8)
    pdf.ln(4)
    if pdf.get_y() + 45 > pdf.h - pdf.b_margin:  # the sign-off block stays on one page
        pdf.add_page()
    pdf.set_font("helvetica", "B", 11)
    pdf.cell(0, 7, "Sign-off", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", "", 9)
    pdf.multi_cell(0, 5, _latin1(_sign_off_note(report.summary)), new_x="LMARGIN", new_y="NEXT")
    for line in SIGN_OFF_LINES:
        pdf.ln(5)
        pdf.cell(45, 6, line)
        y = pdf.get_y() + 6
        pdf.line(pdf.l_margin + 45, y, pdf.l_margin + 150, y)
        pdf.ln(6)
    pdf.ln(4)
    pdf.set_font("helvetica", "B", 10)
    pdf.set_text_color(150, 30, 30)
    pdf.multi_cell(0, 5, _latin1(DISCLAIMER), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def write_report(report: Report, out: Path) -> str:
    """Write a .pdf or .html report atomically (owner-only); returns the format written."""
    suffix = Path(out).suffix.lower()
    if suffix == ".pdf":
        _atomic_write(out, render_pdf(report))
        return "pdf"
    if suffix in (".html", ".htm"):
        _atomic_write(out, render_html(report))
        return "html"
    raise ReportError(f"--out {out}: give a .pdf or .html file name")


EXPORT_COLUMNS = (
    "sample_id",
    "created_utc",
    "operator",
    "site",
    "notes",
    "n_frames",
    "n_fit",
    "n_answered",
    "n_uncertain",
    "n_unknown",
    "n_unfit",
    "decision",
    "label",
    "confidence",
    "reason",
    "status",
    "final_decision",
    "final_label",
    "last_reviewer",
    "last_review_utc",
    "last_review_action",
    "last_review_reason",
    "n_reviews",
)


def _reviews_by_sample(connection: sqlite3.Connection) -> dict[str, list[dict]]:
    reviews: dict[str, list[dict]] = {}
    for row in connection.execute("SELECT * FROM reviews ORDER BY id"):
        reviews.setdefault(row["sample_id"], []).append(dict(row))
    return reviews


def samples_csv(
    connection: sqlite3.Connection,
    summaries: list[SampleSummary] | None = None,
    reviews: dict[str, list[dict]] | None = None,
) -> str:
    """One row per sample (EXPORT_COLUMNS) with its result and last review, as CSV text: what
    `edge-app export --samples-csv` writes and the review page's "CSV" link downloads. Text that a
    spreadsheet would run as a formula is neutralised (`storage.spreadsheet_cell`)."""
    summaries = list_samples(connection) if summaries is None else summaries
    reviews = _reviews_by_sample(connection) if reviews is None else reviews
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    for s in summaries:
        r, last = s.result, s.last_review or {}
        final = s.final
        row = [
            s.sample_id,
            s.created_utc,
            s.operator,
            s.site,
            s.notes,
            r.n_frames,
            r.n_fit,
            r.n_answered,
            r.n_uncertain,
            r.n_unknown,
            r.n_unfit,
            r.decision,
            r.label,
            None if r.confidence is None else round(r.confidence, 6),
            r.reason,
            s.status,
            final.get("decision"),
            final.get("label"),
            last.get("reviewer"),
            last.get("reviewed_utc"),
            last.get("action"),
            last.get("reason"),
            len(reviews.get(s.sample_id, [])),
        ]
        writer.writerow([spreadsheet_cell(value) for value in row])
    return buffer.getvalue()


def export_samples(
    connection: sqlite3.Connection, csv_path: Path | None, json_path: Path | None
) -> int:
    """Samples with their results and reviews: CSV (one row per sample, last review) and/or JSON
    (every review). Files are written atomically, owner-only. Returns the sample count."""
    summaries = list_samples(connection)
    reviews = _reviews_by_sample(connection)
    if json_path is not None:
        items = []
        for s in summaries:
            item = s.as_dict()
            item["reviews"] = [
                {**r, "before": json.loads(r["before"]), "after": json.loads(r["after"])}
                for r in reviews.get(s.sample_id, [])
            ]
            items.append(item)
        _write_export(
            json_path,
            (json.dumps({"exported_utc": utc_now(), "samples": items}, indent=2) + "\n").encode(),
        )
    if csv_path is not None:
        _write_export(csv_path, samples_csv(connection, summaries, reviews).encode())
    return len(summaries)


def _write_export(path: Path, data: bytes) -> None:
    try:
        _atomic_write(path, data)
    except ReportError as error:
        raise StorageError(str(error).replace("--out", "export to")) from None
