"""Layer classes by name: ``nbcnn.layers.Conv2D(32, 3, activation="relu")``.

Every registered type is an attribute here, built-in or from a plugin
(``nbcnn.layers.DepthwiseConv2D``), and :func:`get` takes the names a config's ``type`` takes
(``"nbcnn-depthwise:DepthwiseConv2D"`` too). Both go through the registry, the one door of
built-in and third-party layers, and import a layer's module on first use only: nothing here
imports numba.
"""

from __future__ import annotations

from typing import Any


def get(name: str) -> type:
    """The layer class registered as ``name``; ConfigError (with a did-you-mean, or the
    distributions that clash) when there is none or more than one."""
    from nbcnn.registry import registry

    return registry().get(name)


def __getattr__(name: str) -> Any:
    # Layer types are CamelCase. Any other name (a submodule such as `activations` that is
    # not imported yet, a dunder probed by tools) must raise AttributeError at once, so that
    # `from nbcnn.layers import activations` falls back to importing the submodule.
    if not name[:1].isupper():
        raise AttributeError(f"module 'nbcnn.layers' has no attribute {name!r}")
    from nbcnn.errors import ConfigError

    try:
        return get(name)
    except ConfigError as err:
        raise AttributeError(f"module 'nbcnn.layers' has no layer {name!r}: {err}") from None


def __dir__() -> list[str]:
    from nbcnn.registry import registry

    return sorted({*globals(), *registry().names()})
