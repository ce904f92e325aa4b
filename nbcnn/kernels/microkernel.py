"""Register-blocked micro-kernels emitted as LLVM IR: the core of nbcnn's convolution engine.

One call computes an MR x NR tile of a product ``C = A @ B`` whose A rows are gathered:

    acc[r, j] = sum_k A[arow[row0 + r] + koff[k]] * B[k, j]        (r < MR, j < NR)
    C[c_off + r*ldc + j] = act(acc[r, j] + bias[bias_off + j])     (or C[...] += acc[r, j])

with ``act`` chosen at run time (linear, ReLU, ReLU6: ``ACTIVATIONS``), so that one compiled
tile serves every layer of its shape: each specialisation of a parallel kernel costs numba
1.2-2.5 s to compile on a first run.

The MR x NR accumulators are vector SSA values (``<VL x float>``) carried through the loop over
k by phi nodes, so LLVM keeps the whole tile in vector registers; each step loads one A
element per row, broadcasts it, and does MR * NR/VL fused multiply-adds with NR/VL vectors of
B. Plain numba loops cannot do this: LLVM keeps an accumulator array in memory, 3-5x slower
(design/conv-engine.md measured ~1 GFLOP/s for an alloca'd 6x32 tile, ~100 for this form).

The tile is chosen from the CPU numba compiles for (``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES``
are honoured, so tests can force every variant on one machine): AVX-512 16-wide vectors,
AVX2 + FMA 8-wide, anything else a portable 4-wide form with a separate multiply and add.

Arrays are passed as numba arrays, never as raw addresses, so numba keeps them alive for the
call. The generator's version is part of every tile's configuration, a literal argument, so
numba's on-disk cache (keyed by argument types, literals included) never serves a tile from
an older generator.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import typeof, types
from numba.core import cgutils
from numba.extending import intrinsic, register_jitable

#: Bumped whenever the IR below changes: it is encoded in every tile configuration, which
#: numba's cache keys on, so a stale compiled tile is never reused.
GENERATOR_VERSION = 7

#: Epilogues: C = act(tile + bias), the activation a run-time argument (below); C += tile;
#: and, for ``pool_tile_kernel``, max(tile + bias, 0) max-pooled over each window of
#: ``cells`` consecutive rows, with the winning row's index, or act(tile + bias) averaged
#: over each window (AVG_POOL).
BIAS, AVG_POOL, ACCUMULATE, RELU_MAXPOOL = 0, 1, 2, 3
POOLS = (AVG_POOL, RELU_MAXPOOL)

#: The activations the BIAS epilogue applies, by the run-time code it takes: ``act`` of the
#: tile kernels and of the Winograd output transform.
LINEAR, RELU, RELU6 = 0, 1, 2
ACTIVATIONS = {None: LINEAR, "linear": LINEAR, "relu": RELU, "relu6": RELU6}

# CPUs by the vector width their default features give numba (LLVM's CPU names).
_WIDTH_16 = (
    "skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client",
    "icelake-server", "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids",
    "graniterapids", "znver4", "znver5", "x86-64-v4",
)  # fmt: skip
_WIDTH_8 = (
    "haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake", "znver1",
    "znver2", "znver3", "x86-64-v3",
)  # fmt: skip


@dataclass(frozen=True)
class Tile:
    """A micro-kernel shape: MR rows x NR columns of ``VL``-wide vectors (NR % VL == 0)."""

    mr: int
    nr: int
    vl: int

    def config(self, epilogue: int, cells: int = 1) -> int:
        """The tile as the kernels take it: one int holding MR, NR, VL, the epilogue, the
        pooling window's ``cells`` (RELU_MAXPOOL; MR a multiple of it) and the generator's
        version, passed as a compile-time literal (see :func:`launch`), so each tile is
        compiled once and keyed, in numba's on-disk cache too, by its shape and the
        generator's version."""
        if epilogue not in (BIAS, AVG_POOL, ACCUMULATE, RELU_MAXPOOL):
            raise ValueError(f"unknown epilogue {epilogue!r}")
        if not 1 <= cells <= 127 or self.mr % cells or (cells > 1 and epilogue not in POOLS):
            raise ValueError(f"a {self.mr}-row tile cannot pool windows of {cells} cells")
        head = (GENERATOR_VERSION * 128 + cells) * 64 + self.mr
        return ((head * 256 + self.nr) * 32 + self.vl) * 4 + epilogue


@register_jitable
def tile_rows(config):
    """MR of a tile configuration (inside numba kernels)."""
    return (config // (4 * 32 * 256)) % 64


@register_jitable
def tile_cols(config):
    """NR of a tile configuration (inside numba kernels)."""
    return (config // (4 * 32)) % 256


@register_jitable
def tile_width(config):
    """VL, the vector width, of a tile configuration (inside numba kernels)."""
    return (config // 4) % 32


@register_jitable
def tile_epilogue(config):
    """The epilogue of a tile configuration (inside numba kernels)."""
    return config % 4


@register_jitable
def tile_cells(config):
    """Cells of the pooling window of a tile configuration (inside numba kernels)."""
    return (config // (4 * 32 * 256 * 64)) % 128


def decode(config: int) -> tuple[int, int, int, int, int]:
    """``(MR, NR, VL, epilogue, cells)`` of a tile configuration (see :meth:`Tile.config`)."""
    epilogue, config = config % 4, config // 4
    vl, config = config % 32, config // 32
    nr, config = config % 256, config // 256
    mr, config = config % 64, config // 64
    cells, version = config % 128, config // 128
    if version != GENERATOR_VERSION:
        raise ValueError(f"tile of generator version {version}, not {GENERATOR_VERSION}")
    return mr, nr, vl, epilogue, cells


def launch(dispatcher, config: int, *args):
    """Call the numba kernel ``dispatcher(config, *args)`` with ``config`` as a literal (every
    other argument is a run-time value: each literal is one more compiled specialisation).

    Calling a dispatcher with an int whose kernel asks for ``numba.literally`` re-dispatches
    through an exception and type inference on every call (~20 ms measured here); the compiled
    specialisation is looked up, or compiled (or loaded from the cache) once, and called
    directly instead."""
    sig = (types.IntegerLiteral(config),) + tuple(typeof(a) for a in args)
    compiled = dispatcher.overloads.get(sig)
    if compiled is None:
        dispatcher.compile(sig)
        compiled = dispatcher.overloads[sig]
    return compiled.entry_point(config, *args)


def pack_weights(w2d, nr):
    """w2d (K, F) -> (ceil(F/NR), K, NR) float32, zero past F: one contiguous B per block."""
    k, filters = w2d.shape
    blocks = -(-filters // nr)
    packed = np.zeros((blocks, k, nr), dtype=np.float32)
    for fb in range(blocks):
        part = w2d[:, fb * nr : (fb + 1) * nr]
        packed[fb, :, : part.shape[1]] = part
    return packed


def _feature_flags(text: str) -> dict[str, bool]:
    flags = {}
    for item in text.split(","):
        item = item.strip()
        if item[:1] in "+-" and len(item) > 1:
            flags[item[1:]] = item[0] == "+"
    return flags


@functools.cache
def vector_width() -> int:
    """Float32 lanes of the vectors numba's target CPU has: 16 (AVX-512), 8 (AVX2 + FMA) or 4
    (anything else). Reads the CPU name and features numba compiles for, so
    ``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=-avx512f`` gives the AVX2 tiles."""
    import llvmlite.binding as llvm
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    name = (config.CPU_NAME or llvm.get_host_cpu_name()).lower()
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else None
    if features is None:
        flags = _feature_flags(get_host_cpu_features())
        if flags.get("avx512f"):
            return 16
        return 8 if flags.get("avx2") and flags.get("fma") else 4
    flags = _feature_flags(features)
    width = 16 if name in _WIDTH_16 else 8 if name in _WIDTH_8 else 4
    if flags.get("avx512f") is True:
        width = 16
    elif flags.get("avx512f") is False:
        width = min(width, 8)
    if flags.get("avx2") is False or flags.get("fma") is False:
        width = 4
    elif flags.get("avx2") and flags.get("fma"):
        width = max(width, 8)
    return width


def choose_tile(filters: int, width: int | None = None) -> Tile:
    """The tile for a layer with ``filters`` output channels: as many vector columns as the
    filters fill (up to 4 with AVX-512's 32 vector registers, 2 with 16), then as many rows as
    the vector registers allow beside them (one for the broadcast, NR/VL for B). For 64 filters
    that is the study's 6x64 AVX-512 tile and 6x16 AVX2 tile (design/conv-engine.md)."""
    host = width or vector_width()
    # AVX-512 with at most 8 filters: 8-wide vectors (of its 32 registers), so that 6 filters
    # fill 6 of 8 lanes, not 6 of 16: one thread, batch 128, LeNet-5's first layer forward
    # 2.0 -> 1.8 ms, its weight gradient 1.85 -> 1.38, its second layer's input gradient
    # (6 outputs) 3.6 -> 2.5 ms, with an 8x8 tile (6x8: 1.76, 2.14, 2.78).
    vl = 8 if host == 16 and filters <= 8 else host
    columns = max(1, min(4 if vl == 16 else 2, -(-filters // vl)))
    registers = 32 if host == 16 else 16
    rows = (registers - columns - 2) // columns
    # At most 8 rows: each row's base address takes a general register (16 on x86-64); a
    # 14x32 tile measured 18.2 ms on the seed convnet's conv2 input gradient, 8x32 12.3 ms.
    rows = max(1, min(rows, 8 if host == 16 else 6))
    return Tile(rows, columns * vl, vl)


def choose_pool_tile(filters: int, cells: int, width: int | None = None) -> Tile | None:
    """The tile for the pooling epilogues: MR a multiple of the pooling window's
    ``cells`` (whole windows per tile), within ``choose_tile``'s register budget and row cap;
    None when no tile holds a whole window. Of the candidates, the one wasting the fewest
    columns past the filters, then with the most accumulators, then the most rows: for 64
    filters and 2x2 windows on AVX-512, 8x32 (conv2 of the seed convnet, one thread: 9.5 ms,
    as 4x64; 8x48 took 13.9 ms, a third of its columns wasted)."""
    host = width or vector_width()
    vl = choose_tile(filters, width).vl
    registers, row_cap = (32, 8) if host == 16 else (16, 6)  # the host's registers
    candidates = []
    for columns in range(1, (4 if vl == 16 else 2) + 1):
        rows = min((registers - columns - 2) // columns, row_cap)
        rows -= rows % cells
        if rows >= cells:
            nr = columns * vl
            useful = filters / (-(-filters // nr) * nr)
            candidates.append((useful, rows * columns, rows, Tile(rows, nr, vl)))
    return max(candidates, key=lambda c: c[:3])[3] if candidates else None


def counted_loop(builder, count, name):
    """Open ``for i in range(count)`` in IR: returns ``(i, entry, loop, done)`` with the
    builder in the loop's body; close it with :func:`close_loop`."""
    i64 = ir.IntType(64)
    entry = builder.block
    loop = builder.append_basic_block(f"{name}_loop")
    done = builder.append_basic_block(f"{name}_done")
    builder.cbranch(builder.icmp_signed(">", count, ir.Constant(i64, 0)), loop, done)
    builder.position_at_end(loop)
    counter = builder.phi(i64, name)
    counter.add_incoming(ir.Constant(i64, 0), entry)
    return counter, entry, loop, done


def close_loop(builder, counter, count, done):
    """End the body of a :func:`counted_loop`; the builder continues after the loop. Returns
    the block the body ended in (the predecessor of ``done`` for phi nodes)."""
    following = builder.add(counter, ir.Constant(ir.IntType(64), 1))
    body_end = builder.block
    counter.add_incoming(following, body_end)
    builder.cbranch(builder.icmp_signed("<", following, count), counter.parent, done)
    builder.position_at_end(done)
    return body_end


def _product(context, builder, signature, args, mr, nr, vl):
    """Emit the k loop of a tile (``tile_kernel``'s first 12 arguments); returns the MR x
    NR/VL accumulator vectors after it, the f32 vector type and a zero vector."""
    f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
    vec = ir.VectorType(f32, vl)
    nv = nr // vl
    _, a_v, arow_v, row0_v, koff_v, k_v, b_v = args[:7]

    def data(i, value):
        return context.make_array(signature.args[i])(context, builder, value).data

    a_ptr, arow_ptr, koff_ptr, b_ptr = data(1, a_v), data(2, arow_v), data(4, koff_v), data(6, b_v)
    fused = vl > 4  # FMA hardware; the portable form multiplies and adds
    if fused:
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{vl}f32"
        )
    zero = ir.Constant(vec, [0.0] * vl)
    splat_mask = ir.Constant(ir.VectorType(i32, vl), [0] * vl)
    undef = ir.Constant(vec, ir.Undefined)
    rows = [
        builder.load(builder.gep(arow_ptr, [builder.add(row0_v, ir.Constant(i64, r))]))
        for r in range(mr)
    ]
    k, entry, loop, done = counted_loop(builder, k_v, "tile")
    acc = [[builder.phi(vec, f"acc_{r}_{j}") for j in range(nv)] for r in range(mr)]
    for row in acc:
        for phi in row:
            phi.add_incoming(zero, entry)
    offset = builder.load(builder.gep(koff_ptr, [k]))
    b_row = builder.gep(b_ptr, [builder.mul(k, ir.Constant(i64, nr))])
    bs = [
        builder.load(
            builder.bitcast(builder.gep(b_row, [ir.Constant(i64, j * vl)]), vec.as_pointer()),
            align=4,
        )
        for j in range(nv)
    ]
    updated = []
    for r in range(mr):
        scalar = builder.load(builder.gep(a_ptr, [builder.add(rows[r], offset)]))
        broadcast = builder.shuffle_vector(
            builder.insert_element(undef, scalar, ir.Constant(i32, 0)), undef, splat_mask
        )
        line = []
        for j in range(nv):
            if fused:
                line.append(builder.call(fma, [broadcast, bs[j], acc[r][j]]))
            else:
                line.append(builder.fadd(builder.fmul(broadcast, bs[j]), acc[r][j]))
        updated.append(line)
    for r in range(mr):
        for j in range(nv):
            acc[r][j].add_incoming(updated[r][j], loop)
    close_loop(builder, k, k_v, done)
    totals = [[builder.phi(vec, f"sum_{r}_{j}") for j in range(nv)] for r in range(mr)]
    for r in range(mr):
        for j in range(nv):
            totals[r][j].add_incoming(zero, entry)
            totals[r][j].add_incoming(updated[r][j], loop)
    return totals, vec, zero


def _vector_at(builder, base_ptr, index, vec):
    return builder.bitcast(builder.gep(base_ptr, [index]), vec.as_pointer())


def masked_store(builder, value, ptr, mask):
    """llvm.masked.store of a float or i8 vector: the lanes where ``mask`` (<VL x i1>) is
    true. AVX-512 and AVX2 store under a mask; other targets get it split into scalars."""
    vec = value.type
    name = "f32" if isinstance(vec.element, ir.FloatType) else "i8"
    fn = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), ir.IntType(32), mask.type]),
        f"llvm.masked.store.v{vec.count}{name}.p0v{vec.count}{name}",
    )
    builder.call(fn, [value, ptr, ir.Constant(ir.IntType(32), 1), mask])


def lanes_below(builder, count, vl):
    """<VL x i1>: lane l is true when l < count (an i64 value)."""
    i32 = ir.IntType(32)
    lanes = ir.Constant(ir.VectorType(i32, vl), list(range(vl)))
    undef = ir.Constant(ir.VectorType(i32, vl), ir.Undefined)
    splat = builder.shuffle_vector(
        builder.insert_element(undef, builder.trunc(count, i32), ir.Constant(i32, 0)),
        undef,
        ir.Constant(ir.VectorType(i32, vl), [0] * vl),
    )
    return builder.icmp_signed("<", lanes, splat)


def activate(builder, value, act):
    """``value`` (a float vector) through the activation whose run-time code (``ACTIVATIONS``)
    is the i64 ``act``: two selects for ReLU, two more for ReLU6, none taken for LINEAR.
    ReLU maps NaN to 0 (``v > 0`` or 0, as the kernels' gradients test it)."""
    vec = value.type
    zero = ir.Constant(vec, [0.0] * vec.count)
    six = ir.Constant(vec, [6.0] * vec.count)
    i64 = ir.IntType(64)
    relu = builder.select(builder.fcmp_ordered(">", value, zero), value, zero)
    value = builder.select(builder.icmp_signed(">=", act, ir.Constant(i64, RELU)), relu, value)
    capped = builder.select(builder.fcmp_ordered("<", value, six), value, six)
    return builder.select(builder.icmp_signed("==", act, ir.Constant(i64, RELU6)), capped, value)


def _require_contiguous(kernel_name, **arrays):
    """Typing-time check: the tile reads every array through its data pointer as flat
    memory, so a strided view (layout 'A', e.g. a reshape of a sliced array) would be read
    wrongly; refuse it at compile time instead."""
    from numba.core.errors import TypingError

    for name, array in arrays.items():
        if isinstance(array, types.Array) and array.layout != "C":
            raise TypingError(
                f"{kernel_name}: {name} must be a C-contiguous array, got layout "
                f"{array.layout!r} (pass np.ascontiguousarray(...))"
            )


@intrinsic
def tile_kernel(
    typingctx, config, a, arow, row0, koff, k_len, b, bias, bias_off, c, c_off, ldc, cols, act
):
    """The micro-kernel (see the module docstring); ``config`` (:meth:`Tile.config`) must be a
    literal.

    a : (*,) float32, arow : (*,) int64 row offsets into a, koff : (K,) int64 column offsets,
    b : (K, NR) float32 C-contiguous, bias : (*,) float32, c : (*,) float32 output. Only the
    first ``cols`` columns of the tile are stored (masked stores when cols < NR: a layer of
    6 filters stores 6 of its 8 lanes in place instead of going through a scratch tile);
    the ACCUMULATE epilogue stores all NR. ``act`` : int64, the BIAS epilogue's activation
    (``ACTIVATIONS``), a run-time value.
    """
    if not isinstance(config, types.IntegerLiteral):
        return None
    mr, nr, vl, epilogue, _ = decode(config.literal_value)
    if epilogue in POOLS:  # those are pool_tile_kernel's
        return None
    _require_contiguous("tile_kernel", a=a, arow=arow, koff=koff, b=b, bias=bias, c=c)
    sig = types.void(
        config, a, arow, row0, koff, k_len, b, bias, bias_off, c, c_off, ldc, cols, act
    )

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        totals, vec, _ = _product(context, builder, signature, args, mr, nr, vl)
        bias_v, boff_v, c_v, coff_v, ldc_v, cols_v, act_v = args[7:]
        bias_ptr = context.make_array(signature.args[7])(context, builder, bias_v).data
        c_ptr = context.make_array(signature.args[9])(context, builder, c_v).data
        values, targets = [], []
        for j in range(nr // vl):
            if epilogue != ACCUMULATE:
                at = builder.add(boff_v, ir.Constant(i64, j * vl))
                bias_vec = builder.load(_vector_at(builder, bias_ptr, at, vec), align=4)
            for r in range(mr):
                at = builder.add(
                    coff_v,
                    builder.add(builder.mul(ldc_v, ir.Constant(i64, r)), ir.Constant(i64, j * vl)),
                )
                target = _vector_at(builder, c_ptr, at, vec)
                if epilogue == ACCUMULATE:  # C += tile (a reduction split over calls)
                    builder.store(
                        builder.fadd(builder.load(target, align=4), totals[r][j]), target, align=4
                    )
                    continue
                value = activate(builder, builder.fadd(totals[r][j], bias_vec), act_v)
                values.append((j, value))
                targets.append(target)
        if epilogue == ACCUMULATE:
            return context.get_dummy_value()
        full = builder.icmp_signed(">=", cols_v, ir.Constant(i64, nr))
        with builder.if_else(full) as (whole, part):
            with whole:
                for (_, value), target in zip(values, targets, strict=True):
                    builder.store(value, target, align=4)
            with part:
                masks = [
                    lanes_below(builder, builder.sub(cols_v, ir.Constant(i64, j * vl)), vl)
                    for j in range(nr // vl)
                ]
                for (j, value), target in zip(values, targets, strict=True):
                    masked_store(builder, value, target, masks[j])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def pool_tile_kernel(
    typingctx, config, a, arow, row0, koff, k_len, b, bias, bias_off, c, c_off, ldc, code, act
):
    """The micro-kernel with a pooling epilogue: the tile's rows are MR / cells pooling
    windows of ``cells`` consecutive rows each (the caller orders the rows so), and while
    the tile is still in registers each window is reduced to one row of C. RELU_MAXPOOL:
    the window's ``max(tile + bias, 0)``, and the index of its first maximal row (the layers'
    tie rule: a later cell wins only when strictly greater) to the same place in ``code``.
    AVG_POOL: ``act(tile + bias)`` (``act`` a run-time activation code, ``ACTIVATIONS``)
    summed over the window's rows in order and times float32(1 / cells), as the average
    pooling kernel computes it; ``code`` is not written.

    Arguments as ``tile_kernel``'s, with C's row g (window g of the tile) at ``c_off + g *
    ldc``; code : (*,) int8, indexed as C.
    """
    if not isinstance(config, types.IntegerLiteral):
        return None
    mr, nr, vl, epilogue, cells = decode(config.literal_value)
    if epilogue not in POOLS:
        return None
    _require_contiguous(
        "pool_tile_kernel", a=a, arow=arow, koff=koff, b=b, bias=bias, c=c, code=code
    )  # fmt: skip
    sig = types.void(
        config, a, arow, row0, koff, k_len, b, bias, bias_off, c, c_off, ldc, code, act
    )  # fmt: skip
    inverse = float(np.float32(1) / np.float32(cells))

    def codegen(context, builder, signature, args):
        i64, i8 = ir.IntType(64), ir.IntType(8)
        codes = ir.VectorType(i8, vl)
        totals, vec, zero = _product(context, builder, signature, args, mr, nr, vl)
        bias_v, boff_v, c_v, coff_v, ldc_v, code_v, act_v = args[7:]
        bias_ptr = context.make_array(signature.args[7])(context, builder, bias_v).data
        c_ptr = context.make_array(signature.args[9])(context, builder, c_v).data
        code_ptr = context.make_array(signature.args[12])(context, builder, code_v).data

        def relu(value):
            return builder.select(builder.fcmp_ordered(">", value, zero), value, zero)

        for j in range(nr // vl):
            at = builder.add(boff_v, ir.Constant(i64, j * vl))
            bias_vec = builder.load(_vector_at(builder, bias_ptr, at, vec), align=4)
            for g in range(mr // cells):
                at = builder.add(
                    coff_v,
                    builder.add(builder.mul(ldc_v, ir.Constant(i64, g)), ir.Constant(i64, j * vl)),
                )
                if epilogue == AVG_POOL:
                    total = activate(builder, builder.fadd(totals[g * cells][j], bias_vec), act_v)
                    for cell in range(1, cells):
                        value = builder.fadd(totals[g * cells + cell][j], bias_vec)
                        total = builder.fadd(total, activate(builder, value, act_v))
                    total = builder.fmul(total, ir.Constant(vec, [inverse] * vl))
                    builder.store(total, _vector_at(builder, c_ptr, at, vec), align=4)
                    continue
                best = relu(builder.fadd(totals[g * cells][j], bias_vec))
                winner = ir.Constant(codes, [0] * vl)
                for cell in range(1, cells):
                    value = relu(builder.fadd(totals[g * cells + cell][j], bias_vec))
                    take = builder.fcmp_ordered(">", value, best)
                    best = builder.select(take, value, best)
                    winner = builder.select(take, ir.Constant(codes, [cell] * vl), winner)
                builder.store(best, _vector_at(builder, c_ptr, at, vec), align=4)
                builder.store(winner, _vector_at(builder, code_ptr, at, codes), align=1)
        return context.get_dummy_value()

    return sig, codegen
