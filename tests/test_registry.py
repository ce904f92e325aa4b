"""Plugin discovery through real entry points: small distributions are built and installed
into a temporary folder during the test run, then the real CLI runs with that folder on
PYTHONPATH (so the rest of the environment stays untouched)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from helpers import ROOT, cli, cli_subprocess, model_doc

import nbcnn.registry as registry_module
from nbcnn.errors import ConfigError
from nbcnn.layers.args import Arg
from nbcnn.layers.base import Layer
from nbcnn.layers.core import Dense
from nbcnn.registry import Registry, contract_problem

PLUGIN_MODULE = '''
from nbcnn.layers.base import Layer, ParamSpec
from nbcnn.layers.args import Arg, positive_int


class Doubler(Layer):
    """Calculator-only test layer: doubles the channels, C*2 + 1 parameters."""

    arguments = {"extra": Arg(positive_int, 1, "unused")}

    def output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] * 2)

    def param_shapes(self, input_shape):
        return [ParamSpec("scale", (input_shape[-1] * 2 + 1,))]


class FutureLayer(Doubler):
    api_version = 99


class NotALayer:
    pass
'''


def make_distribution(root, name, module, source, entry_points):
    """Write a minimal installable distribution ``name`` with the given entry points."""
    folder = root / name
    (folder / module).mkdir(parents=True)
    (folder / module / "__init__.py").write_text(textwrap.dedent(source))
    points = "\n".join(f'{k} = "{v}"' for k, v in entry_points.items())
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "1.2.3"

        [tool.setuptools]
        packages = ["{module}"]

        [project.entry-points."nbcnn.layers"]
        """)
        + points
        + "\n"
    )
    return folder


def pip_install_target(target, *folders):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            *map(str, folders),
        ],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """Environment variables that put the installed test plugins on the path."""
    root = tmp_path_factory.mktemp("dists")
    good = make_distribution(
        root,
        "nbcnn-test-good",
        "nbcnn_test_good",
        PLUGIN_MODULE,
        {"Doubler": "nbcnn_test_good:Doubler"},
    )
    broken = make_distribution(
        root,
        "nbcnn-test-broken",
        "nbcnn_test_broken",
        "raise ImportError('this plugin needs libfoo')\n",
        {"Broken": "nbcnn_test_broken:Layer"},
    )
    odd = make_distribution(
        root,
        "nbcnn-test-odd",
        "nbcnn_test_odd",
        PLUGIN_MODULE,
        {
            "Missing": "nbcnn_test_odd:DoesNotExist",
            "Future": "nbcnn_test_odd:FutureLayer",
            "NotALayer": "nbcnn_test_odd:NotALayer",
        },
    )
    clash = make_distribution(
        root,
        "nbcnn-test-clash",
        "nbcnn_test_clash",
        PLUGIN_MODULE,
        {"Doubler": "nbcnn_test_clash:Doubler"},
    )
    target = root / "site"
    pip_install_target(target, good, broken, odd)
    clash_target = root / "site-clash"
    pip_install_target(clash_target, clash)
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {
        "plain": {**base, "PYTHONPATH": str(target)},
        "clash": {**base, "PYTHONPATH": os.pathsep.join([str(target), str(clash_target)])},
    }


def run(env, *args, cwd=None):
    return cli_subprocess(*args, env=env, cwd=cwd)


def test_layers_json_lists_plugins_and_builtins(plugin_env):
    proc = run(plugin_env["plain"], "layers", "--json")
    assert proc.returncode == 0, proc.stderr
    entries = {(e["name"], e["distribution"]): e for e in json.loads(proc.stdout)}
    conv = entries[("Conv2D", "nbcnn")]
    assert conv["status"] == "ok" and conv["trainable"] is True
    doubler = entries[("Doubler", "nbcnn-test-good")]
    assert doubler["version"] == "1.2.3" and doubler["status"] == "ok"
    assert doubler["trainable"] is False
    broken = entries[("Broken", "nbcnn-test-broken")]
    assert broken["status"] == "broken" and "needs libfoo" in broken["error"]
    assert "DoesNotExist" in entries[("Missing", "nbcnn-test-odd")]["error"]
    assert "api_version 99" in entries[("Future", "nbcnn-test-odd")]["error"]
    assert "supports api_version 1" in entries[("Future", "nbcnn-test-odd")]["error"]
    assert entries[("NotALayer", "nbcnn-test-odd")]["status"] == "broken"
    # A warning names the broken distribution; the command still succeeds.
    assert "nbcnn-test-broken" in proc.stderr


def test_summary_with_plugin_and_broken_neighbours(plugin_env, write_config):
    path = write_config(
        model_doc(
            {"type": "Doubler"},
            {"type": "Flatten"},
            {"type": "Dense", "units": 2},
            input_shape=(4, 4, 3),
        )
    )
    proc = run(plugin_env["plain"], "summary", path, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    # Doubler: 3 channels -> 6, 3*2 + 1 = 7 params; Dense: 4*4*6 = 96 inputs -> 96*2 + 2
    assert doc["layers"][0]["output_shape"] == [4, 4, 6]
    assert doc["layers"][0]["params"] == 7
    assert doc["layers"][0]["distribution"] == "nbcnn-test-good"
    assert doc["total_params"] == 7 + 96 * 2 + 2


def test_using_broken_type_is_clear_error(plugin_env, write_config):
    path = write_config(model_doc({"type": "Broken"}))
    proc = run(plugin_env["plain"], "summary", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nbcnn-test-broken" in proc.stderr and "layers[0].type" in proc.stderr


def test_name_clash_names_both_and_can_be_chosen(plugin_env, write_config):
    path = write_config(model_doc({"type": "Doubler"}, input_shape=(4, 4, 3)))
    proc = run(plugin_env["clash"], "summary", path)
    assert proc.returncode == 2
    assert "nbcnn-test-good" in proc.stderr and "nbcnn-test-clash" in proc.stderr
    chosen = write_config(
        model_doc({"type": "nbcnn-test-clash:Doubler"}, input_shape=(4, 4, 3)), "chosen.yaml"
    )
    proc = run(plugin_env["clash"], "summary", chosen, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["layers"][0]["distribution"] == "nbcnn-test-clash"


def test_training_works_beside_broken_plugins(plugin_env, write_config, tmp_path):
    """A model of working layers trains beside broken plugins, which are not even imported
    (nor warned about) since it does not use them: `nbcnn layers` reports them."""
    doc = model_doc(
        {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
        input_shape=(8, 8, 1),
    )
    doc["train"] = {"data": {"dataset": "digits"}, "epochs": 1, "batch_size": 64}
    out = tmp_path / "run"
    proc = run(plugin_env["plain"], "train", write_config(doc), "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert "nbcnn-test-broken" not in proc.stderr  # not imported, so no warning
    assert (out / "model.npz").exists()


def test_train_refuses_calculator_only_plugin_naming_its_distribution(plugin_env, write_config):
    doc = model_doc({"type": "Doubler"}, {"type": "Flatten"}, input_shape=(8, 8, 1))
    proc = run(plugin_env["plain"], "train", write_config(doc))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Doubler" in proc.stderr and "'nbcnn-test-good'" in proc.stderr
    assert "calculator only" in proc.stderr


# ---------------------------------------------------------------- a plugin naming a built-in

SHADOW_MODULE = '''
from nbcnn.layers.base import Layer
from nbcnn.layers.args import Arg, positive_int


class Dense(Layer):
    """Calculator-only Dense of another distribution: no weights, so a config reaching it
    by mistake shows 0 parameters where nbcnn's Dense has some."""

    arguments = {"units": Arg(positive_int, 1, "output size")}

    def output_shape(self, input_shape):
        return (self.units,)
'''


@pytest.fixture(scope="module")
def shadow_env(plugin_env, tmp_path_factory):
    """``one``: a plugin registering ``Dense`` beside the test plugins; ``two``: a second
    third party registering ``Dense`` as well."""
    root = tmp_path_factory.mktemp("shadow")
    for name in ("nbcnn-test-shadow", "nbcnn-test-shadow-too"):
        module = name.replace("-", "_")
        folder = make_distribution(root, name, module, SHADOW_MODULE, {"Dense": f"{module}:Dense"})
        pip_install_target(root / name / "site", folder)
    plain = plugin_env["plain"]
    one = os.pathsep.join([plain["PYTHONPATH"], str(root / "nbcnn-test-shadow" / "site")])
    two = os.pathsep.join([one, str(root / "nbcnn-test-shadow-too" / "site")])
    # COLUMNS: rich's table of `nbcnn layers` wide enough not to wrap the status.
    return {
        "one": {**plain, "PYTHONPATH": one, "COLUMNS": "400"},
        "two": {**plain, "PYTHONPATH": two, "COLUMNS": "400"},
    }


def error_line(stderr: str, *fragments: str) -> str:
    """The one ``nbcnn: error:`` line of ``stderr``, holding each fragment (as
    test_robustness.error_line, which imports this module)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nbcnn: error: "), stderr
    assert all(f in lines[0] for f in fragments), (fragments, lines[0])
    return lines[0]


DIGITS = ROOT / "configs" / "digits.yaml"
SHADOW_WARNING = (
    "warning: layer plugin 'Dense' from distribution 'nbcnn-test-shadow' shadows nbcnn's "
    "built-in Dense: a bare 'type: Dense' still means 'nbcnn:Dense'; write "
    "'type: nbcnn-test-shadow:Dense' for the plugin's"
)


@pytest.mark.parametrize("env", ["one", "two"])
def test_a_plugin_registering_dense_leaves_shipped_configs_alone(shadow_env, env):
    """Issue 15: installing a plugin that registers `Dense` broke every config saying `Dense`,
    configs/digits.yaml included. The built-in wins for its own names: the summary is the
    one without the plugin, and one warning (per shadowing distribution) says how to reach
    the plugin's."""
    proc = run(shadow_env[env], "summary", DIGITS, "--json")
    assert proc.returncode == 0, proc.stderr
    without = cli("summary", DIGITS, "--json")  # this process has no test plugin installed
    assert without.exit_code == 0, without.stderr
    assert json.loads(proc.stdout) == json.loads(without.stdout)
    warnings = proc.stderr.splitlines()
    assert warnings.count(SHADOW_WARNING) == 1, proc.stderr
    assert len(warnings) == (1 if env == "one" else 2), proc.stderr


def test_a_shadowing_plugin_is_reached_by_its_distribution(shadow_env, write_config):
    """`distribution:Dense` picks the plugin's, the bare name and `nbcnn:Dense` nbcnn's, in
    one config; the warning is printed once although the registry is asked three times."""
    path = write_config(
        model_doc(
            {"type": "Flatten"},
            {"type": "nbcnn-test-shadow:Dense", "units": 5},
            {"type": "Dense", "units": 3},
            {"type": "nbcnn:Dense", "units": 2},
            input_shape=(4, 4, 1),
        )
    )
    proc = run(shadow_env["one"], "summary", path, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["layers"][1:]
    assert [r["distribution"] for r in rows] == ["nbcnn-test-shadow", "nbcnn", "nbcnn"]
    assert [r["params"] for r in rows] == [0, 5 * 3 + 3, 3 * 2 + 2]
    assert proc.stderr.splitlines() == [SHADOW_WARNING]


def test_layers_reports_the_shadowing_plugin(shadow_env):
    """`nbcnn layers`: the plugin's Dense has status `shadows`, nbcnn's stays `ok` and lists
    the plugin in `clashes_with`; the table says which one a bare `Dense` means and names
    both spellings; the warning is printed once."""
    proc = run(shadow_env["one"], "layers", "--json")
    assert proc.returncode == 0, proc.stderr
    entries = {(e["name"], e["distribution"]): e for e in json.loads(proc.stdout)}
    plugin, builtin = entries[("Dense", "nbcnn-test-shadow")], entries[("Dense", "nbcnn")]
    assert plugin["status"] == "shadows" and plugin["clashes_with"] == ["nbcnn"]
    assert builtin["status"] == "ok" and builtin["clashes_with"] == ["nbcnn-test-shadow"]
    assert proc.stderr.splitlines().count(SHADOW_WARNING) == 1
    proc = run(shadow_env["one"], "layers")
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if " Dense " in line]
    plugin_row = next(r for r in rows if "nbcnn-test-shadow" in r.split("│")[2])
    assert "shadows nbcnn:Dense" in plugin_row and "use nbcnn-test-shadow:Dense" in plugin_row
    builtin_row = next(r for r in rows if r.split("│")[2].strip() == "nbcnn")
    assert "a bare Dense means this one" in builtin_row


def test_a_mistyped_distribution_names_each_spelling(shadow_env, write_config):
    """A wrong `distribution:` before a shared name lists each `type:` that works, nbcnn's
    first."""
    path = write_config(model_doc({"type": "nbcnn-test-shadw:Dense", "units": 2}))
    proc = run(shadow_env["two"], "summary", path)
    assert proc.returncode == 2
    errors = "".join(line for line in proc.stderr.splitlines(True) if "shadows" not in line)
    line = error_line(errors, "layers[0].type", "no distribution 'nbcnn-test-shadw'")
    assert line.endswith(
        "write 'type: nbcnn:Dense' or 'type: nbcnn-test-shadow:Dense' or "
        "'type: nbcnn-test-shadow-too:Dense'"
    )


def test_two_third_parties_stay_ambiguous(plugin_env, write_config):
    """No built-in `Doubler`: two plugins registering it are both `clash` in `nbcnn layers
    --json`, and the bare name is an error naming both spellings."""
    proc = run(plugin_env["clash"], "layers", "--json")
    assert proc.returncode == 0, proc.stderr
    doublers = [e for e in json.loads(proc.stdout) if e["name"] == "Doubler"]
    assert [(e["distribution"], e["status"]) for e in doublers] == [
        ("nbcnn-test-clash", "clash"),
        ("nbcnn-test-good", "clash"),
    ]
    path = write_config(model_doc({"type": "Doubler"}, input_shape=(4, 4, 3)))
    proc = run(plugin_env["clash"], "summary", path)
    assert proc.returncode == 2
    error_line(
        proc.stderr,
        "layers[0].type",
        "'type: nbcnn-test-clash:Doubler' or 'type: nbcnn-test-good:Doubler'",
    )
    assert "warning" not in proc.stderr  # no built-in is shadowed


# ---------------------------------------------------------------- the rule, in-process


def _points(*registrations):
    """Entry-point stand-ins ``(name, distribution, class)``: what Registry reads of one."""
    loaded = []

    def point(name, dist, cls):
        def load():
            loaded.append((name, dist))
            return cls

        about = SimpleNamespace(metadata={"Name": dist}, version="1.0")
        return SimpleNamespace(name=name, value=f"fake_{dist}:{name}", dist=about, load=load)

    return [point(*r) for r in registrations], loaded


class _OtherDense(Dense):
    pass


def test_the_builtin_wins_without_importing_the_plugin(monkeypatch, capsys):
    monkeypatch.setattr(registry_module, "_WARNED", set())
    points, loaded = _points(
        ("Dense", "nbcnn", Dense), ("Dense", "x-a", _OtherDense), ("Dense", "x_b", _OtherDense)
    )
    reg = Registry(points)
    assert reg.get("Dense") is Dense and loaded == [("Dense", "nbcnn")]
    assert reg.get("x-a:Dense") is _OtherDense and reg.get("X.B:Dense") is _OtherDense
    assert [e.status for e in reg.entries()] == ["ok", "shadows", "shadows"]
    Registry(points)  # discovered again (refresh): no second warning
    err = capsys.readouterr().err.splitlines()
    assert [line.split("distribution ")[1][:5] for line in err] == ["'x-a'", "'x_b'"]


def test_third_parties_sharing_a_name_are_ambiguous_whatever_their_order():
    points, loaded = _points(("Thing", "x-b", _OtherDense), ("Thing", "x-a", _OtherDense))
    reg = Registry(points)
    with pytest.raises(ConfigError) as info:
        reg.entry("Thing")
    assert loaded == []  # found from the metadata alone
    assert str(info.value).endswith(
        "registered by 'x-a' and 'x-b'; choose one with 'type: x-a:Thing' or 'type: x-b:Thing'"
    )
    assert [e.status for e in reg.entries()] == ["clash", "clash"]


class _Base(Layer):
    def output_shape(self, input_shape):
        return input_shape


@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        ({"arguments": {"factor": 2.0}}, "C.arguments['factor'] is 2.0 (a float), not an Arg"),
        ({"arguments": {"k": Arg(3)}}, "C.arguments['k'] has parser 3, which is not callable"),
        ({"arguments": [Arg(int)]}, "C.arguments is [Arg("),
        ({"arguments": {1: Arg(int)}}, "C.arguments has the key 1; its keys must be keyword"),
        ({"api_version": "1"}, "C.api_version is '1' (a str); it must be an int (this nbcnn"),
        ({"api_version": True}, "C.api_version is True (a bool); it must be an int"),
        ({"api_version": 1.0}, "C.api_version is 1.0 (a float); it must be an int"),
        ({"api_version": 99}, "C declares plugin api_version 99; this nbcnn supports"),
        ({"macs": None}, "C lacks the contract method(s) macs"),
    ],
)
def test_registration_checks_say_what_is_wrong(attributes, problem):
    cls = type("C", (_Base,), attributes)
    assert contract_problem(cls).startswith(problem)
    assert contract_problem(_Base) is None


def test_a_class_not_derived_from_layer_is_told_so():
    """It lacks methods too, but deriving from Layer is the fix to name."""
    assert contract_problem(type("C", (), {})) == (
        "C does not derive from nbcnn.layers.base.Layer (write 'class C(Layer)')"
    )
