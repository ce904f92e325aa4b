"""Rescaling and Normalization: input scaling as layers, so that the model applies it itself.

Being layers, they are part of the model: ``evaluate``, ``predict`` and ``export`` apply what
training applied, and an adapted Normalization keeps its statistics in the weights file of the
run (Keras 3's keras/src/layers/preprocessing/rescaling.py and normalization.py).
"""

from __future__ import annotations

import math
from typing import Any

from nbcnn.errors import ConfigError
from nbcnn.layers.args import REQUIRED, Arg, integer, is_number, number, optional
from nbcnn.layers.base import Layer, ParamSpec, Shape, ShapeError

#: Keras's ``backend.epsilon()``: the smallest standard deviation Normalization divides by.
EPSILON = 1e-7


class Rescaling(Layer):
    """``y = x * scale + offset`` (Keras: ``Rescaling(1/255)`` maps 0..255 to [0, 1],
    ``Rescaling(2, offset=-1)`` maps [0, 1] to [-1, 1]). No weights."""

    arguments = {
        "scale": Arg(number(), REQUIRED, "multiplies every value, e.g. 0.00392156862745098"),
        "offset": Arg(number(), 0.0, "added after scaling"),
    }

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def macs(self, input_shape: Shape) -> int:
        return math.prod(input_shape)  # one multiply-add per value

    def forward(self, x, training=False):
        import numpy as np

        return x * np.float32(self.scale) + np.float32(self.offset)

    def backward(self, dy):
        import numpy as np

        return dy * np.float32(self.scale)


def _numbers(value: Any) -> float | list[float]:
    """A number, or a list of numbers (one per channel)."""
    check = number()
    if isinstance(value, (list, tuple)) and value and all(is_number(v) for v in value):
        return [check(v) for v in value]
    try:
        return check(value)
    except ValueError:
        raise ValueError("expected a number or a non-empty list of numbers") from None


class Normalization(Layer):
    """``y = (x - mean) / max(sqrt(variance), 1e-7)`` per channel (the last axis).

    With ``mean`` and ``variance`` given (a number, or one per channel) the layer has no
    weights. Without them it has Keras 3's three non-trainable weights ``mean (C,)``,
    ``variance (C,)`` and ``count ()`` (Keras keeps count, always 0, for old files; nbcnn
    stores how many values it was adapted on). ``fit`` adapts them from the training set
    (:meth:`adapt`, like Keras's ``adapt()``) when count is 0: at the start of a fresh run.
    """

    arguments = {
        "axis": Arg(integer(None), -1, "only the last axis (-1) is supported"),
        "mean": Arg(optional(_numbers), None, "mean(s); null: adapted from the training set"),
        "variance": Arg(optional(_numbers), None, "variance(s), given with mean"),
    }

    def validate(self) -> None:
        if self.axis != -1:
            raise ConfigError(
                f"only axis=-1 (one mean and variance per channel) is supported, got {self.axis}",
                where="axis",
            )
        if (self.mean is None) != (self.variance is None):
            given = "mean" if self.mean is not None else "variance"
            raise ConfigError(
                "give both mean and variance, or neither (then they are adapted from the "
                "training set)",
                where=given,
            )
        if self.variance is not None:
            values = self.variance if isinstance(self.variance, list) else [self.variance]
            if min(values) < 0:
                raise ConfigError(f"must be >= 0, got {self.variance}", where="variance")

    @property
    def adapts(self) -> bool:
        """True when the statistics are weights adapted from data (mean not given)."""
        return self.mean is None

    def output_shape(self, input_shape: Shape) -> Shape:
        c = input_shape[-1]
        for key in ("mean", "variance"):
            value = getattr(self, key)
            if isinstance(value, list) and len(value) not in (1, c):
                raise ShapeError(
                    f"Normalization {key} has {len(value)} values; the input has {c} channels "
                    "(give one value, or one per channel)"
                )
        return tuple(input_shape)

    def param_shapes(self, input_shape: Shape) -> list[ParamSpec]:
        if not self.adapts:
            return []
        c = (input_shape[-1],)
        return [
            ParamSpec("mean", c, False),
            ParamSpec("variance", c, False),
            ParamSpec("count", (), False),
        ]

    def macs(self, input_shape: Shape) -> int:
        return math.prod(input_shape)  # one subtraction and one division per value

    def explain(self, input_shape: Shape) -> str:
        if not self.adapts:
            return "mean and variance given in the config: no weights = 0"
        c = input_shape[-1]
        return f"{c} mean + {c} variance + 1 count (adapted, not trainable) = {2 * c + 1:,}"

    def build(self, input_shape, rng):
        import numpy as np

        super().build(input_shape, rng)
        c = input_shape[-1]
        if self.adapts:
            # Keras's initial values: zeros, ones; count 0 marks "not adapted yet".
            self.params["mean"] = np.zeros(c, np.float32)
            self.params["variance"] = np.ones(c, np.float32)
            self.params["count"] = np.zeros((), np.float32)

    def statistics(self):
        """``(mean, std)`` float32 (C,) as the forward uses them: std = max(sqrt(variance),
        1e-7)."""
        import numpy as np

        c = self.input_shape[-1]
        if self.adapts:
            mean, variance = self.params["mean"], self.params["variance"]
        else:
            mean = np.broadcast_to(np.float32(self.mean), (c,))
            variance = np.broadcast_to(np.float32(self.variance), (c,))
        std = np.maximum(np.sqrt(variance, dtype=np.float32), np.float32(EPSILON))
        return np.asarray(mean, np.float32), std

    @property
    def adapted(self) -> bool:
        """False for adapted statistics not yet computed (count 0)."""
        return not self.adapts or float(self.params["count"]) > 0

    def adapt(self, batches) -> None:
        """Set mean and variance (population, per channel) from an iterable of batches
        ``(B, *input_shape) float32`` and count to the number of values per channel.

        Sums run in float64 and batches are merged with Chan et al.'s pairwise update (the
        "parallel algorithm" for variance, 1979), as Keras's adapt merges batch statistics."""
        import numpy as np

        if not self.adapts:
            raise ConfigError(
                "mean and variance are given in the config; there is nothing to adapt",
                where=f"layer {self.name!r}",
            )
        c = self.input_shape[-1]
        n, mean, m2 = 0, np.zeros(c), np.zeros(c)
        for xb in batches:
            x2 = np.asarray(xb, np.float64).reshape(-1, c)
            if not len(x2):
                continue
            k = len(x2)
            batch_mean = x2.mean(axis=0)
            batch_m2 = ((x2 - batch_mean) ** 2).sum(axis=0)
            delta = batch_mean - mean
            total = n + k
            mean = mean + delta * (k / total)
            m2 = m2 + batch_m2 + delta**2 * (n * k / total)
            n = total
        if n == 0:
            raise ConfigError(
                "no training samples to adapt its mean and variance from",
                where=f"layer {self.name!r}",
            )
        self.params["mean"][...] = mean
        self.params["variance"][...] = m2 / n
        self.params["count"][...] = n

    def forward(self, x, training=False):
        mean, std = self.statistics()
        return (x - mean) / std

    def backward(self, dy):
        _, std = self.statistics()
        return dy / std


def adapt_model(model, x, batch_size: int = 256) -> list[str]:
    """Adapt every Normalization of ``model`` whose statistics are not adapted yet (count 0)
    from ``x : (N, *input_shape) float32``, each on its own input (the layers before it run in
    inference mode, ``batch_size`` samples at a time). Returns the names of those adapted."""
    adapted = []
    for i, layer in enumerate(model.layers):
        if not isinstance(layer, Normalization) or layer.adapted:
            continue
        if i == 0:
            inputs = (x[s : s + batch_size] for s in range(0, len(x), batch_size))
        else:
            inputs = (
                model.forward(x[s : s + batch_size], training=False, upto=i - 1)
                for s in range(0, len(x), batch_size)
            )
        layer.adapt(inputs)
        adapted.append(layer.name)
    return adapted
