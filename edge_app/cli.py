"""`edge-app`: classify blood-smear frames on a Raspberry Pi microscope, keep every result.

Research and screening aid, not a diagnostic device.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from leukedge.edge_app.clitools import (
    FiniteFloat,
    SuggestingGroup,
    database_files,
    db_option,
    refuse_clobbering,
)
from leukedge.edge_app.settings import (
    DISCLAIMER,
    MAX_THREADS,
    CameraSettings,
    DecisionSettings,
    QualitySettings,
    RunSettings,
)

log = logging.getLogger("leukedge.edge_app")
Q, D, C = QualitySettings(), DecisionSettings(), CameraSettings()


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)  # stdout is kept for results (JSON lines)
    handler.setFormatter(logging.Formatter("edge-app: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def parse_size(_ctx, param, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        width, height = (int(part) for part in value.lower().split("x"))
        if width <= 0 or height <= 0:
            raise ValueError
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: expected WIDTHxHEIGHT, e.g. 1280x960", param=param
        ) from None
    return width, height


def parse_gains(_ctx, param, value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        red, blue = (float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: expected RED,BLUE gains, e.g. 1.8,1.5", param=param
        ) from None
    return red, blue


HELP = f"""Classify blood-smear frames on device and keep every result.

\b
{DISCLAIMER}

\b
Examples:
  edge-app run --source picamera2 --db results.sqlite --save-dir frames
  edge-app run --source slides/ --headless > results.jsonl
  edge-app run --source 0 --mode capture --sample-id S-0042
  edge-app export --db results.sqlite --csv results.csv
  edge-app serve --db results.sqlite --save-dir frames
  edge-app report S-0042 --db results.sqlite --out S-0042.pdf
  edge-app backup --db results.sqlite --save-dir frames --to /media/pi/BACKUP

The app's per-frame cost is measured by `edge-bench app` (benchmarks).
"""


@click.group(
    cls=SuggestingGroup, help=HELP, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(package_name="leukedge", prog_name="edge-app")
def main() -> None:
    pass


@main.command(epilog=DISCLAIMER)
@click.option(
    "--model",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The .tflite model. Default: $LEUKEDGE_MODEL, else the released int8 model in models/.",
)
@click.option(
    "--source",
    required=True,
    help="picamera2[:N], a camera index (0) or /dev/videoN, a video file, a stream URL, "
    "an image file, a folder or a quoted glob ('slides/*.png').",
)
@click.option(
    "--headless",
    is_flag=True,
    help="No window; stdout gets exactly one JSON object per processed frame (logs go to stderr).",
)
@click.option(
    "--db",
    "db_path",
    type=click.Path(path_type=Path),
    default=Path("results.sqlite"),
    show_default=True,
    help="SQLite results database (WAL mode, created 0600).",
)
@click.option(
    "--save-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Save frames here (atomically, owner-only) by --save-policy and record their paths.",
)
@click.option(
    "--save-policy",
    type=click.Choice(["changes", "all"]),
    default="changes",
    show_default=True,
    help="changes: from a camera, at most one classified frame per --save-every seconds "
    "(answered frames, and uncertain/unknown ones when the answer changed); every "
    "image file and every capture is saved. all: every processed frame.",
)
@click.option(
    "--save-every",
    "save_every_s",
    type=FiniteFloat(),
    default=10.0,
    show_default=True,
    help="Seconds between saved frames of a camera stream (changes policy).",
)
@click.option(
    "--max-disk-mb",
    type=FiniteFloat(),
    default=None,
    help="Keep saved images within this many MB: the oldest are deleted first, never those "
    "of samples awaiting review. Rows are never deleted.",
)
@click.option(
    "--keep-days",
    type=FiniteFloat(),
    default=None,
    help="Delete saved images older than this many days (not those awaiting review).",
)
@click.option(
    "--min-free-mb",
    type=FiniteFloat(),
    default=256.0,
    show_default=True,
    help="Stop saving images (results are still stored) while the save disk has less free space.",
)
@click.option(
    "--rate",
    type=FiniteFloat(0, min_open=True),
    default=None,
    help="Live mode: classify at most this many frames per second (0.5: one every 2 s). "
    "Default: every frame the source gives.",
)
@click.option(
    "--image-format",
    type=click.Choice(["jpg", "png"]),
    default="jpg",
    show_default=True,
    help="Format of saved frames (jpg at quality 95, or lossless png).",
)
@click.option(
    "--mode",
    type=click.Choice(["live", "capture"]),
    default="live",
    show_default=True,
    help="live: classify every frame. capture: on a trigger (sample ID + Enter on stdin, "
    "Enter again, SIGUSR1, or c in the preview).",
)
@click.option(
    "--sample-id",
    default=None,
    help="Sample ID: frames are filed under this sample (record created/updated).",
)
@click.option(
    "--operator", default=None, help="Sample field: who captured the sample (stored on its record)."
)
@click.option(
    "--site", default=None, help="Sample field: where the sample was captured (clinic, lab)."
)
@click.option(
    "--min-confidence",
    type=FiniteFloat(0.0, 1.0),
    default=None,
    help="Override: answer when the top probability reaches this, instead of the model's "
    "conformal rule (the OOD check still applies). Default: the rule the model carries "
    "(older models without trust parameters: 0.80).",
)
@click.option(
    "--smooth",
    type=click.IntRange(1, 100),
    default=D.smoothing,
    show_default=True,
    help="Live mode: average probabilities over the last N classified frames.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, MAX_THREADS),
    default=None,
    help="Interpreter threads (default: CPU cores, at most 4).",
)
@click.option(
    "--runtime",
    type=click.Choice(["ai-edge-litert", "tflite-runtime", "tensorflow"]),
    default=None,
    help="Force one TFLite runtime (default: the first importable).",
)
@click.option(
    "--allow-unverified",
    is_flag=True,
    help="Run a model no manifest vouches for (changed, failed its conversion check, unlisted "
    "or renamed); every result is then stored with model_verified = 0.",
)
@click.option(
    "--crop",
    "crop_fraction",
    type=FiniteFloat(0.05, 1.0),
    default=1.0,
    show_default=True,
    help="Centre square crop as a fraction of the shorter frame side (the ROI classified).",
)
@click.option(
    "--max-frames", type=click.IntRange(1), default=None, help="Stop after N processed frames."
)
@click.option("--loop", is_flag=True, help="Replay an image file/folder/glob source forever.")
@click.option(
    "--preview/--no-preview",
    default=None,
    help="Show a window (default: when a display and GUI OpenCV exist).",
)
@click.option(
    "--camera-size",
    callback=parse_size,
    default=None,
    help=f"Camera frame size WIDTHxHEIGHT [default: {C.size[0]}x{C.size[1]}].",
)
@click.option(
    "--camera-stream",
    type=click.Choice(["main", "lores"]),
    default=C.stream,
    show_default=True,
    help="picamera2: classify the main stream, or the lores one (main is saved).",
)
@click.option(
    "--lores-size",
    callback=parse_size,
    default=None,
    help=f"picamera2 lores size [default: {C.lores_size[0]}x{C.lores_size[1]}].",
)
@click.option(
    "--lores-format",
    type=click.Choice(["YUV420", "RGB888"]),
    default=C.lores_format,
    show_default=True,
    help="picamera2 lores format (Pi 4: YUV420 only; Pi 5: either).",
)
@click.option(
    "--exposure-us",
    type=click.IntRange(1),
    default=None,
    help="picamera2: fixed exposure time in microseconds (turns auto exposure off).",
)
@click.option("--gain", type=FiniteFloat(1.0, 64.0), default=None, help="picamera2: analogue gain.")
@click.option(
    "--colour-gains",
    callback=parse_gains,
    default=None,
    help="picamera2: fixed white balance RED,BLUE gains (turns auto white balance off).",
)
@click.option(
    "--camera-retry-s",
    type=FiniteFloat(0.0),
    default=C.retry_for_s,
    show_default=True,
    help="Keep retrying a failing camera this many seconds, then exit with status 1.",
)
@click.option(
    "--focus-min",
    type=FiniteFloat(0.0),
    default=Q.focus_min,
    show_default=True,
    help="Quality gate: minimum focus (Laplacian variance after a light denoise).",
)
@click.option(
    "--dark-mean",
    type=FiniteFloat(0.0, 255.0),
    default=Q.dark_mean,
    show_default=True,
    help="Quality gate: mean grey below this is too dark.",
)
@click.option(
    "--bright-mean",
    type=FiniteFloat(0.0, 255.0),
    default=Q.bright_mean,
    show_default=True,
    help="Quality gate: mean grey above this is too bright.",
)
@click.option(
    "--clipped-max",
    type=FiniteFloat(0.0, 1.0),
    default=Q.clipped_max,
    show_default=True,
    help="Quality gate: maximum fraction of saturated pixels.",
)
@click.option(
    "--empty-contrast",
    type=FiniteFloat(0.0),
    default=Q.empty_contrast,
    show_default=True,
    help="Quality gate: contrast below this is an empty field.",
)
@click.option(
    "--db-sync",
    type=click.Choice(["normal", "full"]),
    default="normal",
    show_default=True,
    help="SQLite synchronous level: normal survives app crashes; full also power cuts (slower).",
)
@click.option("-v", "--verbose", is_flag=True, help="More log lines on stderr.")
def run(
    model,
    source,
    headless,
    db_path,
    save_dir,
    save_policy,
    save_every_s,
    max_disk_mb,
    keep_days,
    min_free_mb,
    rate,
    image_format,
    mode,
    sample_id,
    operator,
    site,
    min_confidence,
    smooth,
    threads,
    runtime,
    allow_unverified,
    crop_fraction,
    max_frames,
    loop,
    preview,
    camera_size,
    camera_stream,
    lores_size,
    lores_format,
    exposure_us,
    gain,
    colour_gains,
    camera_retry_s,
    focus_min,
    dark_mean,
    bright_mean,
    clipped_max,
    empty_contrast,
    db_sync,
    verbose,
) -> None:
    """Classify frames from a camera, video or images and store every result.

    \b
    Examples:
      edge-app run --source picamera2 --save-dir ~/leukedge/frames
      edge-app run --source picamera2 --headless --rate 0.5 --save-dir frames --max-disk-mb 4000 --keep-days 90
      edge-app run --source picamera2 --camera-stream lores --headless
      edge-app run --source /dev/video0 --mode capture
      edge-app run --model models/model_int8.tflite --source 'slides/*.jpg' --headless
    """
    setup_logging(verbose)
    from leukedge.edge_app.budget import SaveSettings, check_budget_options, open_saver

    try:
        check_budget_options(max_disk_mb, keep_days, save_every_s, min_free_mb)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    if save_dir is None and (max_disk_mb is not None or keep_days is not None):
        raise click.UsageError("--max-disk-mb and --keep-days limit saved images: add --save-dir")
    if not source.strip():  # an empty path would read the working folder, saved frames and all
        raise click.BadParameter(
            "is empty: give picamera2, a camera index, a file, a folder or a glob",
            param_hint="--source",
        )
    from leukedge.edge_app.storage import sample_id_problem

    if sample_id is not None and (problem := sample_id_problem(sample_id)):
        raise click.BadParameter(problem, param_hint="--sample-id")
    if dark_mean >= bright_mean:
        raise click.BadParameter(
            f"{dark_mean:g} is not below {bright_mean:g}: every frame would be unfit; give a "
            "dark limit below the bright one",
            param_hint="--dark-mean/--bright-mean",
        )
    log.info(DISCLAIMER)
    from leukedge.edge_app.app import App, AppError, FrameProcessor
    from leukedge.edge_app.runtime import RELEASED_MODEL, Classifier, ModelError, default_model_path
    from leukedge.edge_app.sources import SourceError, check_source, open_source
    from leukedge.edge_app.storage import ResultStore, StorageError

    settings = RunSettings(
        mode=mode,
        sample_id=sample_id,
        crop_fraction=crop_fraction,
        headless=headless,
        preview=False if headless else preview,
        max_frames=max_frames,
        loop=loop,
        image_format=image_format,
    )
    camera = CameraSettings(
        size=camera_size or C.size,
        stream=camera_stream,
        lores_size=lores_size or C.lores_size,
        lores_format=lores_format,
        exposure_us=exposure_us,
        analogue_gain=gain,
        colour_gains=colour_gains,
        retry_for_s=camera_retry_s,
    )
    quality = QualitySettings(
        focus_min=focus_min,
        dark_mean=dark_mean,
        bright_mean=bright_mean,
        clipped_max=clipped_max,
        empty_contrast=empty_contrast,
    )
    decisions = DecisionSettings(min_confidence=min_confidence, smoothing=smooth)
    try:
        check_source(source)  # before the model loads and the database is created
    except SourceError as error:
        raise click.ClickException(str(error)) from None
    model = model or default_model_path()
    if model is None:
        raise click.ClickException(
            f"no --model given and no released model at {RELEASED_MODEL}: "
            "pass --model path/to/model_int8.tflite (written by edge-convert)"
        )
    try:
        classifier = Classifier(
            model, threads=threads, allow_unverified=allow_unverified, runtime=runtime
        )
    except ModelError as error:
        raise click.ClickException(str(error)) from None
    log.info("model %s", classifier.describe())
    log_decision_rule(classifier, min_confidence)
    if not classifier.verified:
        log.warning(
            "warning: %s is not verified (--allow-unverified): every result is stored with "
            "model_verified = 0",
            classifier.path.name,
        )
    store = None
    try:
        store = ResultStore(db_path, synchronous=db_sync.upper(), operator=operator, site=site)
        if sample_id:
            store.ensure_sample(sample_id)
        saver = (
            None
            if save_dir is None
            else open_saver(
                save_dir,
                image_format,
                SaveSettings(save_policy, save_every_s, max_disk_mb, keep_days, min_free_mb),
                store.connection,
            )
        )
        writer = None if saver is None else saver.writer
        if crop_fraction * min(
            camera.lores_size if camera.stream == "lores" else camera.size
        ) < classifier.image_size and source.startswith("picamera2"):
            log.warning(
                "warning: the camera crop is smaller than the model input (%d px): frames are upscaled",
                classifier.image_size,
            )
        processor = FrameProcessor(classifier, store, writer, settings, quality, decisions, source)
        processor.saver = saver
        app = App(lambda: open_source(source, camera, loop), processor, settings, camera)
        app.interval_s = 1.0 / rate if rate else 0.0
        counts = app.run()
    except (SourceError, StorageError, AppError) as error:
        if store is not None and store.connection is not None:
            log.info("%d result(s) stored in %s are intact", store.count(), db_path)
        raise click.ClickException(str(error)) from None
    finally:
        if store is not None:
            store.close()
    log.info("%s; results in %s", counts.summary(), db_path)
    if counts.processed == 0 and counts.skipped:
        # A script must not read "done" from a run that classified nothing.
        raise click.ClickException(
            f"--source {source}: none of its {counts.skipped} image(s) could be read "
            "(see the warnings above)"
        )
    if save_dir is not None:
        log.info(
            saver.summary()
            if saver is not None
            else f"no images saved: --save-dir {save_dir} "
            "could not take them (see the warning above)"
        )


def log_decision_rule(classifier, min_confidence: float | None) -> None:
    """Say at start-up which rule will decide (stored with every frame as decision_rule)."""
    from leukedge.edge_app.decision import DecisionRule

    rule = DecisionRule.for_model(classifier.trust, min_confidence)
    if rule.legacy and min_confidence is None:
        log.warning(
            "warning: %s carries no trust parameters (an older release): no out-of-distribution "
            "check, answers on the legacy rule top probability >= %.2f; convert it again with "
            "edge-convert for calibrated, conformal referral",
            classifier.path.name,
            rule.min_confidence,
        )
    elif rule.trust is not None:
        ood, conformal = classifier.trust.ood, classifier.trust.conformal
        log.info(
            "decision rule: %s (OOD threshold %.4g keeps %.3g%% of validation frames; conformal "
            "threshold %.4g, target coverage %.3g%%)",
            rule.text,
            ood.threshold,
            100 * ood.retention,
            conformal.threshold,
            100 * conformal.target_coverage,
        )
    else:
        log.info("decision rule: %s", rule.text)


@main.command()
@db_option
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Frames CSV file to write (owner-only; one p_<label> column per class).",
)
@click.option(
    "--samples-csv",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Samples CSV: one row per sample with its result, status and last review.",
)
@click.option(
    "--samples-json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Samples JSON: every sample with its result and full review history.",
)
def export(
    db_path: Path, csv_path: Path | None, samples_csv: Path | None, samples_json: Path | None
) -> None:
    """Export stored frames (CSV) and samples with results and reviews (CSV, JSON).

    \b
    Examples:
      edge-app export --db results.sqlite --csv results.csv
      edge-app export --db results.sqlite --samples-csv samples.csv --samples-json samples.json
    """
    from leukedge.edge_app.storage import StorageError, export_csv

    if not (csv_path or samples_csv or samples_json):
        raise click.UsageError("nothing to export: pass --csv, --samples-csv and/or --samples-json")
    refuse_clobbering(
        {"--csv": csv_path, "--samples-csv": samples_csv, "--samples-json": samples_json},
        {f"the database ({path.name})": path for path in database_files(db_path)},
    )
    try:
        if csv_path is not None:
            count = export_csv(db_path, csv_path)
            click.echo(
                f"edge-app: exported {count} result(s) from {db_path} to {csv_path}", err=True
            )
        if samples_csv or samples_json:
            from leukedge.edge_app.review.report import export_samples
            from leukedge.edge_app.storage import connect

            connection = connect(db_path)
            try:
                count = export_samples(connection, samples_csv, samples_json)
            finally:
                connection.close()
            written = " and ".join(str(path) for path in (samples_csv, samples_json) if path)
            click.echo(
                f"edge-app: exported {count} sample(s) from {db_path} to {written}", err=True
            )
    except StorageError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@db_option
@click.option(
    "--to",
    "destination",
    type=click.Path(path_type=Path),
    required=True,
    help="An existing folder on another disk (a mounted USB stick). Gets results.sqlite and "
    "frames/; an earlier backup there is updated.",
)
@click.option(
    "--save-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The --save-dir of edge-app run: its images are copied too (new ones only).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the summary as JSON to this file (for scripts and cron jobs).",
)
def backup(db_path: Path, destination: Path, save_dir: Path | None, json_out: Path | None) -> None:
    """Back up results and field images to another disk, safe while edge-app run writes.

    The database copy is a consistent snapshot, checked before it replaces the previous backup;
    images are copied when new or changed and never deleted from the backup (images the storage
    budget prunes on the Pi stay there). Review from a backup on any computer with
    `edge-app serve --db BACKUP/results.sqlite --save-dir BACKUP/frames`.

    \b
    Examples:
      edge-app backup --db results.sqlite --save-dir frames --to /media/pi/BACKUP
      edge-app backup --db results.sqlite --to /mnt/share/clinic-3 --json backup.json
    """
    import json

    from leukedge.edge_app.backup import DATABASE_NAME, IMAGES_NAME
    from leukedge.edge_app.backup import backup as run_backup
    from leukedge.edge_app.clitools import progress_bar
    from leukedge.edge_app.files import write_atomic
    from leukedge.edge_app.storage import StorageError

    refuse_clobbering(
        {"--json": json_out},
        {
            **{f"the database ({path.name})": path for path in database_files(db_path)},
            **{
                f"the backup ({path.name})": path
                for path in database_files(destination / DATABASE_NAME)
            },
        },
        {
            "the backup's images": destination / IMAGES_NAME,
            **({"--save-dir": save_dir} if save_dir is not None else {}),
        },
    )
    if json_out is not None and not json_out.parent.is_dir():
        raise click.ClickException(f"--json {json_out}: folder {json_out.parent} does not exist")
    try:
        summary = run_backup(
            db_path,
            destination,
            save_dir,
            lambda items: progress_bar(items, desc="copy images", unit="img"),
        )
    except StorageError as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"edge-app: backed up {summary.frames} frame(s), {summary.samples} sample(s), "
        f"{summary.reviews} review(s) to {summary.database} (integrity {summary.integrity}); "
        f"images: {summary.images_copied} copied ({summary.bytes_copied / 1e6:.1f} MB), "
        f"{summary.images_present} already there; {summary.seconds:.1f} s",
        err=True,
    )
    if json_out is not None:
        try:
            write_atomic(json_out, (json.dumps(summary.as_dict(), indent=2) + "\n").encode())
        except OSError as error:
            raise click.ClickException(
                f"--json {json_out}: cannot write ({error.strerror}); the backup itself is done"
            ) from None


def _register_review_commands() -> None:
    from leukedge.edge_app.review.commands import register

    register(main)


_register_review_commands()
