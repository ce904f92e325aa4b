"""Layer fusion: which neighbouring layers a model runs as one step, and that step.

A Sequential model runs its layers one by one, except where a built-in ``Conv2D`` or
``Conv1D`` with ``activation='relu'`` is followed by a built-in max pooling of the same rank
whose windows tile the input (strides = pool_size, no padding). That pair runs as one
:class:`ConvReluMaxPool` step through ``nbcnn/kernels/fused.py``: the convolution's full-size
output is never stored. The results are those of the two layers run one after the other (the
same sums and tie rule; tests/test_fusion.py checks it), so fusion is invisible except in speed.
A convolution without activation followed by a BatchNormalization runs as one
:class:`ConvBatchNorm` step: at inference the normalization is folded into the convolution's
weights and bias (one convolution instead of a convolution and a normalization pass); in
training the two layers run as they are. A convolution (linear, ReLU or ReLU6) followed by
an average pooling whose windows tile its output runs as one :class:`ConvAvgPool` step: at
inference on the engine the windows are averaged in the micro-kernel's epilogue (the same
sums in the same order as the two layers), and the convolution's output is never stored; in
training the two layers run as they are.

Layers from plugins are never fused; calling a layer's own forward (feature maps, the testing
kit) runs it alone, as always.
"""

from __future__ import annotations

import math
from typing import Any

from nbcnn import graph
from nbcnn.layers.base import Layer
from nbcnn.layers.conv import Conv1D, Conv2D
from nbcnn.layers.core import Activation
from nbcnn.layers.normalization import BatchNormalization
from nbcnn.layers.pooling import AveragePooling1D, AveragePooling2D, MaxPooling1D, MaxPooling2D

_POOL_OF = {Conv2D: MaxPooling2D, Conv1D: MaxPooling1D}
_AVERAGE_OF = {Conv2D: AveragePooling2D, Conv1D: AveragePooling1D}


def fusable(conv: Layer, pool: Layer) -> bool:
    """Whether ``conv`` then ``pool`` (built layers) can run as one ConvReluMaxPool step."""
    from nbcnn.kernels.fused import MAX_WINDOW

    return (
        type(conv) in _POOL_OF
        and type(pool) is _POOL_OF[type(conv)]
        and conv.activation == "relu"
        and tuple(pool.strides) == tuple(pool.pool_size)
        and not any(any(side) for side in pool._pads)
        and math.prod(pool.pool_size) <= MAX_WINDOW
    )


class ConvReluMaxPool:
    """One step for ``conv`` (ReLU) then ``pool``: the layers' forward/backward contract.

    ``forward(x, training)`` takes the conv's input and returns the pool's output;
    ``backward(dy)`` takes the gradient w.r.t. the pool's output, fills ``conv.grads`` and
    returns the gradient w.r.t. the conv's input (None when ``conv.input_grad_needed`` is
    False). ``index`` is the conv's position in the model, for error messages.
    """

    def __init__(self, index: int, conv: Layer, pool: Layer):
        self.index, self.conv, self.pool = index, conv, pool
        self.layers = (conv, pool)

    def forward(self, x: Any, training: bool = False) -> Any:
        from nbcnn.kernels.fused import conv_relu_maxpool_forward

        conv = self.conv
        x4 = conv._as_4d(x)
        w, strides, dilation, pads = conv._kernel_args()
        pooled, code, cols = conv_relu_maxpool_forward(
            x4,
            w,
            conv.params.get("bias"),
            strides,
            dilation,
            pads,
            self.pool._as_2d(self.pool.pool_size),
            return_cols=True,
        )
        if training:
            self._saved = (x4, pooled, code, cols)
        return pooled.reshape(x.shape[0], *self.pool.out_shape)

    def backward(self, dy: Any) -> Any:
        from nbcnn.kernels.fused import conv_relu_maxpool_backward

        conv = self.conv
        x4, pooled, code, cols = self._saved
        self._saved = (x4, pooled, code, None)  # the backward overwrites the columns
        w, strides, dilation, pads = conv._kernel_args()
        dx, dw, db = conv_relu_maxpool_backward(
            dy.reshape(pooled.shape),
            x4,
            w,
            pooled,
            code,
            strides,
            dilation,
            pads,
            self.pool._as_2d(self.pool.pool_size),
            need_dx=conv.input_grad_needed,
            cols=cols,
        )
        conv._store_grads(dw, db)
        return None if dx is None else dx.reshape(dy.shape[0], *conv.input_shape)


def foldable(conv: Layer, norm: Layer) -> bool:
    """Whether ``conv`` then ``norm`` (built layers) can run as one ConvBatchNorm step: a
    built-in convolution without activation (or 'linear'), then a built-in
    BatchNormalization."""
    return (
        type(conv) in _POOL_OF
        and conv.activation in (None, "linear")
        and type(norm) is BatchNormalization
    )


def relu_after(norm: Layer, act: Layer) -> bool:
    """Whether ``act`` is a built-in Activation('relu') that a ConvBatchNorm step can apply
    in its normalization pass (training) or in the folded convolution's epilogue."""
    # Not one whose activation the loss applies (fused_activation: its forward returns logits).
    return type(act) is Activation and act.activation == "relu" and not act.fused_activation


class ConvBatchNorm:
    """``conv`` (no activation) then ``norm`` (BatchNormalization), and ``act`` when it is a
    ReLU Activation right after them (ResNet's conv -> BN -> ReLU), as one step.

    At inference the normalization is folded into the convolution: with
    ``s = gamma / sqrt(moving_variance + epsilon)`` (as BatchNormalization computes it),
    ``w' = w * s`` and ``b' = (b - moving_mean) * s + beta``, one convolution produces the
    normalized output, and the convolution's output is never stored or read again. The sums
    are those of the layers up to float32 rounding of the folded weights (a few ulps:
    tests/test_fusion.py bounds it); a ReLU after them runs in the convolution's epilogue. In
    training the layers run one after the other (batch statistics cannot be folded), the
    ReLU inside the normalization's pass and its mask inside the normalization's backward
    (bit for bit the layers': the same operations, two NumPy passes fewer each way: ReLU's
    forward and its masked gradient ran single-threaded, 11% of a ResNet-20 step on two
    threads).
    """

    def __init__(self, index: int, conv: Layer, norm: Layer, act: Layer | None = None):
        self.index, self.conv, self.norm, self.act = index, conv, norm, act
        self.layers = (conv, norm) if act is None else (conv, norm, act)

    def folded(self) -> tuple[Any, Any]:
        """``(w', b')``: the kernel (2-D form) and bias with the normalization folded in."""
        import numpy as np

        conv, norm = self.conv, self.norm
        w = conv._kernel_args()[0]
        filters = w.shape[-1]
        gamma = norm.params.get("gamma", np.ones(filters, np.float32))
        beta = norm.params.get("beta", np.zeros(filters, np.float32))
        scale = gamma / np.sqrt(norm.params["moving_variance"] + np.float32(norm.epsilon))
        bias = conv.params.get("bias", np.zeros(filters, np.float32))
        folded_bias = (bias - norm.params["moving_mean"]) * scale + beta
        return (w * scale).astype(np.float32), folded_bias.astype(np.float32)

    def forward(self, x: Any, training: bool = False) -> Any:
        relu = self.act is not None
        if training:
            z = self.conv.forward(x, training=True)
            return self.norm.forward(z, training=True, relu=relu)
        from nbcnn.kernels.conv import conv2d_forward

        conv = self.conv
        _, strides, dilation, pads = conv._kernel_args()
        w, b = self.folded()
        activation = "relu" if relu else None
        y = conv2d_forward(conv._as_4d(x), w, b, strides, dilation, pads, activation=activation)
        return y.reshape(x.shape[0], *conv.out_shape)

    def backward(self, dy: Any) -> Any:
        return self.conv.backward(self.norm.backward(dy, relu=self.act is not None))


def averageable(conv: Layer, pool: Layer) -> bool:
    """Whether ``conv`` then ``pool`` (built layers) can run as one ConvAvgPool step: a
    built-in convolution whose activation the tile applies (none, ReLU, ReLU6), then the
    built-in average pooling of its rank with windows that tile the input (strides =
    pool_size, no padding)."""
    from nbcnn.kernels.fused import MAX_WINDOW

    return (
        type(conv) in _AVERAGE_OF
        and type(pool) is _AVERAGE_OF[type(conv)]
        and conv.activation in (None, "linear", "relu", "relu6")
        and tuple(pool.strides) == tuple(pool.pool_size)
        and not any(any(side) for side in pool._pads)
        and math.prod(pool.pool_size) <= MAX_WINDOW
    )


class ConvAvgPool:
    """``conv`` then ``pool`` (average) as one step.

    At inference, on the engine, ``engine.conv_avgpool`` averages each window while the
    convolution's tile is in registers: only the pooled output is stored, and it equals the
    two layers' output bit for bit (the same products, activation, sums in window order and
    scale; tests/test_fusion.py). Where no tile holds a whole window, with ``NBCNN_CONV=blas``
    and in training (the backward of a ReLU needs every cell's output), the two layers run
    one after the other, and the backward is theirs.
    """

    def __init__(self, index: int, conv: Layer, pool: Layer):
        self.index, self.conv, self.pool = index, conv, pool
        self.layers = (conv, pool)

    def forward(self, x: Any, training: bool = False) -> Any:
        from nbcnn.kernels.fused import conv_avgpool_forward

        pooled = None
        if not training:
            conv = self.conv
            w, strides, dilation, pads = conv._kernel_args()
            pooled = conv_avgpool_forward(
                conv._as_4d(x), w, conv.params.get("bias"), strides, dilation, pads,
                self.pool._as_2d(self.pool.pool_size), conv.activation,
            )  # fmt: skip
        if pooled is None:
            return self.pool.forward(self.conv.forward(x, training), training)
        return pooled.reshape(x.shape[0], *self.pool.out_shape)

    def backward(self, dy: Any) -> Any:
        return self.conv.backward(self.pool.backward(dy))


def plan(layers: list[Layer], inputs: list[tuple[int, ...]] | None = None) -> list[tuple[int, Any]]:
    """The steps a model runs: ``(index of the step's first layer, step)``, where a step is a
    layer or a :class:`ConvReluMaxPool`, :class:`ConvBatchNorm` or :class:`ConvAvgPool`
    standing for two. In a graph (``inputs``, nbcnn.graph) two layers fuse only when the
    second takes the first's output and no other layer does."""
    steps: list[tuple[int, Any]] = []
    inputs = [(i - 1,) for i in range(len(layers))] if inputs is None else inputs
    takers = graph.consumers(inputs)

    def pair(i: int) -> bool:
        return i + 1 < len(layers) and inputs[i + 1] == (i,) and takers[i] == [i + 1]

    i = 0
    while i < len(layers):
        if pair(i) and fusable(layers[i], layers[i + 1]):
            steps.append((i, ConvReluMaxPool(i, layers[i], layers[i + 1])))
            i += 2
        elif pair(i) and foldable(layers[i], layers[i + 1]):
            if pair(i + 1) and relu_after(layers[i + 1], layers[i + 2]):
                steps.append((i, ConvBatchNorm(i, layers[i], layers[i + 1], layers[i + 2])))
                i += 3
            else:
                steps.append((i, ConvBatchNorm(i, layers[i], layers[i + 1])))
                i += 2
        elif pair(i) and averageable(layers[i], layers[i + 1]):
            steps.append((i, ConvAvgPool(i, layers[i], layers[i + 1])))
            i += 2
        else:
            steps.append((i, layers[i]))
            i += 1
    return steps
