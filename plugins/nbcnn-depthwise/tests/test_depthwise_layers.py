"""The layers against nbcnn's test kit, Keras's counts derived by hand, and config errors."""

from __future__ import annotations

import numpy as np
import pytest
from nbcnn.errors import ConfigError
from nbcnn.layers.base import ShapeError
from nbcnn.registry import registry
from nbcnn.testing import check_layer, check_lazy_imports

from nbcnn_depthwise import DepthwiseConv2D, SeparableConv2D

# One table: (class, arguments, input shape) for the kit. Smooth activations or none, and one
# ReLU row (the kit skips the few entries at a kink).
CONTRACT = [
    (DepthwiseConv2D, {"kernel_size": 3}, (5, 5, 2)),
    (
        DepthwiseConv2D,
        {"kernel_size": 3, "depth_multiplier": 2, "padding": "same", "activation": "tanh"},
        (5, 5, 3),
    ),
    (DepthwiseConv2D, {"kernel_size": [2, 3], "strides": 2, "padding": "same"}, (6, 7, 2)),
    (
        DepthwiseConv2D,
        {"kernel_size": 2, "dilation_rate": 2, "use_bias": False, "activation": "relu"},
        (5, 5, 2),
    ),
    (SeparableConv2D, {"filters": 3, "kernel_size": 3}, (5, 5, 2)),
    (
        SeparableConv2D,
        {
            "filters": 4,
            "kernel_size": 3,
            "depth_multiplier": 2,
            "padding": "same",
            "activation": "tanh",
        },
        (5, 5, 3),
    ),
    (
        SeparableConv2D,
        {"filters": 2, "kernel_size": 3, "strides": 2, "use_bias": False},
        (6, 5, 2),
    ),
    (SeparableConv2D, {"filters": 2, "kernel_size": 2, "dilation_rate": [1, 2]}, (4, 6, 1)),
    # ReLU in the pointwise convolution's epilogue, its mask in the backward
    (SeparableConv2D, {"filters": 5, "kernel_size": 3, "activation": "relu"}, (6, 6, 3)),
]


@pytest.mark.parametrize(
    "cls, kwargs, input_shape",
    CONTRACT,
    ids=[f"{c.__name__}-{s}-{k}" for c, k, s in CONTRACT],
)
def test_layer_fits_the_contract(cls, kwargs, input_shape):
    check_layer(cls, kwargs, input_shape, batch=3)


@pytest.mark.parametrize("cls", [DepthwiseConv2D, SeparableConv2D])
def test_module_does_not_import_numba(cls):
    check_lazy_imports(cls)


@pytest.mark.parametrize("name", ["DepthwiseConv2D", "SeparableConv2D"])
def test_registered_through_the_entry_point(name):
    entry = registry().entry(name)
    assert entry.distribution == "nbcnn-depthwise" and entry.trainable
    assert entry.value == f"nbcnn_depthwise.layers:{name}"


# Keras's counts, by hand. DepthwiseConv2D: kh*kw*C*dm + C*dm (bias).
# SeparableConv2D: kh*kw*C*dm + C*dm*filters + filters.
COUNTS = [
    # the example: 3x3, depth_multiplier 2 on C channels is 3*3*C*2 + 2C
    (DepthwiseConv2D, {"kernel_size": 3, "depth_multiplier": 2}, (10, 10, 16), 3 * 3 * 16 * 2 + 32),
    (DepthwiseConv2D, {"kernel_size": 3, "use_bias": False}, (10, 10, 32), 3 * 3 * 32),
    (DepthwiseConv2D, {"kernel_size": [1, 5], "depth_multiplier": 3}, (9, 9, 4), 5 * 4 * 3 + 12),
    (SeparableConv2D, {"filters": 64, "kernel_size": 3}, (16, 16, 32), 9 * 32 + 32 * 64 + 64),
    (
        SeparableConv2D,
        {"filters": 8, "kernel_size": 5, "depth_multiplier": 2},
        (16, 16, 3),
        25 * 3 * 2 + 6 * 8 + 8,
    ),
    (SeparableConv2D, {"filters": 10, "kernel_size": 3, "use_bias": False}, (8, 8, 4), 36 + 40),
]


@pytest.mark.parametrize("cls, kwargs, input_shape, params", COUNTS)
def test_parameter_counts_match_keras(cls, kwargs, input_shape, params):
    layer = cls(**kwargs)
    assert sum(p.size for p in layer.param_shapes(input_shape)) == params
    assert str(f"{params:,}") in layer.explain(input_shape)


def test_weight_layout_matches_keras():
    """Keras's order and shapes: kernel (kh, kw, C, dm), bias (C*dm,); separable:
    depthwise_kernel, pointwise_kernel (1, 1, C*dm, filters), bias (filters,)."""
    depthwise = DepthwiseConv2D(kernel_size=[3, 2], depth_multiplier=2)
    assert [(p.name, p.shape) for p in depthwise.param_shapes((8, 8, 5))] == [
        ("kernel", (3, 2, 5, 2)),
        ("bias", (10,)),
    ]
    separable = SeparableConv2D(filters=7, kernel_size=3, depth_multiplier=2)
    assert [(p.name, p.shape) for p in separable.param_shapes((8, 8, 5))] == [
        ("depthwise_kernel", (3, 3, 5, 2)),
        ("pointwise_kernel", (1, 1, 10, 7)),
        ("bias", (7,)),
    ]


@pytest.mark.parametrize(
    "kwargs, input_shape, output_shape",
    [
        ({"kernel_size": 3}, (28, 28, 3), (26, 26, 3)),
        ({"kernel_size": 3, "padding": "same", "strides": 2}, (7, 7, 4), (4, 4, 4)),
        ({"kernel_size": 3, "dilation_rate": 2, "depth_multiplier": 3}, (9, 9, 2), (5, 5, 6)),
    ],
)
def test_output_shapes_follow_keras(kwargs, input_shape, output_shape):
    # valid: floor((n - ((k-1)*d + 1)) / s) + 1; same: ceil(n / s)
    assert DepthwiseConv2D(**kwargs).output_shape(input_shape) == output_shape
    separable = SeparableConv2D(filters=5, **kwargs).output_shape(input_shape)
    assert separable == (*output_shape[:2], 5)


def test_macs():
    # 26*26 positions x 3 channels x 2 outputs x 9 taps; pointwise adds 26*26 x 6 x 4
    assert DepthwiseConv2D(kernel_size=3, depth_multiplier=2).macs((28, 28, 3)) == 26 * 26 * 54
    separable = SeparableConv2D(filters=4, kernel_size=3, depth_multiplier=2)
    assert separable.macs((28, 28, 3)) == 26 * 26 * (54 + 6 * 4)


def test_strides_with_dilation_are_refused_as_in_keras():
    with pytest.raises(ConfigError, match="strides .* together with dilation_rate") as info:
        DepthwiseConv2D(kernel_size=3, strides=2, dilation_rate=2)
    assert info.value.where == "dilation_rate"


def test_bad_arguments_name_the_key():
    with pytest.raises(ConfigError, match="expected an int >= 1") as info:
        DepthwiseConv2D(kernel_size=3, depth_multiplier=0)
    assert info.value.where == "depth_multiplier"
    with pytest.raises(ConfigError, match="did you mean 'depth_multiplier'"):
        SeparableConv2D(filters=2, kernel_size=3, depth_multiplyer=2)
    with pytest.raises(ConfigError, match="needs this argument") as info:
        SeparableConv2D(kernel_size=3)
    assert info.value.where == "filters"


def test_window_larger_than_input_is_a_shape_error():
    with pytest.raises(ShapeError, match="larger than its input"):
        DepthwiseConv2D(kernel_size=5).output_shape((3, 3, 1))
    with pytest.raises(ShapeError, match="rank 3"):
        SeparableConv2D(filters=2, kernel_size=1).output_shape((3, 1))


def test_initializers_follow_keras():
    """glorot_uniform on the depthwise kernel (kh, kw, C, dm) uses Keras's fans:
    fan_in = kh*kw*C, fan_out = kh*kw*dm; biases start at zero."""
    layer = DepthwiseConv2D(kernel_size=3, depth_multiplier=2)
    layer.build((6, 6, 4), np.random.default_rng(0))
    limit = np.sqrt(6 / (9 * 4 + 9 * 2))
    kernel = layer.params["kernel"]
    assert kernel.dtype == np.float32 and np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.8 * limit
    np.testing.assert_array_equal(layer.params["bias"], 0)
