"""Winograd F(2x2, 3x3) (nbcnn/kernels/winograd.py) against the naive loops and the direct
engine: forward with and without ReLU, the 2x2 max-pooling output transform, the weight
gradient, the rule that chooses it, and its error bound.

Geometries are built by construction: 3x3 kernels, stride 1, any zero padding (asymmetric
too), odd and even output sizes (the last tile half outside), channel and filter counts on
both sides of the vector width (the input transform's zero channels, the output transform's
masked stores), batch 1 to 3.
"""

from __future__ import annotations

import naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcnn.kernels import conv, engine, fused, microkernel, pool, winograd
from nbcnn.layers import activations


@st.composite
def winograd_cases(draw):
    """(x, w, b, padding): outputs 1..9 on a side, channels 1..40, filters 1..70."""
    out_h, out_w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    top, bottom, left, right = (draw(st.integers(0, 2)) for _ in range(4))
    height, width = out_h + 2 - top - bottom, out_w + 2 - left - right
    if height < 1 or width < 1:
        top = bottom = left = right = 0
        height, width = out_h + 2, out_w + 2
    n = draw(st.integers(1, 3))
    c = draw(st.sampled_from([1, 3, 8, 16, 17, 40]))
    f = draw(st.sampled_from([1, 5, 15, 16, 17, 32, 64, 70]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.uniform(-2, 2, (n, height, width, c)).astype(np.float32)
    w = rng.uniform(-2, 2, (3, 3, c, f)).astype(np.float32)
    b = rng.uniform(-2, 2, f).astype(np.float32)
    return x, w, b, ((top, bottom), (left, right))


def relative_error(got, want):
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1.0))


@settings(max_examples=40, deadline=None)
@given(case=winograd_cases(), activation=st.sampled_from(["linear", "relu", "relu6"]))
def test_winograd_forward_matches_naive_within_its_bound(case, activation):
    x, w, b, padding = case
    want = activations.forward(activation, naive.conv2d_forward(x, w, b, (1, 1), (1, 1), padding))
    got = winograd.conv_forward(x, w, b, padding, microkernel.ACTIVATIONS[activation])
    assert got.shape == want.shape
    assert relative_error(got, want) < winograd.WINOGRAD_RTOL


@settings(max_examples=30, deadline=None)
@given(case=winograd_cases())
def test_winograd_weight_gradient_matches_naive_within_its_bound(case):
    """dW = G^T (sum over tiles of V * A dY A^T) G, per-thread partials over the tiles."""
    x, w, _, padding = case
    out_h = x.shape[1] + sum(padding[0]) - 2
    out_w = x.shape[2] + sum(padding[1]) - 2
    rng = np.random.default_rng(1)
    dz = rng.uniform(-2, 2, (x.shape[0], out_h, out_w, w.shape[3])).astype(np.float32)
    _, want, _ = naive.conv2d_backward(dz, x, w, (1, 1), (1, 1), padding, need_dx=False)
    got = winograd.conv_weight_grad(dz, x, padding)
    assert got.shape == want.shape
    assert relative_error(got, want) < winograd.WINOGRAD_RTOL


@settings(max_examples=30, deadline=None)
@given(case=winograd_cases())
def test_winograd_pooling_transform_matches_its_own_forward(case):
    """The 2x2 max pool made in the output transform: equal to pooling Winograd's own
    forward (the same arithmetic), first maximum wins; against naive within the bound."""
    x, w, b, padding = case
    y = winograd.conv_forward(x, w, b, padding, microkernel.RELU)
    ph, pw = y.shape[1] // 2, y.shape[2] // 2
    if not ph or not pw:
        return
    pooled, code = winograd.conv_relu_maxpool(x, w, b, padding)
    windows = y[:, : 2 * ph, : 2 * pw].reshape(x.shape[0], ph, 2, pw, 2, -1)
    windows = windows.transpose(0, 1, 3, 2, 4, 5).reshape(x.shape[0], ph, pw, 4, -1)
    np.testing.assert_array_equal(pooled, windows.max(axis=3))
    np.testing.assert_array_equal(code, windows.argmax(axis=3))
    want = np.maximum(naive.conv2d_forward(x, w, b, (1, 1), (1, 1), padding), 0)
    want, _ = naive.max_pool2d_forward(want, (2, 2), (2, 2), ((0, 0), (0, 0)))
    assert relative_error(pooled, want) < winograd.WINOGRAD_RTOL


@settings(max_examples=30, deadline=None)
@given(case=winograd_cases(), activation=st.sampled_from(["linear", "relu", "relu6"]))
def test_winograd_average_pooling_transform_matches_its_own_forward(case, activation):
    """The 2x2 average pool made in the output transform: bit for bit the average pooling
    kernel on Winograd's own forward; against naive within the bound."""
    x, w, b, padding = case
    act = microkernel.ACTIVATIONS[activation]
    y = winograd.conv_forward(x, w, b, padding, act)
    if y.shape[1] < 2 or y.shape[2] < 2:
        return
    got = winograd.conv_avgpool(x, w, b, padding, act)
    np.testing.assert_array_equal(got, pool.avg_pool2d_forward(y, (2, 2), (2, 2), ((0, 0),) * 2))
    want = activations.forward(activation, naive.conv2d_forward(x, w, b, (1, 1), (1, 1), padding))
    ph, pw = y.shape[1] // 2, y.shape[2] // 2
    want = want[:, : 2 * ph, : 2 * pw].reshape(x.shape[0], ph, 2, pw, 2, -1).mean(axis=(2, 4))
    assert relative_error(got, want) < winograd.WINOGRAD_RTOL


def test_winograd_error_is_close_to_the_direct_engines():
    """The stated bound holds with room on a layer of the seed convnet's shape, and the
    transforms cost at most a few float32 roundings more than the direct sum."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, (4, 14, 14, 32)).astype(np.float32)
    w = rng.uniform(-2, 2, (3, 3, 32, 64)).astype(np.float32)
    b = rng.uniform(-2, 2, 64).astype(np.float32)
    same = ((1, 1), (1, 1))
    want = naive.conv2d_forward(x, w, b, (1, 1), (1, 1), same)
    wino = relative_error(winograd.conv_forward(x, w, b, same), want)
    direct = relative_error(
        engine._direct_forward(x, w, b, (1, 1), (1, 1), same, (14, 14)).reshape(want.shape), want
    )
    assert wino < winograd.WINOGRAD_RTOL / 10
    assert wino < 8 * max(direct, 1e-8)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "strides", "dilation", "out_hw", "expected"),
    [
        ((128, 14, 14, 32), (3, 3, 32, 64), (1, 1), (1, 1), (14, 14), True),  # seed conv2
        ((128, 14, 14, 64), (3, 3, 64, 32), (1, 1), (1, 1), (14, 14), True),  # its dx
        ((128, 32, 32, 3), (3, 3, 3, 32), (1, 1), (1, 1), (32, 32), False),  # 3 channels
        ((128, 4, 4, 128), (3, 3, 128, 128), (1, 1), (1, 1), (4, 4), False),  # 4x4 outputs
        ((1, 14, 14, 32), (3, 3, 32, 64), (1, 1), (1, 1), (14, 14), False),  # one sample
        ((32, 14, 14, 32), (3, 3, 32, 64), (1, 1), (1, 1), (14, 14), True),  # 1,568 tiles
        ((16, 14, 14, 32), (3, 3, 32, 64), (1, 1), (1, 1), (14, 14), False),  # 784 tiles
        ((32, 8, 8, 32), (3, 3, 32, 32), (1, 1), (1, 1), (8, 8), False),  # the digits convnet
        ((8, 66, 66, 32), (3, 3, 32, 64), (1, 1), (1, 1), (66, 66), False),  # V, M too big
        ((128, 14, 14, 32), (5, 5, 32, 64), (1, 1), (1, 1), (14, 14), False),  # 5x5
        ((128, 28, 28, 32), (3, 3, 32, 64), (2, 2), (1, 1), (14, 14), False),  # strided
        ((128, 18, 18, 32), (3, 3, 32, 64), (1, 1), (2, 2), (14, 14), False),  # dilated
    ],
)
def test_the_rule_chooses_winograd_where_it_measured_faster(
    x_shape, w_shape, strides, dilation, out_hw, expected, monkeypatch
):
    monkeypatch.delenv("NBCNN_WINOGRAD", raising=False)
    assert winograd.chosen(x_shape, w_shape, strides, dilation, out_hw) is expected
    monkeypatch.setenv("NBCNN_WINOGRAD", "0")
    assert not winograd.chosen(x_shape, w_shape, strides, dilation, out_hw)


def test_the_layers_run_winograd_where_the_rule_says_and_agree_with_blas(monkeypatch):
    """conv2 of the seed convnet at a batch the rule takes: forward, input gradient and the
    fused block on the engine (Winograd) against the im2col + BLAS backend."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (32, 14, 14, 32)).astype(np.float32)
    w = rng.uniform(-0.2, 0.2, (3, 3, 32, 64)).astype(np.float32)
    b = rng.uniform(-0.2, 0.2, 64).astype(np.float32)
    dy = rng.uniform(-1, 1, (32, 14, 14, 64)).astype(np.float32)
    same = ((1, 1), (1, 1))
    assert winograd.chosen(x.shape, w.shape, (1, 1), (1, 1), (14, 14))
    calls = []
    for name in ("conv_forward", "conv_relu_maxpool", "conv_weight_grad"):
        real = getattr(winograd, name)
        monkeypatch.setattr(
            winograd,
            name,
            lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k),
        )
    results = {}
    for backend in ("engine", "blas"):
        monkeypatch.setenv("NBCNN_CONV", backend)
        y = conv.conv2d_forward(x, w, b, (1, 1), (1, 1), same, relu=True)
        dx, dw, _ = conv.conv2d_backward(dy, x, w, (1, 1), (1, 1), same)
        pooled, code = fused.conv_relu_maxpool_forward(x, w, b, (1, 1), (1, 1), same, (2, 2))
        results[backend] = (y, dx, pooled, dw)
    assert calls.count("conv_forward") == 2 and calls.count("conv_relu_maxpool") == 1
    assert calls.count("conv_weight_grad") == 1
    for got, want, name in zip(results["engine"], results["blas"], ("y", "dx", "pooled", "dw")):
        assert relative_error(got, want) < winograd.WINOGRAD_RTOL, name
