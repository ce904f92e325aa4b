"""The layer contract checked at run time (issue 15, item 1).

A plugin author's usual mistakes, each caught at the layer that made it and reported as one
line naming the layer, its type and its distribution and the rule that broke, exit code 1 (a
bug, not bad input): a backward that sets no gradient, a backward returning a dx of the wrong
shape, a forward returning the wrong shape or dtype, a calculator that raises. ``nbcnn
--traceback`` and ``NBCNN_DEBUG=1`` show the plugin's own traceback, the Python API keeps it
as ``__cause__``, and a broken ``explain`` costs only its own line of ``summary --explain``.

The plugin classes are written once, as a module's source (:data:`PLUGIN`): the Python API
tests run it in-process, the CLI tests install it as a distribution (as
tests/test_hostile_plugins.py does) and run the real ``nbcnn``.
"""

from __future__ import annotations

import os
import types

import numpy as np
import pytest
from helpers import cli_subprocess, model_doc
from test_registry import make_distribution, pip_install_target
from test_robustness import error_line

from nbcnn.errors import ConfigError, PluginError
from nbcnn.layers.conv import Conv2D
from nbcnn.layers.core import Dense, Flatten
from nbcnn.model import Sequential

DIST = "nbcnn-test-contract"

PLUGIN = """
import numpy as np

from nbcnn.layers.base import Layer, ParamSpec, ShapeError


class Scale(Layer):
    \"\"\"y = x * w with one trainable factor per channel, done right: the others break it.\"\"\"

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def param_shapes(self, input_shape):
        return [ParamSpec("w", (input_shape[-1],))]

    def build(self, input_shape, rng):
        super().build(input_shape, rng)
        self.params["w"] = np.full(input_shape[-1], 0.5, np.float32)

    def forward(self, x, training=False):
        self.x = x
        return x * self.params["w"]

    def backward(self, dy):
        self.grads["w"] = (dy * self.x).sum(axis=tuple(range(dy.ndim - 1)))
        return dy * self.params["w"]


class NoGrad(Scale):
    def backward(self, dy):
        return dy * self.params["w"]  # forgot self.grads["w"]


class Float64Grad(Scale):
    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["w"] = self.grads["w"].astype(np.float64)
        return dx


class ShortGrad(Scale):
    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["w"] = self.grads["w"][:1]
        return dx


class WrongDx(Scale):
    def backward(self, dy):
        super().backward(dy)
        return dy[:, ::2]  # half the rows: the layer before would fail to use it


class Float64Forward(Scale):
    \"\"\"Declares (8, 8, 4), returns what a Flatten would, as float64.\"\"\"

    def forward(self, x, training=False):
        return x.reshape(len(x), -1).astype(np.float64)


def _misread(input_shape):
    return input_shape[3]  # a bug: the channel axis is [2] (or [-1])


class RaisingShape(Scale):
    def output_shape(self, input_shape):
        return (*input_shape[:2], _misread(input_shape))


class RaisingMacs(Scale):
    def macs(self, input_shape):
        return _misread(input_shape)


class RaisingExplain(Scale):
    def explain(self, input_shape):
        return f"{_misread(input_shape)} factors"


class EscapingMacs(Scale):
    def macs(self, input_shape):
        raise RuntimeError("\\x1b[2J\\x1b[31mred\\r")


class ShapeErrorShape(Scale):
    def output_shape(self, input_shape):
        raise ShapeError("needs an even width")
"""

TYPES = [
    "Scale",
    "NoGrad",
    "Float64Grad",
    "ShortGrad",
    "WrongDx",
    "Float64Forward",
    "RaisingShape",
    "RaisingMacs",
    "RaisingExplain",
    "EscapingMacs",
    "ShapeErrorShape",
]


@pytest.fixture(scope="module")
def plugins():
    """The plugin module, run in this process (the Python API tests)."""
    module = types.ModuleType("nbcnn_test_contract")
    exec(compile(PLUGIN, "nbcnn_test_contract.py", "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def contract_env(tmp_path_factory):
    """Environment variables with the plugin installed as distribution nbcnn-test-contract."""
    root = tmp_path_factory.mktemp("contract")
    dist = make_distribution(
        root,
        DIST,
        "nbcnn_test_contract",
        PLUGIN,
        {name: f"nbcnn_test_contract:{name}" for name in TYPES},
    )
    pip_install_target(root / "site", dist)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NBCNN_DEBUG")}
    return {**env, "PYTHONPATH": str(root / "site")}


def _model(plugins, plugin_type: str) -> Sequential:
    """Conv2D (built-in) -> the plugin, named 'odd' -> Flatten -> Dense, on (8, 8, 1)."""
    layer = getattr(plugins, plugin_type)(name="odd")
    return Sequential(
        [Conv2D(4, 3, padding="same"), layer, Flatten(), Dense(10, activation="softmax")],
        input_shape=(8, 8, 1),
        distributions=["nbcnn", DIST, "nbcnn", "nbcnn"],
    ).initialize(0)


def _step(model: Sequential) -> None:
    x = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    y = model.forward(x, training=True)
    model.backward(np.ones_like(y), input_grad=False)


# ---------------------------------------------------------------- the Python API


def test_a_correct_plugin_passes_every_check(plugins):
    model = _model(plugins, "Scale")
    _step(model)
    assert model.layers[1].grads["w"].shape == (4,)


@pytest.mark.parametrize(
    ("plugin_type", "got"),
    [
        ("NoGrad", "left nothing in grads['w']"),
        ("Float64Grad", "left a float64 array of shape (4,) in grads['w']"),
        ("ShortGrad", "left a float32 array of shape (1,) in grads['w']"),
    ],
)
def test_a_backward_without_the_weights_gradient_is_named(plugins, plugin_type, got):
    """The optimizer used to fail on it with a bare KeyError: 'w' (or update with an array of
    the wrong shape or dtype)."""
    model = _model(plugins, plugin_type)
    with pytest.raises(PluginError) as caught:
        _step(model)
    message = str(caught.value)
    assert message.startswith(f"layers[1] 'odd' ({plugin_type}) from distribution '{DIST}'")
    assert f"failed in backward: {got}; expected float32 (4,)" in message
    assert "(rule: backward puts a float32 gradient of each trainable weight's shape" in message
    assert caught.value.exit_code == 1 and caught.value.distribution == DIST


def test_a_wrong_dx_names_the_plugin_not_the_layer_before(plugins):
    """The Conv2D before it used to be blamed ("cannot reshape")."""
    with pytest.raises(PluginError) as caught:
        _step(_model(plugins, "WrongDx"))
    message = str(caught.value)
    assert message.startswith(f"layers[1] 'odd' (WrongDx) from distribution '{DIST}'")
    assert (
        "returned a float32 array of shape (2, 4, 8, 4) as dx; expected float32 (2, 8, 8, 4)"
        in (message)
    )
    assert "rule: backward returns dx, float32 of its input's shape" in message
    assert "conv2d" not in message


def test_a_forward_of_another_shape_and_dtype_than_declared(plugins):
    model = _model(plugins, "Float64Forward")
    with pytest.raises(PluginError) as caught:
        model.predict(np.zeros((2, 8, 8, 1), np.float32))
    message = str(caught.value)
    assert message.startswith(f"layers[1] 'odd' (Float64Forward) from distribution '{DIST}'")
    assert "returned a float64 array of shape (2, 256); expected float32 (2, 8, 8, 4)" in message
    assert "rule: forward returns float32 of the shape output_shape gives" in message


def test_built_in_layers_are_checked_too(plugins, monkeypatch):
    """One path for every layer: a built-in Dense whose backward loses its bias gradient is
    named as nbcnn's, not left to the optimizer."""
    model = _model(plugins, "Scale")
    dense = model.layers[3]
    backward = type(dense).backward

    def losing_bias(self, dy):
        dx = backward(self, dy)
        del self.grads["bias"]
        return dx

    monkeypatch.setattr(type(dense), "backward", losing_bias)
    with pytest.raises(PluginError, match=r"layers\[3\] 'dense' \(Dense\) from distribution "):
        _step(model)


def test_a_fused_steps_weights_are_checked(monkeypatch):
    """Conv2D(relu) + max pooling run as one step (nbcnn/fusion.py): the conv's gradients are
    checked after that step too."""
    from nbcnn.layers.pooling import MaxPooling2D

    model = Sequential(
        [Conv2D(4, 3, activation="relu"), MaxPooling2D(2), Flatten(), Dense(3)],
        input_shape=(8, 8, 1),
    ).initialize(0)
    assert len(model.steps()) == 3  # the pair is fused
    monkeypatch.setattr(Conv2D, "_store_grads", lambda self, dw, db: None)
    with pytest.raises(PluginError, match=r"layers\[0\] 'conv2d'.*grads\['kernel'\]"):
        _step(model)


def test_a_raising_calculator_is_a_bug_and_keeps_its_cause(plugins):
    """Not ConfigError (exit 2, "bad input") raised `from None` any more."""
    with pytest.raises(PluginError) as caught:
        Sequential([plugins.RaisingShape(name="odd")], input_shape=(8, 8, 4))
    err = caught.value
    assert str(err).startswith("layers[0] 'odd' (RaisingShape) from distribution ")
    assert "failed in output_shape: IndexError: 'tuple index out of range'" in str(err)
    assert "rule: a calculator raises only ShapeError" in str(err)
    assert isinstance(err.__cause__, IndexError) and err.exit_code == 1


def test_a_shape_error_stays_bad_input(plugins):
    with pytest.raises(ConfigError, match="needs an even width") as caught:
        Sequential([plugins.ShapeErrorShape(name="odd")], input_shape=(8, 8, 4))
    assert caught.value.exit_code == 2


def test_summary_survives_a_raising_explain(plugins):
    from nbcnn.summary import summarize

    model = Sequential([plugins.RaisingExplain(name="odd")], input_shape=(8, 8, 4))
    row = summarize(model).rows[0]
    assert row.explain.startswith("(explain failed: layers[0] 'odd' (RaisingExplain)")
    assert row.params == 4


# ---------------------------------------------------------------- the real CLI


def _train(env, write_config, tmp_path, plugin_type: str):
    doc = model_doc(
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"},
        {"type": plugin_type, "name": "odd"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
        input_shape=(8, 8, 1),
    )
    doc["train"] = {"data": {"dataset": "digits"}, "epochs": 1, "batch_size": 64}
    path = write_config(doc)
    return cli_subprocess("train", path, "--output", tmp_path / "run", env=env)


# The batch is not asserted: training may run a small warm-up batch first (nbcnn/train.py).
@pytest.mark.parametrize(
    ("plugin_type", "fragments"),
    [
        ("NoGrad", ["failed in backward: left nothing in grads['w']; expected float32 (4,)"]),
        (
            "WrongDx",
            ["failed in backward: returned a float32 array of shape (", ", 4, 8, 4) as dx"],
        ),
        ("Float64Forward", ["failed in forward: returned a float64 array of shape (", ", 256);"]),
    ],
)
def test_train_stops_at_the_broken_layer(
    contract_env, write_config, tmp_path, plugin_type, fragments
):
    """Through `nbcnn train`: one line, exit code 1, the plugin named (the issue saw a raw
    KeyError: 'w', the Conv2D blamed, and a training that ran to exit 0)."""
    proc = _train(contract_env, write_config, tmp_path, plugin_type)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    line = error_line(
        proc.stderr, f"layers[1] 'odd' ({plugin_type}) from distribution '{DIST}'", *fragments
    )
    assert "(rule: " in line and "KeyError" not in line and "conv2d" not in line


@pytest.mark.parametrize("plugin_type", ["RaisingShape", "RaisingMacs"])
def test_a_raising_calculator_exits_1_and_shows_its_traceback_on_request(
    contract_env, write_config, plugin_type
):
    path = write_config(model_doc({"type": plugin_type, "name": "odd"}, input_shape=(8, 8, 4)))
    proc = cli_subprocess("summary", path, env=contract_env)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    error_line(
        proc.stderr,
        f"layers[0] 'odd' ({plugin_type}) from distribution '{DIST}' failed in ",
        "IndexError: 'tuple index out of range'",
        "--traceback or NBCNN_DEBUG=1",
    )
    for args, env in (
        (("--traceback", "summary", path), contract_env),
        (("summary", path), {**contract_env, "NBCNN_DEBUG": "1"}),
    ):
        proc = cli_subprocess(*args, env=env)
        assert proc.returncode == 1, (proc.returncode, proc.stderr)
        # The plugin's own frames, then the chain to nbcnn's error, then the one line last.
        assert "Traceback (most recent call last)" in proc.stderr, proc.stderr
        assert 'nbcnn_test_contract/__init__.py", line' in proc.stderr
        assert (
            "in _misread" in proc.stderr and "IndexError: tuple index out of range" in proc.stderr
        )
        assert "The above exception was the direct cause" in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"nbcnn: error: layers[0] 'odd' ({plugin_type})"), last


def test_the_traceback_is_printed_escaped(contract_env, write_config):
    """A plugin's message with ESC and CR reaches the terminal escaped in the traceback too."""
    path = write_config(model_doc({"type": "EscapingMacs", "name": "odd"}, input_shape=(8, 8, 4)))
    proc = cli_subprocess("--traceback", "summary", path, env=contract_env)
    assert proc.returncode == 1, proc.stderr
    assert "RuntimeError: \\x1b[2J\\x1b[31mred\\r" in proc.stderr, proc.stderr
    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr


def test_a_raising_explain_spoils_only_the_explain_section(contract_env, write_config):
    path = write_config(model_doc({"type": "RaisingExplain", "name": "odd"}, input_shape=(8, 8, 4)))
    proc = cli_subprocess("summary", path, env=contract_env)
    assert proc.returncode == 0, proc.stderr
    assert "odd (RaisingExplain)" in proc.stdout and "Total params: 4 " in proc.stdout
    proc = cli_subprocess("summary", path, "--explain", env=contract_env)
    assert proc.returncode == 0, proc.stderr
    note = next(line for line in proc.stdout.splitlines() if "explain failed" in line)
    assert f"(RaisingExplain) from distribution '{DIST}' failed in explain: IndexError" in note
