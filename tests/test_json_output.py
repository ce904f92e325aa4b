"""`--json` output is JSON alone: what layers print while the model is built and run goes to
stderr (verification of issue 16, build item 4: plugin output never reaches stdout)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import cli, model_doc

import nbcnn
from nbcnn.layers.core import Dense

DOC = model_doc(
    {"type": "Flatten"},
    {"type": "Dense", "units": 10, "activation": "softmax"},
    input_shape=(8, 8, 1),
)


@pytest.fixture
def noisy_dense(monkeypatch):
    """Dense printing in its constructor and forward, as a chatty plugin layer would."""
    init, forward = Dense.__init__, Dense.forward

    def noisy_init(self, *args, **kwargs):
        print("NOISE in the constructor")
        init(self, *args, **kwargs)

    def noisy_forward(self, *args, **kwargs):
        print("NOISE in forward")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Dense, "__init__", noisy_init)
    monkeypatch.setattr(Dense, "forward", noisy_forward)


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_json_commands_keep_layer_output_off_stdout(write_config, tmp_path, noisy_dense, command):
    config = write_config(DOC)
    weights = tmp_path / "w.npz"
    nbcnn.load_model(config).initialize(0).save_weights(weights)
    args = [command, config, "--weights", weights, "--json"]
    if command == "predict":
        np.savez(tmp_path / "x.npz", x=np.zeros((2, 8, 8, 1), np.float32))
        args.insert(2, tmp_path / "x.npz")
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)  # nothing but the JSON
    assert "NOISE in forward" in result.stderr
