"""Losses on NumPy arrays, with Keras 3's names, arguments, defaults and formulas.

Keras 3 ``keras/src/losses/losses.py`` defines the losses nbcnn offers; its backends
(``keras/src/backend/numpy/nn.py``) compute them. Each takes the model's output ``out``
(N, K) and targets, and is the mean over the batch of a per-sample value (Keras's default
reduction ``"sum_over_batch_size"``):

- ``categorical_crossentropy``: ``-sum_k t_k log p_k`` with ``label_smoothing`` s turning a
  one-hot ``t`` into ``t (1 - s) + s / K``.
- ``sparse_categorical_crossentropy``: the same with integer labels (Keras's numpy backend
  one-hot encodes them and calls the categorical loss); Keras gives it no label smoothing.
- ``binary_crossentropy``: ``mean_k -(t_k log p_k + (1 - t_k) log(1 - p_k))``, each output an
  independent probability (multi-label), smoothing ``t (1 - s) + s / 2``.
- ``mean_squared_error`` (``mse``), ``mean_absolute_error`` (``mae``): ``mean_k (out - t)^2``,
  ``mean_k |out - t|``.

Where ``p`` comes from. With ``from_logits: false`` (the default) the outputs are
probabilities: Keras divides categorical outputs by their sum, then clips to ``[1e-7, 1 - 1e-7]``
(``keras.backend.epsilon()``) before the log, so a zero gives a large finite loss; where the clip
acts the gradient is 0, as the gradient of a clip is. With logits (``from_logits: true``, or when
the last layer's softmax or sigmoid is *fused*: TensorFlow's Keras backend takes the logits that a
softmax or sigmoid output carries, ``output._keras_logits``, and nbcnn's training does the same)
the loss is computed from the logits in a stable form: ``logsumexp(z) - z`` for softmax, and
``max(z, 0) - z t + log(1 + exp(-|z|))`` for sigmoid (TensorFlow's
``sigmoid_cross_entropy_with_logits``), whose gradients are simply ``(softmax(z) sum(t) - t) / N``
and ``(sigmoid(z) - t) / (N K)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nbcnn.errors import ConfigError, DataError
from nbcnn.layers.activations import sigmoid
from nbcnn.layers.args import check_options, show, split_type

# Keras's backend epsilon, used to clip probabilities before the log.
PROB_EPSILON = 1e-7

#: Canonical loss name -> (the activation whose outputs it expects, its options' defaults).
#: Options are Keras 3's constructor arguments of the loss class (``reduction``, ``name``,
#: ``axis`` and ``ignore_class`` are not offered).
LOSS_TYPES: dict[str, tuple[str | None, dict[str, object]]] = {
    "categorical_crossentropy": ("softmax", {"from_logits": False, "label_smoothing": 0.0}),
    "sparse_categorical_crossentropy": ("softmax", {"from_logits": False}),
    "binary_crossentropy": ("sigmoid", {"from_logits": False, "label_smoothing": 0.0}),
    "mean_squared_error": (None, {}),
    "mean_absolute_error": (None, {}),
}
#: Keras's short names (``keras.losses.get("mse")``).
ALIASES = {"mse": "mean_squared_error", "mae": "mean_absolute_error"}
#: Every name ``loss:`` accepts.
LOSS_NAMES = (*LOSS_TYPES, *ALIASES)


@dataclass(frozen=True)
class Loss:
    """A resolved loss: canonical ``type`` plus its options (defaults filled in)."""

    type: str = "categorical_crossentropy"
    from_logits: bool = False
    label_smoothing: float = 0.0

    @property
    def activation(self) -> str | None:
        """The output activation this loss expects ("softmax", "sigmoid"; None: any)."""
        return LOSS_TYPES[self.type][0]

    @property
    def classifies(self) -> bool:
        """True for the cross-entropies (class targets), False for regression."""
        return self.activation is not None

    def config(self) -> dict[str, object]:
        """``{"type": ..., **options}`` with every option of this type: the resolved config."""
        options = LOSS_TYPES[self.type][1]
        return {"type": self.type, **{k: getattr(self, k) for k in options}}


def make_loss(spec: object, *, where: str = "train.loss") -> Loss:
    """A :class:`Loss` from ``"mse"``, ``"categorical_crossentropy"`` or a mapping
    ``{"type": "binary_crossentropy", "from_logits": True, "label_smoothing": 0.1}``
    (an existing Loss is returned as it is). A bad name, option or value is a ConfigError
    at ``where`` (``train.loss.label_smoothing``), with a did-you-mean suggestion."""
    if isinstance(spec, Loss):
        return spec
    name, given = split_type(spec, where, list(LOSS_NAMES), "loss")
    name = ALIASES.get(name, name)
    allowed = LOSS_TYPES[name][1]
    if name == "sparse_categorical_crossentropy" and "label_smoothing" in given:
        raise ConfigError(
            "sparse_categorical_crossentropy has no label_smoothing (neither has Keras's "
            "SparseCategoricalCrossentropy): use categorical_crossentropy, which takes integer "
            "labels too",
            where=f"{where}.label_smoothing",
        )
    check_options(given, allowed, name, where)
    options = {key: _check_option(key, value, f"{where}.{key}") for key, value in given.items()}
    return Loss(name, **options)


def _check_option(key: str, value: object, where: str) -> object:
    if key == "from_logits":
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {show(value)}", where=where)
        return value
    # label_smoothing: "Float in [0, 1]" (Keras's docstring).
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if not ok or not (0 <= value <= 1):
        raise ConfigError(f"expected a number in [0, 1], got {show(value)}", where=where)
    return float(value)


# ---------------------------------------------------------------------------- targets


def check_targets(loss: Loss, y: object, n: int, outputs: int) -> np.ndarray:
    """Validate targets ``y`` for ``loss`` on a model with ``outputs`` units; returns them as
    training stores them.

    Integer class labels ``(N,)`` (or ``(N, 1)``, Keras's CIFAR layout) in [0, outputs) come
    back as int64 (N,) for the categorical losses; one-hot or probability targets ``(N, K)``
    (``categorical_crossentropy``), 0/1 targets (``binary_crossentropy``: ``(N, K)``, or
    ``(N,)`` for one unit) and regression targets come back as float32 (N, K). A mismatch is a
    DataError that says what the loss needs.
    """
    y = np.asarray(y)
    if y.ndim == 0 or len(y) != n:
        raise DataError(f"expected {n} targets (one per sample), got an array of shape {y.shape}")
    if not (
        np.issubdtype(y.dtype, np.integer)
        or np.issubdtype(y.dtype, np.floating)
        or y.dtype == np.bool_
    ):
        raise DataError(f"targets must be numbers, got dtype {y.dtype}")
    sparse_ok = loss.type in ("categorical_crossentropy", "sparse_categorical_crossentropy")
    if y.ndim == 2 and y.shape[1] == 1 and (outputs != 1 or sparse_ok):
        y = y[:, 0]
    if sparse_ok and y.ndim == 1:
        return _class_labels(y, outputs, loss.type)
    if loss.type == "sparse_categorical_crossentropy":
        raise DataError(
            f"sparse_categorical_crossentropy needs integer labels of shape ({n},), got "
            f"{y.dtype} {y.shape}; for one-hot targets use categorical_crossentropy"
        )
    if y.ndim == 1 and outputs == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != outputs:
        raise DataError(
            f"{loss.type} on a model with {outputs} output(s) needs targets of shape "
            f"({n}, {outputs})"
            + (f" or ({n},)" if outputs == 1 or sparse_ok else "")
            + f", got {y.dtype} {y.shape}"
        )
    t = y.astype(np.float32)
    if not np.isfinite(t).all():
        raise DataError("targets hold NaN, inf or values beyond float32")
    if loss.classifies and t.size and (t.min() < 0 or t.max() > 1):
        raise DataError(
            f"{loss.type} needs targets in [0, 1] (one-hot, multi-hot or probabilities), "
            f"found {t.min():g}..{t.max():g}"
        )
    return t


def _class_labels(y: np.ndarray, classes: int, kind: str) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        one_hot = (
            f" or one-hot targets (N, {classes})" if kind == "categorical_crossentropy" else ""
        )
        raise DataError(
            f"{kind} needs integer class labels of shape (N,){one_hot}, got {y.dtype} {y.shape}"
        )
    if y.size and (y.min() < 0 or int(y.max()) >= classes):
        raise DataError(
            f"labels must be in [0, {classes}) for an output of {classes} classes, found "
            f"{int(y.min())}..{int(y.max())}"
        )
    return y.astype(np.int64)


def dense_targets(loss: Loss, y: np.ndarray, outputs: int) -> np.ndarray:
    """Targets as float32 (N, K) with Keras's label smoothing applied: integer labels
    one-hot encoded; categorical smoothing ``t (1 - s) + s / K``, binary ``t (1 - s) + s / 2``
    (``keras/src/losses/losses.py``)."""
    if y.ndim == 1:
        t = np.zeros((len(y), outputs), np.float32)
        t[np.arange(len(y)), y] = 1.0
    else:
        t = y.astype(np.float32, copy=True)
    s = loss.label_smoothing
    if s:
        share = s / outputs if loss.type == "categorical_crossentropy" else s / 2
        t *= 1.0 - s
        t += share
    return t


# ---------------------------------------------------------------------------- values


def softmax(x: np.ndarray) -> np.ndarray:
    """Stable softmax over the last axis.

    x : (..., K) float; returns (..., K) float32 rows summing to 1. The row maximum is
    subtracted first so ``exp`` never overflows (the result is mathematically unchanged).
    """
    x = np.asarray(x, dtype=np.float32)
    e = x - x.max(axis=-1, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e


def compute(
    loss: Loss, out: np.ndarray, y: np.ndarray, *, logits: bool
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean loss over the batch, its gradient and the probabilities for the metrics.

    out : (N, K) float32, logits when ``logits`` (``from_logits``, or a fused last softmax or
    sigmoid), else the last layer's outputs. y : targets as :func:`check_targets` returns
    them. Returns ``(loss, dout, probs)``: loss a float (mean taken in float64, so it does
    not depend on the batch order), dout (N, K) float32 the gradient of that mean w.r.t.
    ``out``, probs (N, K) float32: what the metrics compare (softmax or sigmoid of logits,
    else ``out`` itself).
    """
    out = np.asarray(out, dtype=np.float32)
    if out.ndim != 2:
        raise ValueError(f"expected outputs of shape (N, K), got shape {out.shape}")
    n, k = out.shape
    t = dense_targets(loss, y, k) if loss.classifies else y.reshape(n, k).astype(np.float32)
    if loss.activation == "softmax":
        value, grad, probs = (_softmax_ce_logits if logits else _ce_probs)(out, t)
    elif loss.activation == "sigmoid":
        value, grad, probs = (_sigmoid_bce_logits if logits else _bce_probs)(out, t)
    elif loss.type == "mean_squared_error":
        diff = out - t
        value, grad, probs = np.square(diff, dtype=np.float64).mean(axis=1), 2 * diff, out
    else:  # mean_absolute_error; the gradient of |d| at 0 is 0, as np.sign says
        diff = out - t
        value, grad, probs = np.abs(diff, dtype=np.float64).mean(axis=1), np.sign(diff), out
    if loss.activation != "softmax":
        grad /= np.float32(max(k, 1))  # the mean over the K outputs of each sample
    grad /= np.float32(max(n, 1))
    return (float(value.mean()) if n else 0.0), grad.astype(np.float32, copy=False), probs


def _softmax_ce_logits(z, t):
    """-sum_k t_k log softmax(z)_k per row, and its gradient ``softmax(z) sum(t) - t``."""
    shifted = z - z.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    log_probs = shifted - np.log(sum_exp)  # log-softmax: never log(0), never exp overflow
    value = -(t * log_probs).sum(axis=1, dtype=np.float64)
    probs = exp / sum_exp
    return value, probs * t.sum(axis=1, keepdims=True) - t, probs


def _ce_probs(p, t):
    """Keras's categorical cross-entropy of probabilities: rows divided by their sum, clipped
    to [eps, 1 - eps]. With q = p / S: dL/dq_k = -t_k / q_k (0 where clipped) and
    dL/dp_j = (dL/dq_j - sum_k dL/dq_k q_k) / S."""
    total = p.sum(axis=1, keepdims=True)
    q = p / total
    clipped = np.clip(q, PROB_EPSILON, 1.0 - PROB_EPSILON)
    value = -(t * np.log(clipped, dtype=np.float64)).sum(axis=1)
    inside = (q >= PROB_EPSILON) & (q <= 1.0 - PROB_EPSILON)
    dq = np.where(inside, -t / clipped, 0.0).astype(np.float32)
    grad = (dq - (dq * q).sum(axis=1, keepdims=True)) / total
    return value, grad, p


def _sigmoid_bce_logits(z, t):
    """TensorFlow's ``sigmoid_cross_entropy_with_logits``: max(z, 0) - z t + log1p(e^-|z|),
    the mean over the K outputs; the gradient of each term is sigmoid(z) - t."""
    terms = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    probs = sigmoid(z)
    return terms.mean(axis=1, dtype=np.float64), probs - t, probs


def _bce_probs(p, t):
    """Keras's binary cross-entropy of probabilities clipped to [eps, 1 - eps]; the
    gradient of each term is (1 - t) / (1 - p) - t / p, 0 where clipped."""
    c = np.clip(p, PROB_EPSILON, 1.0 - PROB_EPSILON)
    terms = -(t * np.log(c, dtype=np.float64) + (1 - t) * np.log(1 - c, dtype=np.float64))
    inside = (p >= PROB_EPSILON) & (p <= 1.0 - PROB_EPSILON)
    grad = np.where(inside, (1 - t) / (1 - c) - t / c, 0.0).astype(np.float32)
    return terms.mean(axis=1), grad, p


# ---------------------------------------------------------------------------- warnings


def output_warning(loss: Loss, layer_name: str, activation: str | None) -> str | None:
    """What to tell a user whose last layer does not fit ``loss``, or None.

    Keras (TensorFlow backend, ``keras/src/backend/tensorflow/nn.py``) warns only one way:
    "received `from_logits=True`, but the `output` argument was produced by a Softmax
    activation and thus does not represent logits. Was this intended?". The other way, a
    cross-entropy taking unbounded outputs as probabilities, trains silently to chance there;
    nbcnn warns about both.
    """
    if loss.activation is None:
        return None
    name = loss.type
    if loss.from_logits:
        if activation in ("softmax", "sigmoid"):
            return (
                f"the last layer {layer_name!r} applies {activation}, but {name} has "
                f"from_logits: true: its outputs are probabilities, not logits (the loss is "
                f"computed from the logits before the {activation}, as Keras's TensorFlow "
                f"backend does); remove from_logits or the {activation}"
            )
        return None
    if activation == loss.activation:
        return None
    if activation in ("softmax", "sigmoid"):
        use = (
            "binary_crossentropy for independent labels"
            if activation == "sigmoid"
            else "categorical_crossentropy"
        )
        return (
            f"the last layer {layer_name!r} ends with {activation}, but {name} expects "
            f"{loss.activation} outputs: use activation: {loss.activation}, or {use}"
        )
    has = f" (its activation is {activation!r})" if activation not in (None, "linear") else ""
    return (
        f"the last layer {layer_name!r} has no {loss.activation}{has}: its outputs are taken as "
        f"probabilities; add activation: {loss.activation} or set loss from_logits: true"
    )
