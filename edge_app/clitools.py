"""Shared command-line helpers for the four LeukEdge CLIs (edge-app, edge-bench, edge-convert,
edge-train): a "did you mean" answer for mistyped subcommands, and the progress bar of long work.

Click already suggests close option names (`--variant` -> `--variants`); it does not suggest
subcommands, so `edge-app rn` only said "No such command 'rn'". Kept free of TensorFlow and of
the other stages so the Pi app can import it.
"""

from __future__ import annotations

import difflib
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm


def closest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice closest to `word` (difflib ratio >= cutoff), or None."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def unknown_command_message(word: str, choices: Iterable[str]) -> str:
    """ "No such command 'robustnes'. Did you mean 'robustness'?" plus the list of commands."""
    choices = sorted(choices)
    hint = closest(word, choices)
    text = f"No such command {word!r}."
    if hint:
        text += f" Did you mean {hint!r}?"
    return text + f" Commands: {', '.join(choices)}."


class SuggestingGroup(click.Group):
    """A click group whose unknown-subcommand error names the closest subcommand."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else None
        if name is not None and not name.startswith("-") and self.get_command(ctx, name) is None:
            ctx.fail(unknown_command_message(name, self.list_commands(ctx)))
        return super().resolve_command(ctx, args)


class DefaultCommandGroup(SuggestingGroup):
    """A group that runs `default_command` when the first argument names no subcommand.

    So `edge-bench model.tflite --runs 10` means `edge-bench run model.tflite --runs 10`, while
    `edge-bench robustness ...` still reaches the subcommand. A first word that is close to a
    subcommand's name and is not an existing path (`edge-bench robustnes`) is a typo: it gets
    "did you mean" instead of being taken for a model path.
    """

    default_command = "run"

    def _is_typo(self, ctx: click.Context, word: str) -> bool:
        if word.startswith("-") or word in self.commands or Path(word).exists():
            return False
        return closest(word, self.list_commands(ctx)) is not None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and self._is_typo(ctx, args[0]):
            word = args[0]
            folder = Path(word).parent
            near = closest(Path(word).name, os.listdir(folder)) if folder.is_dir() else None
            command = closest(word, self.list_commands(ctx))

            def likeness(other: str) -> float:
                return difflib.SequenceMatcher(None, Path(word).name, other).ratio()

            # `edge-bench modles` is a mistyped path; `edge-bench robustnes` a mistyped command.
            if near is not None and likeness(near) > likeness(command or ""):
                ctx.fail(
                    f"No such command or model {word!r}. Did you mean the path "
                    f"{str(folder / near)!r}? Commands: {', '.join(sorted(self.list_commands(ctx)))}."
                )
            ctx.fail(unknown_command_message(word, self.list_commands(ctx)))
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands:
            args = [self.default_command, *args]
        return super().resolve_command(ctx, args)


class FiniteFloat(click.FloatRange):
    """A float option that also refuses nan and inf: `float()` takes them, and a quality-gate
    limit of nan silently switches the gate off (every comparison with nan is false)."""

    name = "finite float"

    def _describe_range(self) -> str:
        # click writes "x<=None" in --help for a range with no bounds at all.
        if self.min is None and self.max is None:
            return ""
        return super()._describe_range()

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def database_files(db: Path) -> list[Path]:
    """The files SQLite keeps for `db`: the database and its journal, WAL and shared memory."""
    return [db, *(db.with_name(db.name + suffix) for suffix in ("-journal", "-wal", "-shm"))]


def refuse_clobbering(
    outputs: dict[str, Path | None],
    keep: dict[str, Path],
    keep_inside: dict[str, Path] | None = None,
) -> None:
    """A usage error when an output file would replace a file to keep (`keep`: the results
    database, a backup), land inside a folder to keep, or be written twice (two options naming
    one path: the second write would replace the first)."""
    seen: dict[Path, str] = {}
    protected = {Path(os.path.realpath(path)): name for name, path in keep.items()}
    folders = {Path(os.path.realpath(path)): name for name, path in (keep_inside or {}).items()}
    for option, path in outputs.items():
        if path is None:
            continue
        real = Path(os.path.realpath(path))
        if real in protected:
            raise click.UsageError(
                f"{option} {path}: is {protected[real]}, which this would overwrite; "
                "give another file name"
            )
        inside = next(
            (name for folder, name in folders.items() if real.is_relative_to(folder)), None
        )
        if inside:
            raise click.UsageError(f"{option} {path}: is inside {inside}; give another file name")
        if real in seen:
            raise click.UsageError(
                f"{option} {path}: {seen[real]} writes the same file; give each its own name"
            )
        seen[real] = option


def db_option(function):
    """`--db`, the results database, as every edge-app command that reads one takes it."""
    return click.option(
        "--db",
        "db_path",
        type=click.Path(path_type=Path),
        required=True,
        help="The results database written by edge-app run.",
    )(function)


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    unit: str,
    total: int | None = None,
    enabled: bool = True,
    leave: bool = True,
) -> tqdm:
    """The progress bar of every LeukEdge command, on stderr.

    On a terminal it redraws ten times a second. Redirected to a file or a CI log, each redraw is
    kept, so there it redraws every 15 s (a thousand-image calibration was a thousand copies of
    the bar on one line): logs still show that long work moves, and its final count and time.
    """
    return tqdm(
        iterable,
        desc=desc,
        unit=unit,
        total=total,
        file=sys.stderr,
        disable=not enabled,
        mininterval=0.1 if sys.stderr.isatty() else 15.0,
        dynamic_ncols=True,
        leave=leave,
    )
