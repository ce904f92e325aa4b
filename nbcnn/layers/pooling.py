"""Pooling layers: max and average, 1D and 2D, windowed and global.

1D pooling runs through the 2D kernels with a height of one. Ties in max pooling go to the
first maximum in row-major window order (documented in nbcnn/kernels/pool.py).
"""

from __future__ import annotations

import math

from nbcnn import shapes
from nbcnn.layers.args import Arg, boolean, choice, int_tuple, optional
from nbcnn.layers.base import Layer, Shape, ShapeError, format_shape


def pool_arguments(rank: int) -> dict[str, Arg]:
    """Keras's {Max,Average}Pooling{rank}D keyword arguments."""
    return {
        "pool_size": Arg(int_tuple(rank), (2,) * rank, "window size"),
        "strides": Arg(optional(int_tuple(rank)), None, "step; default pool_size"),
        "padding": Arg(choice("valid", "same"), "valid", "zero padding"),
        "data_format": Arg(optional(choice("channels_last")), None, "only channels_last"),
    }


class _Pool(Layer):
    rank: int
    mode: str  # "max" or "avg"

    def validate(self) -> None:
        if self.strides is None:
            self.strides = self.pool_size

    def output_shape(self, input_shape: Shape) -> Shape:
        self.check_rank(input_shape)
        spatial = input_shape[:-1]
        out = tuple(
            shapes.output_length(n, k, s, self.padding)
            for n, k, s in zip(spatial, self.pool_size, self.strides)
        )
        if min(out) < 1:
            raise ShapeError(
                f"pool window {list(self.pool_size)} is larger than its input "
                f"{format_shape(input_shape)} with padding='{self.padding}': the output would "
                "have fewer than one cell"
            )
        return (*out, input_shape[-1])

    def macs(self, input_shape: Shape) -> int:
        # One compare or add per window cell: not multiply-accumulates, so none are counted.
        return 0

    def receptive_field(self, input_shape, rf, jump):
        new_rf = tuple(r + (k - 1) * j for r, k, j in zip(rf, self.pool_size, jump))
        return new_rf, tuple(j * s for j, s in zip(jump, self.strides))

    def explain(self, input_shape: Shape) -> str:
        window = "x".join(map(str, self.pool_size))
        what = "max" if self.mode == "max" else "mean"
        return f"no weights: takes the {what} of each {window} window = 0"

    # ------------------------------------------------------------------ compute

    def _as_2d(self, value):
        return (1, *value) if self.rank == 1 else tuple(value)

    def build(self, input_shape, rng):
        super().build(input_shape, rng)
        pads = shapes.padding_amounts(input_shape[:-1], self.pool_size, self.strides, self.padding)
        self._pads = ((0, 0), *pads) if self.rank == 1 else pads

    def _x4(self, x):
        return x.reshape(x.shape[0], 1, *x.shape[1:]) if self.rank == 1 else x

    def forward(self, x, training=False):
        from nbcnn.kernels import pool

        x4 = self._x4(x)
        args = (self._as_2d(self.pool_size), self._as_2d(self.strides), self._pads)
        if self.mode == "max":
            y, argmax = pool.max_pool2d_forward(x4, *args)
            if training:
                self._argmax, self._x4_shape = argmax, x4.shape
        else:
            y = pool.avg_pool2d_forward(x4, *args)
            if training:
                self._x4_shape = x4.shape
        return y.reshape(x.shape[0], *self.out_shape)

    def backward(self, dy):
        from nbcnn.kernels import pool

        dy4 = self._x4(dy)
        if self.mode == "max":
            dx = pool.max_pool2d_backward(dy4, self._argmax, self._x4_shape)
        else:
            dx = pool.avg_pool2d_backward(
                dy4,
                self._x4_shape,
                self._as_2d(self.pool_size),
                self._as_2d(self.strides),
                self._pads,
            )
        return dx.reshape(dy.shape[0], *self.input_shape)


class MaxPooling2D(_Pool):
    """Maximum of each ``pool_size`` window of an ``(H, W, C)`` input, per channel."""

    rank, mode, input_rank = 2, "max", 3
    arguments = pool_arguments(2)


class AveragePooling2D(_Pool):
    """Mean of each window; with 'same' padding only real (unpadded) cells count, as in Keras."""

    rank, mode, input_rank = 2, "avg", 3
    arguments = pool_arguments(2)


class MaxPooling1D(_Pool):
    """Maximum of each window of an ``(L, C)`` input."""

    rank, mode, input_rank = 1, "max", 2
    arguments = pool_arguments(1)


class AveragePooling1D(_Pool):
    """Mean of each window of an ``(L, C)`` input."""

    rank, mode, input_rank = 1, "avg", 2
    arguments = pool_arguments(1)


class _GlobalPool(Layer):
    """Max or mean over every spatial position: ``(..., C)`` -> ``(C,)`` (or keepdims)."""

    mode: str
    arguments = {
        "data_format": Arg(optional(choice("channels_last")), None, "only channels_last"),
        "keepdims": Arg(boolean, False, "keep the spatial axes with size 1"),
    }

    def output_shape(self, input_shape: Shape) -> Shape:
        self.check_rank(input_shape)
        channels = input_shape[-1]
        return (*(1,) * (len(input_shape) - 1), channels) if self.keepdims else (channels,)

    def receptive_field(self, input_shape, rf, jump):
        return None

    def explain(self, input_shape: Shape) -> str:
        cells = "x".join(map(str, input_shape[:-1]))
        what = "max" if self.mode == "max" else "mean"
        return f"no weights: the {what} over all {cells} positions of each channel = 0"

    def forward(self, x, training=False):
        axes = tuple(range(1, x.ndim - 1))
        if self.mode == "max":
            y = x.max(axis=axes, keepdims=True)
            if training:
                self._x = x
        else:
            y = x.mean(axis=axes, keepdims=True, dtype="float32")
        return y.reshape(x.shape[0], *self.out_shape)

    def backward(self, dy):
        import numpy as np

        n = dy.shape[0]
        dy = dy.reshape(n, *(1,) * (len(self.input_shape) - 1), self.input_shape[-1])
        if self.mode == "max":
            # Like the windowed kernel: the first maximum (in row-major order) takes it all.
            flat = self._x.reshape(n, -1, self.input_shape[-1])
            first = flat.argmax(axis=1)
            dx = np.zeros_like(flat)
            np.put_along_axis(dx, first[:, None, :], dy.reshape(n, 1, -1), axis=1)
            return dx.reshape(n, *self.input_shape)
        cells = math.prod(self.input_shape[:-1])
        return np.broadcast_to(dy / np.float32(cells), (n, *self.input_shape)).copy()


class GlobalAveragePooling2D(_GlobalPool):
    """Mean over height and width of each channel."""

    mode, input_rank = "avg", 3


class GlobalMaxPooling2D(_GlobalPool):
    """Maximum over height and width of each channel."""

    mode, input_rank = "max", 3


class GlobalAveragePooling1D(_GlobalPool):
    """Mean over steps of each channel."""

    mode, input_rank = "avg", 2


class GlobalMaxPooling1D(_GlobalPool):
    """Maximum over steps of each channel."""

    mode, input_rank = "max", 2
