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
    """Build the Sequential model of a YAML config (see :func:`nbcnn.model.load_model`)."""
    from nbcnn.model import load_model as _load_model

    return _load_model(config, input_shape=input_shape)


def fit_config(config, **kwargs):
    """Train a YAML config as ``nbcnn train`` does; returns ``(model, history)`` (see
    :func:`nbcnn.prepare.fit_config` for the overrides)."""
    from nbcnn.prepare import fit_config as _fit_config

    return _fit_config(config, **kwargs)
