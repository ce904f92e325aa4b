"""The layer test kit (nbcnn.testing) over every built-in layer, and against broken layers.

``EXAMPLES`` is the one table: a built-in type is one row of (arguments, input shape; a list
of shapes for a merging layer). A new built-in layer without a row fails
``test_every_builtin_has_an_example``. Activations in the
rows are smooth (tanh) or the kit skips the few entries at a ReLU kink.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nbcnn
from nbcnn.errors import ConfigError
from nbcnn.layers.args import Arg, positive_int
from nbcnn.layers.base import Layer
from nbcnn.layers.conv import Conv2D
from nbcnn.layers.core import Dense
from nbcnn.layers.merging import Add, Average, Multiply, Subtract
from nbcnn.model import Sequential
from nbcnn.registry import registry
from nbcnn.testing import (
    check_calculator,
    check_config_round_trip,
    check_layer,
    check_lazy_imports,
    check_model_gradients,
)

EXAMPLES: dict[str, list[tuple[dict, Any]]] = {
    "Conv2D": [
        ({"filters": 3, "kernel_size": 3, "padding": "same", "activation": "tanh"}, (5, 5, 2)),
        ({"filters": 2, "kernel_size": [2, 3], "strides": 2}, (6, 7, 1)),
        ({"filters": 2, "kernel_size": 2, "dilation_rate": 2, "use_bias": False}, (5, 5, 2)),
        # activation relu runs fused inside the kernels: C == 1 (transposed columns) and C > 1
        ({"filters": 3, "kernel_size": 3, "activation": "relu"}, (5, 6, 1)),
        ({"filters": 3, "kernel_size": 3, "padding": "same", "activation": "relu"}, (5, 4, 2)),
        # relu6 too, its cap reached: all-ones weights sum 72 inputs in [-1, 1]
        (
            {"filters": 3, "kernel_size": 3, "activation": "relu6", "kernel_initializer": "ones"},
            (5, 6, 8),
        ),
    ],
    "Conv1D": [
        ({"filters": 3, "kernel_size": 3, "padding": "causal", "activation": "relu"}, (7, 2)),
    ],
    "MaxPooling2D": [({"pool_size": 2, "padding": "same"}, (5, 5, 2))],
    "AveragePooling2D": [({"pool_size": 3, "strides": 2, "padding": "same"}, (6, 5, 2))],
    "MaxPooling1D": [({"pool_size": 2}, (7, 3))],
    "AveragePooling1D": [({"pool_size": 3, "strides": 1}, (6, 2))],
    "GlobalAveragePooling2D": [({}, (3, 4, 2)), ({"keepdims": True}, (3, 3, 2))],
    "GlobalMaxPooling2D": [({}, (3, 4, 2))],
    "GlobalAveragePooling1D": [({}, (5, 3))],
    "GlobalMaxPooling1D": [({}, (5, 3))],
    "Flatten": [({}, (3, 2, 2))],
    "Dense": [
        ({"units": 4, "activation": "tanh"}, (6,)),
        ({"units": 3, "activation": "softmax", "use_bias": False}, (2, 5)),
    ],
    "Activation": [({"activation": "relu"}, (4, 3)), ({"activation": "swish"}, (4, 3))],
    "Dropout": [({"rate": 0.5}, (4, 3))],
    "BatchNormalization": [({}, (3, 3, 2)), ({"center": False, "momentum": 0.9}, (5, 3))],
    "Rescaling": [({"scale": 0.5, "offset": -1.0}, (3, 3, 2))],
    "Normalization": [({}, (3, 3, 2)), ({"mean": [0.5, -1.0], "variance": [2.0, 0.5]}, (4, 2))],
    "ZeroPadding2D": [({"padding": [[1, 0], [2, 1]]}, (3, 3, 2))],
    "Cropping2D": [({"cropping": [[1, 0], [0, 2]]}, (4, 5, 2))],
    "UpSampling2D": [({"size": [2, 3]}, (2, 2, 2))],
    "Reshape": [({"target_shape": [-1, 2]}, (2, 3, 2))],
    # Merging layers take a list of input shapes; the second rows broadcast (Keras's rule:
    # shapes aligned at their last axis, an axis of 1 or a missing one stretches).
    "Add": [({}, [(3, 3, 2), (3, 3, 2)]), ({}, [(3, 3, 2), (3, 1, 2), (2,)])],
    "Subtract": [({}, [(3, 3, 2), (3, 3, 2)]), ({}, [(4, 3), (1, 3)])],
    "Multiply": [({}, [(3, 3, 2), (3, 3, 2), (3, 3, 2)]), ({}, [(4, 3), (4, 1)])],
    "Average": [({}, [(3, 3, 2), (3, 3, 2)]), ({}, [(2, 3), (2, 3), (1, 3)])],
    "Maximum": [({}, [(3, 3, 2), (3, 3, 2)]), ({}, [(4, 3), (4, 3), (1, 3)])],
    "Minimum": [({}, [(3, 3, 2), (3, 3, 2)]), ({}, [(4, 3), (4, 3), (4, 1)])],
    "Concatenate": [
        ({}, [(3, 3, 2), (3, 3, 1)]),
        ({"axis": 1}, [(2, 3, 2), (1, 3, 2), (3, 3, 2)]),
        ({"axis": -2}, [(3, 2, 2), (3, 1, 2)]),
        ({"axis": 1}, [(4, 3)]),
    ],
}


def builtin_types() -> dict[str, type]:
    return {e.name: e.cls for e in registry().entries() if e.distribution == "nbcnn"}


def test_every_builtin_has_an_example():
    missing = sorted(set(builtin_types()) - set(EXAMPLES))
    assert not missing, f"add a row to EXAMPLES for the built-in layer(s) {missing}"
    assert not set(EXAMPLES) - set(builtin_types()), "EXAMPLES names a type nbcnn lacks"


def cases():
    for name, rows in EXAMPLES.items():
        for kwargs, shape in rows:
            yield pytest.param(name, kwargs, shape, id=f"{name}-{shape}-{kwargs}")


@pytest.mark.parametrize("name, kwargs, input_shape", list(cases()))
def test_builtin_fits_the_contract(name, kwargs, input_shape):
    check_layer(builtin_types()[name], kwargs, input_shape)


@pytest.mark.parametrize("name", ["Conv2D", "Dense", "MaxPooling2D", "BatchNormalization"])
def test_builtin_modules_do_not_import_numba(name):
    check_lazy_imports(builtin_types()[name])


# ------------------------------------------------------------------ the kit catches bugs


class ExtraWeight(Dense):
    """Builds a weight its calculator does not count."""

    def build(self, input_shape, rng):
        super().build(input_shape, rng)
        self.params["scale"] = np.ones(1, np.float32)


class Crashes(Dense):
    def backward(self, dy):
        raise IndexError("off by one")


class WrongShape(Dense):
    """The calculator forgets the last axis."""

    def output_shape(self, input_shape):
        return (self.units + 1,)


class WrongGradient(Dense):
    """Returns a kernel gradient off by a factor of two."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["kernel"] = self.grads["kernel"] * 2
        return dx


class WrongInputGradient(Conv2D):
    """Drops the gradient of one input cell."""

    def backward(self, dy):
        dx = super().backward(dy)
        if dx is not None:  # None as a model's first layer
            dx[:, 0, 0, :] = 0
        return dx


class FirstLayerForgetsGrads(Dense):
    """Skips its weight gradients too when the input gradient is not needed."""

    def backward(self, dy):
        if not self.input_grad_needed:
            return None
        return super().backward(dy)


class ForgetsGrads(Dense):
    def backward(self, dy):
        dx = super().backward(dy)
        del self.grads["bias"]
        return dx


class InPlace(Dense):
    def forward(self, x, training=False):
        x *= 1.0
        x[0] += 1.0
        return super().forward(x, training)


class Forgetful(Layer):
    """Drops its argument from the config."""

    arguments = {"units": Arg(positive_int, 2, "outputs")}

    def output_shape(self, input_shape):
        return (self.units,)

    def get_config(self):
        return {"type": type(self).__name__, "name": self.name}


class Drifting(Forgetful):
    """Writes a different value than it was given: the round trip changes the layer."""

    def get_config(self):
        return {**super().get_config(), "units": self.units + 1}


class NoRankCheck(Layer):
    input_rank = 3

    def output_shape(self, input_shape):
        return tuple(input_shape)


class CalculatorOnly(Layer):
    def output_shape(self, input_shape):
        return tuple(input_shape)


class FloatMacs(Layer):
    def output_shape(self, input_shape):
        return tuple(input_shape)

    def macs(self, input_shape):
        return 1.5


@pytest.mark.parametrize(
    "cls, message",
    [
        (ExtraWeight, "build made weights"),
        (Crashes, "backward raised IndexError: off by one"),
        (WrongShape, "has shape"),
        (WrongGradient, "gradient of weight 'kernel'"),
        (ForgetsGrads, "backward set grads"),
        (InPlace, "modified x"),
        (FirstLayerForgetsGrads, "differ when input_grad_needed is False"),
    ],
)
def test_check_layer_catches_dense_bugs(cls, message):
    with pytest.raises(AssertionError, match=message) as info:
        check_layer(cls, {"units": 3}, (4,))
    assert str(info.value).startswith(f"{cls.__name__}(units=3) on input (4,)")


def test_check_layer_catches_a_wrong_input_gradient():
    with pytest.raises(AssertionError, match="gradient of the input x"):
        check_layer(WrongInputGradient, {"filters": 2, "kernel_size": 2}, (3, 3, 1))


def test_calculator_checks():
    with pytest.raises(AssertionError, match=r"lacks the argument\(s\) \['units'\]"):
        check_config_round_trip(Forgetful, {"units": 3})
    with pytest.raises(AssertionError, match="config round trip changed the layer"):
        check_config_round_trip(Drifting, {"units": 3})
    with pytest.raises(AssertionError, match="wrong rank"):
        check_calculator(NoRankCheck, {}, (2, 2, 1))
    with pytest.raises(AssertionError, match="macs returned 1.5"):
        check_calculator(FloatMacs, {}, (2,))
    with pytest.raises(AssertionError, match="has no forward"):
        check_layer(CalculatorOnly, {}, (2, 2, 1))
    with pytest.raises(AssertionError, match="constructor raised ConfigError"):
        check_calculator(Dense, {"units": 0}, (2,))


def test_bad_arguments_raise_config_error_not_assertion():
    """The kit reports the constructor's own error text."""
    with pytest.raises(AssertionError) as info:
        check_layer(Dense, {"unit": 3}, (2,))
    assert isinstance(info.value.__cause__, ConfigError)
    assert "did you mean 'units'" in str(info.value)


def test_stateful_layers_see_the_same_state_in_every_evaluation():
    """Dropout draws its mask from the layer's Generator: the kit's deep copies keep it fixed,
    so finite differences of a 0.5 dropout agree with its backward."""
    layer = check_layer(builtin_types()["Dropout"], {"rate": 0.5}, (6,), batch=3)
    assert isinstance(layer.rng, np.random.Generator)


# ------------------------------------------------------------------ the guide's example


def guide_example_class() -> type:
    """The ``Scale`` class of docs/plugins.md's minimal complete plugin, executed as written."""
    guide = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    section = guide.split("## A minimal complete plugin", 1)[1]
    source = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(source, "docs/plugins.md", "exec"), namespace)
    return namespace["Scale"]


@pytest.mark.parametrize("kwargs, input_shape", [({}, (4, 4, 3)), ({"init": 0.5}, (5, 2))])
def test_the_guides_minimal_plugin_passes_the_kit(kwargs, input_shape):
    scale = guide_example_class()
    assert scale.api_version == nbcnn.PLUGIN_API_VERSION
    check_layer(scale, kwargs, input_shape)


# ------------------------------------------------------------- layers with several inputs


def guide_multi_input_class() -> type:
    """The ``WeightedSum`` class of docs/plugins.md's section on layers with several inputs,
    executed as written."""
    guide = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    section = guide.split("## Layers with several inputs", 1)[1]
    source = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(source, "docs/plugins.md", "exec"), namespace)
    return namespace["WeightedSum"]


@pytest.mark.parametrize("shapes", [[(4, 4, 3), (4, 4, 3)], [(5, 2), (5, 2), (5, 2)], [(3,)]])
def test_the_guides_multi_input_plugin_passes_the_kit(shapes):
    weighted_sum = guide_multi_input_class()
    assert weighted_sum.multi_input and weighted_sum.api_version == nbcnn.PLUGIN_API_VERSION
    layer = check_layer(weighted_sum, {}, shapes)
    assert layer.input_shape == tuple(shapes)


def test_the_guides_multi_input_plugin_runs_in_a_graph():
    """The guide's layer in a model, as its YAML fragment wires it: shapes, a training step
    whose gradients reach both branches, and a one-line error naming both inputs."""
    weighted_sum = guide_multi_input_class()
    conv = {"filters": 8, "padding": "same"}
    model = Sequential(
        [Conv2D(kernel_size=3, name="left", **conv), Conv2D(kernel_size=1, **conv), weighted_sum()],
        input_shape=(6, 6, 2),
        inputs=[None, "input_layer", ["left", -1]],
    ).initialize(0)
    assert model.shapes[2] == ([(6, 6, 8), (6, 6, 8)], (6, 6, 8))
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype(np.float32)
    y = model.forward(x, training=True)
    model.backward(np.ones_like(y))
    w = model.layers[2].params["w"]
    for k, branch in enumerate(model.layers[:2]):  # dL/d(bias) = w[k] * N * H * W
        np.testing.assert_allclose(branch.grads["bias"], w[k] * 2 * 6 * 6, rtol=1e-5)
    with pytest.raises(
        ConfigError, match=r"inputs \(None, 6, 6, 8\) from 'left', \(None, 6, 6, 4\)"
    ):
        Sequential(
            [Conv2D(kernel_size=3, name="left", **conv), Conv2D(4, 1), weighted_sum()],
            input_shape=(6, 6, 2),
            inputs=[None, "input_layer", ["left", -1]],
        )


class SwappedSubtract(Subtract):
    """Returns the two gradients in the wrong order."""

    def backward(self, dy):
        return super().backward(dy)[::-1]


class OneGradient(Add):
    """Returns one array, as a single-input layer would."""

    def backward(self, dy):
        return super().backward(dy)[0]


class TooFewGradients(Add):
    def backward(self, dy):
        return super().backward(dy)[:1]


class NoUnbroadcast(Add):
    """Forgets to sum the gradient of a broadcast input back to its shape."""

    def backward(self, dy):
        return [dy.copy() for _ in self.input_shape]


class DropsTheSecondGradient(Multiply):
    def backward(self, dy):
        grads = super().backward(dy)
        return [grads[0], np.zeros_like(grads[1])]


class NoneThoughNeeded(Add):
    def backward(self, dy):
        return [super().backward(dy)[0], None]


class WritesIntoAnInput(Add):
    def forward(self, x, training=False):
        x[1][0] += 1.0
        return super().forward(x, training)


class SkipsWhenAllowed(Add):
    """Skips every input gradient when none is needed: allowed by the contract."""

    def backward(self, dy):
        grads = super().backward(dy)
        return grads if self.input_grad_needed else [None] * len(grads)


SAME = [(3, 2), (3, 2)]


@pytest.mark.parametrize(
    "cls, shapes, message",
    [
        (SwappedSubtract, SAME, r"gradient of the input x\[0\]"),
        (OneGradient, SAME, "backward returned ndarray; a multi-input layer returns a list"),
        (TooFewGradients, SAME, "backward returned 1 gradients for 2 inputs"),
        (NoUnbroadcast, [(3, 2), (1, 2)], r"gradient of x\[1\] has shape \(2, 3, 2\)"),
        (DropsTheSecondGradient, SAME, r"gradient of the input x\[1\] at"),
        (NoneThoughNeeded, SAME, r"gradient of x\[1\] returned NoneType"),
        (WritesIntoAnInput, SAME, r"modified x\[1\]"),
    ],
)
def test_check_layer_catches_multi_input_bugs(cls, shapes, message):
    with pytest.raises(AssertionError, match=message) as info:
        check_layer(cls, {}, shapes)
    assert str(info.value).startswith(f"{cls.__name__}() on inputs [(3, 2), ")


def test_check_layer_catches_a_wrong_weight_gradient_of_a_multi_input_plugin():
    weighted_sum = guide_multi_input_class()

    def backward(self, dy):
        dx = weighted_sum.backward(self, dy)
        self.grads["w"] = self.grads["w"][::-1].copy()  # each input's weight gets the other's
        return dx

    def build(self, input_shape, rng):
        weighted_sum.build(self, input_shape, rng)
        self.params["w"] = np.array([0.5, 2.0], np.float32)

    wrong = type("SwappedWeights", (weighted_sum,), {"backward": backward, "build": build})
    with pytest.raises(AssertionError, match="gradient of weight 'w'"):
        check_layer(wrong, {}, [(4, 2), (4, 2)])


def test_a_multi_input_layer_may_skip_gradients_nobody_needs():
    check_layer(SkipsWhenAllowed, {}, SAME)


def test_the_kit_says_how_to_give_input_shapes():
    with pytest.raises(AssertionError, match=r"give input_shape as a list of shapes"):
        check_layer(Add, {}, (3, 2))
    with pytest.raises(AssertionError, match=r"Dense\(units=2\) on inputs .*takes one input"):
        check_layer(Dense, {"units": 2}, SAME)


def test_every_builtin_merge_is_checked_with_several_inputs():
    """The merging layers' rows in EXAMPLES give lists of shapes (what check_layer runs by
    test_builtin_fits_the_contract), at least one with more than two inputs or broadcasting."""
    merges = {name for name, cls in builtin_types().items() if getattr(cls, "multi_input", False)}
    assert merges == {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"}
    for name in merges:
        shapes = [shape for _, shape in EXAMPLES[name]]
        assert all(isinstance(s, list) for s in shapes), name
        assert any(len(s) > 2 or len(set(s)) > 1 for s in shapes), name


@pytest.mark.parametrize("cls", [Add, Average])
def test_add_and_average_broadcast_an_input_after_the_second(cls):
    check_layer(cls, {}, [(3, 1), (3, 1), (3, 2)])


# ------------------------------------------------------------ a whole model's gradients


def weighted_sum_graph(merge: Layer) -> Sequential:
    """Two Conv2D branches off the input, merged by ``merge``, then a Dense."""
    conv = {"filters": 3, "kernel_size": 3, "padding": "same", "activation": "tanh"}
    return Sequential(
        [Conv2D(name="left", **conv), Conv2D(name="right", **conv), merge, Dense(2)],
        input_shape=(5, 5, 2),
        inputs=[None, "input_layer", ["left", "right"], None],
    ).initialize(0)


def test_check_model_gradients_passes_the_guides_plugin_in_a_graph():
    model = weighted_sum_graph(guide_multi_input_class()())
    x = np.random.default_rng(0).uniform(-1, 1, (2, 5, 5, 2)).astype(np.float32)
    checked = check_model_gradients(model, x, max_entries=16)
    assert set(checked) == {"x", *model.weight_names()}
    assert checked["weighted_sum/w"] == 2 and checked["x"] >= 8


@pytest.mark.parametrize(
    "merge, message",
    [
        (SwappedSubtract, r"gradient of (the input x|weight '\w+' of layers\[[01]\])"),
        (DropsTheSecondGradient, r"gradient of (the input x|weight '\w+' of layers\[1\] 'right')"),
    ],
)
def test_check_model_gradients_catches_a_wrong_merge_in_a_graph(merge, message):
    model = weighted_sum_graph(merge())
    x = np.random.default_rng(0).uniform(-1, 1, (2, 5, 5, 2)).astype(np.float32)
    with pytest.raises(AssertionError, match=f"^model 'model': {message}"):
        check_model_gradients(model, x, max_entries=16)
