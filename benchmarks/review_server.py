"""`edge-bench review-server`: is the review page fast enough, and safe beside `edge-app run`?

1. Fills a fresh database with --samples samples of --frames-per-sample frames each. The frame
   rows are real: real images classified once by the app's own pipeline, then filed under the
   samples in turn.
2. Server time: the sample list and a sample page, --requests requests each, timed inside the
   server process through Flask's WSGI interface (no network), median and max.
3. Beside a real `edge-app run` writing at full speed into the same database (--run-frames
   frames of real images, --loop), a real HTTP server answers a client that keeps loading the
   list and sample pages and posting reviews. Afterwards: every frame the run printed is stored,
   every review the server accepted is stored, and no response or log line says "database is
   locked".
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import click

from leukedge.benchmarks.options import (
    data_option,
    data_root_option,
    model_option,
    output_option,
    released_eval_set,
    released_model,
)
from leukedge.edge_app.imaging import ImageDecodeError
from leukedge.edge_app.runtime import ModelError

GOAL_MS = 300.0
EXAMPLES = """\b
Examples:
  edge-bench review-server
  edge-bench review-server --samples 1000 --frames-per-sample 50 --requests 20 --json review.json
"""


def real_rows(model: Path, image_paths: list[Path]) -> list[dict]:
    """Frame rows of real images through the app's frame pipeline (what edge-app run stores)."""
    from leukedge.edge_app.app import FrameProcessor
    from leukedge.edge_app.imaging import load_rgb
    from leukedge.edge_app.runtime import Classifier
    from leukedge.edge_app.settings import DecisionSettings, QualitySettings, RunSettings
    from leukedge.edge_app.sources import Frame
    from leukedge.edge_app.storage import ResultStore

    classifier = Classifier(model, allow_unverified=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = ResultStore(Path(folder) / "rows.sqlite")
        processor = FrameProcessor(
            classifier,
            store,
            None,
            RunSettings(mode="capture", headless=True),
            QualitySettings(),
            DecisionSettings(),
            "edge-bench review-server",
        )
        for path in image_paths:
            row, _decision, _quality = processor.process(Frame(load_rgb(path), str(path)), None)
            rows.append(row)
        store.close()
    return rows


def sample_name(number: int) -> str:
    """The ID of the `number`-th filled sample."""
    return f"B-{number:05d}"


def fill(db: Path, rows: list[dict], samples: int, per_sample: int) -> None:
    from leukedge.edge_app.storage import COLUMN_NAMES, ResultStore

    store = ResultStore(db, operator="bench", site="bench-site")
    names = COLUMN_NAMES[1:]
    insert = f"INSERT INTO results ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    connection = store.connection
    connection.execute("BEGIN")
    for number in range(samples):
        sample_id = sample_name(number)
        store.ensure_sample(sample_id)
        batch = []
        for index in range(per_sample):
            row = {**rows[(number * per_sample + index) % len(rows)], "sample_id": sample_id}
            batch.append([row.get(name) for name in names])
        connection.executemany(insert, batch)
    connection.execute("COMMIT")
    store.close()


def server_times(db: Path, requests: int, sample_id: str) -> dict:
    """Median and max of `requests` timed requests per page, plus the first (cold) one: the sample
    list caches sample results by (frame count, last frame id), so its first load computes them
    all and later loads only the samples that gained fields."""
    from leukedge.edge_app.review.server import ServerConfig, create_app

    client = create_app(ServerConfig(db)).test_client()
    for warm_up in (
        "/?page=19",
        f"/samples/{sample_name(0)}",
        "/api/samples?limit=1",
    ):  # compile templates
        client.get(warm_up)
    out = {}
    for name, path in (
        ("sample list", "/"),
        ("to-review list", "/?show=to-review"),
        ("sample page", f"/samples/{sample_id}"),
        ("api samples (all)", "/api/samples"),
    ):
        times = []
        for _ in range(requests + 1):
            start = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - start) * 1000)
            if response.status_code != 200:
                raise click.ClickException(f"{path}: HTTP {response.status_code}")
        first, times = times[0], times[1:]
        out[name] = {
            "path": path,
            "first_ms": first,
            "median_ms": statistics.median(times),
            "max_ms": max(times),
        }
    return out


def concurrent(
    db: Path, model: Path, images: Path, run_frames: int, port: int, samples: int
) -> dict:
    """A real edge-app run writing while a real HTTP server serves pages and accepts reviews
    (of the last of the `samples` filled ones; the first one's page is read)."""
    reviewed = sample_name(samples - 1)
    import logging

    from werkzeug.serving import make_server

    from leukedge.edge_app.review.server import ServerConfig, create_app

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log lines in the figures
    app = create_app(ServerConfig(db))
    errors: list[str] = []
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    out_path, err_path = db.with_suffix(".run.jsonl"), db.with_suffix(".run.log")
    out_file, err_file = (
        out_path.open("w"),
        err_path.open("w"),
    )  # files: a full pipe would stall the run
    run = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "edge-app"),
            "run",
            "--model",
            str(model),
            "--source",
            str(images),
            "--loop",
            "--max-frames",
            str(run_frames),
            "--headless",
            "--db",
            str(db),
            "--sample-id",
            "RUN-BESIDE",
            "--allow-unverified",
        ],
        stdout=out_file,
        stderr=err_file,
    )
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    pages = accepted = 0
    pages_of_run = False
    latencies: list[float] = []
    token = None
    while run.poll() is None:
        for path in (
            "/",
            "/samples/RUN-BESIDE",
            f"/samples/{sample_name(0)}",
            "/api/samples?limit=50",
        ):
            start = time.perf_counter()
            try:
                with opener.open(url + path, timeout=60) as response:
                    body = response.read()
                latencies.append((time.perf_counter() - start) * 1000)
                pages += 1
                pages_of_run = pages_of_run or path == "/samples/RUN-BESIDE"
                found = re.search(rb'name="csrf-token" content="([^"]+)"', body)
                token = found.group(1).decode() if found else token
            except urllib.error.HTTPError as error:
                if error.code == 404 and path == "/samples/RUN-BESIDE" and not pages_of_run:
                    continue  # the run has not created its sample record yet
                errors.append(f"GET {path}: HTTP {error.code} {error.read()[:200]!r}")
            except urllib.error.URLError as error:
                errors.append(f"GET {path}: {error}")
        if token:
            form = urllib.parse.urlencode(
                {
                    "csrf_token": token,
                    "action": "confirm",
                    "reviewer": "bench",
                    "reason": f"concurrency check {accepted}",
                }
            ).encode()
            try:
                with opener.open(
                    urllib.request.Request(url + f"/review/{reviewed}", data=form), timeout=60
                ):
                    accepted += 1
            except urllib.error.HTTPError as error:
                errors.append(f"POST review: HTTP {error.code} {error.read()[:200]!r}")
    run.wait()
    out_file.close()
    err_file.close()
    stdout, stderr = out_path.read_text(), err_path.read_text()
    server.shutdown()
    printed = len(stdout.splitlines())
    import sqlite3

    connection = sqlite3.connect(db)
    stored = connection.execute(
        "SELECT COUNT(*) FROM results WHERE sample_id = 'RUN-BESIDE'"
    ).fetchone()[0]
    reviews = connection.execute(
        "SELECT COUNT(*) FROM reviews WHERE sample_id = ? AND reason LIKE 'concurrency check %'",
        (reviewed,),
    ).fetchone()[0]
    connection.close()
    locked = [line for line in stderr.splitlines() + errors if "locked" in line.lower()]
    return {
        "run_exit": run.returncode,
        "run_frames_printed": printed,
        "run_frames_stored": stored,
        "pages_served": pages,
        "reviews_accepted": accepted,
        "reviews_stored": reviews,
        "errors": errors,
        "locked_messages": locked,
        "page_median_ms_under_load": statistics.median(latencies) if latencies else None,
        "run_stderr_tail": stderr.splitlines()[-3:],
    }


@click.command("review-server", epilog=EXAMPLES)
@model_option("The .tflite model for the frame rows and the run beside. Default: the released one.")
@data_option("split.csv whose test images are used. Default: models/split.csv.", exists=True)
@data_root_option(manifest_default=False)
@click.option(
    "--samples",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Samples in the generated database.",
)
@click.option(
    "--frames-per-sample",
    type=click.IntRange(1),
    default=50,
    show_default=True,
    help="Fields of each generated sample.",
)
@click.option(
    "--requests",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Timed requests per page (median reported).",
)
@click.option(
    "--run-frames",
    type=click.IntRange(10),
    default=1500,
    show_default=True,
    help="Frames the edge-app run beside the server writes.",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0: any free port."
)
@output_option("--json", "json_out", "Write every figure as JSON.")
def review_server_command(
    model, data, data_root, samples, frames_per_sample, requests, run_frames, port, json_out
) -> None:
    """Server time of the review page on a large database, and `edge-app run` writing beside it."""
    model = released_model(model)
    eval_set = released_eval_set(data, data_root, split="test")
    paths = [eval_set.data_root / s.path for s in eval_set.samples[:100]]
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "review-bench.sqlite"
        click.echo(f"classifying {len(paths)} real images for the frame rows", err=True)
        try:
            rows = real_rows(model, paths)
        except (ModelError, ImageDecodeError) as error:
            raise click.ClickException(str(error).splitlines()[0]) from None
        start = time.perf_counter()
        fill(db, rows, samples, frames_per_sample)
        click.echo(
            f"database: {samples} samples, {samples * frames_per_sample} frames "
            f"(filled in {time.perf_counter() - start:.1f} s)",
            err=True,
        )
        times = server_times(db, requests, sample_name(min(500, samples - 1)))
        images = Path(folder) / "images"
        images.mkdir()
        for path in paths[:20]:
            shutil.copy(path, images / path.name)
        click.echo(f"edge-app run writing {run_frames} frames beside the server", err=True)
        beside = concurrent(db, model, images, run_frames, port, samples)
    click.echo(
        f"server time, median (max) of {requests} requests, {samples} samples / "
        f"{samples * frames_per_sample} frames:"
    )
    for name, figures in times.items():
        verdict = (
            ""
            if name.startswith("api")
            else ("  meets <= 300 ms" if figures["median_ms"] <= GOAL_MS else "  MISSES <= 300 ms")
        )
        click.echo(
            f"  {name:18s} {figures['median_ms']:7.1f} ms (max {figures['max_ms']:.1f}, first "
            f"{figures['first_ms']:.1f}){verdict}"
        )
    lost = beside["run_frames_printed"] - beside["run_frames_stored"]
    click.echo(
        f"beside edge-app run: {beside['run_frames_stored']} of {beside['run_frames_printed']} frames "
        f"stored (run exit {beside['run_exit']}), {beside['pages_served']} pages served "
        f"(median {beside['page_median_ms_under_load'] or 0:.1f} ms client time), "
        f"{beside['reviews_stored']} of {beside['reviews_accepted']} accepted reviews stored, "
        f"{len(beside['errors'])} error(s), {len(beside['locked_messages'])} 'database is locked'"
    )
    report = {
        "samples": samples,
        "frames": samples * frames_per_sample,
        "requests": requests,
        "server_time": times,
        "beside_run": beside,
        "goal_ms": GOAL_MS,
    }
    if json_out:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
    if (
        lost
        or beside["errors"]
        or beside["locked_messages"]
        or beside["run_exit"] != 0
        or beside["reviews_stored"] != beside["reviews_accepted"]
    ):
        raise click.ClickException(
            "the server and edge-app run did not coexist cleanly (see above)"
        )
