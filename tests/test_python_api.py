"""The Python API like Keras's (issue 13, item 7, and Found 5): models built in Python with
Keras's positional arguments, configs as dicts and YAML text, summary(), compile(metrics=...),
fit(validation_split=..., shuffle=..., callbacks=[...]), and one input rule (integers are
0..255 pixels) shared by fit, evaluate, predict and the CLI. docs/python-api.md runs here too."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ROOT, cli

import nbcnn
from nbcnn.callbacks import Callback, EarlyStopping, ModelCheckpoint
from nbcnn.errors import ConfigError, DataError
from nbcnn.summary import render_table, summarize

TINY = [
    {"type": "Conv2D", "filters": 2, "kernel_size": 3, "activation": "relu"},
    {"type": "Flatten"},
    {"type": "Dense", "units": 3, "activation": "softmax"},
]
TINY_CONFIG = {"name": "tiny", "input_shape": [8, 8, 1], "layers": TINY}


def tiny_layers():
    """TINY built in Python, with Keras's positional arguments."""
    layers = nbcnn.layers
    return [layers.Conv2D(2, 3, activation="relu"), layers.Flatten(), layers.Dense(3, "softmax")]


def pixels(n=48, seed=0):
    """``n`` 8x8 grayscale images as uint8 pixels and labels 0..2 that they predict."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 120, (n, 8, 8, 1)).astype(np.uint8)
    x[y == 1, :4] += 120  # classes differ in brightness by halves: learnable in a few epochs
    x[y == 2, 4:] += 120
    return x, y


def lines_of(model, **kwargs):
    lines = []
    assert model.summary(print_fn=lines.append, **kwargs) is None  # as Keras, prints only
    return lines


# ---------------------------------------------------------------- layers in Python


@pytest.mark.parametrize(
    ("made", "config"),
    [
        (
            lambda L: L.Conv2D(32, 3, 2, "same"),
            {"filters": 32, "kernel_size": 3, "strides": 2, "padding": "same"},
        ),
        (lambda L: L.Conv1D(4, 5), {"filters": 4, "kernel_size": 5}),
        (lambda L: L.Dense(10, "relu"), {"units": 10, "activation": "relu"}),
        (lambda L: L.MaxPooling2D(3, 1), {"pool_size": 3, "strides": 1}),
        (lambda L: L.AveragePooling2D((2, 1)), {"pool_size": [2, 1]}),
        (lambda L: L.Dropout(0.25, seed=3), {"rate": 0.25, "seed": 3}),
        (lambda L: L.Activation("tanh"), {"activation": "tanh"}),
        (lambda L: L.BatchNormalization(-1, 0.9), {"axis": -1, "momentum": 0.9}),
        (lambda L: L.ZeroPadding2D(2), {"padding": 2}),
        (lambda L: L.Cropping2D(1), {"cropping": 1}),
        (lambda L: L.UpSampling2D(3), {"size": 3}),
        (lambda L: L.Reshape((4, -1)), {"target_shape": [4, -1]}),
        (
            lambda L: L.DepthwiseConv2D(3, 1, "same", 2),
            {"kernel_size": 3, "strides": 1, "padding": "same", "depth_multiplier": 2},
        ),
    ],
)
def test_layers_take_keras_positional_arguments(made, config):
    layer = made(nbcnn.layers)
    from_yaml = nbcnn.layers.get(type(layer).__name__)(**config)
    assert layer.get_config() == from_yaml.get_config()


def test_positional_arguments_are_checked_like_keywords():
    layers = nbcnn.layers
    with pytest.raises(ConfigError, match=r"Dense takes at most 5 positional argument\(s\)"):
        layers.Dense(10, None, True, "zeros", "zeros", 7)
    with pytest.raises(ConfigError, match="'units' both by position and by name"):
        layers.Dense(10, units=5)
    with pytest.raises(ConfigError, match="Dropout takes at most 1 positional"):
        layers.Dropout(0.5, None, 3)  # Keras's noise_shape, which nbcnn does not have
    with pytest.raises(ConfigError, match=r"kernel_size: expected an int >= 1"):
        layers.Conv2D(8, 0)


def test_plugin_and_built_in_layers_come_by_name_and_as_attributes():
    assert nbcnn.layers.get("DepthwiseConv2D") is nbcnn.layers.DepthwiseConv2D
    assert nbcnn.layers.get("nbcnn-depthwise:DepthwiseConv2D") is nbcnn.layers.DepthwiseConv2D
    assert nbcnn.layers.Conv2D.__module__ == "nbcnn.layers.conv"
    assert {"Conv2D", "DepthwiseConv2D"} <= set(dir(nbcnn.layers))
    with pytest.raises(AttributeError, match="did you mean 'Conv2D'"):
        nbcnn.layers.Conv2d  # noqa: B018
    with pytest.raises(ConfigError, match="did you mean 'Dense'"):
        nbcnn.layers.get("Dence")
    from nbcnn.layers import activations  # submodules still import

    assert activations.__name__ == "nbcnn.layers.activations"


def test_the_api_does_not_import_numba():
    code = (
        "import sys, nbcnn\n"
        "m = nbcnn.Sequential([nbcnn.layers.Conv2D(8, 3, input_shape=(28, 28, 1)),\n"
        "    nbcnn.layers.get('DepthwiseConv2D')(3), nbcnn.layers.Flatten(),\n"
        "    nbcnn.layers.Dense(10, 'softmax')])\n"
        "m.summary(print_fn=lambda line: None)\n"
        "nbcnn.model_from_yaml(m.to_yaml())\n"
        "assert 'numba' not in sys.modules, 'numba imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- Sequential


def test_sequential_equals_the_config_it_writes(write_config):
    model = nbcnn.Sequential(tiny_layers(), input_shape=(8, 8, 1), name="tiny")
    from_file = nbcnn.load_model(write_config(TINY_CONFIG))
    assert model.get_config() == from_file.get_config()
    assert lines_of(model) == lines_of(from_file)


def test_input_shape_may_come_from_the_first_layer_as_in_keras_2():
    layers = tiny_layers()
    layers[0] = nbcnn.layers.Conv2D(2, 3, activation="relu", input_shape=(8, 8, 1))
    model = nbcnn.Sequential(layers)
    assert model.input_shape == (8, 8, 1) and model.output_shape == (3,)
    with pytest.raises(ConfigError, match=r"layers\[0\].input_shape: the first layer says"):
        nbcnn.Sequential([nbcnn.layers.Dense(2, input_shape=(4,))], input_shape=(5,))
    with pytest.raises(ConfigError, match="belongs on the first layer only"):
        nbcnn.Sequential([nbcnn.layers.Flatten(), nbcnn.layers.Dense(2, input_shape=(4,))])


def test_a_config_still_takes_input_shape_at_its_top_level_only(write_config):
    layers = [{**TINY[0], "input_shape": [8, 8, 1]}, *TINY[1:]]
    config = write_config({"input_shape": [8, 8, 1], "layers": layers})
    with pytest.raises(ConfigError, match=r"layers\[0\].input_shape: .*move it up"):
        nbcnn.load_model(config)


def test_add_builds_the_model_layer_by_layer_and_keeps_it_on_error():
    model = nbcnn.Sequential(input_shape=(8, 8, 1))
    for layer in tiny_layers():
        model.add(layer)
    assert [la.name for la in model.layers] == ["conv2d", "flatten", "dense"]
    with pytest.raises(ConfigError, match="MaxPooling2D needs an input of rank 3"):
        model.add(nbcnn.layers.MaxPooling2D())
    assert len(model.layers) == 3 and model.output_shape == (3,)
    model.predict(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(ConfigError, match="add.*already has weights"):
        model.add(nbcnn.layers.Dense(2))


def test_layers_are_named_as_keras_names_them():
    L = nbcnn.layers
    model = nbcnn.Sequential(
        [L.Conv2D(2, 3, name="conv2d_1"), L.Conv2D(2, 3), L.Conv2D(2, 3), L.Flatten()],
        input_shape=(9, 9, 1),
    )
    assert [la.name for la in model.layers] == ["conv2d_1", "conv2d", "conv2d_2", "flatten"]
    with pytest.raises(ConfigError, match=r"duplicate layer name 'a' \(also layers\[0\]\)"):
        nbcnn.Sequential([L.Flatten(name="a"), L.Dense(2, name="a")], input_shape=(4,))
    dense = L.Dense(2)
    with pytest.raises(ConfigError, match="appears twice"):
        nbcnn.Sequential([dense, dense], input_shape=(2,))


def test_the_input_shape_may_come_from_the_first_data():
    x, y = pixels(6)
    model = nbcnn.Sequential(tiny_layers())
    with pytest.raises(ConfigError, match="does not know its input shape yet"):
        model.summary()
    assert model.predict(x).shape == (6, 3) and model.input_shape == (8, 8, 1)
    empty = nbcnn.Sequential()
    with pytest.raises(ConfigError, match="no layers"):
        empty.predict(x)


# ---------------------------------------------------------------- configs as dicts and YAML


def test_load_model_and_from_config_take_a_dict():
    """Found 5: a dict given to load_model answered "No such file or directory"."""
    config = {**TINY_CONFIG, "input_shape": (8, 8, 1)}  # a tuple, as Python code writes it
    model = nbcnn.load_model(config)
    assert model.name == "tiny" and model.output_shape == (3,)
    assert nbcnn.from_config(config).get_config() == model.get_config()
    config["layers"] = []  # the model keeps no reference to the caller's dict
    assert len(model.layers) == 3
    with pytest.raises(ConfigError, match=r"layers\[0\].filters: expected an int >= 1"):
        nbcnn.from_config({**TINY_CONFIG, "layers": [{**TINY[0], "filters": 0}]})
    with pytest.raises(ConfigError, match=r"from_config\(config\): expected a dict"):
        nbcnn.from_config("tiny.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_config_model_config_round_trips(path):
    model = nbcnn.load_model(path)
    config = model.get_config()
    again = nbcnn.from_config(config)
    assert again.get_config() == config
    assert lines_of(again) == lines_of(model)
    from_text = nbcnn.model_from_yaml(model.to_yaml())
    assert from_text.get_config() == config and lines_of(from_text) == lines_of(model)
    assert config.get("train") == yaml.safe_load(path.read_text()).get("train")


def test_to_yaml_is_a_config_the_cli_reads(tmp_path):
    config = tmp_path / "tiny.yaml"
    model = nbcnn.Sequential(tiny_layers(), input_shape=(8, 8, 1), name="tiny")
    config.write_text(model.to_yaml())
    result = cli("summary", config)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.rstrip("\n").split("\n") == lines_of(model)


def test_model_from_yaml_parses_strictly():
    with pytest.raises(ConfigError, match="not valid YAML"):
        nbcnn.model_from_yaml("layers: [")
    with pytest.raises(ConfigError, match="duplicate key 'name'"):
        nbcnn.model_from_yaml("name: a\nname: b\n")
    with pytest.raises(ConfigError, match="model_from_yaml"):
        nbcnn.model_from_yaml(b"name: a")


def test_summary_prints_the_cli_table():
    """Found 5: there was no model.summary()."""
    model = nbcnn.from_config(TINY_CONFIG)
    table = render_table(summarize(model))
    assert lines_of(model) == table.split("\n")
    assert lines_of(model, plain=True) == render_table(summarize(model), extras=False).split("\n")


# ---------------------------------------------------------------- compile and fit


def fitted(x, y, **kwargs):
    model = nbcnn.from_config(TINY_CONFIG)
    model.compile(optimizer={"type": "adam", "learning_rate": 0.01}, metrics=["accuracy"])
    history = model.fit(x, y, **{"epochs": 2, "batch_size": 8, "verbose": 0, **kwargs})
    return model, history


def test_compile_takes_metrics_and_history_holds_only_what_was_measured():
    """Found 5: compile(metrics=...) raised TypeError; history held val_loss: [None]."""
    x, y = pixels()
    model, history = fitted(x, y)
    assert set(history.history) == {"loss", "accuracy", "learning_rate"}
    assert model.history is history
    model.compile(metrics=[])
    assert set(model.fit(x, y, verbose=0).history) == {"loss", "learning_rate"}
    with pytest.raises(ConfigError, match=r"compile\(metrics\)"):
        model.compile(metrics=["accuracyy"])


def test_validation_split_holds_out_the_last_samples_before_shuffling():
    """Found 5: fit(validation_split=...) raised TypeError. Keras takes the last fraction of
    the arrays as given, before shuffling: the same run as validation_data of those."""
    x, y = pixels()
    _, split = fitted(x, y, validation_split=0.25)
    _, given = fitted(x[:36], y[:36], validation_data=(x[36:], y[36:]))
    assert set(split.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert split.history == given.history
    with pytest.raises(DataError, match="3 samples cannot be split"):
        fitted(x[:3], y[:3], validation_split=0.7)  # floor(3 * 0.3) = 0 samples to train


def test_validation_data_overrides_validation_split_as_in_keras():
    x, y = pixels()
    _, both = fitted(x[:36], y[:36], validation_data=(x[36:], y[36:]), validation_split=0.5)
    _, given = fitted(x[:36], y[:36], validation_data=(x[36:], y[36:]))
    assert both.history == given.history


def test_shuffle_false_keeps_the_order():
    x, y = pixels()
    runs = {}
    for shuffle in (False, True):
        for seed in (0, 1):
            model = nbcnn.from_config(TINY_CONFIG).initialize(7)
            model.fit(x, y, epochs=1, batch_size=8, shuffle=shuffle, seed=seed, verbose=0)
            runs[shuffle, seed] = model.get_weights()
    # Without shuffling the shuffle stream (drawn from the seed) is never used.
    assert all(np.array_equal(a, b) for a, b in zip(runs[False, 0], runs[False, 1]))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[True, 0], runs[True, 1]))


# ---------------------------------------------------------------- callbacks


HOOKS = [name for name in vars(Callback) if name.startswith("on_")]


class Recorder(Callback):
    """Records ``(hook, epoch or batch)`` for every hook called."""

    def __init__(self):
        super().__init__()
        self.calls = []
        for hook in HOOKS:
            setattr(self, hook, self._recorder(hook))

    def _recorder(self, hook):
        def record(*args):
            self.calls.append((hook, *[a for a in args[:1] if isinstance(a, int)]))

        return record


def test_callbacks_get_keras_hooks_in_keras_order():
    x, y = pixels(16)
    recorder = Recorder()
    model, _ = fitted(x, y, epochs=2, callbacks=[recorder])
    assert recorder.model is model
    assert recorder.params == {
        "epochs": 2,
        "steps": 2,
        "batch_size": 8,
        "samples": 16,
        "verbose": 0,
    }
    batches = [
        ("on_train_batch_begin", 0),
        ("on_train_batch_end", 0),
        ("on_train_batch_begin", 1),
        ("on_train_batch_end", 1),
    ]
    assert recorder.calls == [
        ("on_train_begin",),
        ("on_prepare_begin",),
        ("on_prepare_end",),
        ("on_epoch_begin", 0),
        *batches,
        ("on_epoch_end", 0),
        ("on_epoch_begin", 1),
        *batches,
        ("on_epoch_end", 1),
        ("on_train_end",),
    ]


def test_early_stopping_runs_keras_docstring_example():
    """keras.callbacks.EarlyStopping's example: monitor loss, patience 3, no improvement
    after the first epoch (here: an improvement must beat the best by 100) -> 4 epochs."""
    x, y = pixels(16)
    stop = EarlyStopping(monitor="loss", patience=3, min_delta=100)
    _, history = fitted(x, y, epochs=10, callbacks=[stop])
    assert len(history.history["loss"]) == 4 and history.stopped_early
    assert stop.stopped_epoch == 3 and stop.wait == 3


def test_early_stopping_restores_the_best_weights(tmp_path):
    x, y = pixels(16)
    every = ModelCheckpoint(str(tmp_path / "{epoch}.npz"))
    stop = EarlyStopping(monitor="loss", patience=1, min_delta=100, restore_best_weights=True)
    model, history = fitted(x, y, epochs=5, callbacks=[every, stop])
    assert len(history.history["loss"]) == 2 and stop.best_epoch == 0
    best = nbcnn.from_config(TINY_CONFIG)
    best.load_weights(tmp_path / "1.npz")
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), best.get_weights()))


def test_model_checkpoint_saves_the_best_epochs_only(tmp_path):
    x, y = pixels()
    path = tmp_path / "ckpt" / "{epoch:02d}-{val_loss:.4f}.npz"
    keep = ModelCheckpoint(path, monitor="val_loss", save_best_only=True)
    _, history = fitted(x, y, epochs=4, validation_split=0.25, callbacks=[keep])
    values = history.history["val_loss"]
    best = [i for i, v in enumerate(values) if v == min(values[: i + 1])]
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == [f"{i + 1:02d}-{values[i]:.4f}.npz" for i in best]
    assert keep.best == min(values)


@pytest.mark.parametrize(
    ("made", "where"),
    [
        (lambda: EarlyStopping(patience=-1), "EarlyStopping(patience)"),
        (lambda: EarlyStopping(mode="biggest"), "EarlyStopping(mode)"),
        (lambda: ModelCheckpoint("w.keras"), "ModelCheckpoint(filepath)"),
        (
            lambda: ModelCheckpoint("w.npz", save_weights_only=False),
            "ModelCheckpoint(save_weights_only)",
        ),
        (lambda: ModelCheckpoint("w.npz", save_freq=10), "ModelCheckpoint(save_freq)"),
    ],
)
def test_callback_arguments_are_checked(made, where):
    with pytest.raises(ConfigError, match=re.escape(where)):
        made()


def test_a_monitor_the_epochs_will_not_have_is_refused_before_any_work():
    x, y = pixels(16)
    model = nbcnn.from_config(TINY_CONFIG)
    with pytest.raises(ConfigError, match=r"fit\(callbacks\[0\]\): monitor 'val_loss' needs"):
        model.fit(x, y, callbacks=[EarlyStopping()], verbose=0)
    with pytest.raises(ConfigError, match=r"train.early_stopping.monitor: .*'val_accuracy'"):
        model.fit(x, y, early_stopping={"monitor": "val_accuracy"}, verbose=0)
    assert not model.built


def test_the_event_function_of_the_cli_progress_still_works():
    x, y = pixels(16)
    events = []
    fitted(x, y, epochs=1, callback=lambda event, info: events.append((event, dict(info))))
    assert [e for e, _ in events] == [
        "prepare_begin",
        "prepare_end",
        "epoch_begin",
        "batch_end",
        "batch_end",
        "epoch_end",
    ]
    assert events[2][1] == {"epoch": 1, "epochs": 1, "batches": 2}
    assert events[4][1]["batch"] == 2 and events[4][1]["samples"] == 16


# ---------------------------------------------------------------- one input rule


def test_uint8_pixels_are_scaled_by_fit_evaluate_and_predict_alike():
    """Found 5: the CLI's loaders divided uint8 images by 255, fit and predict did not."""
    x, y = pixels()
    scaled = x.astype(np.float32) / 255
    model_a, history_a = fitted(x, y, validation_split=0.25)
    model_b, history_b = fitted(scaled, y, validation_split=0.25)
    assert history_a.history == history_b.history
    assert np.array_equal(model_a.predict(x), model_b.predict(scaled))
    assert model_a.evaluate(x, y) == model_b.evaluate(scaled, y)
    assert np.array_equal(model_a.predict(x.astype(np.int64)), model_a.predict(x))
    with pytest.raises(DataError, match=r"x has integer pixels in \[300, 300\]; expected 0..255"):
        model_a.predict(np.full((1, 8, 8, 1), 300))


def test_the_cli_applies_the_same_rule(tmp_path):
    x, y = pixels()
    model, _ = fitted(x, y)
    config = tmp_path / "tiny.yaml"
    config.write_text(model.to_yaml())
    model.save_weights(tmp_path / "w.npz")
    np.savez(tmp_path / "pixels.npz", x=x[:4])
    result = cli(
        "predict", config, tmp_path / "pixels.npz", "--weights", tmp_path / "w.npz", "--json"
    )
    assert result.exit_code == 0, result.stderr
    shown = [
        [t["probability"] for t in sorted(r["top"], key=lambda t: t["class"])]
        for r in json.loads(result.stdout)
    ]
    assert np.array_equal(np.array(shown, np.float32), model.predict(x[:4]))


# ---------------------------------------------------------------- the tour


def tour_blocks() -> list[str]:
    source = (ROOT / "docs/python-api.md").read_text()
    return re.findall(r"^```python\n(.*?)^```", source, re.S | re.M)


def test_the_tour_in_docs_runs_as_written(tmp_path, monkeypatch):
    """docs/python-api.md's blocks, in order, in one namespace (they are one program)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in tour_blocks():
        exec(compile(block, "docs/python-api.md", "exec"), namespace)  # noqa: S102
    assert Path("best.npz").exists()
