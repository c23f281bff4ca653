"""Command-line options and checks shared by the edge-bench commands.

One definition per option that means the same in every command (the MODELS argument, --data,
--data-root, --split, --limit-per-class, --threads, the --json/--csv/--markdown/--plot output
files, --model), so their types, ranges and defaults cannot drift apart between commands. The
help text stays a parameter where it says something specific to the command (what --data
defaults to, what --json holds).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from leukedge.benchmarks.evaluation import EvalSet, resolve_eval_set
from leukedge.edge_app.files import cannot_write_in
from leukedge.edge_app.runtime import default_model_path
from leukedge.edge_app.settings import MAX_THREADS
from leukedge.models import release_dir
from leukedge.train.dataset import DatasetError

# What click.option and click.argument return: applied to a command function, it adds the option.
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

DATASET_DEFAULT = "$LEUKEDGE_DATA / ../shared/data/all-leukemia"


class ThreadCounts(click.ParamType):
    """A comma-separated list of positive thread counts: 1,2,4."""

    name = "N[,N...]"

    def convert(self, value, param, ctx) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        parts = [part.strip() for part in str(value).split(",")]
        if not all(part.isdigit() and 0 < int(part) <= MAX_THREADS for part in parts):
            self.fail(
                f"{value!r} is not a comma-separated list of thread counts from 1 to "
                f"{MAX_THREADS}, e.g. 1,2,4",
                param,
                ctx,
            )
        return tuple(dict.fromkeys(int(part) for part in parts))


def default_threads() -> str:
    """1 and the core count (at most 4): the two settings worth comparing on a Pi."""
    return ",".join(str(n) for n in dict.fromkeys((1, min(4, os.cpu_count() or 1))))


# --- models and data --------------------------------------------------------------------------


def models_argument() -> Decorator:
    """MODELS...: .tflite/.keras files or edge-convert folders (benchmarks.models resolves them)."""
    return click.argument("models", nargs=-1, type=click.Path(path_type=Path))


def model_option(help: str, *, exists: bool = True) -> Decorator:
    """--model: one .tflite file; None means the released model (see `released_model`)."""
    return click.option(
        "--model",
        type=click.Path(exists=exists, dir_okay=False, path_type=Path),
        default=None,
        help=help,
    )


def data_option(help: str, *, exists: bool = False) -> Decorator:
    """--data: a dataset folder of class folders or a split.csv (benchmarks.evaluation).

    `exists=True` lets click refuse a missing path at parse time; without it the command's
    resolve_eval_set says so in its own words.
    """
    return click.option(
        "--data", type=click.Path(exists=exists, path_type=Path), default=None, help=help
    )


def data_root_option(*, manifest_default: bool) -> Decorator:
    """--data-root: where split.csv paths are resolved.

    `manifest_default` for commands that take MODELS: there the data_dir of the manifest beside
    the models comes first (resolve_eval_set); commands on the released model go straight to the
    dataset default.
    """
    first = "the manifest's data_dir, else " if manifest_default else ""
    return click.option(
        "--data-root",
        type=click.Path(path_type=Path),
        default=None,
        help=f"Where split.csv paths are resolved. Default: {first}{DATASET_DEFAULT}.",
    )


def split_option(help: str) -> Decorator:
    """--split: which rows of a split.csv (the test rows unless told)."""
    return click.option(
        "--split",
        default="test",
        show_default=True,
        type=click.Choice(["train", "val", "test"]),
        help=help,
    )


def limit_per_class_option(help: str) -> Decorator:
    """--limit-per-class N: only the first N labelled images per class."""
    return click.option("--limit-per-class", type=click.IntRange(min=1), default=None, help=help)


# --- threads ----------------------------------------------------------------------------------


def thread_counts_option(help: str | None = None) -> Decorator:
    """--threads 1,2,4: one measurement per count (the speed commands compare them)."""
    return click.option(
        "--threads", type=ThreadCounts(), default=default_threads(), show_default=True, help=help
    )


def threads_option(help: str) -> Decorator:
    """--threads N: one interpreter thread count (1 to MAX_THREADS, as edge-app takes it);
    None leaves the Classifier's min(4, cores)."""
    return click.option(
        "--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None, help=help
    )


# --- output files -----------------------------------------------------------------------------


def _folder_must_exist(ctx: click.Context, param: click.Parameter, path: Path | None):
    """Refuse an output file that could not be written, before minutes of measuring."""
    if path is None:
        return None
    hint = param.opts[0]
    # Only reached for types with dir_okay=True: click itself refuses a folder otherwise.
    if path.is_dir():
        raise click.BadParameter(f"{path} is a folder: give a file name", param_hint=hint)
    if not path.parent.is_dir():
        raise click.BadParameter(
            f"folder {path.parent} does not exist: create it first", param_hint=hint
        )
    reason = cannot_write_in(path.parent)
    if reason is None and path.exists() and not os.access(path, os.W_OK):
        reason = "the file is read-only"
    if reason:
        raise click.BadParameter(f"cannot write {path} ({reason})", param_hint=hint)
    return path


def output_option(
    flag: str,
    dest: str,
    help: str | None = None,
    *,
    dir_okay: bool = False,
) -> Decorator:
    """An output file option (--json, --csv, --markdown, --plot, ...) stored as `dest`.

    It refuses at parse time a folder name or a file in a missing folder, so a long
    run does not end in a traceback. `dir_okay=True` lets that check, rather than click, word the
    error for an existing folder ("is a folder: give a file name").
    """
    return click.option(
        flag,
        dest,
        type=click.Path(dir_okay=dir_okay, path_type=Path),
        default=None,
        callback=_folder_must_exist,
        help=help,
    )


# --- the released model and its split --------------------------------------------------------


def released_model(model: Path | None) -> Path:
    """`model`, else the released int8 model; a one-line click error when there is none."""
    model = model or default_model_path()
    if model is None:
        raise click.ClickException("no --model given and no released model: pass --model")
    return Path(model)


def released_eval_set(
    data: Path | None,
    data_root: Path | None,
    split: str = "test",
    limit_per_class: int | None = None,
) -> EvalSet:
    """The `split` rows of `data`, else of the released split.csv; DatasetError as a click error."""
    try:
        return resolve_eval_set(
            data or release_dir() / "split.csv",
            split=split,
            data_root=data_root,
            limit_per_class=limit_per_class,
        )
    except DatasetError as error:
        raise click.ClickException(str(error)) from None
