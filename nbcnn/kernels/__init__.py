"""nbcnn's public kernel API: what a plugin's numba kernels may build on (docs/plugins.md,
"Kernels for your layer: nbcnn.kernels").

Every name in ``__all__`` is a re-export of the module that defines it, loaded on first use:
importing ``nbcnn.kernels`` imports neither numba nor numpy, so a layer module may import it
at module level and ``nbcnn summary``/``nbcnn layers`` stay free of numba. The modules
starting with ``_`` (``_jit``, ``_checks``) and the kernel modules (``conv``, ``engine``,
``microkernel``...) are nbcnn's internals and may change in any minor release; these names
keep their signatures and array contracts for a plugin API version.

Arrays are float32, C-contiguous, in Keras's channels-last layout: x (N, H, W, C),
w (KH, KW, C, F), b (F,), y and dy (N, OH, OW, F).

- ``kernel``: the decorator of a kernel with a ``numba.prange`` loop (``numba.njit`` with
  ``cache``, ``parallel``, ``nogil``, ``fastmath`` off; numba's OpenMP threading layer,
  ``workqueue`` with ``NBCNN_CONV=blas``).
- ``set_threads``, ``threading_info``: the threads numba's loops and the BLAS pools run on.
- ``float32_array``, ``same_shape``, ``conv_geometry``: the argument checks to run in a
  kernel's public wrapper before allocating its output (the numba loops do no bounds checks).
- ``conv2d_forward``, ``conv2d_backward``: nbcnn's 2-D convolution, on the backend that
  ``conv_backend`` names (``NBCNN_CONV``: ``engine``, the default, or ``blas``).
"""

from __future__ import annotations

import importlib

__all__ = [
    "kernel",
    "set_threads",
    "threading_info",
    "float32_array",
    "same_shape",
    "conv_geometry",
    "conv2d_forward",
    "conv2d_backward",
    "conv_backend",
]

#: public name -> (module that defines it, its name there)
_SOURCES = {
    "kernel": ("nbcnn.kernels._jit", "kernel"),
    "set_threads": ("nbcnn.kernels._jit", "set_threads"),
    "threading_info": ("nbcnn.kernels._jit", "threading_info"),
    "float32_array": ("nbcnn.kernels._checks", "float32_array"),
    "same_shape": ("nbcnn.kernels._checks", "same_shape"),
    "conv_geometry": ("nbcnn.kernels._checks", "conv_geometry"),
    "conv2d_forward": ("nbcnn.kernels.conv", "conv2d_forward"),
    "conv2d_backward": ("nbcnn.kernels.conv", "conv2d_backward"),
    "conv_backend": ("nbcnn.kernels.engine", "backend"),
}


def __getattr__(name):
    if name not in _SOURCES:
        raise AttributeError(f"module 'nbcnn.kernels' has no attribute {name!r}")
    module, attribute = _SOURCES[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
