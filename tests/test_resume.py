"""`--resume` continues the run as it was recorded in its config.yaml (issue 13, "runs you
can trust"): the data, batch size, seed and epoch count given as flags when it started are
kept without repeating them; a flag that would change the run, or an edited model, is refused
by name before anything is written; `--epochs` may extend the run."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from helpers import cli, model_doc, snapshot
from test_robustness import error_line

DENSE = [{"type": "Flatten"}, {"type": "Dense", "units": 10, "activation": "softmax"}]


@pytest.fixture
def setup(write_config, tmp_path):
    """A digits config (batch 32, seed 0) and a small npz of other data."""
    doc = model_doc(*DENSE, input_shape=(8, 8, 1))
    doc["train"] = {"data": {"dataset": "digits"}, "epochs": 5, "batch_size": 32}
    config = write_config(doc)
    rng = np.random.default_rng(0)
    x = rng.random((120, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 120)
    data = tmp_path / "mine.npz"
    np.savez(data, x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    return config, data, tmp_path


FLAGS = ["--batch-size", "16", "--seed", "5"]


def test_resume_keeps_the_flags_the_run_started_with(setup):
    """Found 1 of issue 13: `--data my.npz --epochs 1`, then `--resume --epochs 2` carried on
    with digits; `--batch-size 64 --seed 5` resumed with batch 32 and seed 0."""
    config, data, tmp = setup
    run, full = tmp / "run", tmp / "full"
    first = cli("train", config, "--output", run, "--data", data, "--epochs", "1", *FLAGS)
    assert first.exit_code == 0, first.stderr
    resumed = cli("train", config, "--output", run, "--resume", "--epochs", "2")
    assert resumed.exit_code == 0, resumed.stderr
    assert "data: npz" in resumed.stdout and "(seed 5)" in resumed.stdout
    assert "continues as it was recorded" in resumed.stderr
    recorded = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (recorded["batch_size"], recorded["seed"], recorded["epochs"]) == (16, 5, 2)
    assert recorded["data"]["path"] == str(data)
    # The same as one uninterrupted 2-epoch run with those flags.
    whole = cli("train", config, "--output", full, "--data", data, "--epochs", "2", *FLAGS)
    assert whole.exit_code == 0, whole.stderr
    with np.load(run / "model.npz") as a, np.load(full / "model.npz") as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def test_resume_without_epochs_continues_to_the_recorded_count(setup):
    config, data, tmp = setup
    run = tmp / "run"
    assert cli("train", config, "--output", run, "--epochs", "3").exit_code == 0
    resumed = cli("train", config, "--output", run, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3  # not the config's 5


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--batch-size", "64"), ("--seed", "1"), ("--data", "other.npz")],
)
def test_a_flag_that_would_change_the_run_is_refused_by_name(setup, flag, value):
    config, data, tmp = setup
    run = tmp / "run"
    assert cli("train", config, "--output", run, "--data", data, "--epochs", "1").exit_code == 0
    before = snapshot(run)
    result = cli("train", config, "--output", run, "--resume", "--epochs", "2", flag, value)
    assert result.exit_code == 2
    error_line(result.stderr, str(run / "config.yaml"), flag, "continues the run as it was")
    assert snapshot(run) == before


def test_the_same_flag_again_is_accepted(setup):
    config, data, tmp = setup
    run = tmp / "run"
    assert cli("train", config, "--output", run, "--epochs", "1", *FLAGS).exit_code == 0
    resumed = cli("train", config, "--output", run, "--resume", "--epochs", "2", *FLAGS)
    assert resumed.exit_code == 0, resumed.stderr


def test_an_edited_model_is_refused_naming_the_key(setup):
    """The checkpoint cannot see an activation changed (no weight changes): the record can."""
    config, data, tmp = setup
    run = tmp / "run"
    assert cli("train", config, "--output", run, "--epochs", "1").exit_code == 0
    doc = yaml.safe_load(config.read_text())
    doc["layers"][1]["activation"] = "sigmoid"
    config.write_text(yaml.safe_dump(doc))
    before = snapshot(run)
    result = cli("train", config, "--output", run, "--resume", "--epochs", "2")
    assert result.exit_code == 2
    error_line(result.stderr, "layers[1].activation", "'softmax'", "'sigmoid'")
    assert snapshot(run) == before


def test_an_edited_train_key_is_reported_and_the_record_kept(setup):
    config, data, tmp = setup
    run = tmp / "run"
    assert cli("train", config, "--output", run, "--epochs", "1").exit_code == 0
    doc = yaml.safe_load(config.read_text())
    doc["train"]["optimizer"] = {"type": "sgd"}
    config.write_text(yaml.safe_dump(doc))
    result = cli("train", config, "--output", run, "--resume", "--epochs", "2")
    assert result.exit_code == 0, result.stderr
    assert "train.optimizer.type 'adam'" in result.stderr
    recorded = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert recorded["optimizer"]["type"] == "adam"


def _with_augment(config, augment):
    doc = yaml.safe_load(config.read_text())
    if augment is None:
        doc["train"].pop("augment", None)
    else:
        doc["train"]["augment"] = augment
    config.write_text(yaml.safe_dump(doc))


@pytest.mark.parametrize(
    ("before", "after", "fragment"),
    [
        ({"brightness": 0.2, "flip": "horizontal"}, None, "no longer has train.augment"),
        (None, {"flip": "horizontal"}, "now adds train.augment"),
    ],
)
def test_switching_augmentation_on_or_off_is_refused_by_name(setup, before, after, fragment):
    """QA of issue 13: removing `augment:` before `--resume` printed "train.augment <object
    object at 0x...>, train.augment.brightness.factor[0] -0.2, ... and 27 more" and went on;
    docs/augmentation.md says switching augmentation on or off is refused."""
    config, data, tmp = setup
    run = tmp / "run"
    _with_augment(config, before)
    assert cli("train", config, "--output", run, "--epochs", "1").exit_code == 0
    _with_augment(config, after)
    before_files = snapshot(run)
    result = cli("train", config, "--output", run, "--resume", "--epochs", "2")
    assert result.exit_code == 2
    error_line(result.stderr, str(run / "config.yaml"), "train.augment", fragment)
    assert snapshot(run) == before_files


def test_an_edited_augment_op_is_one_readable_note(setup):
    config, data, tmp = setup
    run = tmp / "run"
    _with_augment(config, {"brightness": 0.2, "flip": "horizontal"})
    assert cli("train", config, "--output", run, "--epochs", "1").exit_code == 0
    _with_augment(config, {"brightness": 0.1, "rotation": 0.05})
    result = cli("train", config, "--output", run, "--resume", "--epochs", "2")
    assert result.exit_code == 0, result.stderr
    note = [line for line in result.stderr.splitlines() if "note:" in line]
    assert len(note) == 1 and "object at 0x" not in note[0], result.stderr
    assert "train.augment.brightness.factor [-0.2, 0.2]" in note[0]
    assert "train.augment.flip {'mode': 'horizontal'}" in note[0]  # the op once, not each leaf
    assert "train.augment.rotation (absent)" in note[0]
    recorded = yaml.safe_load((run / "config.yaml").read_text())["train"]["augment"]
    assert set(recorded) == {"brightness", "flip"}
