"""The calculator-only layers against nbcnn's test kit and Keras's counts derived by hand."""

from __future__ import annotations

import pytest
from nbcnn.errors import ConfigError
from nbcnn.layers.base import ShapeError
from nbcnn.testing import check_calculator, check_config_round_trip, check_lazy_imports

from nbcnn_volumetric import AveragePooling3D, Conv2DTranspose, Conv3D, MaxPooling3D

# (class, arguments, input shape, output shape, parameters); counts by hand from Keras's
# weight shapes: Conv3D kernel (kd, kh, kw, C/groups, F) + bias F; Conv2DTranspose kernel
# (kh, kw, F, C) + bias F; pooling has none.
TABLE = [
    (Conv3D, {"filters": 8, "kernel_size": 3}, (16, 16, 16, 1), (14, 14, 14, 8), 27 * 8 + 8),
    (
        Conv3D,
        {"filters": 16, "kernel_size": [1, 3, 3], "strides": 2, "padding": "same"},
        (7, 7, 7, 8),
        (4, 4, 4, 16),
        9 * 8 * 16 + 16,
    ),
    (
        Conv3D,
        {"filters": 4, "kernel_size": 2, "dilation_rate": 2, "use_bias": False},
        (6, 6, 6, 3),
        (4, 4, 4, 4),
        8 * 3 * 4,
    ),
    (Conv3D, {"filters": 6, "kernel_size": 1, "groups": 2}, (2, 2, 2, 4), (2, 2, 2, 6), 2 * 6 + 6),
    (MaxPooling3D, {}, (16, 16, 16, 8), (8, 8, 8, 8), 0),
    (
        MaxPooling3D,
        {"pool_size": 3, "strides": 2, "padding": "same"},
        (7, 8, 9, 2),
        (4, 4, 5, 2),
        0,
    ),
    (AveragePooling3D, {"pool_size": [1, 2, 2]}, (5, 6, 7, 3), (5, 3, 3, 3), 0),
    # Keras's deconv_output_length: 'same' n*s; 'valid' n*s + max(k - s, 0); with
    # output_padding p: (n - 1)*s + k - 2*pad + p, pad = k // 2 for 'same'
    (
        Conv2DTranspose,
        {"filters": 8, "kernel_size": 3, "strides": 2, "padding": "same"},
        (7, 7, 16),
        (14, 14, 8),
        9 * 8 * 16 + 8,
    ),
    (
        Conv2DTranspose,
        {"filters": 8, "kernel_size": 3, "strides": 2},
        (7, 7, 16),
        (15, 15, 8),
        9 * 8 * 16 + 8,
    ),
    (
        Conv2DTranspose,
        {"filters": 1, "kernel_size": 4, "strides": 2, "padding": "same", "output_padding": 1},
        (7, 5, 2),
        (6 * 2 + 4 - 4 + 1, 4 * 2 + 4 - 4 + 1, 1),
        16 * 2 + 1,
    ),
    (
        Conv2DTranspose,
        {"filters": 3, "kernel_size": [2, 3], "output_padding": [0, 0], "use_bias": False},
        (4, 4, 2),
        (5, 6, 3),
        6 * 3 * 2,
    ),
    (
        Conv2DTranspose,
        {"filters": 2, "kernel_size": 3, "dilation_rate": 2},
        (4, 4, 1),
        (4 + 4, 4 + 4, 2),
        9 * 2 + 2,
    ),
]


@pytest.mark.parametrize(
    "cls, kwargs, input_shape, output_shape, params",
    TABLE,
    ids=[f"{row[0].__name__}-{row[2]}-{row[1]}" for row in TABLE],
)
def test_calculator_matches_keras(cls, kwargs, input_shape, output_shape, params):
    layer = check_calculator(cls, kwargs, input_shape)
    check_config_round_trip(cls, kwargs)
    assert layer.output_shape(input_shape) == output_shape
    assert sum(p.size for p in layer.param_shapes(input_shape)) == params
    assert not layer.has_compute


def test_weight_layouts_follow_keras():
    conv = Conv3D(filters=5, kernel_size=[1, 2, 3])
    assert [p.shape for p in conv.param_shapes((4, 4, 4, 7))] == [(1, 2, 3, 7, 5), (5,)]
    # Conv2DTranspose stores (kh, kw, filters, C): filters before the input channels
    transpose = Conv2DTranspose(filters=5, kernel_size=[2, 3])
    assert [p.shape for p in transpose.param_shapes((4, 4, 7))] == [(2, 3, 5, 7), (5,)]


def test_macs():
    # Conv3D: every output value costs kd*kh*kw*C multiply-adds
    assert Conv3D(filters=8, kernel_size=3).macs((16, 16, 16, 1)) == 14**3 * 8 * 27
    # Conv2DTranspose: every input value is scattered through kh*kw*filters weights
    assert Conv2DTranspose(filters=8, kernel_size=3, strides=2).macs((7, 7, 16)) == 49 * 16 * 72
    assert MaxPooling3D().macs((4, 4, 4, 1)) == 0


def test_receptive_fields():
    rf, jump = Conv3D(filters=1, kernel_size=3, strides=2).receptive_field(
        (9, 9, 9, 1), (1, 1, 1), (1, 1, 1)
    )
    assert rf == (3, 3, 3) and jump == (2, 2, 2)
    rf, jump = MaxPooling3D().receptive_field((8, 8, 8, 1), rf, jump)
    assert rf == (5, 5, 5) and jump == (4, 4, 4)
    rf, jump = Conv2DTranspose(filters=1, kernel_size=4, strides=2).receptive_field(
        (4, 4, 1), (5, 5), (4, 4)
    )
    assert rf == (9, 9) and jump == (2, 2)


@pytest.mark.parametrize("cls", [Conv3D, MaxPooling3D, Conv2DTranspose])
def test_module_imports_neither_numba_nor_numpy(cls):
    check_lazy_imports(cls, forbidden=("numba", "numpy"))


def test_errors_name_the_key():
    with pytest.raises(ConfigError, match="smaller than its stride") as info:
        Conv2DTranspose(filters=1, kernel_size=3, strides=2, output_padding=2)
    assert info.value.where == "output_padding"
    with pytest.raises(ConfigError, match="multiple of groups") as info:
        Conv3D(filters=3, kernel_size=1, groups=2)
    assert info.value.where == "groups"
    with pytest.raises(ConfigError, match="together with dilation_rate"):
        Conv3D(filters=3, kernel_size=3, strides=2, dilation_rate=2)


def test_shape_errors():
    with pytest.raises(ShapeError, match="rank 4"):
        Conv3D(filters=1, kernel_size=3).output_shape((8, 8, 1))
    with pytest.raises(ShapeError, match="larger than its input"):
        MaxPooling3D(pool_size=3).output_shape((2, 8, 8, 1))
    with pytest.raises(ShapeError, match="not a multiple of groups"):
        Conv3D(filters=4, kernel_size=1, groups=2).output_shape((2, 2, 2, 3))
