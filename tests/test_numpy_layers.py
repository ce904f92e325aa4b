"""The layers outside the conv and pooling kernels (Dense, BatchNormalization, reshaping, global
pooling, Dropout, activations) against the loop references in naive.py; BatchNormalization's
numba kernels have their own property test (tests/test_batchnorm.py). Gradients of every layer
are checked against finite differences by the contract test (tests/test_testing_kit.py)."""

from __future__ import annotations

import naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcnn.layers import activations
from nbcnn.registry import registry

TOL = {"rtol": 1e-5, "atol": 1e-5}


def make(type_name, input_shape, seed=0, **kwargs):
    layer = registry().get(type_name)(**kwargs)
    layer.build(tuple(input_shape), np.random.default_rng(seed))
    return layer


def data(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    n_in=st.integers(1, 5),
    units=st.integers(1, 4),
    use_bias=st.booleans(),
    seed=st.integers(0, 100),
)
def test_dense_on_any_rank(lead, n_in, units, use_bias, seed):
    shape = (*lead, n_in)
    layer = make("Dense", shape, seed, units=units, use_bias=use_bias)
    x = data((2, *shape), seed)
    expected = naive.dense_forward(x, layer.params["kernel"], layer.params.get("bias"))
    np.testing.assert_allclose(layer.forward(x), expected, **TOL)


def test_batchnorm_training_inference_and_moving_averages():
    layer = make("BatchNormalization", (3, 3, 4), momentum=0.9, epsilon=1e-3)
    layer.params["gamma"][:] = [1.0, 2.0, 0.5, -1.0]
    layer.params["beta"][:] = [0.0, 0.1, -0.2, 0.3]
    x = data((5, 3, 3, 4), 1) * 3 + 1
    mean, var = naive.batch_statistics(x)
    gamma, beta = layer.params["gamma"].copy(), layer.params["beta"].copy()
    y = layer.forward(x, training=True)
    np.testing.assert_allclose(y, naive.batchnorm_forward(x, gamma, beta, mean, var, 1e-3), **TOL)
    # Keras: moving = moving * momentum + batch * (1 - momentum), from 0 and 1.
    np.testing.assert_allclose(layer.params["moving_mean"], 0.1 * mean, **TOL)
    np.testing.assert_allclose(layer.params["moving_variance"], 0.9 + 0.1 * var, **TOL)
    moving = layer.params["moving_mean"].copy(), layer.params["moving_variance"].copy()
    y = layer.forward(x, training=False)
    np.testing.assert_allclose(y, naive.batchnorm_forward(x, gamma, beta, *moving, 1e-3), **TOL)


@pytest.mark.parametrize("size", [(2, 2), (1, 3), (3, 1)])
def test_upsampling(size):
    layer = make("UpSampling2D", (3, 4, 2), size=list(size))
    x = data((2, 3, 4, 2), 0)
    np.testing.assert_array_equal(layer.forward(x), naive.upsampling2d_forward(x, size))


@pytest.mark.parametrize("padding", [((0, 0), (0, 0)), ((1, 2), (3, 0)), ((2, 2), (1, 1))])
def test_zero_padding_and_cropping_invert(padding):
    x = data((2, 4, 5, 3), 0)
    pad = make("ZeroPadding2D", (4, 5, 3), padding=[list(p) for p in padding])
    y = pad.forward(x)
    np.testing.assert_array_equal(y, naive.zero_padding2d_forward(x, padding))
    crop = make("Cropping2D", y.shape[1:], cropping=[list(p) for p in padding])
    np.testing.assert_array_equal(crop.forward(y), naive.cropping2d_forward(y, padding))
    np.testing.assert_array_equal(crop.forward(y), x)


@pytest.mark.parametrize(
    ("type_name", "shape", "mode"),
    [
        ("GlobalMaxPooling2D", (3, 4, 5), "max"),
        ("GlobalAveragePooling2D", (3, 4, 5), "avg"),
        ("GlobalMaxPooling1D", (6, 2), "max"),
        ("GlobalAveragePooling1D", (6, 2), "avg"),
    ],
)
def test_global_pools(type_name, shape, mode):
    layer = make(type_name, shape)
    x = data((3, *shape), 2)
    np.testing.assert_allclose(layer.forward(x), naive.global_pool_forward(x, mode), **TOL)


def test_dropout_inverted_scaling_and_inference_identity():
    layer = make("Dropout", (1000,), rate=0.25)
    x = np.ones((4, 1000), np.float32)
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    y = layer.forward(x, training=True)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    assert 0.2 < 1 - kept.mean() < 0.3
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), y)


@pytest.mark.parametrize("name", activations.NAMES)
def test_activation_matches_definition(name):
    z = np.linspace(-4.9, 4.9, 20, dtype=np.float32).reshape(4, 5)  # no point on a kink
    definitions = {
        "linear": lambda v: v,
        "relu": lambda v: np.maximum(v, 0),
        "relu6": lambda v: np.minimum(np.maximum(v, 0), 6),
        "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
        "tanh": np.tanh,
        "softmax": lambda v: np.exp(v) / np.exp(v).sum(axis=-1, keepdims=True),
        "elu": lambda v: np.where(v > 0, v, np.exp(v) - 1),
        "softplus": lambda v: np.log1p(np.exp(v)),
        "swish": lambda v: v / (1 + np.exp(-v)),
    }
    z64 = z.astype(np.float64)
    np.testing.assert_allclose(activations.forward(name, z), definitions[name](z64), **TOL)
    # backward against a central difference of the definition (elementwise, or JVP for softmax)
    dy = np.random.default_rng(0).normal(size=z.shape)
    eps = 1e-6
    numeric = np.zeros_like(z64)
    for index in np.ndindex(*z.shape):
        up, down = z64.copy(), z64.copy()
        up[index] += eps
        down[index] -= eps
        numeric[index] = ((definitions[name](up) - definitions[name](down)) * dy).sum() / (2 * eps)
    a = activations.forward(name, z)
    analytic = activations.backward(name, dy.astype(np.float32), z, a)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3, atol=1e-3)
