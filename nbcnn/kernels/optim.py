"""Optimizer updates (SGD, Adam/AdamW, RMSprop) fused into one pass over each parameter array.

nbcnn/optim.py's NumPy updates make about ten passes over memory per parameter array (Adam:
subtract, scale, add, square, subtract, scale, add, sqrt, add, multiply, divide, subtract, each
reading and writing whole arrays): 1.0-1.2 ms of a ~28 ms training step of the seed convnet
(421,642 parameters, ``benchmarks/profile_step.py``). Here each element is read once, updated
in registers and written once.

The results are bit for bit those of the NumPy code (tests/test_optim_fused.py): every
scalar is cast to float32 in the wrappers, as NumPy casts a Python float that meets a float32
array (numba would otherwise promote ``float32 * float`` to float64), and each element goes
through the NumPy code's operations in the NumPy code's order, rounded to float32 after each
(``fastmath`` is off, so LLVM neither reassociates nor fuses a multiply and an add; the loops
vectorize all the same, and vector square roots and divisions round as the scalar ones do).

Arrays are flattened views (n,) of C-contiguous float32 arrays: p the parameter, g its
gradient, the optimizer's slots shaped like p. Weight decay (``p -= p * decay`` with
``decay = float32(weight_decay) * float32(lr)``) runs first in the same pass; 0 means none.
A slot an optimizer does not keep (SGD without momentum, RMSprop's momentum and average
gradient when off) is passed as an empty array that the kernel never reads.
"""

from __future__ import annotations

import numba
import numpy as np

from nbcnn.kernels._jit import kernel

#: Elements per ``prange`` iteration: 16 KiB of each array, a few iterations per thread even
#: for the seed convnet's conv2 kernel (18,432 elements). Passed to the kernels as an argument
#: (a module constant would be frozen into numba's on-disk cache at the first compile).
BLOCK = 4096

#: Arrays smaller than this run the serial loop: below it a parallel launch costs more than
#: the second thread saves. Measured on an AMD EPYC Zen 4 (2 cores, OpenMP layer, 2 threads,
#: host shared and busy; medians of 7 x 1,000 calls), serial vs parallel: Adam on 10 elements
#: 0.6 vs 2.2 us (NumPy's passes: 5.3 us), 12,288: 4.1 vs 4.7, 24,576: 7.6 vs 6.0, 401,408:
#: 137 vs 79 (NumPy 530); the crossing lies near 8-16 K elements for RMSprop, 16-24 K for
#: Adam and 24-32 K for SGD (less work per element). One threshold for all three.
SERIAL_BELOW = 16384

_NO_SLOT = np.empty(0, np.float32)

# ---------------------------------------------------------- element loops, serial, vectorized

#: The decorator of the element loops: serial (the drivers below split the work into blocks),
#: with NumPy's error model, so that x / 0 gives inf or NaN as in NumPy instead of raising
#: ZeroDivisionError. Python's model checks every divisor, and that branch kept LLVM from
#: vectorizing the loops (scalar vdivss/vsqrtss, 2.5 ns an element for Adam, slower than
#: NumPy's ten passes); the loops also run from 0 over slices, since an index that might be
#: negative (range(start, stop)) gets numba's wrap-around test, which stops vectorizing too.
_elementwise = kernel(parallel=False, error_model="numpy")


@_elementwise
def _sgd_elements(p, g, m, lr, momentum, nesterov, use_momentum, decay):
    """SGD on every element, the NumPy code's order: step = g * lr; without momentum
    p -= step; else m = m * momentum - step and p += m, or with Nesterov
    p += m * momentum - step."""
    for j in range(p.shape[0]):
        w = p[j]
        if decay != 0:
            w -= w * decay
        step = g[j] * lr
        if not use_momentum:
            p[j] = w - step
            continue
        mj = m[j] * momentum - step
        m[j] = mj
        if nesterov:
            p[j] = w + (mj * momentum - step)
        else:
            p[j] = w + mj


@_elementwise
def _adam_elements(p, g, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon, decay):
    """Adam on every element: m += (g - m) * (1 - beta_1); v += (g * g - v) * (1 - beta_2);
    p -= (m * alpha) / (sqrt(v) + epsilon)."""
    for j in range(p.shape[0]):
        w = p[j]
        if decay != 0:
            w -= w * decay
        gj = g[j]
        mj = m[j] + (gj - m[j]) * one_minus_beta_1
        vj = v[j] + (gj * gj - v[j]) * one_minus_beta_2
        m[j] = mj
        v[j] = vj
        p[j] = w - (mj * alpha) / (np.sqrt(vj) + epsilon)


@_elementwise
def _rmsprop_elements(
    p, g, v, a, mom, lr, rho, one_minus_rho, momentum, epsilon, centered, use_momentum, decay
):
    """RMSprop on every element: v = v * rho + (g * g) * (1 - rho); centered:
    a = a * rho + g * (1 - rho), d = v - a * a, else d = v; inc = (g * lr) / sqrt(d + epsilon);
    with momentum mom = mom * momentum + inc, p -= mom, else p -= inc."""
    for j in range(p.shape[0]):
        w = p[j]
        if decay != 0:
            w -= w * decay
        gj = g[j]
        vj = v[j] * rho + (gj * gj) * one_minus_rho
        v[j] = vj
        d = vj
        if centered:
            aj = a[j] * rho + gj * one_minus_rho
            a[j] = aj
            d = vj - aj * aj
        inc = (gj * lr) / np.sqrt(d + epsilon)
        if use_momentum:
            inc = mom[j] * momentum + inc
            mom[j] = inc
        p[j] = w - inc


# -------------------------------------- parallel drivers: iteration k updates only block k
# An unused slot is an empty array: its slices are empty too, and never read.


@kernel
def _sgd_blocks(p, g, m, lr, momentum, nesterov, use_momentum, decay, block):
    for k in numba.prange((p.shape[0] + block - 1) // block):
        s = slice(k * block, (k + 1) * block)
        _sgd_elements(p[s], g[s], m[s], lr, momentum, nesterov, use_momentum, decay)


@kernel
def _adam_blocks(p, g, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon, decay, block):
    for k in numba.prange((p.shape[0] + block - 1) // block):
        s = slice(k * block, (k + 1) * block)
        _adam_elements(
            p[s], g[s], m[s], v[s], alpha, one_minus_beta_1, one_minus_beta_2, epsilon, decay
        )


@kernel
def _rmsprop_blocks(
    p, g, v, a, mom, lr, rho, one_minus_rho, momentum, epsilon, centered, use_momentum, decay,
    block,
):  # fmt: skip
    for k in numba.prange((p.shape[0] + block - 1) // block):
        s = slice(k * block, (k + 1) * block)
        _rmsprop_elements(
            p[s], g[s], v[s], a[s], mom[s], lr, rho, one_minus_rho, momentum, epsilon, centered,
            use_momentum, decay,
        )  # fmt: skip


# ------------------------------------------------------------------------ public wrappers


def _flat(name: str, a: np.ndarray | None, size: int) -> np.ndarray:
    """``a`` as a (size,) view that writes through to it; ``_NO_SLOT`` for None."""
    if a is None:
        return _NO_SLOT
    if a.dtype != np.float32 or not a.flags.c_contiguous or a.size != size:
        raise ValueError(
            f"{name} must be a C-contiguous float32 array of {size} elements, got "
            f"{a.dtype} {a.shape}"
        )
    return a.reshape(-1)


def _run(size: int, serial, blocks, *args) -> None:
    """The serial loop over all elements, or the parallel one over blocks (``SERIAL_BELOW``)."""
    if size < SERIAL_BELOW:
        serial(*args)
    else:
        blocks(*args, BLOCK)


def sgd_update(p, g, m, lr: float, momentum: float, nesterov: bool, decay) -> None:
    """One SGD step in place (nbcnn.optim.SGD's rule).

    p : float32 array, any shape, C-contiguous, updated; g : its gradient, same shape;
    m : momentum slot like p, updated, or None without momentum; decay : float32 weight decay
    times the learning rate (0: none).
    """
    n = p.size
    args = (_flat("p", p, n), _flat("g", g, n), _flat("momentum", m, n))
    scalars = (np.float32(lr), np.float32(momentum), bool(nesterov), m is not None)
    _run(n, _sgd_elements, _sgd_blocks, *args, *scalars, np.float32(decay))


def adam_update(p, g, m, v, alpha: float, beta_1: float, beta_2: float, epsilon: float, decay):
    """One Adam step in place (nbcnn.optim.Adam's rule); alpha is the bias-corrected step size
    ``lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``.

    p : float32 array, any shape, C-contiguous, updated; g : its gradient, same shape;
    m, v : the first and second moment slots like p, updated; decay : float32 weight decay
    times the learning rate (0: none).
    """
    n = p.size
    args = (_flat("p", p, n), _flat("g", g, n), _flat("m", m, n), _flat("v", v, n))
    # 1 - beta in Python floats, then rounded to float32, as NumPy rounds them in Adam._update.
    scalars = (alpha, 1 - beta_1, 1 - beta_2, epsilon)
    _run(n, _adam_elements, _adam_blocks, *args, *map(np.float32, scalars), np.float32(decay))


def rmsprop_update(
    p, g, v, a, mom, lr: float, rho: float, momentum: float, epsilon: float, decay
) -> None:
    """One RMSprop step in place (nbcnn.optim.RMSprop's rule).

    p : float32 array, any shape, C-contiguous, updated; g : its gradient, same shape;
    v : velocity slot like p, updated; a : average gradient slot (centered) or None;
    mom : momentum slot or None; decay : float32 weight decay times the learning rate (0: none).
    """
    n = p.size
    args = (_flat("p", p, n), _flat("g", g, n), _flat("velocity", v, n))
    args += (_flat("average_gradient", a, n), _flat("momentum", mom, n))
    scalars = tuple(map(np.float32, (lr, rho, 1 - rho, momentum, epsilon)))
    flags = (a is not None, mom is not None)
    _run(n, _rmsprop_elements, _rmsprop_blocks, *args, *scalars, *flags, np.float32(decay))
