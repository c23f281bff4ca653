"""Command-line parameter types shared by the edge-bench commands."""

from __future__ import annotations

import os

import click


class ThreadCounts(click.ParamType):
    """A comma-separated list of positive thread counts: 1,2,4."""

    name = "N[,N...]"

    def convert(self, value, param, ctx) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        parts = [part.strip() for part in str(value).split(",")]
        if not all(part.isdigit() and int(part) > 0 for part in parts):
            self.fail(
                f"{value!r} is not a comma-separated list of positive integers, e.g. 1,2,4",
                param,
                ctx,
            )
        return tuple(dict.fromkeys(int(part) for part in parts))


def default_threads() -> str:
    """1 and the core count (at most 4): the two settings worth comparing on a Pi."""
    return ",".join(str(n) for n in dict.fromkeys((1, min(4, os.cpu_count() or 1))))
