"""Conv2D forward and backward (Conv1D runs through these with H = 1 and a kernel height of 1).

Layouts are Keras's: x (N, H, W, C), w (KH, KW, C, F), y (N, OH, OW, F). The op is
cross-correlation, as in Keras and PyTorch:

    y[n, i, j, f] = b[f] + sum_{a, e, c} xpad[n, i*sh + a*dil_h, j*sw + e*dil_w, c] * w[a, e, c, f]

where xpad is x with explicit zero padding ((top, bottom), (left, right)); the layer works out
Keras's asymmetric 'same' split, the kernels only zero-pad.

Design (STYLE.md, "Kernels"): im2col fills one row per output position in a ``prange`` over
samples (each iteration writes only its own rows), then ONE large multi-threaded GEMM runs
outside the parallel loop; BLAS is never called inside ``prange``, where OpenBLAS threads would
nest inside numba's. The backward computes dw = cols.T @ dy and dcols = dy @ w.T as two GEMMs,
then col2im scatters dcols back in a ``prange`` over samples, each sample adding only into its
own slice of a padded dx buffer, so overlapping windows (stride < kernel) are race-free.

With one input channel an im2col row has only KH*KW entries, a GEMM with a tiny inner
dimension; STYLE.md measured a direct numba loop to be faster there, so the forward uses
``_direct_forward`` when C == 1.
"""

from __future__ import annotations

import numba
import numpy as np

from nbcnn.kernels import _checks
from nbcnn.kernels._jit import kernel

# ------------------------------------------------------------------------------------ kernels


@kernel
def _im2col(x, kh, kw, sh, sw, dil_h, dil_w, top, left, out_h, out_w, cols):
    """Fill cols (N*OH*OW, KH*KW*C): row (n, i, j) holds the input window of output (i, j).

    Column order (a, e, c) matches ``w.reshape(KH*KW*C, F)``. Padded cells are written as 0
    explicitly because ``cols`` comes from ``np.empty`` (cheaper than zeroing it all first).
    """
    n_samples, height, width, channels = x.shape
    for n in numba.prange(n_samples):
        for i in range(out_h):
            for j in range(out_w):
                row = (n * out_h + i) * out_w + j
                for a in range(kh):
                    h = i * sh - top + a * dil_h
                    for e in range(kw):
                        col = (a * kw + e) * channels
                        wi = j * sw - left + e * dil_w
                        if h < 0 or h >= height or wi < 0 or wi >= width:
                            for c in range(channels):
                                cols[row, col + c] = 0.0
                        else:
                            for c in range(channels):
                                cols[row, col + c] = x[n, h, wi, c]


@kernel
def _col2im(dcols, kh, kw, sh, sw, dil_h, dil_w, out_h, out_w, dx_padded):
    """Add dcols (N*OH*OW, KH*KW*C) back into dx_padded (N, H+top+bottom, W+left+right, C).

    dx_padded must be zeroed. Iteration n adds only into dx_padded[n], so overlapping windows
    accumulate without races; padding needs no bounds checks (it is cropped by the caller).
    """
    n_samples, _, _, channels = dx_padded.shape
    for n in numba.prange(n_samples):
        for i in range(out_h):
            for j in range(out_w):
                row = (n * out_h + i) * out_w + j
                for a in range(kh):
                    h = i * sh + a * dil_h
                    for e in range(kw):
                        col = (a * kw + e) * channels
                        wi = j * sw + e * dil_w
                        for c in range(channels):
                            dx_padded[n, h, wi, c] += dcols[row, col + c]


@kernel
def _direct_forward(x, w, b, sh, sw, dil_h, dil_w, top, left, y):
    """y (N, OH, OW, F) = conv(x, w) + b as a direct loop; the inner loop runs over F.

    Used for C == 1, where im2col would feed the GEMM an inner dimension of only KH*KW.
    """
    n_samples, height, width, channels = x.shape
    kh, kw, _, filters = w.shape
    _, out_h, out_w, _ = y.shape
    for n in numba.prange(n_samples):
        for i in range(out_h):
            for j in range(out_w):
                for f in range(filters):
                    y[n, i, j, f] = b[f]
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
                            for f in range(filters):
                                y[n, i, j, f] += v * w[a, e, c, f]


@kernel
def _bias_grad(dy, db_per_sample):
    """db_per_sample[n, f] = sum over (i, j) of dy[n, i, j, f], accumulated in float64.

    One row per sample keeps the prange race-free; float64 keeps the long batch sum accurate.
    """
    n_samples, out_h, out_w, filters = dy.shape
    for n in numba.prange(n_samples):
        for i in range(out_h):
            for j in range(out_w):
                for f in range(filters):
                    db_per_sample[n, f] += dy[n, i, j, f]


# ----------------------------------------------------------------------------------- wrappers


def _geometry(x_shape, w_shape, strides, dilation, padding):
    """Checked (strides, dilation, padding, (OH, OW)) for input x_shape and weights w_shape."""
    sh, sw = _checks.int_pair("strides", strides, 1)
    dil_h, dil_w = _checks.int_pair("dilation", dilation, 1)
    (top, bottom), (left, right) = _checks.padding_pairs(padding)
    _, height, width, channels = x_shape
    kh, kw, w_channels, _ = w_shape
    if w_channels != channels:
        raise ValueError(
            f"w has {w_channels} input channels (shape {w_shape}) but x has {channels} "
            f"(shape {x_shape})"
        )
    out_h = _checks.output_size(height, top, bottom, (kh - 1) * dil_h + 1, sh)
    out_w = _checks.output_size(width, left, right, (kw - 1) * dil_w + 1, sw)
    return (sh, sw), (dil_h, dil_w), ((top, bottom), (left, right)), (out_h, out_w)


def _im2col_rows(x, kernel_hw, strides, dilation, padding, out_hw):
    """cols (N*OH*OW, KH*KW*C) float32 for contiguous float32 x (N, H, W, C)."""
    (kh, kw), (sh, sw), (dil_h, dil_w) = kernel_hw, strides, dilation
    (top, _), (left, _) = padding
    out_h, out_w = out_hw
    cols = np.empty((x.shape[0] * out_h * out_w, kh * kw * x.shape[3]), dtype=np.float32)
    _im2col(x, kh, kw, sh, sw, dil_h, dil_w, top, left, out_h, out_w, cols)
    return cols


def conv2d_forward(x, w, b, strides, dilation, padding):
    """2-D cross-correlation with explicit zero padding, Keras layout.

    Parameters
    ----------
    x : (N, H, W, C) float32
    w : (KH, KW, C, F) float32
    b : (F,) float32 or None
    strides : (sh, sw) ints >= 1
    dilation : (dil_h, dil_w) ints >= 1
    padding : ((top, bottom), (left, right)) ints >= 0

    Returns
    -------
    y : (N, OH, OW, F) float32, OH = (H + top + bottom - dil_h*(KH-1) - 1) // sh + 1 (same for OW).
    """
    x = _checks.float32_array("x", x, 4)
    w = _checks.float32_array("w", w, 4)
    strides, dilation, padding, (out_h, out_w) = _geometry(
        x.shape, w.shape, strides, dilation, padding
    )
    kh, kw, channels, filters = w.shape
    if b is None:
        b = np.zeros(filters, dtype=np.float32)
    b = _checks.float32_array("b", b, 1)
    _checks.same_shape("b", b, (filters,))
    n_samples = x.shape[0]

    if channels == 1:
        y = np.empty((n_samples, out_h, out_w, filters), dtype=np.float32)
        (sh, sw), (dil_h, dil_w), ((top, _), (left, _)) = strides, dilation, padding
        _direct_forward(x, w, b, sh, sw, dil_h, dil_w, top, left, y)
        return y

    cols = _im2col_rows(x, (kh, kw), strides, dilation, padding, (out_h, out_w))
    y2d = cols @ w.reshape(kh * kw * channels, filters)  # the one big GEMM
    y2d += b
    return y2d.reshape(n_samples, out_h, out_w, filters)


def conv2d_backward(dy, x, w, strides, dilation, padding, *, need_dx=True):
    """Gradients of ``conv2d_forward`` given the upstream gradient dy.

    Parameters
    ----------
    dy : (N, OH, OW, F) float32, gradient of the loss with respect to y
    x : (N, H, W, C) float32, the forward input
    w : (KH, KW, C, F) float32
    strides, dilation, padding : as in ``conv2d_forward``
    need_dx : False skips dx (the first layer has no use for it): one GEMM and col2im fewer.

    Returns
    -------
    dx : (N, H, W, C) float32, or None when ``need_dx`` is False
    dw : (KH, KW, C, F) float32
    db : (F,) float32, the sum of dy over N, OH, OW (returned even for layers without bias)
    """
    x = _checks.float32_array("x", x, 4)
    w = _checks.float32_array("w", w, 4)
    dy = _checks.float32_array("dy", dy, 4)
    strides, dilation, padding, (out_h, out_w) = _geometry(
        x.shape, w.shape, strides, dilation, padding
    )
    n_samples, height, width, channels = x.shape
    kh, kw, _, filters = w.shape
    _checks.same_shape("dy", dy, (n_samples, out_h, out_w, filters))

    db_per_sample = np.zeros((n_samples, filters), dtype=np.float64)
    _bias_grad(dy, db_per_sample)
    db = db_per_sample.sum(axis=0).astype(np.float32)

    cols = _im2col_rows(x, (kh, kw), strides, dilation, padding, (out_h, out_w))
    dy2d = dy.reshape(n_samples * out_h * out_w, filters)
    dw = (cols.T @ dy2d).reshape(kh, kw, channels, filters)  # GEMM 2: sums over the batch
    if not need_dx:
        return None, dw, db

    dcols = dy2d @ w.reshape(kh * kw * channels, filters).T  # GEMM 3
    (sh, sw), (dil_h, dil_w), ((top, bottom), (left, right)) = strides, dilation, padding
    dx_padded = np.zeros(
        (n_samples, height + top + bottom, width + left + right, channels), dtype=np.float32
    )
    _col2im(dcols, kh, kw, sh, sw, dil_h, dil_w, out_h, out_w, dx_padded)
    if top or bottom or left or right:
        dx = np.ascontiguousarray(dx_padded[:, top : top + height, left : left + width, :])
    else:
        dx = dx_padded
    return dx, dw, db
