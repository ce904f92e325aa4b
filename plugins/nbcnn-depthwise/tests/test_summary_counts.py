"""``nbcnn summary --json`` with the installed plugin: Keras's shapes and counts, by hand.

Runs the real command in a fresh process, so the layers come through the ``nbcnn.layers``
entry points of the installed nbcnn-depthwise distribution.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
MOBILENET = REPO / "configs" / "mobilenet_digits.yaml"

MODEL = {
    "name": "separable",
    "input_shape": [32, 32, 3],
    "layers": [
        {"type": "DepthwiseConv2D", "kernel_size": 3, "depth_multiplier": 2},
        {
            "type": "SeparableConv2D",
            "filters": 16,
            "kernel_size": 3,
            "strides": 2,
            "padding": "same",
        },
        {"type": "DepthwiseConv2D", "kernel_size": [3, 5], "dilation_rate": 2, "use_bias": False},
        {"type": "SeparableConv2D", "filters": 8, "kernel_size": 1, "depth_multiplier": 3},
        {"type": "GlobalAveragePooling2D"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
    ],
}

# Derived by hand with Keras's formulas. Output lengths: 'valid' floor((n - k_eff) / s) + 1
# with k_eff = (k - 1) * d + 1; 'same' ceil(n / s). Parameters: DepthwiseConv2D
# kh*kw*C*dm + C*dm; SeparableConv2D kh*kw*C*dm + C*dm*filters + filters.
EXPECTED = [
    # name, output shape, params, MACs
    # 32 - 3 + 1 = 30; 3x3x3x2 + 6 = 60; 30*30 positions x 6 outputs x 9 taps
    ("depthwise_conv2d", [30, 30, 6], 3 * 3 * 3 * 2 + 6, 30 * 30 * 6 * 9),
    # ceil(30 / 2) = 15; 3x3x6x1 + 6x16 + 16 = 166; depthwise 15*15*6*9 + pointwise 15*15*6*16
    ("separable_conv2d", [15, 15, 16], 54 + 96 + 16, 15 * 15 * 6 * 9 + 15 * 15 * 6 * 16),
    # k_eff (5, 9): 15 - 5 + 1 = 11, 15 - 9 + 1 = 7; 3x5x16x1 = 240, no bias
    ("depthwise_conv2d_1", [11, 7, 16], 3 * 5 * 16, 11 * 7 * 16 * 15),
    # 1x1x16x3 = 48 + 48x8 = 384 + 8 = 440
    ("separable_conv2d_1", [11, 7, 8], 48 + 384 + 8, 11 * 7 * 48 + 11 * 7 * 48 * 8),
    ("global_average_pooling2d", [8], 0, 0),
    ("dense", [10], 8 * 10 + 10, 80),
]


def nbcnn(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nbcnn.cli", *map(str, args)], capture_output=True, text=True
    )


def test_summary_matches_keras_counts_and_shapes(tmp_path):
    path = tmp_path / "separable.yaml"
    path.write_text(yaml.safe_dump(MODEL, sort_keys=False))
    proc = nbcnn("summary", path, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    got = [(r["name"], r["output_shape"], r["params"], r["macs"]) for r in doc["layers"]]
    assert got == EXPECTED
    assert doc["total_params"] == 60 + 166 + 240 + 440 + 90 == 996
    assert doc["non_trainable_params"] == 0
    dists = [r["distribution"] for r in doc["layers"]]
    assert dists == ["nbcnn-depthwise"] * 4 + ["nbcnn"] * 2
    # receptive field: 3, then 3 + 2*1 = 5 (jump 2), then (5 + 4*2, 5 + 8*2) = (13, 21)
    assert doc["layers"][2]["receptive_field"] == [13, 21]
    assert doc["layers"][2]["jump"] == [2, 2]


def test_mobilenet_config_counts():
    """The counts written in configs/mobilenet_digits.yaml's header."""
    proc = nbcnn("summary", MOBILENET, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    params = {r["name"]: r["params"] for r in doc["layers"]}
    assert params["depthwise_conv2d"] == 3 * 3 * 16
    assert params["depthwise_conv2d_1"] == 3 * 3 * 32 * 2
    assert params["separable_conv2d"] == 3 * 3 * 64 + 64 * 64 + 64 == 4736
    assert doc["total_params"] == 7530
    # BatchNormalization's moving mean and variance: 2 x (16 + 16 + 32 + 64 + 64)
    assert doc["non_trainable_params"] == 384
    shapes = {r["name"]: r["output_shape"] for r in doc["layers"]}
    assert shapes["depthwise_conv2d_1"] == [4, 4, 64]  # stride 2 'same': ceil(8 / 2)


def test_summary_does_not_import_numba():
    """The plugin's layers are imported by every summary; its kernels must not be."""
    code = (
        "import sys; from nbcnn.model import load_model; from nbcnn.summary import summarize; "
        f"summarize(load_model({str(MOBILENET)!r})); print('numba' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
