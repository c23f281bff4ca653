"""Stage 2: convert a trained Keras model to verified TFLite variants (`edge-convert`), and build
the release folder from finished runs (`leukedge.convert.release`, `scripts/release`).

TensorFlow is imported only when `convert` or the release `build` runs (names load on first use).
"""

from leukedge.edge_app.facade import lazy_exports

_EXPORTS = {
    "ConvertConfig": "leukedge.convert.conversion",
    "ConversionError": "leukedge.convert.conversion",
    "convert": "leukedge.convert.conversion",
    "ReleaseError": "leukedge.convert.release",
    "build": "leukedge.convert.release",
    "conversion_report": "leukedge.convert.report",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
