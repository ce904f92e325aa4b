"""Argument checks shared by the public kernel wrappers (pure Python and numpy, no numba).

The numba kernels behind the wrappers index without bounds checks, so every shape, dtype and
geometry they rely on is checked here first, with messages that say what was received.
"""

from __future__ import annotations

import numpy as np


def float32_array(name: str, a, ndim: int) -> np.ndarray:
    """``a`` as a C-contiguous float32 array with ``ndim`` dimensions (copied only if needed).

    Raises ``TypeError`` for non-floating input (a silent cast of integers would hide bugs)
    and ``ValueError`` for the wrong number of dimensions.
    """
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def int_pair(name: str, value, minimum: int) -> tuple[int, int]:
    """``value`` as a pair of Python ints, each at least ``minimum``."""
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) for v in pair):
        raise ValueError(f"{name} must be a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def padding_pairs(padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` as non-negative Python ints."""
    try:
        rows, cols = padding
    except (TypeError, ValueError):
        raise ValueError(
            f"padding must be ((top, bottom), (left, right)), got {padding!r}"
        ) from None
    return int_pair("padding rows", rows, 0), int_pair("padding columns", cols, 0)


def output_size(length: int, before: int, after: int, window: int, stride: int) -> int:
    """Number of window positions along one axis: ``(n + pads - window) // stride + 1``.

    ``window`` is the effective (dilated) extent; raises ``ValueError`` when not even one
    window fits in the padded input.
    """
    padded = length + before + after
    if padded < window:
        raise ValueError(
            f"window of extent {window} does not fit in padded input of length {padded} "
            f"({length} + padding {before} + {after})"
        )
    return (padded - window) // stride + 1


def same_shape(name: str, a: np.ndarray, expected: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``a.shape == expected``."""
    if a.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {a.shape}")


def conv_geometry(x_shape, w_shape, strides, dilation, padding):
    """Checked ``((sh, sw), (dil_h, dil_w), ((top, bottom), (left, right)), (OH, OW))`` of a
    2-D convolution of x (N, H, W, C) with w (KH, KW, C, ...): the one check every conv kernel
    wrapper (core and plugins) runs before allocating its output."""
    sh, sw = int_pair("strides", strides, 1)
    dil_h, dil_w = int_pair("dilation", dilation, 1)
    (top, bottom), (left, right) = padding_pairs(padding)
    _, height, width, channels = x_shape
    kh, kw, w_channels, _ = w_shape
    if w_channels != channels:
        raise ValueError(
            f"w has {w_channels} input channels (shape {w_shape}) but x has {channels} "
            f"(shape {x_shape})"
        )
    out_h = output_size(height, top, bottom, (kh - 1) * dil_h + 1, sh)
    out_w = output_size(width, left, right, (kw - 1) * dil_w + 1, sw)
    return (sh, sw), (dil_h, dil_w), ((top, bottom), (left, right)), (out_h, out_w)
