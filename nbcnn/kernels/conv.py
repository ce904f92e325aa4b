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

With one input channel an im2col row has only KH*KW entries, which numba fills one scalar at a
time; the columns are then built transposed, (KH*KW, N*OH*OW), each tap's row a run of
contiguous copies of input rows (``_im2col_one_channel``), and the GEMMs take them transposed.
The seed model's first layer: forward 1.8 ms as a direct numba loop, 0.8 ms this way (its
columns 0.15 ms, its GEMM 0.4 ms; batch 128, interleaved medians).
"""

from __future__ import annotations

import numba
import numpy as np

from nbcnn.kernels import _checks, engine
from nbcnn.kernels._jit import kernel
from nbcnn.kernels.engine import padded
from nbcnn.kernels.microkernel import LINEAR

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
def _im2col_one_channel(xp3, kh, kw, sh, sw, dil_h, dil_w, out_h, out_w, cols_t):
    """Fill cols_t (KH*KW, N*OH*OW) from a padded single channel xp3 (N, H+pads, W+pads).

    Row a*KW + e holds, for every output position (n, i, j) in order, the input under tap
    (a, e): the transpose of ``_im2col``'s columns for C == 1. With stride 1 each (tap, n, i)
    is one contiguous copy of an input row. Iteration n writes only sample n's columns.
    """
    n_samples = xp3.shape[0]
    for n in numba.prange(n_samples):
        for a in range(kh):
            for e in range(kw):
                t = a * kw + e
                for i in range(out_h):
                    base = (n * out_h + i) * out_w
                    src = xp3[n, i * sh + a * dil_h]
                    if sw == 1:
                        cols_t[t, base : base + out_w] = src[e * dil_w : e * dil_w + out_w]
                    else:
                        for j in range(out_w):
                            cols_t[t, base + j] = src[j * sw + e * dil_w]


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
def _bias_activation(y2d, b, act):
    """y2d (R, F) += b, then the activation ``act`` (microkernel.ACTIVATIONS: 0 none, 1 ReLU,
    2 ReLU6): one parallel pass over the GEMM output."""
    rows, filters = y2d.shape
    for r in numba.prange(rows):
        for f in range(filters):
            v = y2d[r, f] + b[f]
            if act >= 1:
                v = max(v, 0.0)
            if act == 2:
                v = min(v, 6.0)
            y2d[r, f] = v


@kernel
def _gated_bias_grad(dout, out, code, ph, pw, act, dz, db_per_sample):
    """dz (N, OH, OW, L): the gradient w.r.t. the pre-activation of a convolution given
    the gradient w.r.t. its activation's output, the activation's derivative read off that
    output (``act``, a code of ``GATES``: ReLU y > 0, ReLU6 0 < y < 6, tanh 1 - y^2, sigmoid
    y (1 - y), linear 1, each as ``layers.activations.backward`` rounds it), or of a
    convolution whose ReLU and max pooling by (ph, pw) windows ran in its forward (the one
    pooling fused; ``act`` is then ReLU's); db_per_sample (N, F) float64 (zeroed) its
    per-sample sums. L >= F lanes: those past F are zeroed (the weight gradient reads rows
    of ``engine.gradient_lanes(F)`` floats without repacking them).

    dout, out : (N, OH // ph, OW // pw, F) float32, the gradient w.r.t. the (pooled) output
    and that output; code : the same shape, int8, each window's winning cell (read only for
    windows of more than one cell: pass a (1, 1, 1, 1) array for ph = pw = 1). With 1x1
    windows this is the activation's mask of dout; with larger ones each window's gradient
    goes to its winning cell where the activation was open, zero elsewhere. Every cell of dz
    is written once (the windows' cells, then the rows and columns past the last whole
    window): zeroing dz first and scattering into it cost a second pass (conv2 of the seed
    convnet, batch 128, one thread: 1.7 -> 0.35 ms). One kernel for the pooled and the plain
    case: numba compiles each parallel kernel for 1-2 s on a first run. Iteration n writes
    only dz[n] and db_per_sample[n]."""
    n_samples, out_h, out_w, filters = dout.shape
    single = ph * pw == 1  # one cell a window: code is never read
    uncapped = act != 2  # ReLU: open for y > 0; ReLU6: for 0 < y < 6
    linear = act == 0  # always open (out is not needed: pass dout)
    tanh, sigmoid = act == 3, act == 4
    one = np.float32(1.0)
    lanes = dz.shape[3]
    # Bitwise & and | with a loop-invariant flag, not branches, keep the loop vectorized (a
    # branchy form measured 1.05 -> 1.39 ms on the seed convnet's conv1 at batch 128).
    row_len = out_w * filters
    for n in numba.prange(n_samples):
        for i in range(out_h * ph, dz.shape[1]):
            dz[n, i] = 0.0
        for i in range(out_h * ph):
            for j in range(out_w * pw, dz.shape[2]):
                dz[n, i, j] = 0.0
        if single and filters >= 16:  # the activation's derivative alone; code not read
            for pi in range(out_h):
                for pj in range(out_w):
                    row = dz[n, pi, pj]
                    if tanh or sigmoid:  # apart: the selects cost ReLU's loop 16% (64 filters)
                        for f in range(filters):
                            y, d = out[n, pi, pj, f], dout[n, pi, pj, f]
                            g = d * (one - y * y) if tanh else d * y * (one - y)
                            row[f] = g
                            db_per_sample[n, f] += g
                    else:
                        for f in range(filters):
                            y = out[n, pi, pj, f]
                            take = ((y > 0.0) & ((y < 6.0) | uncapped)) | linear
                            g = dout[n, pi, pj, f] if take else np.float32(0.0)
                            row[f] = g
                            db_per_sample[n, f] += g
                    for f in range(filters, lanes):
                        row[f] = 0.0
            continue
        if single:
            # Few filters: a whole output row at a time, its pixels' filters as one flat
            # loop, the bias gradient summed per (pixel, filter) over the rows (a loop over
            # 6 filters was too short to vectorize: LeNet-5's first layer 1.48 -> 0.86 ms,
            # one thread, batch 128; with 32 filters the flat form measured 1.06 -> 1.47).
            sums = np.zeros(row_len, dtype=np.float64)
            grads = np.empty(row_len, dtype=np.float32)
            for pi in range(out_h):
                d_row = dout[n, pi].reshape(row_len)
                y_row = out[n, pi].reshape(row_len)
                for q in range(row_len):
                    y, d = y_row[q], d_row[q]
                    take = ((y > 0.0) & ((y < 6.0) | uncapped)) | linear
                    g = d if take else np.float32(0.0)
                    g = d * (one - y * y) if tanh else g
                    g = d * y * (one - y) if sigmoid else g
                    grads[q] = g
                    sums[q] += g
                z_row = dz[n, pi].reshape(out_w * lanes)
                if lanes == filters:
                    z_row[: out_w * lanes] = grads
                else:  # rows NR wide for the weight gradient, zeros past the filters
                    for pj in range(out_w):
                        for f in range(lanes):
                            at = pj * filters + min(f, filters - 1)
                            z_row[pj * lanes + f] = grads[at] if f < filters else 0.0
            for pj in range(out_w):
                for f in range(filters):
                    db_per_sample[n, f] += sums[pj * filters + f]
            continue
        for pi in range(out_h):
            for pj in range(out_w):
                for f in range(filters):  # pooled: ReLU's windows (the one fused pooling)
                    if out[n, pi, pj, f] > 0.0:
                        db_per_sample[n, f] += dout[n, pi, pj, f]
                for u in range(ph):
                    for v in range(pw):
                        cell = u * pw + v
                        row = dz[n, pi * ph + u, pj * pw + v]
                        for f in range(filters):
                            won = code[n, pi, pj, f] == cell and out[n, pi, pj, f] > 0.0
                            row[f] = dout[n, pi, pj, f] if won else np.float32(0.0)
                        for f in range(filters, lanes):
                            row[f] = 0.0


#: ``code`` for ``_gated_bias_grad`` without pooling (never read).
NO_CODE = np.zeros((1, 1, 1, 1), dtype=np.int8)


# ----------------------------------------------------------------------------------- wrappers


#: Largest im2col block: batches whose columns would exceed it run in chunks of samples.
#: Bounds peak memory (a VGG block's 32x32x32 layer at batch 128 needs 151 MB of columns)
#: at no measurable GEMM cost, and keeps each block under glibc's 32 MiB mmap threshold
#: (see _jit.py), so its memory is reused from batch to batch.
CHUNK_BYTES = 32 << 20


def _chunks(n_samples: int, row_bytes: int):
    """Sample ranges ``(start, stop)`` whose im2col blocks stay within CHUNK_BYTES."""
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    return [(start, min(start + step, n_samples)) for start in range(0, n_samples, step)]


def _columns(x, kernel_hw, strides, dilation, padding, out_hw):
    """im2col of contiguous float32 x (N, H, W, C): cols (N*OH*OW, KH*KW*C) float32, or for
    C == 1 their transpose (KH*KW, N*OH*OW) (see the module docstring)."""
    (kh, kw), (sh, sw), (dil_h, dil_w) = kernel_hw, strides, dilation
    (top, _), (left, _) = padding
    out_h, out_w = out_hw
    n_samples, _, _, channels = x.shape
    if channels == 1:
        xp = padded(x, padding)
        cols_t = np.empty((kh * kw, n_samples * out_h * out_w), dtype=np.float32)
        xp3 = xp.reshape(xp.shape[:3])
        _im2col_one_channel(xp3, kh, kw, sh, sw, dil_h, dil_w, out_h, out_w, cols_t)
        return cols_t
    cols = np.empty((n_samples * out_h * out_w, kh * kw * channels), dtype=np.float32)
    _im2col(x, kh, kw, sh, sw, dil_h, dil_w, top, left, out_h, out_w, cols)
    return cols


#: Activations that ``conv2d_forward`` applies in its own pass (the engine: in the tile's
#: epilogue) and whose derivative ``conv2d_backward`` reads off the output.
FUSED_ACTIVATIONS = ("relu", "relu6")

#: The activations whose derivative ``conv2d_backward`` reads off their output in its
#: bias-gradient pass (``relu_output``), and their codes in ``_gated_bias_grad``: the fused
#: ones, and tanh and sigmoid applied apart (NumPy's tanh is faster than the tile's, see
#: docs/speed.md; their derivative is not: LeNet-5's first layer's tanh gradient, 600,000
#: values, took NumPy 0.40 ms on one thread, one more pass over dz).
GATES = {"linear": LINEAR, "relu": 1, "relu6": 2, "tanh": 3, "sigmoid": 4}


def _activation_code(activation, relu):
    """The kernels' run-time activation code (microkernel.ACTIVATIONS) of ``activation``
    (None, 'linear', 'relu' or 'relu6'), or ReLU's for the older spelling ``relu=True``."""
    from nbcnn.kernels.microkernel import ACTIVATIONS

    if relu and activation not in (None, "relu"):
        raise ValueError(f"relu=True contradicts activation={activation!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation {activation!r} is not fused into the convolution "
            f"(one of {', '.join(FUSED_ACTIVATIONS)} or None)"
        )
    return ACTIVATIONS["relu" if relu else activation]


def conv2d_forward(
    x, w, b, strides, dilation, padding, *, relu=False, activation=None, return_cols=False
):
    """2-D cross-correlation with explicit zero padding, Keras layout.

    Parameters
    ----------
    x : (N, H, W, C) float32
    w : (KH, KW, C, F) float32
    b : (F,) float32 or None
    strides : (sh, sw) ints >= 1
    dilation : (dil_h, dil_w) ints >= 1
    padding : ((top, bottom), (left, right)) ints >= 0
    activation : None, 'linear', 'relu' or 'relu6', applied in the same pass (on the engine,
        while the output tile is in registers)
    relu : ``activation='relu'``, the older spelling
    return_cols : also return the im2col columns, for ``conv2d_backward(cols=...)``

    Returns
    -------
    y : (N, OH, OW, F) float32, OH = (H + top + bottom - dil_h*(KH-1) - 1) // sh + 1 (same for OW).
    cols : with ``return_cols``: the im2col columns (see ``im2col_gemm``), or None when the
        batch ran in several chunks (CHUNK_BYTES)
    """
    x = _checks.float32_array("x", x, 4)
    w = _checks.float32_array("w", w, 4)
    strides, dilation, padding, (out_h, out_w) = _checks.conv_geometry(
        x.shape, w.shape, strides, dilation, padding
    )
    kh, kw, channels, filters = w.shape
    if b is None:
        b = np.zeros(filters, dtype=np.float32)
    b = _checks.float32_array("b", b, 1)
    _checks.same_shape("b", b, (filters,))
    n_samples = x.shape[0]
    act = _activation_code(activation, relu)

    if engine.backend() == "engine":  # bias and activation ride in the micro-kernel's epilogue
        y2d = engine.conv_forward(x, w, b, strides, dilation, padding, (out_h, out_w), act)
        cols = None
    else:
        y2d, cols = im2col_gemm(x, w, strides, dilation, padding, (out_h, out_w))
        _bias_activation(y2d, b, act)
    y = y2d.reshape(n_samples, out_h, out_w, filters)
    return (y, cols) if return_cols else y


def im2col_gemm(x, w, strides, dilation, padding, out_hw):
    """The convolution without bias: y2d (N*OH*OW, F) float32 = im2col(x) @ w.reshape(-1, F).

    With the engine backend (the default, see ``engine.backend``) the product is computed by
    the implicit-GEMM engine, without columns, and cols is None. Otherwise, for checked,
    contiguous float32 x (N, H, W, C) and w (KH, KW, C, F), the GEMM runs once per chunk of
    samples (CHUNK_BYTES), outside any parallel loop, and cols are the columns,
    (N*OH*OW, KH*KW*C), or (KH*KW, N*OH*OW) for C == 1, when the batch was one chunk (a
    training forward keeps them so that the backward need not build them again: seed convnet
    step 27.5 -> 26.6 ms, median of 5
    runs, for +29 MB held between the passes at batch 128), else None.
    """
    if engine.backend() == "engine":
        return engine.conv_forward(x, w, None, strides, dilation, padding, out_hw), None
    kh, kw, channels, filters = w.shape
    n_samples = x.shape[0]
    rows = out_hw[0] * out_hw[1]  # im2col rows per sample
    w2d = w.reshape(kh * kw * channels, filters)
    y2d = np.empty((n_samples * rows, filters), dtype=np.float32)
    for start, stop in _chunks(n_samples, rows * kh * kw * channels * 4):
        cols = _columns(x[start:stop], (kh, kw), strides, dilation, padding, out_hw)
        rows_view = cols.T if channels == 1 else cols  # C == 1: columns built transposed
        np.matmul(rows_view, w2d, out=y2d[start * rows : stop * rows])  # the big GEMM
    return y2d, (cols if stop - start == n_samples else None)


def conv2d_backward(
    dy, x, w, strides, dilation, padding, *, need_dx=True, relu_output=None, activation="relu",
    cols=None,
):  # fmt: skip
    """Gradients of ``conv2d_forward`` given the upstream gradient dy.

    Parameters
    ----------
    dy : (N, OH, OW, F) float32, gradient of the loss with respect to y
    x : (N, H, W, C) float32, the forward input
    w : (KH, KW, C, F) float32
    strides, dilation, padding : as in ``conv2d_forward``
    need_dx : False skips dx (the first layer has no use for it): one GEMM and col2im fewer.
    relu_output : (N, OH, OW, F) float32, the output of the convolution's ``activation``
        ('relu' or 'relu6' fused in ``conv2d_forward``, or 'tanh' or 'sigmoid' applied
        after it); dy is then the gradient w.r.t. that output and is multiplied by the
        activation's derivative read off it (y > 0; 0 < y < 6; 1 - y^2; y (1 - y)) here,
        in the same pass that sums the bias gradient.
    activation : which activation ``relu_output`` came from (a key of ``GATES``).
    cols : the columns ``conv2d_forward(..., return_cols=True)`` returned for this x, or None
        (they are rebuilt). They are overwritten: pass them to one backward only.

    Returns
    -------
    dx : (N, H, W, C) float32, or None when ``need_dx`` is False
    dw : (KH, KW, C, F) float32
    db : (F,) float32, the sum of dy over N, OH, OW (returned even for layers without bias)
    """
    x = _checks.float32_array("x", x, 4)
    w = _checks.float32_array("w", w, 4)
    dy = _checks.float32_array("dy", dy, 4)
    strides, dilation, padding, (out_h, out_w) = _checks.conv_geometry(
        x.shape, w.shape, strides, dilation, padding
    )
    n_samples, filters = x.shape[0], w.shape[3]
    _checks.same_shape("dy", dy, (n_samples, out_h, out_w, filters))

    db_per_sample = np.zeros((n_samples, filters), dtype=np.float64)
    if relu_output is None:
        out, act = dy, LINEAR
    else:
        relu_output = _checks.float32_array("relu_output", relu_output, 4)
        _checks.same_shape("relu_output", relu_output, dy.shape)
        if activation not in GATES:
            raise ValueError(f"relu_output given for activation {activation!r}")
        out, act = relu_output, GATES[activation]
    # One pass: the activation's derivative (none when linear), the bias gradient and dz in
    # the rows the weight gradient reads as they are (engine.gradient_lanes).
    dz = np.empty((*dy.shape[:3], engine.gradient_lanes(filters)), dtype=np.float32)
    _gated_bias_grad(dy, out, NO_CODE, 1, 1, act, dz, db_per_sample)
    db = db_per_sample.sum(axis=0).astype(np.float32)
    dx, dw = im2col_gemm_backward(dz, x, w, strides, dilation, padding, need_dx, cols)
    return dx, dw, db


def im2col_gemm_backward(dz, x, w, strides, dilation, padding, need_dx, cols=None):
    """dx (N, H, W, C) or None, and dw (KH, KW, C, F), of ``im2col_gemm`` given dz (N, OH, OW, F).

    dz is the gradient after any activation; inputs are checked, contiguous float32. On the
    engine dz may be (N, OH, OW, ``engine.gradient_lanes(F)``), zeros past F. cols, if
    given, are the forward's columns of the whole batch (checked here, then overwritten).
    """
    if engine.backend() == "engine":
        # The engine's weight gradient, and its input gradient as a transposed convolution
        # (strided ones phase by phase).
        dw = engine.conv_weight_grad(dz, x, w.shape, strides, dilation, padding)
        dx = None
        if need_dx:
            dz = np.ascontiguousarray(dz[..., : w.shape[3]])
            dx = engine.conv_input_grad(dz, w, x.shape, dilation, padding, strides)
        return dx, dw
    n_samples, height, width, channels = x.shape
    kh, kw, _, filters = w.shape
    _, out_h, out_w, _ = dz.shape
    rows = out_h * out_w
    k = kh * kw * channels
    w2d = w.reshape(k, filters)
    dy2d = dz.reshape(n_samples * rows, filters)
    (sh, sw), (dil_h, dil_w), ((top, bottom), (left, right)) = strides, dilation, padding
    dx_padded = None
    if need_dx:
        dx_padded = np.zeros(
            (n_samples, height + top + bottom, width + left + right, channels), dtype=np.float32
        )
    one = channels == 1  # columns transposed, (k, rows)
    given = cols
    if given is not None:
        given = _checks.float32_array("cols", given, 2)
        _checks.same_shape("cols", given, (k, n_samples * rows) if one else (n_samples * rows, k))
    chunks = [(0, n_samples)] if given is not None else _chunks(n_samples, rows * k * 4)
    dw_t = np.zeros((filters, k), dtype=np.float32)
    for start, stop in chunks:
        if given is not None:
            cols = given
        else:
            cols = _columns(x[start:stop], (kh, kw), strides, dilation, padding, (out_h, out_w))
        dy_chunk = dy2d[start * rows : stop * rows]
        # GEMM 2, summing over the chunk's samples; dz.T @ cols measured 0.35 ms faster than
        # cols.T @ dz on conv2 (25088 x 288 columns), cols_t @ dz than dz.T @ cols_t.T on conv1.
        dw_t += (cols @ dy_chunk).T if one else dy_chunk.T @ cols
        if need_dx:
            # GEMM 3, into the spent columns when their layout allows
            dcols = dy_chunk @ w2d.T if one else np.matmul(dy_chunk, w2d.T, out=cols)
            _col2im(dcols, kh, kw, sh, sw, dil_h, dil_w, out_h, out_w, dx_padded[start:stop])
    dw = np.ascontiguousarray(dw_t.T).reshape(kh, kw, channels, filters)
    if not need_dx:
        return None, dw
    if top or bottom or left or right:
        dx = np.ascontiguousarray(dx_padded[:, top : top + height, left : left + width, :])
    else:
        dx = dx_padded
    return dx, dw
