"""Convolution layers: Conv2D and Conv1D (Keras's arguments and weight layout).

Conv1D runs through the 2D kernel with a height of one, so both share one calculator and one
compute path. Kernels: nbcnn/kernels/conv.py, imported when a model first runs.
"""

from __future__ import annotations

import math
from typing import Any

from nbcnn import shapes
from nbcnn.errors import ConfigError
from nbcnn.layers.args import (
    ACTIVATIONS,
    INITIALIZERS,
    Arg,
    boolean,
    choice,
    int_tuple,
    optional,
    positive_int,
)
from nbcnn.layers.base import Layer, ParamSpec, Shape, ShapeError, format_shape


def conv_arguments(rank: int, paddings: tuple[str, ...]) -> dict[str, Arg]:
    """Keras's Conv{rank}D keyword arguments."""
    return {
        "filters": Arg(positive_int, doc="number of output channels"),
        "kernel_size": Arg(int_tuple(rank), doc="window size"),
        "strides": Arg(int_tuple(rank), (1,) * rank, "step of the window"),
        "padding": Arg(choice(*paddings), "valid", "zero padding"),
        "data_format": Arg(optional(choice("channels_last")), None, "only channels_last"),
        "dilation_rate": Arg(int_tuple(rank), (1,) * rank, "spacing of kernel taps"),
        "groups": Arg(positive_int, 1, "must be 1"),
        "activation": Arg(optional(choice(*ACTIVATIONS)), None, "applied to the output"),
        "use_bias": Arg(boolean, True, "add one bias per filter"),
        "kernel_initializer": Arg(choice(*INITIALIZERS), "glorot_uniform", "kernel init"),
        "bias_initializer": Arg(choice(*INITIALIZERS), "zeros", "bias init"),
    }


class _Conv(Layer):
    """Shared calculator and compute of Conv1D and Conv2D."""

    rank: int

    def validate(self) -> None:
        if self.groups != 1:
            raise ConfigError(f"only groups=1 is supported, got {self.groups}", where="groups")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            # Keras refuses this combination too (it has no defined 'same' semantics there).
            raise ConfigError(
                f"strides {list(self.strides)} > 1 together with dilation_rate "
                f"{list(self.dilation_rate)} > 1 is not supported (as in Keras)",
                where="dilation_rate",
            )

    def _spatial(self, input_shape: Shape) -> tuple[int, ...]:
        self.check_rank(input_shape)
        return tuple(input_shape[:-1])

    def output_shape(self, input_shape: Shape) -> Shape:
        spatial = self._spatial(input_shape)
        padding = "same" if self.padding == "causal" else self.padding
        out = tuple(
            shapes.output_length(n, k, s, padding, d)
            for n, k, s, d in zip(spatial, self.kernel_size, self.strides, self.dilation_rate)
        )
        if min(out) < 1:
            window = [
                shapes.effective_kernel(k, d) for k, d in zip(self.kernel_size, self.dilation_rate)
            ]
            raise ShapeError(
                f"kernel window {window} is larger than its input {format_shape(input_shape)} "
                f"with padding='{self.padding}' (use padding='same' or a smaller kernel)"
            )
        return (*out, self.filters)

    def param_shapes(self, input_shape: Shape) -> list[ParamSpec]:
        c_in = input_shape[-1]
        params = [ParamSpec("kernel", (*self.kernel_size, c_in, self.filters))]
        if self.use_bias:
            params.append(ParamSpec("bias", (self.filters,)))
        return params

    def macs(self, input_shape: Shape) -> int:
        out = self.output_shape(input_shape)
        return math.prod(out) * math.prod(self.kernel_size) * input_shape[-1]

    def receptive_field(self, input_shape, rf, jump):
        k_eff = [
            shapes.effective_kernel(k, d) for k, d in zip(self.kernel_size, self.dilation_rate)
        ]
        new_rf = tuple(r + (k - 1) * j for r, k, j in zip(rf, k_eff, jump))
        return new_rf, tuple(j * s for j, s in zip(jump, self.strides))

    def explain(self, input_shape: Shape) -> str:
        c_in = input_shape[-1]
        kernel = "x".join(map(str, self.kernel_size))
        total = sum(p.size for p in self.param_shapes(input_shape))
        formula = f"{kernel}x{c_in}x{self.filters}" + (
            f" + {self.filters}" if self.use_bias else ""
        )
        words = (
            f"a {kernel} kernel over {c_in} input channel{'s' if c_in != 1 else ''} "
            f"for each of {self.filters} filters"
        )
        words += f", plus {self.filters} biases" if self.use_bias else ", no bias"
        return f"{formula} = {total:,}: {words}"

    # ------------------------------------------------------------------ compute

    def _padding_2d(self, input_shape: Shape) -> tuple[tuple[int, int], tuple[int, int]]:
        spatial = self._spatial(input_shape)
        if self.padding == "causal":
            pads = ((shapes.effective_kernel(self.kernel_size[0], self.dilation_rate[0]) - 1, 0),)
        else:
            pads = shapes.padding_amounts(
                spatial, self.kernel_size, self.strides, self.padding, self.dilation_rate
            )
        return ((0, 0), *pads) if self.rank == 1 else pads

    def _as_2d(self, value: tuple[int, ...]) -> tuple[int, ...]:
        return (1, *value) if self.rank == 1 else value

    def build(self, input_shape: Shape, rng: Any) -> None:
        from nbcnn.layers.initializers import initialize

        super().build(input_shape, rng)
        specs = self.param_shapes(input_shape)
        self.params = {"kernel": initialize(self.kernel_initializer, specs[0].shape, rng)}
        if self.use_bias:
            self.params["bias"] = initialize(self.bias_initializer, specs[1].shape, rng)
        self._pads = self._padding_2d(input_shape)

    def _y4_shape(self) -> tuple[int, ...]:
        """The kernel's (OH, OW, F) output shape: (1, L, F) for Conv1D."""
        return (1, *self.out_shape) if self.rank == 1 else self.out_shape

    def _kernel_2d(self):
        w = self.params["kernel"]
        return w.reshape(1, *w.shape) if self.rank == 1 else w

    def _as_4d(self, x):
        """x as the 2-D kernels take it, (N, H, W, C): a height of 1 for Conv1D."""
        return x.reshape(x.shape[0], 1, *x.shape[1:]) if self.rank == 1 else x

    def _kernel_args(self):
        """``(w, strides, dilation, padding)`` in the 2-D kernels' form (also nbcnn/fusion.py)."""
        dims = (self._as_2d(self.strides), self._as_2d(self.dilation_rate))
        return (self._kernel_2d(), *dims, self._pads)

    def _store_grads(self, dw, db) -> None:
        """Set ``grads`` from the kernels' dw (2-D form) and db."""
        self.grads = {"kernel": dw.reshape(self.params["kernel"].shape)}
        if self.use_bias:
            self.grads["bias"] = db

    def forward(self, x, training=False):
        from nbcnn.kernels.conv import FUSED_ACTIVATIONS, conv2d_forward

        x4 = self._as_4d(x)
        # ReLU and ReLU6 run inside the kernel (the engine: in the tile's epilogue), and their
        # mask inside the backward's bias-gradient pass: two passes over the output fewer
        # each way. Other activations run on the output in NumPy.
        in_kernel = self.activation if self.activation in FUSED_ACTIVATIONS else None
        # A training forward keeps its im2col columns for the backward (see im2col_gemm).
        w, strides, dilation, pads = self._kernel_args()
        y, cols = conv2d_forward(
            x4,
            w,
            self.params.get("bias"),
            strides,
            dilation,
            pads,
            activation=in_kernel,
            return_cols=True,
        )
        if training:
            self._x4, self._cols = x4, cols
            self._y4 = y if in_kernel else None
        y = y.reshape(x.shape[0], *self.out_shape)
        return y if in_kernel else self.activate(y, training)

    def backward(self, dy):
        from nbcnn.kernels.conv import GATES, conv2d_backward

        # The activation's derivative, when the backward's bias-gradient pass can read it off
        # the output (ReLU, ReLU6, tanh, sigmoid), is taken there: one pass fewer over dz.
        output, activation = self._y4, self.activation
        if output is None and GATES.get(activation) and not self.fused_activation:
            output = self._a.reshape(self._x4.shape[0], *self._y4_shape())
        dz = dy if output is not None else self.activation_grad(dy)
        dz4 = dz.reshape(self._x4.shape[0], *self._y4_shape())
        dx, dw, db = conv2d_backward(
            dz4,
            self._x4,
            *self._kernel_args(),
            need_dx=self.input_grad_needed,
            relu_output=output,
            activation=activation,
            cols=self._cols,
        )
        self._cols = None  # overwritten by the backward, and no longer needed
        self._store_grads(dw, db)
        return None if dx is None else dx.reshape(dz.shape[0], *self.input_shape)


class Conv2D(_Conv):
    """2D convolution over ``(H, W, C)`` inputs: ``filters`` sliding ``kernel_size`` windows.

    Output ``(OH, OW, filters)``; kernel ``(kh, kw, C, filters)``, bias ``(filters,)``.
    """

    rank = 2
    input_rank = 3
    arguments = conv_arguments(2, ("valid", "same"))


class Conv1D(_Conv):
    """1D convolution over ``(L, C)`` inputs; kernel ``(k, C, filters)``. Also 'causal' padding."""

    rank = 1
    input_rank = 2
    arguments = conv_arguments(1, ("valid", "same", "causal"))
