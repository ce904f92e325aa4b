"""Merging layers, Keras's names and rules: Add, Subtract, Multiply, Average, Maximum, Minimum
(elementwise) and Concatenate (along ``axis``).

A merging layer sets ``multi_input = True``: its calculators receive the list of its inputs'
shapes (one sample each, channels-last), its ``forward`` the list of their arrays, and its
``backward`` returns one gradient per input, in order (docs/plugins.md). A config lists the
inputs: ``{type: Add, inputs: [conv2d_2, max_pooling2d]}`` (nbcnn/graph.py).

Shape errors do not repeat the shapes: the model adds each input's layer and shape to them.
Elementwise merges broadcast as Keras does: sample shapes are aligned at their last axis, a
shorter one gets axes of 1 in front, and each axis must be equal or 1 in every input; the
gradient of a broadcast input is summed over the axes it was broadcast along.
"""

from __future__ import annotations

from typing import Any, ClassVar

from nbcnn.layers.args import Arg, integer
from nbcnn.layers.base import Layer, Shape, ShapeError


class _Merge(Layer):
    """Shared base: a list of inputs, no weights; the receptive field passes through (the
    summary hands a merge the largest of its inputs' fields, summary.merged_field)."""

    multi_input: ClassVar[bool] = True
    #: Fewest and most inputs (Keras: at least one; Subtract exactly two).
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = None

    def check_inputs(self, input_shapes: Any) -> list[Shape]:
        if not isinstance(input_shapes, (list, tuple)) or not all(
            isinstance(s, tuple) for s in input_shapes
        ):
            raise ShapeError(f"{type(self).__name__} merges a list of inputs")
        n = len(input_shapes)
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            many = (
                f"exactly {self.min_inputs}"
                if self.max_inputs == self.min_inputs
                else f"at least {self.min_inputs}"
            )
            raise ShapeError(f"{type(self).__name__} takes {many} inputs, got {n}")
        return list(input_shapes)

    def receptive_field(self, input_shape, rf, jump):
        return rf, jump

    def explain(self, input_shape) -> str:
        return "no weights = 0"


class _Elementwise(_Merge):
    """An elementwise merge with Keras's broadcasting (see the module docstring)."""

    def output_shape(self, input_shape: list[Shape]) -> Shape:
        shapes = self.check_inputs(input_shape)
        rank = max(len(s) for s in shapes)
        out = []
        for axis in range(rank):
            sizes = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0}
            sizes.discard(1)
            if len(sizes) > 1:
                raise ShapeError(
                    f"{type(self).__name__} needs inputs of the same shape (an axis may be 1 "
                    "to broadcast)"
                )
            out.append(sizes.pop() if sizes else 1)
        return tuple(out)

    def _aligned(self, xs: list) -> list:
        """Each input reshaped to the output's rank (axes of 1 after the batch axis)."""
        rank = len(self.out_shape) + 1
        return [x.reshape(x.shape[0], *(1,) * (rank - x.ndim), *x.shape[1:]) for x in xs]

    def _unbroadcast(self, grad, shape: tuple[int, ...]):
        """``grad`` (N, *output shape) summed back to an input of sample shape ``shape``."""
        rank = len(self.out_shape)
        full = (1,) * (rank - len(shape)) + tuple(shape)
        axes = tuple(1 + a for a, n in enumerate(full) if n == 1 and self.out_shape[a] != 1)
        if axes:
            grad = grad.sum(axis=axes, keepdims=True)
        return grad.reshape(grad.shape[0], *shape)

    def forward(self, x, training=False):
        xs = self._aligned(list(x))
        out = self._combine(xs)
        if training:
            self._xs, self._out = xs, out  # Maximum/Minimum's backward compares with out
        return out

    def backward(self, dy):
        return [
            self._unbroadcast(part, shape)
            for part, shape in zip(self._grads(dy, self._xs, self._out), self.input_shape)
        ]

    def _combine(self, xs: list):
        raise NotImplementedError

    def _grads(self, dy, xs: list, out) -> list:
        raise NotImplementedError


def _summed(xs: list):
    """x0 + x1 + ..., in that order, broadcast as each input comes (a later input may widen
    the sum: ``out = out + x``, not ``out += x``)."""
    out = xs[0] + xs[1] if len(xs) > 1 else xs[0].copy()
    for x in xs[2:]:
        out = out + x
    return out


class Add(_Elementwise):
    """The sum of its inputs (ResNet's identity shortcut: ``inputs: [conv, shortcut]``)."""

    def _combine(self, xs):
        return _summed(xs)

    def _grads(self, dy, xs, out):
        return [dy.copy() for _ in xs]


class Subtract(_Elementwise):
    """The first input minus the second (exactly two)."""

    min_inputs = max_inputs = 2

    def _combine(self, xs):
        return xs[0] - xs[1]

    def _grads(self, dy, xs, out):
        return [dy.copy(), -dy]


class Multiply(_Elementwise):
    """The elementwise product of its inputs."""

    def _combine(self, xs):
        out = xs[0] * xs[1] if len(xs) > 1 else xs[0].copy()
        for x in xs[2:]:
            out = out * x
        return out

    def _grads(self, dy, xs, out):
        grads = []
        for k in range(len(xs)):
            part = dy
            for m, x in enumerate(xs):
                if m != k:
                    part = part * x
            grads.append(part)
        return grads


class Average(_Elementwise):
    """The mean of its inputs."""

    def _combine(self, xs):
        import numpy as np

        return _summed(xs) * np.float32(1.0 / len(xs))

    def _grads(self, dy, xs, out):
        import numpy as np

        share = dy * np.float32(1.0 / len(xs))
        return [share.copy() for _ in xs]


class _Extreme(_Elementwise):
    """Maximum / Minimum: the gradient goes to the first input reaching the extreme."""

    _pick: ClassVar[str]

    def _combine(self, xs):
        import numpy as np

        pick = np.maximum if self._pick == "max" else np.minimum
        out = xs[0]
        for x in xs[1:]:
            out = pick(out, x)
        return out if len(xs) > 1 else out.copy()

    def _grads(self, dy, xs, out):
        import numpy as np

        taken = np.zeros(np.broadcast_shapes(*(x.shape for x in xs)), dtype=bool)
        grads = []
        for x in xs:
            mine = (x == out) & ~taken  # ties: the first input wins, as in pooling
            taken |= mine
            grads.append(np.where(mine, dy, np.float32(0.0)).astype(np.float32))
        return grads


class Maximum(_Extreme):
    """The elementwise maximum of its inputs."""

    _pick = "max"


class Minimum(_Extreme):
    """The elementwise minimum of its inputs."""

    _pick = "min"


class Concatenate(_Merge):
    """Its inputs side by side along ``axis`` (Keras counts the batch axis: -1, the default, is
    the channels; 1 the first axis of a sample); every other axis must match."""

    arguments = {
        "axis": Arg(integer(-5, 5), -1, "axis to join along (-1: channels)"),
    }

    def _sample_axis(self, rank: int) -> int:
        axis = self.axis
        if axis == 0 or axis < -rank or axis > rank:
            raise ShapeError(
                f"Concatenate axis {axis} is not an axis of a sample of rank {rank} (0 is the "
                "batch axis; -1 the channels)"
            )
        return axis - 1 if axis > 0 else rank + axis

    def output_shape(self, input_shape: list[Shape]) -> Shape:
        shapes = self.check_inputs(input_shape)
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes):
            raise ShapeError("Concatenate needs inputs of the same rank")
        axis = self._sample_axis(rank)
        for s in shapes[1:]:
            if s[:axis] + s[axis + 1 :] != shapes[0][:axis] + shapes[0][axis + 1 :]:
                raise ShapeError(
                    f"Concatenate needs inputs that match except along axis {self.axis}"
                )
        return (*shapes[0][:axis], sum(s[axis] for s in shapes), *shapes[0][axis + 1 :])

    def forward(self, x, training=False):
        import numpy as np

        axis = 1 + self._sample_axis(len(self.out_shape))
        return np.concatenate(list(x), axis=axis)

    def backward(self, dy):
        import numpy as np

        axis = self._sample_axis(len(self.out_shape))
        edges = np.cumsum([s[axis] for s in self.input_shape])[:-1]
        return [np.ascontiguousarray(part) for part in np.split(dy, edges, axis=1 + axis)]
