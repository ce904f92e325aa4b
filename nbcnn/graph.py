"""Where each layer's input comes from: a model's layers as a graph.

A config lists its layers in the order they run. A layer's ``inputs`` says which earlier
outputs it takes: a layer name, a relative index (-1 the previous layer, the default; -2 the
one before), or a list of them for layers that merge several inputs (Add, Concatenate...);
``input_layer`` (Keras 3's name for a functional model's input) is the model's input. Since
a layer can only take outputs of layers before it, the written order is a topological order
and no cycle can be written; a reference to a later layer is refused as a forward
reference. Every layer but the last must feed some later layer (the last one's output is
the model's): an unused branch is an error, as it would train nothing.

The resolved graph is ``inputs[i]``, a tuple of producer indices per layer, ``INPUT`` (-1)
standing for the model's input. A config without ``inputs`` resolves to the chain
``inputs[i] == (i - 1,)``, exactly what it meant before graphs.

Pure Python: ``nbcnn summary`` uses it without numba.
"""

from __future__ import annotations

import difflib
from typing import Any

from nbcnn.errors import ConfigError
from nbcnn.layers.base import Layer
from nbcnn.spec import INPUT_NAME

#: The index standing for the model's input in ``inputs``.
INPUT = -1


def _label(index: int, layers: list[Layer]) -> str:
    if index == INPUT:
        return f"the model's input ({INPUT_NAME!r})"
    layer = layers[index]
    return f"layers[{index}] {layer.name!r} ({type(layer).__name__})"


def source_name(j: int, layers: list[Layer]) -> str:
    """The name by which output ``j`` is referred to: its layer's, or ``input_layer``."""
    return INPUT_NAME if j == INPUT else layers[j].name


def takes_many(layer: Layer) -> bool:
    """Whether ``layer`` merges a list of inputs (its class sets ``multi_input = True``)."""
    return bool(getattr(type(layer), "multi_input", False))


def resolve(layers: list[Layer], written: list[Any]) -> list[tuple[int, ...]]:
    """``inputs[i]`` for each layer from what each one's ``inputs`` says (None: the previous
    layer); ConfigError naming the layer, ``layers[i].inputs``, for an unknown name (with a
    did-you-mean), a forward reference, an index before the model's input, a count of inputs
    the layer cannot take, or an output no layer uses."""
    names = {layer.name: i for i, layer in enumerate(layers)}
    resolved: list[tuple[int, ...]] = []
    for i, (layer, raw) in enumerate(zip(layers, written)):
        where = f"layers[{i}].inputs"
        here = _label(i, layers)
        many = takes_many(layer)
        if raw is None and many:
            raise ConfigError(
                f"{here} merges several inputs: list them, e.g. inputs: [conv2d, {INPUT_NAME}]",
                where=where,
            )
        if many and not isinstance(raw, list):
            raise ConfigError(
                f"{here} merges a list of inputs: write inputs: [{raw!s}, ...]", where=where
            )
        items = raw if isinstance(raw, list) else [-1 if raw is None else raw]
        if not many and len(items) != 1:
            raise ConfigError(
                f"{here} takes one input, got {len(items)}; only merging layers (Add, "
                "Concatenate, ...) take several",
                where=where,
            )
        found = []
        for k, item in enumerate(items):
            at = f"{where}[{k}]" if isinstance(raw, list) else where
            found.append(_one(i, item, layers, names, at))
        resolved.append(tuple(found))
    used = {j for producers in resolved for j in producers}
    for i in range(len(layers) - 1):
        if i not in used:
            last = len(layers) - 1
            raise ConfigError(
                f"the output of {_label(i, layers)} is used by no later layer (an unused "
                f"branch: the model's output is the last layer's, {_label(last, layers)}); "
                "feed it to a later layer's inputs or remove it",
                where=f"layers[{i}]",
            )
    return resolved


def _one(i: int, item: Any, layers: list[Layer], names: dict[str, int], where: str) -> int:
    """The producer index of one entry of layer i's ``inputs``."""
    if isinstance(item, int):
        j = i + item
        if j < INPUT:
            raise ConfigError(
                f"{item} from {_label(i, layers)} reaches before the model's input (at most "
                f"{-(i + 1)} here)",
                where=where,
            )
        return j
    if item == INPUT_NAME:
        return INPUT
    if item not in names:
        close = difflib.get_close_matches(item, [*names, INPUT_NAME], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{_label(i, layers)} takes {item!r}, but no layer has that name{hint}", where=where
        )
    j = names[item]
    if j >= i:
        what = "itself" if j == i else f"{_label(j, layers)}, which comes after it"
        raise ConfigError(
            f"{_label(i, layers)} takes {what}: a layer can only take the outputs of layers "
            "listed before it (the order of the list is the order they run in)",
            where=where,
        )
    return j


def is_chain(inputs: list[tuple[int, ...]]) -> bool:
    """Whether every layer takes the previous one's output (a Sequential model)."""
    return all(producers == (i - 1,) for i, producers in enumerate(inputs))


def consumers(inputs: list[tuple[int, ...]]) -> dict[int, list[int]]:
    """Which layers take each output (``INPUT`` included), in order, once per use."""
    found: dict[int, list[int]] = {INPUT: []}
    for i in range(len(inputs)):
        found[i] = []
    for i, producers in enumerate(inputs):
        for j in producers:
            found[j].append(i)
    return found


def written_inputs(inputs: list[tuple[int, ...]], layers: list[Layer]) -> list[Any]:
    """The ``inputs`` a config writes to rebuild ``inputs`` (``get_config``): None for the
    previous layer, else the producers' names (``input_layer`` for the model's input), a
    list for merging layers."""
    written: list[Any] = []
    for i, (layer, producers) in enumerate(zip(layers, inputs)):
        if producers == (i - 1,) and not takes_many(layer):
            written.append(None)
            continue
        named = [source_name(j, layers) for j in producers]
        written.append(named if takes_many(layer) else named[0])
    return written
