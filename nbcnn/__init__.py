"""nbcnn: a small, fast, hackable CNN library for the CPU with Numba kernels."""

from __future__ import annotations

import os

# OpenBLAS reads this once, when numpy first loads it: a short spin timeout keeps OpenBLAS's
# idle threads from taking the cores from numba's loops between GEMMs (STYLE.md's numbers).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

__version__ = "0.1.0"

from nbcnn.layers.base import API_VERSION as PLUGIN_API_VERSION  # noqa: E402, F401 (public)


def load_model(config, input_shape=None):
    """Build the Sequential model of a YAML config (see :func:`nbcnn.model.load_model`)."""
    from nbcnn.model import load_model as _load_model

    return _load_model(config, input_shape=input_shape)
