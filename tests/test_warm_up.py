"""Kernels are compiled (or loaded from numba's cache) before the first batch is timed
(issue 13: epoch 1 reported 66-89 samples/s while numba compiled, with no word said), and
doing so changes nothing about the run."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from test_robustness import SMALL, write_run_config
from test_train import TINY, synthetic, tiny_model

from nbcnn import train

LAYERS = [*TINY[:-1], {"type": "Dropout", "rate": 0.3, "seed": 7}, TINY[-1]]  # BN, own rng


def test_warm_up_leaves_weights_and_random_streams_as_they_were():
    model = tiny_model(LAYERS)
    x, _ = synthetic()
    weights = [w.copy() for w in model.get_weights()]
    streams = [model.rng.bit_generator.state, model.layers[-2].rng.bit_generator.state]
    train.warm_up(model, x)
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)  # BatchNormalization's moving statistics too
    assert [model.rng.bit_generator.state, model.layers[-2].rng.bit_generator.state] == streams


def test_a_run_is_the_same_with_and_without_warm_up(monkeypatch):
    x, y = synthetic()
    runs = []
    for skip in (False, True):
        if skip:
            monkeypatch.setattr(train, "warm_up", lambda model, x: None)
        model = tiny_model(LAYERS)
        history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        runs.append((model.get_weights(), history.history["loss"]))
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    assert runs[0][1] == runs[1][1]


@pytest.mark.parametrize("resume", [False, True])
def test_the_callback_hears_prepare_before_the_first_epoch(tmp_path, resume):
    x, y = synthetic()
    events = []

    def listen(event, info):
        events.append(event)

    output = tmp_path / "run"
    if resume:
        tiny_model(LAYERS).fit(x, y, epochs=1, batch_size=32, verbose=0, output=output)
    tiny_model(LAYERS).fit(
        x, y, epochs=2, batch_size=32, output=output, resume=resume, callback=listen
    )
    assert events[:3] == ["prepare_begin", "prepare_end", "epoch_begin"]
    assert events.count("epoch_begin") == (1 if resume else 2)


CTRL_C_WHILE_COMPILING = """
import os, signal, sys
from nbcnn import train
def compiling(model, x):
    os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C came while numba compiles
    raise AssertionError("the interrupt did not act")
train.warm_up = compiling
from nbcnn.cli import main
sys.argv = ["nbcnn", "train", sys.argv[1]]
main()
"""


def test_ctrl_c_while_kernels_compile_acts_at_once(write_config, tmp_path):
    """Issue 13: Ctrl-C took 14 s to act while the first run compiled."""
    config = write_run_config(write_config, tmp_path, SMALL)
    proc = subprocess.run(
        [sys.executable, "-c", CTRL_C_WHILE_COMPILING, str(config)], capture_output=True, text=True
    )
    assert proc.returncode == 130, proc.stderr
    assert "0 epoch(s) completed" in proc.stderr and "Traceback" not in proc.stderr
