"""The implicit GEMM without the padding's multiply-adds: pixels grouped by the taps that land
inside the input.

``engine``'s implicit GEMM runs every tap of every window, and a window hanging over the zero
padding multiplies zeros. Usually that is a few percent (a 3x3 'same' convolution of a 14x14
map: 9%), but the input gradient of a 'valid' convolution is a convolution of the output
gradient padded by the kernel's whole reach: LeNet-5's second layer (10x10 outputs, 5x5
kernel) has its gradient computed on 18x18 zero-padded maps, and 49% of the multiply-adds
read padding.

Along each axis, the taps that reach inside the input depend only on the output index (an
output row i of stride s sees input rows i * s + a * d - top, a < KH); a pixel's valid taps
are the product of its row's and its column's. Pixels with the same pair form a class
(LeNet-5's case: 9 row sets x 9 column sets), and each class is an implicit GEMM of its own,
over its own taps and the matching rows of the weights, on the same micro-kernel. All the
classes run in one ``prange`` over their tiles. A tile of MR consecutive output pixels is
stored in place; the others (a class's rows are interleaved with other classes' in the
output) go through a scratch tile, copied row by row with slice copies (copied element by
element, the kernel took 2.1 ms instead of 0.96 on a 28x28, 1 -> 32 'same' layer). The
zero padding is never materialised: a window's origin may point before its sample, and
only the class's taps, all inside, are added to it.

``useful_fraction`` says how much work that saves; ``engine`` takes this path for padded
convolutions where it measured faster (``chosen``).
"""

from __future__ import annotations

import numba
import numpy as np

from nbcnn.kernels._jit import kernel
from nbcnn.kernels._tables import cached_table
from nbcnn.kernels.microkernel import (
    BIAS,
    choose_tile,
    launch,
    pack_weights,
    tile_cols,
    tile_kernel,
    tile_rows,
)

#: With one thread, the direct implicit GEMM on the zero-padded copy stays where a window
#: has fewer (tap, channel) columns than this: there a tile's few multiply-adds no longer
#: pay for a class's extra bookkeeping (see ``chosen``).
MIN_COLUMNS_ONE_THREAD = 32


def chosen(w_shape, padding) -> bool:
    """Whether the engine's direct convolution runs here: when there is padding, except on
    one thread with fewer than ``MIN_COLUMNS_ONE_THREAD`` columns. Direct time / this path's,
    batch 128, AMD EPYC Zen 4 (AVX-512), one / two threads, 3x3 'same' unless said (the
    fraction of the direct form's multiply-adds that read the input in brackets): 28x28,
    1 -> 32 filters (0.95): 0.82 / 1.30; 32x32, 3 -> 32 (0.96): 0.93 / 1.28; 28x28, 1 -> 6,
    5x5 (0.92): 1.07 / 1.56; 14x14, 16 -> 16 (0.91): 1.07 / 1.86; 32x32, 32 -> 32 (0.96):
    1.08 / 1.32; 16x16, 64 -> 64 (0.92): 1.12 / 1.12; 56x56, 16 -> 16 (0.98): 1.10 / 1.38;
    8x8, 32 -> 32 (0.84): 1.15 / 1.48; 7x7, 64 -> 64, 5x5 (0.69): 1.32 / 1.17-1.19; input
    gradients of 'valid' convolutions: LeNet-5's second layer, 14x14, 16 -> 6, 5x5 (0.51):
    1.53 / 1.62; 6x6, 32 -> 32 (0.44): 1.71 / 1.46. Besides the padding's multiply-adds, it
    skips the padded copy of the input, which NumPy makes on one thread."""
    (top, bottom), (left, right) = padding
    if not (top or bottom or left or right):
        return False
    columns = w_shape[0] * w_shape[1] * w_shape[2]
    return columns >= MIN_COLUMNS_ONE_THREAD or numba.get_num_threads() > 1


def _valid_taps(out_len, size, stride, dilation, kernel_len, before):
    """Per output index i along one axis: the taps a whose input index i * stride + a *
    dilation - before lies in [0, size), as a tuple."""
    return [
        tuple(a for a in range(kernel_len) if 0 <= i * stride + a * dilation - before < size)
        for i in range(out_len)
    ]


def useful_fraction(in_hw, kernel_hw, strides, dilation, padding, out_hw) -> float:
    """The fraction of a convolution's window multiply-adds that read the input, not the
    zero padding (1.0 without padding)."""
    total = 0
    for axis in range(2):
        taps = _valid_taps(
            out_hw[axis], in_hw[axis], strides[axis], dilation[axis], kernel_hw[axis],
            padding[axis][0],
        )  # fmt: skip
        share = sum(map(len, taps)) / (out_hw[axis] * kernel_hw[axis])
        total = share if axis == 0 else total * share
    return total


def _build_tables(n_samples, in_hw, kernel_hw, channels, strides, dilation, padding, out_hw, mr):
    """The classes' tables, read-only:

    pixels : (P_pad,) int64, each class's pixels' window origins in the flat input, where
        the window's first tap would be without the padding (possibly before the sample, or
        the array: only the class's taps are ever added to it), class after class, each
        class padded to a multiple of MR with its last pixel;
    out_rows : (P_pad,) int64, the output row of each entry of ``pixels``;
    taps : (sum K_c,) int64, each class's (tap, channel) offsets inside a window;
    weight_rows : (sum K_c,) int64, the rows of ``w.reshape(KH*KW*C, F)`` they multiply;
    k_start, k_len : (classes,) int64, each class's span of ``taps``;
    tile_class, tile_first, tile_count : (tiles,) int64, each tile's class, first entry of
        ``pixels`` and number of real pixels, negated for a whole tile of consecutive output
        rows (stored in place, not through the scratch tile).
    """
    (kh, kw), (sh, sw), (dil_h, dil_w) = kernel_hw, strides, dilation
    (top, _), (left, _) = padding
    height, width = in_hw
    out_h, out_w = out_hw
    row_taps = _valid_taps(out_h, in_hw[0], sh, dil_h, kh, top)
    col_taps = _valid_taps(out_w, in_hw[1], sw, dil_w, kw, left)
    row_sets = {s: [i for i in range(out_h) if row_taps[i] == s] for s in dict.fromkeys(row_taps)}
    col_sets = {s: [j for j in range(out_w) if col_taps[j] == s] for s in dict.fromkeys(col_taps)}
    channel = np.arange(channels, dtype=np.int64)
    classes, taps, weight_rows = [], [], []
    for a_set, rows in row_sets.items():
        for e_set, cols in col_sets.items():
            classes.append((np.array(rows)[None, :, None], np.array(cols)[None, None, :]))
            a = np.array(a_set, dtype=np.int64)[:, None, None]
            e = np.array(e_set, dtype=np.int64)[None, :, None]
            taps.append(((a * dil_h * width + e * dil_w) * channels + channel).reshape(-1))
            weight_rows.append(((a * kw + e) * channels + channel).reshape(-1))
    k_len = [len(t) for t in taps]
    k_start = np.cumsum([0, *k_len[:-1]])
    # Samples outermost, MR at a time: each class then has MR times its pixels a sample, whole
    # tiles (a corner class has one pixel a sample), and a group's input is read by every
    # class while it is in cache. (Measured against classes over the whole batch: the same
    # speed, 1.17 vs 1.21x the direct path on LeNet-5's input gradient, one thread.)
    pixels, out_rows, tile_class, tile_first, tile_count = [], [], [], [], []
    start = 0
    for first_sample in range(0, n_samples, mr):
        sample = np.arange(first_sample, min(first_sample + mr, n_samples))[:, None, None]
        for cls, (i, j) in enumerate(classes):
            origin = ((sample * height + i * sh - top) * width + j * sw - left) * channels
            where = ((sample * out_h + i) * out_w + j).reshape(-1)
            count = where.size
            fill = -count % mr
            pixels.append(np.concatenate([origin.reshape(-1), np.full(fill, origin.flat[-1])]))
            out_rows.append(np.concatenate([where, np.full(fill, where[-1])]))
            firsts = np.arange(0, count, mr)
            tile_class.append(np.full(len(firsts), cls))
            tile_first.append(start + firsts)
            # A whole tile of consecutive output rows is stored in place, marked by its
            # count negated (the class's interior runs); the others go through a scratch
            # tile.
            counts = np.minimum(mr, count - firsts)
            lasts = where[np.minimum(firsts + mr - 1, count - 1)]
            whole = (counts == mr) & (lasts - where[firsts] == mr - 1)
            tile_count.append(np.where(whole, -mr, counts))
            start += count + fill
    tables = (
        np.concatenate(pixels), np.concatenate(out_rows), np.concatenate(taps),
        np.concatenate(weight_rows), k_start, k_len, np.concatenate(tile_class),
        np.concatenate(tile_first), np.concatenate(tile_count),
    )  # fmt: skip
    frozen = tuple(np.asarray(t, dtype=np.int64) for t in tables)
    for table in frozen:
        table.setflags(write=False)
    return frozen


#: ``_build_tables``, cached while small (_tables.py): two int64 entries a pixel (its window's
#: origin and its output row).
_tables = cached_table(lambda _in, _k, _c, _s, _d, _p, out_hw, _mr: 2 * out_hw[0] * out_hw[1])(
    _build_tables
)


@kernel
def _class_tiles(
    config, xp, pixels, out_rows, taps, wpack, k_start, k_len, tile_class, tile_first,
    tile_count, bpack, y, n_filters, per_block, act,
):  # fmt: skip
    """y[out_rows[p], f] = act(sum over the class's taps k of xp[pixels[p] + taps[k]] *
    wpack[fb, k, f - fb * NR] + b[f]), tile by tile (see the module docstring); one prange
    iteration: ``per_block`` tiles of one NR block of filters, each computed into a scratch
    tile and copied to its pixels' rows of y (N*OH*OW*F,) float32."""
    mr = tile_rows(config)
    nr = tile_cols(config)
    n_tiles = tile_class.shape[0]
    n_blocks = (n_tiles + per_block - 1) // per_block
    n_fb = wpack.shape[0]
    for item in numba.prange(n_blocks * n_fb):
        block, fb = item // n_fb, item % n_fb
        scratch = np.empty(mr * nr, dtype=np.float32)
        f0 = fb * nr
        cols = min(nr, n_filters - f0)
        current = -1
        tk, wb, kl = taps[0:0], wpack[fb, 0:0], 0
        for t in range(block * per_block, min((block + 1) * per_block, n_tiles)):
            cls = tile_class[t]
            if cls != current:  # neighbouring tiles mostly share a class: slice once
                current = cls
                k0, kl = k_start[cls], k_len[cls]
                tk, wb = taps[k0 : k0 + kl], wpack[fb, k0 : k0 + kl]
            p0 = tile_first[t]
            count = tile_count[t]
            # One call site (engine: a second inlined copy of the tile measured 1.4x slower).
            in_place = count < 0
            out, at, ld = (y, out_rows[p0] * n_filters + f0, n_filters) if in_place else (
                scratch, 0, nr
            )  # fmt: skip
            tile_kernel(
                numba.literally(config), xp, pixels, p0, tk, kl, wb, bpack, f0, out, at, ld,
                cols if in_place else nr, act,
            )  # fmt: skip
            for r in range(max(count, 0)):
                at = out_rows[p0 + r] * n_filters + f0
                y[at : at + cols] = scratch[r * nr : r * nr + cols]


def conv_forward(x, w, b, strides, dilation, padding, out_hw, act):
    """y2d (N*OH*OW, F) float32 = act(conv(x, w) + b) with only the taps inside the input,
    for contiguous float32 x (N, H, W, C), w (KH, KW, C, F), b (F,) or None, zero padding
    ((top, bottom), (left, right)) that is never materialised; ``act`` an activation code
    (``microkernel.ACTIVATIONS``)."""
    n_samples, height, width, channels = x.shape
    kh, kw, _, filters = w.shape
    n_pixels = n_samples * out_hw[0] * out_hw[1]
    if n_pixels == 0:
        return np.empty((0, filters), dtype=np.float32)
    tile = choose_tile(filters)
    (pixels, out_rows, taps, weight_rows, k_start, k_len, tile_class, tile_first,
     tile_count) = _tables(
        n_samples, (height, width), (kh, kw), channels, tuple(strides), tuple(dilation),
        tuple(map(tuple, padding)), tuple(out_hw), tile.mr,
    )  # fmt: skip
    # Each class's rows of the weights, class after class, packed as the tiles read them.
    wpack = pack_weights(w.reshape(-1, filters)[weight_rows], tile.nr)
    bpack = np.zeros(wpack.shape[0] * tile.nr, dtype=np.float32)
    if b is not None:
        bpack[:filters] = b
    y = np.empty(n_pixels * filters, dtype=np.float32)
    n_tiles = tile_class.shape[0]
    per_block = max(1, min(16, n_tiles * wpack.shape[0] // (4 * numba.get_num_threads())))
    flat = np.ascontiguousarray(x).reshape(-1)  # the tile reads flat memory
    launch(
        _class_tiles, tile.config(BIAS), flat, pixels, out_rows, taps, wpack, k_start, k_len,
        tile_class, tile_first, tile_count, bpack, y, filters, per_block, act,
    )  # fmt: skip
    return y.reshape(n_pixels, filters)
