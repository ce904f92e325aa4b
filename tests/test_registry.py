"""Plugin discovery through real entry points: small distributions are built and installed
into a temporary folder during the test run, then the real CLI runs with that folder on
PYTHONPATH (so the rest of the environment stays untouched)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import cli_subprocess, model_doc

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
