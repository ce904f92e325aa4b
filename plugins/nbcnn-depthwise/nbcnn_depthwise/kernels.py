"""Depthwise 2-D convolution: numba kernels behind validating wrappers, forward and backward.

Keras's layout (``keras/src/layers/convolutional/base_depthwise_conv.py``): x (N, H, W, C),
kernel w (KH, KW, C, M) with M the depth multiplier, bias b (C*M,), and output channel
``c*M + m`` is input channel c filtered by w[:, :, c, m]:

    y[n, i, j, c*M + m] = b[c*M + m]
        + sum over (a, e) of x[n, i*sh - top + a*dh, j*sw - left + e*dw, c] * w[a, e, c, m]

with zeros outside the input. Each input channel feeds only its own M outputs, so an im2col
GEMM would be block-diagonal and mostly zeros: direct loops, a ``prange`` over output rows,
the innermost loops over the contiguous channel axis so that LLVM turns them into vector
loops (the depth multiplier M > 1 keeps a scalar inner loop). Padding is implicit: each
tap's valid columns are a range computed once, so no padded copy of x is made and no column
is tested one by one. A 3x3 kernel's interior columns sum their nine taps in a register.

Speed (benchmarks/bench_depthwise.py: batch 32, two threads, AMD EPYC Zen 4, against
PyTorch 2.13's depthwise convolution, NCHW, groups = C, interleaved in the same run), the
first version of these loops (channels innermost, but each tap tested per column and the
multiplier's loop innermost, so nothing vectorized) -> now: 56x56x64 forward 50.8 -> 4.4-5.3
ms (PyTorch 5.9-7.3), forward + backward 149 -> 20.5 (PyTorch 21.3); 28x28x128 forward 22.8
-> 2.3-2.4 (PyTorch 2.5-3.7), forward + backward 71.9 -> 6.6 (7.8); stride 2: forward 6.4 ->
0.4-0.5 (2.1-3.0), forward + backward 20.8 -> 3.7 (8.3); the digits MobileNet's 8x8x32
multiplier-2 layer at batch 128: forward 0.64 -> 0.54-0.92 ms (1.7-2.7), forward + backward
1.73 -> 1.8-2.1 (6.0-7.3).

The backward is one ``prange`` over samples: iteration n writes dx[n] (overlapping windows
add into the sample's own slice, race-free) and row n of per-sample dw (float32: one sample's
sum) and db (float64) buffers, summed over the batch in float64 after the loop (never ``+=``
into one shared array: numba issues #3681, #7133). With stride 1 and M = 1, dx is the forward
itself run on dy with the kernel flipped (a gather with the forward's vector loops, not a
scatter of each tap). The decorator (nbcnn's numba options and threading layer) and the
argument checks are nbcnn's public kernel API, ``nbcnn.kernels``, the same that nbcnn's own
kernels use.

The layers import this module inside forward/backward only: importing numba takes longer
than ``nbcnn summary`` may.
"""

from __future__ import annotations

import numba
import numpy as np
from nbcnn.kernels import conv_geometry, float32_array, kernel, same_shape

# ------------------------------------------------------------------------------------ kernels


@numba.njit(inline="always")
def _columns(out_w, width, sw, offset):
    """The output columns j whose input column j*sw + offset lies inside [0, width)."""
    lo = max(0, (sw - 1 - offset) // sw)
    hi = min(out_w, (width - 1 - offset) // sw + 1)
    return lo, hi


@numba.njit(inline="always")
def _row_columns(x, w, b, sw, dil_w, left, n, i, first_h, dil_h, j0, j1, y):
    """Columns j0..j1 of output row (n, i), any kernel and multiplier: y[n, i, j] = b, then
    each tap whose input pixel lies inside x added, taps in row-major order."""
    _, height, width, channels = x.shape
    kh, kw, outputs = w.shape
    mult = outputs // channels
    for j in range(j0, j1):
        y[n, i, j] = b
    for a in range(kh):
        h = first_h + a * dil_h
        if h < 0 or h >= height:
            continue
        for e in range(kw):
            offset = e * dil_w - left
            lo, hi = _columns(j1, width, sw, offset)
            taps = w[a, e]
            for j in range(max(lo, j0), hi):
                source = x[n, h, j * sw + offset]
                target = y[n, i, j]
                if mult == 1:
                    for k in range(channels):
                        target[k] += source[k] * taps[k]
                else:
                    for c in range(channels):
                        for m in range(mult):
                            target[c * mult + m] += source[c] * taps[c * mult + m]


@kernel
def _forward(x, w, b, sh, sw, dil_h, dil_w, top, left, y):
    """y (N, OH, OW, C*M) = the depthwise convolution of x (N, H, W, C) with w (KH, KW, C*M)
    (output channel c*M + m's filter at c*M + m), plus b (C*M,). Each prange iteration is one
    output row (n, i) and writes only y[n, i]. With M = 1 the innermost loops run over the
    contiguous channels (vector loops), and a 3x3 kernel's interior columns (every tap inside
    x) sum their nine taps in registers and store once: the same sums in the same order as
    the general loop, which adds each tap into y (32x56x56x64, one thread: 15.4 -> 7.6 ms).
    Columns in the padding are skipped by their range, not tested one by one."""
    n_samples, height, width, channels = x.shape
    kh, kw, outputs = w.shape
    _, out_h, out_w, _ = y.shape
    nine = kh == 3 and kw == 3 and outputs == channels
    for item in numba.prange(n_samples * out_h):
        n, i = item // out_h, item % out_h
        first_h = i * sh - top
        lo = hi = 0
        if nine and first_h >= 0 and first_h + 2 * dil_h < height:
            lo, hi = _columns(out_w, width - 2 * dil_w, sw, -left)
        if hi <= lo:
            _row_columns(x, w, b, sw, dil_w, left, n, i, first_h, dil_h, 0, out_w, y)
            continue
        _row_columns(x, w, b, sw, dil_w, left, n, i, first_h, dil_h, 0, lo, y)
        _row_columns(x, w, b, sw, dil_w, left, n, i, first_h, dil_h, hi, out_w, y)
        top_row, mid_row, low_row = (
            x[n, first_h],
            x[n, first_h + dil_h],
            x[n, first_h + 2 * dil_h],
        )
        for j in range(lo, hi):
            c0 = j * sw - left
            c1, c2 = c0 + dil_w, c0 + 2 * dil_w
            target = y[n, i, j]
            for k in range(channels):
                total = b[k]
                total += top_row[c0, k] * w[0, 0, k]
                total += top_row[c1, k] * w[0, 1, k]
                total += top_row[c2, k] * w[0, 2, k]
                total += mid_row[c0, k] * w[1, 0, k]
                total += mid_row[c1, k] * w[1, 1, k]
                total += mid_row[c2, k] * w[1, 2, k]
                total += low_row[c0, k] * w[2, 0, k]
                total += low_row[c1, k] * w[2, 1, k]
                total += low_row[c2, k] * w[2, 2, k]
                target[k] = total


@numba.njit(inline="always")
def _tap_backward(x, dy, taps, n, h, i, lo, hi, sw, offset, need_dx, dx, dtaps):
    """One tap (a, e) of output row (n, i), whose input row is h, over its valid columns
    lo..hi: dtaps (C*M,) += x * dy, and dx[n, h] += dy * taps when need_dx."""
    channels = x.shape[3]
    mult = taps.shape[0] // channels
    if mult == 1 and not need_dx:
        # Four columns a pass: the tap's sums are loaded and stored once per four products
        # instead of once per product (the same sums, in the same order). 32x56x56x64, one
        # thread: dw 15.4-17.0 -> 11.9-12.4 ms.
        while lo + 4 <= hi:
            s0 = x[n, h, lo * sw + offset]
            s1 = x[n, h, (lo + 1) * sw + offset]
            s2 = x[n, h, (lo + 2) * sw + offset]
            s3 = x[n, h, (lo + 3) * sw + offset]
            g0, g1, g2, g3 = dy[n, i, lo], dy[n, i, lo + 1], dy[n, i, lo + 2], dy[n, i, lo + 3]
            for k in range(channels):
                total = dtaps[k]
                total += s0[k] * g0[k]
                total += s1[k] * g1[k]
                total += s2[k] * g2[k]
                total += s3[k] * g3[k]
                dtaps[k] = total
            lo += 4
    for j in range(lo, hi):
        source = x[n, h, j * sw + offset]
        grad = dy[n, i, j]
        back = dx[n, h, j * sw + offset] if need_dx else dx[0, 0, 0]
        if mult == 1:
            for k in range(channels):
                dtaps[k] += source[k] * grad[k]
            if need_dx:
                for k in range(channels):
                    back[k] += grad[k] * taps[k]
            continue
        for c in range(channels):
            total = np.float32(0.0)
            for m in range(mult):
                k = c * mult + m
                dtaps[k] += source[c] * grad[k]
                total += grad[k] * taps[k]
            if need_dx:
                back[c] += total


@kernel
def _backward(dy, x, w, sh, sw, dil_h, dil_w, top, left, need_dx, dx, dw_per_sample, db_per_sample):
    """dx (N, H, W, C) if need_dx, per-sample dw (N, KH, KW, C*M) float32 and db (N, C*M)
    float64 of ``_forward``; all three zeroed. Iteration n writes only dx[n],
    dw_per_sample[n] and db_per_sample[n]; with M = 1 the innermost loops run over the
    contiguous channels."""
    n_samples, height, width, channels = x.shape
    kh, kw, outputs = w.shape
    _, out_h, out_w, _ = dy.shape
    for n in numba.prange(n_samples):
        for i in range(out_h):
            for j in range(out_w):
                grad = dy[n, i, j]
                for k in range(outputs):
                    db_per_sample[n, k] += grad[k]
            for a in range(kh):
                h = i * sh - top + a * dil_h
                if h < 0 or h >= height:
                    continue
                for e in range(kw):
                    offset = e * dil_w - left
                    lo, hi = _columns(out_w, width, sw, offset)
                    _tap_backward(
                        x, dy, w[a, e], n, h, i, lo, hi, sw, offset, need_dx, dx,
                        dw_per_sample[n, a, e],
                    )  # fmt: skip


# ----------------------------------------------------------------------------------- wrappers


def _geometry(x_shape, w_shape, strides, dilation, padding):
    """Checked ``(sh, sw, dil_h, dil_w, top, left, out_h, out_w)`` (nbcnn's conv check)."""
    (sh, sw), (dil_h, dil_w), ((top, _), (left, _)), (out_h, out_w) = conv_geometry(
        x_shape, w_shape, strides, dilation, padding
    )
    return sh, sw, dil_h, dil_w, top, left, out_h, out_w


def depthwise_conv2d_forward(x, w, b, strides, dilation, padding):
    """Depthwise 2-D cross-correlation with explicit zero padding, Keras layout.

    Parameters
    ----------
    x : (N, H, W, C) float32
    w : (KH, KW, C, M) float32, M = depth multiplier
    b : (C*M,) float32 or None
    strides : (sh, sw) ints >= 1
    dilation : (dil_h, dil_w) ints >= 1
    padding : ((top, bottom), (left, right)) ints >= 0

    Returns
    -------
    y : (N, OH, OW, C*M) float32, channel c*M + m from input channel c and w[:, :, c, m];
        OH = (H + top + bottom - dil_h*(KH-1) - 1) // sh + 1 (same for OW).
    """
    x = float32_array("x", x, 4)
    w = float32_array("w", w, 4)
    sh, sw, dil_h, dil_w, top, left, out_h, out_w = _geometry(
        x.shape, w.shape, strides, dilation, padding
    )
    outputs = w.shape[2] * w.shape[3]
    if b is None:
        b = np.zeros(outputs, dtype=np.float32)
    b = float32_array("b", b, 1)
    same_shape("b", b, (outputs,))
    y = np.empty((x.shape[0], out_h, out_w, outputs), dtype=np.float32)
    _forward(x, _one_per_channel(w), b, sh, sw, dil_h, dil_w, top, left, y)
    return y


def _one_per_channel(w):
    """w (KH, KW, C, M) as (KH, KW, C*M): output channel c*M + m's filter w[:, :, c, m]."""
    kh, kw, channels, mult = w.shape
    return np.ascontiguousarray(w.reshape(kh, kw, channels * mult))


def depthwise_conv2d_backward(dy, x, w, strides, dilation, padding, *, need_dx=True):
    """Gradients of ``depthwise_conv2d_forward`` given the upstream gradient dy.

    Parameters
    ----------
    dy : (N, OH, OW, C*M) float32, gradient of the loss with respect to y
    x : (N, H, W, C) float32, the forward input
    w : (KH, KW, C, M) float32
    strides, dilation, padding : as in ``depthwise_conv2d_forward``
    need_dx : False skips dx (a first layer has no use for it)

    Returns
    -------
    dx : (N, H, W, C) float32, or None when ``need_dx`` is False
    dw : (KH, KW, C, M) float32, summed over the batch
    db : (C*M,) float32, the sum of dy over N, OH, OW (returned even without a bias)
    """
    x = float32_array("x", x, 4)
    w = float32_array("w", w, 4)
    dy = float32_array("dy", dy, 4)
    sh, sw, dil_h, dil_w, top, left, out_h, out_w = _geometry(
        x.shape, w.shape, strides, dilation, padding
    )
    n_samples = x.shape[0]
    kh, kw, channels, mult = w.shape
    same_shape("dy", dy, (n_samples, out_h, out_w, channels * mult))
    # Stride 1, one output a channel: dx is the forward itself on dy, with the kernel flipped
    # and the padding's complement (a correlation), so it gathers with the forward's vector
    # loops and 3x3 registers instead of scattering each tap into dx (32x56x56x64, two
    # threads, forward + backward 25.2 -> 20.5 ms; 32x28x28x128 8.8 -> 6.6).
    gathered = need_dx and sh == 1 and sw == 1 and mult == 1
    scattered = need_dx and not gathered
    dx = np.zeros(x.shape if scattered else (1, 1, 1, 1), dtype=np.float32)
    dw_per_sample = np.zeros((n_samples, kh, kw, channels * mult), dtype=np.float32)
    db_per_sample = np.zeros((n_samples, channels * mult), dtype=np.float64)
    _backward(
        dy, x, _one_per_channel(w), sh, sw, dil_h, dil_w, top, left, scattered, dx,
        dw_per_sample, db_per_sample,
    )  # fmt: skip
    if gathered:
        dx = np.empty(x.shape, dtype=np.float32)
        flipped = np.ascontiguousarray(w[::-1, ::-1].reshape(kh, kw, channels))
        reach_h, reach_w = (kh - 1) * dil_h, (kw - 1) * dil_w
        _forward(
            dy, flipped, np.zeros(channels, np.float32), 1, 1, dil_h, dil_w, reach_h - top,
            reach_w - left, dx,
        )  # fmt: skip
    dw = dw_per_sample.sum(axis=0, dtype=np.float64).astype(np.float32)
    dw = dw.reshape(kh, kw, channels, mult)
    db = db_per_sample.sum(axis=0).astype(np.float32)
    return (dx if need_dx else None), dw, db
