"""Error messages that point a Keras user the right way (issue 13, Found 6): each case through
the real CLI, one line naming the key, with the hint that fixes it."""

from __future__ import annotations

import pytest
from helpers import cli
from test_robustness import error_line

CONV = {"type": "Conv2D", "filters": 2, "kernel_size": 3}

CASES = {
    "activation_in_other_case": (
        {"input_shape": [8, 8, 1], "layers": [{**CONV, "activation": "Relu"}]},
        ["layers[0].activation", "did you mean 'relu'?"],
    ),
    "channels_first": (
        {"input_shape": [8, 8, 1], "layers": [{**CONV, "data_format": "channels_first"}]},
        ["layers[0].data_format", "supports only 'channels_last'"],
    ),
    "no_layers": ({"input_shape": [8, 8, 1], "layers": []}, ["layers", "got an empty list"]),
    "input_shape_on_the_first_layer": (
        {"layers": [{**CONV, "input_shape": [8, 8, 1]}]},
        ["input_shape: missing", "not on the first layer", "move it up"],
    ),
    "batch_axis": (
        {"input_shape": [None, 8, 8, 1], "layers": [CONV]},
        ["input_shape", "drop the batch axis (None)"],
    ),
    "keras_relu_layer": (
        {"input_shape": [8, 8, 1], "layers": [{"type": "ReLU"}]},
        ["layers[0].type", "{type: Activation, activation: relu}"],
    ),
    "plugin_type_not_installed": (
        {"input_shape": [8, 8, 1], "layers": [{"type": "NoSuchPluginLayer"}]},
        ["layers[0].type", "a plugin's types appear once its package is installed"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_keras_habits_get_a_hint(write_config, case):
    doc, fragments = CASES[case]
    result = cli("summary", write_config(doc))
    assert result.exit_code == 2
    error_line(result.stderr, *fragments)
