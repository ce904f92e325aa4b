"""Rescaling and Normalization (nbcnn/layers/preprocessing.py): hand-derived numbers, adapt
(alone, at the start of fit, never twice), the statistics saved with the weights and applied
by evaluate, Keras 3's summary counts, ONNX export and Keras weight import. The layer contract
(shapes, counts, finite-difference gradients) runs in tests/test_testing_kit.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import cli, model_doc
from test_keras_import import write_keras3
from test_robustness import error_line

from nbcnn.data import load_dataset
from nbcnn.errors import ConfigError
from nbcnn.io import load_npz
from nbcnn.keras_import import import_keras_weights
from nbcnn.layers.preprocessing import Normalization, Rescaling
from nbcnn.model import Sequential, load_model
from nbcnn.spec import parse_spec

DENSE = [{"type": "Flatten"}, {"type": "Dense", "units": 10, "activation": "softmax"}]


def built(layer, input_shape):
    layer.build(input_shape, np.random.default_rng(0))
    return layer


def test_rescaling_by_hand():
    layer = built(Rescaling(scale=2, offset=-1), (3,))
    x = np.array([[0.0, 0.5, 1.0]], np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[-1, 0, 1]])
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), [[2, 2, 2]])  # dx = dy * scale


def test_normalization_with_given_statistics_by_hand():
    """(x - mean) / max(sqrt(variance), 1e-7): a zero variance divides by Keras's epsilon."""
    layer = built(Normalization(mean=[1, 2], variance=[4, 0]), (1, 2))
    assert layer.param_shapes((1, 2)) == [] and layer.params == {}
    x = np.array([[[3.0, 2.0]]], np.float32)
    np.testing.assert_array_equal(layer.forward(x), [[[1.0, 0.0]]])
    np.testing.assert_allclose(layer.backward(np.ones_like(x)), [[[0.5, 1e7]]], rtol=1e-6)
    scalar = built(Normalization(mean=3, variance=2), (1,))  # Keras's docstring example
    np.testing.assert_allclose(
        scalar.forward(np.array([[1.0], [2.0], [3.0]], np.float32)).ravel(),
        [-1.4142135, -0.70710677, 0.0],
    )


def test_adapt_merges_batches_into_the_population_statistics():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((37, 4, 3, 2)) * [1.0, 100.0] + [5.0, -1e4]).astype(np.float32)
    layer = built(Normalization(), (4, 3, 2))
    assert not layer.adapted
    layer.adapt([x[:5], x[5:6], x[6:0], x[6:]])  # uneven batches, one empty
    assert layer.adapted and float(layer.params["count"]) == 37 * 4 * 3
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(layer.params["mean"], x64.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(layer.params["variance"], x64.var(axis=(0, 1, 2)), rtol=1e-5)
    y = layer.forward(x)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1, atol=1e-4)


def test_keras_docstring_adapt_example():
    layer = built(Normalization(), (3,))
    layer.adapt([np.array([[0, 7, 4], [2, 9, 6], [0, 7, 4], [2, 9, 6]], np.float32)])
    np.testing.assert_allclose(layer.forward(np.array([[0, 7, 4]], np.float32)), [[-1, -1, -1]])


def normalized_model(input_shape=(8, 8, 1)):
    doc = model_doc(
        {"type": "Rescaling", "scale": 2.0, "offset": -1.0},
        {"type": "Normalization"},
        *DENSE,
        input_shape=input_shape,
    )
    return Sequential.from_spec(parse_spec(doc))


def test_fit_adapts_once_on_the_layer_input_and_weights_keep_it(tmp_path):
    data = load_dataset("digits", input_shape=(8, 8, 1), validation_split=0.0)
    model = normalized_model()
    model.compile(optimizer="adam")
    model.fit(data.x_train, data.y_train, epochs=1, verbose=0)
    norm = model.layers[1]
    seen = data.x_train.astype(np.float64) * 2 - 1  # after the Rescaling before it
    np.testing.assert_allclose(norm.params["mean"], [seen.mean()], rtol=1e-5)
    np.testing.assert_allclose(norm.params["variance"], [seen.var()], rtol=1e-5)
    assert float(norm.params["count"]) == data.x_train.size
    mean = norm.params["mean"].copy()
    model.fit(data.x_train[:50] * 0, data.y_train[:50], epochs=1, verbose=0)
    np.testing.assert_array_equal(norm.params["mean"], mean)  # adapted already: kept
    model.save_weights(tmp_path / "w.npz")
    again = normalized_model()
    again.load_weights(tmp_path / "w.npz")
    np.testing.assert_array_equal(again.layers[1].params["mean"], mean)
    np.testing.assert_array_equal(again.predict(data.x_test), model.predict(data.x_test))


def test_cli_run_saves_the_statistics_and_evaluate_applies_them(write_config, tmp_path):
    doc = model_doc({"type": "Normalization"}, *DENSE, input_shape=(8, 8, 1))
    doc["train"] = {"data": {"dataset": "digits"}, "epochs": 2, "output": str(tmp_path / "run")}
    config = write_config(doc)
    result = cli("train", config)
    assert result.exit_code == 0, result.stderr
    weights = load_npz(tmp_path / "run" / "model.npz")
    data = load_dataset("digits", input_shape=(8, 8, 1), validation_split=0.1)
    np.testing.assert_allclose(weights["normalization/mean"], [data.x_train.mean()], rtol=1e-5)
    test_line = next(line for line in result.stdout.splitlines() if line.startswith("test:"))
    evaluated = cli("evaluate", config, "--weights", tmp_path / "run" / "model.npz", "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    accuracy = json.loads(evaluated.stdout)["accuracy"]
    assert f"accuracy {accuracy:.4f}" in test_line  # the same normalisation in both


@pytest.mark.parametrize(
    "layer, params",
    [
        ({"type": "Rescaling", "scale": 0.00392156862745098}, 0),
        ({"type": "Normalization"}, 7),  # Keras 3: mean (3,), variance (3,), count ()
        ({"type": "Normalization", "mean": [0.5, 0.4, 0.3], "variance": 0.04}, 0),
    ],
)
def test_summary_counts_as_keras_3(write_config, layer, params):
    doc = model_doc(layer, *DENSE, input_shape=(4, 4, 3))
    result = cli("summary", write_config(doc), "--json")
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)["layers"][0]
    assert row["params"] == params and row["trainable_params"] == 0


@pytest.mark.parametrize(
    "layer, where, fragment",
    [
        ({"type": "Normalization", "mean": 0.5}, "layers[0].mean", "both mean and variance"),
        ({"type": "Normalization", "mean": 0, "variance": -1}, "variance", "must be >= 0"),
        ({"type": "Normalization", "axis": 1}, "layers[0].axis", "only axis=-1"),
        ({"type": "Normalization", "mean": [1, 2], "variance": 1}, "layers[0]", "2 values"),
        ({"type": "Rescaling"}, "layers[0].scale", "needs this argument"),
    ],
)
def test_bad_arguments_name_the_key(write_config, layer, where, fragment):
    result = cli("summary", write_config(model_doc(layer, *DENSE, input_shape=(4, 4, 3))))
    assert result.exit_code == 2
    error_line(result.stderr, where, fragment)


def test_onnx_export_takes_raw_inputs():
    from test_export_onnx import assert_onnx_matches

    model = normalized_model((5, 5, 3))
    model.initialize(0)
    norm = model.layers[1]
    norm.params["mean"][...] = [0.2, -0.1, 0.7]
    norm.params["variance"][...] = [0.5, 2.0, 0.0]
    assert_onnx_matches(model)


def test_keras_3_weights_with_an_int_count_import(tmp_path):
    model = normalized_model((4, 4, 1))
    mean, variance = np.float32([0.25]), np.float32([4.0])
    kernel = np.random.default_rng(0).standard_normal((16, 10)).astype(np.float32)
    per_layer = [[], [mean, variance, np.int64(0)], [], [kernel, np.zeros(10, np.float32)]]
    write_keras3(
        tmp_path / "w.weights.h5", ["rescaling", "normalization", "flatten", "dense"], per_layer
    )
    import_keras_weights(model, tmp_path / "w.weights.h5")
    x = np.full((1, 4, 4, 1), 0.5, np.float32)  # rescaled to 0, normalised to -0.125
    expected = np.full(16, -0.125, np.float32) @ kernel
    logits = model.forward(x, training=False)
    np.testing.assert_allclose(
        np.log(logits[0]) - np.log(logits[0]).mean(),
        expected - expected.mean(),
        rtol=1e-4,
        atol=1e-4,
    )


def test_configs_load():
    """The config docs/augmentation.md uses builds, with its Normalization adapting."""
    from helpers import ROOT

    model = load_model(ROOT / "configs" / "cifar_augment.yaml")
    assert isinstance(model.layers[0], Normalization) and model.layers[0].adapts
    with pytest.raises(ConfigError):
        Normalization(mean=1)
