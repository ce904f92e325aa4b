"""Metrics with Keras 3's names and rules, and the per-class report of an evaluation.

``train.metrics`` lists what each epoch records besides the loss (Keras's ``compile(metrics=...)``;
the history and metrics.jsonl keys are the metric names, validation ones prefixed ``val_``):

- ``accuracy``: Keras resolves it to one of three metrics (``keras/src/trainers/compile_utils.py``,
  ``get_metric``); nbcnn picks by the loss, as tf.keras 2 did: ``sparse_categorical_accuracy``
  (``argmax(p) == y``) for integer labels, ``categorical_accuracy`` (``argmax(p) ==
  argmax(t)``) for one-hot targets, ``binary_accuracy`` (``(p > 0.5) == t``, the mean over every
  output) for ``binary_crossentropy``. Keras 3 chooses by shapes alone and gives multi-label
  (N, K) targets the categorical one; nbcnn gives them the binary one the loss implies.
- ``top_k_accuracy`` (``{type: top_k_accuracy, k: 5}``, default k 5): Keras's
  ``sparse_top_k_categorical_accuracy`` (``keras/src/metrics/accuracy_metrics.py``): the label is
  among the k highest scores; ties at the k-th score count as in (TensorFlow's ``in_top_k``). Its
  key is ``top_<k>_accuracy``.
- ``mae`` / ``mse`` (``mean_absolute_error`` / ``mean_squared_error``): the regression errors.

Metrics see probabilities: with ``from_logits`` the loss's softmax or sigmoid is applied to the
outputs first (Keras's ``binary_accuracy`` would compare raw logits with 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nbcnn.errors import ConfigError
from nbcnn.layers.args import check_options, is_int, show, split_type
from nbcnn.losses import Loss

#: Keras's threshold for binary accuracy, precision and recall (``threshold=0.5``).
THRESHOLD = 0.5
#: Canonical metric type -> its options' defaults.
METRIC_TYPES: dict[str, dict[str, Any]] = {
    "accuracy": {},
    "top_k_accuracy": {"k": 5},
    "mae": {},
    "mse": {},
}
ALIASES = {"acc": "accuracy", "mean_absolute_error": "mae", "mean_squared_error": "mse"}
METRIC_NAMES = (*METRIC_TYPES, *ALIASES)


@dataclass(frozen=True)
class Metric:
    """One resolved metric: its ``type`` and, for top_k_accuracy, ``k``."""

    type: str
    k: int = 5

    @property
    def name(self) -> str:
        """The history / metrics.jsonl key: ``accuracy``, ``top_5_accuracy``, ``mae``..."""
        return f"top_{self.k}_accuracy" if self.type == "top_k_accuracy" else self.type

    def config(self) -> str | dict[str, Any]:
        """The resolved config entry: the name, or a mapping for a metric with options."""
        if self.type == "top_k_accuracy":
            return {"type": self.type, "k": self.k}
        return self.type

    def batch_sum(self, loss: Loss, probs: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """``(sum, count)`` of this metric over one batch, so epochs average exactly.

        probs : (N, K) float32 probabilities (regression: the outputs); y : targets as
        :func:`nbcnn.losses.check_targets` returns them: int64 (N,) or float32 (N, K).
        """
        if self.type in ("mae", "mse"):
            diff = probs - y.reshape(probs.shape)
            values = np.abs(diff) if self.type == "mae" else np.square(diff)
            return float(values.sum(dtype=np.float64)), int(values.size)
        if loss.type == "binary_crossentropy":  # accuracy only: top-k is refused for it
            hits = (probs > THRESHOLD) == (y.reshape(probs.shape) > THRESHOLD)
            return float(hits.sum()), int(hits.size)
        labels = class_indices(y)
        if self.type == "accuracy":
            return float((probs.argmax(axis=1) == labels).sum()), len(labels)
        true_scores = probs[np.arange(len(labels)), labels]
        above = (probs > true_scores[:, None]).sum(axis=1)
        return float((above < self.k).sum()), len(labels)


def class_indices(y: np.ndarray) -> np.ndarray:
    """Integer labels (N,) from labels (N,) or one-hot / probability targets (N, K)."""
    return y if y.ndim == 1 else y.argmax(axis=1)


def make_metrics(specs: object, loss: Loss, *, where: str = "train.metrics") -> list[Metric]:
    """Resolve ``train.metrics`` for ``loss``: None gives ``[accuracy]`` for a cross-entropy
    and ``[]`` for regression; otherwise a list of names or ``{type: top_k_accuracy, k: 3}``.
    A metric that does not fit the loss (accuracy of a regression, top-k of a binary loss),
    an unknown name or a repeated one is a ConfigError at ``where[i]``."""
    if specs is None:
        return [Metric("accuracy")] if loss.classifies else []
    if not isinstance(specs, (list, tuple)):
        raise ConfigError(
            f"expected a list such as [accuracy] or [accuracy, {{type: top_k_accuracy, k: 5}}], "
            f"got {show(specs)}",
            where=where,
        )
    metrics: list[Metric] = []
    for i, spec in enumerate(specs):
        here = f"{where}[{i}]"
        metric = _make_metric(spec, here)
        if metric.type in ("accuracy", "top_k_accuracy") and not loss.classifies:
            raise ConfigError(
                f"{metric.type} needs a classification loss, the loss is {loss.type}: "
                "use mae or mse for regression",
                where=here,
            )
        if metric.type == "top_k_accuracy" and loss.type == "binary_crossentropy":
            raise ConfigError(
                "top_k_accuracy ranks one true class among K: it does not apply to "
                "binary_crossentropy's independent labels",
                where=here,
            )
        if metric.name in [m.name for m in metrics]:
            raise ConfigError(f"{metric.name} is listed twice", where=here)
        metrics.append(metric)
    return metrics


def _make_metric(spec: object, where: str) -> Metric:
    name, options = split_type(spec, where, list(METRIC_NAMES), "metric")
    name = ALIASES.get(name, name)
    check_options(options, METRIC_TYPES[name], name, where)
    k = options.get("k", METRIC_TYPES["top_k_accuracy"]["k"])
    if not is_int(k) or k < 1:
        raise ConfigError(f"expected an integer >= 1, got {show(k)}", where=f"{where}.k")
    return Metric(name, int(k))


class Tally:
    """Running sums of the loss and the metrics over batches: an epoch's values are exact
    means over its samples, whatever the batch sizes."""

    def __init__(self, loss: Loss, metrics: list[Metric]):
        self.loss, self.metrics = loss, metrics
        self.loss_sum, self.samples = 0.0, 0
        self.sums = {m.name: [0.0, 0] for m in metrics}

    def add(self, loss_value: float, probs: np.ndarray, y: np.ndarray) -> None:
        """One batch: its mean loss, probabilities (B, K) and targets."""
        self.loss_sum += loss_value * len(probs)
        self.samples += len(probs)
        for metric in self.metrics:
            total, count = metric.batch_sum(self.loss, probs, y)
            self.sums[metric.name][0] += total
            self.sums[metric.name][1] += count

    def values(self) -> dict[str, float]:
        """``{"loss": ..., <metric name>: ...}`` so far (NaN before any sample)."""
        nan = float("nan")
        values = {"loss": self.loss_sum / self.samples if self.samples else nan}
        values.update({k: (s / c if c else nan) for k, (s, c) in self.sums.items()})
        return values


def classification_report(loss: Loss, probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Confusion matrix and per-class precision and recall of an evaluation.

    probs : (N, K) float32 probabilities; y : targets as ``check_targets`` returns them.
    Single-label losses (and binary_crossentropy with one unit, as classes 0 and 1):
    ``confusion_matrix`` (C, C) counts of true class (row) by predicted class (column, the
    argmax, or p > 0.5); ``precision[c] = C[c, c] / column sum``, ``recall[c] = C[c, c] / row
    sum`` (None where nothing was predicted / present); ``per_class_accuracy`` is the recall.
    binary_crossentropy with K > 1 (multi-label): one 2x2 ``[[tn, fp], [fn, tp]]`` per label at
    threshold 0.5 (Keras's Precision and Recall threshold) and that label's precision and
    recall. Regression: ``{}``.
    """
    if not loss.classifies:
        return {}
    if loss.type == "binary_crossentropy" and probs.shape[1] > 1:
        predicted, actual = probs > THRESHOLD, y > THRESHOLD
        tp = (predicted & actual).sum(axis=0)
        fp = (predicted & ~actual).sum(axis=0)
        fn = (~predicted & actual).sum(axis=0)
        tn = (~predicted & ~actual).sum(axis=0)
        matrices = [[[int(a), int(b)], [int(c), int(d)]] for a, b, c, d in zip(tn, fp, fn, tp)]
        return {
            "confusion_matrix": matrices,
            "precision": _ratios(tp, tp + fp),
            "recall": _ratios(tp, tp + fn),
        }
    if loss.type == "binary_crossentropy":
        predicted = (probs[:, 0] > THRESHOLD).astype(np.int64)
        actual = (y[:, 0] > THRESHOLD).astype(np.int64)
        classes = 2
    else:
        predicted, actual, classes = probs.argmax(axis=1), class_indices(y), probs.shape[1]
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (actual, predicted), 1)
    hits = np.diag(confusion)
    recall = _ratios(hits, confusion.sum(axis=1))
    return {
        "confusion_matrix": confusion.tolist(),
        "precision": _ratios(hits, confusion.sum(axis=0)),
        "recall": recall,
        "per_class_accuracy": recall,
    }


def _ratios(numerator: np.ndarray, denominator: np.ndarray) -> list[float | None]:
    return [float(a / b) if b else None for a, b in zip(numerator, denominator)]
