"""Losses, metrics and optimizers through the real CLI: docs/training.md's example run as
written, multi-label and regression runs on npz data made here, the warning for a last layer
that does not fit the loss (issue 13, Found 3), and a resume with AdamW and clipping."""

from __future__ import annotations

import json
import re
import shlex

import numpy as np
import pytest
import yaml
from helpers import ROOT, cli, model_doc

import nbcnn

DOC = (ROOT / "docs" / "training.md").read_text()


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.S)


def quadrant_images(rng, n):
    """8x8 uint8 images whose three regions (top left, top right, bottom) each have a random
    brightness, plus noise; the targets say which regions are bright (multi-hot) and the
    mean brightness (regression)."""
    levels = rng.integers(0, 256, (n, 3))
    x = np.empty((n, 8, 8), np.float64)
    x[:, :4, :4] = levels[:, :1, None]
    x[:, :4, 4:] = levels[:, 1:2, None]
    x[:, 4:, :] = levels[:, 2:, None]
    x = np.clip(x + rng.normal(0, 10, x.shape), 0, 255).astype(np.uint8)
    return x, (levels > 127).astype(np.float32), (x.mean(axis=(1, 2)) / 255).astype(np.float32)


def write_npz(path, kind: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    x_train, hot_train, mean_train = quadrant_images(rng, 600)
    x_test, hot_test, mean_test = quadrant_images(rng, 150)
    y_train, y_test = (hot_train, hot_test) if kind == "multi-hot" else (mean_train, mean_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_docs_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_npz(tmp_path / "labels.npz", "multi-hot")
    config = next(b for b in doc_blocks("yaml") if b.startswith("# multilabel.yaml"))
    (tmp_path / "multilabel.yaml").write_text(config)
    commands = [shlex.split(line) for line in doc_blocks("console")[0].splitlines()]
    assert [c[:2] for c in commands] == [["nbcnn", "train"]] + [["nbcnn", "evaluate"]] * 2
    results = [cli(*command[1:]) for command in commands]
    for result in results:
        assert result.exit_code == 0, result.stderr
    assert "warning" not in results[0].stderr
    run = tmp_path / "runs" / "multilabel"
    resolved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert resolved["loss"] == {
        "type": "binary_crossentropy",
        "from_logits": False,
        "label_smoothing": 0.05,
    }
    assert resolved["metrics"] == ["accuracy"]
    assert resolved["optimizer"]["type"] == "adamw"
    assert resolved["optimizer"]["global_clipnorm"] == 1.0
    assert resolved["optimizer"]["clipnorm"] is None
    first, last = records(run)[0], records(run)[-1]
    assert set(last) >= {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert last["val_loss"] < first["val_loss"]
    # The human table: one row per label with tn fp fn tp precision recall.
    table = results[1].stdout
    assert "Per label at threshold 0.5" in table and "precision" in table
    report = json.loads(results[2].stdout)
    assert report["accuracy"] > 0.85  # the bright regions are easy to see
    assert len(report["confusion_matrix"]) == 3
    for (tn_fp, fn_tp), precision in zip(report["confusion_matrix"], report["precision"]):
        assert sum(tn_fp) + sum(fn_tp) == report["samples"] == 150
        assert precision == pytest.approx(fn_tp[1] / (fn_tp[1] + tn_fp[1]))


def test_the_docs_warning_is_what_training_prints(write_config, tmp_path):
    warning = doc_blocks("text")[0].strip()
    config = write_config(
        {
            **model_doc(
                {"type": "Flatten"},
                {"type": "Dense", "units": 16, "activation": "relu"},
                {"type": "Dense", "units": 10},
                input_shape=(8, 8, 1),
            ),
            "train": {"epochs": 1, "output": str(tmp_path / "run")},
        }
    )
    result = cli("train", config)
    assert result.exit_code == 0, result.stderr
    assert warning in result.stderr.splitlines()
    # With from_logits the same model is right, and nothing is said.
    doc = yaml.safe_load(config.read_text())
    doc["train"]["loss"] = {"type": "sparse_categorical_crossentropy", "from_logits": True}
    result = cli("train", write_config(doc), "--overwrite")
    assert result.exit_code == 0 and "warning" not in result.stderr


def test_sigmoid_with_categorical_crossentropy_warns(write_config, tmp_path):
    config = write_config(
        {
            **model_doc(
                {"type": "Flatten"},
                {"type": "Dense", "units": 10, "activation": "sigmoid", "name": "scores"},
                input_shape=(8, 8, 1),
            ),
            "train": {"epochs": 1, "output": str(tmp_path / "run")},
        }
    )
    result = cli("train", config)
    assert result.exit_code == 0, result.stderr
    assert (
        "nbcnn: warning: the last layer 'scores' ends with sigmoid, but categorical_crossentropy "
        "expects softmax outputs: use activation: softmax, or binary_crossentropy for "
        "independent labels"
    ) in result.stderr


def test_mse_regression_end_to_end(write_config, tmp_path):
    write_npz(tmp_path / "brightness.npz", "regression")
    config = write_config(
        {
            **model_doc({"type": "Flatten"}, {"type": "Dense", "units": 1}, input_shape=(8, 8, 1)),
            "train": {
                "data": {"dataset": "npz", "path": str(tmp_path / "brightness.npz")},
                "epochs": 6,
                "batch_size": 32,
                "loss": "mse",
                "metrics": ["mae"],
                "optimizer": {"type": "adam", "learning_rate": 0.01},
                "output": str(tmp_path / "run"),
            },
        }
    )
    result = cli("train", config)
    assert result.exit_code == 0, result.stderr
    assert "warning" not in result.stderr and "test: loss" in result.stdout
    run = tmp_path / "run"
    resolved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert resolved["loss"] == {"type": "mean_squared_error"} and resolved["metrics"] == ["mae"]
    history = records(run)
    assert "accuracy" not in history[0] and "val_mae" in history[0]
    assert history[-1]["val_mae"] < history[0]["val_mae"]
    report = json.loads(cli("evaluate", config, "--weights", run / "model.npz", "--json").stdout)
    assert set(report) == {"loss", "mae", "samples"}
    # The brightness is a linear function of the pixels: far better than its spread (~0.15).
    assert report["mae"] < 0.05
    # The report's numbers are those of the model's predictions, computed here in float64
    # (evaluate reads the npz's test split, uint8 pixels divided by 255 as training does).
    model = nbcnn.load_model(config)
    model.load_weights(run / "model.npz")
    with np.load(tmp_path / "brightness.npz") as data:
        x_test, y_test = data["x_test"], data["y_test"].astype(np.float64)
    error = model.predict(x_test[..., None])[:, 0].astype(np.float64) - y_test
    assert report["samples"] == len(y_test) == 150
    assert report["mae"] == pytest.approx(np.abs(error).mean(), rel=1e-5)
    assert report["loss"] == pytest.approx(np.square(error).mean(), rel=1e-5)


def test_targets_that_do_not_fit_the_loss_exit_2(write_config, tmp_path):
    write_npz(tmp_path / "brightness.npz", "regression")
    config = write_config(
        {
            **model_doc({"type": "Flatten"}, {"type": "Dense", "units": 3}, input_shape=(8, 8, 1)),
            "train": {
                "data": {"dataset": "npz", "path": str(tmp_path / "brightness.npz")},
                "loss": "sparse_categorical_crossentropy",
                "output": str(tmp_path / "run"),
            },
        }
    )
    result = cli("train", config)
    assert result.exit_code == 2
    assert "sparse_categorical_crossentropy needs integer class labels" in result.stderr


def test_resume_with_adamw_and_clipping_equals_one_run(write_config, tmp_path):
    def config(output):
        return write_config(
            {
                **model_doc(
                    {"type": "Flatten"},
                    {"type": "Dense", "units": 10, "activation": "softmax"},
                    input_shape=(8, 8, 1),
                ),
                "train": {
                    "epochs": 2,
                    "optimizer": {"type": "adamw", "weight_decay": 0.1, "clipnorm": 0.5},
                    "loss": {"type": "categorical_crossentropy", "label_smoothing": 0.1},
                    "output": str(tmp_path / output),
                },
            },
            name=f"{output}.yaml",
        )

    assert cli("train", config("straight")).exit_code == 0
    assert cli("train", config("halves"), "--epochs", "1").exit_code == 0
    resumed = cli("train", config("halves"), "--resume", "--epochs", "2")
    assert resumed.exit_code == 0, resumed.stderr
    straight = np.load(tmp_path / "straight" / "model.npz")
    halves = np.load(tmp_path / "halves" / "model.npz")
    for key in straight.files:
        np.testing.assert_array_equal(straight[key], halves[key])
    # evaluate of a single-label classifier: the confusion matrix with precision and recall.
    shown = cli("evaluate", config("straight"), "--weights", tmp_path / "straight" / "model.npz")
    assert shown.exit_code == 0, shown.stderr
    assert "Confusion matrix" in shown.stdout and "recall" in shown.stdout
    # A changed clipping option is refused by name on --resume.
    doc = yaml.safe_load(config("halves").read_text())
    doc["train"]["optimizer"]["clipnorm"] = 0.25
    refused = cli("train", write_config(doc, name="halves.yaml"), "--resume", "--epochs", "3")
    assert "train.optimizer.clipnorm" in refused.stderr


def test_target_columns_must_match_the_outputs(write_config, tmp_path):
    write_npz(tmp_path / "labels.npz", "multi-hot")
    config = write_config(
        {
            **model_doc(
                {"type": "Flatten"},
                {"type": "Dense", "units": 4, "activation": "sigmoid"},
                input_shape=(8, 8, 1),
            ),
            "train": {
                "data": {"dataset": "npz", "path": str(tmp_path / "labels.npz")},
                "loss": "binary_crossentropy",
                "output": str(tmp_path / "run"),
            },
        }
    )
    result = cli("train", config)
    assert result.exit_code == 2
    assert "labels.npz: targets have 3 columns but the model has 4 outputs" in result.stderr
    assert not (tmp_path / "run").exists()


def test_one_hot_labels_for_a_sparse_loss_are_refused_before_the_run_folder(write_config, tmp_path):
    """QA of issue 13: one-hot labels with sparse_categorical_crossentropy through `--data`
    failed inside fit, naming neither the data nor train.loss, and left runs/oh2/ with
    config.yaml, nbcnn-run.json and .nbcnn-lock."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (60, 8, 8), dtype=np.uint8), rng.integers(0, 10, 60)
    one_hot = np.eye(10, dtype=np.float32)[y]
    data = tmp_path / "onehot.npz"
    np.savez(data, x_train=x[:50], y_train=one_hot[:50], x_test=x[50:], y_test=one_hot[50:])
    doc = model_doc(
        {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
        input_shape=(8, 8, 1),
    )
    config = write_config({**doc, "train": {"loss": "sparse_categorical_crossentropy"}})
    run = tmp_path / "runs" / "oh2"
    result = cli("train", config, "--data", data, "--output", run, "--epochs", "1")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in ("model.yaml: train.loss:", str(data), "use categorical_crossentropy"):
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "runs").exists()
    # evaluate checks the labels against the config's loss the same way.
    other = write_config(doc, name="cc.yaml")
    trained = cli("train", other, "--data", data, "--epochs", "1", "--output", tmp_path / "cc")
    assert trained.exit_code == 0, trained.stderr
    shown = cli("evaluate", config, "--weights", tmp_path / "cc" / "model.npz", "--data", data)
    assert shown.exit_code == 2 and "train.loss" in shown.stderr and str(data) in shown.stderr
