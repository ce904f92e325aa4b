"""One path prepares and runs training for the CLI and the Python API (nbcnn/prepare.py,
issue 13 item 8): `nbcnn.fit_config` writes the same run as `nbcnn train`, refuses what the
CLI refuses, and creates nothing for a refused run."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from helpers import cli, model_doc

import nbcnn
from nbcnn.errors import ConfigError
from nbcnn.prepare import dataset_for_path, prepare_run

DENSE = [{"type": "Flatten"}, {"type": "Dense", "units": 10, "activation": "softmax"}]


@pytest.fixture
def config(write_config):
    doc = model_doc(*DENSE, input_shape=(8, 8, 1))
    doc["train"] = {"data": {"dataset": "digits"}, "epochs": 2, "batch_size": 64}
    return write_config(doc)


def test_fit_config_trains_the_same_run_as_the_cli(config, tmp_path):
    done = cli("train", config, "--output", tmp_path / "cli", "--seed", "3")
    assert done.exit_code == 0, done.stderr
    model, history = nbcnn.fit_config(config, output=str(tmp_path / "api"), seed=3, verbose=0)
    assert len(history.history["loss"]) == 2
    for name in ("model.npz", "checkpoint.npz", "metrics.jsonl", "config.yaml"):
        assert (tmp_path / "api" / name).exists(), name
    with np.load(tmp_path / "cli" / "model.npz") as a, np.load(tmp_path / "api" / "model.npz") as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    for w, key in zip(model.get_weights(), sorted(np.load(tmp_path / "api" / "model.npz").files)):
        assert w.dtype == np.float32, key
    recorded = [yaml.safe_load((tmp_path / f / "config.yaml").read_text()) for f in ("cli", "api")]
    recorded[0]["train"]["output"] = recorded[1]["train"]["output"]
    assert recorded[0] == recorded[1]


def test_fit_config_resume_refuses_a_differing_override_by_name(config, tmp_path):
    out = str(tmp_path / "run")
    nbcnn.fit_config(config, output=out, epochs=1, verbose=0)
    with pytest.raises(ConfigError, match="batch_size 64.*--batch-size asks for 32"):
        nbcnn.fit_config(config, output=out, resume=True, batch_size=32, verbose=0)
    _, history = nbcnn.fit_config(config, output=out, resume=True, verbose=0)
    assert len(history.history["loss"]) == 1  # epoch 2 only: epoch 1 was committed before


def test_a_refused_run_creates_nothing(config, tmp_path):
    with pytest.raises(ConfigError, match="pass one of them"):
        prepare_run(config, output=str(tmp_path / "a"), resume=True, overwrite=True)
    with pytest.raises(ConfigError, match="unknown override 'learning_rate'"):
        prepare_run(config, output=str(tmp_path / "b"), learning_rate=0.1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_data_path_picks_the_loader(tmp_path):
    (tmp_path / "idx").mkdir()
    assert dataset_for_path(str(tmp_path / "idx"), "digits") == "idx"
    assert dataset_for_path(str(tmp_path / "x.npz"), "digits") == "npz"
    assert dataset_for_path(str(tmp_path / "x.npz"), "idx") == "idx"


def test_resume_with_overwrite_is_one_line_from_the_cli(config, tmp_path):
    """Found 6 of issue 13: `--resume --overwrite` was accepted together."""
    result = cli("train", config, "--output", tmp_path / "run", "--resume", "--overwrite")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "--resume --overwrite" in result.stderr
    assert not (tmp_path / "run").exists()


def test_data_path_picks_folder_for_class_subfolders(tmp_path):
    """A folder of class subfolders is an image folder for any config; with IDX files (or no
    subfolder) it stays IDX, so that the IDX loader names what is missing."""
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / ".cache").mkdir()
    (tmp_path / "mnist" / "old").mkdir(parents=True)
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    (tmp_path / "hidden" / ".git").mkdir(parents=True)
    assert dataset_for_path(str(tmp_path / "imgs"), "digits") == "folder"
    assert dataset_for_path(str(tmp_path / "mnist"), "digits") == "idx"
    assert dataset_for_path(str(tmp_path / "hidden"), "mnist") == "idx"
    assert dataset_for_path(str(tmp_path / "pets.csv"), "digits") == "csv"
    assert dataset_for_path(str(tmp_path / "imgs"), "csv") == "folder"
    assert dataset_for_path(str(tmp_path / "pets.csv"), "folder") == "csv"


@pytest.mark.parametrize(
    ("layers", "train", "fragment"),
    [
        ([{"type": "Dense", "units": 4}], {"augment": {"flip": "horizontal"}}, "train.augment"),
        ([{"type": "Conv2D", "filters": 2, "kernel_size": 3}], {}, "vector of class scores"),
    ],
)
def test_what_fit_refuses_about_the_model_creates_no_run_folder(
    write_config, tmp_path, layers, train, fragment
):
    """Augmentation a vector input cannot take, a last layer with no vector output: refused
    by the CLI before the run folder exists, naming the config."""
    doc = model_doc(*layers, input_shape=(8, 8, 1) if "Conv2D" in str(layers) else (64,))
    doc["train"] = {"data": {"dataset": "synthetic"}, **train}
    config = write_config(doc)
    result = cli("train", config, "--output", tmp_path / "run")
    assert result.exit_code == 2 and fragment in result.stderr
    assert str(config) in result.stderr
    assert not (tmp_path / "run").exists()
