"""The same model in PyTorch, with nbcnn's weights copied in, for speed and gradient checks.

PyTorch runs channels-first (N, C, H, W), its default; the translated model permutes to
channels-last just before Flatten so that Dense weights (and so every output and gradient)
match nbcnn's exactly. Symmetric padding goes into the convolution; Keras's asymmetric 'same'
split (a stride-2 'same' convolution pads 0 before and 1 after) becomes an explicit ``F.pad``.
A graph model (``inputs:``, docs/graphs.md) becomes a :class:`Graph` that follows
``model.inputs``; Add and Concatenate are translated.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from nbcnn.model import Sequential


class Pad(nn.Module):
    """Explicit ((top, bottom), (left, right)) padding: Keras's asymmetric 'same' split."""

    def __init__(self, pads, value=0.0):
        super().__init__()
        (top, bottom), (left, right) = pads
        self.pad = (left, right, top, bottom)
        self.value = value

    def forward(self, x):
        return functional.pad(x, self.pad, value=self.value) if any(self.pad) else x


class ChannelsLast(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class Merge(nn.Module):
    """A merging layer on a list of channels-first tensors: Add, or Concatenate along ``dim``."""

    def __init__(self, kind: str, dim: int = 1):
        super().__init__()
        if kind not in ("Add", "Concatenate"):
            raise NotImplementedError(f"{kind} has no PyTorch translation here")
        self.kind = kind
        self.dim = dim

    def forward(self, xs):
        return torch.cat(xs, dim=self.dim) if self.kind == "Concatenate" else sum(xs[1:], xs[0])


class Graph(nn.Module):
    """A graph model (``model.inputs``): each layer's modules run on its producers' outputs in
    nbcnn's order, and an output is dropped after its last consumer, as nbcnn does. Parameters
    come in nbcnn's order (layer by layer), as ``to_torch``'s Sequential gives them."""

    def __init__(self, model: Sequential):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(*layer_modules(layer, s_in))
            for layer, (s_in, _) in zip(model.layers, model.shapes)
        )
        self.inputs = [tuple(producers) for producers in model.inputs]
        self.last_use = {j: i for i, producers in enumerate(self.inputs) for j in producers}

    def forward(self, x):
        values = {-1: x}  # nbcnn.graph.INPUT
        for i, (step, producers) in enumerate(zip(self.layers, self.inputs)):
            given = [values[j] for j in producers]
            many = isinstance(step[0], Merge)
            values[i] = step(given if many else given[0])
            for j in producers:
                if self.last_use[j] == i:
                    values.pop(j, None)
        return values[len(self.layers) - 1]


def to_torch(model: Sequential):
    """A ``torch.nn.Sequential`` (a :class:`Graph` for a graph model) computing what ``model``
    computes, with its weights."""
    if model.is_graph:
        return Graph(model)
    modules = []
    for layer, (s_in, _) in zip(model.layers, model.shapes):
        modules += layer_modules(layer, s_in)
    # The last softmax is fused into the loss, as nbcnn does (nn.CrossEntropyLoss on logits).
    return nn.Sequential(*modules)


def layer_modules(layer, s_in) -> list:
    """The torch modules computing one nbcnn layer (its weights copied) on channels-first
    input; ``s_in`` is the layer's input shape (a list of them for a merging layer)."""
    modules = []
    kind = type(layer).__name__
    if kind in ("Add", "Concatenate"):
        rank = len(s_in[0])
        axis = layer._sample_axis(rank) if kind == "Concatenate" else 0
        # A sample's channels-last axis in channels-first (N, C, H, W): C is 1, H 2, W 3.
        dim = {0: 2, 1: 3, 2: 1}[axis] if rank == 3 else axis + 1
        return [Merge(kind, dim)]
    spatial = len(s_in) == 3
    if kind == "Conv2D":
        (top, bottom), (left, right) = layer._pads
        # Symmetric padding goes into the convolution, as a PyTorch model writes it; only
        # Keras's uneven 'same' split (stride 2) needs the explicit pad, a copy.
        even = top == bottom and left == right
        conv = nn.Conv2d(
            s_in[-1],
            layer.filters,
            layer.kernel_size,
            layer.strides,
            padding=(top, left) if even else 0,
            dilation=layer.dilation_rate,
            bias=layer.use_bias,
        )
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(layer.params["kernel"].transpose(3, 2, 0, 1)))
            if layer.use_bias:
                conv.bias.copy_(torch.from_numpy(layer.params["bias"]))
        modules += [conv] if even else [Pad(layer._pads), conv]
    elif kind in ("MaxPooling2D", "AveragePooling2D"):
        if kind == "MaxPooling2D":
            modules += [
                Pad(layer._pads, value=float("-inf")),
                nn.MaxPool2d(layer.pool_size, layer.strides),
            ]
        elif any(p for pair in layer._pads for p in pair):
            raise NotImplementedError("AveragePooling2D with 'same' padding")
        else:
            modules.append(nn.AvgPool2d(layer.pool_size, layer.strides))
    elif kind == "Flatten":
        modules += [ChannelsLast(), nn.Flatten()] if spatial else [nn.Flatten()]
    elif kind == "GlobalAveragePooling2D":
        modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    elif kind == "Dense":
        dense = nn.Linear(s_in[-1], layer.units, bias=layer.use_bias)
        with torch.no_grad():
            dense.weight.copy_(torch.from_numpy(layer.params["kernel"].T.copy()))
            if layer.use_bias:
                dense.bias.copy_(torch.from_numpy(layer.params["bias"]))
        modules.append(dense)
    elif kind == "BatchNormalization":
        bn = nn.BatchNorm2d(s_in[-1], eps=layer.epsilon, momentum=1 - layer.momentum)
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy(layer.params["gamma"]))
            bn.bias.copy_(torch.from_numpy(layer.params["beta"]))
        modules.append(bn)
    elif kind == "Dropout":
        modules.append(nn.Dropout(layer.rate))
    elif kind != "Activation":
        raise NotImplementedError(f"{kind} has no PyTorch translation here")
    activation = getattr(layer, "activation", None)
    if activation not in (None, "linear", "softmax"):
        modules.append({"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}[activation])
    return modules


def nchw(x: np.ndarray):
    """A channels-last batch as a contiguous channels-first torch tensor."""

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
