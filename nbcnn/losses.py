"""Classification losses and metrics on NumPy arrays (no numba: these are O(N * K) and cheap).

Two paths, as in Keras:

- ``softmax_cross_entropy``: the fused path used when the model's last activation is softmax.
  The softmax Jacobian and the log cancel, so the gradient with respect to the logits is simply
  ``(softmax - onehot) / N``; computing it from the probabilities instead loses precision and
  overflows for large logits.
- ``crossentropy_from_probs``: for a model whose output already is probabilities (no fused
  softmax); the probabilities are clipped to ``[1e-7, 1 - 1e-7]`` as Keras does
  (``keras.backend.epsilon()``), so a zero probability gives a large finite loss, not ``inf``.
"""

from __future__ import annotations

import numpy as np

# Keras's backend epsilon, used to clip probabilities before the log.
PROB_EPSILON = 1e-7


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


def _check_labels(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Validate ``scores`` (N, K) against ``labels`` (N,) integers in [0, K); return labels."""
    if scores.ndim != 2:
        raise ValueError(f"expected scores of shape (N, K), got shape {scores.shape}")
    labels = np.asarray(labels)
    if labels.shape != (scores.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"expected integer labels of shape ({scores.shape[0]},), "
            f"got {labels.dtype} of shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(
            f"labels must lie in [0, {scores.shape[1]}), got [{labels.min()}, {labels.max()}]"
        )
    return labels


def softmax_cross_entropy(
    logits: np.ndarray, labels: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean softmax cross-entropy of ``logits`` against integer ``labels``, fused.

    logits : (N, K) float32 pre-softmax scores; labels : (N,) int in [0, K).
    Returns ``(loss, dlogits, probs)``: loss is the mean over N of
    ``logsumexp(logits_i) - logits_i[labels_i]``; dlogits (N, K) float32 is
    ``(softmax(logits) - onehot(labels)) / N``; probs (N, K) float32 is the softmax.
    """
    logits = np.asarray(logits, dtype=np.float32)
    labels = _check_labels(logits, labels)
    n = logits.shape[0]
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1)
    # log-softmax at the label from the shifted logits: never log(0), never exp overflow.
    # The mean is taken in float64 so the reported loss does not depend on the batch order.
    nll = np.log(sum_exp, dtype=np.float64) - shifted[rows, labels]
    loss = float(nll.mean()) if n else 0.0
    probs = exp / sum_exp[:, None]
    dlogits = probs.copy()
    dlogits[rows, labels] -= 1.0
    dlogits /= np.float32(max(n, 1))
    return loss, dlogits, probs


def crossentropy_from_probs(probs: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of probabilities ``probs`` against integer ``labels``.

    probs : (N, K) float32 probabilities (e.g. the output of a softmax layer that is not fused
    with the loss); labels : (N,) int in [0, K). Returns ``(loss, dprobs)`` with dprobs (N, K)
    float32. Probabilities are clipped to ``[1e-7, 1 - 1e-7]`` before the log like Keras; where
    the clip is active the gradient is 0, as for Keras's clip.
    """
    probs = np.asarray(probs, dtype=np.float32)
    labels = _check_labels(probs, labels)
    n = probs.shape[0]
    rows = np.arange(n)
    p = probs[rows, labels]
    clipped = np.clip(p, PROB_EPSILON, 1.0 - PROB_EPSILON)
    loss = float(-np.log(clipped, dtype=np.float64).mean()) if n else 0.0
    inside = (p >= PROB_EPSILON) & (p <= 1.0 - PROB_EPSILON)
    dprobs = np.zeros_like(probs)
    dprobs[rows, labels] = np.where(inside, -1.0 / (max(n, 1) * clipped), 0.0)
    return loss, dprobs


def accuracy(probs_or_logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose largest score is at the label.

    probs_or_logits : (N, K) (the argmax is the same for logits and their softmax);
    labels : (N,) int. Returns a float in [0, 1], or NaN when N == 0.
    """
    scores = np.asarray(probs_or_logits)
    labels = _check_labels(scores, labels)
    if labels.size == 0:
        return float("nan")
    return float(np.mean(scores.argmax(axis=1) == labels))
