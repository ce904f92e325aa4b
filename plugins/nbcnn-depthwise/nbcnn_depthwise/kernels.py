"""Depthwise 2-D convolution: numba kernels behind validating wrappers, forward and backward.

Keras's layout (``keras/src/layers/convolutional/base_depthwise_conv.py``): x (N, H, W, C),
kernel w (KH, KW, C, M) with M the depth multiplier, bias b (C*M,), and output channel
``c*M + m`` is input channel c filtered by w[:, :, c, m]:

    y[n, i, j, c*M + m] = b[c*M + m]
        + sum over (a, e) of x[n, i*sh - top + a*dh, j*sw - left + e*dw, c] * w[a, e, c, m]

with zeros outside the input. Each input channel feeds only its own M outputs, so an im2col
GEMM would be block-diagonal and mostly zeros: direct loops, ``prange`` over samples, the
innermost loops over the contiguous channel axis. Padding is implicit (bounds checks), so no
padded copy of x is made.

The backward is one ``prange`` over samples: iteration n writes dx[n] (overlapping windows
add into the sample's own slice, race-free) and row n of per-sample dw and db buffers in
float64, summed over the batch after the loop (never ``+=`` into one shared array: numba
issues #3681, #7133). The decorator (nbcnn's numba options and threading layer) and the
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


@kernel
def _forward(x, w, b, sh, sw, dil_h, dil_w, top, left, y):
    """y (N, OH, OW, C*M) = depthwise(x, w) + b; see the module docstring for the formula."""
    n_samples, height, width, channels = x.shape
    kh, kw, _, mult = w.shape
    _, out_h, out_w, _ = y.shape
    for n in numba.prange(n_samples):
        for i in range(out_h):
            for j in range(out_w):
                for k in range(channels * mult):
                    y[n, i, j, k] = b[k]
                for a in range(kh):
                    h = i * sh - top + a * dil_h
                    if h < 0 or h >= height:
                        continue
                    for e in range(kw):
                        wi = j * sw - left + e * dil_w
                        if wi < 0 or wi >= width:
                            continue
                        for c in range(channels):
                            v = x[n, h, wi, c]
                            for m in range(mult):
                                y[n, i, j, c * mult + m] += v * w[a, e, c, m]


@kernel
def _backward(dy, x, w, sh, sw, dil_h, dil_w, top, left, need_dx, dx, dw_per_sample, db_per_sample):
    """dx (N, H, W, C) if need_dx, and per-sample dw (N, KH, KW, C, M), db (N, C*M) in float64.

    All three must be zeroed. Iteration n writes only dx[n], dw_per_sample[n] and
    db_per_sample[n].
    """
    n_samples, height, width, channels = x.shape
    kh, kw, _, mult = w.shape
    _, out_h, out_w, _ = dy.shape
    for n in numba.prange(n_samples):
        for i in range(out_h):
            for j in range(out_w):
                for k in range(channels * mult):
                    db_per_sample[n, k] += dy[n, i, j, k]
                for a in range(kh):
                    h = i * sh - top + a * dil_h
                    if h < 0 or h >= height:
                        continue
                    for e in range(kw):
                        wi = j * sw - left + e * dil_w
                        if wi < 0 or wi >= width:
                            continue
                        for c in range(channels):
                            v = x[n, h, wi, c]
                            total = 0.0
                            for m in range(mult):
                                g = dy[n, i, j, c * mult + m]
                                total += w[a, e, c, m] * g
                                dw_per_sample[n, a, e, c, m] += v * g
                            if need_dx:
                                dx[n, h, wi, c] += total


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
    _forward(x, w, b, sh, sw, dil_h, dil_w, top, left, y)
    return y


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
    dx = np.zeros(x.shape if need_dx else (1, 1, 1, 1), dtype=np.float32)
    dw_per_sample = np.zeros((n_samples, kh, kw, channels, mult), dtype=np.float64)
    db_per_sample = np.zeros((n_samples, channels * mult), dtype=np.float64)
    _backward(dy, x, w, sh, sw, dil_h, dil_w, top, left, need_dx, dx, dw_per_sample, db_per_sample)
    dw = dw_per_sample.sum(axis=0).astype(np.float32)
    db = db_per_sample.sum(axis=0).astype(np.float32)
    return (dx if need_dx else None), dw, db
