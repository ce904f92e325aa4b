"""Load weights saved by Keras (``model.save_weights``) into the matching nbcnn model.

Two HDF5 layouts are read (h5py, an optional extra, is imported only here):

* **Keras 3** ``.weights.h5`` (``keras/src/saving/saving_lib.py``, ``H5IOStore``): each layer of
  a Sequential or functional model stores its variables as ``layers/<key>/vars/0``, ``/1``...
  in the layer's own order (kernel, bias; gamma, beta, moving_mean, moving_variance). The key
  is not the layer's name but its class in snake case numbered per class in the order of
  ``model.layers`` (``conv2d``, ``max_pooling2d``, ``conv2d_1``...), so layers are matched by
  class and position in that order (:func:`keras_layer_order`). A ``.keras`` archive is read
  through the ``model.weights.h5`` it holds.
* **Keras 2 / tf.keras** ``.h5`` (``legacy/saving/legacy_h5_format.py``): the root (or its
  ``model_weights`` group, in files from ``model.save``) lists ``layer_names``; each layer
  group lists ``weight_names`` such as ``conv2d/kernel:0``. Layers are matched by name when
  every nbcnn layer with weights finds its name, else in ``model.layers`` order among layers
  with weights.

For a graph model (nbcnn/graph.py) that order is not the config's. Keras's functional
``model.layers`` (``map_graph`` in keras/src/ops/function.py; tf.keras's
``_map_graph_network`` sorts the same way) lists the layers by decreasing depth, a layer's
depth being the longest path from it to the output; layers of equal depth come in the order a
depth-first walk from the output first reaches them, each layer's inputs walked in the order
it takes them. Neither the order the layers were created in nor their names count: a
projection shortcut created first still comes after the longer branch beside it.

nbcnn keeps Keras's weight layouts (kernel ``(kh, kw, C, F)``, Dense ``(in, units)``), so
arrays are copied as they are; every count and shape is checked, naming the layer.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nbcnn.errors import DataError
from nbcnn.graph import INPUT
from nbcnn.io import READ_ERRORS, check_room, open_zip, refuse_special_file
from nbcnn.layers.base import to_snake_case

KERAS_HINT = "pip install 'nbcnn[keras]'"


@dataclass
class SavedLayer:
    """One layer's arrays in a Keras file: where they are and their values, in order."""

    key: str  # the path in the file: "layers/conv2d" or "conv2d"
    name: str  # how the file names the layer
    arrays: list[np.ndarray]
    array_paths: list[str]


@dataclass
class Match:
    """Which saved layer fills which nbcnn layer (one row of the import report)."""

    index: int
    layer: str
    type: str
    source: str
    shapes: list[tuple[int, ...]]


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DataError(f"reading Keras weights needs h5py: {KERAS_HINT}") from None
    return h5py


def _open(path: str):
    """The h5py.File of a ``.weights.h5``/``.h5`` file or of a ``.keras`` archive's weights."""
    h5py = _h5py()
    if not os.path.exists(path):
        raise DataError("no such file", file=path)
    refuse_special_file(path, "a Keras weights file")
    try:
        if zipfile.is_zipfile(path):
            with open(path, "rb") as handle, open_zip(handle, path) as archive:
                if "model.weights.h5" not in archive.namelist():
                    raise DataError(
                        "a zip without model.weights.h5: not a .keras archive", file=path
                    )
                # The size the listing declares, checked and read by its count: zipfile's
                # read() of all of a deflated member expands up to 2 GiB at a step.
                weights = archive.getinfo("model.weights.h5")
                check_room(weights.file_size, "its model.weights.h5", path)
                with archive.open(weights) as member:
                    return h5py.File(io.BytesIO(member.read(weights.file_size)), "r")
        return h5py.File(path, "r")
    except DataError:
        raise
    except READ_ERRORS as err:
        raise DataError(f"not a readable HDF5 (Keras weights) file: {err}", file=path) from None


def _array(dataset: Any, path: str, file: str) -> np.ndarray:
    value = np.asarray(dataset[()])
    # Integers too: Keras 3's Normalization stores its count as an int variable.
    if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise DataError(f"{path} holds {value.dtype}, not numbers", file=file)
    return value.astype(np.float32)


def _natural(key: str) -> tuple[int, str]:
    return (int(key), "") if key.isdigit() else (1 << 30, key)


def read_keras3(h5: Any, file: str) -> dict[str, SavedLayer]:
    """``{key: SavedLayer}`` for every ``layers/<key>`` of a Keras 3 weights file."""
    layers = {}
    for key, group in h5["layers"].items():
        vars_ = group.get("vars")
        if vars_ is None:
            continue
        names = sorted(vars_.keys(), key=_natural)
        paths = [f"layers/{key}/vars/{n}" for n in names]
        arrays = [_array(vars_[n], p, file) for n, p in zip(names, paths)]
        layers[key] = SavedLayer(f"layers/{key}", key, arrays, paths)
    return layers


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_legacy(h5: Any, file: str) -> list[SavedLayer]:
    """Every layer of a Keras 2 h5 file in the model's order (``layer_names``)."""
    root = h5["model_weights"] if "model_weights" in h5 else h5
    layers = []
    for name in map(_text, root.attrs["layer_names"]):
        group = root[name]
        weight_names = [_text(w) for w in group.attrs.get("weight_names", [])]
        paths = [f"{root.name.rstrip('/')}/{name}/{w}".lstrip("/") for w in weight_names]
        arrays = [_array(group[w], p, file) for w, p in zip(weight_names, paths)]
        layers.append(SavedLayer(name, name, arrays, paths))
    return layers


def keras_layer_order(inputs: list[tuple[int, ...]]) -> list[int]:
    """The indices of a model's layers in the order of Keras's ``model.layers`` for the same
    architecture (see the module docstring); ``inputs`` as ``Sequential.inputs``. A chain
    keeps its order. The model's input (Keras's InputLayer, deepest of all) is left out."""
    # Depth: 0 for the output (the last layer); every consumer comes later in the list, so
    # walking backwards settles a layer's depth before it is passed to its producers.
    depth = [0] * len(inputs)
    for i in reversed(range(len(inputs))):
        for j in inputs[i]:
            if j != INPUT:
                depth[j] = max(depth[j], depth[i] + 1)
    # First reach in a depth-first walk from the output, inputs in order (pre-order); a
    # stack, not recursion, for deep models.
    reached: dict[int, int] = {}
    stack = [len(inputs) - 1] if inputs else []
    while stack:
        i = stack.pop()
        if i in reached:
            continue
        reached[i] = len(reached)
        stack.extend(j for j in reversed(inputs[i]) if j != INPUT)
    return sorted(range(len(inputs)), key=lambda i: (-depth[i], reached[i]))


def _keras3_keys(model: Any) -> list[str]:
    """The key Keras 3 gives each layer of this model: class in snake case, numbered in the
    order of Keras's ``model.layers``."""
    counts: dict[str, int] = {}
    keys = [""] * len(model.layers)
    for i in keras_layer_order(model.inputs):
        base = to_snake_case(type(model.layers[i]).__name__)
        n = counts.get(base, 0)
        counts[base] = n + 1
        keys[i] = base if n == 0 else f"{base}_{n}"
    return keys


def match_layers(model: Any, path: str | os.PathLike) -> list[tuple[int, SavedLayer]]:
    """Pair each nbcnn layer that has weights with a saved layer; DataError when the file does
    not fit the model (naming the layer, the path in the file and both shapes)."""
    file = str(path)
    try:
        return _match_layers(model, file)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        # h5py raises these for a file whose groups and datasets are not laid out as Keras
        # writes them (a dataset where a group belongs, a name that points nowhere).
        raise DataError(
            f"not laid out as Keras saves weights: {type(err).__name__}: {err}", file=file
        ) from None


def _match_layers(model: Any, file: str) -> list[tuple[int, SavedLayer]]:
    from nbcnn.model import layer_label

    specs = model.param_specs()
    wanted = [i for i, s in enumerate(specs) if s]
    with _open(file) as h5:
        if "layers" in h5 and hasattr(h5["layers"], "items"):
            saved = read_keras3(h5, file)
            keys = _keras3_keys(model)
            pairs = []
            for i in wanted:
                if keys[i] not in saved:
                    raise DataError(
                        f"{layer_label(i, model.layers[i])} expects Keras 3 weights at "
                        f"layers/{keys[i]}, which the file lacks; it has "
                        f"{', '.join(f'layers/{k}' for k in saved) or 'no layer weights'}",
                        file=file,
                    )
                pairs.append((i, saved[keys[i]]))
            extra = sorted(set(saved) - {keys[i] for i in wanted})
            extra = [k for k in extra if saved[k].arrays]
        elif "layer_names" in h5.attrs or "model_weights" in h5:
            saved_list = [s for s in read_legacy(h5, file) if s.arrays]
            by_name = {s.name: s for s in saved_list}
            names = [model.layers[i].name for i in wanted]
            if all(n in by_name for n in names):
                pairs = [(i, by_name[n]) for i, n in zip(wanted, names)]
            elif len(saved_list) == len(wanted):
                in_keras_order = [i for i in keras_layer_order(model.inputs) if specs[i]]
                pairs = sorted(zip(in_keras_order, saved_list), key=lambda pair: pair[0])
            else:
                raise DataError(
                    f"the file has {len(saved_list)} layers with weights "
                    f"({', '.join(s.name for s in saved_list)}) and model {model.name!r} has "
                    f"{len(wanted)} ({', '.join(names)}), and their names differ",
                    file=file,
                )
            extra = sorted(set(by_name) - {s.name for _, s in pairs})
        else:
            raise DataError(
                "neither Keras 3 (layers/<name>/vars) nor Keras 2 (layer_names) weights",
                file=file,
            )
    if extra:
        raise DataError(
            f"holds weights for {', '.join(extra)} that no layer of model {model.name!r} takes",
            file=file,
        )
    for i, saved_layer in pairs:
        _check(model, i, specs[i], saved_layer, file, layer_label(i, model.layers[i]))
    return pairs


def _check(model, i, specs, saved: SavedLayer, file: str, label: str) -> None:
    if len(saved.arrays) != len(specs):
        raise DataError(
            f"{label} takes {len(specs)} arrays ({', '.join(p.name for p in specs)}) but "
            f"{saved.key} holds {len(saved.arrays)}"
            + (" (use_bias, center or scale differ?)" if saved.arrays else ""),
            file=file,
        )
    for p, array, where in zip(specs, saved.arrays, saved.array_paths):
        if tuple(array.shape) != p.shape:
            raise DataError(
                f"{label} {p.name}: the layer takes shape {p.shape}, {where} has shape "
                f"{tuple(array.shape)}",
                file=file,
            )


def import_keras_weights(model: Any, path: str | os.PathLike) -> list[Match]:
    """Load a Keras weights file into ``model`` (initialised first if needed); returns what
    went where."""
    pairs = match_layers(model, path)
    model._require_built()
    filled = dict(pairs)
    arrays = []
    for i, specs in enumerate(model.param_specs()):
        if specs:
            arrays.extend(filled[i].arrays)
    model.set_weights(arrays, source=str(path))
    return [
        Match(
            i,
            model.layers[i].name,
            type(model.layers[i]).__name__,
            s.key,
            [tuple(a.shape) for a in s.arrays],
        )
        for i, s in pairs
    ]


def convert(model: Any, keras_file: str | os.PathLike, out: str | os.PathLike) -> list[Match]:
    """Import ``keras_file`` into ``model`` and save nbcnn's ``.npz`` at ``out``."""
    matches = import_keras_weights(model, keras_file)
    model.save_weights(Path(out))
    return matches
