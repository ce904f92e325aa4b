"""Element-wise activations (NumPy): the names Keras accepts in ``activation=``.

Each entry maps a name to ``forward(z) -> a`` and ``backward(dy, z, a) -> dz``. Softmax's
backward is the full Jacobian-vector product; training fuses softmax with cross-entropy instead
(see ``nbcnn.losses``), which is both faster and numerically stable.
"""

from __future__ import annotations

import numpy as np

from nbcnn.layers.args import ACTIVATIONS as NAMES  # noqa: F401  (re-exported)


def sigmoid(z):
    """``1 / (1 + exp(-z))`` as float32: exp of a negative number only, so no overflow
    warning for large |z| (the losses use it for logits too)."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def forward(name: str | None, z: np.ndarray) -> np.ndarray:
    """Apply activation ``name`` to ``z`` (any shape, float32)."""
    if name in (None, "linear"):
        return z
    if name == "relu":
        return np.maximum(z, 0)
    if name == "relu6":
        return np.clip(z, 0, 6)
    if name == "sigmoid":
        return sigmoid(z)
    if name == "tanh":
        return np.tanh(z)
    if name == "softmax":
        return _softmax(z)
    if name == "elu":
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0))).astype(np.float32)
    if name == "softplus":
        return (np.logaddexp(0, z)).astype(np.float32)
    if name == "swish":
        return z * sigmoid(z)
    raise ValueError(f"unknown activation {name!r}")


def backward(name: str | None, dy: np.ndarray, z: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Gradient w.r.t. ``z`` given ``dy`` = gradient w.r.t. ``a = forward(name, z)``."""
    if name in (None, "linear"):
        return dy
    if name == "relu":
        return dy * (z > 0)
    if name == "relu6":
        return dy * ((z > 0) & (z < 6))
    if name == "sigmoid":
        return dy * a * (1 - a)
    if name == "tanh":
        return dy * (1 - a * a)
    if name == "softmax":
        return a * (dy - (dy * a).sum(axis=-1, keepdims=True))
    if name == "elu":
        return dy * np.where(z > 0, 1, a + 1).astype(np.float32)
    if name == "softplus":
        return dy * sigmoid(z)
    if name == "swish":
        s = sigmoid(z)
        return dy * (s + z * s * (1 - s))
    raise ValueError(f"unknown activation {name!r}")
