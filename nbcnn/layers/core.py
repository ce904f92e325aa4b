"""Core layers: Dense, Flatten, Activation, Dropout (NumPy compute: one GEMM per batch)."""

from __future__ import annotations

import math

from nbcnn.layers.args import (
    ACTIVATIONS,
    INITIALIZERS,
    Arg,
    boolean,
    choice,
    integer,
    number,
    optional,
    positive_int,
)
from nbcnn.layers.base import Layer, ParamSpec, Shape, ShapeError


class Dense(Layer):
    """Fully connected layer on the last axis: ``(..., in)`` -> ``(..., units)``.

    On inputs of rank > 1 it acts on the last axis only, as Keras does. Kernel ``(in, units)``,
    bias ``(units,)``.
    """

    arguments = {
        "units": Arg(positive_int, doc="number of outputs"),
        "activation": Arg(optional(choice(*ACTIVATIONS)), None, "applied to the output"),
        "use_bias": Arg(boolean, True, "add one bias per unit"),
        "kernel_initializer": Arg(choice(*INITIALIZERS), "glorot_uniform", "kernel init"),
        "bias_initializer": Arg(choice(*INITIALIZERS), "zeros", "bias init"),
    }

    def output_shape(self, input_shape: Shape) -> Shape:
        if not input_shape:
            raise ShapeError("Dense needs an input with at least one axis")
        return (*input_shape[:-1], self.units)

    def param_shapes(self, input_shape: Shape) -> list[ParamSpec]:
        params = [ParamSpec("kernel", (input_shape[-1], self.units))]
        if self.use_bias:
            params.append(ParamSpec("bias", (self.units,)))
        return params

    def macs(self, input_shape: Shape) -> int:
        return math.prod(input_shape) * self.units

    def explain(self, input_shape: Shape) -> str:
        total = sum(p.size for p in self.param_shapes(input_shape))
        n_in = input_shape[-1]
        formula = f"{n_in}x{self.units}" + (f" + {self.units}" if self.use_bias else "")
        words = f"{n_in:,} inputs x {self.units:,} units"
        words += f", plus {self.units:,} biases" if self.use_bias else ", no bias"
        positions = math.prod(input_shape[:-1])
        if positions > 1:
            words += f"; shared by all {positions:,} positions of the last axis"
        return f"{formula} = {total:,}: {words}"

    def build(self, input_shape, rng):
        from nbcnn.layers.initializers import initialize

        super().build(input_shape, rng)
        specs = self.param_shapes(input_shape)
        self.params = {"kernel": initialize(self.kernel_initializer, specs[0].shape, rng)}
        if self.use_bias:
            self.params["bias"] = initialize(self.bias_initializer, specs[1].shape, rng)

    def forward(self, x, training=False):
        x2 = x.reshape(-1, x.shape[-1])
        z = x2 @ self.params["kernel"]
        if self.use_bias:
            z += self.params["bias"]
        if training:
            self._x2 = x2
        return self.activate(z.reshape(*x.shape[:-1], self.units), training)

    def backward(self, dy):
        dz = self.activation_grad(dy).reshape(-1, self.units)
        self.grads = {"kernel": self._x2.T @ dz}
        if self.use_bias:
            self.grads["bias"] = dz.sum(axis=0)
        dx = dz @ self.params["kernel"].T
        return dx.reshape(dy.shape[0], *self.input_shape)


class Flatten(Layer):
    """Reshape each sample to one axis: ``(7, 7, 64)`` -> ``(3136,)``."""

    arguments = {
        "data_format": Arg(optional(choice("channels_last")), None, "only channels_last"),
    }

    def output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)

    def receptive_field(self, input_shape, rf, jump):
        return None

    def explain(self, input_shape: Shape) -> str:
        dims = "x".join(map(str, input_shape))
        return f"no weights: reshapes {dims} into {math.prod(input_shape):,} values = 0"

    def forward(self, x, training=False):
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(dy.shape[0], *self.input_shape)


class Activation(Layer):
    """An activation function on its own: same shape out as in."""

    arguments = {"activation": Arg(choice(*ACTIVATIONS), doc="the function to apply")}

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def explain(self, input_shape: Shape) -> str:
        return f"no weights: applies {self.activation} to each value = 0"

    def forward(self, x, training=False):
        return self.activate(x, training)

    def backward(self, dy):
        return self.activation_grad(dy)


class Dropout(Layer):
    """Zero a fraction ``rate`` of values while training and scale the rest by 1/(1 - rate)
    (inverted dropout); identity at inference."""

    arguments = {
        "rate": Arg(number(0.0, 1.0, max_open=True), doc="fraction of values to drop"),
        "seed": Arg(optional(integer(0)), None, "seed of this layer's own stream"),
    }
    # Keras's Dropout(rate, noise_shape, seed): nbcnn has no noise_shape, so a second
    # positional argument would mean something else here; seed is taken by name only.
    positional = ("rate",)

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def explain(self, input_shape: Shape) -> str:
        return f"no weights: drops {self.rate:g} of the values while training = 0"

    def build(self, input_shape, rng):
        super().build(input_shape, rng)
        # The model hands every layer the same training Generator, so one saved state
        # reproduces all masks on resume; an explicit seed gives the layer a stream of its own.
        import numpy as np

        self.rng = rng if self.seed is None else np.random.default_rng(self.seed)

    def forward(self, x, training=False):
        import numpy as np

        if not training or self.rate == 0:
            return x
        from nbcnn.distributed import batch_shard

        shard = batch_shard()
        if shard is None:
            keep = self.rng.random(x.shape, dtype=np.float32) >= self.rate
        else:  # data-parallel: the whole global batch's mask, this rank's rows of it
            first, total = shard
            keep = self.rng.random((total, *x.shape[1:]), dtype=np.float32) >= self.rate
            keep = keep[first : first + len(x)]
        self._mask = keep * np.float32(1.0 / (1.0 - self.rate))
        return x * self._mask

    def backward(self, dy):
        return dy * self._mask if self.rate else dy
