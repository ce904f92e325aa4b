"""The same model in PyTorch, with nbcnn's weights copied in, for speed and gradient checks.

PyTorch runs channels-first (N, C, H, W), its default; the translated model permutes to
channels-last just before Flatten so that Dense weights (and so every output and gradient)
match nbcnn's exactly. Keras's asymmetric 'same' padding becomes an explicit ``F.pad``.
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


def to_torch(model: Sequential):
    """A ``torch.nn.Sequential`` computing what ``model`` computes, with its weights."""

    modules = []
    for layer, (s_in, _) in zip(model.layers, model.shapes):
        kind = type(layer).__name__
        spatial = len(s_in) == 3
        if kind == "Conv2D":
            conv = nn.Conv2d(
                s_in[-1],
                layer.filters,
                layer.kernel_size,
                layer.strides,
                dilation=layer.dilation_rate,
                bias=layer.use_bias,
            )
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(layer.params["kernel"].transpose(3, 2, 0, 1)))
                if layer.use_bias:
                    conv.bias.copy_(torch.from_numpy(layer.params["bias"]))
            modules += [Pad(layer._pads), conv]
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
            modules.append(
                {"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}[activation]
            )
    # The last softmax is fused into the loss, as nbcnn does (nn.CrossEntropyLoss on logits).
    return nn.Sequential(*modules)


def nchw(x: np.ndarray):
    """A channels-last batch as a contiguous channels-first torch tensor."""

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
