"""Stage 3, and the TensorFlow-free runtime core every stage builds on (`edge-app`).

The bottom layer: it never imports TensorFlow nor another stage (tests/test_layering.py). Its
contracts (the manifest, the trust parameters, the model verification) are shared by convert,
the release and the benchmarks. Names below are imported on first use.
"""

from importlib.metadata import PackageNotFoundError, version

from leukedge.edge_app.facade import lazy_exports

_EXPORTS = {
    # the model runtime
    "Classifier": "leukedge.edge_app.runtime",
    "ModelError": "leukedge.edge_app.runtime",
    "default_model_path": "leukedge.edge_app.runtime",
    "RELEASED_MODEL": "leukedge.edge_app.runtime",
    # contracts
    "Manifest": "leukedge.edge_app.manifest",
    "VariantEntry": "leukedge.edge_app.manifest",
    "ManifestError": "leukedge.edge_app.manifest",
    "TrustParams": "leukedge.edge_app.trust",
    "ModelMetadata": "leukedge.edge_app.metadata",
    # the app
    "App": "leukedge.edge_app.app",
    "FrameProcessor": "leukedge.edge_app.app",
    "ResultStore": "leukedge.edge_app.storage",
    "assess": "leukedge.edge_app.quality",
    "decide": "leukedge.edge_app.decision",
    "open_source": "leukedge.edge_app.sources",
}
__all__ = ["leukedge_version", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


def leukedge_version() -> str:
    """The installed LeukEdge version; "unknown" when run from a source tree without install."""
    try:
        return version("leukedge")
    except PackageNotFoundError:
        return "unknown"
