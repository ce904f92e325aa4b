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


# ------------------------------------------------- the weights of the check and its tolerance


def lazy_scale_class() -> type:
    """The guide's Scale with the backward a plugin author may write first, ``dx = dy``:
    right only while gamma is 1, as build makes it."""
    scale = guide_example_class()

    def backward(self, dy):
        scale.backward(self, dy)  # the gradient of gamma, right
        return dy.copy()

    return type("LazyScale", (scale,), {"backward": backward})


def test_a_backward_right_only_for_the_built_weights_is_caught():
    with pytest.raises(AssertionError) as info:
        check_layer(lazy_scale_class(), {}, (4, 4, 3))
    message = str(info.value)
    assert message.startswith("LazyScale() on input (4, 4, 3): gradient of the input x at (")
    assert message.endswith(
        "(trainable weights gamma drawn at random with seed 0; params= sets them)"
    )


def test_params_sets_the_weights_of_the_check():
    lazy = lazy_scale_class()
    ones = np.ones(3, np.float32)
    layer = check_layer(lazy, {}, (4, 4, 3), params={"gamma": ones})  # gamma = 1 hides the bug
    np.testing.assert_array_equal(layer.params["gamma"], ones)
    with pytest.raises(AssertionError, match="gradient of the input x"):
        check_layer(lazy, {}, (4, 4, 3), params={"gamma": [0.5, 1.0, 2.0]})


def test_a_correct_layer_passes_with_random_weights():
    scale = guide_example_class()
    gamma = check_layer(scale, {}, (4, 4, 3)).params["gamma"]  # build makes 1, 1, 1
    assert gamma.dtype == np.float32 and len(set(gamma.tolist())) == 3
    assert np.all((np.abs(gamma) >= 0.5) & (np.abs(gamma) <= 1.5))  # build's scale
    assert not np.array_equal(check_layer(scale, {}, (4, 4, 3), seed=1).params["gamma"], gamma)


def test_non_trainable_weights_keep_their_built_values():
    """A moving variance must stay positive: only trainable weights are drawn."""
    layer = check_layer(builtin_types()["BatchNormalization"], {}, (3, 3, 2))
    np.testing.assert_array_equal(layer.params["moving_variance"], 1)
    np.testing.assert_array_equal(layer.params["moving_mean"], 0)
    assert not np.allclose(layer.params["gamma"], 1) and not np.allclose(layer.params["beta"], 0)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"scale": np.ones(3)}, r"params= names \['scale'\]; the layer's weights are \['gamma'\]"),
        ({"gamma": np.ones(4)}, r"params\['gamma'\] has shape \(4,\); the weight has \(3,\)"),
        ({"gamma": [1.0, np.nan, 1.0]}, r"params\['gamma'\] holds NaN or inf"),
        ([1.0, 2.0, 3.0], "params= must map weight names to arrays; got list"),
    ],
)
def test_mistakes_in_params_are_named(params, message):
    with pytest.raises(AssertionError, match=message) as info:
        check_layer(guide_example_class(), {}, (4, 4, 3), params=params)
    assert str(info.value).startswith("Scale() on input (4, 4, 3): ")


class SlightlyWrongGradient(Dense):
    """A kernel gradient 0.5% too large: within the fixed rtol 1e-2 of earlier versions."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["kernel"] = self.grads["kernel"] * np.float32(1.005)
        return dx


def test_a_gradient_half_a_percent_off_is_caught():
    with pytest.raises(AssertionError, match="gradient of weight 'kernel'"):
        check_layer(SlightlyWrongGradient, {"units": 3}, (4,))
    check_layer(SlightlyWrongGradient, {"units": 3}, (4,), rtol=1e-2, atol=1e-3)  # as before


def test_the_tolerance_follows_the_outputs_magnitude():
    """Outputs of ~1e3 carry rounding errors of ~1e-4 each: a fixed tolerance fails a correct
    layer there; the derived one passes it and still catches a gradient 0.5% off."""
    scale = guide_example_class()
    check_layer(scale, {"init": 1000.0}, (4, 4, 3))

    def backward(self, dy):
        return scale.backward(self, dy) * np.float32(1.005)

    with pytest.raises(AssertionError, match="gradient of the input x"):
        check_layer(type("Off", (scale,), {"backward": backward}), {"init": 1000.0}, (4, 4, 3))


class OneWrongEntry(Dense):
    """Wrong in one entry of its 256-entry kernel gradient."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["kernel"][11, 7] += 0.25
        return dx


def test_every_entry_of_a_small_layer_is_checked():
    """Earlier versions drew 48 entries per array: 5 in 6 runs missed this one."""
    with pytest.raises(AssertionError, match=r"gradient of weight 'kernel' at \(11, 7\)"):
        check_layer(OneWrongEntry, {"units": 16}, (16,))


class Wave(Layer):
    """y = sin(8 x): smooth, but its one-sided slopes over one step differ by far more than
    the gradient tolerance (by h * y'')."""

    factor = 1.0

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, x, training=False):
        self._x = x
        return np.sin(8 * x)

    def backward(self, dy):
        return (dy * 8 * np.cos(8 * self._x) * self.factor).astype(np.float32)


class WrongWave(Wave):
    factor = 1.01


def test_a_curved_layer_is_checked_not_taken_for_kinks():
    check_layer(Wave, {}, (5, 4))
    with pytest.raises(AssertionError, match="gradient of the input x at"):
        check_layer(WrongWave, {}, (5, 4))


class Sawtooth(Layer):
    """y = |x - round(k x) / k|: a kink every 1 / 2k = 4.05e-4, so within 2.5e-4 of every x,
    the smallest step the kit tries (k incommensurate with the steps: no aliasing)."""

    k = np.float32(1234.5)

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, x, training=False):
        self._x = x
        return np.abs(x - np.round(x * self.k) / self.k)

    def backward(self, dy):
        return (dy * np.sign(self._x - np.round(self._x * self.k) / self.k)).astype(np.float32)


def test_kinks_are_skipped_only_up_to_a_cap():
    with pytest.raises(
        AssertionError, match=r"entries of the input x checked sit at kinks .* over the cap of \d+"
    ):
        check_layer(Sawtooth, {}, (6, 4))


# ------------------------------------------------------ every failure names the layer


def raising(method: str) -> type:
    """Dense with ``method`` raising, as a plugin's bug would."""

    def boom(self, *args, **kwargs):
        raise ZeroDivisionError("division by zero")

    return type(f"Broken{method.title().replace('_', '')}", (Dense,), {method: boom})


@pytest.mark.parametrize(
    "method", ["explain", "output_shape", "param_shapes", "macs", "receptive_field"]
)
def test_a_calculator_that_raises_is_a_failure_of_the_kit(method):
    """nbcnn summary calls explain for every row: one that raises must not escape the kit
    as a raw exception either."""
    cls = raising(method)
    with pytest.raises(AssertionError) as info:
        check_calculator(cls, {"units": 2}, (3, 2))
    assert str(info.value) == (
        f"{cls.__name__}(units=2) on input (3, 2): {method} raised ZeroDivisionError: "
        "division by zero"
    )
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_get_config_that_raises_is_a_failure_of_the_kit():
    with pytest.raises(AssertionError, match=r"^BrokenGetConfig\(units=2\): get_config raised"):
        check_config_round_trip(raising("get_config"), {"units": 2})


class AssertsInForward(Dense):
    """A plugin's own ``assert``: reported with the layer named, not passed on bare."""

    def forward(self, x, training=False):
        assert x.ndim == 5, "expected 5-D input"
        return super().forward(x, training)


def test_an_assert_in_the_layer_is_named():
    with pytest.raises(AssertionError) as info:
        check_layer(AssertsInForward, {"units": 2}, (3,))
    assert str(info.value).startswith(  # pytest's rewriting of the assert adds its details
        "AssertsInForward(units=2) on input (3,): forward(training=False) raised "
        "AssertionError: expected 5-D input"
    )


def test_a_registered_layer_is_named_with_its_distribution():
    with pytest.raises(AssertionError) as info:
        check_layer(Dense, {"units": 2}, (3,), params={"gamma": np.ones(2)})
    assert str(info.value).startswith(
        "Dense(units=2) on input (3,) from distribution 'nbcnn': params= names ['gamma']"
    )


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
