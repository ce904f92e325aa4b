"""The warning for BatchNormalization moving statistics that saw too few updates (issue 13,
Found 3: configs/vgg_cifar.yaml ended at 0.998 train / 0.19 test accuracy after 24 steps at
momentum 0.99), and the config's fix."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import ROOT, cli, model_doc

from nbcnn.data import load_dataset
from nbcnn.layers.normalization import BatchNormalization, moving_statistics_warning
from nbcnn.model import Sequential, load_model
from nbcnn.spec import parse_spec, parse_train


def bn_model(momentum):
    doc = model_doc(
        {"type": "BatchNormalization", "momentum": momentum},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
        input_shape=(8, 8, 1),
    )
    return Sequential.from_spec(parse_spec(doc))


def test_moving_average_keeps_momentum_to_the_n_of_its_start():
    """The rule's premise, on the real layer: n updates with the same batch leave
    moving_mean = (1 - m**n) * batch mean (the start, 0, keeps the weight m**n)."""
    layer = BatchNormalization(momentum=0.99)
    layer.build((3,), np.random.default_rng(0))
    x = np.random.default_rng(1).normal(5.0, 2.0, (64, 3)).astype(np.float32)
    for _ in range(24):
        layer.forward(x, training=True)
    expected = (1 - 0.99**24) * x.mean(axis=0, dtype=np.float64)
    np.testing.assert_allclose(layer.params["moving_mean"], expected, rtol=1e-4)


@pytest.mark.parametrize(
    "momentum, steps, warns",
    [(0.99, 24, True), (0.99, 298, True), (0.99, 299, False), (0.9, 28, True), (0.9, 29, False)],
)
def test_threshold_is_five_percent_of_the_start(momentum, steps, warns):
    assert (moving_statistics_warning(bn_model(momentum), steps) is not None) == warns
    assert math.ceil(math.log(0.05) / math.log(momentum)) in (299, 29)


def test_message_says_how_far_and_what_to_do():
    text = moving_statistics_warning(bn_model(0.99), 24)
    assert "'batch_normalization' (momentum 0.99) saw 24 training step(s)" in text
    assert "still 79% their initial 0 and 1" in text
    assert "at least 299 steps" in text and "0.9 needs 29" in text
    assert "never updates" in moving_statistics_warning(bn_model(1.0), 1000)
    plain = model_doc({"type": "Flatten"}, {"type": "Dense", "units": 2}, input_shape=(4, 1))
    assert moving_statistics_warning(Sequential.from_spec(parse_spec(plain)), 1) is None


def test_fit_warns_once_after_a_short_run_only(capsys):
    data = load_dataset("digits", input_shape=(8, 8, 1), validation_split=0.0)
    for epochs, warned in ((1, True), (3, False)):  # 12 steps, then 36 at momentum 0.9
        model = bn_model(0.9)
        model.compile(optimizer="adam")
        model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=128, verbose=0)
        err = capsys.readouterr().err
        assert err.count("nbcnn: warning: BatchNormalization") == int(warned), err


def test_cli_prints_it_on_one_line(write_config, tmp_path):
    doc = model_doc(
        {"type": "BatchNormalization"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10},
        input_shape=(8, 8, 1),
    )
    doc["layers"][-1]["activation"] = "softmax"
    doc["train"] = {"data": {"dataset": "digits"}, "epochs": 1, "output": str(tmp_path / "r")}
    result = cli("train", write_config(doc))
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "BatchNormalization" in line]
    assert len(lines) == 1 and lines[0].startswith("nbcnn: warning: ")


def vgg_steps(train):
    """Optimizer steps of a run of configs/vgg_cifar.yaml's train section."""
    data = load_dataset(
        train.dataset, input_shape=(32, 32, 3), validation_split=train.validation_split
    )
    return train.epochs * math.ceil(len(data.x_train) / train.batch_size)


def test_vgg_cifar_config_gives_its_moving_statistics_enough_steps():
    import yaml

    doc = yaml.safe_load((ROOT / "configs" / "vgg_cifar.yaml").read_text())
    model = load_model(ROOT / "configs" / "vgg_cifar.yaml")
    train = parse_train(doc["train"], default_output="runs/x")
    assert moving_statistics_warning(model, vgg_steps(train)) is None
    # The config before the fix: Keras's momentum 0.99 and batches of 64 (24 steps).
    for layer in doc["layers"]:
        layer.pop("momentum", None)
    doc["train"]["batch_size"] = 64
    before = Sequential.from_spec(parse_spec(doc))
    steps = vgg_steps(parse_train(doc["train"], default_output="runs/x"))
    assert steps == 24 and "79%" in moving_statistics_warning(before, steps)


@pytest.mark.slow
def test_vgg_cifar_trains_to_a_test_accuracy_like_its_training_one(tmp_path):
    result = cli("train", ROOT / "configs" / "vgg_cifar.yaml", "--output", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert "BatchNormalization" not in result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("test:"))
    assert float(line.split("accuracy")[1].split()[0]) >= 0.9, line
