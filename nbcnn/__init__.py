"""nbcnn: a small, fast, hackable CNN library for the CPU with Numba kernels."""

from __future__ import annotations

__version__ = "0.1.0"
