"""The released models, shipped inside the package as `leukedge.models`.

`release_dir()` is where they are, whether LeukEdge runs from a checkout (editable install) or
from an installed wheel.
"""

from importlib.resources import files
from pathlib import Path

__all__ = ["release_dir"]


def release_dir() -> Path:
    """The folder holding the released `.tflite` files and their `manifest.json`."""
    return Path(str(files(__name__)))
