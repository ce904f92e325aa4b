"""Bad graphs are refused through the real CLI (issue 14, Acceptance): `nbcnn summary` and
`nbcnn train` on a config in a temporary folder exit with code 2 and print one line that
names the layers involved (for a merge, each input's layer and shape), no traceback, and
train leaves no run folder behind."""

from __future__ import annotations

import pytest
from helpers import cli, cli_subprocess, model_doc
from test_robustness import error_line


def conv(name: str, filters: int = 8, **more) -> dict:
    return {
        "type": "Conv2D",
        "filters": filters,
        "kernel_size": 3,
        "padding": "same",
        "name": name,
        **more,
    }


POOL = {"type": "MaxPooling2D", "pool_size": 2}

# (layers over an (8, 8, 3) input, fragments the one line must hold)
BAD_GRAPHS = {
    "unknown_name": (
        [conv("stem"), conv("branch", inputs="stme"), {"type": "Add", "inputs": ["stem", -1]}],
        ["layers[1].inputs", "'branch' (Conv2D) takes 'stme'", "did you mean 'stem'?"],
    ),
    "unknown_name_in_a_merge": (
        [conv("stem"), conv("branch"), {"type": "Add", "inputs": ["branch", "input_layr"]}],
        ["layers[2].inputs[1]", "'add' (Add) takes 'input_layr'", "did you mean 'input_layer'?"],
    ),
    "forward_reference": (
        [conv("a", inputs="b"), conv("b"), {"type": "Add", "inputs": ["a", "b"]}],
        ["layers[0].inputs", "'a' (Conv2D) takes layers[1] 'b' (Conv2D), which comes after it"],
    ),
    "forward_reference_in_a_merge": (
        [conv("a"), {"type": "Add", "inputs": ["a", "b"]}, conv("b", inputs="a")],
        ["layers[1].inputs[1]", "'add' (Add) takes layers[2] 'b' (Conv2D), which comes after"],
    ),
    "takes_itself": (
        [conv("a"), conv("b", inputs="b"), {"type": "Add", "inputs": ["a", "b"]}],
        ["layers[1].inputs", "'b' (Conv2D) takes itself"],
    ),
    "merge_takes_itself": (
        [conv("a"), {"type": "Add", "inputs": ["a", "join"], "name": "join"}],
        ["layers[1].inputs[1]", "'join' (Add) takes itself"],
    ),
    "index_before_the_input": (
        [conv("a"), conv("b", inputs=-3), {"type": "Add", "inputs": ["a", "b"]}],
        ["layers[1].inputs", "-3 from layers[1] 'b' (Conv2D)", "before the model's input"],
    ),
    "index_zero": (
        [conv("a"), conv("b", inputs=0)],
        ["layers[1].inputs", "got 0", "-1 is the previous layer"],
    ),
    "positive_index_in_a_list": (
        [conv("a"), conv("b", inputs="input_layer"), {"type": "Add", "inputs": ["a", 1]}],
        ["layers[2].inputs[1]", "got 1", "-1 is the previous layer"],
    ),
    "two_inputs_to_a_single_input_layer": (
        [conv("a"), conv("b", inputs=["a", "input_layer"])],
        ["layers[1].inputs", "'b' (Conv2D) takes one input, got 2"],
    ),
    "merge_given_one_name_not_a_list": (
        [conv("a"), conv("b"), {"type": "Add", "inputs": "a"}],
        ["layers[2].inputs", "'add' (Add) merges a list of inputs", "inputs: [a, ...]"],
    ),
    "merge_without_inputs": (
        [conv("a"), {"type": "Concatenate"}],
        ["layers[1].inputs", "'concatenate' (Concatenate) merges several inputs"],
    ),
    "unused_branch": (
        [conv("a"), conv("b", inputs="input_layer"), conv("c")],
        ["layers[0]", "'a' (Conv2D) is used by no later layer", "layers[2] 'c' (Conv2D)"],
    ),
    "add_of_16_and_32_channels": (
        [conv("a", 16), conv("b", 32, inputs="input_layer"), {"type": "Add", "inputs": ["a", "b"]}],
        ["layers[2] 'add' (Add)", "(None, 8, 8, 16) from 'a'", "(None, 8, 8, 32) from 'b'"],
    ),
    "concatenate_off_axis_mismatch": (
        [
            conv("a", 16),
            {**POOL, "name": "pooled", "inputs": "input_layer"},
            {"type": "Concatenate", "inputs": ["a", "pooled"], "name": "join"},
        ],
        [
            "layers[2] 'join' (Concatenate)",
            "match except along axis -1",
            "(None, 8, 8, 16) from 'a'",
            "(None, 4, 4, 3) from 'pooled'",
        ],
    ),
    "concatenate_along_rows_mismatching_channels": (
        [
            conv("a", 16),
            conv("b", 8, inputs="input_layer"),
            {"type": "Concatenate", "axis": 1, "inputs": ["a", "b"], "name": "join"},
        ],
        ["'join' (Concatenate)", "axis 1", "(None, 8, 8, 16) from 'a'", "(None, 8, 8, 8) from 'b'"],
    ),
    "subtract_of_three": (
        [conv("a"), conv("b"), {"type": "Subtract", "inputs": ["a", "b", "input_layer"]}],
        [
            "layers[2] 'subtract' (Subtract)",
            "exactly 2 inputs, got 3",
            "from 'a'",
            "from 'b'",
            "(None, 8, 8, 3) from 'input_layer'",
        ],
    ),
    "mismatch_deep_in_the_graph": (
        [
            conv("stem"),
            {**POOL, "name": "down"},
            conv("wide", 16, inputs="down"),
            {"type": "Add", "inputs": ["stem", "wide"], "name": "join"},
        ],
        ["layers[3] 'join' (Add)", "(None, 8, 8, 8) from 'stem'", "(None, 4, 4, 16) from 'wide'"],
    ),
    "empty_list": (
        [conv("a"), {"type": "Add", "inputs": []}],
        ["layers[1].inputs", "at least one input"],
    ),
    "a_number_that_is_no_index": (
        [conv("a"), conv("b", inputs=1.5)],
        ["layers[1].inputs", "got 1.5"],
    ),
    "a_layer_named_input_layer": (
        [conv("input_layer")],
        ["layers[0].name", "'input_layer' names the model's input"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_GRAPHS))
def test_bad_graph_is_one_line_exit_2_in_summary_and_train(case, write_config, tmp_path):
    layers, fragments = BAD_GRAPHS[case]
    config = write_config(model_doc(*layers, input_shape=(8, 8, 3)))
    summary = cli("summary", config)
    assert summary.exit_code == 2, summary.stdout
    line = error_line(summary.stderr, str(config), *fragments)
    train = cli("train", config, "--output", tmp_path / "run")
    assert train.exit_code == 2, train.stdout
    assert error_line(train.stderr) == line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "case", ["unknown_name", "add_of_16_and_32_channels", "unused_branch", "forward_reference"]
)
def test_bad_graph_in_a_real_process(case, write_config, tmp_path):
    """As a user runs it: a fresh interpreter, nothing but the one line on stderr."""
    layers, fragments = BAD_GRAPHS[case]
    config = write_config(model_doc(*layers, input_shape=(8, 8, 3)))
    for command in (["summary", config], ["train", config, "--output", tmp_path / "run"]):
        proc = cli_subprocess(*command)
        assert proc.returncode == 2, proc.stdout
        error_line(proc.stderr, *fragments)
        assert proc.stderr.count("\n") == 1
