"""nbcnn's convolution engine: implicit GEMM on register-blocked micro-kernels.

The forward of a convolution is the product of the im2col matrix (one row per output pixel,
KH*KW*C columns) and the weights (KH*KW*C, F). The engine never builds that matrix: a row of
it is the input window of one output pixel, so a tile of MR output pixels is described by MR
row offsets into the zero-padded, channels-last input (``pixel_offsets``), and column k by the
offset of its tap and channel inside a window (``tap_offsets``). The micro-kernel
(``microkernel.tile_kernel``) gathers A through those offsets while its MR x NR output tile
stays in vector registers, then adds the bias and applies ReLU before the one store.

Work is split over output-pixel tiles in a ``prange`` over blocks of tiles; each iteration
writes only its own rows of y. Weights are packed once per call into (F/NR, K, NR) blocks,
zero-filled past F, and a tile that crosses the last pixel or filter is computed into a
scratch tile and copied.

``NBCNN_CONV=blas`` selects the im2col + OpenBLAS path instead (benchmarks compare the two;
tests use it as a reference).
"""

from __future__ import annotations

import os

import numba
import numpy as np

from nbcnn.kernels._jit import kernel
from nbcnn.kernels.microkernel import choose_tile, launch, tile_cols, tile_kernel, tile_rows

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


@kernel
def _forward_tiles(config, xp, pixels, taps, wpack, bpack, y, n_pixels, n_filters):
    """y[p, f] = act(sum_k xp[pixels[p] + taps[k]] * w[k, f] + b[f]) for p < n_pixels.

    xp : (*,) float32 flat padded input; pixels : (T * MR,) int64, padded with a valid
    offset; taps : (K,) int64; wpack : (F/NR, K, NR) float32; bpack : (F/NR * NR,) float32;
    y : (n_pixels * n_filters,) float32.
    """
    mr = tile_rows(config)
    nr = tile_cols(config)
    k_len = taps.shape[0]
    n_tiles = (n_pixels + mr - 1) // mr
    n_blocks = (n_tiles + _TILES_PER_BLOCK - 1) // _TILES_PER_BLOCK
    for block in numba.prange(n_blocks):
        scratch = np.empty(mr * nr, dtype=np.float32)
        stop = min((block + 1) * _TILES_PER_BLOCK, n_tiles)
        for fb in range(wpack.shape[0]):
            wb = wpack[fb]
            f0 = fb * nr
            cols = min(nr, n_filters - f0)
            for t in range(block * _TILES_PER_BLOCK, stop):
                p0 = t * mr
                rows = min(mr, n_pixels - p0)
                # One call site: a second inlined copy of the tile measured 1.4x slower.
                edge = rows < mr or cols < nr
                out, at, ld = (scratch, 0, nr) if edge else (y, p0 * n_filters + f0, n_filters)
                tile_kernel(
                    numba.literally(config), xp, pixels, p0, taps, k_len, wb, bpack, f0, out, at, ld
                )
                if edge:
                    for r in range(rows):
                        for j in range(cols):
                            y[(p0 + r) * n_filters + f0 + j] = scratch[r * nr + j]


@kernel
def _pixel_offsets(n_samples, out_h, out_w, sh, sw, padded_h, padded_w, channels, out):
    """out[p] = offset of output pixel p's window origin in the flat padded input; the
    entries past N*OH*OW (to fill the last tile) repeat the last pixel's."""
    per_sample = out_h * out_w
    total = n_samples * per_sample
    for n in numba.prange(n_samples):
        for i in range(out_h):
            for j in range(out_w):
                p = (n * out_h + i) * out_w + j
                out[p] = ((n * padded_h + i * sh) * padded_w + j * sw) * channels
    for p in range(total, out.shape[0]):
        out[p] = out[total - 1]


def _tap_offsets(kernel_hw, dilation, padded_w, channels):
    """(KH*KW*C,) int64: offset of tap (a, e) and channel c inside a window, in the order of
    ``w.reshape(KH*KW*C, F)``."""
    (kh, kw), (dil_h, dil_w) = kernel_hw, dilation
    a, e, c = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(channels), indexing="ij")
    return (((a * dil_h) * padded_w + e * dil_w) * channels + c).reshape(-1).astype(np.int64)


def pack_weights(w2d, nr):
    """w2d (K, F) -> (ceil(F/NR), K, NR) float32, zero past F: one contiguous B per block."""
    k, filters = w2d.shape
    blocks = -(-filters // nr)
    packed = np.zeros((blocks, k, nr), dtype=np.float32)
    for fb in range(blocks):
        part = w2d[:, fb * nr : (fb + 1) * nr]
        packed[fb, :, : part.shape[1]] = part
    return packed


def conv_forward(x, w, b, strides, dilation, padding, out_hw, relu=False):
    """y2d (N*OH*OW, F) float32 = act(conv(x, w) + b) for checked, contiguous float32
    x (N, H, W, C), w (KH, KW, C, F), b (F,) or None; geometry as ``conv.conv2d_forward``."""
    kh, kw, channels, filters = w.shape
    n_samples = x.shape[0]
    (sh, sw) = strides
    (top, bottom), (left, right) = padding
    out_h, out_w = out_hw
    if top or bottom or left or right:
        x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    padded_h, padded_w = x.shape[1], x.shape[2]
    tile = choose_tile(filters)
    config = tile.config(relu)
    n_pixels = n_samples * out_h * out_w
    pixels = np.empty(-(-n_pixels // tile.mr) * tile.mr, dtype=np.int64)
    _pixel_offsets(n_samples, out_h, out_w, sh, sw, padded_h, padded_w, channels, pixels)
    taps = _tap_offsets((kh, kw), dilation, padded_w, channels)
    wpack = pack_weights(w.reshape(kh * kw * channels, filters), tile.nr)
    bpack = np.zeros(wpack.shape[0] * tile.nr, dtype=np.float32)
    if b is not None:
        bpack[:filters] = b
    y = np.empty(n_pixels * filters, dtype=np.float32)
    launch(_forward_tiles, config, x.reshape(-1), pixels, taps, wpack, bpack, y, n_pixels, filters)
    return y.reshape(n_pixels, filters)
