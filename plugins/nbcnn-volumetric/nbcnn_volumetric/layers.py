"""Calculator-only layers: Conv3D, MaxPooling3D, AveragePooling3D and Conv2DTranspose.

They bring shapes, Keras's parameter counts and MACs, but no forward/backward: ``nbcnn
summary`` plans with them, ``nbcnn train`` refuses a model that uses them before training,
naming the layer and this distribution. Pure Python, no numpy or numba imports.

Keras references: ``keras/src/layers/convolutional/conv3d.py``, ``conv2d_transpose.py``,
``keras/src/layers/pooling/max_pooling3d.py`` and, for the transposed output length,
``deconv_output_length`` in ``keras/src/backend/common/backend_utils.py``.
"""

from __future__ import annotations

import math

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

_DATA_FORMAT = Arg(optional(choice("channels_last")), None, "only channels_last")


def _conv_arguments(rank: int) -> dict[str, Arg]:
    return {
        "filters": Arg(positive_int, doc="number of output channels"),
        "kernel_size": Arg(int_tuple(rank), doc="window size"),
        "strides": Arg(int_tuple(rank), (1,) * rank, "step of the window"),
        "padding": Arg(choice("valid", "same"), "valid", "zero padding"),
        "data_format": _DATA_FORMAT,
        "dilation_rate": Arg(int_tuple(rank), (1,) * rank, "spacing of kernel taps"),
        "activation": Arg(optional(choice(*ACTIVATIONS)), None, "applied to the output"),
        "use_bias": Arg(boolean, True, "add one bias per filter"),
        "kernel_initializer": Arg(choice(*INITIALIZERS), "glorot_uniform", "kernel init"),
        "bias_initializer": Arg(choice(*INITIALIZERS), "zeros", "bias init"),
    }


def _refuse_strides_with_dilation(layer: Layer) -> None:
    if max(layer.strides) > 1 and max(layer.dilation_rate) > 1:
        raise ConfigError(
            f"strides {list(layer.strides)} > 1 together with dilation_rate "
            f"{list(layer.dilation_rate)} > 1 is not supported (as in Keras)",
            where="dilation_rate",
        )


def _window_outputs(layer: Layer, input_shape: Shape, kernel, strides, dilation, what: str):
    """Output lengths of a sliding window on each spatial axis, or ShapeError."""
    layer.check_rank(input_shape)
    out = tuple(
        shapes.output_length(n, k, s, layer.padding, d)
        for n, k, s, d in zip(input_shape[:-1], kernel, strides, dilation)
    )
    if min(out) < 1:
        window = [shapes.effective_kernel(k, d) for k, d in zip(kernel, dilation)]
        raise ShapeError(
            f"{what} window {window} is larger than its input {format_shape(input_shape)} "
            f"with padding='{layer.padding}' (use padding='same' or a smaller window)"
        )
    return out


def _grown_field(rf, jump, kernel, strides, dilation=None):
    dilation = dilation or (1,) * len(kernel)
    k_eff = [shapes.effective_kernel(k, d) for k, d in zip(kernel, dilation)]
    new_rf = tuple(r + (k - 1) * j for r, k, j in zip(rf, k_eff, jump))
    return new_rf, tuple(j * s for j, s in zip(jump, strides))


class Conv3D(Layer):
    """3D convolution over ``(D, H, W, C)`` volumes.

    Output ``(OD, OH, OW, filters)``; kernel ``(kd, kh, kw, C/groups, filters)``, bias
    ``(filters,)``: kd*kh*kw*(C/groups)*filters + filters parameters.
    """

    input_rank = 4
    api_version = API_VERSION
    arguments = {
        **_conv_arguments(3),
        "groups": Arg(positive_int, 1, "channel groups; must divide C and filters"),
    }

    def validate(self) -> None:
        _refuse_strides_with_dilation(self)
        if self.filters % self.groups:
            raise ConfigError(
                f"filters ({self.filters}) must be a multiple of groups ({self.groups})",
                where="groups",
            )

    def output_shape(self, input_shape: Shape) -> Shape:
        out = _window_outputs(
            self, input_shape, self.kernel_size, self.strides, self.dilation_rate, "kernel"
        )
        if input_shape[-1] % self.groups:
            raise ShapeError(
                f"the input's {input_shape[-1]} channels are not a multiple of groups "
                f"({self.groups})"
            )
        return (*out, self.filters)

    def param_shapes(self, input_shape: Shape) -> list[ParamSpec]:
        c_in = input_shape[-1] // self.groups
        params = [ParamSpec("kernel", (*self.kernel_size, c_in, self.filters))]
        if self.use_bias:
            params.append(ParamSpec("bias", (self.filters,)))
        return params

    def macs(self, input_shape: Shape) -> int:
        out = self.output_shape(input_shape)
        return math.prod(out) * math.prod(self.kernel_size) * (input_shape[-1] // self.groups)

    def receptive_field(self, input_shape, rf, jump):
        return _grown_field(rf, jump, self.kernel_size, self.strides, self.dilation_rate)

    def explain(self, input_shape: Shape) -> str:
        c_in = input_shape[-1] // self.groups
        kernel = "x".join(map(str, self.kernel_size))
        total = sum(p.size for p in self.param_shapes(input_shape))
        bias = f" + {self.filters}" if self.use_bias else ""
        groups = f" (C/groups = {input_shape[-1]}/{self.groups})" if self.groups > 1 else ""
        return (
            f"{kernel}x{c_in}x{self.filters}{bias} = {total:,}: a {kernel} kernel over "
            f"{c_in} input channel(s){groups} for each of {self.filters} filters"
            + (f", plus {self.filters} biases" if self.use_bias else ", no bias")
        )


class _Pool3D(Layer):
    input_rank = 4
    api_version = API_VERSION
    arguments = {
        "pool_size": Arg(int_tuple(3), (2, 2, 2), "window size"),
        "strides": Arg(optional(int_tuple(3)), None, "step; default pool_size"),
        "padding": Arg(choice("valid", "same"), "valid", "zero padding"),
        "data_format": _DATA_FORMAT,
    }
    what: str

    def _strides(self) -> tuple[int, ...]:
        return self.strides or self.pool_size

    def output_shape(self, input_shape: Shape) -> Shape:
        ones = (1,) * 3
        out = _window_outputs(self, input_shape, self.pool_size, self._strides(), ones, "pool")
        return (*out, input_shape[-1])

    def receptive_field(self, input_shape, rf, jump):
        return _grown_field(rf, jump, self.pool_size, self._strides())

    def explain(self, input_shape: Shape) -> str:
        window = "x".join(map(str, self.pool_size))
        return f"no weights: takes the {self.what} of each {window} window = 0"


class MaxPooling3D(_Pool3D):
    """Maximum of each ``pool_size`` window of a ``(D, H, W, C)`` volume, per channel."""

    what = "max"


class AveragePooling3D(_Pool3D):
    """Mean of each ``pool_size`` window of a ``(D, H, W, C)`` volume, per channel."""

    what = "mean"


def deconv_output_length(
    length: int, kernel: int, padding: str, output_padding: int | None, stride: int, dilation: int
) -> int:
    """Keras's ``deconv_output_length``: the output length of a transposed convolution.

    Without output_padding: 'valid' gives n*s + max(k_eff - s, 0), 'same' gives n*s. With it:
    (n - 1)*s + k_eff - 2*pad + output_padding, pad = k_eff // 2 for 'same', else 0.
    """
    k_eff = shapes.effective_kernel(kernel, dilation)
    if output_padding is None:
        if padding == "valid":
            return length * stride + max(k_eff - stride, 0)
        return length * stride
    pad = k_eff // 2 if padding == "same" else 0
    return (length - 1) * stride + k_eff - 2 * pad + output_padding


class Conv2DTranspose(Layer):
    """Transposed 2D convolution ("deconvolution") over ``(H, W, C)`` inputs.

    Output lengths from Keras's ``deconv_output_length``; kernel ``(kh, kw, filters, C)``
    (note: filters before input channels, as Keras stores it), bias ``(filters,)``:
    kh*kw*filters*C + filters parameters. MACs: every input value is scattered through the
    whole kernel, H*W*C*kh*kw*filters.
    """

    input_rank = 3
    api_version = API_VERSION
    arguments = {
        **_conv_arguments(2),
        "output_padding": Arg(
            optional(int_tuple(2, minimum=0)), None, "extra rows/columns at the bottom/right"
        ),
    }

    def validate(self) -> None:
        _refuse_strides_with_dilation(self)
        if self.output_padding is not None and any(
            p >= s for p, s in zip(self.output_padding, self.strides)
        ):
            # Keras: "Strides ... must be greater than output padding ..."
            raise ConfigError(
                f"each output_padding {list(self.output_padding)} must be smaller than its "
                f"stride {list(self.strides)}",
                where="output_padding",
            )

    def output_shape(self, input_shape: Shape) -> Shape:
        self.check_rank(input_shape)
        pads = self.output_padding or (None, None)
        out = tuple(
            deconv_output_length(n, k, self.padding, p, s, d)
            for n, k, p, s, d in zip(
                input_shape[:2], self.kernel_size, pads, self.strides, self.dilation_rate
            )
        )
        if min(out) < 1:
            raise ShapeError(f"the output {list(out)} would be empty")
        return (*out, self.filters)

    def param_shapes(self, input_shape: Shape) -> list[ParamSpec]:
        params = [ParamSpec("kernel", (*self.kernel_size, self.filters, input_shape[-1]))]
        if self.use_bias:
            params.append(ParamSpec("bias", (self.filters,)))
        return params

    def macs(self, input_shape: Shape) -> int:
        return math.prod(input_shape) * math.prod(self.kernel_size) * self.filters

    def receptive_field(self, input_shape, rf, jump):
        # Outputs are s times denser than inputs (jump / s), and each output gathers about
        # ceil(k_eff / s) input cells per axis.
        k_eff = [
            shapes.effective_kernel(k, d) for k, d in zip(self.kernel_size, self.dilation_rate)
        ]
        new_rf = tuple(
            r + (math.ceil(k / s) - 1) * j for r, k, s, j in zip(rf, k_eff, self.strides, jump)
        )
        return new_rf, tuple(j / s for j, s in zip(jump, self.strides))

    def explain(self, input_shape: Shape) -> str:
        c_in = input_shape[-1]
        kernel = "x".join(map(str, self.kernel_size))
        total = sum(p.size for p in self.param_shapes(input_shape))
        bias = f" + {self.filters}" if self.use_bias else ""
        return (
            f"{kernel}x{self.filters}x{c_in}{bias} = {total:,}: a {kernel} kernel from each of "
            f"{c_in} input channels to {self.filters} filters"
            + (f", plus {self.filters} biases" if self.use_bias else ", no bias")
        )
