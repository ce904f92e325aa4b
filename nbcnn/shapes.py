"""Pure-Python shape arithmetic shared by the layer calculators (no numpy, no numba).

Formulas follow Keras (``keras/src/ops/operation_utils.py``): with ``padding='valid'`` a window
of effective size ``(k - 1) * d + 1`` slides over the input; with ``padding='same'`` the output
is ``ceil(n / s)`` and the zero padding needed for that is split with the smaller half first
(top/left), the larger half last (bottom/right): TensorFlow's asymmetric 'same' split.
"""

from __future__ import annotations

import math


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """Extent of a dilated kernel: ``(k - 1) * d + 1`` input cells."""
    return (kernel - 1) * dilation + 1


def output_length(length: int, kernel: int, stride: int, padding: str, dilation: int = 1) -> int:
    """Output size of a sliding window along one axis (may be < 1 when it does not fit).

    ``valid``: floor((n - k_eff) / s) + 1, ``same``: ceil(n / s).
    """
    if padding == "same":
        return math.ceil(length / stride)
    return (length - effective_kernel(kernel, dilation)) // stride + 1


def same_padding(length: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Zero padding ``(before, after)`` that gives ``ceil(n / s)`` outputs, Keras's split.

    pad_total = max((out - 1) * s + k_eff - n, 0); before = pad_total // 2; after = the rest.
    """
    out = math.ceil(length / stride)
    total = max((out - 1) * stride + effective_kernel(kernel, dilation) - length, 0)
    return total // 2, total - total // 2


def padding_amounts(
    lengths: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    padding: str,
    dilation: tuple[int, ...] | None = None,
) -> tuple[tuple[int, int], ...]:
    """Explicit ``(before, after)`` zero padding per spatial axis for 'valid' or 'same'."""
    dilation = dilation or (1,) * len(kernel)
    if padding == "valid":
        return tuple((0, 0) for _ in kernel)
    return tuple(same_padding(n, k, s, d) for n, k, s, d in zip(lengths, kernel, strides, dilation))


def size(shape: tuple[int, ...]) -> int:
    """Number of elements in a shape (1 for the empty shape)."""
    return math.prod(shape)
