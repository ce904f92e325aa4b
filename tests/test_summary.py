"""Shapes and parameter counts against numbers derived by hand from Keras's formulas.

Each expected value is worked out in the comment beside it (Keras: valid -> floor((n - k_eff) / s)
+ 1, same -> ceil(n / s); conv params = kh*kw*c_in*filters + filters), never copied from nbcnn.
"""

from __future__ import annotations

import json
import math

import pytest
from helpers import ROOT, cli, model_doc

from nbcnn.model import Sequential
from nbcnn.spec import parse_spec
from nbcnn.summary import summarize, to_json


def build(*layers, input_shape):
    return Sequential.from_spec(parse_spec(model_doc(*layers, input_shape=input_shape)))


def only(layer, input_shape):
    """(output_shape, params, trainable, macs) of a one-layer model."""
    model = build(layer, input_shape=input_shape)
    row = summarize(model).rows[0]
    return tuple(row.output_shape), row.params, row.trainable_params, row.macs


CASES = [
    # 'same' with stride 2 on odd sizes: ceil(7/2) = 4, ceil(9/2) = 5; 3*3*3*8 + 8 = 224
    (
        {"type": "Conv2D", "filters": 8, "kernel_size": 3, "strides": 2, "padding": "same"},
        (7, 9, 3),
        (4, 5, 8),
        224,
    ),
    # 'valid' with stride 3: floor((10 - 3) / 3) + 1 = 3; 3*3*1*4 + 4 = 40
    ({"type": "Conv2D", "filters": 4, "kernel_size": 3, "strides": 3}, (10, 10, 1), (3, 3, 4), 40),
    # dilation 2: k_eff = (3 - 1) * 2 + 1 = 5; 10 - 5 + 1 = 6; params 3*3*2*5 + 5 = 95
    (
        {"type": "Conv2D", "filters": 5, "kernel_size": 3, "dilation_rate": 2},
        (10, 10, 2),
        (6, 6, 5),
        95,
    ),
    # rectangular 3x5 kernel: 9 - 3 + 1 = 7, 11 - 5 + 1 = 7; 3*5*2*6 + 6 = 186
    ({"type": "Conv2D", "filters": 6, "kernel_size": [3, 5]}, (9, 11, 2), (7, 7, 6), 186),
    # 1x1 convolution reducing depth 64 -> 16: 1*1*64*16 + 16 = 1,040
    ({"type": "Conv2D", "filters": 16, "kernel_size": 1}, (14, 14, 64), (14, 14, 16), 1040),
    # use_bias false: 3*3*3*8 = 216
    (
        {"type": "Conv2D", "filters": 8, "kernel_size": 3, "use_bias": False},
        (8, 8, 3),
        (6, 6, 8),
        216,
    ),
    # Conv1D: floor((100 - 5) / 2) + 1 = 48; 5*3*8 + 8 = 128
    ({"type": "Conv1D", "filters": 8, "kernel_size": 5, "strides": 2}, (100, 3), (48, 8), 128),
    # Conv1D causal keeps the length: 20; 3*2*4 + 4 = 28
    ({"type": "Conv1D", "filters": 4, "kernel_size": 3, "padding": "causal"}, (20, 2), (20, 4), 28),
    # pooling 3x3 stride 2 'same' on 7x7: ceil(7/2) = 4
    (
        {"type": "MaxPooling2D", "pool_size": 3, "strides": 2, "padding": "same"},
        (7, 7, 5),
        (4, 4, 5),
        0,
    ),
    # average pooling 2x3 'valid' stride (1, 2): 6 - 2 + 1 = 5; floor((9 - 3) / 2) + 1 = 4
    ({"type": "AveragePooling2D", "pool_size": [2, 3], "strides": [1, 2]}, (6, 9, 2), (5, 4, 2), 0),
    # default pool 2, strides = pool_size: floor((7 - 2) / 2) + 1 = 3
    ({"type": "MaxPooling2D"}, (7, 7, 1), (3, 3, 1), 0),
    ({"type": "MaxPooling1D", "pool_size": 3, "padding": "same"}, (10, 4), (4, 4), 0),
    ({"type": "AveragePooling1D"}, (9, 4), (4, 4), 0),
    # BatchNormalization: 4 * 16 = 64 parameters
    ({"type": "BatchNormalization"}, (8, 8, 16), (8, 8, 16), 64),
    # ZeroPadding2D ((1, 2), (3, 4)): 5 + 3 = 8, 5 + 7 = 12
    ({"type": "ZeroPadding2D", "padding": [[1, 2], [3, 4]]}, (5, 5, 3), (8, 12, 3), 0),
    # ZeroPadding2D [1, 2] is symmetric per axis: 5 + 2 = 7, 5 + 4 = 9
    ({"type": "ZeroPadding2D", "padding": [1, 2]}, (5, 5, 3), (7, 9, 3), 0),
    # Cropping2D ((1, 0), (2, 3)): 10 - 1 = 9, 10 - 5 = 5
    ({"type": "Cropping2D", "cropping": [[1, 0], [2, 3]]}, (10, 10, 3), (9, 5, 3), 0),
    # UpSampling2D (2, 3): 4 * 2 = 8, 5 * 3 = 15
    ({"type": "UpSampling2D", "size": [2, 3]}, (4, 5, 2), (8, 15, 2), 0),
    # Reshape [-1, 4] of 4*4*2 = 32 values: (8, 4)
    ({"type": "Reshape", "target_shape": [-1, 4]}, (4, 4, 2), (8, 4), 0),
    ({"type": "Reshape", "target_shape": [2, 16]}, (4, 4, 2), (2, 16), 0),
    # Dense on a 4-D input acts on the last axis: 8*3 + 3 = 27
    ({"type": "Dense", "units": 3}, (5, 5, 8), (5, 5, 3), 27),
    ({"type": "GlobalAveragePooling2D"}, (7, 7, 32), (32,), 0),
    ({"type": "GlobalMaxPooling2D"}, (7, 7, 32), (32,), 0),
    ({"type": "GlobalAveragePooling1D"}, (50, 6), (6,), 0),
    ({"type": "GlobalMaxPooling1D", "keepdims": True}, (50, 6), (1, 6), 0),
    ({"type": "Flatten"}, (7, 7, 64), (3136,), 0),
    ({"type": "Dropout", "rate": 0.5}, (10,), (10,), 0),
    ({"type": "Activation", "activation": "tanh"}, (3, 4), (3, 4), 0),
]


@pytest.mark.parametrize(("layer", "input_shape", "output_shape", "params"), CASES)
def test_shapes_and_counts_match_keras(layer, input_shape, output_shape, params):
    out, total, _, _ = only(layer, input_shape)
    assert out == output_shape
    assert total == params


def test_batch_normalization_splits_trainable():
    _, total, trainable, _ = only({"type": "BatchNormalization"}, (4, 4, 16))
    assert (total, trainable, total - trainable) == (64, 32, 32)


def test_macs():
    # conv: outputs x kernel cells x input channels = 26*26*32 * 9 * 1
    assert only({"type": "Conv2D", "filters": 32, "kernel_size": 3}, (28, 28, 1))[3] == 194_688
    # Dense on (5, 5, 8) -> 3 units: 25 positions * 8 * 3 = 600
    assert only({"type": "Dense", "units": 3}, (5, 5, 8))[3] == 600


def test_seed_model_summary_json():
    result = cli("summary", ROOT / "configs" / "mnist_convnet.yaml", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert [layer["params"] for layer in doc["layers"]] == [320, 0, 18_496, 0, 0, 401_536, 1_290]
    assert [layer["output_shape"] for layer in doc["layers"]] == [
        [28, 28, 32],
        [14, 14, 32],
        [14, 14, 64],
        [7, 7, 64],
        [3136],
        [128],
        [10],
    ]
    assert doc["total_params"] == 421_642
    assert doc["trainable_params"] == 421_642 and doc["non_trainable_params"] == 0
    names = [layer["name"] for layer in doc["layers"]]
    assert names == [
        "conv2d",
        "max_pooling2d",
        "conv2d_1",
        "max_pooling2d_1",
        "flatten",
        "dense",
        "dense_1",
    ]
    # receptive field: 3, then +1 (pool 2, jump 1) = 4, +2*2 = 8, +1*2 = 10
    assert [layer["receptive_field"] for layer in doc["layers"][:4]] == [
        [3, 3],
        [4, 4],
        [8, 8],
        [10, 10],
    ]
    assert doc["total_macs"] == sum(layer["macs"] for layer in doc["layers"])


def test_seed_model_table_and_explain():
    result = cli("summary", ROOT / "configs" / "mnist_convnet.yaml", "--explain")
    assert result.exit_code == 0
    text = result.stdout
    for expected in (
        "(None, 28, 28, 32)",
        "(None, 7, 7, 64)",
        "(None, 3136)",
        "Total params: 421,642",
        "Trainable params: 421,642",
        "Non-trainable params: 0",
        "3x3x1x32 + 32 = 320",
        "3x3x32x64 + 64 = 18,496",
        "3136x128 + 128 = 401,536",
        "128x10 + 10 = 1,290",
    ):
        assert expected in text, expected


def test_input_shape_override():
    result = cli(
        "summary", ROOT / "configs" / "vgg_cifar.yaml", "--json", "--input-shape", "64,64,3"
    )
    doc = json.loads(result.stdout)
    assert doc["input_shape"] == [64, 64, 3]
    # three 2x2 pools: 64 / 8 = 8 -> Flatten 8*8*128 = 8192 -> Dense 8192*128 + 128
    assert doc["layers"][11]["output_shape"] == [8192]
    assert doc["layers"][13]["params"] == 8192 * 128 + 128


@pytest.mark.parametrize(
    ("config", "total"),
    [
        # 5*5*1*6+6 + 5*5*6*16+16 + 400*120+120 + 120*84+84 + 84*10+10
        ("lenet5.yaml", 156 + 2416 + 48120 + 10164 + 850),
        # 7*1*16+16 + 5*16*32+32 + 3*32*32+32 + 32*10+10
        ("conv1d_signals.yaml", 128 + 2592 + 3104 + 330),
        # convs 896 + 9248 + 18496 + 36928 + 73856 + 147584, BN 128 + 256,
        # Dense 2048*128+128 = 262272, 128*10+10 = 1290
        ("vgg_cifar.yaml", 896 + 9248 + 18496 + 36928 + 73856 + 147584 + 384 + 262272 + 1290),
    ],
)
def test_example_configs(config, total):
    result = cli("summary", ROOT / "configs" / config, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["total_params"] == total


def test_summary_does_not_import_numba():
    import subprocess
    import sys

    code = (
        "import sys; from nbcnn.cli import app; from typer.testing import CliRunner;"
        f"r = CliRunner().invoke(app, ['summary', r'{ROOT / 'configs' / 'vgg_cifar.yaml'}']);"
        "assert r.exit_code == 0, r.output;"
        "assert 'numba' not in sys.modules, 'numba imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_to_json_totals_consistent():
    model = build(
        {"type": "Conv2D", "filters": 2, "kernel_size": 3},
        {"type": "Flatten"},
        {"type": "Dense", "units": 4},
        input_shape=(5, 5, 1),
    )
    doc = to_json(summarize(model))
    assert doc["total_params"] == (9 * 2 + 2) + (3 * 3 * 2 * 4 + 4)
    assert doc["layers"][1]["receptive_field"] is None
    assert doc["activation_bytes_per_sample"] == 4 * (3 * 3 * 2 + 18 + 4)
    assert math.isclose(doc["params_bytes"], doc["total_params"] * 4)


def test_version_option():
    import nbcnn

    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"nbcnn {nbcnn.__version__}"
