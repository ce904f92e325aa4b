"""The layer test kit (nbcnn.testing) over every built-in layer, and against broken layers.

``EXAMPLES`` is the one table: a built-in type is one row of (arguments, input shape). A new
built-in layer without a row fails ``test_every_builtin_has_an_example``. Activations in the
rows are smooth (tanh) or the kit skips the few entries at a ReLU kink.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import nbcnn
from nbcnn.errors import ConfigError
from nbcnn.layers.args import Arg, positive_int
from nbcnn.layers.base import Layer
from nbcnn.layers.conv import Conv2D
from nbcnn.layers.core import Dense
from nbcnn.registry import registry
from nbcnn.testing import (
    check_calculator,
    check_config_round_trip,
    check_layer,
    check_lazy_imports,
)

EXAMPLES: dict[str, list[tuple[dict, tuple[int, ...]]]] = {
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
