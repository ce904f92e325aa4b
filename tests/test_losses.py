"""Losses against Keras 3's formulas written out by hand, and their gradients against finite
differences of those formulas (nbcnn/losses.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nbcnn.errors import ConfigError, DataError
from nbcnn.losses import Loss, check_targets, compute, make_loss, output_warning, softmax

EPS = 1e-7  # keras.backend.epsilon()

# ---------------------------------------------------------------- the naive reference


def naive_loss(loss: Loss, out: np.ndarray, y: np.ndarray, logits: bool) -> float:
    """Keras's definition, sample by sample in float64 (keras/src/losses/losses.py and the
    numpy backend's nn.py): the per-sample value, then the mean over the batch."""
    out = out.astype(np.float64)
    n, k = out.shape
    values = []
    for i in range(n):
        o = out[i]
        if y.ndim == 1 and loss.classifies and loss.type != "binary_crossentropy":
            t = np.eye(k)[y[i]]
        else:
            t = np.asarray(y[i], np.float64).reshape(k)
        s = loss.label_smoothing
        if loss.type == "categorical_crossentropy":
            t = t * (1 - s) + s / k
        if loss.type == "binary_crossentropy":
            t = t * (1 - s) + s / 2
        if loss.activation == "softmax":
            p = np.exp(o - o.max()) / np.exp(o - o.max()).sum() if logits else o / o.sum()
            p = np.clip(p, EPS, 1 - EPS) if not logits else p
            values.append(-sum(t[j] * math.log(p[j]) for j in range(k)))
        elif loss.activation == "sigmoid":
            p = 1 / (1 + np.exp(-o)) if logits else np.clip(o, EPS, 1 - EPS)
            terms = [-(t[j] * math.log(p[j]) + (1 - t[j]) * math.log(1 - p[j])) for j in range(k)]
            values.append(sum(terms) / k)
        elif loss.type == "mean_squared_error":
            values.append(sum((o[j] - t[j]) ** 2 for j in range(k)) / k)
        else:
            values.append(sum(abs(o[j] - t[j]) for j in range(k)) / k)
    return sum(values) / n


def finite_differences(loss, out, y, logits, h=1e-4):
    grad = np.zeros(out.shape)
    for index in np.ndindex(out.shape):
        plus, minus = out.astype(np.float64), out.astype(np.float64)
        plus[index] += h
        minus[index] -= h
        grad[index] = (naive_loss(loss, plus, y, logits) - naive_loss(loss, minus, y, logits)) / (
            2 * h
        )
    return grad


def check_against_naive(loss, out, y, logits, rtol=1e-5, atol=2e-6):
    value, grad, probs = compute(loss, out, y, logits=logits)
    assert grad.dtype == np.float32 and grad.shape == out.shape
    assert probs.shape == out.shape
    assert value == pytest.approx(naive_loss(loss, out, y, logits), rel=rtol, abs=atol)
    np.testing.assert_allclose(grad, finite_differences(loss, out, y, logits), rtol=2e-3, atol=2e-5)


# ---------------------------------------------------------------- strategies (by construction)

shapes = st.tuples(st.integers(1, 4), st.integers(2, 5))
smoothing = st.sampled_from([0.0, 0.1, 0.35])


def floats(low, high):
    return st.floats(low, high, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def class_case(draw, logits: bool):
    """Outputs (logits in [-4, 4], or positive scores in [1/16, 1] that Keras normalises) and
    integer labels, one-hot targets or soft targets in [0, 1]."""
    n, k = draw(shapes)
    out = draw(arrays(np.float32, (n, k), elements=floats(-4, 4) if logits else floats(0.0625, 1)))
    labels = draw(arrays(np.int64, n, elements=st.integers(0, k - 1)))
    form = draw(st.sampled_from(["labels", "one-hot", "soft"]))
    if form == "soft":  # probability targets, rows not summing to 1: Keras's formula holds
        return out, draw(arrays(np.float32, (n, k), elements=floats(0, 1)))
    return out, (np.eye(k, dtype=np.float32)[labels] if form == "one-hot" else labels)


@st.composite
def binary_case(draw, logits: bool):
    """Outputs (logits, or probabilities kept off the clip, in [1/32, 31/32]) and 0/1 targets."""
    n, k = draw(st.tuples(st.integers(1, 4), st.integers(1, 4)))
    out = draw(
        arrays(np.float32, (n, k), elements=floats(-4, 4) if logits else floats(0.03125, 0.96875))
    )
    t = draw(arrays(np.float32, (n, k), elements=st.sampled_from([0.0, 1.0])))
    return out, t


@st.composite
def regression_case(draw):
    """Targets and outputs that differ by at least 1/64 everywhere (|d| has a kink at 0)."""
    n, k = draw(shapes)
    t = draw(arrays(np.float32, (n, k), elements=floats(-3, 3)))
    gap = draw(arrays(np.float32, (n, k), elements=floats(0.015625, 2)))
    sign = draw(arrays(np.float32, (n, k), elements=st.sampled_from([-1.0, 1.0])))
    return t + sign * gap, t


# ---------------------------------------------------------------- gradients and values


@settings(max_examples=40, deadline=None)
@given(case=class_case(logits=True), s=smoothing)
def test_categorical_from_logits_matches_keras_and_finite_differences(case, s):
    out, y = case
    check_against_naive(Loss("categorical_crossentropy", True, s), out, y, logits=True)


@settings(max_examples=40, deadline=None)
@given(case=class_case(logits=False), s=smoothing)
def test_categorical_from_probabilities_normalises_like_keras(case, s):
    out, y = case
    check_against_naive(Loss("categorical_crossentropy", False, s), out, y, logits=False)


@settings(max_examples=30, deadline=None)
@given(case=class_case(logits=True), from_logits=st.booleans())
def test_sparse_categorical(case, from_logits):
    out, y = case
    if y.ndim == 2:
        y = y.argmax(axis=1)
    if not from_logits:  # probabilities of at least ~0.005, where h = 1e-4 differences hold
        out = softmax(out / 2)
    check_against_naive(
        Loss("sparse_categorical_crossentropy", from_logits), out, y, logits=from_logits
    )


@settings(max_examples=40, deadline=None)
@given(logits=st.booleans(), data=st.data(), s=smoothing)
def test_binary_crossentropy(logits, data, s):
    out, t = data.draw(binary_case(logits))
    check_against_naive(Loss("binary_crossentropy", logits, s), out, t, logits=logits)


@settings(max_examples=40, deadline=None)
@given(case=regression_case(), kind=st.sampled_from(["mean_squared_error", "mean_absolute_error"]))
def test_regression_losses(case, kind):
    out, t = case
    check_against_naive(Loss(kind), out, t, logits=False)


# ---------------------------------------------------------------- Keras's documented values


def test_keras_docstring_values_by_hand():
    # keras.losses.categorical_crossentropy docstring: [0.0513, 2.303] = -log 0.95, -log 0.1.
    y_pred = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]], np.float32)
    value, _, _ = compute(
        make_loss("categorical_crossentropy"), y_pred, np.array([1, 2]), logits=False
    )
    assert value == pytest.approx((-math.log(0.95) - math.log(0.1)) / 2, rel=1e-6)
    # keras.losses.binary_crossentropy docstring: [0.916, 0.714].
    y_pred = np.array([[0.6, 0.4], [0.4, 0.6]], np.float32)
    t = np.array([[0, 1], [0, 0]], np.float32)
    value, _, _ = compute(make_loss("binary_crossentropy"), y_pred, t, logits=False)
    row1 = -(math.log(0.4) + math.log(0.4)) / 2
    row2 = -(math.log(0.6) + math.log(0.4)) / 2
    assert (row1, row2) == pytest.approx((0.916, 0.714), abs=1e-3)
    assert value == pytest.approx((row1 + row2) / 2, rel=1e-6)


def test_label_smoothing_by_hand():
    # Categorical, K = 4, s = 0.2: the label gets 0.8 + 0.05, the others 0.05; logits 0 give
    # p = 1/4 everywhere, so the loss is log 4 whatever the smoothing, and the gradient is
    # p - t: 0.25 - 0.85 = -0.6 at the label, 0.25 - 0.05 = 0.2 elsewhere.
    loss = make_loss(
        {"type": "categorical_crossentropy", "from_logits": True, "label_smoothing": 0.2}
    )
    value, grad, _ = compute(loss, np.zeros((1, 4), np.float32), np.array([2]), logits=True)
    assert value == pytest.approx(math.log(4), rel=1e-6)
    np.testing.assert_allclose(grad, [[0.2, 0.2, -0.6, 0.2]], atol=1e-6)
    # Binary, s = 0.2: targets 1 -> 0.9, 0 -> 0.1; at logit 0 the gradient is 0.5 - t.
    loss = make_loss({"type": "binary_crossentropy", "from_logits": True, "label_smoothing": 0.2})
    value, grad, _ = compute(
        loss, np.zeros((1, 2), np.float32), np.array([[1.0, 0.0]]), logits=True
    )
    assert value == pytest.approx(math.log(2), rel=1e-6)
    np.testing.assert_allclose(grad, [[(0.5 - 0.9) / 2, (0.5 - 0.1) / 2]], atol=1e-6)


def test_logits_are_stable_where_naive_formulas_overflow():
    z = np.array([[1000.0, 0.0, -1000.0], [-1e30, 1e30, 0.0]], np.float32)
    value, grad, probs = compute(
        make_loss("sparse_categorical_crossentropy"), z, np.array([0, 0]), logits=True
    )
    # Row 0 is right with certainty (loss 0), row 1 wrong by 2e30: the mean is 1e30.
    assert value == pytest.approx(1e30, rel=1e-6)
    np.testing.assert_allclose(grad, [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-7)
    assert np.isfinite(probs).all()
    # Sigmoid: a logit of 1000 with target 0 costs 1000 (not inf); -1000 with target 0 costs 0.
    value, grad, probs = compute(
        make_loss("binary_crossentropy"),
        np.array([[1000.0, -1000.0]], np.float32),
        np.zeros((1, 2), np.float32),
        logits=True,
    )
    assert value == pytest.approx(500.0, rel=1e-6)
    np.testing.assert_allclose(grad, [[0.5, 0.0]], atol=1e-7)
    np.testing.assert_allclose(probs, [[1.0, 0.0]])


def test_probabilities_are_clipped_like_keras():
    # A zero probability at the label costs -log(1e-7), not inf, and gets gradient 0 there.
    probs = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]], np.float32)
    value, grad, _ = compute(
        make_loss("sparse_categorical_crossentropy"), probs, np.array([0, 0]), logits=False
    )
    assert value == pytest.approx((-math.log(0.7) - math.log(EPS)) / 2, rel=1e-6)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad[1], [0, 0, 0], atol=1e-6)


# ---------------------------------------------------------------- specs


def test_make_loss_names_aliases_and_mappings():
    assert make_loss("mse") == Loss("mean_squared_error")
    assert make_loss("MAE").type == "mean_absolute_error"
    loss = make_loss({"type": "binary_crossentropy", "from_logits": True, "label_smoothing": 0.1})
    assert loss.config() == {
        "type": "binary_crossentropy",
        "from_logits": True,
        "label_smoothing": 0.1,
    }
    assert make_loss("sparse_categorical_crossentropy").config() == {
        "type": "sparse_categorical_crossentropy",
        "from_logits": False,
    }
    assert make_loss("mse").config() == {"type": "mean_squared_error"}


@pytest.mark.parametrize(
    ("spec", "where", "match"),
    [
        ("categorical_crossentropie", "train.loss", "did you mean 'categorical_crossentropy'"),
        (
            {"type": "mse", "from_logits": True},
            "train.loss.from_logits",
            "unknown option 'from_logits' for mean_squared_error",
        ),
        (
            {"type": "sparse_categorical_crossentropy", "label_smoothing": 0.1},
            "train.loss.label_smoothing",
            "use categorical_crossentropy, which takes integer labels too",
        ),
        (
            {"type": "binary_crossentropy", "label_smoothing": 1.5},
            "train.loss.label_smoothing",
            r"\[0, 1\]",
        ),
        (
            {"type": "binary_crossentropy", "from_logits": "yes"},
            "train.loss.from_logits",
            "true or false",
        ),
        ({"from_logits": True}, "train.loss", "missing 'type'"),
        (3, "train.loss", "expected a loss name"),
    ],
)
def test_bad_loss_specs(spec, where, match):
    with pytest.raises(ConfigError, match=match) as err:
        make_loss(spec)
    assert err.value.where == where


def test_check_targets_by_loss():
    cce, bce, mse = (
        make_loss("categorical_crossentropy"),
        make_loss("binary_crossentropy"),
        make_loss("mse"),
    )
    assert check_targets(cce, np.array([0, 2, 1]), 3, 3).dtype == np.int64
    assert check_targets(cce, np.array([[0], [2]]), 2, 3).tolist() == [0, 2]  # CIFAR's (N, 1)
    one_hot = check_targets(cce, np.eye(3)[[0, 2]], 2, 3)
    assert one_hot.dtype == np.float32 and one_hot.shape == (2, 3)
    assert check_targets(bce, np.array([0, 1, 1]), 3, 1).shape == (3, 1)
    assert check_targets(mse, np.array([0.5, -2.0]), 2, 1).shape == (2, 1)
    with pytest.raises(DataError, match="for one-hot targets use categorical_crossentropy"):
        check_targets(make_loss("sparse_categorical_crossentropy"), np.eye(3), 3, 3)
    with pytest.raises(DataError, match=r"labels must be in \[0, 3\)"):
        check_targets(cce, np.array([0, 3]), 2, 3)
    with pytest.raises(DataError, match=r"needs targets in \[0, 1\]"):
        check_targets(bce, np.array([[0.0, 2.0]]), 1, 2)
    with pytest.raises(DataError, match=r"needs targets of shape \(2, 3\)"):
        check_targets(mse, np.zeros((2, 2)), 2, 3)
    with pytest.raises(DataError, match="expected 2 targets"):
        check_targets(mse, np.zeros(3), 2, 1)
    with pytest.raises(DataError, match="NaN"):
        check_targets(mse, np.array([np.nan, 1.0]), 2, 1)


def test_output_warnings_name_the_layer():
    cce = make_loss("categorical_crossentropy")
    message = output_warning(cce, "dense_1", None)
    assert message == (
        "the last layer 'dense_1' has no softmax: its outputs are taken as probabilities; "
        "add activation: softmax or set loss from_logits: true"
    )
    assert "binary_crossentropy" in output_warning(cce, "out", "sigmoid")
    assert "its activation is 'relu'" in output_warning(cce, "out", "relu")
    assert output_warning(cce, "out", "softmax") is None
    assert (
        output_warning(
            make_loss({"type": "categorical_crossentropy", "from_logits": True}), "out", None
        )
        is None
    )
    # Keras's own warning: from_logits with an output that went through softmax.
    logits_loss = make_loss({"type": "binary_crossentropy", "from_logits": True})
    assert "not logits" in output_warning(logits_loss, "out", "sigmoid")
    assert "no sigmoid" in output_warning(make_loss("binary_crossentropy"), "out", "linear")
    assert output_warning(make_loss("mse"), "out", None) is None


def test_a_saturated_sigmoid_still_learns_because_it_is_fused():
    # A sigmoid output at logit 30 for a target 0: as a probability it is clipped to 1 - 1e-7
    # and its gradient is 0 (training would be stuck); fused with binary_crossentropy the
    # gradient w.r.t. the logit is sigmoid(30) - 0 = 1, and one SGD step moves the weights.
    from nbcnn import train
    from nbcnn.model import Sequential
    from nbcnn.spec import parse_spec

    doc = {
        "input_shape": [1],
        "layers": [{"type": "Dense", "units": 1, "activation": "sigmoid"}],
        "train": {"loss": "binary_crossentropy", "optimizer": {"type": "sgd", "learning_rate": 1}},
    }
    model = Sequential.from_spec(parse_spec(doc))
    model.initialize(0)
    model.set_weights([np.full((1, 1), 30.0, np.float32), np.zeros(1, np.float32)])
    train.fit(model, np.ones((1, 1), np.float32), np.zeros(1, np.float32), epochs=1, verbose=0)
    assert model.get_weights()[0][0, 0] == pytest.approx(29.0, abs=1e-4)
