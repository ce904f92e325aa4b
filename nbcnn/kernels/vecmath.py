"""Vector float32 activations in LLVM IR, for the micro-kernels' epilogues: exp, sigmoid, tanh
and ELU on a whole ``<VL x float>`` tile row while it is still in registers.

numba calls libm's scalar ``expf``/``tanhf`` once per element (no SVML here), and LLVM's
``llvm.exp`` intrinsic is split into the same scalar calls; either would cost more than the
convolution's own epilogue saves. These are the Cephes single-precision algorithms (range
reduction, then a polynomial), in plain vector instructions:

- exp(x): x clamped to [-87.3, 88], n = floor(x log2(e) + 1/2), r = x - n ln 2 (ln 2 in two
  parts, so r is exact), exp(r) by a degree-7 polynomial, times 2^n built in the exponent
  bits. Within 2 ulp of exp for x in the clamp (tests/test_vecmath.py measures it).
- sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) below, e = exp(-|x|): no overflow, and the
  tail of a very negative x keeps its precision (as ``nbcnn.layers.activations.sigmoid``).
- tanh(x): an odd polynomial for |x| < 0.625, else sign(x) (1 - e) / (1 + e), e = exp(-2|x|).
- ELU(x) = x for x > 0, else exp(x) - 1, or its Taylor polynomial for -0.25 < x <= 0 (where
  exp(x) - 1 would lose the digits of a small result).

NaN goes through as NaN. Each activation is an internal function of the module that uses it
(emitted once, called from every row of a tile), named with the vector width. Any change here
changes the kernels' code: bump ``microkernel.GENERATOR_VERSION`` with it (numba's cache
checks only the source file of the kernel it caches).
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils

# exp's range reduction and polynomial (Cephes expf.c)
_LOG2E = 1.44269504088896341
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
             1.6666665459e-1, 5.0000001201e-1)  # fmt: skip
_EXP_LO, _EXP_HI = -87.3, 88.0  # 2^n stays a normal float32 (n in [-126, 127])

# tanh for |x| < 0.625: x + x^3 P(x^2) (Cephes tanhf.c)
_TANH_POLY = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
              -3.33332819422e-1)  # fmt: skip
_TANH_SMALL = 0.625

# expm1 for -0.25 < x <= 0: x + x^2/2! + ... + x^7/7! (the next term is below 3e-9 |x|)
_EXPM1_SMALL = -0.25


def _splat(vec, value):
    return ir.Constant(vec, [value] * vec.count)


def _polynomial(builder, x, coefficients):
    """Horner's rule: ((c0 x + c1) x + c2) ... for a vector x."""
    vec = x.type
    result = _splat(vec, coefficients[0])
    for c in coefficients[1:]:
        result = builder.fadd(builder.fmul(result, x), _splat(vec, c))
    return result


def _clamp(builder, x, lo, hi):
    """x limited to [lo, hi]; NaN stays NaN (ordered comparisons are false for it)."""
    vec = x.type
    x = builder.select(builder.fcmp_ordered("<", x, _splat(vec, lo)), _splat(vec, lo), x)
    return builder.select(builder.fcmp_ordered(">", x, _splat(vec, hi)), _splat(vec, hi), x)


def _exp(builder, x):
    vec = x.type
    lanes = ir.VectorType(ir.IntType(32), vec.count)
    floor = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec]), f"llvm.floor.v{vec.count}f32"
    )
    x = _clamp(builder, x, _EXP_LO, _EXP_HI)
    n = builder.call(floor, [builder.fadd(builder.fmul(x, _splat(vec, _LOG2E)), _splat(vec, 0.5))])
    r = builder.fsub(x, builder.fmul(n, _splat(vec, _LN2_HI)))
    r = builder.fsub(r, builder.fmul(n, _splat(vec, _LN2_LO)))
    p = _polynomial(builder, r, _EXP_POLY)
    p = builder.fadd(builder.fadd(builder.fmul(p, builder.fmul(r, r)), r), _splat(vec, 1.0))
    # NaN has no integer (fptosi would give poison): its exponent is taken from 0, and the
    # NaN in p carries through the product.
    n = builder.select(builder.fcmp_ordered("ord", n, n), n, _splat(vec, 0.0))
    bits = builder.shl(
        builder.add(builder.fptosi(n, lanes), ir.Constant(lanes, [127] * vec.count)),
        ir.Constant(lanes, [23] * vec.count),
    )
    return builder.fmul(p, builder.bitcast(bits, vec))


def _abs(builder, x):
    fabs = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(x.type, [x.type]), f"llvm.fabs.v{x.type.count}f32"
    )
    return builder.call(fabs, [x])


def _sigmoid(builder, x):
    vec = x.type
    one = _splat(vec, 1.0)
    e = _exp(builder, builder.fneg(_abs(builder, x)))
    s = builder.fdiv(one, builder.fadd(one, e))
    negative = builder.fcmp_ordered("<", x, _splat(vec, 0.0))
    return builder.select(negative, builder.fmul(e, s), s)


def _tanh(builder, x):
    vec = x.type
    one = _splat(vec, 1.0)
    ax = _abs(builder, x)
    e = _exp(builder, builder.fmul(ax, _splat(vec, -2.0)))
    large = builder.fdiv(builder.fsub(one, e), builder.fadd(one, e))
    large = builder.select(
        builder.fcmp_ordered("<", x, _splat(vec, 0.0)), builder.fneg(large), large
    )
    z = builder.fmul(x, x)
    small = builder.fadd(builder.fmul(builder.fmul(_polynomial(builder, z, _TANH_POLY), z), x), x)
    return builder.select(builder.fcmp_ordered("<", ax, _splat(vec, _TANH_SMALL)), small, large)


def _elu(builder, x):
    vec = x.type
    near = _polynomial(builder, x, [1.0 / f for f in (5040, 720, 120, 24, 6, 2, 1)])
    near = builder.fmul(near, x)  # x (1 + x/2 + ... + x^6/7!) = expm1(x) to 7 terms
    far = builder.fsub(_exp(builder, x), _splat(vec, 1.0))
    below = builder.select(builder.fcmp_ordered(">", x, _splat(vec, _EXPM1_SMALL)), near, far)
    return builder.select(builder.fcmp_ordered(">", x, _splat(vec, 0.0)), x, below)


#: The activations of this module by the run-time code the kernels take (microkernel.py's
#: ACTIVATIONS continues these numbers).
SIGMOID, TANH, ELU = 3, 4, 5
_BUILDERS = {SIGMOID: _sigmoid, TANH: _tanh, ELU: _elu}


def call_activation(builder, value, act):
    """``value`` (<VL x float>) through the activation with the i64 run-time code ``act``
    (SIGMOID, TANH or ELU; any other code returns ``value``), by a call to one internal
    function of the module that switches on ``act``."""
    vec = value.type
    module = builder.module
    name = f"nbcnn_activation_v{vec.count}"
    function = module.globals.get(name)
    if function is None:
        function = ir.Function(module, ir.FunctionType(vec, [vec, ir.IntType(64)]), name)
        function.linkage = "internal"
        # Inlined where it is called: a call per vector kept LLVM from overlapping one vector's
        # exp with the next and from hoisting the switch out of the caller's loop (conv2 of the
        # seed convnet with tanh, one thread, +1.7 ms over linear called, see activate_rows).
        function.attributes.add("alwaysinline")
        x, code = function.args
        body = ir.IRBuilder(function.append_basic_block("entry"))
        otherwise = function.append_basic_block("other")
        switch = body.switch(code, otherwise)
        for number, build in _BUILDERS.items():
            block = function.append_basic_block(build.__name__.strip("_"))
            switch.add_case(ir.Constant(ir.IntType(64), number), block)
            case = ir.IRBuilder(block)
            case.ret(build(case, x))
        ir.IRBuilder(otherwise).ret(x)
    return builder.call(function, [value, act])
