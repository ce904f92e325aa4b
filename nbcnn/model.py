"""Sequential model: build from a spec (shape inference), forward, backward, weights I/O.

Building needs only the layers' calculators, so ``nbcnn summary`` can use it without importing
numba; weights and compute come with :meth:`Sequential.initialize` and the forward/backward
methods, which import the kernels lazily.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from nbcnn.errors import ConfigError, DataError, NbcnnError
from nbcnn.layers.base import Layer, ParamSpec, Shape, ShapeError, format_shape
from nbcnn.registry import Registry, registry

if TYPE_CHECKING:
    import numpy as np

    from nbcnn.spec import ModelSpec


def layer_label(index: int, layer: Layer) -> str:
    """How errors name a layer: ``layers[2] 'conv2d_1' (Conv2D)``."""
    return f"layers[{index}] {layer.name!r} ({type(layer).__name__})"


class Sequential:
    """A stack of layers with known shapes.

    Attributes
    ----------
    layers : the Layer objects, in order.
    input_shape : per-sample input shape, channels-last.
    shapes : ``(input_shape, output_shape)`` of each layer.
    distributions : the distribution that provides each layer's type.
    """

    def __init__(
        self,
        layers: list[Layer],
        input_shape: Shape,
        name: str = "model",
        distributions: list[str] | None = None,
        spec: ModelSpec | None = None,
    ):
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.name = name
        self.distributions = distributions or ["nbcnn"] * len(layers)
        self.spec = spec
        self.shapes = self._infer_shapes()
        self._param_specs = [
            self.calculate(i, "param_shapes", s_in) for i, (s_in, _) in enumerate(self.shapes)
        ]
        self.built = False
        self.rng = None
        self.compiled = None  # set by nbcnn.train.compile
        #: Run Conv2D/Conv1D(relu) -> max pooling pairs as one fused step (nbcnn/fusion.py).
        #: Same results either way; False runs every layer on its own (to measure the gain).
        self.fuse = True
        self._steps: list[tuple[int, Any]] = []

    # ------------------------------------------------------------------ building

    @classmethod
    def from_spec(cls, spec: ModelSpec, reg: Registry | None = None) -> Sequential:
        """Instantiate and shape-check every layer; ConfigError names the layer and key."""
        reg = reg or registry()
        layers, dists = [], []
        counts: dict[str, int] = {}
        taken = {s.name for s in spec.layers if s.name}
        for s in spec.layers:
            where = f"layers[{s.index}]"
            try:
                entry = reg.entry(s.type)
            except ConfigError as err:
                raise err.located(where=f"{where}.type") from None
            try:
                layer = entry.cls(name=s.name, **s.kwargs)
            except ConfigError as err:
                raise err.located(where=where) from None
            except Exception as err:  # a plugin's constructor may raise anything
                raise ConfigError(
                    f"{entry.cls.__name__} (from {entry.distribution}) could not be created: "
                    f"{type(err).__name__}: {err}",
                    where=where,
                ) from None
            if s.name is None:
                layer.name = _default_name(layer.name, counts, taken)
            layers.append(layer)
            dists.append(entry.distribution)
        return cls(layers, spec.input_shape, spec.name, dists, spec)

    def _infer_shapes(self) -> list[tuple[Shape, Shape]]:
        shapes = []
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            try:
                out = tuple(layer.output_shape(shape))
            except ShapeError as err:
                raise ConfigError(
                    f"{err} (input {format_shape(shape)})", where=layer_label(i, layer)
                ) from None
            except NbcnnError:
                raise
            except Exception as err:
                raise ConfigError(
                    f"the shape calculator of {type(layer).__name__} (from "
                    f"{self.distributions[i]}) raised {type(err).__name__}: {err}",
                    where=layer_label(i, layer),
                ) from None
            if not out or min(out) < 1:
                raise ConfigError(
                    f"output shape {format_shape(out)} has an empty axis",
                    where=layer_label(i, layer),
                )
            shapes.append((shape, out))
            shape = out
        return shapes

    @property
    def output_shape(self) -> Shape:
        return self.shapes[-1][1]

    def param_specs(self) -> list[list[ParamSpec]]:
        """Each layer's weights, in Keras's order and layout."""
        return self._param_specs

    def calculate(self, i: int, method: str, *args: Any) -> Any:
        """Call calculator ``method`` of layer ``i``; a third party's calculator that raises
        becomes a ConfigError naming the layer and its distribution, not a traceback."""
        layer = self.layers[i]
        try:
            return getattr(layer, method)(*args)
        except NbcnnError:
            raise
        except Exception as err:
            raise ConfigError(
                f"{method} of {type(layer).__name__} (from {self.distributions[i]}) raised "
                f"{type(err).__name__}: {err}",
                where=layer_label(i, layer),
            ) from None

    def count_params(self) -> int:
        return sum(p.size for specs in self.param_specs() for p in specs)

    def without_compute(self) -> list[tuple[int, Layer, str]]:
        """Layers whose type brings no forward/backward: ``(index, layer, distribution)``."""
        return [
            (i, layer, dist)
            for i, (layer, dist) in enumerate(zip(self.layers, self.distributions))
            if not layer.has_compute
        ]

    # ------------------------------------------------------------------ compute

    def initialize(self, seed: int = 0) -> Sequential:
        """Allocate weights as Keras initialises them (glorot_uniform kernels, zero biases),
        drawn from ``seed``. Refuses layers that bring no compute, naming their distribution,
        and weights larger than the available memory, before allocating them."""
        import numpy as np

        missing = self.without_compute()
        if missing:
            i, layer, dist = missing[0]
            raise ConfigError(
                f"layer type {type(layer).__name__} from distribution {dist!r} has no compute "
                "(calculator only): it can be summarised but not run or trained",
                where=layer_label(i, layer),
            )
        from nbcnn.resources import check_parameter_memory

        check_parameter_memory(self)  # a Dense of 10**9 units must not even try to allocate
        self.rng = np.random.default_rng(seed)
        for layer, (s_in, _) in zip(self.layers, self.shapes):
            layer.build(s_in, self.rng)
        self.built = True
        return self

    def _require_built(self) -> None:
        if not self.built:
            self.initialize()

    def steps(self) -> list[tuple[int, Any]]:
        """What forward runs, in order: ``(index of the first layer, layer or fused step)``."""
        from nbcnn.fusion import plan

        self._require_built()
        if self.fuse:
            return plan(self.layers)
        return list(enumerate(self.layers))

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """``x : (N, *input_shape) float32`` -> ``(N, *output_shape) float32``."""
        steps = self.steps()
        for i, step in steps:
            try:
                x = step.forward(x, training=training)
            except NbcnnError:
                raise
            except Exception as err:
                raise _compute_error(self, i, "forward", err) from err
        if training:
            self._steps = steps  # backward runs the same steps
        return x

    def backward(self, dy: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Back-propagate ``dy`` (gradient w.r.t. the output of the last training forward);
        fills each layer's ``grads``; returns the gradient w.r.t. the input, or None with
        ``input_grad=False`` (training has no use for it, and the first layer then skips it).
        """
        if not self._steps:
            raise RuntimeError("backward needs a forward with training=True first")
        first = self.layers[0]
        first.input_grad_needed = input_grad
        try:
            for i, step in reversed(self._steps):
                try:
                    dy = step.backward(dy)
                except NbcnnError:
                    raise
                except Exception as err:
                    raise _compute_error(self, i, "backward", err) from err
        finally:
            first.input_grad_needed = True
        return dy if input_grad else None

    def trainable_weights(self) -> tuple[list[np.ndarray], list[tuple[Layer, str]]]:
        """The arrays the optimizer updates, and ``(layer, name)`` of each."""
        self._require_built()
        arrays, owners = [], []
        for layer, specs in zip(self.layers, self.param_specs()):
            for p in specs:
                if p.trainable:
                    arrays.append(layer.params[p.name])
                    owners.append((layer, p.name))
        return arrays, owners

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Outputs for ``x : (N, *input_shape)`` in inference mode, ``batch_size`` at a time."""
        import numpy as np

        x = self.check_input(x)
        outputs = [
            self.forward(x[i : i + batch_size], training=False)
            for i in range(0, len(x), batch_size)
        ]
        if not outputs:
            return np.zeros((0, *self.output_shape), np.float32)
        return np.concatenate(outputs)

    def check_input(self, x: Any, what: str = "x") -> np.ndarray:
        """``x`` as C-contiguous float32 of shape (N, *input_shape), or DataError."""
        import numpy as np

        x = np.asarray(x)
        if x.ndim == len(self.input_shape) + 1 and tuple(x.shape[1:]) == self.input_shape:
            if not np.issubdtype(x.dtype, np.number):
                raise DataError(f"{what} must be numeric, got dtype {x.dtype}")
            return np.ascontiguousarray(x, dtype=np.float32)
        raise DataError(
            f"{what} has shape {tuple(x.shape)} but the model takes (N, "
            f"{', '.join(map(str, self.input_shape))})"
        )

    # ------------------------------------------------------------------ Keras-like API

    def compile(self, optimizer: str | dict | None = None, loss: str | None = None):
        """Choose optimizer and loss; defaults come from the config's ``train:`` section."""
        from nbcnn import train

        train.compile(self, optimizer=optimizer, loss=loss)
        return self

    def fit(
        self,
        x,
        y,
        epochs: int = 1,
        batch_size: int = 32,
        validation_data=None,
        verbose: int = 1,
        **kwargs,
    ):
        """Train on ``x : (N, *input_shape)`` with integer labels ``y : (N,)``; returns a
        History whose ``history`` maps loss, accuracy, val_loss, val_accuracy to lists."""
        from nbcnn import train

        return train.fit(
            self,
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            validation_data=validation_data,
            verbose=verbose,
            **kwargs,
        )

    def evaluate(self, x, y, batch_size: int = 256) -> dict:
        """``{"loss", "accuracy", "per_class_accuracy", "confusion_matrix", "samples"}``."""
        from nbcnn import train

        x = self.check_input(x)
        return train.evaluate_arrays(self, x, train._labels(y, len(x), self), batch_size)

    # ------------------------------------------------------------------ weights

    def get_weights(self) -> list[np.ndarray]:
        """Every weight array in Keras's order and layout (copies)."""
        self._require_built()
        return [
            layer.params[p.name].copy()
            for layer, specs in zip(self.layers, self.param_specs())
            for p in specs
        ]

    def set_weights(self, weights: list[np.ndarray], source: str | None = None) -> None:
        """Load arrays in ``get_weights`` order; DataError names the first mismatch."""
        import numpy as np

        self._require_built()
        slots = self._weight_slots()
        if len(weights) != len(slots):
            raise DataError(
                f"expected {len(slots)} weight arrays for model {self.name!r}, got {len(weights)}",
                file=source,
            )
        checked = []
        for (i, layer, p), w in zip(slots, weights):
            w = np.asarray(w)
            if tuple(w.shape) != p.shape or not np.issubdtype(w.dtype, np.floating):
                raise DataError(
                    f"{layer_label(i, layer)} {p.name}: expected shape {p.shape} float, got "
                    f"{tuple(w.shape)} {w.dtype}",
                    file=source,
                )
            if not np.isfinite(w).all():
                raise DataError(f"{layer_label(i, layer)} {p.name} holds NaN or inf", file=source)
            checked.append((layer, p.name, w))
        for layer, name, w in checked:
            layer.params[name][...] = w

    def _weight_slots(self) -> list[tuple[int, Layer, ParamSpec]]:
        """``(layer index, layer, ParamSpec)`` of each array of ``get_weights``."""
        return [
            (i, layer, p)
            for i, (layer, specs) in enumerate(zip(self.layers, self.param_specs()))
            for p in specs
        ]

    def weight_names(self) -> list[str]:
        """``layername/paramname`` for each array of ``get_weights``."""
        return [
            f"{layer.name}/{p.name}"
            for layer, specs in zip(self.layers, self.param_specs())
            for p in specs
        ]

    def save_weights(self, path: str | os.PathLike) -> None:
        """Write the weights to an ``.npz`` (no pickle), atomically."""
        from nbcnn.io import save_npz_atomic

        save_npz_atomic(path, dict(zip(self.weight_names(), self.get_weights())))

    def load_weights(self, path: str | os.PathLike) -> None:
        """Read weights saved by :meth:`save_weights` (or a checkpoint.npz); DataError naming
        the first layer that does not fit, with both shapes, on any mismatch."""
        from nbcnn.io import load_npz

        arrays = load_npz(path)
        names = self.weight_names()
        for name, (i, layer, p) in zip(names, self._weight_slots()):
            if name not in arrays:
                raise DataError(
                    f"{layer_label(i, layer)} {p.name}: no array {name!r} of shape {p.shape} "
                    f"(weights of another model? the file has {_listing(arrays)})",
                    file=str(path),
                )
        # A checkpoint also holds the optimizer's state and its metadata: not weights.
        extra = [
            n for n in arrays if n not in names and n != "meta" and not n.startswith("optimizer/")
        ]
        if extra:
            raise DataError(
                f"holds {len(extra)} array(s) this model does not have, first "
                f"{_listing({n: arrays[n] for n in extra})} (weights of another model?)",
                file=str(path),
            )
        self.set_weights([arrays[n] for n in names], source=str(path))


def _listing(arrays: dict, first: int = 3) -> str:
    """``'dense/kernel' (64, 10), 'dense/bias' (10,), ...``: the first arrays of a file."""
    shown = [f"{name!r} {tuple(a.shape)}" for name, a in list(arrays.items())[:first]]
    return ", ".join(shown) + (", ..." if len(arrays) > first else "") if shown else "no arrays"


def _default_name(base: str, counts: dict[str, int], taken: set[str]) -> str:
    """Keras's naming: conv2d, conv2d_1, conv2d_2... skipping names given explicitly."""
    while True:
        n = counts.get(base, 0)
        counts[base] = n + 1
        name = base if n == 0 else f"{base}_{n}"
        if name not in taken:
            taken.add(name)
            return name


def _compute_error(model: Sequential, i: int, phase: str, err: Exception) -> NbcnnError:
    from nbcnn.errors import TrainingError

    layer = model.layers[i]
    return TrainingError(
        f"{layer_label(i, layer)} from distribution {model.distributions[i]!r} failed in "
        f"{phase}: {type(err).__name__}: {err}"
    )


def load_model(config: str | os.PathLike, input_shape: Shape | None = None) -> Sequential:
    """Build the model of a YAML config (calculators only; weights on first use)."""
    from nbcnn.spec import load_spec

    spec = load_spec(config, input_shape=input_shape)
    try:
        return Sequential.from_spec(spec)
    except ConfigError as err:
        raise err.located(file=str(config)) from None
