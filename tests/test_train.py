"""Training: gradients of whole models, resume, determinism, and the train/evaluate/predict
commands on small data the tests make themselves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from helpers import ROOT, cli, model_doc, snapshot

import nbcnn
from nbcnn.io import load_npz
from nbcnn.model import Sequential
from nbcnn.spec import parse_spec
from nbcnn.train import loss_and_grad

TINY = [
    {"type": "Conv2D", "filters": 3, "kernel_size": 3, "padding": "same", "activation": "tanh"},
    {"type": "BatchNormalization"},
    {"type": "MaxPooling2D", "pool_size": 2, "padding": "same"},
    {"type": "Conv2D", "filters": 4, "kernel_size": [2, 3], "strides": 2, "activation": "relu"},
    {"type": "Flatten"},
    {"type": "Dense", "units": 3, "activation": "softmax"},
]

# What evaluate returns for a classifier (nbcnn.train.evaluate_arrays).
EVALUATION_KEYS = {
    "loss",
    "accuracy",
    "per_class_accuracy",
    "confusion_matrix",
    "precision",
    "recall",
    "samples",
}


def tiny_model(layers=TINY, shape=(7, 7, 2), seed=0):
    return Sequential.from_spec(parse_spec(model_doc(*layers, input_shape=shape))).initialize(seed)


def test_full_model_gradients_match_finite_differences():
    model = tiny_model()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 7, 7, 2)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    model.layers[-1].fused_activation = True

    def loss_of():
        # BatchNormalization in training mode also moves its averages: restore them so that
        # every evaluation sees the same model.
        saved = [w.copy() for w in model.get_weights()]
        out = model.forward(x.astype(np.float32), training=True)
        value = loss_and_grad(model, out, y)[0]
        model.set_weights(saved)
        return value

    out = model.forward(x, training=True)
    _, grad, _ = loss_and_grad(model, out, y)
    model.backward(grad)
    params, owners = model.trainable_weights()
    analytic = [layer.grads[name].copy() for layer, name in owners]
    # float32 compute: eps 1e-3 keeps rounding noise (~1e-7 / eps) far below the tolerance.
    eps = 1e-3
    for p, g in zip(params, analytic):
        flat = p.reshape(-1)
        for i in range(flat.size):  # every entry: a sample of 4 let wrong gradients through
            old = flat[i]
            flat[i] = old + eps
            up = loss_of()
            flat[i] = old - eps
            down = loss_of()
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - g.reshape(-1)[i]) <= 1e-3 + 1e-2 * abs(numeric)


def synthetic(n=96, shape=(7, 7, 2), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.random((n, *shape), dtype=np.float32) * 0.3
    x[np.arange(n), y, y, 0] += 0.7  # a learnable cue per class
    return x, y


DROPOUT_MODEL = [*TINY[:-1], {"type": "Dropout", "rate": 0.3}, TINY[-1]]


def train_run(output, epochs, resume=False):
    model = tiny_model(DROPOUT_MODEL)
    model.compile(optimizer={"type": "adam", "learning_rate": 0.01})
    x, y = synthetic()
    history = model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=16,
        validation_data=synthetic(32, seed=1),
        output=output,
        resume=resume,
        verbose=0,
    )
    return model, history


def test_resume_equals_uninterrupted(tmp_path):
    full, _ = train_run(tmp_path / "full", 4)
    train_run(tmp_path / "part", 2)
    resumed, history = train_run(tmp_path / "part", 4, resume=True)
    for a, b in zip(full.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert len(history.history["loss"]) == 4
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    full_lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()

    def strip(line):
        return {
            k: v for k, v in json.loads(line).items() if k not in ("seconds", "samples_per_second")
        }

    assert [strip(r) for r in lines] == [strip(r) for r in full_lines]


def test_same_seed_same_weights_and_metrics(tmp_path):
    a, ha = train_run(tmp_path / "a", 2)
    b, hb = train_run(tmp_path / "b", 2)
    assert ha.history["loss"] == hb.history["loss"]
    assert ha.history["val_accuracy"] == hb.history["val_accuracy"]
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_keras_like_api_learns():
    model = nbcnn.load_model(ROOT / "configs" / "digits.yaml")
    from nbcnn.data import load_dataset

    data = load_dataset("digits", input_shape=(8, 8, 1), validation_split=0.0)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    history = model.fit(data.x_train[:600], data.y_train[:600], epochs=3, batch_size=32, verbose=0)
    assert len(history.history["loss"]) == 3
    assert history.history["loss"][-1] < history.history["loss"][0]
    result = model.evaluate(data.x_test, data.y_test)
    assert result["accuracy"] > 0.6
    assert set(result) == EVALUATION_KEYS
    # evaluate's numbers are those of predict's probabilities, computed here in float64:
    # accuracy = share of argmax hits, loss = mean -log p[label] (Keras's clip to 1e-7).
    p = model.predict(data.x_test).astype(np.float64)
    labels = np.asarray(data.y_test)
    assert result["samples"] == len(labels) == len(p)
    assert result["accuracy"] == pytest.approx(np.mean(p.argmax(axis=1) == labels), abs=1e-12)
    picked = np.clip(p[np.arange(len(p)), labels], 1e-7, 1 - 1e-7)
    assert result["loss"] == pytest.approx(-np.log(picked).mean(), rel=1e-5)
    probs = model.predict(data.x_test[:5], batch_size=2)
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)


def write_run_config(write_config, tmp_path, **train):
    doc = model_doc(
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
        input_shape=(8, 8, 1),
    )
    doc["train"] = {
        "data": {"dataset": "digits"},
        "epochs": 2,
        "batch_size": 64,
        "output": str(tmp_path / "run"),
        **train,
    }
    return write_config(doc)


def test_cli_train_writes_run_folder(write_config, tmp_path):
    config = write_run_config(write_config, tmp_path)
    result = cli("train", config)
    assert result.exit_code == 0, result.stderr
    run = tmp_path / "run"
    for name in ("model.npz", "best.npz", "checkpoint.npz", "config.yaml", "metrics.jsonl"):
        assert (run / name).exists(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert set(records[0]) >= {
        "epoch",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "seconds",
        "samples_per_second",
        "learning_rate",
    }
    assert "epoch 2/2" in result.stdout and "test: loss" in result.stdout
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    # A second run into the same folder refuses to overwrite it.
    again = cli("train", config)
    assert again.exit_code == 2 and "--resume" in again.stderr
    # evaluate --json
    ev = cli("evaluate", config, "--weights", run / "model.npz", "--json")
    assert ev.exit_code == 0, ev.stderr
    doc = json.loads(ev.stdout)
    assert set(doc) == EVALUATION_KEYS
    assert doc["samples"] == sum(map(sum, doc["confusion_matrix"]))
    # predict on an npz of arrays and on a PNG
    from PIL import Image

    from nbcnn.data import load_dataset

    x = load_dataset("digits", input_shape=(8, 8, 1)).x_test[:3]
    np.savez(tmp_path / "few.npz", x=x)
    Image.fromarray((x[0, :, :, 0] * 255).astype(np.uint8)).save(tmp_path / "digit.png")
    pr = cli(
        "predict",
        config,
        tmp_path / "few.npz",
        tmp_path / "digit.png",
        "--weights",
        run / "model.npz",
        "--json",
    )
    assert pr.exit_code == 0, pr.stderr
    predictions = json.loads(pr.stdout)
    assert len(predictions) == 4 and predictions[0]["class"] == predictions[3]["class"]


@pytest.mark.parametrize(
    ("train", "fragment"),
    [
        ({"epochs": -1}, "train.epochs"),
        ({"batch_size": 0}, "train.batch_size"),
        ({"optimizer": {"type": "nadam"}}, "train.optimizer"),
        ({"optimizer": {"type": "adam", "learning_rate": -0.1}}, "train.optimizer"),
        ({"data": {"dataset": "cifar"}}, "train.data.dataset"),
        ({"data": {"dataset": "npz"}}, "train.data.path"),
        ({"lr_schedule": {"type": "cosine", "alpha": 3}}, "train.lr_schedule"),
    ],
)
def test_bad_train_sections_exit_2(write_config, tmp_path, train, fragment):
    config = write_run_config(write_config, tmp_path, **train)
    result = cli("train", config)
    assert result.exit_code == 2, result.stdout
    assert fragment in result.stderr and str(config) in result.stderr
    assert not (tmp_path / "run").exists()


def test_data_shape_mismatch_names_both_shapes(write_config, tmp_path):
    doc = model_doc({"type": "Flatten"}, {"type": "Dense", "units": 10}, input_shape=(28, 28, 1))
    doc["train"] = {"data": {"dataset": "digits"}, "output": str(tmp_path / "run")}
    result = cli("train", write_config(doc))
    assert result.exit_code == 2
    assert "(8, 8, 1)" in result.stderr and "[28, 28, 1]" in result.stderr


def test_data_option_reads_npz(write_config, tmp_path):
    config = write_run_config(write_config, tmp_path, epochs=1)
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x_train=rng.integers(0, 256, (64, 8, 8), dtype=np.uint8),
        y_train=rng.integers(0, 10, 64),
        x_test=rng.integers(0, 256, (16, 8, 8), dtype=np.uint8),
        y_test=rng.integers(0, 10, 16),
    )
    result = cli("train", config, "--data", tmp_path / "d.npz", "--output", tmp_path / "o")
    assert result.exit_code == 0, result.stderr
    assert "(16 samples)" in result.stdout


def test_ctrl_c_then_resume_equals_uninterrupted(write_config, tmp_path):
    """A real SIGINT to the real CLI: exit 130, then --resume finishes with identical weights."""
    # Enough epochs that the signal, sent once the first epoch is on disk, always lands
    # mid-run; the interrupted epoch then stops at the next batch.
    config = write_run_config(write_config, tmp_path, epochs=20, batch_size=16)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbcnn.cli", "train", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    resumed = cli("train", config, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    full = cli("train", config, "--output", tmp_path / "full")
    assert full.exit_code == 0
    a, b = load_npz(run / "model.npz"), load_npz(tmp_path / "full" / "model.npz")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_evaluate_on_an_mnist_layout_npz(tmp_path, write_config):
    """`evaluate --data` on a Keras mnist.npz-layout file (uint8 28x28, made here)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 50).astype(np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])
    doc = model_doc({"type": "Flatten"}, {"type": "Dense", "units": 10, "activation": "softmax"})
    path = write_config(doc, "mnist.yaml")
    model = nbcnn.load_model(path).initialize(0)
    model.save_weights(tmp_path / "w.npz")
    ev = cli(
        "evaluate",
        path,
        "--weights",
        tmp_path / "w.npz",
        "--data",
        tmp_path / "mnist.npz",
        "--json",
    )
    assert ev.exit_code == 0, ev.stderr
    assert json.loads(ev.stdout)["samples"] == 20


def test_resume_equals_uninterrupted_with_a_seeded_dropout(tmp_path):
    """A Dropout with its own seed has its own random stream: the checkpoint carries it."""
    layers = [*TINY[:-1], {"type": "Dropout", "rate": 0.3, "seed": 7}, TINY[-1]]

    def run(output, epochs, resume=False):
        model = tiny_model(layers)
        model.compile(optimizer={"type": "adam", "learning_rate": 0.01})
        x, y = synthetic()
        model.fit(x, y, epochs=epochs, batch_size=16, output=output, resume=resume, verbose=0)
        return model

    full = run(tmp_path / "full", 3)
    run(tmp_path / "part", 1)
    resumed = run(tmp_path / "part", 3, resume=True)
    for a, b in zip(full.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


SOFTMAX_ONLY = [{"type": "Flatten"}, {"type": "Dense", "units": 3, "activation": "softmax"}]


@pytest.mark.parametrize(("patience", "epochs_run"), [(0, 2), (1, 2), (2, 3), (4, 5)])
def test_early_stopping_follows_keras(patience, epochs_run):
    """Nothing counts as an improvement after the first epoch (min_delta huge): Keras stops
    once `wait` reaches `patience`, never before the second epoch."""
    model = tiny_model(SOFTMAX_ONLY)
    x, y = synthetic()
    history = model.fit(
        x,
        y,
        epochs=10,
        batch_size=32,
        verbose=0,
        early_stopping={
            "patience": patience,
            "monitor": "loss",
            "min_delta": 1e9,
            "restore_best_weights": False,
        },
    )
    assert len(history.epochs) == epochs_run and history.stopped_early


def test_restore_best_weights_without_an_output_folder():
    model = tiny_model(SOFTMAX_ONLY)
    x, y = synthetic()
    first = tiny_model(SOFTMAX_ONLY)
    first.fit(x, y, epochs=1, batch_size=32, verbose=0)
    model.fit(
        x,
        y,
        epochs=4,
        batch_size=32,
        verbose=0,
        early_stopping={
            "patience": 5,
            "monitor": "loss",
            "min_delta": 1e9,
            "restore_best_weights": True,
        },
    )
    # Only epoch 1 improved (min_delta huge), so its weights come back: those of a 1-epoch run.
    for a, b in zip(model.get_weights(), first.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_training_needs_a_vector_output():
    from nbcnn.errors import ConfigError

    model = tiny_model([{"type": "Dense", "units": 3, "activation": "softmax"}], shape=(4, 4, 2))
    x, y = synthetic(shape=(4, 4, 2))
    with pytest.raises(ConfigError, match="vector of class scores"):
        model.fit(x, y, epochs=1, verbose=0)


def test_ctrl_c_in_the_first_epoch_exits_130_with_nothing_to_resume(write_config, tmp_path):
    config = write_run_config(write_config, tmp_path, epochs=2, batch_size=16)
    code = (
        "import os, signal, sys\n"
        "from nbcnn import progress\n"
        "orig = progress.TrainingProgress.__call__\n"
        "def patched(self, event, info):\n"
        "    if event == 'batch_end' and info['batch'] == 2:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return orig(self, event, info)\n"
        "progress.TrainingProgress.__call__ = patched\n"
        "from nbcnn.cli import app\n"
        f"sys.argv = ['nbcnn', 'train', {str(config)!r}]\n"
        "app()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 130, proc.stderr
    assert "nothing to resume" in proc.stderr and "Traceback" not in proc.stderr


def test_resume_refuses_a_folder_without_checkpoint(write_config, tmp_path):
    config = write_run_config(write_config, tmp_path, epochs=1)
    assert cli("train", config).exit_code == 0
    (tmp_path / "run" / "current" / "checkpoint.npz").unlink()  # damaged by hand
    before = (tmp_path / "run" / "model.npz").read_bytes()
    result = cli("train", config, "--resume")
    assert result.exit_code == 2 and "no checkpoint.npz" in result.stderr
    assert (tmp_path / "run" / "model.npz").read_bytes() == before


def test_refused_resume_leaves_the_run_untouched(write_config, tmp_path):
    """A resume whose config no longer fits the checkpoint is refused before any write."""
    config = write_run_config(write_config, tmp_path, epochs=1)
    assert cli("train", config).exit_code == 0
    saved = snapshot(tmp_path / "run")
    doc = yaml.safe_load(config.read_text())
    doc["layers"][0]["filters"] = 8
    config.write_text(yaml.safe_dump(doc))
    result = cli("train", config, "--resume")
    assert result.exit_code == 2 and "layers[0].filters" in result.stderr
    assert snapshot(tmp_path / "run") == saved
