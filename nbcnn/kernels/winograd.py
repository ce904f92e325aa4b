"""Winograd F(2x2, 3x3) convolution on the engine's micro-kernels (3x3, stride 1, no dilation).

A 2x2 block of outputs of a 3x3 convolution is computed from the 4x4 block of input under it
as ``Y = A^T [(G g G^T) * (B^T d B)] A`` (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016): the 36 multiplies per channel of the direct form become 16. Summed
over the channels, the 16 elementwise products are 16 independent GEMMs, one per position
(i, j) of the 4x4 transformed tile:

    M[ij] (tiles, F) = V[ij] (tiles, C) @ U[ij] (C, F)

with V = B^T d B the transformed input tiles and U = G g G^T the transformed filters. The
GEMMs run on the micro-kernel (``microkernel.tile_kernel``), 2.25x fewer multiply-adds than
the direct implicit GEMM, for three extra passes (input transform, filter transform, output
transform) that stay in the L2 cache: each ``prange`` iteration takes a few samples through
all of them with its own V and M, so neither ever goes to memory. The output transform adds
the bias, applies the ReLU and, where the pooling is 2x2, max-pools the 2x2 block it has just
made (an output tile is exactly one pooling window), so a Conv + ReLU + 2x2 max pool stores
only the pooled maxima and their codes, as ``engine.conv_relu_maxpool`` does.

The weight gradient follows from ``Y = A^T Z A`` with ``Z = U * V``: ``dU = sum over tiles of
V * (A dY A^T)``, 16 more products (channels x tiles @ tiles x filters, the tiles being the
reduction, summed per thread), and ``dW = G^T dU G``. The input gradient of a stride-1
convolution is a convolution too (``engine.conv_input_grad``), so it runs the forward here.

Error: the transforms' coefficients (0, +-1, +-1/2) add a few float32 roundings per output;
``WINOGRAD_RTOL`` states the bound the tests hold it to against the float64 naive
convolution, and ``tests/test_winograd.py`` against the direct engine too.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from nbcnn.kernels._jit import kernel
from nbcnn.kernels.microkernel import (
    ACCUMULATE,
    BIAS,
    LINEAR,
    RELU,
    _vector_at,
    activate,
    choose_tile,
    close_loop,
    counted_loop,
    decode,
    lanes_below,
    launch,
    masked_store,
    pack_weights,
    tile_cols,
    tile_kernel,
    tile_rows,
    tile_width,
)

#: The pooling of the output transform (``pool``, a run-time argument): none, 2x2 max with
#: the winner's code, 2x2 average.
NO_POOL, MAX_POOL, AVG_POOL = 0, 1, 2

#: Largest relative error (to the largest |output|) the tests allow against the float64
#: reference, on values in [-2, 2] with up to 64 channels: the direct engine stays near 1e-6.
WINOGRAD_RTOL = 2e-5

#: Output tiles per prange iteration, about: V and M of that many tiles (with 32 channels
#: and 64 filters, 16 x 192 x 96 floats: 1.2 MB) stay in a core's L2 cache.
_TILES_PER_ITEM = 192

# G (4x3): the filter transform, U = G g G^T.
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)


#: The measured rule (``chosen``): Winograd where the input has at least this many channels,
#: both output sides at least ``MIN_SIDE`` and the batch at least ``MIN_TILES`` 2x2 output
#: tiles. Direct engine time / Winograd time, AMD EPYC Zen 4 (AVX-512), batch 128 unless
#: said, 1 / 2 threads, 3x3 'same' + bias + ReLU: 14x14, C 32 -> 64: 1.51 / 1.49; its input
#: gradient (C 64 -> 32): 1.42 / 1.37; 32x32, 32 -> 32: 1.35 / 1.28; 16x16, 64 -> 64:
#: 1.64 / 1.52; 8x8, 128 -> 128: 1.66 / 1.38; 28x28, 16 -> 16: 1.03 / 1.09; 14x14, 16 -> 32:
#: 1.46 / 1.29; 14x14, 64 -> 10: 1.65 / 1.34; 14x14 32 -> 64 at batch 16: 1.38 / 1.04. Slower:
#: C = 3 (0.36 / 0.37), C = 8 (0.62-1.10), 4x4 outputs (1.18 / 0.84), 2x2 (0.57 / 0.42),
#: batch 1 (0.54 / 0.49): too few channels for the GEMMs or too few tiles for the transforms.
#: Under ~1,500 tiles Winograd stopped paying on two threads (forward + weight gradient +
#: input gradient, direct / Winograd, two runs): 8x8, 32 -> 32 at batch 32 (512 tiles, the
#: digits convnet) 0.71-0.86, batch 64 0.96-1.04; 8x8, 64 -> 64 at batch 64 0.73-0.97;
#: 14x14, 32 -> 64 at batch 16 (784 tiles) 0.95-0.96; at batch 32 (1,568) 1.12-1.13, 64
#: 1.15-1.19; 8x8, 64 -> 64 at batch 128 (2,048) 1.07-1.17; 8x8, 32 -> 32 at 4,096 1.12-1.15.
#: Left direct, such layers also spare a first run Winograd's compiles (~3 s).
MIN_CHANNELS, MIN_SIDE, MIN_TILES = 16, 8, 1536

#: And at most this many 2x2 tiles a sample (a 64x64 output): a thread's V and M hold whole
#: samples, 16 x tiles x (C + F) floats (8 MB at 1,024 tiles and C + F = 128; a 224x224
#: image would need 100 MB a thread and no longer fit any cache), so larger images run direct.
MAX_SAMPLE_TILES = 1024


def applies(kernel_hw, strides, dilation) -> bool:
    """Whether a convolution has the shape F(2x2, 3x3) computes: 3x3, stride 1, no dilation."""
    return tuple(kernel_hw) == (3, 3) and tuple(strides) == (1, 1) and tuple(dilation) == (1, 1)


def enabled() -> bool:
    """False when NBCNN_WINOGRAD is 0 / off / false (the direct engine everywhere: for A/B
    benchmarks and as the tests' reference)."""
    return os.environ.get("NBCNN_WINOGRAD", "").strip().lower() not in ("0", "off", "false")


def chosen(x_shape, w_shape, strides, dilation, out_hw) -> bool:
    """Whether the engine runs this convolution as Winograd: it applies, it is enabled and
    the measured rule above says it pays."""
    per_sample = -(-out_hw[0] // 2) * -(-out_hw[1] // 2)
    return (
        applies(w_shape[:2], strides, dilation)
        and w_shape[2] >= MIN_CHANNELS
        and min(out_hw) >= MIN_SIDE
        and x_shape[0] * per_sample >= MIN_TILES
        and per_sample <= MAX_SAMPLE_TILES
        and enabled()
    )


def transformed_filters(w, nr):
    """U = G g G^T of w (3, 3, C, F), computed in float64, packed for the micro-kernel as
    (16, ceil(F/NR), C, NR) float32, zero past F."""
    u = np.einsum("ia,abcf,jb->ijcf", _G, w.astype(np.float64), _G)  # (4, 4, C, F)
    channels, filters = w.shape[2], w.shape[3]
    u = u.reshape(16, channels, filters).astype(np.float32)
    return np.stack([pack_weights(u[ij], nr) for ij in range(16)])


def _store_planes(builder, ptr, at, step, planes):
    """Store the 4x4 vectors ``planes[i][j]`` at ptr[at + (i * 4 + j) * step] (IR)."""
    i64 = ir.IntType(64)
    for i in range(4):
        for j in range(4):
            where = builder.add(at, builder.mul(step, ir.Constant(i64, i * 4 + j)))
            value = planes[i][j]
            builder.store(value, _vector_at(builder, ptr, where, value.type), align=4)


@intrinsic
def _input_transform(typingctx, config, x, base, col, row, v, v_off, v_step, n_vec):
    """V = B^T d B for one tile, VL channels at a time: d[r][s] is the vector at
    x[base + r * row + s * col + q * VL], V[ij] goes to v[v_off + ij * v_step + q * VL], for
    q < n_vec, VL the vector width of the tile configuration ``config`` (a literal); x and v
    are float32 (*,) arrays."""
    if not isinstance(config, types.IntegerLiteral):
        return None
    vl = decode(config.literal_value)[2]
    sig = types.void(config, x, base, col, row, v, v_off, v_step, n_vec)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        vec = ir.VectorType(ir.FloatType(), vl)
        _, x_v, base_v, col_v, row_v, v_v, voff_v, vstep_v, nvec_v = args
        x_ptr = context.make_array(signature.args[1])(context, builder, x_v).data
        v_ptr = context.make_array(signature.args[5])(context, builder, v_v).data
        q, _, _, done = counted_loop(builder, nvec_v, "in")
        lane0 = builder.mul(q, ir.Constant(i64, vl))
        start = builder.add(base_v, lane0)
        d = [[None] * 4 for _ in range(4)]
        for r in range(4):
            for c in range(4):
                at = builder.add(
                    start,
                    builder.add(
                        builder.mul(row_v, ir.Constant(i64, r)),
                        builder.mul(col_v, ir.Constant(i64, c)),
                    ),
                )
                d[r][c] = builder.load(_vector_at(builder, x_ptr, at, vec), align=4)

        def bt(a0, a1, a2, a3):  # B^T applied to four values: (a0 - a2, a1 + a2, a2 - a1, a1 - a3)
            return (
                builder.fsub(a0, a2), builder.fadd(a1, a2), builder.fsub(a2, a1),
                builder.fsub(a1, a3),
            )  # fmt: skip

        rows_t = [bt(d[0][c], d[1][c], d[2][c], d[3][c]) for c in range(4)]  # [col][i]
        planes = [bt(*(rows_t[c][i] for c in range(4))) for i in range(4)]
        _store_planes(builder, v_ptr, builder.add(voff_v, lane0), vstep_v, planes)
        close_loop(builder, q, nvec_v, done)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _output_transform(
    typingctx, config, act, pool, m, m_off, m_step, bias, out, out_off, col, row, rows, cols,
    filters, code,
):  # fmt: skip
    """Y = act(A^T M A + bias) for one tile, VL filters at a time, ``act`` a run-time
    activation code (``microkernel.ACTIVATIONS``): M[ij] is the vector at m[m_off + ij *
    m_step + q * VL], bias at bias[q * VL]. With ``pool`` (a run-time int) NO_POOL, Y[a][b]
    (a < rows, b < cols) is stored at out[out_off + a * row + b * col + q * VL]; MAX_POOL: the
    2x2 block's maximum there and the index of its first maximal cell (a * 2 + b) at
    code[out_off + q * VL]; AVG_POOL: the block's mean there (its four values summed in
    row-major order, times 1/4, as the average pooling kernel computes it). Lanes past
    ``filters`` are never stored (masked stores). VL is the vector width of the tile
    configuration ``config``, which must be a literal; the activation and the pooling are
    run-time choices so that one compiled kernel serves them all (each specialisation of
    ``_winograd`` took numba 2.1-2.5 s to compile)."""
    if not isinstance(config, types.IntegerLiteral):
        return None
    vl = decode(config.literal_value)[2]
    sig = types.void(
        config, act, pool, m, m_off, m_step, bias, out, out_off, col, row, rows, cols, filters,
        code,
    )  # fmt: skip

    def codegen(context, builder, signature, args):
        i64, i8 = ir.IntType(64), ir.IntType(8)
        vec = ir.VectorType(ir.FloatType(), vl)
        codes = ir.VectorType(i8, vl)
        (_, act_v, pool_v, m_v, moff_v, mstep_v, bias_v, out_v, ooff_v, col_v, row_v, rows_v,
         cols_v, filters_v, code_v) = args  # fmt: skip
        m_ptr = context.make_array(signature.args[3])(context, builder, m_v).data
        bias_ptr = context.make_array(signature.args[6])(context, builder, bias_v).data
        out_ptr = context.make_array(signature.args[7])(context, builder, out_v).data
        code_ptr = context.make_array(signature.args[14])(context, builder, code_v).data
        pooled = builder.icmp_signed("!=", pool_v, ir.Constant(i64, NO_POOL))
        maximum = builder.icmp_signed("==", pool_v, ir.Constant(i64, MAX_POOL))
        n_vec = builder.sdiv(builder.add(filters_v, ir.Constant(i64, vl - 1)), ir.Constant(i64, vl))
        q, _, _, done = counted_loop(builder, n_vec, "out")
        lane0 = builder.mul(q, ir.Constant(i64, vl))
        mask = lanes_below(builder, builder.sub(filters_v, lane0), vl)  # lanes still to store
        m_at = builder.add(moff_v, lane0)
        mv = [
            builder.load(
                _vector_at(
                    builder, m_ptr, builder.add(m_at, builder.mul(mstep_v, ir.Constant(i64, ij))),
                    vec,
                ),
                align=4,
            )
            for ij in range(16)
        ]  # fmt: skip

        def at_(a0, a1, a2, a3):  # A^T applied to four values: (a0 + a1 + a2, a1 - a2 - a3)
            return (
                builder.fadd(builder.fadd(a0, a1), a2),
                builder.fsub(builder.fsub(a1, a2), a3),
            )

        cols_t = [at_(*mv[i * 4 : i * 4 + 4]) for i in range(4)]  # [i][b]
        bias_vec = builder.load(_vector_at(builder, bias_ptr, lane0, vec), align=4)
        y = [[None, None], [None, None]]
        for b in range(2):
            top, bottom = at_(*(cols_t[i][b] for i in range(4)))
            for a, value in enumerate((top, bottom)):
                y[a][b] = activate(builder, builder.fadd(value, bias_vec), act_v)
        out_at = builder.add(ooff_v, lane0)
        with builder.if_else(pooled) as (pooling, plain):
            with pooling, builder.if_else(maximum) as (maxing, averaging):
                with maxing:
                    best = y[0][0]
                    winner = ir.Constant(codes, [0] * vl)
                    for cell, value in ((1, y[0][1]), (2, y[1][0]), (3, y[1][1])):
                        take = builder.fcmp_ordered(">", value, best)
                        best = builder.select(take, value, best)
                        winner = builder.select(take, ir.Constant(codes, [cell] * vl), winner)
                    target = _vector_at(builder, code_ptr, out_at, codes)
                    masked_store(builder, best, _vector_at(builder, out_ptr, out_at, vec), mask)
                    masked_store(builder, winner, target, mask)
                with averaging:
                    total = builder.fadd(builder.fadd(y[0][0], y[0][1]), y[1][0])
                    total = builder.fmul(
                        builder.fadd(total, y[1][1]), ir.Constant(vec, [0.25] * vl)
                    )
                    masked_store(builder, total, _vector_at(builder, out_ptr, out_at, vec), mask)
            with plain:
                _store_tile(builder, y, out_ptr, out_at, row_v, col_v, rows_v, cols_v, vec, mask)
        close_loop(builder, q, n_vec, done)
        return context.get_dummy_value()

    return sig, codegen


def _store_tile(builder, y, out_ptr, out_at, row_v, col_v, rows_v, cols_v, vec, mask):
    """Store the 2x2 output tile y[a][b] (a < rows, b < cols) at out_at + a * row + b * col."""
    i64 = ir.IntType(64)
    for a in range(2):
        for b in range(2):
            inside = builder.and_(
                builder.icmp_signed(">", rows_v, ir.Constant(i64, a)),
                builder.icmp_signed(">", cols_v, ir.Constant(i64, b)),
            )
            with builder.if_then(inside):
                at = builder.add(
                    out_at,
                    builder.add(
                        builder.mul(row_v, ir.Constant(i64, a)),
                        builder.mul(col_v, ir.Constant(i64, b)),
                    ),
                )
                masked_store(builder, y[a][b], _vector_at(builder, out_ptr, at, vec), mask)


@numba.njit(inline="always")
def _transform_inputs(config, xf, n0, n1, tiles_hw, padded_hw, c_pad, v, plane):
    """V = B^T d B of samples n0..n1's tiles into v (16 planes of ``plane`` floats, tile t at
    t * c_pad); inlined into the kernels, so ``config`` stays a literal."""
    (th, tw), (padded_h, padded_w) = tiles_hw, padded_hw
    for n in range(n0, n1):
        for ti in range(th):
            for tj in range(tw):
                t = ((n - n0) * th + ti) * tw + tj
                base = ((n * padded_h + 2 * ti) * padded_w + 2 * tj) * c_pad
                _input_transform(
                    config, xf, base, c_pad, padded_w * c_pad, v, t * c_pad, plane,
                    c_pad // tile_width(config),
                )  # fmt: skip


@kernel
def _winograd(
    config, xp, upack, bias, rows, channel_offsets, tiles_hw, per_item, out, code, act, pool
):  # fmt: skip
    """The forward over the batch: a prange over groups of ``per_item`` samples, each taken
    through the input transform, the 16 GEMMs and the output transform with its own V, M.

    xp : (N, 2*TH + 2, 2*TW + 2, C_pad) float32, the input zero-padded around (and by one
    more row or column where the output size is odd) and in channels to a multiple of VL;
    upack : (16, F/NR, C, NR) float32; bias : (F/NR * NR,) float32, zero past F; rows :
    (>= T_item,) int64 = t * C_pad (a multiple of MR long); channel_offsets : (C,) int64 =
    arange(C); tiles_hw = (TH, TW). out (N, OH, OW, F) = act(conv + bias), ``act`` an
    activation code (``microkernel.ACTIVATIONS``); with ``pool`` MAX_POOL, out (N, OH//2,
    OW//2, F) = the 2x2 max pool of act(conv + bias) and code (same shape, int8) the first
    winning cell, u * 2 + v; AVG_POOL: out the 2x2 average pool (code not written).
    """
    mr = tile_rows(config)
    nr = tile_cols(config)
    n_samples, padded_h, padded_w, c_pad = xp.shape
    channels = channel_offsets.shape[0]
    n_filters = out.shape[3]
    th, tw = tiles_hw
    f_pad = upack.shape[1] * nr
    t_pad = rows.shape[0]
    xf = xp.reshape(-1)
    outf = out.reshape(-1)
    codef = code.reshape(-1)
    out_h, out_w = out.shape[1], out.shape[2]
    zero_bias = np.zeros(f_pad, dtype=np.float32)
    n_items = (n_samples + per_item - 1) // per_item
    for item in numba.prange(n_items):
        n0 = item * per_item
        n1 = min(n0 + per_item, n_samples)
        v = np.empty(16 * t_pad * c_pad, dtype=np.float32)
        m = np.empty(16 * t_pad * f_pad, dtype=np.float32)
        _transform_inputs(
            config, xf, n0, n1, tiles_hw, (padded_h, padded_w), c_pad, v, t_pad * c_pad
        )
        # The 16 GEMMs: M[ij] (T, F_pad) = V[ij] (T, C) @ U[ij] (C, F_pad). Rows past the
        # item's tiles read stale V and land in M rows nobody reads.
        n_tiles = (n1 - n0) * th * tw
        row_tiles = (n_tiles + mr - 1) // mr
        for ij in range(16):
            vij = v[ij * t_pad * c_pad : (ij + 1) * t_pad * c_pad]
            mij = m[ij * t_pad * f_pad : (ij + 1) * t_pad * f_pad]
            for fb in range(upack.shape[1]):
                for rt in range(row_tiles):
                    tile_kernel(
                        numba.literally(config), vij, rows, rt * mr, channel_offsets, channels,
                        upack[ij, fb], zero_bias, 0, mij, rt * mr * f_pad + fb * nr, f_pad, nr,
                        LINEAR,
                    )  # fmt: skip
        for n in range(n0, n1):
            for ti in range(th):
                for tj in range(tw):
                    t = ((n - n0) * th + ti) * tw + tj
                    if pool:
                        if ti >= out_h or tj >= out_w:
                            continue  # a pooling floor: no whole window
                        at = ((n * out_h + ti) * out_w + tj) * n_filters
                        rows_left, cols_left = 2, 2
                    else:
                        at = ((n * out_h + 2 * ti) * out_w + 2 * tj) * n_filters
                        rows_left = min(2, out_h - 2 * ti)
                        cols_left = min(2, out_w - 2 * tj)
                    _output_transform(
                        numba.literally(config), act, pool, m, t * f_pad, t_pad * f_pad, bias,
                        outf, at, n_filters, out_w * n_filters, rows_left, cols_left, n_filters,
                        codef,
                    )  # fmt: skip


@intrinsic
def _gradient_transform(typingctx, config, dz, base, col, row, m, m_off, m_step, n_vec):
    """M' = A dY A^T for one tile's 2x2 output gradient, VL filters at a time: dY[a][b] is the
    vector at dz[base + a * row + b * col + q * VL]. M'[ij] is written in the micro-kernel's
    packed B layout (ij plane, NR-wide block of filters, tile, NR lanes): plane ij starts
    ``m_step`` floats after plane ij - 1, each block ``m_step / (F_pad / NR)`` after the one
    before, and the tile's row at ``m_off``. VL and NR come from ``config`` (a literal)."""
    if not isinstance(config, types.IntegerLiteral):
        return None
    _, nr, vl, _, _ = decode(config.literal_value)
    sig = types.void(config, dz, base, col, row, m, m_off, m_step, n_vec)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        vec = ir.VectorType(ir.FloatType(), vl)
        _, dz_v, base_v, col_v, row_v, m_v, moff_v, mstep_v, nvec_v = args
        dz_ptr = context.make_array(signature.args[1])(context, builder, dz_v).data
        m_ptr = context.make_array(signature.args[5])(context, builder, m_v).data
        blocks = builder.sdiv(builder.mul(nvec_v, ir.Constant(i64, vl)), ir.Constant(i64, nr))
        block_step = builder.sdiv(mstep_v, blocks)
        q, _, _, done = counted_loop(builder, nvec_v, "grad")
        lane0 = builder.mul(q, ir.Constant(i64, vl))
        start = builder.add(base_v, lane0)
        dy = [
            [
                builder.load(
                    _vector_at(
                        builder, dz_ptr,
                        builder.add(start, builder.add(
                            builder.mul(row_v, ir.Constant(i64, a)),
                            builder.mul(col_v, ir.Constant(i64, b)),
                        )),
                        vec,
                    ),
                    align=4,
                )
                for b in range(2)
            ]
            for a in range(2)
        ]  # fmt: skip

        def a_times(top, bottom):  # A applied to two values: (t, t + b, t - b, -b)
            return (
                top, builder.fadd(top, bottom), builder.fsub(top, bottom), builder.fneg(bottom)
            )  # fmt: skip

        rows_t = [a_times(dy[0][b], dy[1][b]) for b in range(2)]  # [b][i]
        fb = builder.sdiv(lane0, ir.Constant(i64, nr))
        lane = builder.srem(lane0, ir.Constant(i64, nr))
        out_at = builder.add(moff_v, builder.add(builder.mul(fb, block_step), lane))
        planes = [a_times(rows_t[0][i], rows_t[1][i]) for i in range(4)]
        _store_planes(builder, m_ptr, out_at, mstep_v, planes)
        close_loop(builder, q, nvec_v, done)
        return context.get_dummy_value()

    return sig, codegen


@kernel
def _winograd_weight_grad(config, xp, dzp, channel_rows, tiles_hw, per_item, partial, n_chan):
    """dU[ij, c, f] = sum over tiles t of V[ij, t, c] * M'[ij, t, f], summed per thread into
    partial[thread] (16 * M_pad * F_pad float32, zeroed): V = B^T d B of the input tiles,
    M' = A dY A^T of the output gradient's 2x2 tiles, each prange iteration a few samples
    with its own V and M' (in L2), the 16 products on the micro-kernel with the tiles as the
    reduction (the ACCUMULATE epilogue) and the channels as rows.

    xp : (N, 2*TH + 2, 2*TW + 2, C_pad) float32 as the forward's; dzp : (N, 2*TH, 2*TW, F_pad)
    float32, the gradient zero-padded; channel_rows : (M_pad,) int64 = min(c, C - 1) (rows
    past the channels repeat the last, and are dropped); n_chan = C.
    """
    mr = tile_rows(config)
    nr = tile_cols(config)
    vl = tile_width(config)
    n_samples, padded_h, padded_w, c_pad = xp.shape
    _, grad_h, grad_w, f_pad = dzp.shape
    th, tw = tiles_hw
    m_pad = channel_rows.shape[0]
    n_fb = f_pad // nr
    t_item = per_item * th * tw
    xf = xp.reshape(-1)
    dzf = dzp.reshape(-1)
    n_items = (n_samples + per_item - 1) // per_item
    plane = m_pad * f_pad
    for item in numba.prange(n_items):
        out = partial[numba.get_thread_id()]
        n0 = item * per_item
        n1 = min(n0 + per_item, n_samples)
        v = np.empty(16 * t_item * c_pad, dtype=np.float32)
        g = np.empty(16 * t_item * f_pad, dtype=np.float32)
        taps = np.arange(t_item) * c_pad  # the reduction runs over the tiles
        _transform_inputs(
            config, xf, n0, n1, tiles_hw, (padded_h, padded_w), c_pad, v, t_item * c_pad
        )
        for n in range(n0, n1):
            for ti in range(th):
                for tj in range(tw):
                    t = ((n - n0) * th + ti) * tw + tj
                    at = ((n * grad_h + 2 * ti) * grad_w + 2 * tj) * f_pad
                    _gradient_transform(
                        numba.literally(config), dzf, at, f_pad, grad_w * f_pad, g, t * nr,
                        t_item * f_pad, f_pad // vl,
                    )  # fmt: skip
        n_tiles = (n1 - n0) * th * tw
        for ij in range(16):
            vij = v[ij * t_item * c_pad : (ij + 1) * t_item * c_pad]
            for fb in range(n_fb):
                start = (ij * n_fb + fb) * t_item * nr
                b = g[start : start + t_item * nr]
                for mt in range(m_pad // mr):
                    tile_kernel(
                        numba.literally(config), vij, channel_rows, mt * mr, taps, n_tiles, b,
                        out, 0, out, ij * plane + mt * mr * f_pad + fb * nr, f_pad, nr, LINEAR,
                    )  # fmt: skip


def conv_weight_grad(dz, x, padding):
    """dw (3, 3, C, F) float32 of a 3x3, stride-1, undilated convolution given dz (N, OH,
    OW, F) (after any activation) and its contiguous float32 input x (N, H, W, C): the 16
    transformed products summed over the tiles (per-thread partials), then dW = G^T dU G in
    float64."""
    n_samples, height, width, channels = x.shape
    _, out_h, out_w, filters = dz.shape
    (top, _), (left, _) = padding
    th, tw = -(-out_h // 2), -(-out_w // 2)
    tile = choose_tile(filters)
    f_pad = -(-filters // tile.nr) * tile.nr
    xp = _tiled_input(x, padding, (th, tw), tile.vl)
    dzp = np.zeros((n_samples, 2 * th, 2 * tw, f_pad), dtype=np.float32)
    dzp[:, :out_h, :out_w, :filters] = dz
    m_pad = -(-channels // tile.mr) * tile.mr
    channel_rows = np.minimum(np.arange(m_pad), channels - 1).astype(np.int64)
    per_item = _samples_per_item(n_samples, th * tw)
    partial = np.zeros((numba.get_num_threads(), 16 * m_pad * f_pad), dtype=np.float32)
    launch(
        _winograd_weight_grad, tile.config(ACCUMULATE), xp, dzp, channel_rows, (th, tw),
        per_item, partial, channels,
    )  # fmt: skip
    du = partial.sum(axis=0, dtype=np.float64).reshape(4, 4, m_pad, f_pad)
    du = du[:, :, :channels, :filters]
    return np.einsum("ia,ijcf,jb->abcf", _G, du, _G).astype(np.float32)


def _tiled_input(x, padding, tiles_hw, vl):
    """x (N, H, W, C) as the transforms read it: zeros around (the padding), one more row or
    column where the output size is odd (the last tile reads it) and channels up to a
    multiple of VL (whole vectors): (N, 2*TH + 2, 2*TW + 2, C_pad) float32."""
    n_samples, height, width, channels = x.shape
    (top, _), (left, _) = padding
    th, tw = tiles_hw
    c_pad = -(-channels // vl) * vl
    xp = np.zeros((n_samples, 2 * th + 2, 2 * tw + 2, c_pad), dtype=np.float32)
    xp[:, top : top + height, left : left + width, :channels] = x
    return xp


def _samples_per_item(n_samples, tiles_per_sample):
    """Samples per prange iteration: about _TILES_PER_ITEM tiles, and at least two
    iterations a thread where the batch allows."""
    per_item = max(1, _TILES_PER_ITEM // tiles_per_sample)
    return min(per_item, max(1, -(-n_samples // (2 * numba.get_num_threads()))))


def _run(x, w, b, padding, act, pool, out_shape):
    """Shared set-up of ``conv_forward`` and ``conv_relu_maxpool``."""
    n_samples, height, width, channels = x.shape
    filters = w.shape[3]
    (top, bottom), (left, right) = padding
    out_h, out_w = height + top + bottom - 2, width + left + right - 2
    th, tw = -(-out_h // 2), -(-out_w // 2)
    tile = choose_tile(filters)
    vl = tile.vl
    xp = _tiled_input(x, padding, (th, tw), vl)
    c_pad = xp.shape[3]
    per_item = _samples_per_item(n_samples, th * tw)
    t_item = per_item * th * tw
    rows = np.arange(-(-t_item // tile.mr) * tile.mr, dtype=np.int64) * c_pad
    upack = transformed_filters(w, tile.nr)
    bias = np.zeros(upack.shape[1] * tile.nr, np.float32)
    if b is not None:
        bias[:filters] = b
    out = np.empty(out_shape, dtype=np.float32)
    code = np.empty(out_shape if pool == MAX_POOL else (1, 1, 1, 1), dtype=np.int8)
    launch(
        _winograd, tile.config(BIAS), xp, upack, bias, rows, np.arange(channels, dtype=np.int64),
        (th, tw), per_item, out, code, act, pool,
    )  # fmt: skip
    return out, code


def conv_forward(x, w, b, padding, act=LINEAR):
    """y (N, OH, OW, F) float32 = act(conv(x, w) + b) for a 3x3, stride-1, undilated
    convolution of checked, contiguous float32 x (N, H, W, C), w (3, 3, C, F), b (F,) or
    None, zero padding ((top, bottom), (left, right)); ``act`` an activation code
    (``microkernel.ACTIVATIONS``)."""
    (top, bottom), (left, right) = padding
    out_hw = (x.shape[1] + top + bottom - 2, x.shape[2] + left + right - 2)
    out, _ = _run(x, w, b, padding, act, NO_POOL, (x.shape[0], *out_hw, w.shape[3]))
    return out


def conv_relu_maxpool(x, w, b, padding):
    """``pooled, code`` (N, OH // 2, OW // 2, F) float32 and int8: relu(conv(x, w) + b)
    max-pooled by 2x2 windows, as ``engine.conv_relu_maxpool`` with ``pool=(2, 2)``, for a
    3x3, stride-1, undilated convolution."""
    (top, bottom), (left, right) = padding
    out_hw = (x.shape[1] + top + bottom - 2, x.shape[2] + left + right - 2)
    shape = (x.shape[0], out_hw[0] // 2, out_hw[1] // 2, w.shape[3])
    return _run(x, w, b, padding, RELU, MAX_POOL, shape)


def conv_avgpool(x, w, b, padding, act=LINEAR):
    """pooled (N, OH // 2, OW // 2, F) float32: act(conv(x, w) + b) averaged over 2x2
    windows in the output transform, as ``engine.conv_avgpool`` with ``pool=(2, 2)``, for a
    3x3, stride-1, undilated convolution."""
    (top, bottom), (left, right) = padding
    out_hw = (x.shape[1] + top + bottom - 2, x.shape[2] + left + right - 2)
    shape = (x.shape[0], out_hw[0] // 2, out_hw[1] // 2, w.shape[3])
    return _run(x, w, b, padding, act, AVG_POOL, shape)[0]
