"""Plugins can't take nbcnn down (issue 16, findings 8, 9, 12, 13 and 15).

Hostile distributions are built and installed into a temporary folder as tests/test_registry.py
does, and the real CLI runs with that folder on PYTHONPATH. Each plugin module appends its name
to the file named by NBCNN_TEST_IMPORTS when it is imported, so a test can tell which plugins a
command imported, not only how long it took.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import cli, cli_subprocess, model_doc
from PIL import Image
from test_registry import make_distribution, pip_install_target
from test_robustness import error_line

#: How long the slow plugin sleeps at import.
SLOW_IMPORT = 2.0

MARK = """
import os as _os

if _os.environ.get("NBCNN_TEST_IMPORTS"):
    with open(_os.environ["NBCNN_TEST_IMPORTS"], "a") as _log:
        _log.write(__name__ + "\\n")
"""

EXIT_AT_IMPORT = (
    MARK
    + """
raise SystemExit("\\x1b[2J\\x1b[31mplugin says bye")
"""
)

METACLASS_AT_IMPORT = (
    MARK
    + """
from nbcnn.layers.base import Layer


class Refuses(type):
    def __new__(mcs, name, bases, namespace):
        raise SystemExit(7)


class NeverMade(Layer, metaclass=Refuses):
    pass
"""
)

NOISY = (
    MARK
    + """
import sys

print("hello from the noisy plugin")
sys.stdout.write("more noise\\n")
_os.write(1, b"noise straight to file descriptor 1\\n")

from nbcnn.layers.base import Layer


class Noisy(Layer):
    def output_shape(self, input_shape):
        print("noise from a calculator")
        return tuple(input_shape)
"""
)

SLOW = (
    MARK
    + f"""
import time

time.sleep({SLOW_IMPORT})

from nbcnn.layers.base import Layer


class Sleepy(Layer):
    def output_shape(self, input_shape):
        return tuple(input_shape)
"""
)

HOSTILE = (
    MARK
    + """
from nbcnn.layers.base import Layer, ParamSpec


class Custom(BaseException):
    pass


class Same(Layer):
    def output_shape(self, input_shape):
        return tuple(input_shape)


class ExitInInit(Same):
    def __init__(self, **kwargs):
        raise SystemExit(5)


class ExitInOutputShape(Same):
    def output_shape(self, input_shape):
        raise SystemExit(6)


class GeneratorExitInParamShapes(Same):
    def param_shapes(self, input_shape):
        raise GeneratorExit("closing")


class CustomInMacs(Same):
    def macs(self, input_shape):
        raise Custom("a BaseException of its own")


class ExitInExplain(Same):
    def explain(self, input_shape):
        raise SystemExit(0)


class ExitInReceptiveField(Same):
    def receptive_field(self, input_shape, rf, jump):
        raise SystemExit(9)


class StringShape(Same):
    def output_shape(self, input_shape):
        return "(None, 4)"


class StringMacs(Same):
    def macs(self, input_shape):
        return "12"


class StringParams(Same):
    def param_shapes(self, input_shape):
        return "kernel"


class HalfMacs(Same):
    def macs(self, input_shape):
        return 2.5


class HalfParams(Same):
    def param_shapes(self, input_shape):
        return [ParamSpec("w", (2.5, 2))]


class FloatArgument(Same):
    arguments = {"factor": 2.0}


class StringApiVersion(Same):
    api_version = "1"


class NanField(Same):
    def receptive_field(self, input_shape, rf, jump):
        return tuple(float("nan") for _ in rf), jump


class RaisingAttributes(type(Layer)):
    def __getattribute__(cls, name):
        if name == "param_shapes":
            raise RuntimeError("no attributes for you")
        return super().__getattribute__(name)


class MetaAttributes(Same, metaclass=RaisingAttributes):
    pass


class RaisingCall(type(Layer)):
    def __call__(cls, *args, **kwargs):
        raise SystemExit(8)


class MetaCall(Same, metaclass=RaisingCall):
    pass


class NoName(Same):
    def __init__(self, **kwargs):
        pass


class EscapingName(Same):
    \"\"\"Names itself, and its type, with terminal escapes, CR, NUL and rich markup.\"\"\"

    def __init__(self, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.name = "\\x1b[31mred\\rover\\x00[/oops]"

    def explain(self, input_shape):
        return "\\x1b]0;title\\x07 no weights = 0"


EscapingName.__name__ = "Escaping\\x1b[2JName"


class NotALayer:
    pass


NotALayer.__name__ = "Not\\x1b[2JA\\rLayer"
"""
)

#: Layers with compute that fail in build, forward or their ONNX hook (issue 16's verification).
COMPUTE = (
    MARK
    + """
from nbcnn.layers.base import Layer, ParamSpec


class Identity(Layer):
    def output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, x, training=False):
        return x

    def backward(self, dy):
        return dy


class ExitInBuild(Identity):
    def param_shapes(self, input_shape):
        return [ParamSpec("w", (2,))]

    def build(self, input_shape, rng):
        raise SystemExit(14)


class ExitInForward(Identity):
    def forward(self, x, training=False):
        raise SystemExit(15)


class StringForward(Identity):
    def forward(self, x, training=False):
        return "not an array"


class ExitInToOnnx(Identity):
    def to_onnx(self, builder, input_name):
        raise SystemExit(22)


class IntToOnnx(Identity):
    def to_onnx(self, builder, input_name):
        return 42
"""
)

COMPUTE_TYPES = ["ExitInBuild", "ExitInForward", "StringForward", "ExitInToOnnx", "IntToOnnx"]

HOSTILE_TYPES = [
    "ExitInInit",
    "ExitInOutputShape",
    "GeneratorExitInParamShapes",
    "CustomInMacs",
    "ExitInExplain",
    "ExitInReceptiveField",
    "StringShape",
    "StringMacs",
    "StringParams",
    "HalfMacs",
    "HalfParams",
    "FloatArgument",
    "StringApiVersion",
    "NanField",
    "MetaAttributes",
    "MetaCall",
    "NoName",
    "EscapingName",
    "NotALayer",
]


@pytest.fixture(scope="module")
def hostile_env(tmp_path_factory):
    """PYTHONPATH with every hostile distribution installed, and the import log's path."""
    root = tmp_path_factory.mktemp("hostile")
    dists = [
        make_distribution(
            root,
            "nbcnn-test-exit",
            "nbcnn_test_exit",
            EXIT_AT_IMPORT,
            {"ExitAtImport": "nbcnn_test_exit:Layer"},
        ),
        make_distribution(
            root,
            "nbcnn-test-metaclass",
            "nbcnn_test_metaclass",
            METACLASS_AT_IMPORT,
            {"NeverMade": "nbcnn_test_metaclass:NeverMade"},
        ),
        make_distribution(
            root, "nbcnn-test-noisy", "nbcnn_test_noisy", NOISY, {"Noisy": "nbcnn_test_noisy:Noisy"}
        ),
        make_distribution(
            root, "nbcnn-test-slow", "nbcnn_test_slow", SLOW, {"Sleepy": "nbcnn_test_slow:Sleepy"}
        ),
        make_distribution(
            root,
            "nbcnn-test-hostile",
            "nbcnn_test_hostile",
            HOSTILE,
            {name: f"nbcnn_test_hostile:{name}" for name in HOSTILE_TYPES},
        ),
        make_distribution(
            root,
            "nbcnn-test-compute",
            "nbcnn_test_compute",
            COMPUTE,
            {name: f"nbcnn_test_compute:{name}" for name in COMPUTE_TYPES},
        ),
    ]
    pip_install_target(root / "site", *dists)
    log = root / "imports.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # COLUMNS: rich's table of `nbcnn layers` wide enough not to wrap the long messages.
    return {
        **env,
        "PYTHONPATH": str(root / "site"),
        "NBCNN_TEST_IMPORTS": str(log),
        "COLUMNS": "400",
    }


def imported(env) -> list[str]:
    """The plugin modules imported since the log was last cleared (and clear it)."""
    log = env["NBCNN_TEST_IMPORTS"]
    if not os.path.exists(log):
        return []
    with open(log) as handle:
        names = handle.read().split()
    os.remove(log)
    return names


def no_raw_controls(*texts: str) -> None:
    """None of ESC, NUL, CR, BEL reaches the terminal as such."""
    for text in texts:
        for char in ("\x1b", "\x00", "\r", "\x07"):
            assert char not in text, (char, text)


PLAIN = model_doc({"type": "Flatten"}, {"type": "Dense", "units": 3}, input_shape=(4, 4, 1))


# ---------------------------------------------------------------- lazy discovery


def test_summary_imports_no_plugin_it_does_not_use(hostile_env, write_config):
    """Finding 12: a 2 s import, a SystemExit at import and a printing plugin cost nothing
    to a config that does not use them; they are not even imported."""
    path = write_config(PLAIN)
    imported(hostile_env)
    proc = cli_subprocess("summary", path, "--json", env=hostile_env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total_params"] == 16 * 3 + 3
    assert imported(hostile_env) == []  # the slow one neither: its 2 s are not spent
    assert proc.stderr == ""


@pytest.fixture(scope="module")
def twin_env(hostile_env, tmp_path_factory):
    """hostile_env plus a second distribution registering ``Sleepy``."""
    root = tmp_path_factory.mktemp("twin")
    twin = make_distribution(
        root, "nbcnn-test-twin", "nbcnn_test_twin", SLOW, {"Sleepy": "nbcnn_test_twin:Sleepy"}
    )
    pip_install_target(root / "site", twin)
    path = os.pathsep.join([hostile_env["PYTHONPATH"], str(root / "site")])
    return {**hostile_env, "PYTHONPATH": path}


def test_did_you_mean_and_clash_checks_need_no_import(twin_env, write_config):
    """Unknown types and names registered twice are found from the metadata alone."""
    path = write_config(model_doc({"type": "Sleepy2"}))
    proc = cli_subprocess("summary", path, env=twin_env)
    error_line(proc.stderr, "layers[0].type", "unknown layer type 'Sleepy2'", "'Sleepy'")
    assert proc.returncode == 2 and imported(twin_env) == []
    path = write_config(model_doc({"type": "Sleepy"}))
    proc = cli_subprocess("summary", path, env=twin_env)
    error_line(proc.stderr, "'nbcnn-test-slow' and 'nbcnn-test-twin'", "nbcnn-test-slow:Sleepy")
    assert proc.returncode == 2 and imported(twin_env) == []


def test_train_of_a_config_not_using_the_plugins(hostile_env, write_config, tmp_path):
    doc = model_doc(
        {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
        input_shape=(8, 8, 1),
    )
    doc["train"] = {"data": {"dataset": "digits"}, "epochs": 1, "batch_size": 128}
    proc = cli_subprocess("train", write_config(doc), "--output", tmp_path / "run", env=hostile_env)
    assert proc.returncode == 0, proc.stderr
    assert imported(hostile_env) == []


def test_layers_json_imports_all_and_reports_each(hostile_env):
    """`nbcnn layers --json` imports every plugin: stdout stays one JSON document although a
    plugin prints at import; SystemExit at import and a refusing metaclass are broken entries;
    the slow import is reported with its time."""
    proc = cli_subprocess("layers", "--json", env=hostile_env)
    assert proc.returncode == 0, proc.stderr
    entries = {e["name"]: e for e in json.loads(proc.stdout)}
    assert "hello from the noisy plugin" in proc.stderr
    assert "noise straight to file descriptor 1" in proc.stderr
    assert entries["Noisy"]["status"] == "ok"
    exits = entries["ExitAtImport"]
    assert exits["status"] == "broken" and "SystemExit" in exits["error"]
    assert exits["distribution"] == "nbcnn-test-exit"
    assert entries["NeverMade"]["status"] == "broken"
    assert "SystemExit: '7'" in entries["NeverMade"]["error"]
    assert "RuntimeError" in entries["MetaAttributes"]["error"]
    sleepy = entries["Sleepy"]
    assert sleepy["status"] == "ok" and sleepy["slow_import"] is True
    assert sleepy["import_seconds"] >= SLOW_IMPORT
    assert "'Sleepy' from distribution 'nbcnn-test-slow' took 2." in proc.stderr
    assert entries["Dense"]["slow_import"] is False
    assert set(imported(hostile_env)) >= {"nbcnn_test_noisy", "nbcnn_test_slow", "nbcnn_test_exit"}
    no_raw_controls(proc.stdout, proc.stderr)


def test_layers_table_escapes_and_reports(hostile_env):
    proc = cli_subprocess("layers", env=hostile_env)
    assert proc.returncode == 0, proc.stderr
    assert "hello from the noisy plugin" not in proc.stdout
    assert "slow import" in proc.stdout
    assert "plugin says bye" in proc.stdout and "\\x1b[2J" in proc.stdout
    # The contract check quotes the class's own name: escaped in the table and the warning.
    assert "Not\\x1b[2JA\\rLayer does not derive from nbcnn.layers.base.Layer" in proc.stdout
    assert "Not\\x1b[2JA\\rLayer does not derive from nbcnn.layers.base.Layer" in proc.stderr
    no_raw_controls(proc.stdout, proc.stderr)


def test_summary_json_stays_json_with_a_printing_plugin(hostile_env, write_config):
    path = write_config(model_doc({"type": "Noisy"}, {"type": "Flatten"}, input_shape=(4, 4, 1)))
    proc = cli_subprocess("summary", path, "--json", env=hostile_env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["layers"][0]["distribution"] == "nbcnn-test-noisy"
    assert "hello from the noisy plugin" in proc.stderr
    assert "noise from a calculator" in proc.stderr


def test_json_stays_json_with_stderr_closed(hostile_env, write_config):
    """With stderr closed, what the plugin prints (and nbcnn's warnings) go nowhere, not to
    stdout: print(file=None) would write to stdout."""
    path = write_config(model_doc({"type": "Noisy"}, {"type": "Flatten"}, input_shape=(4, 4, 1)))
    for args in (["summary", str(path), "--json"], ["layers", "--json"]):
        command = " ".join([sys.executable, "-m", "nbcnn.cli", *args, "2>&-"])
        proc = subprocess.run(
            ["bash", "-c", command], env=hostile_env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout
        json.loads(proc.stdout)


# ---------------------------------------------------------------- SystemExit and friends


@pytest.mark.parametrize(
    ("layer", "fragments"),
    [
        ("ExitAtImport", ["layers[0].type", "'nbcnn-test-exit'", "is broken", "SystemExit"]),
        ("NeverMade", ["layers[0].type", "'nbcnn-test-metaclass'", "SystemExit: '7'"]),
        ("ExitInInit", ["ExitInInit", "could not be created", "SystemExit: '5'"]),
        ("MetaCall", ["MetaCall", "could not be created", "SystemExit: '8'"]),
        ("MetaAttributes", ["layers[0].type", "layer contract raised RuntimeError"]),
        ("NoName", ["made a layer named None", "super().__init__"]),
        # The one-line error folds whitespace (CR included) and escapes the rest.
        ("NotALayer", ["layers[0].type", "Not\\x1b[2JA Layer does not derive from"]),
    ],
)
def test_plugin_base_exceptions_are_one_line(hostile_env, write_config, layer, fragments):
    """Finding 8: SystemExit (any BaseException but KeyboardInterrupt) at import, in class
    creation or in the constructor is one line naming the layer and its distribution, exit
    code 2, never the plugin's own exit code and silence."""
    path = write_config(model_doc({"type": layer}, {"type": "Flatten"}, input_shape=(4, 4, 1)))
    proc = cli_subprocess("summary", path, env=hostile_env)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    error_line(proc.stderr, "layers[0]", *fragments, "from distribution 'nbcnn-test-")
    no_raw_controls(proc.stderr)


@pytest.mark.parametrize(
    ("layer", "fragment"),
    [
        ("ExitInOutputShape", "failed in output_shape: SystemExit: '6'"),
        ("GeneratorExitInParamShapes", "failed in param_shapes: GeneratorExit: 'closing'"),
        ("CustomInMacs", "failed in macs: Custom: 'a BaseException of its own'"),
        ("ExitInReceptiveField", "failed in receptive_field: SystemExit: '9'"),
    ],
)
def test_a_calculator_raising_a_base_exception_is_a_bug(hostile_env, write_config, layer, fragment):
    """The same in a calculator, but a bug in the layer (issue 15): exit code 1."""
    path = write_config(model_doc({"type": layer}, {"type": "Flatten"}, input_shape=(4, 4, 1)))
    proc = cli_subprocess("summary", path, env=hostile_env)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    error_line(
        proc.stderr, "layers[0] ", f"({layer}) from distribution 'nbcnn-test-hostile'", fragment
    )


def test_an_explain_raising_system_exit_spoils_only_its_line(hostile_env, write_config):
    path = write_config(
        model_doc({"type": "ExitInExplain"}, {"type": "Flatten"}, input_shape=(4, 4, 1))
    )
    proc = cli_subprocess("summary", path, "--explain", env=hostile_env)
    assert proc.returncode == 0, proc.stderr
    note = "(ExitInExplain) from distribution 'nbcnn-test-hostile' failed in explain: SystemExit"
    assert note in proc.stdout


def test_train_refuses_a_constructor_that_exits(hostile_env, write_config):
    doc = model_doc({"type": "ExitInInit"}, {"type": "Flatten"}, input_shape=(8, 8, 1))
    proc = cli_subprocess("train", write_config(doc), env=hostile_env)
    assert proc.returncode == 2, proc.stderr
    error_line(proc.stderr, "layers[0]", "'nbcnn-test-hostile'", "SystemExit")


@pytest.mark.parametrize(
    ("layer", "fragments"),
    [
        ("StringShape", ["output_shape: returned '(None, 4)'", "tuple of ints"]),
        ("StringMacs", ["failed in macs: returned '12'", "an int >= 0"]),
        ("StringParams", ["failed in param_shapes: returned 'kernel'", "ParamSpec"]),
        # Not truncated to 2 MACs, nor a weight of int(2.5) * 2 values: refused.
        ("HalfMacs", ["(HalfMacs)", "returned 2.5; expected an int >= 0"]),
        ("HalfParams", ["(HalfParams)", "shape=(2.5, 2)", "shape: tuple of ints >= 0"]),
        ("NanField", ["failed in receptive_field", "positive numbers"]),
    ],
)
def test_calculator_returning_garbage_is_one_line(hostile_env, write_config, layer, fragments):
    """Finding 9: a calculator returning a string (or NaN, which JSON cannot hold) is one line
    naming the layer and its distribution, not a traceback; a bug in the layer, exit code 1
    (issue 15)."""
    path = write_config(model_doc({"type": layer}, {"type": "Flatten"}, input_shape=(4, 4, 1)))
    for args in ((), ("--json",)):
        proc = cli_subprocess("summary", path, *args, env=hostile_env)
        assert proc.returncode == 1, proc.stderr
        error_line(proc.stderr, "layers[0]", "from distribution 'nbcnn-test-hostile'", *fragments)
        assert proc.stdout == ""


# ---------------------------------------------------------------- build, forward, to_onnx


def _compute_model(tmp_path, write_config, plugin_type: str):
    """A digits model whose first layer is ``plugin_type`` (named 'odd', the shape of its
    input), a Conv2D for `filters`, a weights file, an .npz for `predict`, a PNG for
    `featuremaps`."""
    doc = model_doc(
        {"type": plugin_type, "name": "odd"},
        {"type": "Conv2D", "filters": 2, "kernel_size": 3, "name": "conv"},
        {"type": "Flatten", "name": "flat"},
        {"type": "Dense", "units": 10, "activation": "softmax", "name": "out"},
        input_shape=(8, 8, 1),
    )
    doc["train"] = {"data": {"dataset": "digits"}, "epochs": 1, "batch_size": 128}
    config = write_config(doc)
    rng = np.random.default_rng(0)
    weights = {
        "conv/kernel": rng.normal(size=(3, 3, 1, 2)).astype(np.float32),
        "conv/bias": np.zeros(2, np.float32),
        "out/kernel": rng.normal(size=(72, 10)).astype(np.float32),
        "out/bias": np.zeros(10, np.float32),
    }
    if plugin_type == "ExitInBuild":
        weights["odd/w"] = np.zeros(2, np.float32)
    np.savez(tmp_path / "w.npz", **weights)
    np.savez(tmp_path / "x.npz", x=rng.random((2, 8, 8, 1)).astype(np.float32))
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "x.png")
    return config, tmp_path / "w.npz"


def _command(name: str, config, weights, tmp_path) -> list:
    run = tmp_path / f"run-{name}"
    return {
        "train": ["train", config, "--output", run],
        "evaluate": ["evaluate", config, "--weights", weights],
        "predict": ["predict", config, tmp_path / "x.npz", "--weights", weights],
        "featuremaps": [
            *("featuremaps", config, tmp_path / "x.png", "--weights", weights),
            *("--out", tmp_path / "maps.png", "--layer", "odd"),
        ],
        "filters": ["filters", config, "--weights", weights, "--out", tmp_path / "f.png"],
        "export": ["export", config, "--weights", weights, "--onnx", tmp_path / "m.onnx"],
    }[name]


@pytest.mark.parametrize(
    "command", ["train", "evaluate", "predict", "featuremaps", "filters", "export"]
)
def test_a_build_that_exits_is_one_line_in_every_command(
    hostile_env, write_config, tmp_path, command
):
    """A plugin's build() raising SystemExit(14) exited 14 in silence: now one line naming the
    layer, its type and distribution, exit code 1, whichever command builds the model."""
    config, weights = _compute_model(tmp_path, write_config, "ExitInBuild")
    proc = cli_subprocess(*_command(command, config, weights, tmp_path), env=hostile_env)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    error_line(
        proc.stderr,
        "layers[0] 'odd' (ExitInBuild)",
        "from distribution 'nbcnn-test-compute'",
        "failed in build: SystemExit: '14'",
    )


@pytest.mark.parametrize(
    ("layer", "fragment"),
    [
        ("ExitInForward", "failed in forward: SystemExit: '15'"),
        ("StringForward", "returned 'not an array'; expected float32 (1, 8, 8, 1)"),
    ],
)
def test_featuremaps_of_a_plugin_layer_goes_through_the_guarded_forward(
    hostile_env, write_config, tmp_path, layer, fragment
):
    """`featuremaps --layer` ran the layers' forward directly: a SystemExit exited in silence,
    a forward returning a string ended in a traceback."""
    config, weights = _compute_model(tmp_path, write_config, layer)
    proc = cli_subprocess(*_command("featuremaps", config, weights, tmp_path), env=hostile_env)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    error_line(proc.stderr, f"layers[0] 'odd' ({layer})", "'nbcnn-test-compute'", fragment)
    assert not (tmp_path / "maps.png").exists()


@pytest.mark.parametrize(
    ("layer", "fragment"),
    [
        ("ExitInToOnnx", "failed in to_onnx: SystemExit: '22'"),
        ("IntToOnnx", "failed in to_onnx: returned 42; expected its output tensor's name"),
    ],
)
def test_export_guards_a_plugins_to_onnx_hook(hostile_env, write_config, tmp_path, layer, fragment):
    """`nbcnn export` called a plugin's to_onnx unguarded: SystemExit(22) exited 22 in silence,
    returning 42 ended in onnx's TypeError traceback."""
    pytest.importorskip("onnx")
    config, weights = _compute_model(tmp_path, write_config, layer)
    proc = cli_subprocess(*_command("export", config, weights, tmp_path), env=hostile_env)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    error_line(proc.stderr, f"layers[0] 'odd' ({layer})", "'nbcnn-test-compute'", fragment)
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------- names printed escaped


def test_plugin_supplied_names_are_printed_escaped(hostile_env, write_config):
    """Finding 13: a name and a type with ANSI escapes, CR, NUL and rich markup are printed
    escaped in the table and the explain section; JSON keeps the real strings."""
    path = write_config(
        model_doc({"type": "EscapingName"}, {"type": "Flatten"}, input_shape=(4, 4, 1))
    )
    proc = cli_subprocess("summary", path, "--explain", env=hostile_env)
    assert proc.returncode == 0, proc.stderr
    no_raw_controls(proc.stdout, proc.stderr)
    assert "\\x1b[31mred\\rover\\x00[/oops] (Escaping\\x1b[2JName)" in proc.stdout
    assert "\\x1b]0;title\\x07 no weights = 0" in proc.stdout
    proc = cli_subprocess("summary", path, "--json", env=hostile_env)
    row = json.loads(proc.stdout)["layers"][0]
    assert row["name"] == "\x1b[31mred\rover\x00[/oops]" and row["type"] == "Escaping\x1b[2JName"


@pytest.mark.parametrize(
    "name", ["\x1b[31mred", "a\rb", "nul\x00byte", "[/oops]", "bidi\u202eevil"]
)
def test_config_names_never_reach_the_terminal_raw(write_config, name):
    """Names from the config: whether the spec refuses them or the summary prints them, no
    control character is written raw (and rich markup is text)."""
    for doc in (
        model_doc({"type": "Flatten", "name": name}, input_shape=(2, 2, 1)),
        {**model_doc({"type": "Flatten"}, input_shape=(2, 2, 1)), "name": name},
    ):
        result = cli("summary", write_config(doc), "--explain")
        assert result.exit_code in (0, 2), result.stderr
        no_raw_controls(result.stdout, result.stderr)
        assert "\u202e" not in result.stdout + result.stderr
        if result.exit_code == 0:
            assert name in result.stdout or repr(name)[1:-1] in result.stdout


# ---------------------------------------------------------------- many layers


def _many_layers(write_config, n: int, filename: str):
    layers = [{"type": "Flatten"}]
    for i in range(n - 1):
        layers.append(
            {"type": "Dense", "units": 4}
            if i % 2 == 0
            else {"type": "Activation", "activation": "relu"}
        )
    return write_config({"input_shape": [4, 4, 1], "layers": layers}, filename)


def _timed_summary(path) -> tuple[float, str]:
    start = time.perf_counter()
    result = cli("summary", path, "--explain")
    assert result.exit_code == 0, result.stderr
    return time.perf_counter() - start, result.stdout


def test_many_layer_summary_scales_linearly(write_config):
    """Finding 15: a 25,000-layer config took 44 s to summarise, most of it in rich's Table
    (0.4 ms a row). 1,000 and 5,000 layers: the second costs about five times the first (a
    quadratic step would make it 25), and the table is milliseconds beside the YAML parse."""

    small = _many_layers(write_config, 1000, "small.yaml")
    big = _many_layers(write_config, 5000, "big.yaml")
    _timed_summary(small)  # warm the imports
    t_small, _ = _timed_summary(small)
    t_big, text = _timed_summary(big)
    assert "dense_2499 (Dense)" in text and "activation_2498 (Activation)" in text
    assert text.count("(Dense)") == 2500
    # A ratio of two runs in one process, so a loaded host slows both; 5x is linear, 25x
    # quadratic. Building, calculating and printing 5,000 rows took ~0.4 s here beside the
    # YAML parse; rich's Table alone took 2 s (not asserted: timings are for benchmarks).
    assert t_big < 12 * t_small, (t_small, t_big)


# ---------------------------------------------------------------- registration checks

#: What `nbcnn layers` and a config using the type say of each registration mistake (issue 15:
#: `arguments = {"factor": 2.0}` was listed as ok, then an AttributeError; api_version "1" read
#: "declares plugin api_version '1'; this nbcnn supports api_version 1").
REGISTRATION_MISTAKES = {
    "FloatArgument": "FloatArgument.arguments['factor'] is 2.0 (a float), not an Arg",
    "StringApiVersion": "StringApiVersion.api_version is '1' (a str); it must be an int",
    "NotALayer": "Not\\x1b[2JA\\rLayer does not derive from nbcnn.layers.base.Layer",
}


def test_layers_reports_registration_mistakes(hostile_env):
    """Each mistake is a broken entry whose error says what is wrong with the class, with a
    warning naming the distribution; the command still succeeds."""
    proc = cli_subprocess("layers", "--json", env=hostile_env)
    assert proc.returncode == 0, proc.stderr
    entries = {e["name"]: e for e in json.loads(proc.stdout)}
    for name, problem in REGISTRATION_MISTAKES.items():
        entry = entries[name]
        assert entry["status"] == "broken" and entry["distribution"] == "nbcnn-test-hostile"
        assert entry["error"].startswith(problem.encode().decode("unicode_escape")), entry
        warning = f"layer plugin {name!r} from distribution 'nbcnn-test-hostile' is broken"
        assert f"{warning} and was skipped: {problem}" in proc.stderr


@pytest.mark.parametrize("layer", ["FloatArgument", "StringApiVersion"])
def test_using_a_misregistered_type_is_one_line(hostile_env, write_config, layer):
    """Refused like every broken plugin: one line naming the key, the distribution and the
    mistake, exit code 2, before any constructor runs (no AttributeError from deep inside)."""
    path = write_config(model_doc({"type": layer}, {"type": "Flatten"}, input_shape=(4, 4, 1)))
    proc = cli_subprocess("summary", path, env=hostile_env)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    error_line(
        proc.stderr,
        f"layers[0].type: layer type {layer!r} from distribution 'nbcnn-test-hostile' is broken",
        REGISTRATION_MISTAKES[layer],
    )
