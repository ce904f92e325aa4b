"""Optimizers (SGD, Adam, AdamW, RMSprop) and per-epoch learning-rate schedules.

Defaults and update rules are Keras 3's (``keras/src/optimizers/sgd.py``, ``adam.py``,
``adamw.py``, ``rmsprop.py``), operation for operation, so a config that trains well in Keras
trains the same way here. Every optimizer takes Keras's common arguments
(``keras/src/optimizers/base_optimizer.py``), applied in Keras's order each step: first the
gradients are clipped (``clipnorm``: each gradient array to that L2 norm; ``global_clipnorm``: all
of them together to that global norm; ``clipvalue``: each element to [-v, v]; at most one of the
three), then weight decay shrinks every parameter, ``p -= p * weight_decay * lr`` (decoupled, as
in Loshchilov & Hutter's AdamW, with the step's learning rate), then the optimizer's own update
runs. Updates are done in place on float32 arrays with persistent scratch buffers, so a training
step allocates nothing in the optimizer.

Each update runs as one numba pass per parameter array (``nbcnn/kernels/optim.py``, loaded on
the first step, so that importing this module never imports numba) instead of the NumPy code's
ten or so passes; the NumPy code (each subclass's ``_update``) stays the reference that the
kernels equal bit for bit, and runs where ``FUSED`` is False or an array is not C-contiguous.

An optimizer's whole state is ``iterations`` plus its slot arrays; ``state_dict`` returns them
as a flat ``name -> array`` mapping (``np.savez``-ready) and ``load_state_dict`` restores them
exactly, so a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field

import numpy as np

from nbcnn.errors import ConfigError, DataError
from nbcnn.layers.args import check_options, show, split_type


def _number(name: str, value: object) -> float:
    """``value`` as a float; bools and non-numbers are a ConfigError at ``name``."""
    try:
        ok = not isinstance(value, bool) and isinstance(value, (int, float))
        ok = ok and math.isfinite(value)
        result = float(value) if ok else None
    except OverflowError:  # an int of hundreds of digits
        ok = False
    if not ok:
        raise ConfigError(f"expected a finite number, got {show(value, 40)}", where=name)
    return result


def _positive(name: str, value: object) -> float:
    x = _number(name, value)
    if x <= 0:
        raise ConfigError(f"must be > 0, got {show(value)}", where=name)
    return x


def _fraction(name: str, value: object, *, closed: bool = False) -> float:
    """A number in [0, 1) (or [0, 1] when ``closed``)."""
    x = _number(name, value)
    if not (0 <= x <= 1 if closed else 0 <= x < 1):
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ConfigError(f"must be in {interval}, got {show(value)}", where=name)
    return x


def _step_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"must be an integer >= 1 (epochs), got {show(value)}", where=name)
    return value


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, got {show(value)}", where=name)
    return value


def _optional_positive(name: str, value: object) -> float | None:
    return None if value is None else _positive(name, value)


def _optional_decay(name: str, value: object) -> float | None:
    if value is None:
        return None
    x = _number(name, value)
    if x < 0:
        raise ConfigError(f"must be >= 0 (or null for none), got {show(value)}", where=name)
    return x


#: Keras's arguments common to every optimizer (``BaseOptimizer.__init__``), all off by default.
COMMON_OPTIONS = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm")

#: Whether the updates run fused (one numba pass per array) or as the NumPy reference code; the
#: two give identical bits (tests/test_optim_fused.py switches this to compare them).
FUSED = True


def _kernels():
    """nbcnn.kernels.optim, imported at the first fused update: it loads numba, which
    ``nbcnn summary`` (which imports this module) must not."""
    from nbcnn.kernels import optim

    return optim


class Optimizer:
    """Base class: clipping, weight decay, slot bookkeeping, scratch buffers, state I/O;
    subclasses define ``_update`` and ``_fused_update``.

    Subclasses list their per-parameter slot arrays in ``_slot_names()`` and update one
    parameter twice over: in NumPy, ``_update(i, p, g, lr, t1, t2)`` where t1, t2 are scratch
    arrays shaped like p, and fused, ``_fused_update(i, p, g, lr, decay)`` where decay is the
    float32 weight decay times lr (0: none) that the kernel applies first. They pass
    ``**common`` (the ``COMMON_OPTIONS``) on to this constructor.
    """

    def __init__(
        self,
        learning_rate: float,
        *,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
    ):
        self.learning_rate = _positive("learning_rate", learning_rate)
        self.weight_decay = _optional_decay("weight_decay", weight_decay)
        self.clipnorm = _optional_positive("clipnorm", clipnorm)
        self.clipvalue = _optional_positive("clipvalue", clipvalue)
        self.global_clipnorm = _optional_positive("global_clipnorm", global_clipnorm)
        clips = [k for k in ("clipnorm", "clipvalue", "global_clipnorm") if getattr(self, k)]
        if len(clips) > 1:  # Keras: "Only one of `clipnorm`, `clipvalue` and ..."
            raise ConfigError(
                f"only one of clipnorm, clipvalue and global_clipnorm can be set, got "
                f"{' and '.join(clips)}",
                where=clips[1],
            )
        self.iterations = 0
        # slot name -> one array per parameter, created on the first step (or by load).
        self._slots: dict[str, list[np.ndarray]] | None = None
        # t1, t2 for the updates and, when clipping, a third for the clipped gradient.
        self._scratch: tuple[np.ndarray, ...] | None = None

    def _slot_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _update(self, i, p, g, lr, t1, t2) -> None:
        raise NotImplementedError

    #: A subclass without its own ``_fused_update`` (a user's optimizer) runs ``_update``.
    _fused_update = None

    @classmethod
    def option_names(cls) -> list[str]:
        """Every option a config may give this optimizer: its own, then the common ones."""
        own = [
            p.name for p in inspect.signature(cls).parameters.values() if p.kind != p.VAR_KEYWORD
        ]
        return own + [name for name in COMMON_OPTIONS if name not in own]

    def config(self) -> dict:
        """The resolved options, ``{"type": ..., "learning_rate": ..., ...}``, every default
        written in (the run's config.yaml records this)."""
        names = self.option_names()
        return {"type": type(self).__name__.lower(), **{k: getattr(self, k) for k in names}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"

    def step(
        self, params: list[np.ndarray], grads: list[np.ndarray], learning_rate: float | None = None
    ) -> None:
        """Apply one update to ``params`` in place and count one iteration.

        params : list of float32 arrays, any shapes, updated in place; grads : same shapes.
        learning_rate : this step's rate (from a schedule); ``self.learning_rate`` when None.
        """
        lr = self.learning_rate if learning_rate is None else float(learning_rate)
        if len(params) != len(grads):
            raise ValueError(f"{len(params)} parameters but {len(grads)} gradients")
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if p.dtype != np.float32 or p.shape != np.shape(g):
                raise ValueError(
                    f"parameter {i}: {p.dtype} {p.shape} with gradient {np.shape(g)}; "
                    "expected a float32 parameter and a gradient of the same shape"
                )
        if self._slots is None:
            self._slots = {name: [np.zeros_like(p) for p in params] for name in self._slot_names()}
        self._check_slots(params)
        size = max((p.size for p in params), default=0)
        clipping = bool(self.clipnorm or self.clipvalue or self.global_clipnorm)
        buffers = 3 if clipping else 2
        if self._scratch is None or len(self._scratch) < buffers or self._scratch[0].size < size:
            self._scratch = tuple(np.empty(size, np.float32) for _ in range(buffers))
        scale = _global_scale(grads, self.global_clipnorm) if self.global_clipnorm else None
        fused = FUSED and self._fused_update is not None
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            g = np.asarray(g, dtype=np.float32)
            t1, t2, *t3 = (s[: p.size].reshape(p.shape) for s in self._scratch)
            if clipping:
                g = self._clip(g, scale, out=t3[0])
            decay = np.float32(self.weight_decay or 0) * np.float32(lr)
            slots = [arrays[i] for arrays in self._slots.values()]
            if fused and all(a.flags.c_contiguous for a in (p, *slots)):
                self._fused_update(i, p, np.ascontiguousarray(g), lr, decay)
                continue
            if self.weight_decay:
                np.multiply(p, decay, out=t1)
                p -= t1
            self._update(i, p, g, lr, t1, t2)
        self.iterations += 1

    def _clip(self, g: np.ndarray, scale: float | None, out: np.ndarray) -> np.ndarray:
        """``g`` clipped into ``out`` as Keras's ``_clip_gradients``: by the global ``scale``,
        by this array's own norm (``g * clipnorm / max(norm, clipnorm)``), or by value."""
        if self.clipvalue:
            return np.clip(g, -self.clipvalue, self.clipvalue, out=out)
        if scale is None:
            norm = math.sqrt(float(np.square(g, dtype=np.float64).sum()))
            scale = self.clipnorm / max(norm, self.clipnorm) if math.isfinite(norm) else math.nan
        return np.multiply(g, np.float32(scale), out=out)

    def _check_slots(self, params: list[np.ndarray]) -> None:
        """Loaded state must fit the parameters it is applied to (a resume of another model)."""
        for name, arrays in self._slots.items():
            shapes = [a.shape for a in arrays]
            if shapes != [p.shape for p in params]:
                raise DataError(
                    f"optimizer state {name!r} has arrays of shapes {shapes} but the model's "
                    f"parameters have shapes {[p.shape for p in params]}"
                )

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copy of the state: ``{"iterations": int64 (), "<slot>.<i>": float32 array}``."""
        state = {"iterations": np.array(self.iterations, dtype=np.int64)}
        for name, arrays in (self._slots or {}).items():
            state.update({f"{name}.{i}": a.copy() for i, a in enumerate(arrays)})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore a ``state_dict`` exactly; a state of another optimizer kind is a DataError."""
        state = dict(state)
        if "iterations" not in state:
            raise DataError("optimizer state has no 'iterations'")
        iterations = np.asarray(state.pop("iterations"))
        if iterations.shape != () or not np.issubdtype(iterations.dtype, np.integer):
            raise DataError(
                f"optimizer 'iterations' must be an integer scalar, got {show(iterations)}"
            )
        names = self._slot_names()
        counts = {name: sum(k.startswith(f"{name}.") for k in state) for name in names}
        expected = {f"{name}.{i}" for name in names for i in range(max(counts.values(), default=0))}
        if set(state) != expected:
            extra, missing = sorted(set(state) - expected), sorted(expected - set(state))
            raise DataError(
                f"optimizer state does not fit {type(self).__name__} with slots {list(names)}: "
                f"unexpected {extra}, missing {missing}"
            )
        if iterations < 0:
            raise DataError(f"optimizer 'iterations' must be >= 0, got {int(iterations)}")
        slots = {name: [_slot(state, f"{name}.{i}") for i in range(counts[name])] for name in names}
        # An empty state (saved before the first step) leaves slots to be built lazily.
        self._slots = slots if expected else None
        self.iterations = int(iterations)

    def check_fits(self, params: list[np.ndarray]) -> None:
        """DataError unless the restored slots hold one array per parameter, shaped like it
        (a checkpoint's optimizer state must belong to its weights)."""
        for name, arrays in (self._slots or {}).items():
            shapes = [a.shape for a in arrays]
            wanted = [p.shape for p in params]
            if shapes != wanted:
                raise DataError(
                    f"optimizer slot {name!r} holds arrays shaped {shapes[:3]}..., the weights "
                    f"are {wanted[:3]}...: not this model's optimizer state"
                )


def _global_scale(grads: list[np.ndarray], clip: float) -> float:
    """Keras's ``clip_by_global_norm``: every gradient is multiplied by
    ``clip / max(global_norm, clip)``, the global norm taken over all arrays together; a
    non-finite norm gives NaN (the step then fails loudly, as in Keras)."""
    norm = math.sqrt(sum(float(np.square(g, dtype=np.float64).sum()) for g in grads))
    return clip / max(norm, clip) if math.isfinite(norm) else math.nan


def _slot(state: dict, key: str) -> np.ndarray:
    """One optimizer slot as float32; refused when not real numbers or beyond float32."""
    value = np.asarray(state[key])
    if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise DataError(f"optimizer slot {key!r} is {value.dtype}, not numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        value = value.astype(np.float32)
    if not np.isfinite(value).all():
        raise DataError(f"optimizer slot {key!r} holds NaN, inf or values beyond float32")
    return value


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum, Keras 3's rule.

    Without momentum ``p -= lr * g``. With momentum ``m = momentum * m - lr * g``, then
    ``p += m``, or with Nesterov ``p += momentum * m - lr * g``.
    """

    def __init__(
        self,
        learning_rate: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        **common: float | None,
    ):
        super().__init__(learning_rate, **common)
        self.momentum = _fraction("momentum", momentum)
        self.nesterov = _flag("nesterov", nesterov)

    def _slot_names(self):
        return ("momentum",) if self.momentum != 0 else ()

    def _update(self, i, p, g, lr, t1, t2):
        np.multiply(g, lr, out=t1)
        if self.momentum == 0:
            p -= t1
            return
        m = self._slots["momentum"][i]
        m *= self.momentum
        m -= t1
        if self.nesterov:
            np.multiply(m, self.momentum, out=t2)
            t2 -= t1
            p += t2
        else:
            p += m

    def _fused_update(self, i, p, g, lr, decay):
        m = self._slots["momentum"][i] if self.momentum != 0 else None
        _kernels().sgd_update(p, g, m, lr, self.momentum, self.nesterov, decay)


class Adam(Optimizer):
    """Adam with Keras 3's bias correction folded into the step size.

    With t = iterations + 1: ``alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``,
    ``m += (g - m) * (1 - beta_1)``, ``v += (g**2 - v) * (1 - beta_2)``,
    ``p -= alpha * m / (sqrt(v) + epsilon)``.
    """

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        **common: float | None,
    ):
        super().__init__(learning_rate, **common)
        self.beta_1 = _fraction("beta_1", beta_1)
        self.beta_2 = _fraction("beta_2", beta_2)
        self.epsilon = _positive("epsilon", epsilon)

    def _slot_names(self):
        return ("m", "v")

    def _alpha(self, lr: float) -> float:
        """alpha: lr with both bias corrections, for step t = iterations + 1."""
        t = self.iterations + 1
        return lr * math.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)

    def _update(self, i, p, g, lr, t1, t2):
        m, v = self._slots["m"][i], self._slots["v"][i]
        alpha = self._alpha(lr)
        np.subtract(g, m, out=t1)
        t1 *= 1 - self.beta_1
        m += t1
        np.square(g, out=t1)
        t1 -= v
        t1 *= 1 - self.beta_2
        v += t1
        np.sqrt(v, out=t1)
        t1 += self.epsilon
        np.multiply(m, alpha, out=t2)
        t2 /= t1
        p -= t2

    def _fused_update(self, i, p, g, lr, decay):
        m, v = self._slots["m"][i], self._slots["v"][i]
        alpha = self._alpha(lr)
        _kernels().adam_update(p, g, m, v, alpha, self.beta_1, self.beta_2, self.epsilon, decay)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay
    Regularization", 2019), Keras 3's ``AdamW``: Adam whose ``weight_decay`` defaults to 0.004
    and may not be null. The decay is the common ``p -= p * weight_decay * lr`` (see the
    module docstring), applied before Adam's update."""

    def __init__(
        self,
        learning_rate: float = 0.001,
        weight_decay: float = 0.004,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        **common: float | None,
    ):
        if weight_decay is None:  # Keras: "Argument `weight_decay` must be a float."
            raise ConfigError(
                "AdamW needs a number (Keras's default is 0.004)", where="weight_decay"
            )
        super().__init__(
            learning_rate, beta_1, beta_2, epsilon, weight_decay=weight_decay, **common
        )


class RMSprop(Optimizer):
    """RMSprop with optional plain momentum and centering, Keras 3's rule.

    ``v = rho * v + (1 - rho) * g**2``; centered: ``a = rho * a + (1 - rho) * g`` and
    ``d = v - a**2 + epsilon``, else ``d = v + epsilon`` (epsilon inside the square root);
    ``inc = lr * g / sqrt(d)``; with momentum ``mom = momentum * mom + inc; p -= mom``,
    else ``p -= inc``.
    """

    def __init__(
        self,
        learning_rate: float = 0.001,
        rho: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-7,
        centered: bool = False,
        **common: float | None,
    ):
        super().__init__(learning_rate, **common)
        self.rho = _fraction("rho", rho)
        self.momentum = _fraction("momentum", momentum)
        self.epsilon = _positive("epsilon", epsilon)
        self.centered = _flag("centered", centered)

    def _slot_names(self):
        names = ("velocity",)
        if self.momentum > 0:
            names += ("momentum",)
        if self.centered:
            names += ("average_gradient",)
        return names

    def _update(self, i, p, g, lr, t1, t2):
        v = self._slots["velocity"][i]
        v *= self.rho
        np.square(g, out=t1)
        t1 *= 1 - self.rho
        v += t1
        if self.centered:
            a = self._slots["average_gradient"][i]
            a *= self.rho
            np.multiply(g, 1 - self.rho, out=t1)
            a += t1
            np.square(a, out=t1)
            np.subtract(v, t1, out=t1)
        else:
            t1[...] = v
        t1 += self.epsilon
        np.sqrt(t1, out=t1)
        np.multiply(g, lr, out=t2)
        t2 /= t1
        if self.momentum > 0:
            mom = self._slots["momentum"][i]
            mom *= self.momentum
            mom += t2
            p -= mom
        else:
            p -= t2

    def _fused_update(self, i, p, g, lr, decay):
        v = self._slots["velocity"][i]
        a = self._slots["average_gradient"][i] if self.centered else None
        mom = self._slots["momentum"][i] if self.momentum > 0 else None
        kernel = _kernels().rmsprop_update
        kernel(p, g, v, a, mom, lr, self.rho, self.momentum, self.epsilon, decay)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
}


def make_optimizer(spec: str | dict, *, where: str = "train.optimizer") -> Optimizer:
    """Build an optimizer from ``"adam"`` or ``{"type": "adam", "learning_rate": 1e-3, ...}``.

    Type names are case-insensitive (``Adam``, ``SGD``, ``RMSprop`` as in Keras). An unknown type,
    an unknown option or a value out of range is a ConfigError located at ``where``
    (e.g. ``train.optimizer.beta_1``) with a did-you-mean suggestion.
    """
    kind, options = split_type(spec, where, sorted(OPTIMIZERS), "optimizer")
    cls = OPTIMIZERS[kind]
    check_options(options, cls.option_names(), kind, where)
    try:
        return cls(**options)
    except ConfigError as err:
        raise err.located(where=where) from None


# Schedule type -> its options with their defaults.
SCHEDULES: dict[str, dict[str, float]] = {
    "constant": {},
    "step": {"step_size": 10, "gamma": 0.1},
    "exponential": {"decay_rate": 0.96},
    "cosine": {"alpha": 0.0},
}


@dataclass(frozen=True)
class Schedule:
    """Learning rate per epoch (0-based): ``schedule(epoch) -> float``.

    constant: ``base_lr``; step: ``base_lr * gamma ** (epoch // step_size)``;
    exponential: ``base_lr * decay_rate ** epoch``; cosine (Keras's ``CosineDecay`` stepped per
    epoch over ``epochs``): ``base_lr * (alpha + (1 - alpha) * 0.5 * (1 + cos(pi * e / epochs)))``
    with e clamped to ``epochs``.
    """

    type: str
    base_lr: float
    epochs: int
    options: dict[str, float] = field(default_factory=dict)

    def __call__(self, epoch: int) -> float:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        o = self.options
        if self.type == "step":
            return self.base_lr * o["gamma"] ** (epoch // o["step_size"])
        if self.type == "exponential":
            return self.base_lr * o["decay_rate"] ** epoch
        if self.type == "cosine":
            cosine = 0.5 * (1 + math.cos(math.pi * min(epoch, self.epochs) / self.epochs))
            return self.base_lr * (o["alpha"] + (1 - o["alpha"]) * cosine)
        return self.base_lr


def make_schedule(
    spec: str | dict | None, base_lr: float, epochs: int, *, where: str = "train.lr_schedule"
) -> Schedule:
    """Build a per-epoch schedule from ``None`` (constant), ``"cosine"`` or ``{"type": ...}``.

    base_lr : the optimizer's learning rate (the rate at epoch 0); epochs : the run's length
    (cosine decays over it). Options: step ``step_size`` (int >= 1, default 10) and ``gamma``
    (> 0, default 0.1); exponential ``decay_rate`` (> 0, default 0.96); cosine ``alpha``
    (final fraction of base_lr, in [0, 1], default 0). Bad values are a ConfigError at ``where``.
    """
    base_lr = _positive("learning_rate", base_lr)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"must be an integer >= 1, got {show(epochs)}", where="train.epochs")
    kind, options = split_type(spec or "constant", where, list(SCHEDULES), "schedule")
    check_options(options, list(SCHEDULES[kind]), kind, where)
    values = {**SCHEDULES[kind], **options}
    checks = {
        "step_size": _step_size,
        "gamma": _positive,
        "decay_rate": _positive,
        "alpha": functools.partial(_fraction, closed=True),
    }
    try:
        values = {k: checks[k](k, v) for k, v in values.items()}
    except ConfigError as err:
        raise err.located(where=where) from None
    return Schedule(kind, base_lr, epochs, values)
