"""Is LeukEdge running from a source checkout, and what lies beside it?

From a checkout (an editable install, or the repo on sys.path) the stage folders sit under the
repo root next to the project's pyproject.toml, and the shared data and weights may sit beside
the checkout in ../shared. From an installed wheel there is no checkout, and nothing is looked
for "beside" site-packages.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

PROJECT_NAME = "leukedge"


@cache
def checkout_root() -> Path | None:
    """The repo root when this code runs from a LeukEdge source checkout, else None.

    A checkout is recognised by what it holds, not by counting folders up from this file: the
    pyproject.toml of the project named `leukedge` next to the edge_app/ folder this module is in.
    """
    here = Path(__file__).resolve()
    root = here.parents[1]
    if here.parent != root / "edge_app":
        return None  # installed as leukedge/edge_app in site-packages: not a checkout
    pyproject = root / "pyproject.toml"
    try:
        text = pyproject.read_text()
    except OSError:
        return None
    name = re.search(r'^\s*name\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return root if name and name.group(1) == PROJECT_NAME else None


def beside_checkout(*parts: str) -> Path | None:
    """`../<parts>` relative to the checkout (e.g. shared/data/all-leukemia), None without one."""
    root = checkout_root()
    return None if root is None else root.parent.joinpath(*parts)
