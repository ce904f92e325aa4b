"""Obvious loop implementations with the same names as the kernels they check.

Each follows the definition (Keras's layout: x (N, H, W, C), w (KH, KW, C, M), output channel
c*M + m) with explicit zero padding, one Python loop per index and float64 sums, and imports
nothing from nbcnn or nbcnn_depthwise. Slow by design: tests keep the sizes small.
(Named depthwise_naive, not naive, so it cannot shadow nbcnn's own tests/naive.py when both
test folders run in one pytest session.)
"""

from __future__ import annotations

import numpy as np


def _pad(x, padding):
    (top, bottom), (left, right) = padding
    return np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))


def depthwise_conv2d_forward(x, w, b, strides, dilation, padding):
    """y (N, OH, OW, C*M) float64: channel c*M + m is input channel c filtered by w[..., c, m]."""
    xp = _pad(x, padding)
    w = np.asarray(w, dtype=np.float64)
    n_samples, hp, wp, channels = xp.shape
    kh, kw, _, mult = w.shape
    (sh, sw), (dil_h, dil_w) = strides, dilation
    out_h = (hp - (kh - 1) * dil_h - 1) // sh + 1
    out_w = (wp - (kw - 1) * dil_w - 1) // sw + 1
    y = np.zeros((n_samples, out_h, out_w, channels * mult))
    for n in range(n_samples):
        for i in range(out_h):
            for j in range(out_w):
                for c in range(channels):
                    for m in range(mult):
                        total = 0.0 if b is None else float(b[c * mult + m])
                        for a in range(kh):
                            for e in range(kw):
                                total += (
                                    xp[n, i * sh + a * dil_h, j * sw + e * dil_w, c] * w[a, e, c, m]
                                )
                        y[n, i, j, c * mult + m] = total
    return y


def depthwise_conv2d_backward(dy, x, w, strides, dilation, padding):
    """(dx (N, H, W, C), dw (KH, KW, C, M), db (C*M,)), all float64, for upstream dy.

    Every term x[n, h, w, c] * w[a, e, c, m] of y[n, i, j, c*M + m] contributes dy times the
    other factor to the gradient of each factor.
    """
    xp = _pad(x, padding)
    w = np.asarray(w, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    n_samples, out_h, out_w, _ = dy.shape
    kh, kw, channels, mult = w.shape
    (sh, sw), (dil_h, dil_w) = strides, dilation
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    db = np.zeros(channels * mult)
    for n in range(n_samples):
        for i in range(out_h):
            for j in range(out_w):
                for c in range(channels):
                    for m in range(mult):
                        g = dy[n, i, j, c * mult + m]
                        db[c * mult + m] += g
                        for a in range(kh):
                            for e in range(kw):
                                h, wi = i * sh + a * dil_h, j * sw + e * dil_w
                                dw[a, e, c, m] += xp[n, h, wi, c] * g
                                dxp[n, h, wi, c] += w[a, e, c, m] * g
    (top, _), (left, _) = padding
    height, width = np.shape(x)[1:3]
    return dxp[:, top : top + height, left : left + width, :], dw, db
