"""Tests that kill the one-line bugs a mutation audit found surviving the suite (issue 15).

Each test names in its docstring the mutant it was written against; each was watched failing
with that mutant applied. Expected values are derived by hand or computed independently of
nbcnn (float64 formulas, NumPy's Generator drawn as fit draws it), never by calling the code
under test a second time: a bug shared by both sides of a comparison would pass.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from helpers import cli, cli_subprocess, model_doc
from test_registry import make_distribution, pip_install_target
from test_robustness import error_line

from nbcnn import optim
from nbcnn.callbacks import Callback
from nbcnn.losses import PROB_EPSILON, compute, make_loss
from nbcnn.model import Sequential
from nbcnn.optim import RMSprop
from nbcnn.spec import parse_spec

# ---------------------------------------------------------------- receptive field


def test_receptive_field_of_dilated_convolutions_uses_the_dilated_kernel(write_config):
    """Mutant: ``Conv.receptive_field`` grows the field by the undilated kernel (k - 1) * jump
    instead of the effective kernel (k_eff - 1) * jump, k_eff = (k - 1) * d + 1.

    By hand, r_out = r_in + (k_eff - 1) * j_in, j_out = j_in * stride, from r = j = 1:
    Conv2D 3x3 dilation 2: k_eff 5, r = 1 + 4 = 5, j = 1; MaxPooling2D 2: r = 5 + 1 = 6,
    j = 2; Conv2D 3x2 dilation (3, 1): k_eff (7, 2), r = (6 + 6 * 2, 6 + 1 * 2) = (18, 8).
    The mutant gives 3, 4 and (8, 6).
    """
    doc = model_doc(
        {"type": "Conv2D", "filters": 2, "kernel_size": 3, "dilation_rate": 2},
        {"type": "MaxPooling2D", "pool_size": 2},
        {"type": "Conv2D", "filters": 2, "kernel_size": [3, 2], "dilation_rate": [3, 1]},
        input_shape=(24, 24, 1),
    )
    result = cli("summary", write_config(doc), "--json")
    assert result.exit_code == 0, result.stderr
    layers = json.loads(result.stdout)["layers"]
    assert [layer["receptive_field"] for layer in layers] == [[5, 5], [6, 6], [18, 8]]
    assert [layer["jump"] for layer in layers] == [[1, 1], [2, 2], [2, 2]]


def test_receptive_field_of_a_dilated_conv1d(write_config):
    """Mutant: as above, for the rank-1 convolution: kernel 3 with dilation 4 spans
    k_eff = 2 * 4 + 1 = 9 samples (the mutant says 3)."""
    doc = model_doc(
        {"type": "Conv1D", "filters": 2, "kernel_size": 3, "dilation_rate": 4},
        input_shape=(20, 1),
    )
    result = cli("summary", write_config(doc), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["layers"][0]["receptive_field"] == [9]


# ---------------------------------------------------------------- RMSprop's epsilon


def keras_rmsprop(p, grads, lr, rho, epsilon, momentum=0.0, centered=False):
    """keras/src/optimizers/rmsprop.py ``update_step`` in float64: epsilon inside the square
    root, ``lr * g / sqrt(v + epsilon)`` (centered: ``sqrt(v - a**2 + epsilon)``)."""
    p = p.astype(np.float64)
    v, a, mom = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        g = g.astype(np.float64)
        v = rho * v + (1 - rho) * g * g
        if centered:
            a = rho * a + (1 - rho) * g
            denominator = v - a * a + epsilon
        else:
            denominator = v + epsilon
        increment = lr * g / np.sqrt(denominator)
        if momentum > 0:
            mom = momentum * mom + increment
            increment = mom
        p = p - increment
    return p


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    "options",
    [{}, {"centered": True}, {"momentum": 0.5, "centered": True, "rho": 0.8}],
)
def test_rmsprop_puts_epsilon_inside_the_square_root(fused, options, monkeypatch):
    """Mutant: RMSprop divides by ``sqrt(v) + epsilon`` instead of ``sqrt(v + epsilon)``
    (nbcnn/optim.py's NumPy update, or the fused kernel). With the default epsilon 1e-7 and
    gradients near 1 the two differ by 1e-7 relative: invisible. Here epsilon is comparable
    to v: g = 0.01 gives v = 1e-5 after one step, epsilon = 1e-5, so the step is
    lr * 0.01 / sqrt(2e-5) = 2.236 lr inside and lr * 0.01 / (sqrt(1e-5) + 1e-5) = 3.152 lr
    outside."""
    monkeypatch.setattr(optim, "FUSED", fused)
    rng = np.random.default_rng(3)
    p = rng.normal(size=(3, 5)).astype(np.float32)
    grads = [(rng.choice([-1, 1], size=p.shape) * 0.01).astype(np.float32) for _ in range(3)]
    expected = keras_rmsprop(p, grads, lr=0.1, epsilon=1e-5, **{"rho": 0.9, **options})
    opt = RMSprop(learning_rate=0.1, epsilon=1e-5, **options)
    for g in grads:
        opt.step([p], [g])
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6)


def test_rmsprop_first_step_by_hand():
    """Mutant: epsilon outside the square root. One step from v = 0 with g = 1, rho 0.9,
    epsilon 1: v = 0.1, the step is lr / sqrt(1.1) = 0.0953463 for lr 0.1 (outside it would be
    0.1 / (sqrt(0.1) + 1) = 0.0759747)."""
    p = np.zeros(1, np.float32)
    RMSprop(learning_rate=0.1, epsilon=1.0).step([p], [np.ones(1, np.float32)])
    assert p[0] == pytest.approx(-0.1 / math.sqrt(1.1), rel=1e-6)


# ---------------------------------------------------------------- cross-entropy clip mask


def test_categorical_gradient_is_zero_where_the_upper_clip_acts():
    """Mutant: the mask of ``_ce_probs`` keeps only its lower bound (``q >= eps``), so a
    probability 1 at the label, clipped to 1 - eps, gets -1 / (1 - eps) instead of the clip's
    gradient 0, and through the row normalisation every other output gets +1 / N.

    Probabilities (1, 0, 0) with label 0: loss -log(1 - 1e-7) (~1e-7); every entry of the
    gradient is 0 (clip at the label, t = 0 elsewhere). Row 2 is inside the clip:
    dq = (-1 / 0.5, 0, 0), grad_j = (dq_j - sum_k dq_k q_k) / (2 * N) with sum 1:
    (-2 + 1, 0 + 1, 0 + 1) / 2 = (-0.5, 0.5, 0.5).
    """
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]], np.float32)
    for kind in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
        value, grad, _ = compute(make_loss(kind), probs, np.array([0, 0]), logits=False)
        expected_value = (-math.log(np.float32(1 - PROB_EPSILON)) - math.log(0.5)) / 2
        assert value == pytest.approx(expected_value, rel=1e-6)
        np.testing.assert_array_equal(grad[0], [0.0, 0.0, 0.0])
        np.testing.assert_allclose(grad[1], [-0.5, 0.5, 0.5], rtol=1e-6)


def test_binary_gradient_is_zero_where_the_upper_clip_acts():
    """Mutant: the mask of ``_bce_probs`` keeps only ``p >= eps``: an output 1 with target 1
    then gets -1 / (1 - eps) / K instead of 0 (and 1 with target 0 a huge 1 / eps).
    Outputs (1, 1, 0.5) with targets (1, 0, 1), K = 3: gradients (0, 0, -1 / 0.5 / 3)."""
    out = np.array([[1.0, 1.0, 0.5]], np.float32)
    y = np.array([[1.0, 0.0, 1.0]], np.float32)
    _, grad, _ = compute(make_loss("binary_crossentropy"), out, y, logits=False)
    np.testing.assert_allclose(grad, [[0.0, 0.0, -2.0 / 3]], rtol=1e-6, atol=0)


# ---------------------------------------------------------------- resume and early stopping


def test_resume_keeps_early_stopping_wait(write_config, tmp_path):
    """Mutant: ``--resume`` restores early stopping's best value but resets its ``wait``
    counter to 0 (nbcnn/train.py or EarlyStopping.resume).

    ``min_delta`` 1e9 makes every epoch after the first a non-improvement: wait is 0 after
    epoch 1, then 1, 2, 3, and with patience 3 training stops after epoch 4. A run stopped
    after 2 epochs (wait 1 in its checkpoint) and resumed with ``--epochs 10`` must stop after
    epoch 4 as well; with wait reset it would run to epoch 5.
    """
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    x, y = rng.random((48, 4, 4)).astype(np.float32), rng.integers(0, 2, 48)
    np.savez(data, x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    doc = model_doc(
        {"type": "Flatten"},
        {"type": "Dense", "units": 2, "activation": "softmax"},
        input_shape=(4, 4, 1),
    )
    doc["train"] = {
        "data": {"dataset": "npz", "path": str(data)},
        "batch_size": 8,
        "early_stopping": {"monitor": "loss", "min_delta": 1e9, "patience": 3},
    }
    config = write_config(doc)

    def epochs_recorded(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["epoch"] for line in lines]

    whole = tmp_path / "whole"
    result = cli("train", config, "--output", whole, "--epochs", "10")
    assert result.exit_code == 0, result.stderr
    assert epochs_recorded(whole) == [1, 2, 3, 4]

    run = tmp_path / "run"
    assert cli("train", config, "--output", run, "--epochs", "2").exit_code == 0
    assert epochs_recorded(run) == [1, 2]
    result = cli("train", config, "--output", run, "--resume", "--epochs", "10")
    assert result.exit_code == 0, result.stderr
    assert epochs_recorded(run) == [1, 2, 3, 4]


# ---------------------------------------------------------------- shuffling


def batch_order(seed: int, shuffle: bool = True, epochs: int = 3, n: int = 11, batch: int = 4):
    """The sample indices of each training batch of a ``fit``, epoch after epoch: sample i
    holds the value i / 100, and the model's forward records what it is given right after
    ``on_train_batch_begin`` (not the warm-up pass that compiles the kernels)."""
    doc = model_doc(
        {"type": "Flatten"},
        {"type": "Dense", "units": 2, "activation": "softmax"},
        input_shape=(1, 1, 1),
    )
    model = Sequential.from_spec(parse_spec(doc))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) / 100
    seen: list[list[int]] = []
    forward = model.forward

    class BatchStarts(Callback):
        waiting = False

        def on_train_batch_begin(self, index, logs=None):
            self.waiting = True

    starts = BatchStarts()

    def recording_forward(xb, training=False, **kwargs):
        if starts.waiting:
            seen.append(np.rint(np.asarray(xb).reshape(-1) * 100).astype(int).tolist())
            starts.waiting = False
        return forward(xb, training=training, **kwargs)

    model.forward = recording_forward
    y = np.arange(n) % 2
    model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch,
        seed=seed,
        verbose=0,
        shuffle=shuffle,
        callbacks=[starts],
    )
    return seen


def expected_order(seed: int, epochs: int = 3, n: int = 11, batch: int = 4):
    """fit's documented draw, computed here without nbcnn: one Generator
    ``default_rng([seed, 1])`` per run, one ``permutation(n)`` per epoch, cut into batches."""
    rng = np.random.default_rng([seed, 1])
    batches = []
    for _ in range(epochs):
        order = rng.permutation(n).tolist()
        batches += [order[i : i + batch] for i in range(0, n, batch)]
    return batches


@pytest.mark.parametrize("seed", [0, 7, 2**31 + 5])
def test_batches_follow_the_seeded_permutation(seed):
    """Mutants: no shuffling at all (batches in order), and shuffling that ignores ``seed``
    (a fixed or an unseeded Generator). The determinism tests compared two runs of the same
    code, which share such a bug; here the order is recomputed independently, and the seeds
    give different orders."""
    assert batch_order(seed) == expected_order(seed)
    assert expected_order(seed) != expected_order(seed + 1)  # the seed matters: a real check


def test_shuffle_false_keeps_the_order():
    """Keras's ``shuffle=False``: every epoch in the order given."""
    in_order = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert batch_order(5, shuffle=False) == in_order * 3


# ---------------------------------------------------------------- config checks through the CLI


@pytest.mark.parametrize("command", ["summary", "train"])
def test_train_that_is_not_a_mapping_is_one_line(write_config, command):
    """Mutant: parse_spec's "train must be a mapping" check removed; ``train: 3`` then ended
    in a traceback (found only by the slow fuzz job)."""
    doc = model_doc({"type": "Flatten"}, input_shape=(4, 4, 1))
    doc["train"] = 3
    path = write_config(doc)
    result = cli(command, path)
    assert result.exit_code == 2, result.stdout
    error_line(result.stderr, str(path), "train", "expected a mapping, got int 3")


@pytest.mark.parametrize("shape", [[], [2, 2, 2, 2, 2]])
def test_input_shape_of_a_bad_length_is_one_line(write_config, shape):
    """Mutant: the input_shape length check (1 to 4 axes) removed: ``[]`` then failed with a
    traceback, and five axes were refused only later, by ``Sequential``, not at the config's
    ``input_shape`` key."""
    doc = model_doc({"type": "Flatten"}, {"type": "Dense", "units": 2}, input_shape=shape)
    path = write_config(doc)
    result = cli("summary", path)
    assert result.exit_code == 2, result.stdout
    error_line(result.stderr, f"{path}: input_shape: expected a list of 1 to 4 ints")


# ---------------------------------------------------------------- name clashes


TWIN_MODULE = """
from nbcnn.layers.base import Layer


class Twin(Layer):
    \"\"\"Calculator-only test layer: the identity.\"\"\"

    def output_shape(self, input_shape):
        return tuple(input_shape)
"""


@pytest.fixture(scope="module")
def twins_env(tmp_path_factory):
    """Two distributions registering ``Twin``, a third registering ``Single``."""
    root = tmp_path_factory.mktemp("twins")
    folders = [
        make_distribution(
            root, f"nbcnn-test-{name}", f"nbcnn_test_{name.replace('-', '_')}", TWIN_MODULE, points
        )
        for name, points in [
            ("twin-a", {"Twin": "nbcnn_test_twin_a:Twin"}),
            ("twin-b", {"Twin": "nbcnn_test_twin_b:Twin"}),
            ("single", {"Single": "nbcnn_test_single:Twin"}),
        ]
    ]
    pip_install_target(root / "site", *folders)
    path = os.pathsep.join(filter(None, [str(root / "site"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def test_layers_json_reports_a_name_registered_twice_as_a_clash(twins_env):
    """Mutant: clash detection off by one (``len(same) > 2``): two distributions registering
    one name were both listed ``ok``. Each must be ``clash`` naming the other; a name
    registered once stays ``ok`` with no clashes."""
    proc = cli_subprocess("layers", "--json", env=twins_env)
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    twins = sorted(
        (e["distribution"], e["status"], e["clashes_with"]) for e in entries if e["name"] == "Twin"
    )
    assert twins == [
        ("nbcnn-test-twin-a", "clash", ["nbcnn-test-twin-b"]),
        ("nbcnn-test-twin-b", "clash", ["nbcnn-test-twin-a"]),
    ]
    (single,) = [e for e in entries if e["name"] == "Single"]
    assert (single["status"], single["clashes_with"]) == ("ok", [])
