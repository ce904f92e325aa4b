"""Fused Conv(ReLU) -> max pooling (nbcnn/kernels/fused.py, nbcnn/fusion.py).

The fused op must be invisible except in speed: its pooled output equals the layer-by-layer
kernels' bit for bit (ties included), its gradients equal theirs, and both equal the naive
reference chain (conv, ReLU, max pooling). Models fuse exactly the pairs they may.
"""

from __future__ import annotations

import naive
import numpy as np
import pytest
from helpers import model_doc
from hypothesis import given
from hypothesis import strategies as st
from test_kernels import HYPOTHESIS, assert_close, geometries, values

import nbcnn
from nbcnn.errors import NbcnnError
from nbcnn.fusion import ConvAvgPool, ConvBatchNorm, ConvReluMaxPool
from nbcnn.kernels import conv, fused, pool
from nbcnn.model import Sequential
from nbcnn.spec import parse_spec


@st.composite
def cases(draw, *, seeded_values: bool = False):
    """(geometry, pool_size, x, w, b, dpooled, need_dx) for a conv whose output can be pooled."""
    g = draw(geometries(dilated=True))
    pool_size = tuple(draw(st.integers(1, min(3, out))) for out in g.out_hw)
    n, c, f = draw(st.integers(1, 3)), draw(st.sampled_from([1, 1, 2, 4])), draw(st.integers(1, 4))
    pooled_hw = tuple(out // p for out, p in zip(g.out_hw, pool_size))

    def array(shape):
        if seeded_values:  # continuous values: no near-ties that float32 and float64 break apart
            seed = draw(st.integers(0, 2**32 - 1))
            return np.random.default_rng(seed).uniform(-2, 2, shape).astype(np.float32)
        return draw(values(shape))

    x, w, b = array((n, *g.in_hw, c)), array((*g.kernel, c, f)), array((f,))
    return g, pool_size, x, w, b, array((n, *pooled_hw, f)), draw(st.booleans())


def unfused(g, pool_size, x, w, b, dpooled, need_dx):
    """The layer-by-layer kernels: conv with ReLU, max pooling, and back."""
    y = conv.conv2d_forward(x, w, b, g.strides, g.dilation, g.padding, relu=True)
    pooled, argmax = pool.max_pool2d_forward(y, pool_size, pool_size, ((0, 0), (0, 0)))
    dy = pool.max_pool2d_backward(dpooled, argmax, y.shape)
    grads = conv.conv2d_backward(
        dy, x, w, g.strides, g.dilation, g.padding, need_dx=need_dx, relu_output=y
    )
    return pooled, argmax, y.shape, grads


def run_fused(g, pool_size, x, w, b, dpooled, need_dx):
    pooled, code = fused.conv_relu_maxpool_forward(
        x, w, b, g.strides, g.dilation, g.padding, pool_size
    )
    grads = fused.conv_relu_maxpool_backward(
        dpooled, x, w, pooled, code, g.strides, g.dilation, g.padding, pool_size, need_dx=need_dx
    )
    return pooled, code, grads


def code_as_argmax(code, pool_size, conv_shape):
    """The fused op's window codes as max pooling's flat argmax indices into conv's output."""
    (ph, pw), (_, _, width, filters) = pool_size, conv_shape
    _, i, j, f = np.indices(code.shape)
    h = i * ph + code // pw
    wi = j * pw + code % pw
    return (h * width + wi) * filters + f


@HYPOTHESIS
@given(cases())
def test_fused_equals_the_layer_by_layer_kernels(case):
    g, pool_size, x, w, b, dpooled, need_dx = case
    pooled, code, (dx, dw, db) = run_fused(*case)
    ref_pooled, argmax, conv_shape, (ref_dx, ref_dw, ref_db) = unfused(*case)
    np.testing.assert_array_equal(pooled, ref_pooled)  # same sums in the same order
    assert code.dtype == np.int8
    np.testing.assert_array_equal(code_as_argmax(code, pool_size, conv_shape), argmax)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, ref_db, rtol=1e-5, atol=1e-5)
    if need_dx:
        np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)
    else:
        assert dx is None


@HYPOTHESIS
@given(cases(seeded_values=True))
def test_fused_against_the_naive_chain(case):
    g, pool_size, x, w, b, dpooled, need_dx = case
    pooled, _, (dx, dw, db) = run_fused(*case)
    y = np.maximum(naive.conv2d_forward(x, w, b, g.strides, g.dilation, g.padding), 0.0)
    ref_pooled, argmax = naive.max_pool2d_forward(y, pool_size, pool_size, ((0, 0), (0, 0)))
    assert_close(pooled, ref_pooled, "pooled")
    dy = naive.max_pool2d_backward(dpooled, argmax, y.shape) * (y > 0)
    ref_dx, ref_dw, ref_db = naive.conv2d_backward(dy, x, w, g.strides, g.dilation, g.padding)
    assert_close(dw, ref_dw, "dw")
    assert_close(db, ref_db, "db")
    if need_dx:
        assert_close(dx, ref_dx, "dx")


def test_fused_rejects_bad_codes_and_windows():
    x = np.ones((1, 4, 4, 1), np.float32)
    w = np.ones((1, 1, 1, 2), np.float32)
    args = ((1, 1), (1, 1), ((0, 0), (0, 0)))
    pooled, code = fused.conv_relu_maxpool_forward(x, w, None, *args, (2, 2))
    with pytest.raises(ValueError, match="int8 cell indices"):
        fused.conv_relu_maxpool_backward(pooled, x, w, pooled, code + 4, *args, (2, 2))
    with pytest.raises(ValueError, match="larger than the conv output"):
        fused.conv_relu_maxpool_forward(x, w, None, *args, (5, 1))
    with pytest.raises(ValueError, match="at most 127 cells"):
        fused.conv_relu_maxpool_forward(x, w, None, *args, (12, 12))


# ------------------------------------------------------------------------------- models


def fused_pairs(model):
    return [(s.conv.name, s.pool.name) for _, s in model.steps() if isinstance(s, ConvReluMaxPool)]


def build(*layers, input_shape=(12, 12, 1)):
    return Sequential.from_spec(parse_spec(model_doc(*layers, input_shape=input_shape)))


def test_the_seed_convnet_fuses_both_blocks_and_trains_the_same():
    model = nbcnn.load_model("configs/mnist_convnet.yaml").initialize(0)
    assert fused_pairs(model) == [("conv2d", "max_pooling2d"), ("conv2d_1", "max_pooling2d_1")]
    rng = np.random.default_rng(0)
    x = rng.random((5, 28, 28, 1), dtype=np.float32)
    dy = rng.standard_normal((5, 10)).astype(np.float32)
    results = {}
    for fuse in (True, False):
        model.fuse = fuse
        out = model.forward(x, training=True)
        dx = model.backward(dy)
        grads = [layer.grads[k].copy() for layer in model.layers for k in sorted(layer.grads)]
        results[fuse] = (out, dx, grads)
    (out, dx, grads), (ref_out, ref_dx, ref_grads) = results[True], results[False]
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("conv", "pooling", "fuses"),
    [
        ({"activation": "relu"}, {}, True),
        ({"activation": "relu", "use_bias": False, "dilation_rate": 2}, {}, True),
        ({"activation": "relu", "padding": "same", "strides": 2}, {"pool_size": 3}, True),
        ({"activation": None}, {}, False),  # no ReLU to fold in
        ({"activation": "tanh"}, {}, False),
        ({"activation": "relu"}, {"strides": 1}, False),  # overlapping windows
        ({"activation": "relu"}, {"pool_size": 4, "padding": "same"}, False),  # 10 % 4: padded
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_which_pairs_fuse(conv, pooling, fuses, channels):
    """Exactly the pairs that may fuse do, and fused or not, training gives the same results."""
    model = build(
        {"type": "Conv2D", "filters": 2, "kernel_size": 3, **conv},
        {"type": "MaxPooling2D", **pooling},
        {"type": "Flatten"},
        input_shape=(12, 12, channels),
    ).initialize(0)
    assert bool(fused_pairs(model)) == fuses
    rng = np.random.default_rng(1)
    x = rng.random((2, 12, 12, channels), dtype=np.float32)
    results = []
    for fuse in (True, False):
        model.fuse = fuse
        out = model.forward(x, training=True)
        dx = model.backward(np.linspace(-1, 1, out.size, dtype=np.float32).reshape(out.shape))
        grads = {name: g.copy() for name, g in model.layers[0].grads.items()}
        results.append((out, dx, grads))
    (out, dx, grads), (ref_out, ref_dx, ref_grads) = results
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-6)
    expected = {"kernel"} if conv.get("use_bias") is False else {"kernel", "bias"}
    assert grads.keys() == ref_grads.keys() == expected
    for name in grads:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6)


def test_conv1d_pairs_fuse_and_match():
    model = build(
        {"type": "Conv1D", "filters": 3, "kernel_size": 3, "activation": "relu"},
        {"type": "MaxPooling1D", "pool_size": 2},
        {"type": "Conv1D", "filters": 2, "kernel_size": 2, "activation": "relu"},
        {"type": "MaxPooling1D", "pool_size": 2},
        input_shape=(20, 2),
    ).initialize(0)
    assert len(fused_pairs(model)) == 2
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 20, 2)).astype(np.float32)
    out = model.forward(x, training=True)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    dx = model.backward(dy)
    model.fuse = False
    np.testing.assert_array_equal(model.forward(x, training=True), out)
    np.testing.assert_allclose(model.backward(dy), dx, rtol=1e-5, atol=1e-6)


def test_a_layer_named_in_an_error_is_the_conv_of_a_fused_step():
    model = build(
        {"type": "Conv2D", "filters": 2, "kernel_size": 3, "activation": "relu"},
        {"type": "MaxPooling2D"},
    ).initialize(0)
    model.layers[0].params["kernel"] = np.ones((3, 3, 2, 2), np.float32)  # wrong C
    with pytest.raises(NbcnnError, match=r"layers\[0\] 'conv2d' \(Conv2D\).*forward"):
        model.forward(np.ones((1, 12, 12, 1), np.float32))


def test_a_fused_step_backward_twice_gives_the_same_gradients():
    """The forward's im2col columns are spent by the first backward; a second rebuilds them."""
    model = build(
        {"type": "Conv2D", "filters": 2, "kernel_size": 3, "activation": "relu"},
        {"type": "MaxPooling2D"},
        {"type": "Conv2D", "filters": 3, "kernel_size": 2, "activation": "relu"},
        {"type": "MaxPooling2D"},
    ).initialize(0)
    assert len(fused_pairs(model)) == 2
    x = np.random.default_rng(3).random((2, 12, 12, 1), dtype=np.float32)
    out = model.forward(x, training=True)
    dy = np.ones_like(out)
    runs = []
    for _ in range(2):
        dx = model.backward(dy)
        runs.append((dx, [g.copy() for layer in model.layers for g in layer.grads.values()]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for got, want in zip(runs[0][1], runs[1][1], strict=True):
        np.testing.assert_array_equal(got, want)


def folded_pairs(model):
    return [(s.conv.name, s.norm.name) for _, s in model.steps() if isinstance(s, ConvBatchNorm)]


@pytest.mark.parametrize(
    ("conv", "folds"),
    [
        ({"type": "Conv2D", "use_bias": False, "padding": "same"}, True),  # Keras's pattern
        ({"type": "Conv2D", "strides": 2}, True),
        ({"type": "Conv1D"}, True),
        ({"type": "Conv1D", "activation": "linear"}, True),  # Keras's name for none
        ({"type": "Conv2D", "activation": "relu"}, False),  # BN after ReLU: nothing to fold into
    ],
)
@pytest.mark.parametrize("norm", [{}, {"center": False, "scale": False, "epsilon": 0.01}])
def test_batch_normalization_folds_into_the_convolution_at_inference(conv, folds, norm):
    """Inference: one convolution with the normalization folded into its weights and bias,
    equal to the two layers up to float32 rounding; training: the layers as they are, bit
    for bit, and the moving statistics they update."""
    rank1 = conv["type"] == "Conv1D"
    model = build(
        {"filters": 5, "kernel_size": 3, **conv},
        {"type": "BatchNormalization", **norm},
        {"type": "Flatten"},
        input_shape=(12, 3) if rank1 else (12, 12, 3),
    ).initialize(0)
    assert bool(folded_pairs(model)) == folds
    rng = np.random.default_rng(4)
    norm_layer = model.layers[1]
    for name in norm_layer.params:  # statistics and affine terms far from 0 and 1
        shape = norm_layer.params[name].shape
        low = 0.5 if name == "moving_variance" else -2.0
        norm_layer.params[name] = rng.uniform(low, 2.0, shape).astype(np.float32)
    x = rng.standard_normal((4, *model.input_shape)).astype(np.float32)
    model.fuse = False
    want = model.forward(x)
    model.fuse = True
    got = model.forward(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert_training_as_the_layers(model, x, norm_layer)


def assert_training_as_the_layers(model, x, norm_layer):
    """A training step of ``model`` fused and layer by layer, from the same normalization
    statistics: outputs, input gradient, the first two layers' gradients and the updated
    moving statistics all equal bit for bit. Returns the fused step's output."""
    results = []
    for fuse in (True, False):
        model.fuse = fuse
        start = {k: v.copy() for k, v in norm_layer.params.items()}
        out = model.forward(x, training=True)
        dx = model.backward(np.linspace(-1, 1, out.size, dtype=np.float32).reshape(out.shape))
        grads = [g.copy() for layer in model.layers[:2] for _, g in sorted(layer.grads.items())]
        results.append((out, dx, grads, {k: v.copy() for k, v in norm_layer.params.items()}))
        norm_layer.params = start
    (out, dx, grads, stats), (ref_out, ref_dx, ref_grads, ref_stats) = results
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(dx, ref_dx)
    for got_grad, want_grad in zip(grads, ref_grads, strict=True):
        np.testing.assert_array_equal(got_grad, want_grad)
    for name in stats:
        np.testing.assert_array_equal(stats[name], ref_stats[name])
    return out


@pytest.mark.parametrize(
    ("after", "takes_relu"),
    [
        ({"type": "Activation", "activation": "relu"}, True),  # ResNet's conv -> BN -> ReLU
        ({"type": "Activation", "activation": "relu6"}, False),
        ({"type": "Activation", "activation": "tanh"}, False),
        ({"type": "Dropout", "rate": 0.0}, False),
    ],
)
def test_a_relu_after_the_normalization_runs_in_its_pass(after, takes_relu):
    """Conv -> BatchNormalization -> Activation('relu') is one step: training runs the ReLU
    in the normalization's pass and its mask in the normalization's backward, bit for bit the
    three layers (outputs, input gradient, every weight's gradient, moving statistics);
    inference folds the normalization into the convolution with the ReLU in its epilogue,
    equal up to float32 rounding. Another activation is not taken into the step."""
    model = build(
        {"type": "Conv2D", "filters": 6, "kernel_size": 3, "padding": "same", "use_bias": False},
        {"type": "BatchNormalization"},
        after,
        {"type": "Flatten"},
        input_shape=(10, 10, 3),
    ).initialize(0)
    steps = [s for _, s in model.steps() if isinstance(s, ConvBatchNorm)]
    assert len(steps) == 1 and len(steps[0].layers) == (3 if takes_relu else 2)
    rng = np.random.default_rng(5)
    norm = model.layers[1]
    norm.params["beta"] = rng.uniform(-1, 1, 6).astype(np.float32)  # both sides of 0
    x = rng.standard_normal((4, 10, 10, 3)).astype(np.float32)
    out = assert_training_as_the_layers(model, x, norm)
    if takes_relu:
        assert (out == 0).mean() > 0.2  # the ReLU did clamp: the test exercised it
    model.fuse = False
    want = model.forward(x)
    model.fuse = True
    np.testing.assert_allclose(model.forward(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def averaged_pairs(model):
    return [(s.conv.name, s.pool.name) for _, s in model.steps() if isinstance(s, ConvAvgPool)]


@pytest.mark.parametrize(
    ("conv", "pooling", "fuses"),
    [
        ({"type": "Conv2D", "padding": "same"}, {"pool_size": 2}, True),
        ({"type": "Conv2D", "activation": "relu", "filters": 19}, {"pool_size": [2, 3]}, True),
        ({"type": "Conv2D", "activation": "relu6", "strides": 2}, {"pool_size": 2}, True),
        ({"type": "Conv2D", "dilation_rate": 2, "use_bias": False}, {"pool_size": [2, 4]}, True),
        ({"type": "Conv2D", "activation": "tanh"}, {"pool_size": 2}, False),  # not in the tile
        ({"type": "Conv2D"}, {"pool_size": 2, "strides": 1}, False),  # overlapping windows
        ({"type": "Conv2D"}, {"pool_size": 2, "padding": "same"}, False),  # padded windows
        ({"type": "Conv1D", "activation": "relu"}, {"pool_size": 2}, True),
    ],
)
def test_average_pooling_runs_in_the_tiles_epilogue_at_inference(conv, pooling, fuses, monkeypatch):
    """Inference: the pooled output, made in the tile's epilogue, equals the two layers' bit
    for bit (the same products, activation, window sums and scale) and matches the naive
    chain; training and its backward: the two layers as they are."""
    from nbcnn.kernels import engine

    made = []
    real = engine.conv_avgpool
    monkeypatch.setattr(
        engine, "conv_avgpool", lambda *a, **k: made.append(real(*a, **k)) or made[-1]
    )
    rank1 = conv["type"] == "Conv1D"
    pool_type = "AveragePooling1D" if rank1 else "AveragePooling2D"
    if rank1 and isinstance(pooling["pool_size"], list):
        pooling = {**pooling, "pool_size": pooling["pool_size"][0]}
    model = build(
        {"filters": 5, "kernel_size": 3, **conv},
        {"type": pool_type, **pooling},
        {"type": "Flatten"},
        input_shape=(13, 3) if rank1 else (13, 11, 3),
    ).initialize(0)
    assert bool(averaged_pairs(model)) == fuses
    rng = np.random.default_rng(5)
    layer = model.layers[0]
    for name in layer.params:  # weights that take outputs past ReLU6's cap and below 0
        layer.params[name] = rng.uniform(-2, 2, layer.params[name].shape).astype(np.float32)
    x = rng.uniform(-2, 2, (4, *model.input_shape)).astype(np.float32)
    model.fuse = False
    want = model.forward(x)
    model.fuse = True
    got = model.forward(x)
    np.testing.assert_array_equal(got, want)
    assert len(made) == fuses and all(m is not None for m in made)  # the epilogue ran
    if fuses and not rank1:  # against the naive chain (conv, activation, average pooling)
        w, strides, dilation, pads = layer._kernel_args()
        z = naive.conv2d_forward(x, w, layer.params.get("bias"), strides, dilation, pads)
        a = np.clip(z, 0, 6) if layer.activation == "relu6" else z
        a = np.maximum(a, 0) if layer.activation in ("relu", "relu6") else a
        ph, pw = model.layers[1]._as_2d(model.layers[1].pool_size)
        oh, ow = a.shape[1] // ph, a.shape[2] // pw
        windows = a[:, : oh * ph, : ow * pw].reshape(4, oh, ph, ow, pw, -1).mean(axis=(2, 4))
        assert_close(got.reshape(windows.shape), windows, "averaged in the epilogue")
    results = []
    for fuse in (True, False):
        model.fuse = fuse
        out = model.forward(x, training=True)
        dx = model.backward(np.linspace(-1, 1, out.size, dtype=np.float32).reshape(out.shape))
        results.append([out, dx, *(g.copy() for _, g in sorted(layer.grads.items()))])
    for fused_array, layered_array in zip(*results, strict=True):
        np.testing.assert_array_equal(fused_array, layered_array)


def test_average_pooling_epilogue_with_windows_no_tile_holds():
    """Windows of more cells than any pooling tile has rows: the step runs the layers."""
    model = build(
        {"type": "Conv2D", "filters": 3, "kernel_size": 1},
        {"type": "AveragePooling2D", "pool_size": 11},
        {"type": "Flatten"},
        input_shape=(11, 11, 2),
    ).initialize(0)
    assert averaged_pairs(model)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 11, 11, 2)).astype(np.float32)
    model.fuse = False
    want = model.forward(x)
    model.fuse = True
    np.testing.assert_array_equal(model.forward(x), want)
    from nbcnn.kernels import engine, microkernel

    assert microkernel.choose_pool_tile(3, 121) is None
    assert engine.conv_avgpool(x, np.ones((1, 1, 2, 3), np.float32), None, (1, 1), (1, 1),
                               ((0, 0), (0, 0)), (11, 11), (1, 1)) is None  # fmt: skip


@pytest.mark.parametrize("pool_type", ["AveragePooling2D", "MaxPooling2D"])
def test_a_pooled_step_asks_winograds_rule_about_the_whole_output(pool_type):
    """An odd output (15x15, whose last row and column no window covers) at a batch where
    the whole output has enough tiles for Winograd (24 x 64 = 1,536) and the covered part
    would not (24 x 49): the fused step runs Winograd like the convolution alone, so the two
    agree bit for bit."""
    from nbcnn.kernels import winograd

    model = build(
        {"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": pool_type, "pool_size": 2},
        {"type": "Flatten"},
        input_shape=(15, 15, 16),
    ).initialize(0)
    assert winograd.chosen((24, 15, 15, 16), (3, 3, 16, 8), (1, 1), (1, 1), (15, 15))
    assert not winograd.chosen((24, 15, 15, 16), (3, 3, 16, 8), (1, 1), (1, 1), (14, 14))
    x = np.random.default_rng(2).uniform(-1, 1, (24, 15, 15, 16)).astype(np.float32)
    model.fuse = False
    want = model.forward(x)
    model.fuse = True
    assert len(model.steps()) == 2  # the pair is one step
    np.testing.assert_array_equal(model.forward(x), want)
