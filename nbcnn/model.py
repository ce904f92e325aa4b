"""Sequential model: build from a spec (shape inference), forward, backward, weights I/O.

Building needs only the layers' calculators, so ``nbcnn summary`` can use it without importing
numba; weights and compute come with :meth:`Sequential.initialize` and the forward/backward
methods, which import the kernels lazily.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nbcnn import graph
from nbcnn.errors import ConfigError, DataError, NbcnnError, PluginError
from nbcnn.layers.args import MAX_INT, TOO_LARGE, is_int, is_number, show, show_some
from nbcnn.layers.base import Layer, ParamSpec, Shape, ShapeError, format_shape
from nbcnn.registry import Registry, describe, quote, registry
from nbcnn.spec import check_inputs, check_model_name

if TYPE_CHECKING:
    import numpy as np

    from nbcnn.spec import ModelSpec


def layer_label(index: int, layer: Layer) -> str:
    """How errors name a layer: ``layers[2] 'conv2d_1' (Conv2D)``."""
    return f"layers[{index}] {layer.name!r} ({type(layer).__name__})"


class Sequential:
    """A stack of layers with known shapes, built as Keras's ``Sequential`` is:
    ``Sequential([Conv2D(32, 3, activation="relu"), ...], input_shape=(28, 28, 1))``, then
    :meth:`add` for more. The input shape comes from ``input_shape``, else from the first
    layer's ``input_shape=`` (the Keras 2 habit), else from the first array given to ``fit``,
    ``evaluate`` or ``predict``. Layers without a name are named as Keras names them
    (``conv2d``, ``conv2d_1``...), skipping names given explicitly.

    Attributes
    ----------
    layers : the Layer objects, in order.
    input_shape : per-sample input shape, channels-last (None until known).
    shapes : ``(input_shape, output_shape)`` of each layer.
    distributions : the distribution that provides each layer's type.
    """

    def __init__(
        self,
        layers: list[Layer] | tuple[Layer, ...] | None = None,
        input_shape: Shape | None = None,
        name: str = "model",
        distributions: list[str] | None = None,
        spec: ModelSpec | None = None,
        inputs: list[Any] | None = None,
    ):
        layers = [] if layers is None else layers
        if not isinstance(layers, (list, tuple)):
            raise ConfigError(
                f"expected a list of layers, got {show(layers)}", where="Sequential(layers)"
            )
        if distributions is not None and (
            not isinstance(distributions, (list, tuple)) or len(distributions) != len(layers)
        ):
            raise ConfigError(
                f"expected one distribution name per layer ({len(layers)}), got "
                f"{show(distributions)}",
                where="Sequential(distributions)",
            )
        self.name = check_model_name(name, "Sequential(name)")
        self.spec = spec
        self.layers: list[Layer] = []
        self.distributions: list[str] = []
        self.input_shape: Shape | None = None
        if input_shape is not None:
            self.input_shape = check_shape(input_shape, "Sequential(input_shape)")
        self.shapes: list[tuple[Shape, Shape]] = []
        self._param_specs: list[list[ParamSpec]] = []
        #: Each layer's producers (nbcnn.graph): (i - 1,) for a chain, INPUT (-1) the input.
        self.inputs: list[tuple[int, ...]] = []
        if inputs is not None and (
            not isinstance(inputs, (list, tuple)) or len(inputs) != len(layers)
        ):
            raise ConfigError(
                f"expected one inputs entry per layer ({len(layers)}), got {show(inputs)}",
                where="Sequential(inputs)",
            )
        self._set_layers(list(layers), distributions, "Sequential", inputs)
        self.built = False
        self.rng = None
        self.compiled = None  # set by nbcnn.train.compile
        #: Set by a callback to stop fit after the current epoch (Keras's attribute).
        self.stop_training = False
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
        for s in spec.layers:
            where = f"layers[{s.index}]"
            if "input_shape" in s.kwargs:
                # In Python, Conv2D(..., input_shape=...) is accepted on the first layer; a
                # config has one place for it.
                raise ConfigError(
                    "a config takes input_shape at its top level, not on a layer: move it up",
                    where=f"{where}.input_shape",
                )
            try:
                entry = reg.entry(s.type)
            except ConfigError as err:
                raise err.located(where=f"{where}.type") from None
            made = f"{entry.name} from distribution {entry.distribution!r}"
            try:
                layer = entry.cls(name=s.name, **s.kwargs)
                name = getattr(layer, "name", None) if isinstance(layer, Layer) else None
            except ConfigError as err:
                raise err.located(where=where) from None
            except KeyboardInterrupt:
                raise
            except BaseException as err:  # a constructor may raise anything, SystemExit too
                raise ConfigError(
                    f"{made} could not be created: {describe(err)}", where=where
                ) from None
            if not isinstance(layer, Layer):
                raise ConfigError(f"{made} made a {type(layer).__name__}, not a Layer", where=where)
            if not isinstance(name, str) or not name:
                raise ConfigError(
                    f"{made} made a layer named {quote(name)}; expected a non-empty string (does "
                    "its __init__ call super().__init__?)",
                    where=where,
                )
            layers.append(layer)
            dists.append(entry.distribution)
        return cls(
            layers, spec.input_shape, spec.name, dists, spec, [s.inputs for s in spec.layers]
        )

    def add(self, layer: Layer) -> None:
        """Append ``layer`` (Keras's ``Sequential.add``), shape-checked at once when the input
        shape is known; on any error the model is left as it was. Refused once the model has
        weights: they and the optimizer's state would no longer match the layers."""
        if self.built:
            raise ConfigError(
                "the model already has weights (fit, predict or get_weights ran); build a new "
                "Sequential to change its layers",
                where="add(layer)",
            )
        written = [*graph.written_inputs(self.inputs, self.layers), None]
        self._set_layers([*self.layers, layer], [*self.distributions, None], "add", written)

    def _set_layers(
        self,
        layers: list[Any],
        distributions: list[Any] | None,
        what: str,
        written: list[Any] | None = None,
    ) -> None:
        """Check ``layers`` (Layer objects, each once), name the unnamed ones, resolve where
        each takes its input from (``written``, each layer's ``inputs`` as a config writes
        it; None: the previous layer), take the input shape from the first layer's
        ``input_shape=`` if the model has none, and infer every shape; on error, the model
        keeps its previous layers."""
        for i, layer in enumerate(layers):
            where = f"{what}(layers[{i}])" if what == "Sequential" else f"{what}(layer)"
            if not isinstance(layer, Layer):
                raise ConfigError(f"expected a Layer, got {show(layer)}", where=where)
            if not isinstance(getattr(layer, "name", None), str):
                raise ConfigError(
                    f"{type(layer).__name__} has no name (does its __init__ call "
                    "super().__init__?)",
                    where=where,
                )
            if any(layer is other for other in layers[:i]):
                raise ConfigError(
                    f"layer {layer.name!r} appears twice; each position needs its own Layer "
                    "object (it holds its weights)",
                    where=where,
                )
            declared = getattr(layer, "declared_input_shape", None)
            if declared is not None and i > 0:
                raise ConfigError(
                    "input_shape belongs on the first layer only (or Sequential(input_shape=...))",
                    where=f"{where}.input_shape",
                )
        input_shape = self.input_shape
        declared = getattr(layers[0], "declared_input_shape", None) if layers else None
        if declared is not None:
            declared = check_shape(declared, "layers[0].input_shape")
            if input_shape is not None and declared != input_shape:
                raise ConfigError(
                    f"the first layer says input_shape {declared} but the model has {input_shape}",
                    where="layers[0].input_shape",
                )
            input_shape = declared
        dists = [
            d if d is not None else _distribution_of(layer)
            for layer, d in zip(layers, distributions or [None] * len(layers))
        ]
        _name_layers(layers)
        if written is not None:
            written = [
                check_inputs(w, f"layers[{i}].inputs") if w is not None else None
                for i, w in enumerate(written)
            ]
        inputs = graph.resolve(layers, written or [None] * len(layers))
        previous = (self.layers, self.distributions, self.input_shape, self.inputs)
        self.layers, self.distributions, self.input_shape = layers, dists, input_shape
        self.inputs = inputs
        try:
            self._infer_shapes()
        except BaseException:
            self.layers, self.distributions, self.input_shape, self.inputs = previous
            raise

    def _set_input_shape(self, input_shape: Shape) -> None:
        """Adopt ``input_shape`` (from the first data seen) and infer every shape."""
        self.input_shape = check_shape(input_shape, "input_shape")
        try:
            self._infer_shapes()
        except BaseException:
            self.input_shape = None
            raise

    def require_shapes(self) -> None:
        """ConfigError unless the model has layers and an input shape (so shapes are known)."""
        if not self.layers:
            raise ConfigError("the model has no layers: add some with model.add(...)")
        if self.input_shape is None:
            raise ConfigError(
                "the model does not know its input shape yet: give Sequential(..., "
                "input_shape=(28, 28, 1)), input_shape= on the first layer, or call fit or "
                "predict, which take it from the data",
                where="input_shape",
            )

    def _infer_shapes(self) -> None:
        """Each layer's ``(input shape, output shape)`` and weights, from the calculators;
        nothing to infer before the input shape is known. On error the model keeps the
        previous ones."""
        shapes: list[tuple[Any, Shape]] = []
        if self.input_shape is None:
            self.shapes, self._param_specs = [], []
            return
        outputs: dict[int, Shape] = {graph.INPUT: self.input_shape}
        for i, layer in enumerate(self.layers):
            # A merging layer's calculators take the list of its inputs' shapes.
            given = [outputs[j] for j in self.inputs[i]]
            shape = given if graph.takes_many(layer) else given[0]
            out = self.calculate(i, "output_shape", shape)
            if not out or min(out) < 1:
                raise ConfigError(
                    f"output shape {format_shape(out)} has an empty axis",
                    where=layer_label(i, layer),
                )
            shapes.append((shape, out))
            outputs[i] = out
        specs = [self.calculate(i, "param_shapes", s_in) for i, (s_in, _) in enumerate(shapes)]
        self.shapes, self._param_specs = shapes, specs

    @property
    def is_graph(self) -> bool:
        """Whether some layer takes another input than the previous layer's output."""
        return not graph.is_chain(self.inputs)

    @property
    def output_shape(self) -> Shape:
        self.require_shapes()
        return self.shapes[-1][1]

    def param_specs(self) -> list[list[ParamSpec]]:
        """Each layer's weights, in Keras's order and layout."""
        self.require_shapes()
        return self._param_specs

    def calculate(self, i: int, method: str, *args: Any) -> Any:
        """Call calculator ``method`` of layer ``i`` (input shape first) and check what it
        returns. A ShapeError (the input does not fit) is a ConfigError naming the layer and
        its input shapes (exit code 2). A calculator that raises anything else (SystemExit
        included, KeyboardInterrupt excepted) or returns something else than the contract says
        is a bug in the layer: a PluginError naming the layer and its distribution (exit code
        1), with the exception it raised as ``__cause__``; never a traceback or an exit with
        the plugin's own code."""
        layer = self.layers[i]
        try:
            result = getattr(layer, method)(*args)
        except ShapeError as err:
            if graph.takes_many(layer):
                given = ", ".join(
                    f"{format_shape(shape)} from {graph.source_name(j, self.layers)!r}"
                    for j, shape in zip(self.inputs[i], args[0])
                )
                raise ConfigError(f"{err} (inputs {given})", where=layer_label(i, layer)) from None
            raise ConfigError(
                f"{err} (input {format_shape(args[0])})", where=layer_label(i, layer)
            ) from None
        except (NbcnnError, KeyboardInterrupt):
            raise
        except BaseException as err:
            raise layer_failure(self, i, method, describe(err), RULE_CALCULATOR) from err
        try:
            return _CALCULATOR_RESULTS[method](result, *args)
        except ValueError as err:
            raise layer_failure(
                self, i, method, f"returned {quote(result)}; expected {err}"
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

    def require_compute(self) -> None:
        """Refuse, naming the layer and its distribution, a model with a calculator-only
        layer: it can be summarised but not run or trained."""
        missing = self.without_compute()
        if missing:
            i, layer, dist = missing[0]
            raise ConfigError(
                f"layer type {type(layer).__name__} from distribution {dist!r} has no compute "
                "(calculator only): it can be summarised but not run or trained",
                where=layer_label(i, layer),
            )

    def initialize(self, seed: int = 0) -> Sequential:
        """Allocate weights as Keras initialises them (glorot_uniform kernels, zero biases),
        drawn from ``seed``. Refuses layers that bring no compute, naming their distribution,
        and weights larger than the available memory, before allocating them."""
        import numpy as np

        seed = check_int(seed, "initialize(seed)", 0)
        self.require_shapes()
        self.require_compute()
        from nbcnn.resources import check_parameter_memory

        check_parameter_memory(self)  # a Dense of 10**9 units must not even try to allocate
        self.rng = np.random.default_rng(seed)
        for i, (layer, (s_in, _)) in enumerate(zip(self.layers, self.shapes)):
            self.guarded(i, "build", layer.build, s_in, self.rng)
        self.built = True
        return self

    def guarded(self, i: int, phase: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)`` for layer (or fused step) ``i``: a build, forward or
        backward that raises (SystemExit included, KeyboardInterrupt excepted) becomes a
        PluginError naming the layer and its distribution, the exception as its ``__cause__``,
        not a traceback or an exit with the plugin's code."""
        try:
            return call(*args, **kwargs)
        except (NbcnnError, KeyboardInterrupt):
            raise
        except BaseException as err:
            raise layer_failure(self, i, phase, describe(err)) from err

    def _require_built(self) -> None:
        if not self.built:
            self.initialize()

    def steps(self) -> list[tuple[int, Any]]:
        """What forward runs, in order: ``(index of the first layer, layer or fused step)``."""
        from nbcnn.fusion import plan

        self._require_built()
        if self.fuse:
            return plan(self.layers, self.inputs)
        return list(enumerate(self.layers))

    def forward(self, x: np.ndarray, training: bool = False, upto: int | None = None) -> np.ndarray:
        """``x : (N, *input_shape) float32`` -> ``(N, *output_shape) float32``.

        Layers run in their order (a topological order of the graph, nbcnn.graph), each on
        its inputs' outputs (a merging layer on the list of them); an output is dropped as
        soon as the last layer taking it has run. ``upto``: stop after layer ``upto`` and
        return its output (feature maps), running the layers one by one, unfused, so that
        this layer's own output exists. Each step's result is checked against the contract
        (a float32 array of the shape its calculator gives), built-in layers' too: a
        comparison of a shape and a dtype, negligible beside the step (docs/plugins.md).
        """
        if upto is None:
            steps = self.steps()
        else:
            self._require_built()
            steps = list(enumerate(self.layers[: upto + 1]))
        # The layer each step ends with (a fused step ends with the layer before the next).
        ends = [j - 1 for j, _ in steps[1:]] + [len(self.layers) - 1 if upto is None else upto]
        last_use = {j: last for (i, _), last in zip(steps, ends) for j in self.inputs[i]}
        values = {graph.INPUT: x}
        for (i, step), last in zip(steps, ends):
            given = [values[j] for j in self.inputs[i]]
            arg = given if graph.takes_many(self.layers[i]) else given[0]
            y = self.guarded(i, "forward", step.forward, arg, training=training)
            values[last] = self._checked_output(i, last, y, len(x))
            for j in self.inputs[i]:  # no later layer takes it: free it now
                if last_use.get(j) == last:
                    values.pop(j, None)
        if training:
            self._steps = list(zip(steps, ends))  # backward runs the same steps
        return values[ends[-1]]

    def _checked_output(self, i: int, last: int, y: Any, batch: int) -> np.ndarray:
        """``y``, what the step of layers ``i`` to ``last`` returned, if it is a float32 array
        of shape ``(batch, *output shape of layer last)``; else a PluginError naming layer
        ``i``."""
        import numpy as np

        want = (batch, *self.shapes[last][1])
        if not (isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == want):
            raise layer_failure(
                self, i, "forward", f"returned {_array_text(y)}; expected float32 {want}",
                RULE_OUTPUT,
            )  # fmt: skip
        return y

    def backward(self, dy: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Back-propagate ``dy`` (gradient w.r.t. the output of the last training forward);
        fills each layer's ``grads``; returns the gradient w.r.t. the input, or None with
        ``input_grad=False`` (training has no use for it, and the layers taking the model's
        input then skip it). Steps run in reverse; an output taken by several layers gets
        the sum of their gradients, and each gradient is dropped once its producer has run.
        Each step is checked against the contract as it returns (:meth:`_input_gradients`,
        :meth:`_check_weight_gradients`), so a broken layer is named itself, not the layer
        that receives its gradient, nor the optimizer.
        """
        if not self._steps:
            raise RuntimeError("backward needs a forward with training=True first")
        # Layers taking only the model's input may skip their input gradient (a merge that
        # also takes a layer's output must still return that one).
        takers = [
            self.layers[i]
            for (i, _), _ in self._steps
            if all(j == graph.INPUT for j in self.inputs[i])
        ]
        for layer in takers:
            layer.input_grad_needed = input_grad
        grads = {self._steps[-1][1]: dy}
        try:
            for (i, step), last in reversed(self._steps):
                g = grads.pop(last)
                out = self.guarded(i, "backward", step.backward, g)
                parts = self._input_gradients(i, out, len(g))
                self._check_weight_gradients(i, last)
                for j, part in zip(self.inputs[i], parts):
                    if part is None:  # a gradient nobody needs (the model's input)
                        continue
                    # A new array: a layer may keep the one it returned.
                    grads[j] = grads[j] + part if j in grads else part
        finally:
            for layer in takers:
                layer.input_grad_needed = True
        return grads.get(graph.INPUT) if input_grad else None

    def _input_gradients(self, i: int, out: Any, batch: int) -> list[Any]:
        """Step ``i``'s backward result, one gradient per input, checked against the
        contract: dx, or for a merging layer a list or tuple with one gradient per input;
        each a float32 array of that input's shape (None only for the model's input when its
        gradient is not needed). A PluginError naming the layer otherwise."""
        import numpy as np

        producers = self.inputs[i]
        merging = graph.takes_many(self.layers[i])
        if not merging:
            parts = [out]
        elif isinstance(out, (list, tuple)) and len(out) == len(producers):
            parts = list(out)
        else:
            got = f"{len(out)} gradients" if isinstance(out, (list, tuple)) else _array_text(out)
            raise layer_failure(
                self, i, "backward",
                f"returned {got}; expected a list of {len(producers)} gradients, one per input",
                RULE_MERGE_DX,
            )  # fmt: skip
        for k, (j, part) in enumerate(zip(producers, parts)):
            shape = self.input_shape if j == graph.INPUT else self.shapes[j][1]
            want = (batch, *shape)
            if part is None and j == graph.INPUT and not self.layers[i].input_grad_needed:
                continue
            if not (
                isinstance(part, np.ndarray) and part.dtype == np.float32 and part.shape == want
            ):
                what = f"as the gradient of input {k}" if merging else "as dx"
                raise layer_failure(
                    self, i, "backward",
                    f"returned {_array_text(part)} {what}; expected float32 {want}",
                    RULE_MERGE_DX if merging else RULE_DX,
                )  # fmt: skip
        return parts

    def _check_weight_gradients(self, i: int, last: int) -> None:
        """After the backward of the step of layers ``i`` to ``last`` (more than one when
        fused): each trainable weight has a float32 gradient of its shape in its layer's
        ``grads``, else a PluginError naming the layer (the optimizer would otherwise fail
        with a bare ``KeyError: 'w'``, or update with a stale or misshaped array)."""
        import numpy as np

        for k in range(i, last + 1):
            grads = getattr(self.layers[k], "grads", None)
            for p in self._param_specs[k]:
                if not p.trainable:
                    continue
                g = grads.get(p.name) if isinstance(grads, dict) else None
                if not (isinstance(g, np.ndarray) and g.dtype == np.float32 and g.shape == p.shape):
                    got = "nothing" if g is None else _array_text(g)
                    raise layer_failure(
                        self, k, "backward",
                        f"left {got} in grads[{p.name!r}]; expected float32 {p.shape}",
                        RULE_GRADS,
                    )  # fmt: skip

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
        batch_size = check_int(batch_size, "predict(batch_size)", 1)
        return self._predict(self.check_input(x), batch_size)

    def _predict(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """:meth:`predict` of ``x`` that went through :meth:`check_input` (fit's validation
        passes, evaluate), so that only the call that received ``x`` warns about it."""
        import numpy as np

        outputs = [
            self.forward(x[i : i + batch_size], training=False)
            for i in range(0, len(x), batch_size)
        ]
        if not outputs:
            return np.zeros((0, *self.output_shape), np.float32)
        return np.concatenate(outputs)

    def check_input(self, x: Any, what: str = "x", *, warn: bool = True) -> np.ndarray:
        """``x`` as C-contiguous float32 of shape (N, *input_shape) by the input rule that the
        data loaders share (:func:`nbcnn.data.to_model_input`: integers are 0..255 pixels and
        are divided by 255, floats are taken as they are; floats that look like 0..255 pixels
        get a UserWarning), or DataError. A model that does not know its input shape yet takes
        ``x``'s sample shape."""
        import numpy as np

        from nbcnn.data import to_model_input, warn_unscaled_pixels
        from nbcnn.streaming import ImageArray

        if isinstance(x, ImageArray) and x.shape[1:] == self.input_shape:
            return x  # images on disk, read as float32 a batch at a time: never converted whole
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as err:  # ragged nested lists
            raise DataError(f"{what} is not an array: {err}") from None
        if self.input_shape is None:
            if not 2 <= x.ndim <= 5:
                raise DataError(
                    f"{what} has shape {tuple(x.shape)}; expected (N, *sample shape) with 1 to 4 "
                    "sample axes, channels-last"
                )
            self._set_input_shape(x.shape[1:])
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise DataError(
                f"{what} has shape {tuple(x.shape)} but the model takes (N, "
                f"{', '.join(map(str, self.input_shape))})"
            )
        out = to_model_input(x, what)
        if warn and np.issubdtype(x.dtype, np.floating) and not self._scales_input():
            warn_unscaled_pixels(out, what)
        return out

    def _scales_input(self) -> bool:
        """Whether a Rescaling or Normalization layer scales the input: then 0..255 floats
        are what the model expects."""
        from nbcnn.layers.preprocessing import Normalization, Rescaling

        return any(isinstance(layer, (Normalization, Rescaling)) for layer in self.layers)

    # ------------------------------------------------------------------ Keras-like API

    def summary(self, print_fn: Any = None, *, plain: bool = False, explain: bool = False) -> None:
        """Print the table of ``nbcnn summary`` (Keras's columns, then MACs, memory and
        receptive field; ``plain`` keeps Keras's columns only, ``explain`` adds the arithmetic
        of each count). As Keras, returns None and calls ``print_fn`` (default ``print``) on
        each line."""
        from nbcnn.summary import render_table, summarize

        self.require_shapes()
        print_fn = print if print_fn is None else print_fn
        for line in render_table(summarize(self), extras=not plain, explain=explain).split("\n"):
            print_fn(line)

    def get_config(self) -> dict[str, Any]:
        """The config as a dict, the YAML's structure: ``name``, ``input_shape``, ``layers``
        (each with every argument, defaults included) and the ``train`` section the model was
        loaded with, if any. :func:`from_config` rebuilds the same model from it."""
        import copy

        self.require_shapes()
        layers = [layer.get_config() for layer in self.layers]
        for entry, written in zip(layers, graph.written_inputs(self.inputs, self.layers)):
            if written is not None:  # a graph: where the layer takes its input from
                entry["inputs"] = written
        config: dict[str, Any] = {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "layers": layers,
        }
        if self.spec is not None and self.spec.train is not None:
            config["train"] = copy.deepcopy(self.spec.train)
        return config

    def to_yaml(self) -> str:
        """:meth:`get_config` as YAML text, a config file that ``nbcnn`` commands accept."""
        import yaml

        return yaml.safe_dump(self.get_config(), sort_keys=False)

    def compile(
        self,
        optimizer: str | dict | None = None,
        loss: str | None = None,
        metrics: list[str] | tuple[str, ...] | None = None,
    ) -> None:
        """Choose optimizer, loss and metrics; defaults come from the config's ``train:``
        section (metrics: ``["accuracy"]``)."""
        from nbcnn import train

        train.compile(self, optimizer=optimizer, loss=loss, metrics=metrics)

    def fit(
        self,
        x,
        y,
        batch_size: int = 32,
        epochs: int = 1,
        verbose: int | str = 1,
        callbacks: list | None = None,
        validation_split: float = 0.0,
        validation_data=None,
        shuffle: bool = True,
        **kwargs,
    ):
        """Train on ``x : (N, *input_shape)`` with integer labels ``y : (N,)``, Keras's
        arguments in Keras's order (see :func:`nbcnn.train.fit`); returns a History whose
        ``history`` maps loss, the metrics and, with validation data, their ``val_`` forms
        to one value per epoch. ``epochs=0`` trains nothing, as in Keras; a bad argument is a
        ConfigError naming it (``fit(batch_size): expected an int >= 1, got 0``) before any
        work."""
        from nbcnn import train

        return train.fit(
            self,
            x,
            y,
            batch_size=batch_size,
            epochs=epochs,
            verbose=verbose,
            callbacks=callbacks,
            validation_split=validation_split,
            validation_data=validation_data,
            shuffle=shuffle,
            **kwargs,
        )

    def evaluate(self, x, y, batch_size: int = 256) -> dict:
        """``{"loss", "accuracy", "per_class_accuracy", "confusion_matrix", "samples"}``."""
        from nbcnn import train

        x = self.check_input(x)
        y = train._labels(y, len(x), self)
        return train.evaluate_arrays(self, x, y, batch_size, checked=True)

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
        """Load arrays in ``get_weights`` order; DataError names the first mismatch, and the
        file ``source`` when they come from one. Values must stay finite as float32."""
        import numpy as np

        def refused(message: str) -> DataError:
            return DataError(message if source else f"set_weights(weights): {message}", file=source)

        self._require_built()
        slots = self._weight_slots()
        if not isinstance(weights, (list, tuple)):
            raise refused(
                f"expected a list of {len(slots)} arrays in get_weights() order, got "
                f"{show(weights)}"
            )
        if len(weights) != len(slots):
            raise refused(
                f"expected {len(slots)} weight arrays for model {self.name!r}, got {len(weights)}"
            )
        checked = []
        for (i, layer, p), w in zip(slots, weights):
            label = f"{layer_label(i, layer)} {p.name}"
            try:
                w = np.asarray(w)
            except (ValueError, TypeError) as err:  # ragged nested lists
                raise refused(f"{label}: not an array: {err}") from None
            if tuple(w.shape) != p.shape or not np.issubdtype(w.dtype, np.floating):
                raise refused(
                    f"{label}: expected shape {p.shape} float, got {tuple(w.shape)} {w.dtype}"
                )
            # Checked after the cast: float64's 1e300 is finite but becomes inf as float32.
            with np.errstate(over="ignore", invalid="ignore"):
                w32 = w.astype(np.float32)
            bad = np.flatnonzero(~np.isfinite(w32))
            if bad.size:
                value = w.reshape(-1)[bad[0]]
                index = [int(k) for k in np.unravel_index(bad[0], w.shape)]
                if not np.isfinite(value):
                    raise refused(f"{label} holds NaN or inf ({value} at index {index})")
                raise refused(
                    f"{label} holds {value} at index {index}, beyond float32's range (largest "
                    f"{np.finfo(np.float32).max:.8g})"
                )
            checked.append((layer, p.name, w32))
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
        """Write the weights to an ``.npz`` (no pickle), atomically, into a folder that exists
        (a typo in a folder name is refused, not created)."""
        from nbcnn.io import save_npz_atomic

        path = _weights_path(path, "save_weights(path)")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            problem = "is not a folder" if os.path.exists(folder) else "does not exist"
            # Quoted in full up to PATH_MAX (4096): a cut would hide which folder is meant.
            raise DataError(f"save_weights(path): the folder {show(folder, 4100)} {problem}")
        save_npz_atomic(path, dict(zip(self.weight_names(), self.get_weights())))

    def load_weights(self, path: str | os.PathLike) -> None:
        """Read weights saved by :meth:`save_weights` (or a checkpoint.npz); DataError naming
        the first layer that does not fit, with both shapes, on any mismatch."""
        from nbcnn.io import load_npz

        path = _weights_path(path, "load_weights(path)")
        names = self.weight_names()
        arrays = load_npz(path, max_members=max_file_members(len(names)))
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


def _weights_path(path: Any, where: str) -> str:
    """``path`` as a str, or DataError naming the argument: not a path, empty, or holding a
    NUL (which the OS refuses with a raw ValueError)."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str) or not path or "\0" in path:
        raise DataError(
            f"{where}: expected a file path (a non-empty str without NUL), got {show(path)}"
        )
    return path


def check_int(value: Any, where: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (NumPy's integers too; bools are not counts), else
    ConfigError naming the argument: ``fit(batch_size): expected an int >= 1, got 0``."""
    if is_int(value) and value >= minimum:
        return int(value)
    raise ConfigError(f"expected an int >= {minimum}, got {show(value)}", where=where)


def check_shape(value: Any, where: str) -> Shape:
    """A per-sample input shape as a config's ``input_shape`` allows it: 1 to 4 ints >= 1,
    channels-last (a list, tuple or 1-D NumPy array); else ConfigError naming the argument."""
    if getattr(value, "ndim", None) == 1:
        value = list(value)
    ok = (
        isinstance(value, (list, tuple))
        and 1 <= len(value) <= 4
        and all(is_int(v) and v >= 1 for v in value)
    )
    if not ok:
        raise ConfigError(
            f"expected 1 to 4 ints >= 1, channels-last like (28, 28, 1), got {show(value)}",
            where=where,
        )
    if max(value) > MAX_INT:
        raise ConfigError(f"{TOO_LARGE}, got {show(value)}", where=where)
    return tuple(int(v) for v in value)


def _shape_result(value: Any, *_: Any) -> Shape:
    if isinstance(value, (tuple, list)) and all(is_int(v) for v in value):
        return tuple(int(v) for v in value)
    raise ValueError("a tuple of ints")


def _param_specs_result(value: Any, *_: Any) -> list[ParamSpec]:
    what = "a list of ParamSpec(name, shape: tuple of ints >= 0, trainable) with unique names"
    if not isinstance(value, (tuple, list)):
        raise ValueError(what)
    specs = []
    for p in value:
        ok = (
            isinstance(p, ParamSpec)
            and isinstance(p.name, str)
            and isinstance(p.shape, (tuple, list))
            and all(is_int(v) and v >= 0 for v in p.shape)
        )
        if not ok:
            raise ValueError(what)
        specs.append(ParamSpec(p.name, tuple(int(v) for v in p.shape), bool(p.trainable)))
    if len({p.name for p in specs}) != len(specs):
        raise ValueError(what)
    return specs


def _macs_result(value: Any, *_: Any) -> int:
    if is_int(value) and value >= 0:
        return int(value)
    raise ValueError("an int >= 0")


def _field_result(value: Any, input_shape: Shape, rf: tuple, jump: tuple) -> tuple | None:
    def numbers_like_rf(part: Any) -> bool:
        return (
            isinstance(part, (tuple, list))
            and len(part) == len(rf)
            and all(is_number(v) and 0 < v < math.inf for v in part)
        )

    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(map(numbers_like_rf, value)):
        return tuple(value[0]), tuple(value[1])
    raise ValueError(f"None or (receptive field, jump) of {len(rf)} positive numbers each")


def _explain_result(value: Any, *_: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError("a string")


#: What each calculator must return (the contract in docs/plugins.md), normalised: lists become
#: tuples, NumPy integers ints.
_CALCULATOR_RESULTS = {
    "output_shape": _shape_result,
    "param_shapes": _param_specs_result,
    "macs": _macs_result,
    "receptive_field": _field_result,
    "explain": _explain_result,
}


def _array_text(value: Any) -> str:
    """What a forward returned, in one line: ``a float64 array of shape (2, 4)`` or a quote."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return quote(value)


def _listing(arrays: dict) -> str:
    """``'dense/kernel' (64, 10), 'dense/bias' (10,) and 3 more``: the first arrays of a
    file, each name quoted by :func:`show` (a file's names can be of any length)."""
    return (
        show_some(list(arrays.items()), render=lambda item: f"{show(item[0])} {item[1].shape}")
        or "no arrays"
    )


#: Arrays per weight that nbcnn's own files hold at most: the weight and, in a checkpoint,
#: up to three optimizer slots (RMSprop's velocity, average gradient and momentum).
ARRAYS_PER_WEIGHT = 4


def max_file_members(weights: int) -> int:
    """Most members read from a weights file or checkpoint of a model with ``weights``
    weights: as many as nbcnn writes for such a model, and at least io.MAX_NPZ_MEMBERS."""
    from nbcnn.io import MAX_NPZ_MEMBERS

    return max(MAX_NPZ_MEMBERS, ARRAYS_PER_WEIGHT * weights + 2)  # + 'iterations' and 'meta'


def _name_layers(layers: list[Layer]) -> None:
    """Name the layers built without a name as Keras does, skipping the names given; refuse
    a name given twice (weights files store arrays as ``layer/param``)."""
    where: dict[str, int] = {}
    for i, layer in enumerate(layers):
        if getattr(layer, "named", True):
            if layer.name in where:
                raise ConfigError(
                    f"duplicate layer name {show(layer.name)} (also layers[{where[layer.name]}])",
                    where=f"layers[{i}].name",
                )
            where[layer.name] = i
    counts: dict[str, int] = {}
    taken = set(where)
    for layer in layers:
        if not getattr(layer, "named", True):
            # The name the layer gave itself (max_pooling2d, or a plugin's own), kept from its
            # first naming: Sequential.add names every layer again, from the same bases.
            base = vars(layer).setdefault("default_name", layer.name)
            layer.name = _default_name(base, counts, taken)


def _distribution_of(layer: Layer) -> str:
    """The distribution whose entry point names ``layer``'s class (no plugin is imported to
    find it), else the top-level package of the class's module (``__main__`` for a class
    written in a script)."""
    cls = type(layer)
    value = f"{cls.__module__}:{cls.__qualname__}"
    for entry in registry().entries():
        if entry.value.replace(" ", "") == value:
            return entry.distribution
    return cls.__module__.partition(".")[0]


def _default_name(base: str, counts: dict[str, int], taken: set[str]) -> str:
    """Keras's naming: conv2d, conv2d_1, conv2d_2... skipping names given explicitly."""
    while True:
        n = counts.get(base, 0)
        counts[base] = n + 1
        name = base if n == 0 else f"{base}_{n}"
        if name not in taken:
            taken.add(name)
            return name


#: The rules of the layer contract that nbcnn checks at run time (docs/plugins.md, "What
#: nbcnn checks at run time"), quoted by the error that reports one broken.
RULE_CALCULATOR = "a calculator raises only ShapeError, for an input that does not fit"
RULE_OUTPUT = "forward returns float32 of the shape output_shape gives"
RULE_DX = "backward returns dx, float32 of its input's shape"
RULE_MERGE_DX = "a merging layer's backward returns one float32 gradient per input, of its shape"
RULE_GRADS = "backward puts a float32 gradient of each trainable weight's shape in self.grads"


def layer_failure(
    model: Sequential, i: int, phase: str, what: str, rule: str | None = None
) -> PluginError:
    """The one-line PluginError (exit code 1) for layer ``i`` failing in ``phase`` (a
    calculator's name, build, forward, backward, to_onnx): names the layer, its type and its
    distribution, what went wrong and the contract's ``rule`` it broke, if one."""
    layer = model.layers[i]
    dist = model.distributions[i]
    rule = f" (rule: {rule})" if rule else ""
    return PluginError(
        f"{layer_label(i, layer)} from distribution {dist!r} failed in {phase}: {what}{rule}",
        distribution=dist,
        phase=phase,
    )


def load_model(
    config: str | os.PathLike | Mapping[str, Any], input_shape: Shape | None = None
) -> Sequential:
    """Build the model of a YAML config file, or of a config dict (:func:`from_config`);
    calculators only, weights on first use."""
    from nbcnn.spec import load_spec

    if isinstance(config, Mapping):
        return from_config(config, input_shape=input_shape)
    if input_shape is not None:
        input_shape = check_shape(input_shape, "load_model(input_shape)")
    spec = load_spec(config, input_shape=input_shape)
    try:
        return Sequential.from_spec(spec)
    except ConfigError as err:
        raise err.located(file=str(config)) from None


def from_config(config: Mapping[str, Any], input_shape: Shape | None = None) -> Sequential:
    """The model of a config given as a dict with the YAML's structure (``name``,
    ``input_shape``, ``layers``, optional ``train``), checked as a config file is; tuples and
    NumPy numbers are taken as YAML's lists and numbers. The dict is copied, never kept."""
    from nbcnn.spec import spec_from_document

    if not isinstance(config, Mapping):
        raise ConfigError(
            f"expected a dict like {{'input_shape': [28, 28, 1], 'layers': [...]}}, got "
            f"{show(config)}",
            where="from_config(config)",
        )
    if input_shape is not None:
        input_shape = check_shape(input_shape, "from_config(input_shape)")
    try:
        doc = _as_yaml_values(config)
    except RecursionError:
        raise ConfigError("nested too deeply (a dict inside itself?)", where="config") from None
    return Sequential.from_spec(spec_from_document(doc, input_shape=input_shape))


def model_from_yaml(text: str) -> Sequential:
    """The model of a config given as YAML text (what :meth:`Sequential.to_yaml` returns),
    parsed as strictly as a config file."""
    from nbcnn.spec import parse_yaml, spec_from_document

    if not isinstance(text, str):
        raise ConfigError(f"expected YAML text, got {show(text)}", where="model_from_yaml(text)")
    return Sequential.from_spec(spec_from_document(parse_yaml(text)))


def _as_yaml_values(value: Any) -> Any:
    """A copy of ``value`` in the types YAML gives: dict, list, int, float, str, bool, None
    (a tuple becomes a list, a NumPy array a list, a NumPy number an int or float)."""
    if isinstance(value, Mapping):
        return {k: _as_yaml_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_yaml_values(v) for v in value]
    if hasattr(value, "ndim") and hasattr(value, "tolist"):  # a NumPy array or scalar
        return _as_yaml_values(value.tolist())
    return value
