"""Sweeps end to end (nbcnn sweep, nbcnn/sweep/): tiny trials on a Dask cluster of 2 local
worker processes that each test starts (127.0.0.1, no fixed ports), in tmp_path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_MODEL, cli, cli_subprocess

BASE = {
    **TINY_MODEL,
    "train": {
        "data": {"dataset": "digits", "validation_split": 0.2},
        "epochs": 2,
        "batch_size": 64,
        "optimizer": "adam",  # a name: the sweep turns it into {type: adam, learning_rate: ...}
        "seed": 0,
    },
}


def write(folder: Path, sweep: dict, epochs: int = 2) -> Path:
    base = {**BASE, "train": {**BASE["train"], "epochs": epochs}}
    (folder / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", **sweep}, sort_keys=False))
    return path


def records(output: Path) -> dict[int, dict]:
    lines = (output / "trials.jsonl").read_text().splitlines()
    return {r["number"]: r for r in map(json.loads, lines)}


def start_sweep(path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nbcnn.cli", "sweep", str(path), *args],
        cwd=path.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_first_trial(output: Path, sweep: subprocess.Popen) -> int:
    """SIGKILL the ``nbcnn train`` of the first trial that records its pid; its number."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sweep.poll() is None:
        for record in sorted(output.glob("trials/*/trial.json")):
            try:
                trial = json.loads(record.read_text())
            except ValueError:
                continue  # being written
            os.kill(trial["pid"], signal.SIGKILL)
            return trial["number"]
        time.sleep(0.05)
    raise AssertionError(f"no trial started: {sweep.communicate()}")


# ---------------------------------------------------------------------- a grid, then again


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A grid of 4: two learning rates x two kernel sizes, of which 9 does not fit the 8x8
    input (so those two trials fail on their config, before any training); run in-process
    through the CLI, then run again with --json."""
    folder = tmp_path_factory.mktemp("grid")
    path = write(
        folder,
        {
            "search": "grid",
            "space": {
                "train.optimizer.learning_rate": [0.001, 0.01],
                "layers[0].kernel_size": [3, 9],
            },
            "output": str(folder / "out"),
        },
    )
    first = cli("sweep", path, "--workers", "2")
    logs = {p: p.stat().st_mtime_ns for p in folder.glob("out/trials/*/train.log")}
    again = cli("sweep", path, "--json")
    return folder, path, folder / "out", first, again, logs


def test_a_grid_sweep_runs_each_trial_in_a_run_folder_and_reports_best_first(grid):
    folder, path, output, first, _, _ = grid
    assert first.exit_code == 0, first.stderr
    trials = records(output)
    assert sorted(trials) == [0, 1, 2, 3]
    ran = [r for r in trials.values() if r["values"]["layers[0].kernel_size"] == 3]
    refused = [r for r in trials.values() if r["values"]["layers[0].kernel_size"] == 9]
    assert [r["state"] for r in ran] == ["complete", "complete"]
    for record in ran:  # a normal run folder, and the sweep's record of its process
        run = output / "trials" / f"{record['number']:04d}"
        assert (run / "model.npz").is_file() and (run / "nbcnn-run.json").is_file()
        assert json.loads((run / "trial.json").read_text())["number"] == record["number"]
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert record["value"] == last["val_accuracy"] and record["epochs"] == 2
    for record in refused:  # its config fails that trial, not the sweep, and no training
        assert record["state"] == "failed" and "kernel" in record["error"].lower()
        assert not (output / "trials" / f"{record['number']:04d}").exists()
    # The table: best first, a column per key; a line per trial on stderr as it ends.
    cells = [line.strip("│").split("│") for line in first.stdout.splitlines()]
    rows = [(c[0].strip(), c[1].strip()) for c in cells if len(c) > 2 and c[0].strip().isdigit()]
    best = max(ran, key=lambda r: r["value"])
    assert rows[0] == (str(best["number"]), "complete")
    assert [state for _, state in rows] == ["complete", "complete", "failed", "failed"]
    header = "".join(line for line in first.stdout.splitlines()[:5])
    for name in ("learning_rate", "layers[0].", "kernel_size", "val_accuracy", "epochs"):
        assert name in header
    assert first.stderr.count("nbcnn: trial ") == 4
    assert (output / "sweep.png").read_bytes().startswith(b"\x89PNG")
    summary = json.loads((output / "results.json").read_text())
    assert summary["best"]["number"] == best["number"]
    assert summary["counts"] == {"complete": 2, "failed": 2}


def test_running_a_finished_sweep_again_runs_nothing(grid):
    folder, path, output, first, again, logs = grid
    assert again.exit_code == 0, again.stderr
    assert "nothing left to run" in again.stderr
    assert sorted(records(output)) == [0, 1, 2, 3]  # no new trial
    assert {p: p.stat().st_mtime_ns for p in logs} == logs  # no trial trained again
    result = json.loads(again.stdout)
    assert result["best"] == json.loads((output / "results.json").read_text())["best"]
    assert [r["state"] for r in result["trials"]] == ["complete"] * 2 + ["failed"] * 2


def test_best_yaml_retrains_to_the_reported_metric_bit_for_bit(grid):
    folder, path, output, _, _, _ = grid
    best = json.loads((output / "results.json").read_text())["best"]
    config = yaml.safe_load((output / "best.yaml").read_text())
    assert config["train"]["threads"] == 1
    assert (
        config["train"]["optimizer"]["learning_rate"]
        == best["values"]["train.optimizer.learning_rate"]
    )
    retrain = cli_subprocess("train", output / "best.yaml", cwd=folder)
    assert retrain.returncode == 0, retrain.stderr
    last = json.loads((output / "best" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["val_accuracy"] == best["value"]
    trial = output / "trials" / f"{best['number']:04d}"
    assert (output / "best" / "model.npz").read_bytes() == (trial / "model.npz").read_bytes()


def test_a_changed_sweep_file_is_refused_in_the_same_folder(grid):
    folder, path, output, _, _, _ = grid
    changed = yaml.safe_load(path.read_text())
    changed["space"]["train.optimizer.learning_rate"] = [0.001, 0.03]
    other = folder / "changed.yaml"
    other.write_text(yaml.safe_dump(changed))
    result = cli("sweep", other)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"nbcnn: error: {other}: space: differs from the sweep")


# ---------------------------------------------------------------------- kill -9, pruning


def test_a_trial_killed_with_sigkill_is_reported_and_run_again_next_time(tmp_path):
    path = write(
        tmp_path,
        {"search": "grid", "space": {"train.optimizer.learning_rate": [0.003, 0.01]}},
        epochs=5,  # killed as it starts: the other trial need not be long
    )
    output = tmp_path / "runs" / "sweep"
    sweep = start_sweep(path, "--workers", "2")
    killed = kill_first_trial(output, sweep)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 0, err
    assert f"trial {killed} failed" in err and "killed by SIGKILL" in err
    trials = records(output)
    assert trials[killed]["state"] == "failed" and trials[killed]["error"] == "killed by SIGKILL"
    assert sorted(r["state"] for r in trials.values()) == ["complete", "failed"]
    assert "killed by SIGKILL" in out  # the table's note
    # Run again: the killed trial's values run again as a new trial; the others are kept.
    again = cli_subprocess("sweep", path, "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    trials = records(output)
    assert sorted(trials) == [0, 1, 2]
    assert trials[2]["retry_of"] == killed and trials[2]["state"] == "complete"
    assert trials[2]["values"] == trials[killed]["values"]
    assert trials[killed]["retried_as"] == 2


@pytest.fixture
def dask_scheduler():
    """A local cluster of one worker this test starts, as a cluster of one's own would be."""
    from nbcnn import localcluster

    cluster = localcluster.start(1)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _seed_running_first(value, choices):
    """A grid seed under which Optuna's grid (shuffled by the seed) starts with ``value``."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    key = "train.optimizer.learning_rate"
    for seed in range(20):
        study = optuna.create_study(sampler=optuna.samplers.GridSampler({key: choices}, seed))
        if study.ask({key: CategoricalDistribution(choices)}).params[key] == value:
            return seed
    raise AssertionError("no seed found")


def test_pruning_stops_a_clearly_bad_trial_early(tmp_path, dask_scheduler):
    # One trial at a time on an existing cluster: a good learning rate, then one that learns
    # nothing; its first epochs fall below the median of the completed trial's.
    choices = [0.01, 1e-7]
    sweep = {
        "search": "grid",
        "seed": _seed_running_first(0.01, choices),
        "pruning": {"type": "median", "startup_trials": 1},
        "space": {"train.optimizer.learning_rate": choices},
    }
    path = write(tmp_path, sweep, epochs=30)
    result = cli_subprocess("sweep", path, "--scheduler", dask_scheduler, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = records(tmp_path / "runs" / "sweep")
    good, bad = trials[0], trials[1]
    assert good["values"]["train.optimizer.learning_rate"] == 0.01
    assert good["state"] == "complete" and good["epochs"] == 30
    assert bad["state"] == "pruned" and 1 <= bad["epochs"] < 30
    assert "(pruned after epoch" in result.stderr  # its line as it ends
    assert "1 at once on the Dask scheduler tcp://127.0.0.1:" in result.stderr


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_quietly_and_its_trials_run_again(tmp_path):
    # SIGINT to the whole process group, as a terminal's Ctrl-C: the driver, the local
    # cluster's workers and the trials' nbcnn train all receive it.
    path = write(
        tmp_path, {"search": "grid", "space": {"train.optimizer.learning_rate": [0.003, 0.01]}}
    )
    output = tmp_path / "runs" / "sweep"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "nbcnn.cli", "sweep", str(path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not list(output.glob("trials/*/trial.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(sweep.pid, signal.SIGINT)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, err
    assert "Traceback" not in err  # Dask's workers ignore it; the driver stops them
    assert err.strip().splitlines()[-1].startswith("nbcnn: sweep interrupted after")
    again = cli_subprocess("sweep", path, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    trials = records(output)
    stopped = [r for r in trials.values() if r["error"] == "the sweep stopped while it ran"]
    assert stopped and all(r["retried_as"] is not None for r in stopped)
    assert sum(r["state"] == "complete" for r in trials.values()) == 2


# ---------------------------------------------------------------------- the acceptance


@pytest.mark.slow
def test_eight_trials_survive_one_killed_and_the_best_retrains_to_its_metric(tmp_path):
    """Issue 17: a sweep of 8 trials on a local Dask cluster finishes, survives one trial
    killed with SIGKILL, and its best config retrains to the reported metric."""
    space = {
        "train.optimizer.learning_rate": [0.001, 0.002, 0.005, 0.01],
        "layers[0].filters": [2, 4],
    }
    path = write(tmp_path, {"search": "grid", "space": space}, epochs=15)
    output = tmp_path / "runs" / "sweep"
    sweep = start_sweep(path, "--workers", "2")
    killed = kill_first_trial(output, sweep)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err
    trials = records(output)
    assert len(trials) == 8 and trials[killed]["error"] == "killed by SIGKILL"
    assert sum(r["state"] == "complete" for r in trials.values()) == 7
    best = json.loads((output / "results.json").read_text())["best"]
    assert best["number"] != killed
    retrain = cli_subprocess("train", output / "best.yaml", cwd=tmp_path)
    assert retrain.returncode == 0, retrain.stderr
    last = json.loads((output / "best" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["val_accuracy"] == best["value"]
