"""nbcnn's convolution engine: implicit GEMM on register-blocked micro-kernels.

The forward of a convolution is the product of the im2col matrix (one row per output pixel,
KH*KW*C columns) and the weights (KH*KW*C, F). The engine never builds that matrix: a row of
it is the input window of one output pixel, so a tile of MR output pixels is described by MR
row offsets into the zero-padded, channels-last input (``pixel_offsets``), and column k by the
offset of its tap and channel inside a window (``tap_offsets``). The micro-kernel
(``microkernel.tile_kernel``) gathers A through those offsets while its MR x NR output tile
stays in vector registers, then adds the bias and applies ReLU before the one store. A
convolution followed by ReLU and non-overlapping max pooling (``conv_relu_maxpool``) orders
its pixels window by window, so that a tile holds whole pooling windows and its epilogue
stores only each window's maximum and the index of its winning cell.

Work is split over output-pixel tiles in a ``prange`` over blocks of tiles; each iteration
writes only its own rows of y. Weights are packed once per call into (F/NR, K, NR) blocks,
zero-filled past F, and a tile that crosses the last pixel is computed into a scratch tile and
copied (past the last filter, its stores are masked).

``NBCNN_CONV=blas`` selects the im2col + OpenBLAS path instead (benchmarks compare the two;
tests use it as a reference).
"""

from __future__ import annotations

import functools
import os

import numba
import numpy as np

from nbcnn.kernels import _checks, borders, winograd
from nbcnn.kernels._jit import kernel
from nbcnn.kernels._tables import TABLES, cached_table
from nbcnn.kernels.microkernel import (
    ACCUMULATE,
    AVG_POOL,
    BIAS,
    LINEAR,
    RELU,
    RELU_MAXPOOL,
    choose_pool_tile,
    choose_tile,
    launch,
    pack_weights,
    pool_tile_kernel,
    tile_cells,
    tile_cols,
    tile_epilogue,
    tile_kernel,
    tile_rows,
)

#: Values of NBCNN_CONV: ``engine`` (default) or ``blas``.
BACKENDS = ("engine", "blas")


def backend() -> str:
    """The convolution backend NBCNN_CONV names (``engine`` unless it says ``blas``)."""
    value = os.environ.get("NBCNN_CONV", "engine").strip().lower() or "engine"
    if value not in BACKENDS:
        raise ValueError(f"NBCNN_CONV must be one of {', '.join(BACKENDS)}, got {value!r}")
    return value


# Tiles per prange iteration: enough iterations to balance two or more threads, few enough
# that each one's scratch tile and loop setup are amortised.
_TILES_PER_BLOCK = 16


def _tiles_per_block(n_tiles, n_column_blocks):
    """Tiles per prange iteration: ``_TILES_PER_BLOCK``, or fewer when that would leave
    fewer than 4 iterations a thread (a Dense layer's 128 rows are 22 tiles of 6: in blocks
    of 16, one thread had 16 tiles and the other 6)."""
    share = n_tiles * n_column_blocks // (4 * numba.get_num_threads())
    return max(1, min(_TILES_PER_BLOCK, share))


@kernel
def _forward_tiles(
    config, xp, pixels, taps, wpack, bpack, y, n_pixels, n_filters, per_block, act
):  # fmt: skip
    """y[p, f] = act(sum_k xp[pixels[p] + taps[k]] * w[k, f] + b[f]) for p < n_pixels, act
    the run-time activation code ``act`` (``microkernel.ACTIVATIONS``).

    xp : (*,) float32 flat padded input; pixels : (T * MR,) int64, padded with a valid
    offset; taps : (K,) int64; wpack : (F/NR, K, NR) float32; bpack : (F/NR * NR,) float32;
    y : (n_pixels * n_filters,) float32. One prange iteration: ``per_block`` tiles of one
    NR block of filters (``_tiles_per_block``).
    """
    mr = tile_rows(config)
    nr = tile_cols(config)
    k_len = taps.shape[0]
    n_tiles = (n_pixels + mr - 1) // mr
    n_blocks = (n_tiles + per_block - 1) // per_block
    n_fb = wpack.shape[0]
    for item in numba.prange(n_blocks * n_fb):
        block, fb = item // n_fb, item % n_fb  # neighbours share their A rows
        scratch = np.empty(mr * nr, dtype=np.float32)
        stop = min((block + 1) * per_block, n_tiles)
        wb = wpack[fb]
        f0 = fb * nr
        cols = min(nr, n_filters - f0)
        for t in range(block * per_block, stop):
            p0 = t * mr
            rows = min(mr, n_pixels - p0)
            # One call site: a second inlined copy of the tile measured 1.4x slower.
            # Missing filters are masked in the tile's stores; missing rows (the last tile)
            # go through a scratch tile.
            edge = rows < mr
            out, at, ld = (scratch, 0, nr) if edge else (y, p0 * n_filters + f0, n_filters)
            tile_kernel(
                numba.literally(config), xp, pixels, p0, taps, k_len, wb, bpack, f0, out, at, ld,
                nr if edge else cols, act,
            )  # fmt: skip
            if edge:
                for r in range(rows):
                    for j in range(cols):
                        y[(p0 + r) * n_filters + f0 + j] = scratch[r * nr + j]


def _offsets(n_samples, rows, cols, padded_hw, channels):
    """(N, R, C) int64: ((n * PH + rows[r]) * PW + cols[c]) * channels, rows and cols being
    padded-input coordinates of window origins."""
    padded_h, padded_w = padded_hw
    sample = np.arange(n_samples, dtype=np.int64)[:, None, None] * (padded_h * padded_w)
    return (sample + rows[None, :, None] * padded_w + cols[None, None, :]) * channels


@cached_table(lambda out_hw, *_: out_hw[0] * out_hw[1])
def _pixel_offsets(n_samples, out_hw, strides, padded_hw, channels, rows_to):
    """(ceil(N*OH*OW / rows_to) * rows_to,) int64, read-only: the offset of output pixel p's
    window origin in the flat padded input, in (n, i, j) order; the entries past N*OH*OW (to
    fill the last tile) repeat the last pixel's."""
    (out_h, out_w), (sh, sw) = out_hw, strides
    rows, cols = np.arange(out_h, dtype=np.int64) * sh, np.arange(out_w, dtype=np.int64) * sw
    return _frozen(_offsets(n_samples, rows, cols, padded_hw, channels), rows_to)


@cached_table(lambda hw, pool, *_: hw[0] * hw[1] * pool[0] * pool[1])
def _window_pixel_offsets(n_samples, pooled_hw, pool, strides, padded_hw, channels, rows_to):
    """As ``_pixel_offsets`` for the pixels that max-pooling windows cover, window by window:
    row q * S + s is the pixel in cell s = u * pw + v of window q = (n * PH + pi) * PW + pj,
    that is pixel (pi * ph + u, pj * pw + v), so each window's cells are consecutive rows."""
    (out_h, out_w), (ph, pw), (sh, sw) = pooled_hw, pool, strides
    pixel = _offsets(
        n_samples, np.arange(out_h * ph, dtype=np.int64) * sh,
        np.arange(out_w * pw, dtype=np.int64) * sw, padded_hw, channels,
    )  # fmt: skip
    windows = pixel.reshape(n_samples, out_h, ph, out_w, pw).transpose(0, 1, 3, 2, 4)
    return _frozen(windows, rows_to)


def _frozen(offsets, rows_to):
    """offsets flattened to int64, padded to a multiple of ``rows_to`` with the last, read-only."""
    flat = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
    padding = -len(flat) % rows_to
    if padding:
        flat = np.concatenate([flat, np.full(padding, flat[-1], np.int64)])
    flat.setflags(write=False)
    return flat


@functools.lru_cache(maxsize=TABLES)
def _tap_offsets(kernel_hw, dilation, padded_w, channels):
    """(KH*KW*C,) int64, read-only: offset of tap (a, e) and channel c inside a window, in the
    order of ``w.reshape(KH*KW*C, F)``."""
    (kh, kw), (dil_h, dil_w) = kernel_hw, dilation
    a, e, c = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(channels), indexing="ij")
    return _frozen(((a * dil_h) * padded_w + e * dil_w) * channels + c, 1)


def padded(x, padding):
    """x (N, H, W, C) with explicit zeros around H and W (no copy when there are none)."""
    (top, bottom), (left, right) = padding
    if not (top or bottom or left or right):
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def _addressing(x, w_shape, strides, dilation, padding, out_hw, rows_to):
    """The implicit GEMM's A: ``(xp, pixels, taps)``, the flat padded input, each output
    pixel's window offset into it (padded to a multiple of ``rows_to`` by repeating the
    last) and each (tap, channel) column's offset inside a window."""
    kh, kw, channels, _ = w_shape
    xp = padded(x, padding)
    _, padded_h, padded_w, _ = xp.shape
    pixels = _pixel_offsets(
        x.shape[0], tuple(out_hw), tuple(strides), (padded_h, padded_w), channels, rows_to
    )
    taps = _tap_offsets((kh, kw), tuple(dilation), padded_w, channels)
    # Contiguous: the micro-kernel reads its arrays as flat memory (a reshaped view of a
    # strided array would keep its strides).
    return np.ascontiguousarray(xp).reshape(-1), pixels, taps


def conv_forward(x, w, b, strides, dilation, padding, out_hw, act=LINEAR):
    """y2d (N*OH*OW, F) float32 = act(conv(x, w) + b) for checked, contiguous float32
    x (N, H, W, C), w (KH, KW, C, F), b (F,) or None; geometry as ``conv.conv2d_forward``;
    ``act`` an activation code (``microkernel.ACTIVATIONS``).

    Winograd F(2x2, 3x3) where its measured rule chooses it (``winograd.chosen``), else the
    direct implicit GEMM."""
    if winograd.chosen(x.shape, w.shape, strides, dilation, out_hw):
        y = winograd.conv_forward(x, w, b, padding, act)
        return y.reshape(-1, w.shape[3])
    return _direct_forward(x, w, b, strides, dilation, padding, out_hw, act)


def _direct_forward(x, w, b, strides, dilation, padding, out_hw, act=LINEAR):
    """``conv_forward`` as the implicit GEMM on the micro-kernel, whatever the shape."""
    kh, kw, channels, filters = w.shape
    n_pixels = x.shape[0] * out_hw[0] * out_hw[1]
    if borders.chosen(w.shape, padding):  # padding: only the taps inside the input
        return borders.conv_forward(x, w, b, strides, dilation, padding, out_hw, act)
    rows = choose_tile(filters).mr
    xp, pixels, taps = _addressing(x, w.shape, strides, dilation, padding, out_hw, rows)
    return _gathered_product(xp, pixels, taps, w.reshape(-1, filters), n_pixels, b, act)


def _gathered_product(xp, pixels, taps, w2d, n_pixels, b=None, act=LINEAR):
    """y2d (P, F) float32: y[p, f] = act(sum_k xp[pixels[p] + taps[k]] * w2d[k, f] + b[f]) on
    the micro-kernel, for flat float32 xp, int64 pixels (a multiple of the tile's MR long,
    padded with valid offsets) and taps (K,), w2d (K, F), b (F,) or None."""
    filters = w2d.shape[1]
    tile = choose_tile(filters)
    config = tile.config(BIAS)
    wpack = pack_weights(w2d, tile.nr)
    bpack = np.zeros(wpack.shape[0] * tile.nr, dtype=np.float32)
    if b is not None:
        bpack[:filters] = b
    y = np.empty(n_pixels * filters, dtype=np.float32)
    per_block = _tiles_per_block(-(-n_pixels // tile.mr), wpack.shape[0])
    launch(
        _forward_tiles, config, xp, pixels, taps, wpack, bpack, y, n_pixels, filters, per_block,
        act,
    )  # fmt: skip
    return y.reshape(n_pixels, filters)


# ------------------------------------------------------------------- max-pooling epilogue


@kernel
def _pooled_tiles(
    config, xp, pixels, taps, wpack, bpack, pooled, code, n_windows, per_block, act
):  # fmt: skip
    """pooled[q, f] = max over the cells s of window q of relu(conv + b)[q * S + s, f] and
    code[q, f] = the first s reaching it (the RELU_MAXPOOL epilogue), or the mean over them
    of act(conv + b) (AVG_POOL, ``act`` a run-time activation code; code is not touched),
    computed in the micro-kernel's epilogue (``pool_tile_kernel``): the convolution's output
    never leaves the registers.

    A tile is MR / S whole windows. pixels : (n_tiles * MR,) int64 from
    ``_window_pixel_offsets``; pooled : (n_windows * F,) float32; code : (n_windows * F,)
    int8 (any length for AVG_POOL); the rest as ``_forward_tiles``.
    """
    coded = tile_epilogue(config) == RELU_MAXPOOL
    mr = tile_rows(config)
    nr = tile_cols(config)
    k_len = taps.shape[0]
    windows = mr // tile_cells(config)
    n_filters = pooled.shape[0] // n_windows
    n_tiles = (n_windows + windows - 1) // windows
    n_blocks = (n_tiles + per_block - 1) // per_block
    n_fb = wpack.shape[0]
    for item in numba.prange(n_blocks * n_fb):
        block, fb = item // n_fb, item % n_fb
        scratch = np.empty(windows * nr, dtype=np.float32)
        scratch_code = np.empty(windows * nr, dtype=np.int8)
        wb = wpack[fb]
        f0 = fb * nr
        cols = min(nr, n_filters - f0)
        for t in range(block * per_block, min((block + 1) * per_block, n_tiles)):
            q0 = t * windows
            rows = min(windows, n_windows - q0)
            edge = rows < windows or cols < nr
            if edge:
                out, out_code, at, ld = scratch, scratch_code, 0, nr
            else:
                out, out_code, at, ld = pooled, code, q0 * n_filters + f0, n_filters
            pool_tile_kernel(
                numba.literally(config), xp, pixels, t * mr, taps, k_len, wb, bpack, f0, out,
                at, ld, out_code, act,
            )  # fmt: skip
            if edge:
                for r in range(rows):
                    for j in range(cols):
                        pooled[(q0 + r) * n_filters + f0 + j] = scratch[r * nr + j]
                        if coded:
                            code[(q0 + r) * n_filters + f0 + j] = scratch_code[r * nr + j]


def _pooled_on_winograd(x, w, strides, dilation, padding, pool):
    """Whether a convolution + 2x2 pooling runs in Winograd's output transform: its rule asked
    about the convolution's whole output, as for the convolution alone (the same sums)."""
    whole_hw = _checks.conv_geometry(x.shape, w.shape, strides, dilation, padding)[3]
    return tuple(pool) == (2, 2) and winograd.chosen(x.shape, w.shape, strides, dilation, whole_hw)


def _pooled_tiles_of(x, w, b, strides, dilation, padding, pool, pooled_hw, epilogue, act):
    """``pooled, code`` (N, PH, PW, F) float32 and int8 (code None for AVG_POOL) of the
    convolution pooled in the tiles' ``epilogue`` (RELU_MAXPOOL or AVG_POOL, ``act`` its
    activation code), or None when no tile holds a whole window."""
    kh, kw, channels, filters = w.shape
    n_samples = x.shape[0]
    cells = pool[0] * pool[1]
    tile = choose_pool_tile(filters, cells)
    if tile is None:
        return None
    shape = (n_samples, *pooled_hw, filters)
    pooled = np.empty(shape, dtype=np.float32)
    code = np.empty(shape, dtype=np.int8) if epilogue == RELU_MAXPOOL else None
    n_windows = n_samples * pooled_hw[0] * pooled_hw[1]
    if n_windows == 0:  # an empty batch
        return pooled, code
    xp = padded(x, padding)
    _, padded_h, padded_w, _ = xp.shape
    n_tiles = -(-n_windows * cells // tile.mr)
    pixels = _window_pixel_offsets(
        n_samples, tuple(pooled_hw), tuple(pool), tuple(strides), (padded_h, padded_w),
        channels, tile.mr,
    )  # fmt: skip
    taps = _tap_offsets((kh, kw), tuple(dilation), padded_w, channels)
    wpack = pack_weights(w.reshape(kh * kw * channels, filters), tile.nr)
    bpack = np.zeros(wpack.shape[0] * tile.nr, dtype=np.float32)
    if b is not None:
        bpack[:filters] = b
    launch(
        _pooled_tiles, tile.config(epilogue, cells), xp.reshape(-1), pixels, taps, wpack,
        bpack, pooled.reshape(-1), _NO_CODE if code is None else code.reshape(-1), n_windows,
        _tiles_per_block(n_tiles, wpack.shape[0]), act,
    )  # fmt: skip
    return pooled, code


def conv_relu_maxpool(x, w, b, strides, dilation, padding, pool, pooled_hw):
    """``pooled, code`` (N, PH, PW, F) float32 and int8 of relu(conv(x, w) + b) max-pooled by
    non-overlapping ``pool`` = (ph, pw) windows (PH = OH // ph, PW = OW // pw), or None when
    no tile holds a whole window (``choose_pool_tile``; the caller pools apart). Checked,
    contiguous float32 x (N, H, W, C), w (KH, KW, C, F), b (F,); geometry as
    ``conv.conv2d_forward``."""
    if _pooled_on_winograd(x, w, strides, dilation, padding, pool):
        return winograd.conv_relu_maxpool(x, w, b, padding)
    return _pooled_tiles_of(
        x, w, b, strides, dilation, padding, pool, pooled_hw, RELU_MAXPOOL, RELU
    )


def conv_avgpool(x, w, b, strides, dilation, padding, pool, pooled_hw, act=LINEAR):
    """pooled (N, PH, PW, F) float32: act(conv(x, w) + b) averaged over non-overlapping
    ``pool`` = (ph, pw) windows (PH = OH // ph, PW = OW // pw) in the tile's epilogue (the
    same sums, in the same order, as the convolution then ``pool.avg_pool2d_forward``), with
    2x2 windows in Winograd's output transform where its rule takes the convolution, or
    None when no tile holds a whole window (the caller pools apart). ``act`` an activation
    code (``microkernel.ACTIVATIONS``); arguments otherwise as ``conv_relu_maxpool``'s."""
    if _pooled_on_winograd(x, w, strides, dilation, padding, pool):
        return winograd.conv_avgpool(x, w, b, padding, act)
    done = _pooled_tiles_of(x, w, b, strides, dilation, padding, pool, pooled_hw, AVG_POOL, act)
    return None if done is None else done[0]


#: ``code`` of the AVG_POOL tiles, which write none.
_NO_CODE = np.empty(1, dtype=np.int8)


# ------------------------------------------------------------------------------- backward

# Pixels per cache block of the weight gradient: the block's rows of dz (at most 256 x 64
# floats, 64 KiB) stay in L2 while every MR-row tile of the weights' rows passes over them.
_PIXELS_PER_BLOCK = 256


@kernel
def _weight_grad_tiles(config, xp, pixels, taps, dzpack, partial, n_pixels, m_blocks):
    """partial[chunk, m, f] += sum over the chunk's pixels p of xp[pixels[p] + taps[m]] *
    dz[p, f]: one chunk of pixels and one of ``m_blocks`` blocks of rows m per prange
    iteration, each chunk into its own partial (summed by the caller), so no two iterations
    ever add into the same cells. Few pixels and many rows (a Dense layer's kernel gradient:
    128 samples, 3136 rows) split over the rows, since one chunk then holds every pixel.

    xp : (*,) float32 flat padded input; pixels : (P,) int64; taps : (M_pad,) int64, padded
    to a multiple of MR with a valid offset; dzpack : (F/NR, P, NR) float32; partial :
    (chunks, M_pad * F/NR * NR) float32, zeroed.
    """
    mr = tile_rows(config)
    nr = tile_cols(config)
    chunks = partial.shape[0]
    m_tiles = taps.shape[0] // mr
    m_per_block = (m_tiles + m_blocks - 1) // m_blocks
    ldc = dzpack.shape[0] * nr
    per_chunk = (n_pixels + chunks - 1) // chunks
    for item in numba.prange(chunks * m_blocks):
        chunk, mb = item // m_blocks, item % m_blocks
        out = partial[chunk]
        stop = min((chunk + 1) * per_chunk, n_pixels)
        for start in range(chunk * per_chunk, stop, _PIXELS_PER_BLOCK):
            end = min(start + _PIXELS_PER_BLOCK, stop)
            rows = pixels[start:end]
            for fb in range(dzpack.shape[0]):
                b = dzpack[fb, start:end]
                for mt in range(mb * m_per_block, min((mb + 1) * m_per_block, m_tiles)):
                    tile_kernel(
                        numba.literally(config), xp, taps, mt * mr, rows, end - start, b,
                        out, 0, out, mt * mr * ldc + fb * nr, ldc, nr, 0,
                    )  # fmt: skip


def gradient_lanes(filters: int) -> int:
    """The width of the rows in which ``conv_weight_grad`` reads dz without repacking it:
    the weight gradient's tile width NR when one tile covers the filters (6 filters on
    AVX-512: 8), else ``filters``. The backward's gating pass writes dz that wide, zeros past
    the filters, so the weight gradient reads it as it is: repacking LeNet-5's first
    layer's dz (100,352 rows of 6 floats into rows of 8) took NumPy 0.5 ms, 40% of that
    weight gradient (one thread, batch 128)."""
    nr = choose_tile(filters).nr
    return nr if filters < nr and backend() == "engine" else filters


def conv_weight_grad(dz, x, w_shape, strides, dilation, padding):
    """dw (KH, KW, C, F) float32 of the convolution, given dz (N, OH, OW, L) (the gradient
    after any activation; L = F, or ``gradient_lanes(F)`` with zeros past F) and the
    checked, contiguous float32 forward input x (N, H, W, C). Winograd where its rule
    chooses it for the forward (``winograd.chosen``)."""
    filters = w_shape[3]
    if winograd.chosen(x.shape, w_shape, strides, dilation, dz.shape[1:3]):
        return winograd.conv_weight_grad(np.ascontiguousarray(dz[..., :filters]), x, padding)
    n_pixels = dz.shape[0] * dz.shape[1] * dz.shape[2]
    xp, pixels, taps = _addressing(x, w_shape, strides, dilation, padding, dz.shape[1:3], 1)
    return _weight_grad(dz.reshape(n_pixels, dz.shape[3]), xp, pixels, taps, w_shape)


def _weight_grad(dz2d, xp, pixels, taps, w_shape):
    """dw (KH, KW, C, F) = sum over rows p of xp[pixels[p] + taps[k]] * dz2d[p, f], for
    dz2d (P, F) float32, or (P, NR) with zeros past F (``gradient_lanes``), and pixels
    (>= P,) int64: the weight gradient of any pixel order."""
    kh, kw, channels, filters = w_shape
    tile = choose_tile(filters)
    k = kh * kw * channels
    m_pad = -(-k // tile.mr) * tile.mr
    n_pixels = dz2d.shape[0]
    taps = np.concatenate([taps, np.full(m_pad - k, taps[-1], np.int64)])  # a writable copy
    # With one NR block as wide as dz's rows, dz is already that block: no copy (the seed
    # convnet's 64 filters: 1.0 ms of its 11 ms weight gradient was this repack).
    if dz2d.shape[1] == tile.nr and filters <= tile.nr:
        dzpack = np.ascontiguousarray(dz2d)[np.newaxis]
    else:
        dzpack = pack_weights(dz2d[:, :filters], tile.nr)
    threads = numba.get_num_threads()
    chunks = max(1, min(threads, -(-n_pixels // _PIXELS_PER_BLOCK)))
    m_blocks = 1 if chunks == threads else min(m_pad // tile.mr, 4 * threads)
    partial = np.zeros((chunks, m_pad * dzpack.shape[0] * tile.nr), dtype=np.float32)
    config = tile.config(ACCUMULATE)
    launch(_weight_grad_tiles, config, xp, pixels, taps, dzpack, partial, n_pixels, m_blocks)
    summed = partial.sum(axis=0).reshape(m_pad, -1)[:k, :filters]
    return np.ascontiguousarray(summed).reshape(kh, kw, channels, filters)


def conv_input_grad(dz, w, x_shape, dilation, padding, strides=(1, 1)):
    """dx (N, H, W, C) float32 of a convolution given dz (N, OH, OW, F). Stride 1: the
    forward engine on dz zero-padded by the kernel's extent less the forward's padding, with
    the weights flipped and transposed to (KH, KW, F, C) (the transposed convolution); other
    strides: ``_strided_input_grad``."""
    if tuple(strides) != (1, 1):
        return _strided_input_grad(dz, w, x_shape, tuple(strides), dilation, padding)
    kh, kw, channels, filters = w.shape
    dil_h, dil_w = dilation
    (top, bottom), (left, right) = padding
    n_samples, height, width, _ = x_shape
    reach_h, reach_w = (kh - 1) * dil_h, (kw - 1) * dil_w
    w_t = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))
    pads = ((reach_h - top, reach_h - bottom), (reach_w - left, reach_w - right))
    if min(pads[0] + pads[1]) >= 0:  # padding within the kernel's reach: dx directly
        dx = conv_forward(dz, w_t, None, (1, 1), dilation, pads, (height, width))
        return dx.reshape(n_samples, height, width, channels)
    # More padding than the kernel reaches: the gradient of the padded input, cropped.
    out_hw = (dz.shape[1] + reach_h, dz.shape[2] + reach_w)
    pads = ((reach_h, reach_h), (reach_w, reach_w))
    dx_padded = conv_forward(dz, w_t, None, (1, 1), dilation, pads, out_hw)
    dx_padded = dx_padded.reshape(n_samples, *out_hw, channels)
    return np.ascontiguousarray(dx_padded[:, top : top + height, left : left + width])


def _strided_input_grad(dz, w, x_shape, strides, dilation, padding):
    """dx of a strided convolution, phase by phase, with no col2im and no zero-stuffing.

    Input row hp (in padded coordinates) receives from output row i through tap a when
    hp = i * sh + a * dil_h. Split hp by its phase r = hp mod sh: only the taps with
    a * dil_h = r (mod sh) reach that phase, from i = u - q_a where hp = r + sh * u and
    q_a = (a * dil_h - r) / sh. So each of the sh x sw phases of dx is a stride-1 product of
    dz (zero-padded so that every u - q_a lands in it) with the phase's taps: an implicit GEMM
    on the micro-kernel whose tap offsets point back into dz, its rows written into the
    phase's own buffer, then into every sh-th row and sw-th column of dx. A phase no tap
    reaches (stride > the kernel's extent) stays zero.
    """
    kh, kw, channels, filters = w.shape
    n_samples, height, width, _ = x_shape
    _, out_h, out_w, _ = dz.shape
    (sh, sw), (dil_h, dil_w), ((top, _), (left, _)) = strides, dilation, padding

    def phases(stride, dil, kernel_len, before, size, out_len):
        """Per phase r: (taps, their q, u0, u1); and the zero padding dz needs before/after."""
        found, need_before, need_after = [], 0, 0
        for r in range(stride):
            taps = [a for a in range(kernel_len) if (a * dil) % stride == r]
            u0, u1 = -((r - before) // stride), (size - 1 + before - r) // stride
            q = [(a * dil - r) // stride for a in taps]
            if taps and u1 >= u0:
                need_before = max(need_before, max(q) - u0)
                need_after = max(need_after, u1 - (out_len - 1))
            found.append((taps, q, u0, u1))
        return found, need_before, need_after

    rows, pad_top, pad_bottom = phases(sh, dil_h, kh, top, height, out_h)
    cols, pad_left, pad_right = phases(sw, dil_w, kw, left, width, out_w)
    dzp = padded(dz, ((pad_top, pad_bottom), (pad_left, pad_right)))
    _, dz_h, dz_w, _ = dzp.shape
    dx = np.zeros(x_shape, dtype=np.float32)
    mr = choose_tile(channels).mr
    for r_h, (taps_h, q_h, u0, u1) in enumerate(rows):
        for r_w, (taps_w, q_w, v0, v1) in enumerate(cols):
            if not taps_h or not taps_w or u1 < u0 or v1 < v0:
                continue
            n_u, n_v = u1 - u0 + 1, v1 - v0 + 1
            n, u, v = np.meshgrid(
                np.arange(n_samples), np.arange(u0, u1 + 1), np.arange(v0, v1 + 1), indexing="ij"
            )  # fmt: skip
            pixels = _frozen(((n * dz_h + u + pad_top) * dz_w + v + pad_left) * filters, mr)
            qa, qe, f = np.meshgrid(q_h, q_w, np.arange(filters), indexing="ij")
            taps = _frozen((-qa * dz_w - qe) * filters + f, 1)  # read-only, as all tables
            w2d = w[np.ix_(taps_h, taps_w)].transpose(0, 1, 3, 2).reshape(-1, channels)
            y = _gathered_product(
                dzp.reshape(-1), pixels, taps, np.ascontiguousarray(w2d), n_samples * n_u * n_v
            )  # fmt: skip
            h0, w0 = u0 * sh + r_h - top, v0 * sw + r_w - left
            dx[:, h0 : h0 + (n_u - 1) * sh + 1 : sh, w0 : w0 + (n_v - 1) * sw + 1 : sw] = y.reshape(
                n_samples, n_u, n_v, channels
            )
    return dx
