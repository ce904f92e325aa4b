"""Metrics and the per-class report against values worked out by hand (nbcnn/metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbcnn.errors import ConfigError
from nbcnn.losses import make_loss
from nbcnn.metrics import Metric, Tally, classification_report, make_metrics

CCE = make_loss("categorical_crossentropy")
BCE = make_loss("binary_crossentropy")
MSE = make_loss("mse")

PROBS = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.4, 0.4, 0.2]], np.float32)
LABELS = np.array([1, 1, 2, 1])


def value(metric, loss, probs, y):
    total, count = metric.batch_sum(loss, probs, y)
    return total / count


def test_accuracy_follows_the_loss():
    # Sparse: argmax [1, 0, 2, 0] against [1, 1, 2, 1]: 2 of 4.
    assert value(Metric("accuracy"), CCE, PROBS, LABELS) == 0.5
    # Categorical: the same labels as one-hot targets.
    assert value(Metric("accuracy"), CCE, PROBS, np.eye(3, dtype=np.float32)[LABELS]) == 0.5
    # Binary: every output against 0.5: [0.7 > .5, 0.2 > .5] vs [1, 0] and [0.6, 0.4] vs [1, 1]
    # gives 3 of 4 right.
    probs = np.array([[0.7, 0.2], [0.6, 0.4]], np.float32)
    t = np.array([[1, 0], [1, 1]], np.float32)
    assert value(Metric("accuracy"), BCE, probs, t) == 0.75


def test_top_k_accuracy_counts_ties_as_in():
    # k = 2: row 0 label 1 is first; row 1 label 1 is second (0.3); row 2 label 2 first;
    # row 3 label 1 ties for first: all in. With k = 1 row 1 is out, and row 3's tie (0.4,
    # 0.4) is in, as TensorFlow's in_top_k counts ties.
    assert value(Metric("top_k_accuracy", 2), CCE, PROBS, LABELS) == 1.0
    assert value(Metric("top_k_accuracy", 1), CCE, PROBS, LABELS) == 0.75
    assert Metric("top_k_accuracy", 3).name == "top_3_accuracy"


def test_regression_metrics():
    out = np.array([[1.0, 2.0], [0.0, -1.0]], np.float32)
    t = np.array([[1.5, 2.0], [1.0, -1.0]], np.float32)
    assert value(Metric("mae"), MSE, out, t) == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert value(Metric("mse"), MSE, out, t) == pytest.approx((0.25 + 0 + 1 + 0) / 4)


def test_tally_is_exact_over_uneven_batches():
    tally = Tally(CCE, [Metric("accuracy")])
    tally.add(1.0, PROBS[:3], LABELS[:3])  # 2 of 3 right
    tally.add(4.0, PROBS[3:], LABELS[3:])  # 0 of 1 right
    assert tally.values() == {"loss": pytest.approx((3 * 1.0 + 4.0) / 4), "accuracy": 0.5}
    assert math.isnan(Tally(CCE, [Metric("accuracy")]).values()["accuracy"])  # no samples


def test_report_single_label():
    report = classification_report(CCE, PROBS, LABELS)
    # True class by predicted class: 1->1, 1->0, 2->2, 1->0.
    assert report["confusion_matrix"] == [[0, 0, 0], [2, 1, 0], [0, 0, 1]]
    # Precision: class 0 predicted twice, never right; class 1 once, right; class 2 once, right.
    assert report["precision"] == [0.0, 1.0, 1.0]
    # Recall: class 0 absent (None), class 1 one of three, class 2 one of one.
    assert report["recall"] == [None, pytest.approx(1 / 3), 1.0]
    assert report["per_class_accuracy"] == report["recall"]


def test_report_binary_one_unit_and_multi_label():
    probs = np.array([[0.9], [0.2], [0.7], [0.1]], np.float32)
    t = np.array([[1], [1], [0], [0]], np.float32)
    report = classification_report(BCE, probs, t)
    assert report["confusion_matrix"] == [[1, 1], [1, 1]]
    assert report["precision"] == [0.5, 0.5] and report["recall"] == [0.5, 0.5]
    probs = np.array([[0.9, 0.1], [0.8, 0.6], [0.3, 0.7]], np.float32)
    t = np.array([[1, 0], [0, 1], [0, 1]], np.float32)
    report = classification_report(BCE, probs, t)
    # Label 0: predicted [1, 1, 0] vs [1, 0, 0]: tn 1, fp 1, fn 0, tp 1.
    # Label 1: predicted [0, 1, 1] vs [0, 1, 1]: tn 1, fp 0, fn 0, tp 2.
    assert report["confusion_matrix"] == [[[1, 1], [0, 1]], [[1, 0], [0, 2]]]
    assert report["precision"] == [0.5, 1.0] and report["recall"] == [1.0, 1.0]
    assert "per_class_accuracy" not in report
    assert classification_report(MSE, probs, t) == {}


def test_make_metrics_defaults_and_specs():
    assert make_metrics(None, CCE) == [Metric("accuracy")]
    assert make_metrics(None, MSE) == []
    metrics = make_metrics(["acc", {"type": "top_k_accuracy", "k": 3}, "mean_absolute_error"], CCE)
    assert [m.name for m in metrics] == ["accuracy", "top_3_accuracy", "mae"]
    assert [m.config() for m in metrics] == [
        "accuracy",
        {"type": "top_k_accuracy", "k": 3},
        "mae",
    ]


@pytest.mark.parametrize(
    ("specs", "loss", "where", "match"),
    [
        (["accuracy"], MSE, "train.metrics[0]", "needs a classification loss"),
        ([{"type": "top_k_accuracy"}], BCE, "train.metrics[0]", "does not apply"),
        (["accuracy", "acc"], CCE, "train.metrics[1]", "listed twice"),
        (["acuracy"], CCE, "train.metrics[0]", "did you mean 'accuracy'"),
        ([{"type": "top_k_accuracy", "k": 0}], CCE, "train.metrics[0].k", ">= 1"),
        (
            [{"type": "accuracy", "k": 2}],
            CCE,
            "train.metrics[0].k",
            "unknown option 'k' for accuracy",
        ),
        ("accuracy", CCE, "train.metrics", "expected a list"),
    ],
)
def test_bad_metrics(specs, loss, where, match):
    with pytest.raises(ConfigError, match=match) as err:
        make_metrics(specs, loss)
    assert err.value.where == where
