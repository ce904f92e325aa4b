"""The layer contract: one base class for built-in and third-party layers.

A layer has two halves:

* a **calculator**, pure Python and instant: construction from the YAML keyword arguments
  (``arguments``, with Keras's names and defaults), ``output_shape``, ``param_shapes``, ``macs``,
  ``receptive_field`` and ``explain``. ``nbcnn summary`` uses only this half, so a layer module
  must not import numba at module level;
* optional **compute**: ``build`` allocates weights, ``forward``/``backward`` run a batch.
  Kernels are imported inside these methods, so they load only when a model runs.

Shapes exclude the batch axis and are channels-last, as in Keras: ``(H, W, C)`` or ``(L, C)``.
The full contract, with a minimal plugin, is written down in docs/plugins.md.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from nbcnn.errors import ConfigError
from nbcnn.layers.args import Arg, parse_arguments

#: Version of this contract. A plugin class may declare ``api_version``; nbcnn refuses one
#: outside ``SUPPORTED_API_VERSIONS`` with a message saying which versions fit.
API_VERSION = 1
SUPPORTED_API_VERSIONS = (1,)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ParamSpec:
    """One weight array as Keras stores it: name, shape, and whether the optimizer updates it."""

    name: str
    shape: Shape
    trainable: bool = True

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class ShapeError(ValueError):
    """Raised by calculators when an input shape does not fit the layer; the model adds which
    layer it was."""


def to_snake_case(name: str) -> str:
    """Keras's default layer names: ``MaxPooling2D`` -> ``max_pooling2d``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


class Layer:
    """Base class of every layer.

    Subclasses set ``arguments`` (the Keras keyword arguments they accept) and override the
    calculator methods; layers with compute override ``build``, ``forward`` and ``backward``.
    Parsed arguments become attributes (``self.filters``, ``self.kernel_size``...).
    """

    #: Keyword arguments accepted from the config, with Keras's names and defaults.
    arguments: ClassVar[dict[str, Arg]] = {}
    #: Rank of the input without the batch axis, when the layer needs one (3 for 2D layers).
    input_rank: ClassVar[int | None] = None
    #: Contract version this class was written against.
    api_version: ClassVar[int] = API_VERSION
    #: The arguments that may be given by position in Python, in order; None means all of
    #: ``arguments`` in their order, which follows the Keras signature (``Conv2D(32, 3)``).
    positional: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, *args: Any, name: str | None = None, input_shape: Any = None, **kwargs: Any):
        what = type(self).__name__
        #: True when the name was given; a model renames the others conv2d, conv2d_1, ...
        self.named = name is not None
        self.name = name or to_snake_case(what)
        #: The Keras 2 habit ``Conv2D(32, 3, input_shape=(28, 28, 1))`` on a first layer: the
        #: model's input shape (checked by the model), never part of the layer's config.
        self.declared_input_shape = input_shape
        kwargs = _positional_to_keywords(
            self.arguments if self.positional is None else self.positional, args, kwargs, what
        )
        self.config = parse_arguments(self.arguments, kwargs, what=what)
        for key, value in self.config.items():
            setattr(self, key, value)
        self.validate()
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.input_shape: Shape | None = None
        self.out_shape: Shape | None = None

    # ------------------------------------------------------------------ calculator

    def validate(self) -> None:
        """Check combinations of arguments; raise ConfigError(where=key)."""

    def output_shape(self, input_shape: Shape) -> Shape:
        """Output shape for one sample; raise ShapeError when the input does not fit."""
        raise NotImplementedError

    def param_shapes(self, input_shape: Shape) -> list[ParamSpec]:
        """Weights in Keras's order and layout (what ``get_weights`` returns)."""
        return []

    def macs(self, input_shape: Shape) -> int:
        """Multiply-accumulates of the forward pass for one sample."""
        return 0

    def receptive_field(
        self, input_shape: Shape, rf: tuple[float, ...], jump: tuple[float, ...]
    ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """Receptive field and jump (input pixels between neighbouring outputs) after this layer,
        given those before it. ``None`` when outputs no longer map to input windows (Flatten,
        global pooling). The default keeps both for layers that keep the spatial rank.
        """
        # A merging layer (``multi_input``) gets the list of its inputs' shapes.
        rank = len(input_shape[0]) if getattr(self, "multi_input", False) else len(input_shape)
        if len(self.output_shape(input_shape)) == rank:
            return rf, jump
        return None

    def explain(self, input_shape: Shape) -> str:
        """The arithmetic behind the parameter count, in words."""
        params = self.param_shapes(input_shape)
        if not params:
            return "no weights = 0"
        terms = " + ".join(f"{'x'.join(map(str, p.shape))} {p.name}" for p in params)
        return f"{terms} = {sum(p.size for p in params):,}"

    def check_rank(self, input_shape: Shape) -> None:
        """Raise ShapeError unless the input has ``input_rank`` axes."""
        if self.input_rank is not None and len(input_shape) != self.input_rank:
            want = {3: "(height, width, channels)", 2: "(steps, channels)"}.get(
                self.input_rank, f"{self.input_rank} axes"
            )
            raise ShapeError(
                f"{type(self).__name__} needs an input of rank {self.input_rank} {want} "
                f"per sample, got {format_shape(input_shape)}"
            )

    # ------------------------------------------------------------------ compute

    #: True when the class implements ``forward``/``backward`` (set automatically).
    has_compute: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        cls.has_compute = "forward" in _defined_in_subclasses(cls)

    def build(self, input_shape: Shape, rng: Any) -> None:
        """Allocate ``self.params`` (float32, Keras layout) for ``input_shape``; ``rng`` is a
        ``numpy.random.Generator`` for initialisers."""
        self.input_shape = tuple(input_shape)
        self.out_shape = self.output_shape(self.input_shape)

    def forward(self, x: Any, training: bool = False) -> Any:
        """``x : (N, *input_shape) float32`` -> ``(N, *output_shape) float32``."""
        raise NotImplementedError(f"{type(self).__name__} has no compute")

    def backward(self, dy: Any) -> Any:
        """Gradient w.r.t. the input of the last ``forward(training=True)``; fills
        ``self.grads`` with one array per trainable parameter."""
        raise NotImplementedError(f"{type(self).__name__} has no compute")

    #: False while the model back-propagates into a first layer whose input gradient nobody
    #: uses; a layer may then skip computing it (and return None).
    input_grad_needed: bool = True

    #: Set by training on the last layer when the loss applies this layer's activation itself
    #: (softmax or sigmoid fused with a cross-entropy, nbcnn.losses): a training ``forward``
    #: then returns the logits and ``backward`` receives the gradient w.r.t. them.
    fused_activation: bool = False

    def activate(self, z: Any, training: bool) -> Any:
        """Apply ``self.activation`` and remember what its backward needs."""
        from nbcnn.layers import activations

        if training and self.fused_activation:
            # The loss applies the activation itself (fused and stable): hand it the logits.
            return z
        a = activations.forward(self.activation, z)
        if training:
            self._z, self._a = z, a
        return a

    def activation_grad(self, dy: Any) -> Any:
        """Gradient w.r.t. the pre-activation of the last training ``forward``."""
        from nbcnn.layers import activations

        if self.fused_activation:
            return dy
        return activations.backward(self.activation, dy, self._z, self._a)

    def get_config(self) -> dict[str, Any]:
        """The YAML mapping that recreates this layer (``type`` and ``name`` included)."""
        config = {"type": type(self).__name__, "name": self.name}
        for key, value in self.config.items():
            config[key] = _plain(value)
        return config


def _positional_to_keywords(
    names: Any, args: tuple[Any, ...], kwargs: dict[str, Any], what: str
) -> dict[str, Any]:
    """``args`` given by position, named in the order ``names``, merged into ``kwargs``;
    ConfigError for too many of them or for one also given by name, as Python would say."""
    names = list(names)
    if len(args) > len(names):
        raise ConfigError(
            f"{what} takes at most {len(names)} positional argument(s) "
            f"({', '.join(names) or 'none'}), got {len(args)}: pass the others by name",
            where=f"{what}()",
        )
    merged = dict(kwargs)
    for key, value in zip(names, args):
        if key in merged:
            raise ConfigError(f"{what} got {key!r} both by position and by name", where=key)
        merged[key] = value
    return merged


def _defined_in_subclasses(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is Layer:
            break
        names.update(vars(klass))
    return names


def _plain(value: Any) -> Any:
    """A parsed argument in YAML's types (a NumPy int given in Python becomes an int), so
    that ``get_config`` can be written with ``yaml.safe_dump``."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def format_shape(shape: Shape) -> str:
    """``(None, 28, 28, 32)``-style text for a per-sample shape."""
    return "(" + ", ".join(["None", *map(str, shape)]) + ")"
