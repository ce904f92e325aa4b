"""2-D max and average pooling, forward and backward (1-D pooling runs through these with H = 1).

Layout is Keras's: x (N, H, W, C), y (N, OH, OW, C), OH = (H + top + bottom - PH) // sh + 1.
Padding ((top, bottom), (left, right)) is explicit; the layer works out Keras's 'same' split.
Padded cells never take part: max pooling treats them as -inf and average pooling divides by
the number of real cells in the window, as Keras does with padding='same'. Each side's padding
must be smaller than the pool size, so every window holds at least one real cell (Keras's
'same' split always satisfies this).

Every kernel runs a ``prange`` over samples and each iteration writes only its own sample's
slice of the output, so overlapping windows (stride < pool size) accumulate without races.
"""

from __future__ import annotations

import numba
import numpy as np

from nbcnn.kernels import _checks
from nbcnn.kernels._jit import kernel

# ------------------------------------------------------------------------------------ kernels


@kernel
def _max_forward(x, ph, pw, sh, sw, top, left, y, argmax):
    """y[n, i, j, c] = max of the window's real cells; argmax = its index in x[n].ravel().

    The channel loop is innermost, so every read and write runs along contiguous memory
    (channels-last); measured 5.4 -> 1.5 ms on the seed model's first pool at batch 128.
    The first real cell seeds the running maximum and later cells replace it only when
    strictly greater, so the FIRST maximum in row-major window order wins ties.
    """
    n_samples, height, width, channels = x.shape
    _, out_h, out_w, _ = y.shape
    for n in numba.prange(n_samples):
        for i in range(out_h):
            h0 = i * sh - top
            h_lo, h_hi = max(h0, 0), min(h0 + ph, height)
            for j in range(out_w):
                w0 = j * sw - left
                w_lo, w_hi = max(w0, 0), min(w0 + pw, width)
                first = (h_lo * width + w_lo) * channels
                for c in range(channels):
                    y[n, i, j, c] = x[n, h_lo, w_lo, c]
                    argmax[n, i, j, c] = first + c
                for h in range(h_lo, h_hi):
                    for wi in range(w_lo, w_hi):
                        base = (h * width + wi) * channels
                        for c in range(channels):
                            # Both stores every time, the choice a select: the loop vectorizes
                            # (a branch around them kept it scalar; 28x28x6 at batch 128, one
                            # thread: 2.45 -> 1.26-1.52 ms; 28x28x32 1.74 -> 1.65).
                            v = x[n, h, wi, c]
                            best = y[n, i, j, c]
                            take = v > best
                            y[n, i, j, c] = v if take else best
                            argmax[n, i, j, c] = base + c if take else argmax[n, i, j, c]


@kernel
def _max_backward(dy, argmax, dx):
    """dx[n].ravel()[argmax] += dy: each sample zeroes and fills only its own dx[n]."""
    n_samples, out_h, out_w, channels = dy.shape
    for n in numba.prange(n_samples):
        flat = dx[n].reshape(-1)
        flat[:] = 0.0
        for i in range(out_h):
            for j in range(out_w):
                for c in range(channels):
                    flat[argmax[n, i, j, c]] += dy[n, i, j, c]


@kernel
def _avg_forward(x, ph, pw, sh, sw, top, left, y):
    """y[n, i, j, c] = mean over the window's real (non-padded) cells; channels innermost."""
    n_samples, height, width, channels = x.shape
    _, out_h, out_w, _ = y.shape
    for n in numba.prange(n_samples):
        for i in range(out_h):
            h0 = i * sh - top
            h_lo, h_hi = max(h0, 0), min(h0 + ph, height)
            for j in range(out_w):
                w0 = j * sw - left
                w_lo, w_hi = max(w0, 0), min(w0 + pw, width)
                inv_count = np.float32(1.0) / np.float32((h_hi - h_lo) * (w_hi - w_lo))
                for c in range(channels):
                    y[n, i, j, c] = 0.0
                for h in range(h_lo, h_hi):
                    for wi in range(w_lo, w_hi):
                        for c in range(channels):
                            y[n, i, j, c] += x[n, h, wi, c]
                for c in range(channels):
                    y[n, i, j, c] *= inv_count


@kernel
def _avg_backward(dy, ph, pw, sh, sw, top, left, dx):
    """dx[n] = dy / count spread over each window's real cells; each sample zeroes its own."""
    n_samples, out_h, out_w, channels = dy.shape
    _, height, width, _ = dx.shape
    for n in numba.prange(n_samples):
        dx[n] = 0.0
        for i in range(out_h):
            h0 = i * sh - top
            h_lo, h_hi = max(h0, 0), min(h0 + ph, height)
            for j in range(out_w):
                w0 = j * sw - left
                w_lo, w_hi = max(w0, 0), min(w0 + pw, width)
                inv_count = np.float32(1.0) / np.float32((h_hi - h_lo) * (w_hi - w_lo))
                for h in range(h_lo, h_hi):
                    for wi in range(w_lo, w_hi):
                        for c in range(channels):
                            dx[n, h, wi, c] += dy[n, i, j, c] * inv_count


# ----------------------------------------------------------------------------------- wrappers


def _geometry(x_shape, pool_size, strides, padding):
    """Checked (pool, strides, padding, (OH, OW)) for an input of shape x_shape."""
    ph, pw = _checks.int_pair("pool_size", pool_size, 1)
    sh, sw = _checks.int_pair("strides", strides, 1)
    (top, bottom), (left, right) = _checks.padding_pairs(padding)
    if max(top, bottom) >= ph or max(left, right) >= pw:
        # A window made only of padding would have no maximum and nothing to average.
        raise ValueError(
            f"padding {padding!r} must be smaller than pool_size {pool_size!r} on every side"
        )
    _, height, width, _ = x_shape
    out_h = _checks.output_size(height, top, bottom, ph, sh)
    out_w = _checks.output_size(width, left, right, pw, sw)
    return (ph, pw), (sh, sw), ((top, bottom), (left, right)), (out_h, out_w)


def _x_shape(x_shape):
    """x_shape as a checked 4-tuple of ints (N, H, W, C)."""
    shape = tuple(int(s) for s in x_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"x_shape must be (N, H, W, C) with positive sizes, got {x_shape!r}")
    return shape


def max_pool2d_forward(x, pool_size, strides, padding):
    """Max pooling; returns the maxima and where they came from (for the backward).

    Ties: the FIRST maximum in row-major window order (smallest h, then smallest w) wins.
    Padded cells never win (they act as -inf).

    Parameters
    ----------
    x : (N, H, W, C) float32
    pool_size : (ph, pw) ints >= 1
    strides : (sh, sw) ints >= 1
    padding : ((top, bottom), (left, right)) ints, each smaller than the pool size

    Returns
    -------
    y : (N, OH, OW, C) float32
    argmax : (N, OH, OW, C) int32, index of the winning cell in ``x[n].ravel()``, that is
        (h * W + w) * C + c (int32 halves the memory traffic; checked to fit)
    """
    x = _checks.float32_array("x", x, 4)
    (ph, pw), (sh, sw), ((top, _), (left, _)), (out_h, out_w) = _geometry(
        x.shape, pool_size, strides, padding
    )
    out_shape = (x.shape[0], out_h, out_w, x.shape[3])
    if x[0].size > np.iinfo(np.int32).max:
        raise ValueError(f"one sample of shape {x.shape[1:]} is too large for int32 indices")
    y = np.empty(out_shape, dtype=np.float32)
    argmax = np.empty(out_shape, dtype=np.int32)
    _max_forward(x, ph, pw, sh, sw, top, left, y, argmax)
    return y, argmax


def max_pool2d_backward(dy, argmax, x_shape):
    """Gradient of max pooling: each dy goes to its window's winning cell.

    Parameters
    ----------
    dy : (N, OH, OW, C) float32
    argmax : (N, OH, OW, C) integer, as returned by ``max_pool2d_forward``
    x_shape : (N, H, W, C), the forward input's shape

    Returns
    -------
    dx : (N, H, W, C) float32; a cell that wins several overlapping windows sums their dy.
    """
    dy = _checks.float32_array("dy", dy, 4)
    shape = _x_shape(x_shape)
    argmax = np.ascontiguousarray(argmax, dtype=np.int32)
    _checks.same_shape("argmax", argmax, dy.shape)
    if dy.shape[0] != shape[0] or dy.shape[3] != shape[3]:
        raise ValueError(f"dy {dy.shape} does not match x_shape {shape} in N or C")
    plane = shape[1] * shape[2] * shape[3]
    if argmax.size and (argmax.min() < 0 or argmax.max() >= plane):
        raise ValueError(f"argmax holds indices outside a sample of H*W*C = {plane} cells")
    dx = np.empty(shape, dtype=np.float32)  # each sample is zeroed inside the kernel
    _max_backward(dy, argmax, dx)
    return dx


def avg_pool2d_forward(x, pool_size, strides, padding):
    """Average pooling over each window's real cells (padding is not counted, as in Keras).

    Parameters
    ----------
    x : (N, H, W, C) float32
    pool_size : (ph, pw) ints >= 1
    strides : (sh, sw) ints >= 1
    padding : ((top, bottom), (left, right)) ints, each smaller than the pool size

    Returns
    -------
    y : (N, OH, OW, C) float32
    """
    x = _checks.float32_array("x", x, 4)
    (ph, pw), (sh, sw), ((top, _), (left, _)), (out_h, out_w) = _geometry(
        x.shape, pool_size, strides, padding
    )
    y = np.empty((x.shape[0], out_h, out_w, x.shape[3]), dtype=np.float32)
    _avg_forward(x, ph, pw, sh, sw, top, left, y)
    return y


def avg_pool2d_backward(dy, x_shape, pool_size, strides, padding):
    """Gradient of ``avg_pool2d_forward``: dy / count spread over each window's real cells.

    Parameters
    ----------
    dy : (N, OH, OW, C) float32
    x_shape : (N, H, W, C), the forward input's shape
    pool_size, strides, padding : as in ``avg_pool2d_forward``

    Returns
    -------
    dx : (N, H, W, C) float32
    """
    dy = _checks.float32_array("dy", dy, 4)
    shape = _x_shape(x_shape)
    (ph, pw), (sh, sw), ((top, _), (left, _)), (out_h, out_w) = _geometry(
        shape, pool_size, strides, padding
    )
    _checks.same_shape("dy", dy, (shape[0], out_h, out_w, shape[3]))
    dx = np.empty(shape, dtype=np.float32)  # each sample is zeroed inside the kernel
    _avg_backward(dy, ph, pw, sh, sw, top, left, dx)
    return dx
