"""ONNX export: every built-in layer, run in ONNX Runtime and compared with ``model.predict``."""

from __future__ import annotations

import re
import textwrap

import numpy as np
import onnx
import pytest

from nbcnn.errors import DataError
from nbcnn.export_onnx import EXPORTERS, run_onnx, to_onnx
from nbcnn.layers.base import Layer, ParamSpec
from nbcnn.layers.conv import Conv2D
from nbcnn.model import Sequential, load_model
from nbcnn.registry import registry
from tests.helpers import ROOT, cli, model_doc

TOLERANCE = 1e-4  # max abs difference between ONNX Runtime and nbcnn


def randomise_batch_norm(model, rng):
    """Moving statistics and affine weights away from their identity defaults."""
    for layer in model.layers:
        if "moving_mean" in layer.params:
            c = layer.params["moving_mean"].shape
            layer.params["moving_mean"][...] = rng.normal(0, 0.5, c)
            layer.params["moving_variance"][...] = rng.uniform(0.2, 3.0, c)
            for name in ("gamma", "beta"):
                if name in layer.params:
                    layer.params[name][...] = rng.normal(1 if name == "gamma" else 0, 0.3, c)


def assert_onnx_matches(model, seed=0, n=5, opset=17):
    rng = np.random.default_rng(seed)
    randomise_batch_norm(model, rng)
    x = rng.random((n, *model.input_shape), dtype=np.float32)
    proto = to_onnx(model, opset)
    got = run_onnx(proto, x)
    want = model.predict(x)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < TOLERANCE
    return proto


@pytest.mark.parametrize(
    "config", ["mnist_convnet.yaml", "lenet5.yaml", "conv1d_signals.yaml", "vgg_cifar.yaml"]
)
def test_shipped_configs_match_predict(config):
    model = load_model(ROOT / "configs" / config).initialize(1)
    proto = assert_onnx_matches(model)
    assert proto.opset_import[0].version >= 17
    # 'same' and 'causal' are explicit pads, never auto_pad.
    attributes = {a.name for node in proto.graph.node for a in node.attribute}
    assert "auto_pad" not in attributes


def test_batchnorm_same_padding_stride_two(write_config):
    doc = model_doc(
        {"type": "Conv2D", "filters": 6, "kernel_size": 3, "strides": 2, "padding": "same"},
        {"type": "BatchNormalization"},
        {"type": "Activation", "activation": "relu"},
        {"type": "Conv2D", "filters": 4, "kernel_size": 4, "strides": 2, "padding": "same"},
        {"type": "BatchNormalization", "center": False, "epsilon": 0.01},
        {"type": "AveragePooling2D", "pool_size": 3, "strides": 2, "padding": "same"},
        {"type": "MaxPooling2D", "pool_size": 2, "padding": "same"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 7},  # logits, no softmax to flatten differences
        input_shape=(14, 12, 2),
    )
    model = load_model(write_config(doc)).initialize(2)
    # Keras's asymmetric 'same' split (the larger half after) is exercised.
    assert model.layers[0]._pads == ((0, 1), (0, 1))
    assert model.layers[3]._pads == ((1, 2), (1, 1))
    assert_onnx_matches(model, seed=3)


def test_every_builtin_layer_exports(write_config):
    doc = model_doc(
        {"type": "ZeroPadding2D", "padding": [[1, 2], [0, 3]]},
        {
            "type": "Conv2D",
            "filters": 3,
            "kernel_size": [3, 2],
            "dilation_rate": 2,
            "activation": "elu",
            "use_bias": False,
        },
        {"type": "Cropping2D", "cropping": [[1, 0], [2, 1]]},
        {"type": "UpSampling2D", "size": [2, 3]},
        {"type": "MaxPooling2D", "pool_size": 3, "strides": 2},
        {"type": "Dropout", "rate": 0.5},
        {"type": "BatchNormalization", "scale": False},
        {"type": "Activation", "activation": "swish"},
        {"type": "Reshape", "target_shape": [-1, 3]},
        {
            "type": "Conv1D",
            "filters": 4,
            "kernel_size": 3,
            "padding": "same",
            "activation": "relu6",
        },
        {"type": "AveragePooling1D", "pool_size": 2, "padding": "same"},
        {"type": "MaxPooling1D", "pool_size": 2, "strides": 1},
        {"type": "Dense", "units": 5, "activation": "softplus"},
        {"type": "Activation", "activation": "sigmoid"},
        {"type": "GlobalMaxPooling1D", "keepdims": True},
        {"type": "Reshape", "target_shape": [1, 1, 5]},
        {"type": "GlobalAveragePooling2D"},
        {"type": "Dense", "units": 3, "activation": "tanh"},
        input_shape=(10, 9, 2),
    )
    first = model = load_model(write_config(doc)).initialize(4)
    assert_onnx_matches(model)
    # The remaining built-ins, in a second model.
    doc = model_doc(
        {"type": "Conv1D", "filters": 2, "kernel_size": 3, "strides": 2},
        {"type": "GlobalAveragePooling1D", "keepdims": True},
        {"type": "Reshape", "target_shape": [1, 1, 2]},
        {"type": "GlobalMaxPooling2D"},
        {"type": "Dense", "units": 3, "activation": "softmax"},
        input_shape=(9, 3),
    )
    model = load_model(write_config(doc)).initialize(5)
    assert_onnx_matches(model)
    exported = {type(layer) for m in (first, model) for layer in m.layers}
    # The merging layers, and the input scaling layers, in a graph.
    model = load_model(write_config(merges_doc())).initialize(6)
    assert_onnx_matches(model)
    exported |= {type(layer) for layer in model.layers}
    builtin = {e.cls for e in registry().entries() if e.distribution == "nbcnn"}
    assert builtin <= set(EXPORTERS)
    assert builtin <= exported, "a built-in layer that no model above exports"


def merges_doc():
    """A graph with every merging layer: more than two inputs, an input taken twice, the model
    input taken again, Keras's broadcasting of a (C,) input over (H, W, C), Concatenate along
    the channels and along the width."""
    return {
        "input_shape": [6, 5, 2],
        "layers": [
            {"type": "Rescaling", "scale": 0.5, "offset": 0.25, "name": "scaled"},
            {"type": "Normalization", "mean": [0.1, 0.3], "variance": [1.0, 2.0]},
            {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same", "name": "a"},
            {"type": "Conv2D", "filters": 4, "kernel_size": 1, "name": "b", "inputs": "scaled"},
            {"type": "Add", "inputs": ["a", "b"]},
            {"type": "Subtract", "inputs": ["add", "a"]},
            {"type": "Multiply", "inputs": ["subtract", "b", "a"]},
            {"type": "GlobalAveragePooling2D", "inputs": "a", "name": "gap"},
            {"type": "Average", "inputs": ["multiply", "gap"]},
            {"type": "AveragePooling2D", "pool_size": 3, "strides": 1, "padding": "same"},
            {"type": "Maximum", "inputs": ["average_pooling2d", "b", "gap"]},
            {"type": "Minimum", "inputs": ["maximum", "add"]},
            {"type": "Concatenate", "inputs": ["minimum", "input_layer", "b"]},
            {"type": "Concatenate", "axis": 2, "inputs": [-1, -1], "name": "wide"},
            {"type": "Flatten"},
            {"type": "Dense", "units": 3},
        ],
    }


def conv(filters, kernel_size=3, **more):
    return {
        "type": "Conv2D",
        "filters": filters,
        "kernel_size": kernel_size,
        "padding": "same",
    } | more


#: Graph models: ResNet's identity shortcut (with the conv+ReLU+pool fusion in its stem), a
#: projection shortcut (strided 1x1 conv and BatchNormalization beside the strided pair),
#: Inception-style branches concatenated, and one output taken by four layers (fan-out).
GRAPHS = {
    "residual": [
        conv(6, activation="relu", name="stem"),
        {"type": "MaxPooling2D", "pool_size": 2},
        conv(6, activation="relu"),
        conv(6),
        {"type": "Add", "inputs": [-1, "max_pooling2d"]},
        {"type": "Activation", "activation": "relu"},
        {"type": "GlobalAveragePooling2D"},
        {"type": "Dense", "units": 4},
    ],
    "projection": [
        conv(4, activation="relu", name="stem"),
        conv(8, strides=2),
        {"type": "BatchNormalization"},
        {"type": "Activation", "activation": "relu"},
        conv(8),
        {"type": "BatchNormalization"},
        conv(8, 1, strides=2, inputs="stem", name="shortcut"),
        {"type": "BatchNormalization", "name": "shortcut_bn"},
        {"type": "Add", "inputs": ["batch_normalization_1", "shortcut_bn"]},
        {"type": "Activation", "activation": "relu"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 3},
    ],
    "concatenation": [
        conv(4, 1, activation="relu", name="branch_1x1"),
        conv(3, 1, activation="relu", inputs="input_layer"),
        conv(5, activation="relu", name="branch_3x3"),
        {"type": "MaxPooling2D", "pool_size": 3, "strides": 1, "padding": "same",
         "inputs": "input_layer"},
        conv(2, 1, name="branch_pool"),
        {"type": "Concatenate", "inputs": ["branch_1x1", "branch_3x3", "branch_pool"]},
        {"type": "GlobalMaxPooling2D"},
        {"type": "Dense", "units": 3},
    ],
    "fan-out": [
        conv(4, name="trunk"),
        conv(4, inputs="trunk", name="left"),
        conv(4, 1, inputs="trunk", name="right"),
        {"type": "Multiply", "inputs": ["left", "right", "trunk"]},
        {"type": "Concatenate", "inputs": ["multiply", "trunk"]},
        {"type": "Flatten"},
        {"type": "Dense", "units": 2},
    ],
}  # fmt: skip


@pytest.mark.parametrize("name", GRAPHS)
def test_graphs_match_predict(write_config, name):
    doc = {"input_shape": [8, 8, 3], "layers": GRAPHS[name]}
    model = load_model(write_config(doc)).initialize(3)
    assert model.is_graph
    if name == "residual":  # the stem's conv+ReLU+pool run as one fused step
        assert len(model.steps()) == len(model.layers) - 1
    proto = assert_onnx_matches(model, seed=7)
    # Each merging layer's nodes read the tensors its producers' nodes wrote, in order.
    made_by = {out: node.name.split("/")[0] for node in proto.graph.node for out in node.output}
    constants = {t.name for t in proto.graph.initializer}
    for i, layer in enumerate(model.layers):
        if getattr(type(layer), "multi_input", False):
            nodes = [n for n in proto.graph.node if n.name.split("/")[0] == layer.name]
            read = [
                made_by.get(x, x)
                for n in nodes
                for x in n.input
                if x not in constants and made_by.get(x) != layer.name
            ]
            producers = ["input" if j == -1 else model.layers[j].name for j in model.inputs[i]]
            assert read == producers


def test_opset_18_moves_reduce_axes_to_an_input(write_config):
    doc = model_doc(
        {"type": "Conv2D", "filters": 2, "kernel_size": 3},
        {"type": "GlobalAveragePooling2D"},
        input_shape=(6, 6, 1),
    )
    model = load_model(write_config(doc)).initialize(0)
    proto = assert_onnx_matches(model, opset=18)
    assert proto.opset_import[0].version == 18


class Scale(Layer):
    """docs/plugins.md's minimal plugin layer: no exporter."""

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def param_shapes(self, input_shape):
        return [ParamSpec("gamma", (input_shape[-1],))]

    def build(self, input_shape, rng):
        super().build(input_shape, rng)
        self.params["gamma"] = rng.normal(1, 0.5, input_shape[-1]).astype(np.float32)

    def forward(self, x, training=False):
        return x * self.params["gamma"]


class ExportedScale(Scale):
    """The same layer with the hook exactly as docs/onnx.md writes it."""

    def to_onnx(self, builder, input_name):
        gamma = builder.constant(self.params["gamma"], "gamma")
        return builder.node("Mul", [input_name, gamma])


def test_plugin_hook_and_missing_exporter():
    layers = [Conv2D(filters=2, kernel_size=3, name="conv"), ExportedScale(name="scale")]
    model = Sequential(layers, (5, 5, 1), distributions=["nbcnn", "nbcnn-scale"])
    model.initialize(0)
    proto = assert_onnx_matches(model)
    assert any(
        node.op_type == "Mul" and node.name.startswith("scale/") for node in proto.graph.node
    )
    model = Sequential([Scale(name="scale")], (4, 3), distributions=["nbcnn-scale"])
    with pytest.raises(DataError) as err:
        to_onnx(model.initialize(0))
    assert str(err.value) == (
        "layers[0] 'scale' (Scale) from distribution 'nbcnn-scale' has no ONNX exporter: its "
        "class Scale defines no to_onnx(self, builder, input_name) (see docs/onnx.md)"
    )


def guide_method(document, after, name, namespace):
    """Execute the first Python block after the heading ``after`` of ``document``, as written
    (dedented: a fragment may be a method), in ``namespace``; returns ``namespace[name]``."""
    text = (ROOT / "docs" / document).read_text().split(after, 1)[1]
    source = textwrap.dedent(re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1))
    exec(compile(source, f"docs/{document}", "exec"), namespace)
    return namespace[name]


def test_plugin_merging_layer_gets_its_inputs_names():
    """docs/plugins.md's WeightedSum with the to_onnx that docs/onnx.md gives it."""
    weighted_sum = guide_method("plugins.md", "## Layers with several inputs", "WeightedSum", {})
    hook = guide_method("onnx.md", "A merging plugin layer", "to_onnx", {})
    exported = type("WeightedSum", (weighted_sum,), {"to_onnx": hook})
    layers = [
        Conv2D(filters=2, kernel_size=3, padding="same", name="conv"),
        Conv2D(filters=2, kernel_size=1, name="side"),
        exported(name="mix"),
    ]
    model = Sequential(
        layers,
        (5, 5, 2),
        distributions=["nbcnn", "nbcnn", "nbcnn-mix"],
        inputs=[None, "input_layer", ["side", "input_layer", "conv"]],
    ).initialize(0)
    model.layers[2].params["w"][...] = [0.5, -2.0, 3.0]
    proto = assert_onnx_matches(model)
    read = [n.input[0] for n in proto.graph.node if n.name.startswith("mix/mul")]
    assert len(read) == 3 and read[1] == "input"  # the model's input, second as written


def test_cli_export_writes_a_valid_file_and_checks_it(tmp_path):
    config = ROOT / "configs" / "digits.yaml"
    weights = tmp_path / "w.npz"
    load_model(config).initialize(9).save_weights(weights)
    out = tmp_path / "digits.onnx"
    result = cli("export", config, "--weights", weights, "--onnx", out, "--check")
    assert result.exit_code == 0, result.stderr
    assert "max abs difference" in result.stdout
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]] == [8, 8, 1]
    model = load_model(config).initialize(0)
    model.load_weights(weights)
    x = np.random.default_rng(1).random((3, 8, 8, 1), dtype=np.float32)
    assert np.abs(run_onnx(out, x) - model.predict(x)).max() < TOLERANCE
    result = cli("export", config, "--weights", tmp_path / "none.npz", "--onnx", out)
    assert result.exit_code == 2 and "none.npz" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
