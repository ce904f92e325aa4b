"""`fit(output=...)` runs you can trust from Python (QA of issue 13, the Python API side): the run
folder records what defines the run (config.yaml and fit.json), `resume=True` refuses by name
any difference but `epochs`, refusals speak Python (`resume=True`, not `--resume`), a monitor
typo gets a did-you-mean, float 0..255 pixels get a warning, and a resume with nothing to
resume says so (from the CLI too)."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import yaml
from helpers import cli, model_doc, snapshot
from test_robustness import error_line

import nbcnn
from nbcnn.callbacks import EarlyStopping
from nbcnn.errors import ConfigError, NbcnnError
from nbcnn.runs import FIT_RECORD, MARKER


def pixels(n=96, seed=0):
    """``n`` 8x8 uint8 images whose brightness by halves gives the label 0..2."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 120, (n, 8, 8, 1)).astype(np.uint8)
    x[y == 1, :4] += 120
    x[y == 2, 4:] += 120
    return x, y


def small(activation="softmax"):
    layers = nbcnn.layers
    return nbcnn.Sequential(
        [layers.Flatten(), layers.Dense(3, activation=activation)], input_shape=(8, 8, 1)
    )


def train(output, epochs=1, model=None, x=None, y=None, **kwargs):
    x = pixels()[0] if x is None else x
    y = pixels()[1] if y is None else y
    model = model or small()
    arguments = {"batch_size": 16, "verbose": 0, **kwargs}
    return model, model.fit(x, y, epochs=epochs, output=output, **arguments)


# ---------------------------------------------------------------- what a run records


def test_a_python_run_records_its_model_arguments_and_data(tmp_path):
    """QA: Python runs wrote no config.yaml although nbcnn-run.json lists it."""
    run = tmp_path / "run"
    model, _ = train(run)
    listed = json.loads((run / MARKER).read_text())["files"]
    assert "config.yaml" in listed and FIT_RECORD in listed
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config == {k: model.get_config()[k] for k in ("name", "input_shape", "layers")}
    record = json.loads((run / FIT_RECORD).read_text())
    assert record["fit"]["batch_size"] == 16 and record["fit"]["epochs"] == 1
    assert record["compile"]["optimizer"]["type"] == "adam"
    assert record["data"]["x"]["shape"] == [96, 8, 8, 1]
    assert record["data"]["x"]["dtype"] == "uint8"
    assert record["data"]["validation_data"] is None
    assert cli("summary", run / "config.yaml").exit_code == 0  # a config nbcnn reads


REVERSED = pixels()[0][::-1], pixels()[1][::-1]
DIFFERENCES = {
    "batch_size": (
        {"batch_size": 32},
        "fit(batch_size): the run was trained with 16, got 32; resume=True continues the run",
    ),
    "validation_split": ({"validation_split": 0.5}, "fit(validation_split): "),
    "seed": ({"seed": 4}, "fit(seed): the run was trained with 0, got 4"),
    "shuffle": ({"shuffle": False}, "fit(shuffle): the run was trained with True, got False"),
    "reversed_x": ({"x": REVERSED[0], "y": REVERSED[1]}, "fit(x): the run was trained on uint8"),
    "other_labels": ({"y": (pixels()[1] + 1) % 3}, "fit(y): the run was trained on int64"),
    "validation_data": ({"validation_data": pixels(12, seed=1)}, "fit(validation_data): "),
    "augment": ({"augment": {"flip": "horizontal"}}, "fit(augment): the run was trained with"),
    "early_stopping": ({"early_stopping": {"monitor": "loss"}}, "fit(early_stopping): "),
    "callback": (
        {"callbacks": [EarlyStopping(monitor="loss", patience=1)]},
        "fit(callbacks)[0]: the run was trained with (absent), got {'type': 'EarlyStopping'",
    ),
}


@pytest.mark.parametrize("change", list(DIFFERENCES))
def test_resume_refuses_a_differing_argument_by_name(tmp_path, change):
    """QA: `fit(..., batch_size=32, resume=True)` on a run trained with 16 was accepted and
    silently changed the run (weights equal to neither); so were a reversed x and a new
    validation_split. Now each is refused by name, before anything is written."""
    run = tmp_path / "run"
    train(run)
    before = snapshot(run)
    kwargs, fragment = DIFFERENCES[change]
    with pytest.raises(ConfigError) as err:
        train(run, epochs=2, resume=True, **kwargs)
    message = str(err.value)
    assert message.startswith(f"{run / FIT_RECORD}: ") and fragment in message, message
    assert "\n" not in message and "--" not in message
    assert snapshot(run) == before


def test_resume_refuses_another_compile_and_another_model(tmp_path):
    run = tmp_path / "run"
    train(run)
    before = snapshot(run)
    model = small()
    model.compile(optimizer={"type": "adam", "learning_rate": 0.01})
    with pytest.raises(ConfigError, match=r"compile\(optimizer\)\.learning_rate: the run was"):
        train(run, epochs=2, model=model, resume=True)
    with pytest.raises(ConfigError, match=r"layers\[1\]\.activation: the run was trained with "):
        train(run, epochs=2, model=small("sigmoid"), resume=True)
    assert snapshot(run) == before


def test_epochs_may_extend_the_run_and_it_ends_as_an_uninterrupted_one(tmp_path):
    full, _ = train(tmp_path / "full", epochs=3)
    train(tmp_path / "part", epochs=1)
    resumed, history = train(tmp_path / "part", epochs=3, resume=True)
    assert len(history.history["loss"]) == 3
    for a, b in zip(full.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert json.loads((tmp_path / "part" / FIT_RECORD).read_text())["fit"]["epochs"] == 3


def test_a_cli_run_is_not_resumed_by_fit(write_config, tmp_path):
    """A run of `nbcnn train` records its settings in config.yaml, not fit.json: fit cannot
    check that it continues it, and says how to resume it instead."""
    doc = model_doc({"type": "Flatten"}, {"type": "Dense", "units": 10}, input_shape=(8, 8, 1))
    doc["train"] = {"data": {"dataset": "digits"}, "batch_size": 64}
    run = tmp_path / "run"
    assert cli("train", write_config(doc), "--output", run, "--epochs", "1").exit_code == 0
    before = snapshot(run)
    model = nbcnn.from_config(doc)
    with pytest.raises(ConfigError, match=r"fit\(resume\): records no fit\(\) arguments"):
        model.fit(*pixels(), epochs=2, output=run, resume=True, verbose=0)
    assert snapshot(run) == before


# ---------------------------------------------------------------- refusals in Python's words


def test_an_existing_run_is_refused_in_pythons_words(tmp_path):
    """QA: from Python the refusal said "pass --resume ..., --overwrite ..., or --output DIR"."""
    run = tmp_path / "run"
    train(run)
    with pytest.raises(NbcnnError) as err:
        train(run)
    assert str(err.value) == (
        f"{run} already holds a run; pass resume=True to continue it, overwrite=True to "
        "replace it, or another output= to write elsewhere"
    )
    result = cli_train_into(run, tmp_path)
    assert "pass --resume to continue it, --overwrite to replace it" in result


def cli_train_into(run, tmp_path):
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump(model_doc({"type": "Flatten"}, {"type": "Dense", "units": 3})))
    result = cli("train", config, "--output", run, "--epochs", "1")
    assert result.exit_code == 2
    return error_line(result.stderr)


def test_a_monitor_typo_gets_a_did_you_mean():
    """QA: `EarlyStopping(monitor='val_acc')` with validation data said "needs validation
    data"; the CLI's config says "did you mean 'val_accuracy'"."""
    model = small()
    with pytest.raises(ConfigError) as err:
        model.fit(
            *pixels(),
            validation_split=0.25,
            callbacks=[EarlyStopping(monitor="val_acc")],
            verbose=0,
        )
    message = str(err.value)
    assert message.startswith("fit(callbacks[0]): the epochs will not have 'val_acc' (did you ")
    assert "(did you mean 'val_accuracy'?)" in message and "needs validation data" not in message
    with pytest.raises(ConfigError, match=r"'val_loss' needs validation data"):
        small().fit(*pixels(), callbacks=[EarlyStopping()], verbose=0)


# ---------------------------------------------------------------- float pixels 0..255


def test_float_pixels_0_to_255_are_warned_once():
    """QA: `fit(x.astype('float32'))` of uint8 images trained silently to a loss of 58683
    while the CLI refuses such files; fit, evaluate and predict now warn, once per array."""
    x, y = pixels()
    model = small()
    with pytest.warns(UserWarning, match=re.escape("divide by 255 (x / 255)")) as caught:
        model.fit(x.astype(np.float32), y, epochs=1, validation_split=0.25, verbose=0)
    assert len([w for w in caught if "0..255 pixels" in str(w.message)]) == 1
    with pytest.warns(UserWarning, match="x holds floats above 2"):
        model.predict(x.astype(np.float64))
    with pytest.warns(UserWarning, match="x holds floats above 2"):
        model.evaluate(x.astype(np.float32), y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(x.astype(np.float32) / 255)  # scaled
        model.predict(x)  # uint8: divided by 255
        model.predict((x - 127.5) / 40)  # standardised: negative values
        rescaled = nbcnn.Sequential(
            [nbcnn.layers.Rescaling(1 / 255), *small().layers], input_shape=(8, 8, 1)
        )
        rescaled.fit(x.astype(np.float32), y, epochs=1, verbose=0)


# ---------------------------------------------------------------- nothing to resume


def test_resume_with_nothing_to_resume_says_so(write_config, tmp_path):
    """QA: `nbcnn train ... --resume --output runs/typo` started from scratch silently."""
    doc = model_doc({"type": "Flatten"}, {"type": "Dense", "units": 10}, input_shape=(8, 8, 1))
    doc["train"] = {"data": {"dataset": "digits"}}
    typo = tmp_path / "runs" / "typo"
    result = cli("train", write_config(doc), "--output", typo, "--resume", "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    note = f"nbcnn: note: nothing to resume in {typo}: starting a new run"
    assert note in result.stderr.splitlines(), result.stderr
    assert (typo / "model.npz").exists()
    with pytest.warns(UserWarning, match=f"nothing to resume in {re.escape(str(tmp_path))}"):
        train(tmp_path / "api", resume=True)
    assert (tmp_path / "api" / "model.npz").exists()
