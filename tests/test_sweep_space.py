"""Sweep files and search spaces (nbcnn/sweep/space.py, spec.py, trials.py's outcomes): no
Dask cluster, no training; the sweeps themselves run in test_sweep.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from nbcnn.errors import ConfigError
from nbcnn.sweep.space import apply_values, parse_key, parse_search
from nbcnn.sweep.spec import DEFAULT_TRIALS, load_sweep
from nbcnn.sweep.trials import Outcome, outcome
from tests.helpers import TINY_MODEL, cli

BASE = {
    **TINY_MODEL,
    "train": {
        "data": {"dataset": "digits", "validation_split": 0.2},
        "epochs": 2,
        "optimizer": "adam",
    },
}


def write_sweep(tmp_path, sweep, base=BASE, name="sweep.yaml"):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    text = sweep if isinstance(sweep, str) else yaml.safe_dump(sweep, sort_keys=False)
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------- searches


def test_searches_as_written_become_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    lr = parse_search("train.optimizer.learning_rate", "loguniform(1e-4, 1e-2)")
    assert lr.distribution() == FloatDistribution(1e-4, 1e-2, log=True)
    assert parse_search("k", "uniform(0.1, 0.3)").distribution() == FloatDistribution(0.1, 0.3)
    batch = parse_search("train.batch_size", "int(16, 64, 16)")
    assert batch.distribution() == IntDistribution(16, 64, step=16)
    assert batch.grid() == [16, 32, 48, 64]
    assert parse_search("k", "randint(1, 3)").grid() == [1, 2, 3]
    assert parse_search("k", "logint(8, 64)").distribution() == IntDistribution(8, 64, log=True)
    filters = parse_search("layers[0].filters", [32, 64])
    assert filters.distribution() == CategoricalDistribution((32, 64))
    assert parse_search("k", "choice(adam, sgd)").choices == ("adam", "sgd")


def test_choices_optuna_cannot_hold_travel_as_json_and_come_back():
    search = parse_search("layers[0].kernel_size", [3, [3, 1]])
    assert search.grid() == ["3", "[3, 1]"]
    assert search.value("[3, 1]") == [3, 1] and search.value("3") == 3
    optimizer = parse_search("train.optimizer", "choice(adam, {type: sgd, momentum: 0.9})")
    assert optimizer.value(optimizer.grid()[1]) == {"type": "sgd", "momentum": 0.9}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("uniform(0.3, 0.1)", "needs a < b"),
        ("loguniform(0, 1)", "a log scale needs 0 < a"),
        ("uniform(1)", "expected 2 arguments, got 1"),
        ("uniform(a, 1)", "'a' is not a finite number"),
        ("int(1.5, 4)", "expected integers"),
        ("int(0, 10, 3)", "not a multiple of the step 3"),
        ("normal(0, 1)", "expected a list of values"),
        (0.01, "a list of one value fixes a key"),
        ([], "an empty list"),
        ([32, 32], "32 is listed twice"),
    ],
)
def test_a_bad_search_is_refused_at_its_key(value, message):
    with pytest.raises(ConfigError) as err:
        parse_search("layers[0].filters", value)
    assert err.value.where == "space.layers[0].filters"
    assert message in err.value.message


def test_a_continuous_range_has_no_grid():
    with pytest.raises(ConfigError, match="has no grid"):
        parse_search("k", "loguniform(1e-4, 1e-2)").grid()


# ---------------------------------------------------------------------- key paths


def test_key_paths_read_as_nbcnn_prints_them():
    assert parse_key("layers[2].filters") == ("layers", 2, "filters")
    assert parse_key("train.optimizer.learning_rate") == ("train", "optimizer", "learning_rate")
    for bad in ("", "layers[x].filters", "a..b", "layers.[2]"):
        with pytest.raises(ValueError, match="key"):
            parse_key(bad)


def test_values_set_into_a_copy_and_a_name_becomes_a_mapping():
    doc = apply_values(
        BASE,
        {
            "layers[0].filters": 8,
            "layers[0].strides": 2,  # new in an existing mapping: the loader checks it
            "train.optimizer.learning_rate": 0.01,  # optimizer: adam -> {type: adam, ...}
        },
    )
    assert doc["layers"][0]["filters"] == 8 and doc["layers"][0]["strides"] == 2
    assert doc["train"]["optimizer"] == {"type": "adam", "learning_rate": 0.01}
    assert BASE["layers"][0]["filters"] == 4 and BASE["train"]["optimizer"] == "adam"


# ---------------------------------------------------------------------- sweep files


def test_defaults_of_a_sweep_file(tmp_path):
    one_key = {"train.epochs": [1, 2]}
    sweep = load_sweep(write_sweep(tmp_path, {"base": "base.yaml", "space": one_key}))
    assert sweep.search == "tpe" and sweep.trials == DEFAULT_TRIALS
    assert (sweep.metric, sweep.direction) == ("val_accuracy", "maximize")
    assert str(sweep.output) == "runs/sweep" and sweep.threads_per_trial == 1
    assert sweep.pruning is None and sweep.seed == 0
    two_keys = {**one_key, "train.batch_size": "int(16, 48, 16)"}
    grid = write_sweep(tmp_path, {"base": "base.yaml", "search": "grid", "space": two_keys})
    assert load_sweep(grid).trials == 6  # the grid's size
    no_validation = {**BASE, "train": {**BASE["train"], "data": {"validation_split": 0}}}
    by_loss = {"base": "base.yaml", "metric": "loss", "space": one_key}
    sweep = load_sweep(write_sweep(tmp_path, by_loss, base=no_validation))
    assert (sweep.metric, sweep.direction) == ("loss", "minimize")
    pruned = {"base": "base.yaml", "pruning": "median", "space": one_key}
    sweep = load_sweep(write_sweep(tmp_path, pruned, base=no_validation))
    assert sweep.metric == "accuracy"
    assert sweep.pruning == {"startup_trials": 5, "warmup_epochs": 0}


def test_a_trial_config_is_the_base_with_its_values_threads_and_output(tmp_path):
    path = write_sweep(
        tmp_path,
        {"base": "base.yaml", "threads_per_trial": 2, "space": {"layers[0].filters": [2, 8]}},
    )
    doc = load_sweep(path).trial_config({"layers[0].filters": 8}, output="runs/x/trials/0003")
    assert doc["layers"][0]["filters"] == 8
    assert doc["train"]["threads"] == 2 and doc["train"]["output"] == "runs/x/trials/0003"


@pytest.mark.parametrize(
    ("sweep", "where", "message"),
    [
        ("- base.yaml", None, "a sweep file is a mapping"),
        ({"space": {"train.epochs": [1]}}, "base", "missing"),
        ({"base": "nope.yaml", "space": {"train.epochs": [1]}}, "base", "is not a file"),
        ({"base": "base.yaml"}, "space", "missing"),
        ({"base": "base.yaml", "space": {"train.epochs": [1]}, "serach": "grid"}, "serach",
         "did you mean 'search'"),
        ({"base": "base.yaml", "space": {}}, "space", "expected a mapping of config keys"),
        ({"base": "base.yaml", "space": {"layers[5].filters": [1]}}, "space.layers[5].filters",
         "layers has 3 items, so no [5]"),
        ({"base": "base.yaml", "space": {"train.lr_schedule.decay": [1]}},
         "space.train.lr_schedule.decay", "train.lr_schedule is not in the base config"),
        ({"base": "base.yaml", "space": {"train.output": ["a", "b"]}}, "space.train.output",
         "not swept"),
        ({"base": "base.yaml", "space": {"layers..filters": [1]}}, "space.layers..filters",
         "is not a key"),
        ({"base": "base.yaml", "space": {"train.epochs": "int(1, 0)"}}, "space.train.epochs",
         "needs a < b"),
        ({"base": "base.yaml", "search": "grid", "space": {"train.epochs": "uniform(1, 2)"}},
         "space.train.epochs", "has no grid"),
        ({"base": "base.yaml", "search": "grid", "trials": 3, "space": {"train.epochs": [1, 2]}},
         "trials", "at most 2 trials"),
        ({"base": "base.yaml", "search": "bayes", "space": {"train.epochs": [1]}}, "search",
         "grid"),
        ({"base": "base.yaml", "metric": "val_mae", "space": {"train.epochs": [1]}}, "metric",
         "is not recorded"),
        ({"base": "base.yaml", "pruning": "hyperband", "space": {"train.epochs": [1]}},
         "pruning", "expected none, median"),
        ({"base": "base.yaml", "pruning": {"type": "median", "startup": 1},
          "space": {"train.epochs": [1]}}, "pruning.startup", "did you mean 'startup_trials'"),
        ({"base": "base.yaml", "threads_per_trial": 0, "space": {"train.epochs": [1]}},
         "threads_per_trial", "from 1 to 1024"),
    ],
)  # fmt: skip
def test_each_mistake_is_one_line_naming_the_file_and_key_exit_2(tmp_path, sweep, where, message):
    path = write_sweep(tmp_path, sweep)
    result = cli("sweep", path)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and result.stdout == ""
    prefix = f"nbcnn: error: {path}: " + (f"{where}: " if where else "")
    assert line.startswith(prefix), line
    assert message in line


def test_the_base_configs_own_mistake_names_the_base_file_and_key(tmp_path):
    broken = {**BASE, "layers": [{"type": "Conv2D", "filters": 0, "kernel_size": 3}]}
    path = write_sweep(tmp_path, {"base": "base.yaml", "space": {"train.epochs": [1]}}, broken)
    result = cli("sweep", path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"nbcnn: error: {tmp_path / 'base.yaml'}: layers[0].filters")


def test_a_sweep_folder_another_sweep_holds_is_refused(tmp_path):
    from nbcnn.sweep.study import locked

    path = write_sweep(tmp_path, {"base": "base.yaml", "space": {"train.epochs": [1, 2]}})
    output = tmp_path / "out"
    with locked(output):  # as a running sweep holds it
        result = cli("sweep", path, "--output", output)
    assert result.exit_code == 2
    assert result.stderr == (
        f"nbcnn: error: {output}: another nbcnn sweep (pid {os.getpid()}) is running in this "
        "folder\n"
    )
    (tmp_path / "file").write_text("")
    result = cli("sweep", path, "--output", tmp_path / "file")
    assert result.exit_code == 2 and "cannot use it as the sweep's folder" in result.stderr


def test_nbcnn_cli_imports_neither_dask_nor_optuna():
    code = (
        "import sys, nbcnn.cli; "
        "print(sorted(m for m in ('optuna', 'distributed', 'dask') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- how a trial ended


def test_what_a_trials_exit_means(tmp_path):
    (tmp_path / "train.log").write_text("data: digits\nnbcnn: error: base.yaml: bad thing\n")
    result = {"returncode": -9, "stopped": False}
    assert outcome(result, tmp_path, "val_accuracy") == Outcome(
        "failed", error="killed by SIGKILL", retry=True
    )
    result = {"returncode": 130, "stopped": True}
    assert outcome(result, tmp_path, "val_accuracy").state == "pruned"
    assert outcome({"returncode": 130, "stopped": False}, tmp_path, "x").retry
    failed = outcome({"returncode": 2, "stopped": False}, tmp_path, "val_accuracy")
    assert failed.error == "nbcnn train exited with code 2: base.yaml: bad thing"
    assert not failed.retry
    lines = [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.75}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    done = outcome({"returncode": 0, "stopped": True}, tmp_path, "val_accuracy")
    assert done == Outcome("complete", value=0.75)  # the last epoch, not the best
    assert outcome({"returncode": 0, "stopped": False}, tmp_path, "mae").state == "failed"
