"""nbcnn: a small, fast, hackable CNN library for the CPU with Numba kernels."""

from __future__ import annotations

import os
import sys

# OpenBLAS reads this once, when numpy first loads it: a short spin timeout keeps OpenBLAS's
# idle threads from taking the cores from numba's loops between GEMMs (STYLE.md's numbers; a
# seed convnet training step measured 10% slower without it). A program that imports numpy
# before nbcnn comes too late for it; ``nbcnn.kernels._jit.threading_info()`` then says so.
_OPENBLAS_TIMEOUT_APPLIED = "OPENBLAS_THREAD_TIMEOUT" in os.environ or "numpy" not in sys.modules
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

__version__ = "0.1.0"

from nbcnn.layers.base import API_VERSION as PLUGIN_API_VERSION  # noqa: E402, F401 (public)


def load_model(config, input_shape=None):
    """Build the Sequential model of a YAML config file or a config dict (see
    :func:`nbcnn.model.load_model`)."""
    from nbcnn.model import load_model as _load_model

    return _load_model(config, input_shape=input_shape)


#: The Keras-like API, imported on first use so that ``import nbcnn`` stays light (and
#: ``nbcnn summary`` free of numba): name -> module that defines it.
_LAZY = {
    "Sequential": "nbcnn.model",
    "from_config": "nbcnn.model",
    "model_from_yaml": "nbcnn.model",
    "callbacks": None,  # the submodule nbcnn.callbacks itself
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'nbcnn' has no attribute {name!r}")
    import importlib

    if _LAZY[name] is None:
        return importlib.import_module(f"nbcnn.{name}")
    return getattr(importlib.import_module(_LAZY[name]), name)


def fit_config(config, **kwargs):
    """Train a YAML config as ``nbcnn train`` does; returns ``(model, history)`` (see
    :func:`nbcnn.prepare.fit_config` for the overrides)."""
    from nbcnn.prepare import fit_config as _fit_config

    return _fit_config(config, **kwargs)
