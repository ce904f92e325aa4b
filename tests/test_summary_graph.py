"""Summaries of graph models against Keras 3's functional ``model.summary()``, derived by hand.

Every expected number is worked out in the comment beside it, never copied from nbcnn:
- shapes: Conv2D 'same' -> ceil(n / s), 'valid' -> floor((n - k) / s) + 1; pooling likewise;
  Add / Average keep their inputs' shape; Concatenate sums the channels;
- params: Conv2D kh*kw*c_in*filters + filters, Dense n_in*units + units, BatchNormalization
  4*C (gamma, beta trainable; moving mean and variance not); merging layers have none;
- Keras 3's functional table (keras/src/utils/summary_utils.py, print_summary): a first row
  ``input_layer (InputLayer)``, (None, *input_shape), 0 params, "-" connected; then each
  layer's "Connected to" is ``producer[node][tensor]`` per input, joined by ", " (rich wraps
  them one a line); node 0 and tensor 0 here, each layer being called once with one output;
- receptive field (the chain rule nbcnn already uses): r_out = r_in + (k_eff - 1) * j_in,
  j_out = j_in * stride, from the layer's OWN inputs; a merge starts from the elementwise
  maximum of its inputs' r and of their j; Flatten / global pooling end it (None).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from helpers import ROOT, cli, model_doc

from nbcnn.model import Sequential
from nbcnn.spec import parse_spec
from nbcnn.summary import merged_field, render_table, summarize, to_json


def build(*layers, input_shape):
    return Sequential.from_spec(parse_spec(model_doc(*layers, input_shape=input_shape)))


def conv(filters, kernel_size, **kwargs):
    return {"type": "Conv2D", "filters": filters, "kernel_size": kernel_size, **kwargs}


def table_rows(text: str) -> dict[str, list[str]]:
    """The table's rows by layer name: the cells of each (columns apart by 3+ spaces), a
    "Connected to" of several lines joined by newlines."""
    lines = text.split("\n")
    start = next(k for k, line in enumerate(lines) if line.startswith(" \u2500")) + 1
    rows: dict[str, list[str]] = {}
    last = None
    for line in lines[start:]:
        if not line:
            break
        if line.startswith("   "):  # a continuation line: the next input of a merge
            rows[last][3] += "\n" + line.strip()
            continue
        cells = re.split(r"\s{3,}", line.strip())
        last = cells[0].split(" (")[0]
        rows[last] = cells
    return rows


def column(summary, key):
    return [getattr(row, key) for row in summary.rows]


# ---------------------------------------------------------------- residual, no projection

#: input (8, 8, 4); two 3x3 'same' convs keep 8x8x4; Add takes the input itself (written
#: FIRST, so taking the first input's field, 1, would be wrong: the max is the branch's 5).
IDENTITY = [
    conv(4, 3, padding="same", activation="relu"),
    conv(4, 3, padding="same"),
    {"type": "Add", "inputs": ["input_layer", "conv2d_1"]},
    {"type": "Activation", "activation": "relu"},
    {"type": "GlobalAveragePooling2D"},
    {"type": "Dense", "units": 2},
]


def test_residual_block_without_projection():
    summary = summarize(build(*IDENTITY, input_shape=(8, 8, 4)))
    assert summary.is_graph
    assert column(summary, "name") == [
        "conv2d",
        "conv2d_1",
        "add",
        "activation",
        "global_average_pooling2d",
        "dense",
    ]
    assert column(summary, "output_shape") == [
        [8, 8, 4],  # 'same': ceil(8 / 1) = 8
        [8, 8, 4],
        [8, 8, 4],  # Add: its inputs' shape
        [8, 8, 4],
        [4],  # global average pooling: the channels
        [2],
    ]
    # 3*3*4*4 + 4 = 148 twice; Dense 4*2 + 2 = 10
    assert column(summary, "params") == [148, 148, 0, 0, 0, 10]
    assert summary.total_params == 306 and summary.trainable_params == 306
    assert column(summary, "inputs") == [
        ["input_layer"],
        ["conv2d"],
        ["input_layer", "conv2d_1"],
        ["add"],
        ["activation"],
        ["global_average_pooling2d"],
    ]
    # conv 1 + 2*1 = 3, conv 3 + 2*1 = 5; Add: max(1, 5) = 5; global pooling ends it
    assert column(summary, "receptive_field") == [[3, 3], [5, 5], [5, 5], [5, 5], None, None]
    assert column(summary, "jump") == [[1, 1], [1, 1], [1, 1], [1, 1], None, None]

    text = render_table(summary)
    rows = table_rows(text)
    assert list(rows)[0] == "input_layer"
    assert rows["input_layer"] == [
        "input_layer (InputLayer)",
        "(None, 8, 8, 4)",
        "0",
        "-",
        "-",
        "-",
        "-",
    ]
    assert rows["conv2d"][:4] == ["conv2d (Conv2D)", "(None, 8, 8, 4)", "148", "input_layer[0][0]"]
    assert rows["add"][:4] == [
        "add (Add)",
        "(None, 8, 8, 4)",
        "0",
        "input_layer[0][0],\nconv2d_1[0][0]",
    ]
    assert rows["add"][6] == "5x5 /1x1"
    assert rows["dense"][3] == "global_average_pooling2d[0][0]"
    # 306 * 4 B = 1224 B = 1.195 KB, as Keras rounds it: 1.20 KB
    assert " Total params: 306 (1.20 KB)" in text.split("\n")
    assert " Trainable params: 306 (1.20 KB)" in text.split("\n")
    assert " Non-trainable params: 0 (0 B)" in text.split("\n")


# ---------------------------------------------------------------- residual, 1x1 projection

#: input (8, 8, 3). Branch: 3x3/2 'same' conv -> ceil(8 / 2) = 4, BN, ReLU, 3x3 'same' conv.
#: Shortcut: a 1x1/2 conv of the INPUT (the previous row is the branch's conv), then Add.
PROJECTION = [
    conv(8, 3, strides=2, padding="same"),
    {"type": "BatchNormalization"},
    {"type": "Activation", "activation": "relu"},
    conv(8, 3, padding="same"),
    conv(8, 1, strides=2, inputs="input_layer", name="shortcut"),
    {"type": "Add", "inputs": ["shortcut", "conv2d_1"]},
]


def test_residual_block_with_projection_shortcut():
    summary = summarize(build(*PROJECTION, input_shape=(8, 8, 3)))
    assert column(summary, "output_shape") == [[4, 4, 8]] * 6
    # 3*3*3*8 + 8 = 224; BN 4*8 = 32; 3*3*8*8 + 8 = 584; 1*1*3*8 + 8 = 32
    assert column(summary, "params") == [224, 32, 0, 584, 32, 0]
    # BN's moving mean and variance (2*8 = 16) do not train
    assert column(summary, "non_trainable_params") == [0, 16, 0, 0, 0, 0]
    assert (summary.total_params, summary.trainable_params) == (872, 856)
    assert summary.non_trainable_params == 16
    # the shortcut's MACs: 4*4*8 outputs x 1*1 kernel x 3 input channels
    assert summary.rows[4].macs == 384
    assert summary.rows[4].inputs == ["input_layer"]
    assert summary.rows[5].inputs == ["shortcut", "conv2d_1"]
    # conv/2: 1 + 2*1 = 3, jump 2; BN and ReLU keep it; conv: 3 + 2*2 = 7, jump 2;
    # shortcut from the input (1, jump 1): 1 + 0 = 1, jump 2 (from the previous row it would
    # be 7, jump 4); Add: max(1, 7) = 7, max(2, 2) = 2
    assert column(summary, "receptive_field") == [[3, 3]] * 3 + [[7, 7], [1, 1], [7, 7]]
    assert column(summary, "jump") == [[2, 2]] * 6

    text = render_table(summary, extras=False)
    rows = table_rows(text)
    assert rows["input_layer"] == ["input_layer (InputLayer)", "(None, 8, 8, 3)", "0", "-"]
    assert rows["shortcut"] == ["shortcut (Conv2D)", "(None, 4, 4, 8)", "32", "input_layer[0][0]"]
    assert rows["add"] == ["add (Add)", "(None, 4, 4, 8)", "0", "shortcut[0][0],\nconv2d_1[0][0]"]
    assert rows["conv2d_1"][3] == "activation[0][0]"
    lines = text.split("\n")
    # 872*4 = 3488 B = 3.406 KB; 856*4 = 3424 B = 3.344 KB; 16*4 = 64 B
    assert " Total params: 872 (3.41 KB)" in lines
    assert " Trainable params: 856 (3.34 KB)" in lines
    assert " Non-trainable params: 16 (64 B)" in lines


# ---------------------------------------------------------------- concatenation of branches

#: input (6, 6, 2): a 1x1 branch (3 channels) and a 3x3 'same' branch (5 channels) of the
#: input, concatenated along the channels with the input itself: 3 + 5 + 2 = 10.
CONCAT = [
    conv(3, 1, name="branch_a"),
    conv(5, 3, padding="same", inputs="input_layer", name="branch_b"),
    {"type": "Concatenate", "inputs": ["branch_a", "branch_b", "input_layer"]},
    {"type": "MaxPooling2D"},
    {"type": "Flatten"},
    {"type": "Dense", "units": 2},
]


def test_concatenate_branches_along_channels():
    summary = summarize(build(*CONCAT, input_shape=(6, 6, 2)))
    assert column(summary, "output_shape") == [
        [6, 6, 3],
        [6, 6, 5],
        [6, 6, 10],  # channels 3 + 5 + 2
        [3, 3, 10],  # pool 2: floor((6 - 2) / 2) + 1 = 3
        [90],  # 3*3*10
        [2],
    ]
    # 1*1*2*3 + 3 = 9; 3*3*2*5 + 5 = 95; Dense 90*2 + 2 = 182
    assert column(summary, "params") == [9, 95, 0, 0, 0, 182]
    assert summary.total_params == 9 + 95 + 182
    # 1x1: 1; 3x3: 3; Concatenate: max(1, 3, 1) = 3; pool 2: 3 + 1*1 = 4, jump 2
    assert column(summary, "receptive_field")[:4] == [[1, 1], [3, 3], [3, 3], [4, 4]]
    assert column(summary, "jump")[:4] == [[1, 1], [1, 1], [1, 1], [2, 2]]

    rows = table_rows(render_table(summary))
    assert rows["branch_b"][3] == "input_layer[0][0]"
    assert rows["concatenate"][:4] == [
        "concatenate (Concatenate)",
        "(None, 6, 6, 10)",
        "0",
        "branch_a[0][0],\nbranch_b[0][0],\ninput_layer[0][0]",
    ]
    assert rows["concatenate"][6] == "3x3 /1x1"


def test_a_merge_row_takes_as_many_lines_as_inputs():
    text = render_table(summarize(build(*CONCAT, input_shape=(6, 6, 2))))
    lines = text.split("\n")
    at = next(k for k, line in enumerate(lines) if line.startswith("  concatenate "))
    start = lines[at].index("branch_a[0][0],")
    # the next inputs sit under the first, nothing else on their lines
    assert lines[at + 1] == " " * start + "branch_b[0][0],"
    assert lines[at + 2] == " " * start + "input_layer[0][0]"
    assert lines[at + 3].startswith("  max_pooling2d (MaxPooling2D)")
    # the header names the column where the connections start
    assert lines[2].index("Connected to") == start


# ---------------------------------------------------------------- an output used twice

#: input (10, 10, 1): a 'valid' 3x3 stem (8x8x4) feeds two later layers, a 3x3 'same' conv
#: and a 2x2 stride-1 'same' max pooling, which Average merges.
FAN_OUT = [
    conv(4, 3, name="stem"),
    conv(4, 3, padding="same", inputs="stem", name="left"),
    {
        "type": "MaxPooling2D",
        "pool_size": 2,
        "strides": 1,
        "padding": "same",
        "inputs": "stem",
        "name": "right",
    },
    {"type": "Average", "inputs": ["left", "right"]},
    {"type": "Flatten"},
    {"type": "Dense", "units": 3},
]


def test_layer_output_used_twice():
    model = build(*FAN_OUT, input_shape=(10, 10, 1))
    summary = summarize(model)
    assert column(summary, "output_shape") == [
        [8, 8, 4],  # floor((10 - 3) / 1) + 1 = 8
        [8, 8, 4],
        [8, 8, 4],  # 'same' stride 1: ceil(8 / 1) = 8
        [8, 8, 4],
        [256],  # 8*8*4
        [3],
    ]
    # 3*3*1*4 + 4 = 40; 3*3*4*4 + 4 = 148; Dense 256*3 + 3 = 771
    assert column(summary, "params") == [40, 148, 0, 0, 0, 771]
    assert summary.total_params == 959
    assert column(summary, "inputs")[1:4] == [["stem"], ["stem"], ["left", "right"]]
    # stem 3; left 3 + 2 = 5; right from the stem: 3 + 1 = 4 (from the previous row, left,
    # it would be 6); Average: max(5, 4) = 5
    assert column(summary, "receptive_field") == [[3, 3], [5, 5], [4, 4], [5, 5], None, None]

    rows = table_rows(render_table(summary))
    assert rows["left"][3] == rows["right"][3] == "stem[0][0]"
    assert rows["average"][3] == "left[0][0],\nright[0][0]"
    assert rows["right"][6] == "4x4 /1x1"
    assert rows["average"][6] == "5x5 /1x1"
    assert rows["flatten"][3] == "average[0][0]" and rows["flatten"][6] == "-"


# ---------------------------------------------------------------- receptive field choices


def test_merged_field_takes_the_largest_per_axis():
    # fields (3, 5) and (7, 1): (7, 5); jumps (1, 2) and (2, 1): (2, 2), the max per axis
    assert merged_field([((3, 5), (1, 2)), ((7, 1), (2, 1))]) == ((7, 5), (2, 2))
    assert merged_field([((3, 3), (1, 1))]) == ((3, 3), (1, 1))
    assert merged_field([((3, 3), (1, 1)), None]) is None


def test_an_input_without_spatial_map_ends_the_merged_field():
    # squeeze-and-excitation-like: the map (8, 8, 4) times its per-channel mean (4,), which
    # Keras broadcasts to (8, 8, 4); the mean has no field, so neither has the product nor
    # the conv after it
    summary = summarize(
        build(
            conv(4, 3, padding="same"),
            {"type": "GlobalAveragePooling2D"},
            {"type": "Multiply", "inputs": ["conv2d", "global_average_pooling2d"]},
            conv(2, 1),
            input_shape=(8, 8, 4),
        )
    )
    assert column(summary, "output_shape") == [[8, 8, 4], [4], [8, 8, 4], [8, 8, 2]]
    assert column(summary, "receptive_field") == [[3, 3], None, None, None]


# ---------------------------------------------------------------- chains stay as they were

CHAIN = [conv(2, 3), {"type": "Flatten"}, {"type": "Dense", "units": 4}]

#: Keras's Sequential table as nbcnn printed it before graphs: no input row, no "Connected
#: to". conv: 3*3*1*2 + 2 = 20 params, 3*3*2 outputs x 9 cells x 1 channel = 162 MACs,
#: 18 floats = 72 B; Flatten 18; Dense 18*4 + 4 = 76 params, 72 MACs, 16 B.
CHAIN_TABLE = """\
Model: "model"

  Layer (type)        Output Shape      Param #   MACs   Memory   RF /jump
 ──────────────────────────────────────────────────────────────────────────
  conv2d (Conv2D)     (None, 3, 3, 2)        20    162     72 B   3x3 /1x1
  flatten (Flatten)   (None, 18)              0      0     72 B          -
  dense (Dense)       (None, 4)              76     72     16 B          -

 Total params: 96 (384 B)
 Trainable params: 96 (384 B)
 Non-trainable params: 0 (0 B)
 Total MACs: 234 (234) per sample
 Activation memory: 160 B per sample (float32)
 MACs = multiply-accumulates (1 MAC = 2 FLOPs); RF /jump = receptive field and effective \
stride in input pixels"""


@pytest.mark.parametrize(
    "second",
    [
        {},  # no inputs: the previous layer
        {"inputs": -1},  # said explicitly
        {"inputs": "conv2d"},  # named: still the previous layer
    ],
)
def test_chain_table_is_unchanged(second):
    model = build(CHAIN[0], {**CHAIN[1], **second}, CHAIN[2], input_shape=(5, 5, 1))
    summary = summarize(model)
    assert not summary.is_graph
    assert render_table(summary) == CHAIN_TABLE
    assert "Connected to" not in render_table(summary, extras=False)
    # --json: each layer's inputs, the previous layer's name
    doc = to_json(summary)
    assert [layer["inputs"] for layer in doc["layers"]] == [
        ["input_layer"],
        ["conv2d"],
        ["flatten"],
    ]


def test_json_keeps_its_keys_and_gains_inputs():
    doc = to_json(summarize(build(*PROJECTION, input_shape=(8, 8, 3))))
    layer = doc["layers"][5]
    assert set(layer) == {
        "name",
        "type",
        "distribution",
        "inputs",
        "output_shape",
        "params",
        "trainable_params",
        "non_trainable_params",
        "macs",
        "activation_bytes",
        "receptive_field",
        "jump",
        "explain",
    }
    assert layer["inputs"] == ["shortcut", "conv2d_1"]
    assert doc["total_params"] == 872 and doc["non_trainable_params"] == 16
    # 6 layers of 4*4*8 floats = 6 * 512 B; the input not counted
    assert doc["activation_bytes_per_sample"] == 6 * 512


def test_model_summary_prints_the_functional_table():
    model = build(*FAN_OUT, input_shape=(10, 10, 1))
    lines: list[str] = []
    assert model.summary(print_fn=lines.append) is None
    assert lines == render_table(summarize(model)).split("\n")
    assert any(line.startswith("  input_layer (InputLayer)") for line in lines)


# ---------------------------------------------------------------- through the real CLI


@pytest.fixture
def resnet_config(tmp_path):
    path = tmp_path / "block.yaml"
    doc = {"name": "block", **model_doc(*PROJECTION, input_shape=(8, 8, 3))}
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_cli_summary_of_a_graph(resnet_config):
    result = cli("summary", resnet_config)
    assert result.exit_code == 0, result.stderr
    rows = table_rows(result.stdout)
    assert list(rows) == [
        "input_layer",
        "conv2d",
        "batch_normalization",
        "activation",
        "conv2d_1",
        "shortcut",
        "add",
    ]
    assert rows["input_layer"][:4] == ["input_layer (InputLayer)", "(None, 8, 8, 3)", "0", "-"]
    assert rows["add"][3] == "shortcut[0][0],\nconv2d_1[0][0]"
    assert rows["add"][6] == "7x7 /2x2"
    assert " Total params: 872 (3.41 KB)" in result.stdout.split("\n")

    plain = cli("summary", resnet_config, "--plain")
    assert plain.exit_code == 0
    assert table_rows(plain.stdout)["add"] == [
        "add (Add)",
        "(None, 4, 4, 8)",
        "0",
        "shortcut[0][0],\nconv2d_1[0][0]",
    ]


def test_cli_json_and_explain_of_a_graph(resnet_config):
    result = cli("summary", resnet_config, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [layer["inputs"] for layer in doc["layers"]] == [
        ["input_layer"],
        ["conv2d"],
        ["batch_normalization"],
        ["activation"],
        ["input_layer"],
        ["shortcut", "conv2d_1"],
    ]
    assert [layer["params"] for layer in doc["layers"]] == [224, 32, 0, 584, 32, 0]

    result = cli("summary", resnet_config, "--explain")
    assert result.exit_code == 0, result.stderr
    explained = result.stdout.split("How each count is made:\n")[1].split("\n")
    assert explained[0].split()[:5] == ["conv2d", "3x3x3x8", "+", "8", "="]
    assert explained[4].split()[:2] == ["shortcut", "1x1x3x8"]
    assert explained[5].split() == ["add", "no", "weights", "=", "0"]


def test_cli_summary_of_a_graph_does_not_import_numba(resnet_config):
    code = (
        "import sys; from nbcnn.cli import app; from typer.testing import CliRunner;"
        f"r = CliRunner().invoke(app, ['summary', r'{resnet_config}']);"
        "assert r.exit_code == 0, r.output; assert 'Connected to' in r.output;"
        "assert 'numba' not in sys.modules, 'numba imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docs_example_is_what_the_cli_prints(tmp_path):
    """docs/cli.md shows a config and its table: the table must be the real output."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    section = text.split("## Summaries of graph models")[1].split("\n## ")[0]
    config = section.split("```yaml\n")[1].split("```")[0]
    shown = section.split("```text\n")[1].split("```")[0]
    path = tmp_path / "block.yaml"
    path.write_text(config, encoding="utf-8")
    result = cli("summary", path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == shown
