"""Conv2D with ReLU and the non-overlapping max pooling after it, as one forward and one backward.

The block ``Conv2D(activation='relu') -> MaxPooling2D(pool_size=p, strides=p)`` is the
backbone of the seed convnet, LeNet and VGG. Run layer by layer, it writes the convolution's
whole output (12.8 MB for the seed model's first layer at batch 128) with bias and ReLU, reads
it back to pool, and in the backward writes and reads a gradient of that size twice more
(unpooling, then the ReLU mask). Fused, the forward's GEMM output is read once by one pass that
adds the bias, applies the ReLU and pools, and only the pooled maxima and a one-byte code of
where each came from are stored; the backward starts from them, and (with
``NBCNN_CONV=blas``) for a first layer (one input channel, no dx) takes the weight gradient
straight from the pooled gradient without unpooling it. At batch 128, fused vs layer by
layer: seed convnet training step 23.5 -> 22.2 ms (medians of 5 alternating runs of
benchmarks/profile_step.py), inference 11.0 -> 9.8 ms, VGG-CIFAR inference 66.6 -> 63.3 ms
(medians of interleaved rounds).

On the engine (the default backend) the forward goes further: the pooling runs in the
micro-kernel's epilogue while the tile is in registers (``engine.conv_relu_maxpool``), so
the convolution's output is never stored at all. One thread, batch 128, CPU time (AMD EPYC,
AVX-512): conv1 + ReLU + pool 2.2-2.6 -> 1.05-1.14 ms, conv2's 10.3-10.9 -> 9.5 ms (its
plain forward with bias and ReLU: 9.6-9.7). Windows of more cells than a tile has rows (3x3
pools on AVX-512) still pool in the pass below. A first layer's backward (no dx) unpools
the gradient (each cell written once) and runs the engine's weight gradient over it: the
seed convnet's conv1, batch 128, 5.7 -> 2.1 ms on one thread against
``_direct_weight_grad_pooled`` below (which the blas path keeps); a window-ordered variant
that skipped the pooling floors measured the same (2.06-2.09 ms) and was removed.

Results equal the layer-by-layer ones: the same GEMM and the same bias/ReLU arithmetic, and the
same tie rule as ``pool.max_pool2d_forward`` (the FIRST maximum in row-major window order wins,
compared after the ReLU), so pooled maxima are bit for bit the same. ``code[n, i, j, f] =
u * pw + v`` names the winning cell (u, v) of window (i, j); convolution outputs beyond the
last whole window (pooling floors) get zero gradient, as they do layer by layer.

Layouts are Keras's: x (N, H, W, C), w (KH, KW, C, F), pooled and code (N, OH//ph, OW//pw, F).
"""

from __future__ import annotations

import numba
import numpy as np

from nbcnn.kernels import _checks, engine
from nbcnn.kernels._jit import kernel
from nbcnn.kernels.conv import _gated_bias_grad, im2col_gemm, im2col_gemm_backward
from nbcnn.kernels.engine import padded
from nbcnn.kernels.microkernel import RELU

#: ``code`` is int8: windows of up to 127 cells.
MAX_WINDOW = 127

# ------------------------------------------------------------------------------------ kernels


@kernel
def _direct_weight_grad_pooled(
    xp, dpooled, pooled, code, kh, kw, sh, sw, dil_h, dil_w, ph, pw, dw_per_sample, db_per_sample
):
    """dw and db of a first layer (one input channel, no dx) straight from the pooled gradient.

    xp : (N, H+pads, W+pads, 1) padded input. Unpooling the gradient (12.8 MB on the seed model)
    and a GEMM over the columns measured no faster, so this loop reads only the pooled arrays.
    A window's gradient reaches only its winning cell, and only where the ReLU was open
    (pooled > 0). dw_per_sample (N, KH, KW, C, F) float32 and db_per_sample (N, F) float64 must
    be zeroed; iteration n writes only row n.
    """
    n_samples, out_h, out_w, filters = dpooled.shape
    channels = xp.shape[3]
    for n in numba.prange(n_samples):
        g = np.empty(filters, dtype=np.float32)
        for pi in range(out_h):
            for pj in range(out_w):
                for f in range(filters):
                    if pooled[n, pi, pj, f] > 0.0:
                        db_per_sample[n, f] += dpooled[n, pi, pj, f]
                for u in range(ph):
                    for v in range(pw):
                        q = u * pw + v
                        i = pi * ph + u
                        j = pj * pw + v
                        for f in range(filters):
                            open_winner = code[n, pi, pj, f] == q and pooled[n, pi, pj, f] > 0.0
                            g[f] = dpooled[n, pi, pj, f] if open_winner else np.float32(0.0)
                        for a in range(kh):
                            h = i * sh + a * dil_h
                            for e in range(kw):
                                wi = j * sw + e * dil_w
                                for c in range(channels):
                                    xv = xp[n, h, wi, c]
                                    for f in range(filters):
                                        dw_per_sample[n, a, e, c, f] += xv * g[f]


@kernel
def _bias_relu_maxpool(y, b, ph, pw, pooled, code):
    """pooled, code from the raw GEMM output y (N, OH, OW, F): one read of y, no write of it.

    Bias and ReLU as ``conv._bias_activation`` computes them, then the window's first maximum.
    """
    n_samples, _, _, filters = y.shape
    _, out_h, out_w, _ = pooled.shape
    for n in numba.prange(n_samples):
        for pi in range(out_h):
            for pj in range(out_w):
                for u in range(ph):
                    for v in range(pw):
                        q = u * pw + v
                        i = pi * ph + u
                        j = pj * pw + v
                        for f in range(filters):
                            r = max(y[n, i, j, f] + b[f], np.float32(0.0))
                            if q == 0 or r > pooled[n, pi, pj, f]:
                                pooled[n, pi, pj, f] = r
                                code[n, pi, pj, f] = q


# ----------------------------------------------------------------------------------- wrappers


def _geometry(x, w, strides, dilation, padding, pool_size):
    """Checked arrays, conv geometry and the pooled shape."""
    x = _checks.float32_array("x", x, 4)
    w = _checks.float32_array("w", w, 4)
    strides, dilation, padding, out_hw = _checks.conv_geometry(
        x.shape, w.shape, strides, dilation, padding
    )
    ph, pw = (int(p) for p in pool_size)
    if ph < 1 or pw < 1 or ph * pw > MAX_WINDOW:
        raise ValueError(f"pool_size {pool_size} must be >= 1 with at most {MAX_WINDOW} cells")
    pooled_hw = (out_hw[0] // ph, out_hw[1] // pw)
    if min(pooled_hw) < 1:
        raise ValueError(f"pool_size {pool_size} is larger than the conv output {out_hw}")
    return x, w, strides, dilation, padding, out_hw, (ph, pw), pooled_hw


def conv_relu_maxpool_forward(x, w, b, strides, dilation, padding, pool_size, *, return_cols=False):
    """relu(conv2d(x, w) + b), then max pooling with windows of ``pool_size`` and equal strides.

    Parameters
    ----------
    x : (N, H, W, C) float32
    w : (KH, KW, C, F) float32
    b : (F,) float32 or None
    strides, dilation, padding : as in ``conv.conv2d_forward``
    pool_size : (ph, pw), at most 127 cells; the pooling has no padding and strides = pool_size
    return_cols : also return the im2col columns (or None), as ``conv.conv2d_forward`` does

    Returns
    -------
    pooled : (N, OH // ph, OW // pw, F) float32
    code : (N, OH // ph, OW // pw, F) int8, the winning cell u * pw + v of each window
    """
    x, w, strides, dilation, padding, out_hw, (ph, pw), pooled_hw = _geometry(
        x, w, strides, dilation, padding, pool_size
    )
    kh, kw, channels, filters = w.shape
    b = np.zeros(filters, np.float32) if b is None else _checks.float32_array("b", b, 1)
    _checks.same_shape("b", b, (filters,))
    shape = (x.shape[0], *pooled_hw, filters)
    if engine.backend() == "engine":  # pooled in the tile's epilogue (engine.py)
        done = engine.conv_relu_maxpool(x, w, b, strides, dilation, padding, (ph, pw), pooled_hw)
        if done is not None:
            return (*done, None) if return_cols else done
    pooled = np.empty(shape, dtype=np.float32)
    code = np.empty(shape, dtype=np.int8)
    y2d, cols = im2col_gemm(x, w, strides, dilation, padding, out_hw)
    _bias_relu_maxpool(y2d.reshape(x.shape[0], *out_hw, filters), b, ph, pw, pooled, code)
    return (pooled, code, cols) if return_cols else (pooled, code)


def conv_avgpool_forward(x, w, b, strides, dilation, padding, pool_size, activation=None):
    """activation(conv2d(x, w) + b) averaged over windows of ``pool_size`` with equal strides,
    in the engine's tiles (``engine.conv_avgpool``), or None where they cannot (the
    ``NBCNN_CONV=blas`` backend, no tile holding a whole window): the caller runs the two
    layers. Arguments as ``conv_relu_maxpool_forward``'s; ``activation`` None, 'linear',
    'relu' or 'relu6'. Returns pooled (N, OH // ph, OW // pw, F) float32 or None."""
    from nbcnn.kernels.microkernel import ACTIVATIONS

    if engine.backend() != "engine":
        return None
    x, w, strides, dilation, padding, _, pool, pooled_hw = _geometry(
        x, w, strides, dilation, padding, pool_size
    )
    if b is not None:
        b = _checks.float32_array("b", b, 1)
        _checks.same_shape("b", b, (w.shape[3],))
    act = ACTIVATIONS[activation]
    return engine.conv_avgpool(x, w, b, strides, dilation, padding, pool, pooled_hw, act)


def conv_relu_maxpool_backward(
    dpooled, x, w, pooled, code, strides, dilation, padding, pool_size, *, need_dx=True, cols=None
):
    """Gradients of ``conv_relu_maxpool_forward`` given dpooled, the gradient w.r.t. pooled.

    Parameters
    ----------
    dpooled, pooled : (N, PH, PW, F) float32; pooled and code as the forward returned them
    code : (N, PH, PW, F) int8
    x, w, strides, dilation, padding, pool_size : the forward's
    need_dx : False skips dx (a first layer)
    cols : the forward's columns (``return_cols``), or None; overwritten, as in ``conv``

    Returns
    -------
    dx : (N, H, W, C) float32, or None when ``need_dx`` is False
    dw : (KH, KW, C, F) float32
    db : (F,) float32
    """
    x, w, strides, dilation, padding, out_hw, (ph, pw), pooled_hw = _geometry(
        x, w, strides, dilation, padding, pool_size
    )
    kh, kw, channels, filters = w.shape
    shape = (x.shape[0], *pooled_hw, filters)
    dpooled = _checks.float32_array("dpooled", dpooled, 4)
    pooled = _checks.float32_array("pooled", pooled, 4)
    code = np.ascontiguousarray(code)
    for name, array in (("dpooled", dpooled), ("pooled", pooled), ("code", code)):
        _checks.same_shape(name, array, shape)
    if code.dtype != np.int8 or (code.size and (code.min() < 0 or code.max() >= ph * pw)):
        raise ValueError(f"code must be int8 cell indices in [0, {ph * pw})")
    db_per_sample = np.zeros((x.shape[0], filters), dtype=np.float64)
    if channels == 1 and not need_dx:
        (sh, sw), (dil_h, dil_w) = strides, dilation
        dw_per_sample = np.zeros((x.shape[0], kh, kw, channels, filters), dtype=np.float32)
        _direct_weight_grad_pooled(
            padded(x, padding), dpooled, pooled, code, kh, kw, sh, sw, dil_h, dil_w, ph, pw,
            dw_per_sample, db_per_sample,
        )  # fmt: skip
        dw = dw_per_sample.sum(axis=0, dtype=np.float64).astype(np.float32)
        return None, dw, db_per_sample.sum(axis=0).astype(np.float32)
    dz = np.empty((x.shape[0], *out_hw, engine.gradient_lanes(filters)), dtype=np.float32)
    _gated_bias_grad(dpooled, pooled, code, ph, pw, RELU, dz, db_per_sample)
    dx, dw = im2col_gemm_backward(dz, x, w, strides, dilation, padding, need_dx, cols)
    return dx, dw, db_per_sample.sum(axis=0).astype(np.float32)
