"""Stage 3: the on-device runtime and Raspberry Pi app (`edge-app`). Never imports TensorFlow."""

from importlib.metadata import PackageNotFoundError, version


def leukedge_version() -> str:
    """The installed LeukEdge version; "unknown" when run from a source tree without install."""
    try:
        return version("leukedge")
    except PackageNotFoundError:
        return "unknown"
