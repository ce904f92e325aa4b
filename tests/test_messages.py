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


def test_a_data_shape_that_does_not_fit_names_the_config_and_the_data(write_config):
    """Found 6: a train-time shape error had no file name (the config's)."""
    doc = {
        "input_shape": [10, 10, 1],
        "layers": [{"type": "Flatten"}, {"type": "Dense", "units": 10, "activation": "softmax"}],
        "train": {"data": {"dataset": "digits"}},
    }
    config = write_config(doc)
    result = cli("train", config, "--output", config.parent / "run")
    assert result.exit_code == 2
    error_line(result.stderr, f"{config}: input_shape: [10, 10, 1]", "digits", "(8, 8, 1)")
    assert not (config.parent / "run").exists()
