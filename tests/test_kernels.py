"""The numba kernels against their namesakes in tests/naive.py, finite differences and examples.

``OPS`` is the one table: a row names a kernel module and how to call an op's forward and
backward; the same calls run on ``naive`` because it uses the same function names. A new kernel
is one row (plus its two-line call adapters). ``check_against_naive`` checks shapes, dtypes,
forward and backward together with tolerances from ``RTOL``.

Geometries are valid by construction (draw kernel, stride, dilation, padding mode and output
size, then derive the input size), never by filtering.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nbcnn.kernels import conv, pool

# float32 kernels against float64 references: sums here have at most a few hundred terms of
# size <= 4, so a relative 1e-4 (and the same relative to the largest value, for entries that
# cancel to near zero) is ~100x the float32 rounding error and far below any indexing bug.
RTOL = 1e-4

HYPOTHESIS = settings(max_examples=40, deadline=None)

# ------------------------------------------------------------------------------- geometry


def same_split(length: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Keras's 'same' padding (before, after): out = ceil(n/s), the smaller half first."""
    out = math.ceil(length / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - length, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class Geometry:
    """One sliding-window layout: per-axis (H, W) pairs, padding ((top, bottom), (l, r))."""

    in_hw: tuple[int, int]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    out_hw: tuple[int, int]


@st.composite
def axis(draw, *, dilated: bool, max_in: int = 9):
    """(in, kernel, stride, dilation, (before, after), out) for one axis, valid by construction."""
    kernel = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2)) if dilated else 1
    extent = (kernel - 1) * dilation + 1
    if draw(st.sampled_from(["valid", "same"])) == "valid":
        out = draw(st.integers(1, (max_in - extent) // stride + 1))
        fitted = (out - 1) * stride + extent
        # up to stride - 1 extra cells still give the same floor((n - extent) / s) + 1
        length = draw(st.integers(fitted, min(fitted + stride - 1, max_in)))
        pads = (0, 0)
    else:
        out = draw(st.integers(1, math.ceil(max_in / stride)))
        length = draw(st.integers((out - 1) * stride + 1, min(out * stride, max_in)))
        pads = same_split(length, kernel, stride, dilation)
    return length, kernel, stride, dilation, pads, out


@st.composite
def geometries(draw, *, dilated: bool):
    """A 2-D geometry, or a 1-D one (H = 1, kernel height 1) as Conv1D/pooling-1D use."""
    width_axis = draw(axis(dilated=dilated))
    height_axis = (1, 1, 1, 1, (0, 0), 1) if draw(st.booleans()) else draw(axis(dilated=dilated))
    fields = zip(height_axis, width_axis, strict=True)
    return Geometry(*(tuple(f) for f in fields))


def values(shape):
    """Float32 arrays in [-2, 2]: hypothesis's own (many repeats, so max-pool ties) or seeded."""
    seeded = st.integers(0, 2**32 - 1).map(
        lambda seed: np.random.default_rng(seed).uniform(-2, 2, shape).astype(np.float32)
    )
    return st.one_of(arrays(np.float32, shape, elements=st.floats(-2, 2, width=32)), seeded)


# ----------------------------------------------------------------------------- the table


def _conv_forward(m, g, x, w, b):
    return m.conv2d_forward(x, w, b, g.strides, g.dilation, g.padding), None


def _conv_backward(m, g, saved, dy, x, w, b):
    dx, dw, db = m.conv2d_backward(dy, x, w, g.strides, g.dilation, g.padding)
    return {"x": dx, "w": dw, "b": db}


def _max_pool_forward(m, g, x):
    return m.max_pool2d_forward(x, g.kernel, g.strides, g.padding)


def _max_pool_backward(m, g, argmax, dy, x):
    return {"x": m.max_pool2d_backward(dy, argmax, x.shape)}


def _avg_pool_forward(m, g, x):
    return m.avg_pool2d_forward(x, g.kernel, g.strides, g.padding), None


def _avg_pool_backward(m, g, saved, dy, x):
    return {"x": m.avg_pool2d_backward(dy, x.shape, g.kernel, g.strides, g.padding)}


@dataclass(frozen=True)
class Op:
    """A kernel module and adapters that call its op the same way on it and on ``naive``.

    forward(module, geometry, **inputs) -> (y, saved); backward(module, geometry, saved, dy,
    **inputs) -> {input name: gradient}. ``weights`` says whether the op has w (KH, KW, C, F)
    and b (F,); weightless ops keep C channels and take no dilation.
    """

    module: ModuleType
    forward: Callable
    backward: Callable
    weights: bool


OPS = {
    "conv2d": Op(conv, _conv_forward, _conv_backward, weights=True),
    "max_pool2d": Op(pool, _max_pool_forward, _max_pool_backward, weights=False),
    "avg_pool2d": Op(pool, _avg_pool_forward, _avg_pool_backward, weights=False),
}


def input_shapes(op: Op, g: Geometry, n: int, c: int, f: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the op's inputs by name."""
    shapes = {"x": (n, *g.in_hw, c)}
    if op.weights:
        shapes.update(w=(*g.kernel, c, f), b=(f,))
    return shapes


def output_shape(op: Op, g: Geometry, n: int, c: int, f: int) -> tuple[int, ...]:
    return (n, *g.out_hw, f if op.weights else c)


def assert_close(got, want, what: str) -> None:
    """float32 ``got`` against float64 ``want`` with the tolerance from ``RTOL``."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def check_against_naive(op: Op, g: Geometry, inputs: dict, dy: np.ndarray) -> dict:
    """Forward output, saved state and every gradient of the kernel equal the naive ones.

    Shapes and dtypes are checked too: y has ``dy``'s shape (derived from the geometry alone),
    each gradient has its input's shape, and the kernel returns float32. Returns the kernel's
    results ({"y", "saved", "grads"}) for further checks.
    """
    y, saved = op.forward(op.module, g, **inputs)
    ref_y, ref_saved = op.forward(naive, g, **inputs)
    assert y.shape == dy.shape and y.dtype == np.float32
    assert_close(y, ref_y, "forward y")
    if ref_saved is not None:  # max pooling's argmax: an exact index, ties included
        np.testing.assert_array_equal(saved, ref_saved, err_msg="argmax")

    grads = op.backward(op.module, g, saved, dy, **inputs)
    ref_grads = op.backward(naive, g, ref_saved, dy, **inputs)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert grad.shape == inputs[name].shape and grad.dtype == np.float32, name
        assert_close(grad, ref_grads[name], f"gradient of {name}")
    return {"y": y, "saved": saved, "grads": grads}


# ------------------------------------------------------------------------------ property


@st.composite
def cases(draw, op: Op):
    """(geometry, inputs, dy) for op: batch 1-3, channels and filters 1-4, values in [-2, 2]."""
    g = draw(geometries(dilated=op.weights))
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    inputs = {name: draw(values(s)) for name, s in input_shapes(op, g, n, c, f).items()}
    dy = draw(values(output_shape(op, g, n, c, f)))
    return g, inputs, dy


@pytest.mark.parametrize("name", OPS)
@HYPOTHESIS
@given(data=st.data())
def test_kernel_matches_naive(name, data):
    op = OPS[name]
    g, inputs, dy = data.draw(cases(op))
    check_against_naive(op, g, inputs, dy)


# ---------------------------------------------------------------------- finite differences

FD_GEOMETRIES = [
    # in_hw, kernel, strides, dilation, padding, out_hw
    Geometry((5, 5), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (5, 5)),  # 'same', overlapping
    Geometry((6, 5), (2, 3), (2, 2), (1, 1), ((0, 0), (0, 0)), (3, 2)),  # rectangular, strided
    Geometry((1, 7), (1, 3), (1, 2), (1, 1), ((0, 0), (1, 1)), (1, 4)),  # 1-D, 'same'
]
FD_DILATED = Geometry((6, 6), (2, 2), (1, 1), (2, 2), ((1, 0), (1, 0)), (5, 5))


def fd_cases():
    for name, op in OPS.items():
        for g in FD_GEOMETRIES + ([FD_DILATED] if op.weights else []):
            yield pytest.param(op, g, id=f"{name}-{g.in_hw}-{g.kernel}-{g.strides}")


@pytest.mark.parametrize("op, g", list(fd_cases()))
def test_gradients_match_finite_differences(op, g):
    """Kernel gradients equal central differences of L = sum(y * dy) on the float64 naive."""
    rng = np.random.default_rng(0)
    n, c, f = 2, 2, 3
    inputs = {
        # distinct values 0.05 apart: no max-pool tie can flip within the step below
        name: (rng.permutation(math.prod(s)).reshape(s) * 0.05 - 1.0).astype(np.float32)
        for name, s in input_shapes(op, g, n, c, f).items()
    }
    dy = rng.uniform(-1, 1, output_shape(op, g, n, c, f)).astype(np.float32)
    y, saved = op.forward(op.module, g, **inputs)
    assert y.shape == dy.shape
    grads = op.backward(op.module, g, saved, dy, **inputs)

    step = 1e-4
    for name, grad in grads.items():
        numeric = np.zeros(grad.shape)
        for index in np.ndindex(*grad.shape):
            loss = []
            for sign in (1, -1):
                moved = {k: v.astype(np.float64) for k, v in inputs.items()}
                moved[name][index] += sign * step
                loss.append(float(np.sum(op.forward(naive, g, **moved)[0] * dy)))
            numeric[index] = (loss[0] - loss[1]) / (2 * step)
        assert_close(grad, numeric, f"gradient of {name} vs finite differences")


# ------------------------------------------------------------------------- race freedom


@pytest.mark.parametrize("name", OPS)
def test_backward_is_race_free_with_overlapping_windows(name):
    """Stride 1 under a 3x3 window, batch 8: every input cell is in up to nine windows.

    Lost updates from a racy prange would show up as run-to-run differences or as a mismatch
    with the naive sums.
    """
    op = OPS[name]
    g = Geometry((8, 8), (3, 3), (1, 1), (1, 1), ((0, 0), (0, 0)), (6, 6))
    rng = np.random.default_rng(1)
    n, c, f = 8, 3, 4
    inputs = {
        k: rng.uniform(-2, 2, s).astype(np.float32) for k, s in input_shapes(op, g, n, c, f).items()
    }
    dy = rng.uniform(-2, 2, output_shape(op, g, n, c, f)).astype(np.float32)
    first = check_against_naive(op, g, inputs, dy)
    for _ in range(5):
        again = op.backward(op.module, g, first["saved"], dy, **inputs)
        for k, grad in again.items():
            np.testing.assert_array_equal(grad, first["grads"][k], err_msg=k)


# ----------------------------------------------------------------------- worked examples

# The seed's convolution example. A 4x4 binary image and the 3x3 "X" filter (ones on the
# corners and the centre), 'valid' padding: each output counts the image's ones under the X.
CONV_IMAGE = [[1, 0, 1, 0], [1, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
X_FILTER = [[1, 0, 1], [0, 1, 0], [1, 0, 1]]

# The seed's pooling example; 2x2 windows, stride 2. Window contents and results:
# top-left {2, 1, 0, 0} -> max 2, mean 0.75; top-right {1, 1, 0, 0} -> 1, 0.5;
# bottom-left {3, 0, 0, 0} -> 3, 0.75; bottom-right {1, 0, 0, 0} -> 1, 0.25.
POOL_IMAGE = [[2, 1, 1, 1], [0, 0, 0, 0], [3, 0, 1, 0], [0, 0, 0, 0]]
VALID = ((0, 0), (0, 0))


def _image(rows) -> np.ndarray:
    """(1, H, W, 1) float32 from a list of rows."""
    return np.asarray(rows, dtype=np.float32)[None, :, :, None]


def test_worked_example_convolution():
    w = np.asarray(X_FILTER, dtype=np.float32)[:, :, None, None]
    y = conv.conv2d_forward(_image(CONV_IMAGE), w, None, (1, 1), (1, 1), VALID)
    np.testing.assert_array_equal(y[0, :, :, 0], [[3, 2], [3, 1]])


def test_worked_example_max_pooling():
    y, argmax = pool.max_pool2d_forward(_image(POOL_IMAGE), (2, 2), (2, 2), VALID)
    np.testing.assert_array_equal(y[0, :, :, 0], [[2, 1], [3, 1]])
    # top-right window {1, 1, 0, 0} is a tie: the first 1 in row-major order, (0, 2), wins
    np.testing.assert_array_equal(argmax[0, :, :, 0], [[0, 2], [8, 10]])


def test_worked_example_average_pooling():
    # The article's figure shows twice these values: a known slip (STYLE.md, "Tests").
    y = pool.avg_pool2d_forward(_image(POOL_IMAGE), (2, 2), (2, 2), VALID)
    np.testing.assert_array_equal(y[0, :, :, 0], [[0.75, 0.5], [0.75, 0.25]])


def test_edge_filter_responds_only_at_the_edges_of_a_flat_square():
    """The guide's edge filter (8 in the middle, -1 around) sums to zero, so a window of one
    flat value gives exactly 0; only windows straddling the dark square's border respond."""
    image = np.ones((12, 12), dtype=np.float32)
    image[3:9, 3:9] = 0.0
    w = np.full((3, 3), -1.0, dtype=np.float32)
    w[1, 1] = 8.0
    y = conv.conv2d_forward(
        image[None, :, :, None], w[:, :, None, None], None, (1, 1), (1, 1), VALID
    )
    response = y[0, :, :, 0]
    windows = np.lib.stride_tricks.sliding_window_view(image, (3, 3))
    straddles = windows.min(axis=(2, 3)) != windows.max(axis=(2, 3))
    assert response.shape == (10, 10)
    np.testing.assert_array_equal(response != 0, straddles)
    assert response[0, 0] == 0 and response[5, 5] == 0  # flat background, flat interior


# -------------------------------------------------------------------------- odds and ends


def test_conv_backward_without_dx():
    rng = np.random.default_rng(2)
    x = rng.uniform(-2, 2, (2, 5, 5, 3)).astype(np.float32)
    w = rng.uniform(-2, 2, (3, 3, 3, 4)).astype(np.float32)
    dy = rng.uniform(-2, 2, (2, 3, 3, 4)).astype(np.float32)
    dx, dw, db = conv.conv2d_backward(dy, x, w, (1, 1), (1, 1), VALID, need_dx=False)
    _, ref_dw, ref_db = naive.conv2d_backward(dy, x, w, (1, 1), (1, 1), VALID)
    assert dx is None
    assert_close(dw, ref_dw, "dw")
    assert_close(db, ref_db, "db")


def test_wrappers_accept_any_float_layout():
    """Strided or float64 arrays give the same result as their contiguous float32 copies."""
    rng = np.random.default_rng(3)
    x = np.asfortranarray(rng.uniform(-2, 2, (2, 5, 12, 3)))[:, :, ::2, :]  # strided float64
    w = rng.uniform(-2, 2, (2, 2, 3, 4)).astype(np.float32)
    got = conv.conv2d_forward(x, w, None, (1, 1), (1, 1), VALID)
    want = conv.conv2d_forward(np.ascontiguousarray(x, np.float32), w, None, (1, 1), (1, 1), VALID)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    y, _ = pool.max_pool2d_forward(x, (2, 2), (1, 1), VALID)
    assert_close(y, naive.max_pool2d_forward(x.astype(np.float32), (2, 2), (1, 1), VALID)[0], "y")


@pytest.mark.parametrize(
    "call, error",
    [
        (
            lambda: conv.conv2d_forward(
                np.zeros((1, 4, 4, 2), np.float32),
                np.zeros((3, 3, 3, 1), np.float32),
                None,
                (1, 1),
                (1, 1),
                VALID,
            ),
            ValueError,
        ),
        (
            lambda: conv.conv2d_forward(
                np.zeros((1, 4, 4, 1), np.int32),
                np.zeros((3, 3, 1, 1), np.float32),
                None,
                (1, 1),
                (1, 1),
                VALID,
            ),
            TypeError,
        ),
        (
            lambda: conv.conv2d_forward(
                np.zeros((1, 2, 2, 1), np.float32),
                np.zeros((3, 3, 1, 1), np.float32),
                None,
                (1, 1),
                (1, 1),
                VALID,
            ),
            ValueError,
        ),
        (
            lambda: pool.max_pool2d_forward(
                np.zeros((1, 4, 4, 1), np.float32), (2, 2), (2, 2), ((2, 0), (0, 0))
            ),
            ValueError,
        ),
        (
            lambda: pool.avg_pool2d_forward(
                np.zeros((1, 4, 4, 1), np.float32), (2, 2), (0, 2), VALID
            ),
            ValueError,
        ),
    ],
    ids=[
        "channel-mismatch",
        "integer-input",
        "window-too-big",
        "all-padding-window",
        "zero-stride",
    ],
)
def test_wrappers_reject_bad_arguments(call, error):
    with pytest.raises(error):
        call()


def _omp_loads() -> bool:
    try:
        from numba.np.ufunc import omppool  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize(
    ("backend", "expected"),
    [("engine", "omp" if _omp_loads() else "workqueue"), ("blas", "workqueue")],
)
def test_threading_layer_follows_the_backend(backend, expected):
    """The engine runs on OpenMP (workqueue's static chunks left one core idle in many calls),
    the im2col + BLAS path on workqueue (OpenMP's spinning workers fought OpenBLAS's): see
    _jit.py. In a subprocess: the layer is fixed for a process once a kernel has run."""
    import json
    import subprocess
    import sys

    # nbcnn sets GOMP_SPINCOUNT in this process when it loads: the child starts without it
    drop = ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY", "GOMP_SPINCOUNT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["NBCNN_CONV"] = backend
    code = (
        "import json, numpy as np; from nbcnn.kernels import _jit, conv; "
        "conv.conv2d_forward(np.ones((2, 3, 3, 2), np.float32), np.ones((1, 1, 2, 1), "
        "np.float32), None, (1, 1), (1, 1), ((0, 0), (0, 0))); "
        "print(json.dumps(_jit.threading_info()))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["layer"] == expected
    assert info["num_threads"] >= 1
    if backend == "engine" and "OMP_WAIT_POLICY" not in env:
        assert info["gomp_spincount"] == "20000"  # OpenMP's idle workers leave BLAS the cores


@pytest.mark.parametrize(
    ("imports", "expected"), [("import nbcnn, numpy", "1"), ("import numpy, nbcnn", "None")]
)
def test_threading_info_says_whether_openblas_saw_the_thread_timeout(imports, expected):
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when numpy loads: nbcnn sets it on import, too
    late when numpy came first, and threading_info reports which happened."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    code = f"{imports}; from nbcnn.kernels import _jit; "
    code += "print(_jit.threading_info()['openblas_thread_timeout'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == expected, out.stderr


@settings(max_examples=25, deadline=None)
@given(
    channels=st.sampled_from([1, 3]),
    stride=st.integers(1, 2),
    same=st.booleans(),
    seed=st.integers(0, 2**16),
)
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_fused_activation_forward_and_backward(channels, stride, same, seed, activation):
    """activation='relu' (or relu=True) equals max(conv, 0), 'relu6' clip(conv, 0, 6);
    relu_output masks dy like the activation's derivative."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 7, 6, channels)).astype(np.float32)
    w = rng.normal(size=(3, 3, channels, 4)).astype(np.float32) * 2  # some outputs past 6
    b = rng.normal(size=4).astype(np.float32)
    pads = ((1, 1), (1, 1)) if same else ((0, 0), (0, 0))
    args = ((stride, stride), (1, 1), pads)
    y = conv.conv2d_forward(x, w, b, *args, activation=activation)
    linear = naive.conv2d_forward(x, w, b, *args)
    expected = np.clip(linear, 0, 6 if activation == "relu6" else None)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    if activation == "relu":
        np.testing.assert_array_equal(conv.conv2d_forward(x, w, b, *args, relu=True), y)
    dy = rng.normal(size=y.shape).astype(np.float32)
    dx, dw, db = conv.conv2d_backward(dy, x, w, *args, relu_output=y, activation=activation)
    mask = (y > 0) & (y < 6) if activation == "relu6" else y > 0
    ndx, ndw, ndb = naive.conv2d_backward(dy * mask, x, w, *args)
    for got, want in ((dx, ndx), (dw, ndw), (db, ndb)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_chunked_im2col_equals_one_block(monkeypatch):
    """Batches whose columns exceed CHUNK_BYTES run in chunks of samples: same results."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 6, 6, 3)).astype(np.float32)
    w = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    args = ((1, 1), (1, 1), ((1, 1), (1, 1)))
    dy = rng.normal(size=(5, 6, 6, 4)).astype(np.float32)
    whole = conv.conv2d_forward(x, w, b, *args), conv.conv2d_backward(dy, x, w, *args)
    monkeypatch.setattr(conv, "CHUNK_BYTES", 2 * 36 * 27 * 4)  # two samples per chunk
    assert len(conv._chunks(5, 36 * 27 * 4)) == 3
    chunked = conv.conv2d_forward(x, w, b, *args), conv.conv2d_backward(dy, x, w, *args)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-6, atol=1e-6)
    for got, want in zip(chunked[1], whole[1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    ndx, ndw, _ = naive.conv2d_backward(dy, x, w, *args)
    np.testing.assert_allclose(chunked[1][0], ndx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(chunked[1][1], ndw, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 2])
def test_backward_reuses_the_forward_columns(monkeypatch, channels):
    """A training forward hands its im2col columns to the backward: the same gradients as
    columns rebuilt; none are handed over when the batch ran in chunks. With one channel the
    columns are built transposed, (KH*KW, N*OH*OW). (The im2col + BLAS backend only: the
    engine builds no columns.)"""
    monkeypatch.setenv("NBCNN_CONV", "blas")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 5, 6, channels)).astype(np.float32)
    w = rng.normal(size=(3, 2, channels, 4)).astype(np.float32)
    dy = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    args = ((2, 2), (1, 1), ((1, 1), (0, 1)))
    y, cols = conv.conv2d_forward(x, w, None, *args, return_cols=True)
    np.testing.assert_array_equal(y, conv.conv2d_forward(x, w, None, *args))
    rows, k = 3 * 3 * 3, 3 * 2 * channels
    assert cols.shape == ((k, rows) if channels == 1 else (rows, k))
    rebuilt = conv.conv2d_backward(dy, x, w, *args)
    for need_dx in (True, False):
        reused = conv.conv2d_backward(dy, x, w, *args, need_dx=need_dx, cols=cols.copy())
        for got, want in zip(reused, rebuilt, strict=True):
            if need_dx or got is not None:
                np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="cols"):
        conv.conv2d_backward(dy, x, w, *args, cols=cols[1:])
    monkeypatch.setattr(conv, "CHUNK_BYTES", 9 * 6 * channels * 4)  # one sample per chunk
    assert conv.conv2d_forward(x, w, None, *args, return_cols=True)[1] is None


def test_conv_layer_backward_twice_gives_the_same_gradients():
    """The kept columns are spent by the first backward; a second one rebuilds them."""
    from nbcnn.layers.conv import Conv2D

    layer = Conv2D(filters=3, kernel_size=3, padding="same", activation="relu")
    layer.build((6, 6, 2), np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 2)).astype(np.float32)
    dy = np.random.default_rng(2).normal(size=(2, 6, 6, 3)).astype(np.float32)
    layer.forward(x, training=True)
    first = layer.backward(dy), dict(layer.grads)
    second = layer.backward(dy), dict(layer.grads)
    np.testing.assert_array_equal(first[0], second[0])
    for name in first[1]:
        np.testing.assert_array_equal(first[1][name], second[1][name])


@settings(max_examples=30, deadline=None)
@given(
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    same=st.booleans(),
    relu=st.booleans(),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_first_layer_weight_gradient(kernel, stride, dilation, same, relu, batch, seed):
    """One input channel (columns built transposed), no dx wanted (a first layer), the
    forward's columns reused: dw and db equal naive."""
    if stride > 1 and dilation > 1:
        dilation = 1  # Keras refuses the combination; the kernels need not support it
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, 7, 8, 1)).astype(np.float32)
    w = rng.normal(size=(*kernel, 1, 3)).astype(np.float32)
    pads = tuple(
        same_split(n, k, stride, dilation) if same else (0, 0) for n, k in zip((7, 8), kernel)
    )
    args = ((stride, stride), (dilation, dilation), pads)
    y, cols = conv.conv2d_forward(x, w, None, *args, relu=relu, return_cols=True)
    dy = rng.normal(size=y.shape).astype(np.float32)
    dx, dw, db = conv.conv2d_backward(
        dy, x, w, *args, need_dx=False, relu_output=y if relu else None, cols=cols
    )
    assert dx is None
    _, ndw, ndb = naive.conv2d_backward(dy * (y > 0) if relu else dy, x, w, *args)
    np.testing.assert_allclose(dw, ndw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, ndb, rtol=1e-4, atol=1e-4)
