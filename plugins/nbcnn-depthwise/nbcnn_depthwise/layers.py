"""DepthwiseConv2D and SeparableConv2D with Keras's arguments, weight layout and counts.

Calculators are pure Python (nbcnn.shapes for output sizes and Keras's 'same' split); the
numba kernels in ``nbcnn_depthwise.kernels`` are imported inside forward/backward, so
``nbcnn summary`` never loads numba.

Keras references: ``keras/src/layers/convolutional/depthwise_conv2d.py`` and
``separable_conv2d.py`` (with their base classes ``base_depthwise_conv.py`` and
``base_separable_conv.py``).
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

API_VERSION = 1

_KERNEL_SIZE = Arg(int_tuple(2), doc="window size")
_STRIDES = Arg(int_tuple(2), (1, 1), "step of the window")
_PADDING = Arg(choice("valid", "same"), "valid", "zero padding")
_DEPTH_MULTIPLIER = Arg(positive_int, 1, "outputs per input channel")
_DATA_FORMAT = Arg(optional(choice("channels_last")), None, "only channels_last")
_DILATION = Arg(int_tuple(2), (1, 1), "spacing of kernel taps")
_ACTIVATION = Arg(optional(choice(*ACTIVATIONS)), None, "applied to the output")
_USE_BIAS = Arg(boolean, True, "add one bias per output channel")


def _initializer(doc: str) -> Arg:
    return Arg(choice(*INITIALIZERS), "glorot_uniform", doc)


class _Depthwise(Layer):
    """The depthwise part shared by both layers: calculator and kernel calls."""

    input_rank = 3
    api_version = API_VERSION

    def validate(self) -> None:
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            # Keras refuses this combination for depthwise and separable convolutions too.
            raise ConfigError(
                f"strides {list(self.strides)} > 1 together with dilation_rate "
                f"{list(self.dilation_rate)} > 1 is not supported (as in Keras)",
                where="dilation_rate",
            )

    def _spatial_out(self, input_shape: Shape) -> tuple[int, int]:
        self.check_rank(input_shape)
        out = tuple(
            shapes.output_length(n, k, s, self.padding, d)
            for n, k, s, d in zip(
                input_shape[:2], self.kernel_size, self.strides, self.dilation_rate
            )
        )
        if min(out) < 1:
            window = [
                shapes.effective_kernel(k, d) for k, d in zip(self.kernel_size, self.dilation_rate)
            ]
            raise ShapeError(
                f"kernel window {window} is larger than its input {format_shape(input_shape)} "
                f"with padding='{self.padding}' (use padding='same' or a smaller kernel)"
            )
        return out

    def _depthwise_shape(self, input_shape: Shape) -> Shape:
        """Depthwise kernel (KH, KW, C, depth_multiplier)."""
        return (*self.kernel_size, input_shape[-1], self.depth_multiplier)

    def _depthwise_macs(self, input_shape: Shape) -> int:
        oh, ow = self._spatial_out(input_shape)
        return oh * ow * input_shape[-1] * self.depth_multiplier * math.prod(self.kernel_size)

    def receptive_field(self, input_shape, rf, jump):
        k_eff = [
            shapes.effective_kernel(k, d) for k, d in zip(self.kernel_size, self.dilation_rate)
        ]
        new_rf = tuple(r + (k - 1) * j for r, k, j in zip(rf, k_eff, jump))
        return new_rf, tuple(j * s for j, s in zip(jump, self.strides))

    # ------------------------------------------------------------------ compute

    def _build_padding(self, input_shape: Shape) -> None:
        self._pads = shapes.padding_amounts(
            tuple(input_shape[:2]), self.kernel_size, self.strides, self.padding, self.dilation_rate
        )

    def _depthwise_forward(self, x, w, b):
        from nbcnn_depthwise.kernels import depthwise_conv2d_forward

        return depthwise_conv2d_forward(x, w, b, self.strides, self.dilation_rate, self._pads)

    def _depthwise_backward(self, dy, x, w):
        from nbcnn_depthwise.kernels import depthwise_conv2d_backward

        return depthwise_conv2d_backward(
            dy,
            x,
            w,
            self.strides,
            self.dilation_rate,
            self._pads,
            need_dx=self.input_grad_needed,  # False for a first layer while training
        )


class DepthwiseConv2D(_Depthwise):
    """Convolve each input channel with its own ``depth_multiplier`` filters.

    ``(H, W, C)`` -> ``(OH, OW, C*depth_multiplier)``, output channel ``c*depth_multiplier + m``
    from input channel c. Weights: kernel ``(kh, kw, C, depth_multiplier)``, bias
    ``(C*depth_multiplier,)``: kh*kw*C*dm + C*dm parameters.
    """

    arguments = {
        "kernel_size": _KERNEL_SIZE,
        "strides": _STRIDES,
        "padding": _PADDING,
        "depth_multiplier": _DEPTH_MULTIPLIER,
        "data_format": _DATA_FORMAT,
        "dilation_rate": _DILATION,
        "activation": _ACTIVATION,
        "use_bias": _USE_BIAS,
        "depthwise_initializer": _initializer("depthwise kernel init"),
        "bias_initializer": Arg(choice(*INITIALIZERS), "zeros", "bias init"),
    }

    def output_shape(self, input_shape: Shape) -> Shape:
        return (*self._spatial_out(input_shape), input_shape[-1] * self.depth_multiplier)

    def param_shapes(self, input_shape: Shape) -> list[ParamSpec]:
        params = [ParamSpec("kernel", self._depthwise_shape(input_shape))]
        if self.use_bias:
            params.append(ParamSpec("bias", (input_shape[-1] * self.depth_multiplier,)))
        return params

    def macs(self, input_shape: Shape) -> int:
        return self._depthwise_macs(input_shape)

    def explain(self, input_shape: Shape) -> str:
        c, dm = input_shape[-1], self.depth_multiplier
        kernel = "x".join(map(str, self.kernel_size))
        total = sum(p.size for p in self.param_shapes(input_shape))
        formula = f"{kernel}x{c}x{dm}" + (f" + {c * dm}" if self.use_bias else "")
        words = (
            f"a {kernel} kernel for each of {c} input channel{'s' if c != 1 else ''} x "
            f"{dm} output{'s' if dm != 1 else ''} per channel"
        )
        words += f", plus {c * dm} biases" if self.use_bias else ", no bias"
        return f"{formula} = {total:,}: {words}"

    def build(self, input_shape: Shape, rng: Any) -> None:
        from nbcnn.layers.initializers import initialize

        super().build(input_shape, rng)
        specs = self.param_shapes(input_shape)
        self.params = {"kernel": initialize(self.depthwise_initializer, specs[0].shape, rng)}
        if self.use_bias:
            self.params["bias"] = initialize(self.bias_initializer, specs[1].shape, rng)
        self._build_padding(input_shape)

    def forward(self, x, training=False):
        y = self._depthwise_forward(x, self.params["kernel"], self.params.get("bias"))
        if training:
            self._x = x
        return self.activate(y, training)

    def backward(self, dy):
        dz = self.activation_grad(dy)
        dx, dw, db = self._depthwise_backward(dz, self._x, self.params["kernel"])
        self.grads = {"kernel": dw}
        if self.use_bias:
            self.grads["bias"] = db
        return dx


class SeparableConv2D(_Depthwise):
    """A depthwise convolution followed by a 1x1 (pointwise) convolution to ``filters``.

    ``(H, W, C)`` -> ``(OH, OW, filters)``. Weights in Keras's order: depthwise_kernel
    ``(kh, kw, C, dm)``, pointwise_kernel ``(1, 1, C*dm, filters)``, bias ``(filters,)``:
    kh*kw*C*dm + C*dm*filters + filters parameters. The bias and activation come after the
    pointwise step only, as in Keras.
    """

    arguments = {
        "filters": Arg(positive_int, doc="number of output channels"),
        "kernel_size": _KERNEL_SIZE,
        "strides": _STRIDES,
        "padding": _PADDING,
        "data_format": _DATA_FORMAT,
        "dilation_rate": _DILATION,
        "depth_multiplier": _DEPTH_MULTIPLIER,
        "activation": _ACTIVATION,
        "use_bias": Arg(boolean, True, "add one bias per filter"),
        "depthwise_initializer": _initializer("depthwise kernel init"),
        "pointwise_initializer": _initializer("pointwise kernel init"),
        "bias_initializer": Arg(choice(*INITIALIZERS), "zeros", "bias init"),
    }

    def output_shape(self, input_shape: Shape) -> Shape:
        return (*self._spatial_out(input_shape), self.filters)

    def param_shapes(self, input_shape: Shape) -> list[ParamSpec]:
        inner = input_shape[-1] * self.depth_multiplier
        params = [
            ParamSpec("depthwise_kernel", self._depthwise_shape(input_shape)),
            ParamSpec("pointwise_kernel", (1, 1, inner, self.filters)),
        ]
        if self.use_bias:
            params.append(ParamSpec("bias", (self.filters,)))
        return params

    def macs(self, input_shape: Shape) -> int:
        oh, ow = self._spatial_out(input_shape)
        inner = input_shape[-1] * self.depth_multiplier
        return self._depthwise_macs(input_shape) + oh * ow * inner * self.filters

    def explain(self, input_shape: Shape) -> str:
        c, dm, f = input_shape[-1], self.depth_multiplier, self.filters
        kernel = "x".join(map(str, self.kernel_size))
        total = sum(p.size for p in self.param_shapes(input_shape))
        formula = f"{kernel}x{c}x{dm} + {c * dm}x{f}" + (f" + {f}" if self.use_bias else "")
        words = (
            f"depthwise {kernel} kernels ({dm} per input channel), then a pointwise 1x1 "
            f"kernel from {c * dm} to {f} channels"
        )
        words += f", plus {f} biases" if self.use_bias else ", no bias"
        return f"{formula} = {total:,}: {words}"

    def build(self, input_shape: Shape, rng: Any) -> None:
        from nbcnn.layers.initializers import initialize

        super().build(input_shape, rng)
        specs = {p.name: p.shape for p in self.param_shapes(input_shape)}
        self.params = {
            "depthwise_kernel": initialize(
                self.depthwise_initializer, specs["depthwise_kernel"], rng
            ),
            "pointwise_kernel": initialize(
                self.pointwise_initializer, specs["pointwise_kernel"], rng
            ),
        }
        if self.use_bias:
            self.params["bias"] = initialize(self.bias_initializer, specs["bias"], rng)
        self._build_padding(input_shape)

    def forward(self, x, training=False):
        # Depthwise in the plugin's numba loops, then the pointwise step as nbcnn's 1x1
        # convolution (its engine's micro-kernels, bias and ReLU in the tile's epilogue): no
        # BLAS, whose threads fought numba's OpenMP workers for the cores (this layer's
        # backward measured 3.8 ms in one profile_step run of mobilenet_digits, 43 ms in
        # another, with np.matmul).
        from nbcnn.kernels import conv2d_forward

        inner = self._depthwise_forward(x, self.params["depthwise_kernel"], None)
        relu = self.activation == "relu"
        z = conv2d_forward(
            inner, self.params["pointwise_kernel"], self.params.get("bias"), (1, 1), (1, 1),
            ((0, 0), (0, 0)), relu=relu,
        )  # fmt: skip
        if training:
            self._x, self._inner, self._relu_out = x, inner, (z if relu else None)
        return z if relu else self.activate(z, training)

    def backward(self, dy):
        from nbcnn.kernels import conv2d_backward

        dz = dy if self._relu_out is not None else self.activation_grad(dy)
        pointwise = self.params["pointwise_kernel"]
        d_inner, dw_point, db = conv2d_backward(
            dz, self._inner, pointwise, (1, 1), (1, 1), ((0, 0), (0, 0)), relu_output=self._relu_out
        )
        self.grads = {"pointwise_kernel": dw_point}
        if self.use_bias:
            self.grads["bias"] = db
        dx, dw, _ = self._depthwise_backward(d_inner, self._x, self.params["depthwise_kernel"])
        self.grads["depthwise_kernel"] = dw
        return dx
