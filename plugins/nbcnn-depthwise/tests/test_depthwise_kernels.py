"""The depthwise kernels against their namesakes in depthwise_naive.py, finite differences and
a worked example.

Geometries are valid by construction (draw kernel, stride, dilation, padding mode and output
size, then derive the input size), never by filtering; values are bounded floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import depthwise_naive as naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nbcnn_depthwise import kernels

# float32 kernels against float64 references: the sums have at most a few hundred terms of
# size <= 4, so 1e-4 relative (and relative to the largest value, for entries that cancel) is
# ~100x the float32 rounding error and far below any indexing bug.
RTOL = 1e-4

HYPOTHESIS = settings(max_examples=60, deadline=None)


@dataclass(frozen=True)
class Geometry:
    """Per-axis (H, W) pairs and padding ((top, bottom), (left, right))."""

    in_hw: tuple[int, int]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    out_hw: tuple[int, int]


def same_split(length: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """Keras's 'same' padding (before, after): out = ceil(n/s), the smaller half first."""
    out = math.ceil(length / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - length, 0)
    return total // 2, total - total // 2


@st.composite
def axis(draw, max_in: int = 9):
    """(in, kernel, stride, dilation, (before, after), out) for one axis, valid by construction."""
    kernel = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
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
def geometries(draw):
    fields = zip(draw(axis()), draw(axis()), strict=True)
    return Geometry(*(tuple(f) for f in fields))


def values(shape):
    """Float32 arrays in [-2, 2]: hypothesis's own or seeded uniform ones."""
    seeded = st.integers(0, 2**32 - 1).map(
        lambda seed: np.random.default_rng(seed).uniform(-2, 2, shape).astype(np.float32)
    )
    return st.one_of(arrays(np.float32, shape, elements=st.floats(-2, 2, width=32)), seeded)


def assert_close(got, want, what: str) -> None:
    """float32 ``got`` against float64 ``want`` with the tolerance from ``RTOL``."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def check_against_naive(g: Geometry, x, w, b, dy) -> dict:
    """Forward and every gradient of the kernels equal the naive ones (shapes, dtypes too)."""
    args = (g.strides, g.dilation, g.padding)
    y = kernels.depthwise_conv2d_forward(x, w, b, *args)
    assert y.shape == dy.shape and y.dtype == np.float32
    assert_close(y, naive.depthwise_conv2d_forward(x, w, b, *args), "forward y")
    grads = kernels.depthwise_conv2d_backward(dy, x, w, *args)
    for name, got, want, like in zip(
        ("x", "w", "b"), grads, naive.depthwise_conv2d_backward(dy, x, w, *args), (x, w, b)
    ):
        assert got.shape == like.shape and got.dtype == np.float32, name
        assert_close(got, want, f"gradient of {name}")
    return {"y": y, "grads": grads}


@st.composite
def cases(draw):
    """(geometry, x, w, b, dy): batch 1-3, channels 1-4, depth multiplier 1-3."""
    g = draw(geometries())
    n, c, m = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    x = draw(values((n, *g.in_hw, c)))
    w = draw(values((*g.kernel, c, m)))
    b = draw(values((c * m,)))
    dy = draw(values((n, *g.out_hw, c * m)))
    return g, x, w, b, dy


@HYPOTHESIS
@given(case=cases())
def test_depthwise_matches_naive(case):
    check_against_naive(*case)


@pytest.mark.parametrize("channels", [16, 19, 64])  # whole vectors and a remainder
@pytest.mark.parametrize("mult", [1, 2])
@pytest.mark.parametrize(
    "g",
    [
        Geometry((9, 8), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (9, 8)),  # 'same'
        Geometry((9, 9), (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1)), (5, 5)),  # strided
        Geometry((9, 8), (3, 3), (1, 1), (2, 2), ((2, 2), (2, 2)), (9, 8)),  # dilated
        Geometry((7, 9), (2, 3), (1, 2), (1, 1), ((0, 1), (1, 1)), (7, 5)),  # not 3x3
    ],
    ids=["same", "strided", "dilated", "2x3"],
)
def test_wide_channels_match_naive(g, mult, channels):
    """Channel counts that fill vectors (the kernels' vector loops and the 3x3 interior
    columns summed in registers; the Hypothesis cases above have at most 4 channels)."""
    rng = np.random.default_rng(channels * 10 + mult)
    x = rng.uniform(-2, 2, (2, *g.in_hw, channels)).astype(np.float32)
    w = rng.uniform(-2, 2, (*g.kernel, channels, mult)).astype(np.float32)
    b = rng.uniform(-2, 2, channels * mult).astype(np.float32)
    dy = rng.uniform(-2, 2, (2, *g.out_hw, channels * mult)).astype(np.float32)
    check_against_naive(g, x, w, b, dy)


FD_GEOMETRIES = [
    Geometry((5, 5), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (5, 5)),  # 'same', overlapping
    Geometry((6, 5), (2, 3), (2, 2), (1, 1), ((0, 0), (0, 0)), (3, 2)),  # rectangular, strided
    Geometry((6, 6), (2, 2), (1, 1), (2, 2), ((1, 0), (1, 0)), (5, 5)),  # dilated, 'same'
]


@pytest.mark.parametrize("g", FD_GEOMETRIES, ids=lambda g: f"{g.in_hw}-{g.kernel}-{g.strides}")
def test_gradients_match_finite_differences(g):
    """Kernel gradients equal central differences of L = sum(y * dy) on the float64 naive
    forward (checks the naive backward's definition as well as the kernel)."""
    rng = np.random.default_rng(0)
    n, c, m = 2, 2, 2
    inputs = {
        "x": rng.uniform(-1, 1, (n, *g.in_hw, c)),
        "w": rng.uniform(-1, 1, (*g.kernel, c, m)),
        "b": rng.uniform(-1, 1, (c * m,)),
    }
    inputs32 = {k: v.astype(np.float32) for k, v in inputs.items()}
    dy = rng.uniform(-1, 1, (n, *g.out_hw, c * m)).astype(np.float32)
    args = (g.strides, g.dilation, g.padding)
    grads = dict(
        zip("xwb", kernels.depthwise_conv2d_backward(dy, inputs32["x"], inputs32["w"], *args))
    )
    step = 1e-6
    for name, grad in grads.items():
        numeric = np.zeros(grad.shape)
        for index in np.ndindex(*grad.shape):
            loss = []
            for sign in (1, -1):
                moved = {k: v.astype(np.float32).astype(np.float64) for k, v in inputs.items()}
                moved[name][index] += sign * step
                y = naive.depthwise_conv2d_forward(moved["x"], moved["w"], moved["b"], *args)
                loss.append(float(np.sum(y * dy)))
            numeric[index] = (loss[0] - loss[1]) / (2 * step)
        assert_close(grad, numeric, f"gradient of {name} vs finite differences")


def test_backward_is_race_free_with_overlapping_windows():
    """Stride 1 under a 3x3 window, batch 8: each input cell is in up to nine windows, and
    every sample adds into dw. Lost updates would show as run-to-run differences."""
    g = Geometry((8, 8), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (8, 8))
    rng = np.random.default_rng(1)
    n, c, m = 8, 3, 2
    x = rng.uniform(-2, 2, (n, 8, 8, c)).astype(np.float32)
    w = rng.uniform(-2, 2, (3, 3, c, m)).astype(np.float32)
    b = rng.uniform(-2, 2, (c * m,)).astype(np.float32)
    dy = rng.uniform(-2, 2, (n, 8, 8, c * m)).astype(np.float32)
    first = check_against_naive(g, x, w, b, dy)
    for _ in range(5):
        again = kernels.depthwise_conv2d_backward(dy, x, w, g.strides, g.dilation, g.padding)
        for name, got, want in zip("xwb", again, first["grads"]):
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_backward_without_dx():
    rng = np.random.default_rng(2)
    g = FD_GEOMETRIES[0]
    x = rng.uniform(-2, 2, (2, *g.in_hw, 3)).astype(np.float32)
    w = rng.uniform(-2, 2, (*g.kernel, 3, 2)).astype(np.float32)
    dy = rng.uniform(-2, 2, (2, *g.out_hw, 6)).astype(np.float32)
    args = (g.strides, g.dilation, g.padding)
    dx, dw, db = kernels.depthwise_conv2d_backward(dy, x, w, *args, need_dx=False)
    _, ref_dw, ref_db = naive.depthwise_conv2d_backward(dy, x, w, *args)
    assert dx is None
    assert_close(dw, ref_dw, "dw")
    assert_close(db, ref_db, "db")


def test_worked_example_channel_order():
    """Two channels, depth multiplier 2, a 2x2 input and 1x1 kernels: output channel c*2 + m
    is channel c times w[0, 0, c, m], so the order is (c0*w00, c0*w01, c1*w10, c1*w11)."""
    x = np.array([[[[1, 10], [2, 20]], [[3, 30], [4, 40]]]], np.float32)  # (1, 2, 2, 2)
    w = np.array([[[[1, 2], [3, 4]]]], np.float32)  # (1, 1, C=2, M=2)
    y = kernels.depthwise_conv2d_forward(x, w, None, (1, 1), (1, 1), ((0, 0), (0, 0)))
    np.testing.assert_array_equal(y[0, 0, 0], [1, 2, 30, 40])
    np.testing.assert_array_equal(y[0, 1, 1], [4, 8, 120, 160])


def test_worked_example_3x3_box():
    """A 3x3 box of ones over a 3x3 ramp with 'same' padding: each output is the sum of its
    neighbourhood (the centre sees all nine values, 0 + 1 + ... + 8 = 36)."""
    x = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
    w = np.ones((3, 3, 1, 1), np.float32)
    y = kernels.depthwise_conv2d_forward(x, w, None, (1, 1), (1, 1), ((1, 1), (1, 1)))
    np.testing.assert_array_equal(y[0, :, :, 0], [[8, 15, 12], [21, 36, 27], [20, 33, 24]])


@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, error, match",
    [
        ((1, 4, 4, 2), (3, 3, 3, 1), None, ValueError, "input channels"),
        ((1, 2, 2, 1), (3, 3, 1, 1), None, ValueError, "does not fit"),
        ((1, 4, 4, 2), (3, 3, 2, 2), (3,), ValueError, r"b must have shape \(4,\)"),
        ((4, 4, 2), (3, 3, 2, 1), None, ValueError, "4 dimensions"),
    ],
)
def test_wrappers_check_their_arguments(x_shape, w_shape, b_shape, error, match):
    b = None if b_shape is None else np.zeros(b_shape, np.float32)
    with pytest.raises(error, match=match):
        kernels.depthwise_conv2d_forward(
            np.zeros(x_shape, np.float32),
            np.zeros(w_shape, np.float32),
            b,
            (1, 1),
            (1, 1),
            ((0, 0), (0, 0)),
        )


def test_integer_input_is_refused():
    with pytest.raises(TypeError, match="floating-point"):
        kernels.depthwise_conv2d_forward(
            np.zeros((1, 3, 3, 1), np.int32),
            np.zeros((1, 1, 1, 1), np.float32),
            None,
            (1, 1),
            (1, 1),
            ((0, 0), (0, 0)),
        )


@pytest.mark.slow
@settings(max_examples=600, deadline=None)
@given(case=cases())
def test_depthwise_matches_naive_long(case):
    """The long profile of test_depthwise_matches_naive, for the slow job."""
    check_against_naive(*case)
