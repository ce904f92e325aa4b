"""Export a built Sequential model to ONNX (the ``onnx`` package, an optional extra).

The graph takes ``input : (N, *input_shape) float32``, channels-last like Keras and nbcnn, and
gives ``output : (N, *output_shape)``. Tensors stay channels-last between layers, so Flatten,
Dense and Reshape need no reordering and flatten in the same order as nbcnn's Dense weights;
Conv and pooling nodes, which ONNX defines channels-first, are wrapped in a Transpose pair
(ONNX Runtime's optimiser cancels the Transposes that meet between two such layers).

Choices made for exact outputs:

* 'same' and 'causal' padding become the explicit, asymmetric ``pads`` nbcnn computes
  (Keras's split, smaller half first), never ``auto_pad``;
* average pooling counts only real cells (``count_include_pad=0``), as nbcnn and Keras do;
* BatchNormalization is its inference form with the moving statistics, applied per channel on
  the last axis exactly as nbcnn computes it: ``(x - mean) * (gamma / sqrt(var + eps)) + beta``;
* Rescaling is ``x * scale + offset``; Normalization ``(x - mean) / std`` with its (adapted or
  given) statistics as constants, so the exported model takes raw inputs as nbcnn's does;
* Dropout is the identity; UpSampling2D repeats rows and columns with Reshape/Expand/Reshape.

Graph models (nbcnn/graph.py) export as the same graph: each layer's nodes read the output
tensors of the layers its ``inputs`` name (``input`` for the model's input), and a merging
layer's exporter receives the list of their names. Add, Subtract and Multiply become chains of
the binary ONNX op, Average ``Mean``, Maximum ``Max``, Minimum ``Min``; Concatenate is a
``Concat`` along nbcnn's own axis, the layout being channels-last. Keras's broadcasting aligns
sample shapes at their last axis, ONNX's whole tensors, batch axis included, so an input of
lower rank first gets its axes of 1 after the batch axis (``Unsqueeze``), as nbcnn does.

Plugins export their own layers by defining ``to_onnx(self, builder, input_name) ->
output_name`` on the layer class (``input_names``, a list, for a merging layer; see
:class:`OnnxBuilder` and docs/onnx.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nbcnn.errors import DataError
from nbcnn.graph import INPUT, takes_many
from nbcnn.layers import conv, core, merging, normalization, pooling, preprocessing, reshaping

#: Default opset: 17 has every op used here with the attribute forms used here.
OPSET = 17
#: IR version 8 goes with opset 17 and loads in every ONNX Runtime since 1.11.
IR_VERSION = 8
ONNX_HINT = "pip install 'nbcnn[onnx]'"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise DataError(f"exporting to ONNX needs the onnx package: {ONNX_HINT}") from None
    return onnx


class OnnxBuilder:
    """The graph under construction, handed to each layer's exporter.

    A layer exporter (built-in, or a plugin's ``to_onnx(self, builder, input_name)``) reads its
    input tensor by name, adds nodes and constant tensors through this builder and returns the
    name of its output tensor. Tensors between layers are channels-last, shaped ``(N,
    *layer.input_shape)`` and ``(N, *layer.out_shape)``; a merging layer reads a list of
    names, one per input, shaped ``(N, *layer.input_shape[k])``.

    Methods
    -------
    node(op, inputs, **attributes) -> str : add one node, return its (fresh) output name.
    constant(array, hint) -> str : add an initializer (float arrays become float32).
    channels_first(name, rank) / channels_last(name, rank) : Transpose between NHWC and NCHW
        layouts for a tensor of ``rank`` axes, batch included.
    activation(name, activation) -> str : one of nbcnn's activation names (None = identity).
    opset : the opset version being written.
    """

    def __init__(self, opset: int = OPSET):
        onnx = _onnx()
        self.helper = onnx.helper
        self.numpy_helper = onnx.numpy_helper
        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._used: set[str] = {"input", "output"}
        self.prefix = ""

    def fresh(self, hint: str) -> str:
        """A tensor name not used yet, built from ``hint`` (and the current layer's name)."""
        base = f"{self.prefix}/{hint}" if self.prefix else hint
        name, i = base, 1
        while name in self._used:
            name, i = f"{base}_{i}", i + 1
        self._used.add(name)
        return name

    def node(self, op: str, inputs: Sequence[str], **attributes: Any) -> str:
        out = self.fresh(op.lower())
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], name=out, **attributes))
        return out

    def constant(self, array: Any, hint: str = "const") -> str:
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32)
        name = self.fresh(hint)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def channels_first(self, name: str, rank: int) -> str:
        """``(N, *spatial, C)`` -> ``(N, C, *spatial)``."""
        return self.node("Transpose", [name], perm=[0, rank - 1, *range(1, rank - 1)])

    def channels_last(self, name: str, rank: int) -> str:
        """``(N, C, *spatial)`` -> ``(N, *spatial, C)``."""
        return self.node("Transpose", [name], perm=[0, *range(2, rank), 1])

    def activation(self, name: str, activation: str | None) -> str:
        if activation in (None, "linear"):
            return name
        simple = {
            "relu": "Relu",
            "sigmoid": "Sigmoid",
            "tanh": "Tanh",
            "softplus": "Softplus",
        }
        if activation in simple:
            return self.node(simple[activation], [name])
        if activation == "relu6":
            low = self.constant(np.float32(0), "zero")
            high = self.constant(np.float32(6), "six")
            return self.node("Clip", [name, low, high])
        if activation == "softmax":
            return self.node("Softmax", [name], axis=-1)
        if activation == "elu":
            return self.node("Elu", [name], alpha=1.0)
        if activation == "swish":
            return self.node("Mul", [name, self.node("Sigmoid", [name])])
        raise DataError(f"activation {activation!r} has no ONNX export")


# --------------------------------------------------------------------- built-in layers


def _onnx_pads(pads: Sequence[tuple[int, int]]) -> list[int]:
    """((before, after), ...) per spatial axis -> ONNX's [begins..., ends...]."""
    return [p[0] for p in pads] + [p[1] for p in pads]


def _conv(layer: conv._Conv, b: OnnxBuilder, x: str) -> str:
    rank = layer.rank
    w = layer.params["kernel"]  # (*kernel, C, F) -> ONNX (F, C, *kernel)
    weight = b.constant(w.transpose(rank + 1, rank, *range(rank)), "kernel")
    inputs = [b.channels_first(x, rank + 2), weight]
    if layer.use_bias:
        inputs.append(b.constant(layer.params["bias"], "bias"))
    y = b.node(
        "Conv",
        inputs,
        kernel_shape=list(layer.kernel_size),
        strides=list(layer.strides),
        dilations=list(layer.dilation_rate),
        pads=_onnx_pads(layer._pads[-rank:]),  # Conv1D keeps its pads in the 2-D form (H = 1)
    )
    return b.activation(b.channels_last(y, rank + 2), layer.activation)


def _pool(layer: pooling._Pool, b: OnnxBuilder, x: str) -> str:
    rank = layer.rank
    attributes = {
        "kernel_shape": list(layer.pool_size),
        "strides": list(layer.strides),
        "pads": _onnx_pads(layer._pads[-rank:]),
    }
    if layer.mode == "max":
        op = "MaxPool"
    else:
        op, attributes["count_include_pad"] = "AveragePool", 0
    y = b.node(op, [b.channels_first(x, rank + 2)], **attributes)
    return b.channels_last(y, rank + 2)


def _global_pool(layer: pooling._GlobalPool, b: OnnxBuilder, x: str) -> str:
    op = "ReduceMax" if layer.mode == "max" else "ReduceMean"
    axes = list(range(1, len(layer.input_shape)))
    keepdims = int(layer.keepdims)
    if b.opset >= 18:  # axes became an input in opset 18
        return b.node(op, [x, b.constant(np.array(axes, np.int64), "axes")], keepdims=keepdims)
    return b.node(op, [x], axes=axes, keepdims=keepdims)


def _dense(layer: core.Dense, b: OnnxBuilder, x: str) -> str:
    y = b.node("MatMul", [x, b.constant(layer.params["kernel"], "kernel")])
    if layer.use_bias:
        y = b.node("Add", [y, b.constant(layer.params["bias"], "bias")])
    return b.activation(y, layer.activation)


def _batch_norm(layer: normalization.BatchNormalization, b: OnnxBuilder, x: str) -> str:
    # The same float32 arithmetic as BatchNormalization.forward(training=False).
    c = layer.input_shape[-1]
    gamma = layer.params.get("gamma", np.ones(c, np.float32))
    beta = layer.params.get("beta", np.zeros(c, np.float32))
    inv = gamma / np.sqrt(layer.params["moving_variance"] + np.float32(layer.epsilon))
    y = b.node("Sub", [x, b.constant(layer.params["moving_mean"], "moving_mean")])
    y = b.node("Mul", [y, b.constant(inv, "inv_std")])
    return b.node("Add", [y, b.constant(beta, "beta")])


def _rescaling(layer: preprocessing.Rescaling, b: OnnxBuilder, x: str) -> str:
    y = b.node("Mul", [x, b.constant(np.float32(layer.scale), "scale")])
    return b.node("Add", [y, b.constant(np.float32(layer.offset), "offset")])


def _normalization(layer: preprocessing.Normalization, b: OnnxBuilder, x: str) -> str:
    # The same float32 arithmetic as Normalization.forward: (x - mean) / std.
    mean, std = layer.statistics()
    y = b.node("Sub", [x, b.constant(mean, "mean")])
    return b.node("Div", [y, b.constant(std, "std")])


def _reshape_to(b: OnnxBuilder, x: str, shape: Sequence[int]) -> str:
    return b.node("Reshape", [x, b.constant(np.array([-1, *shape], np.int64), "shape")])


def _zero_padding(layer: reshaping.ZeroPadding2D, b: OnnxBuilder, x: str) -> str:
    (top, bottom), (left, right) = layer.padding
    pads = np.array([0, top, left, 0, 0, bottom, right, 0], np.int64)
    return b.node("Pad", [x, b.constant(pads, "pads")], mode="constant")


def _cropping(layer: reshaping.Cropping2D, b: OnnxBuilder, x: str) -> str:
    (top, _), (left, _) = layer.cropping
    h, w, _ = layer.out_shape
    starts = b.constant(np.array([top, left], np.int64), "starts")
    ends = b.constant(np.array([top + h, left + w], np.int64), "ends")
    axes = b.constant(np.array([1, 2], np.int64), "axes")
    return b.node("Slice", [x, starts, ends, axes])


def _upsampling(layer: reshaping.UpSampling2D, b: OnnxBuilder, x: str) -> str:
    # (N, H, W, C) -> (N, H, 1, W, 1, C) -> broadcast to (N, H, sh, W, sw, C) -> (N, H*sh, ...):
    # each row and column repeated, exactly nearest-neighbour upsampling by whole factors.
    h, w, c = layer.input_shape
    sh, sw = layer.size
    y = _reshape_to(b, x, (h, 1, w, 1, c))
    y = b.node("Expand", [y, b.constant(np.array([1, 1, sh, 1, sw, 1], np.int64), "repeats")])
    return _reshape_to(b, y, layer.out_shape)


#: ``(layer, builder, input) -> output name``; ``input`` is a list of names for merging layers.
Exporter = Callable[[Any, OnnxBuilder, Any], str]


def _ranked(layer: merging._Elementwise, b: OnnxBuilder, xs: Sequence[str]) -> list[str]:
    """Each input with axes of 1 after its batch axis up to the output's rank: Keras's
    alignment at the last axis (merging.py), which ONNX's would do at the batch axis."""
    rank = len(layer.out_shape)
    ranked = []
    for x, shape in zip(xs, layer.input_shape):
        missing = rank - len(shape)
        if missing:
            axes = b.constant(np.arange(1, 1 + missing, dtype=np.int64), "axes")
            x = b.node("Unsqueeze", [x, axes])
        ranked.append(x)
    return ranked


def _fold(op: str) -> Exporter:
    """An elementwise merge as a chain of a binary op, in nbcnn's order: ((x0 op x1) op x2)."""

    def export(layer: merging._Elementwise, b: OnnxBuilder, xs: Sequence[str]) -> str:
        ranked = _ranked(layer, b, xs)
        out = ranked[0]
        for x in ranked[1:]:
            out = b.node(op, [out, x])
        return out

    return export


def _variadic(op: str) -> Exporter:
    """An elementwise merge as one ONNX op taking every input (Mean, Max, Min)."""
    return lambda layer, b, xs: b.node(op, _ranked(layer, b, xs))


def _concatenate(layer: merging.Concatenate, b: OnnxBuilder, xs: Sequence[str]) -> str:
    # Tensors are channels-last as in nbcnn, so the axis is nbcnn's own (batch axis included).
    axis = 1 + layer._sample_axis(len(layer.out_shape))
    return b.node("Concat", list(xs), axis=axis)


#: Exporters of the built-in layer classes (exact classes: a subclass may compute otherwise,
#: so it brings its own ``to_onnx``).
EXPORTERS: dict[type, Exporter] = {
    conv.Conv2D: _conv,
    conv.Conv1D: _conv,
    pooling.MaxPooling2D: _pool,
    pooling.AveragePooling2D: _pool,
    pooling.MaxPooling1D: _pool,
    pooling.AveragePooling1D: _pool,
    pooling.GlobalAveragePooling2D: _global_pool,
    pooling.GlobalMaxPooling2D: _global_pool,
    pooling.GlobalAveragePooling1D: _global_pool,
    pooling.GlobalMaxPooling1D: _global_pool,
    core.Dense: _dense,
    core.Flatten: lambda layer, b, x: b.node("Flatten", [x], axis=1),
    core.Activation: lambda layer, b, x: b.activation(x, layer.activation),
    core.Dropout: lambda layer, b, x: b.node("Identity", [x]),
    normalization.BatchNormalization: _batch_norm,
    preprocessing.Rescaling: _rescaling,
    preprocessing.Normalization: _normalization,
    reshaping.ZeroPadding2D: _zero_padding,
    reshaping.Cropping2D: _cropping,
    reshaping.UpSampling2D: _upsampling,
    reshaping.Reshape: lambda layer, b, x: _reshape_to(b, x, layer.out_shape),
    merging.Add: _fold("Add"),
    merging.Subtract: _fold("Sub"),
    merging.Multiply: _fold("Mul"),
    merging.Average: _variadic("Mean"),
    merging.Maximum: _variadic("Max"),
    merging.Minimum: _variadic("Min"),
    merging.Concatenate: _concatenate,
}


def _exporter(layer: Any) -> Exporter | None:
    """The layer class's own ``to_onnx`` hook, else the built-in exporter of its exact class."""
    return getattr(type(layer), "to_onnx", None) or EXPORTERS.get(type(layer))


# --------------------------------------------------------------------- the model


def to_onnx(model: Any, opset: int = OPSET) -> Any:
    """An ``onnx.ModelProto`` computing ``model.predict``; the model is initialised first if it
    has no weights yet. DataError names the first layer that has no exporter."""
    from nbcnn.model import layer_failure, layer_label
    from nbcnn.registry import quote

    onnx = _onnx()
    helper = onnx.helper
    if opset < OPSET:
        raise DataError(f"opset {opset} is too old: nbcnn writes opset {OPSET} or newer")
    model._require_built()
    missing = [(i, layer) for i, layer in enumerate(model.layers) if _exporter(layer) is None]
    if missing:
        i, layer = missing[0]
        raise DataError(
            f"{layer_label(i, layer)} from distribution {model.distributions[i]!r} has no ONNX "
            f"exporter: its class {type(layer).__name__} defines no to_onnx(self, builder, "
            "input_name) (see docs/onnx.md)"
        )
    b = OnnxBuilder(opset)
    tensors = {INPUT: "input"}  # each layer's output tensor, by layer index
    for i, layer in enumerate(model.layers):
        b.prefix = layer.name
        hook = getattr(type(layer), "to_onnx", None)
        given = [tensors[j] for j in model.inputs[i]]
        x = given if takes_many(layer) else given[0]
        try:
            if hook is None:
                out = EXPORTERS[type(layer)](layer, b, x)
            else:
                # A plugin's hook may raise anything (SystemExit too) or return anything:
                # one line naming the layer and its distribution either way.
                out = model.guarded(i, "to_onnx", hook, layer, b, x)
        except DataError as err:
            raise DataError(f"{layer_label(i, layer)}: {err.message}") from None
        if not isinstance(out, str):
            raise layer_failure(
                model, i, "to_onnx", f"returned {quote(out)}; expected its output tensor's name"
            )
        tensors[i] = out
    b.prefix = ""
    last = tensors[len(model.layers) - 1]
    b.nodes.append(helper.make_node("Identity", [last], ["output"], name="output"))
    graph = helper.make_graph(
        b.nodes,
        model.name,
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", *model.input_shape])],
        [
            helper.make_tensor_value_info(
                "output", onnx.TensorProto.FLOAT, ["N", *model.output_shape]
            )
        ],
        initializer=b.initializers,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="nbcnn",
        ir_version=max(IR_VERSION, _ir_for_opset(onnx, opset)),
    )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"the exported graph does not validate: {first}") from None
    return proto


def _ir_for_opset(onnx: Any, opset: int) -> int:
    try:
        return onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    except (ValueError, KeyError):
        return IR_VERSION


def export_onnx(model: Any, path: str | os.PathLike, opset: int = OPSET) -> Any:
    """Write ``to_onnx(model, opset)`` to ``path`` atomically; returns the ModelProto."""
    from nbcnn.io import write_bytes_atomic

    proto = to_onnx(model, opset)
    write_bytes_atomic(path, proto.SerializeToString())
    return proto


def run_onnx(proto_or_path: Any, x: np.ndarray) -> np.ndarray:
    """Run an exported model in ONNX Runtime (CPU) on ``x : (N, *input_shape) float32``."""
    try:
        import onnxruntime
    except ImportError:
        raise DataError(f"running ONNX models needs onnxruntime: {ONNX_HINT}") from None
    source = proto_or_path
    if not isinstance(source, (str, os.PathLike)):
        source = source.SerializeToString()
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": np.ascontiguousarray(x, np.float32)})[0]
