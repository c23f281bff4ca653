"""Lazy public surfaces for the stage packages' `__init__.py`.

`import leukedge.convert` must not pull in TensorFlow, nor `import leukedge.edge_app` OpenCV and
the TFLite runtime: each name a facade exports is imported from its module on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict | None = None
) -> tuple[Callable, Callable]:
    """(__getattr__, __dir__) for a package exporting `name -> module` lazily; `namespace` is the
    package's globals(), so dir() lists what is already defined there too."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(namespace or ()))

    return __getattr__, __dir__
