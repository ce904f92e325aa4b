"""Reshaping layers: ZeroPadding2D, Cropping2D, UpSampling2D (nearest), Reshape."""

from __future__ import annotations

import math

from nbcnn.layers.args import Arg, choice, int_list, int_pairs, int_tuple, optional
from nbcnn.layers.base import Layer, Shape, ShapeError, format_shape

_DATA_FORMAT = Arg(optional(choice("channels_last")), None, "only channels_last")


class ZeroPadding2D(Layer):
    """Add rows and columns of zeros: ``padding`` as int, [h, w], or [[top, bottom], [left,
    right]]."""

    input_rank = 3
    arguments = {
        "padding": Arg(int_pairs(2), ((1, 1), (1, 1)), "rows/columns of zeros"),
        "data_format": _DATA_FORMAT,
    }

    def output_shape(self, input_shape: Shape) -> Shape:
        self.check_rank(input_shape)
        (top, bottom), (left, right) = self.padding
        h, w, c = input_shape
        return (h + top + bottom, w + left + right, c)

    def receptive_field(self, input_shape, rf, jump):
        return rf, jump

    def forward(self, x, training=False):
        import numpy as np

        return np.pad(x, ((0, 0), *self.padding, (0, 0)))

    def backward(self, dy):
        (top, bottom), (left, right) = self.padding
        h, w, _ = self.input_shape
        return dy[:, top : top + h, left : left + w, :].copy()


class Cropping2D(Layer):
    """Remove rows and columns at the borders: ``cropping`` in ZeroPadding2D's forms."""

    input_rank = 3
    arguments = {
        "cropping": Arg(int_pairs(2), ((0, 0), (0, 0)), "rows/columns to remove"),
        "data_format": _DATA_FORMAT,
    }

    def output_shape(self, input_shape: Shape) -> Shape:
        self.check_rank(input_shape)
        (top, bottom), (left, right) = self.cropping
        h, w, c = input_shape
        out = (h - top - bottom, w - left - right, c)
        if min(out[:2]) < 1:
            raise ShapeError(
                f"cropping {[list(p) for p in self.cropping]} removes all of the input "
                f"{format_shape(input_shape)}"
            )
        return out

    def receptive_field(self, input_shape, rf, jump):
        return rf, jump

    def forward(self, x, training=False):
        (top, _), (left, _) = self.cropping
        h, w, _ = self.out_shape
        return x[:, top : top + h, left : left + w, :]

    def backward(self, dy):
        import numpy as np

        dx = np.zeros((dy.shape[0], *self.input_shape), np.float32)
        (top, _), (left, _) = self.cropping
        h, w, _ = self.out_shape
        dx[:, top : top + h, left : left + w, :] = dy
        return dx


class UpSampling2D(Layer):
    """Repeat each row ``size[0]`` and each column ``size[1]`` times (nearest neighbour)."""

    input_rank = 3
    arguments = {
        "size": Arg(int_tuple(2), (2, 2), "repeats of rows and columns"),
        "data_format": _DATA_FORMAT,
        "interpolation": Arg(choice("nearest"), "nearest", "only 'nearest'"),
    }

    def output_shape(self, input_shape: Shape) -> Shape:
        self.check_rank(input_shape)
        h, w, c = input_shape
        return (h * self.size[0], w * self.size[1], c)

    def receptive_field(self, input_shape, rf, jump):
        return rf, tuple(j / s for j, s in zip(jump, self.size))

    def forward(self, x, training=False):
        return x.repeat(self.size[0], axis=1).repeat(self.size[1], axis=2)

    def backward(self, dy):
        n, (h, w, c), (sh, sw) = dy.shape[0], self.input_shape, self.size
        return dy.reshape(n, h, sh, w, sw, c).sum(axis=(2, 4))


class Reshape(Layer):
    """Reshape each sample to ``target_shape`` (one entry may be -1, inferred)."""

    arguments = {"target_shape": Arg(int_list(1, allow_minus_one=True), doc="new shape")}

    def output_shape(self, input_shape: Shape) -> Shape:
        total = math.prod(input_shape)
        known = math.prod(d for d in self.target_shape if d != -1)
        target = self.target_shape
        if -1 in target:
            if total % known:
                raise ShapeError(
                    f"cannot reshape {format_shape(input_shape)} ({total:,} values) into "
                    f"{list(target)}: {total:,} is not a multiple of {known:,}"
                )
            target = tuple(total // known if d == -1 else d for d in target)
        elif known != total:
            raise ShapeError(
                f"target_shape {list(target)} holds {known:,} values but the input "
                f"{format_shape(input_shape)} holds {total:,}: Reshape cannot change the size"
            )
        return tuple(target)

    def receptive_field(self, input_shape, rf, jump):
        return None

    def forward(self, x, training=False):
        return x.reshape(x.shape[0], *self.out_shape)

    def backward(self, dy):
        return dy.reshape(dy.shape[0], *self.input_shape)
