"""The layer test kit: check a layer class against the contract, from any test runner.

A plugin's own tests call these functions with a few example arguments; each raises
``AssertionError`` with a message naming the layer, its arguments and what went wrong, so they
work under pytest, unittest or a plain script (no pytest import here).

* :func:`check_calculator`: the calculator half alone (what ``nbcnn summary`` uses): the class
  fits the contract, output shape, parameter specs, MACs, receptive field and explanation have
  the right types, and an input of the wrong rank raises ``ShapeError``. Enough for a
  calculator-only layer.
* :func:`check_config_round_trip`: ``get_config()`` survives YAML and recreates an equal layer.
* :func:`check_layer`: both of the above, then the compute half: the calculator's shapes and
  counts equal what a real forward pass and ``build`` produce, backward returns the input's
  shape and one gradient per trainable weight, and every gradient (input and weights) equals
  central finite differences of the random projection loss ``L = sum(y * r)``.
* :func:`check_lazy_imports`: importing the layer's module in a fresh interpreter does not
  import numba (``nbcnn summary`` must stay instant).

Example, in a plugin's tests::

    from nbcnn.testing import check_layer
    from nbcnn_scale import Scale

    def test_scale_fits_the_contract():
        check_layer(Scale, {"init": 0.5}, input_shape=(4, 4, 3))
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nbcnn.layers.args import is_int
from nbcnn.layers.base import Layer, ParamSpec, ShapeError
from nbcnn.registry import contract_problem

__all__ = [
    "FD_STEP",
    "MAX_FD_ENTRIES",
    "RTOL",
    "ATOL",
    "check_calculator",
    "check_config_round_trip",
    "check_layer",
    "check_lazy_imports",
]

#: Finite-difference step. Layers compute in float32; with L = sum(y * r) evaluated in
#: float64, the rounding noise of a central difference is about 1e-7 * |y| / step per touched
#: output, ~1e-4 here, while an indexing bug is off by O(1).
FD_STEP = 1e-3
#: Gradient tolerances: |analytic - numeric| <= ATOL + RTOL * |numeric|.
RTOL = 1e-2
ATOL = 1e-3
#: At most this many entries per array are checked by finite differences (chosen at random).
MAX_FD_ENTRIES = 48


class _Failure:
    """Builds ``AssertionError`` messages that say which layer and arguments failed."""

    def __init__(self, cls: type, kwargs: Mapping[str, Any], input_shape: Sequence[int] | None):
        shape = "" if input_shape is None else f" on input {tuple(input_shape)}"
        self.prefix = f"{getattr(cls, '__name__', cls)}({_kwargs_text(kwargs)}){shape}"

    def __call__(self, message: str) -> AssertionError:
        return AssertionError(f"{self.prefix}: {message}")

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            raise self(message)

    def call(self, what: str, method, *args, **kwargs):
        """``method(*args, **kwargs)``; an exception becomes an AssertionError naming ``what``."""
        try:
            return method(*args, **kwargs)
        except AssertionError:
            raise
        except Exception as err:
            raise self(f"{what} raised {type(err).__name__}: {err}") from err


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _construct(cls: type, kwargs: Mapping[str, Any], fail: _Failure) -> Layer:
    try:
        return cls(**kwargs)
    except Exception as err:
        raise fail(f"constructor raised {type(err).__name__}: {err}") from err


def _is_shape(value: Any) -> bool:
    return isinstance(value, tuple) and all(is_int(d) and d >= 1 for d in value)


# ------------------------------------------------------------------------------ calculator


def check_calculator(
    cls: type, kwargs: Mapping[str, Any] | None, input_shape: Sequence[int]
) -> Layer:
    """Check the calculator half of ``cls`` built with ``kwargs`` on ``input_shape``.

    The class passes nbcnn's registry checks (contract methods, ``api_version``, subclass of
    ``Layer``); ``output_shape`` returns a tuple of positive ints and is repeatable;
    ``param_shapes`` returns ``ParamSpec`` objects with unique names and positive int shapes;
    ``macs`` is an int >= 0; ``explain`` a non-empty str; ``receptive_field`` ``None`` or an
    ``(rf, jump)`` pair with one entry per output spatial axis; with ``input_rank`` set, an
    input of another rank raises ``ShapeError``. Returns the layer (not built).
    """
    kwargs = dict(kwargs or {})
    input_shape = tuple(input_shape)
    fail = _Failure(cls, kwargs, input_shape)
    problem = contract_problem(cls)
    fail.check(problem is None, f"breaks the layer contract: {problem}")
    layer = _construct(cls, kwargs, fail)

    out = layer.output_shape(input_shape)
    fail.check(_is_shape(out), f"output_shape returned {out!r}, not a tuple of ints >= 1")
    again = layer.output_shape(input_shape)
    fail.check(again == out, f"output_shape is not repeatable: {out} then {again}")

    specs = layer.param_shapes(input_shape)
    fail.check(isinstance(specs, list), f"param_shapes returned {type(specs).__name__}, not list")
    for spec in specs:
        fail.check(isinstance(spec, ParamSpec), f"param_shapes holds {spec!r}, not a ParamSpec")
        fail.check(_is_shape(spec.shape), f"weight {spec.name!r} has shape {spec.shape!r}")
    names = [spec.name for spec in specs]
    fail.check(len(set(names)) == len(names), f"weight names repeat: {names}")

    macs = layer.macs(input_shape)
    fail.check(is_int(macs) and macs >= 0, f"macs returned {macs!r}, not an int >= 0")

    text = layer.explain(input_shape)
    fail.check(isinstance(text, str) and text.strip() != "", f"explain returned {text!r}")

    spatial = len(input_shape) - 1
    if spatial >= 1:
        field = layer.receptive_field(input_shape, (1,) * spatial, (1,) * spatial)
        if field is not None:
            ok = (
                isinstance(field, tuple)
                and len(field) == 2
                and all(len(part) == len(out) - 1 for part in field)
            )
            fail.check(
                ok,
                f"receptive_field returned {field!r}; expected None or (rf, jump) with "
                f"{len(out) - 1} entries each (one per output spatial axis)",
            )

    if layer.input_rank is not None:
        wrong = (*input_shape[:-1], 1, input_shape[-1])
        try:
            layer.output_shape(wrong)
        except ShapeError:
            pass
        except Exception as err:
            raise fail(
                f"output_shape{wrong} (wrong rank) raised {type(err).__name__} instead of "
                "ShapeError (call self.check_rank(input_shape))"
            ) from err
        else:
            raise fail(f"output_shape{wrong} accepted an input of the wrong rank")
    return layer


def check_config_round_trip(cls: type, kwargs: Mapping[str, Any] | None) -> None:
    """``get_config()`` is plain YAML (``type``, ``name`` and every argument) and
    ``cls(**config minus type)`` gives a layer with an equal config."""
    import yaml

    kwargs = dict(kwargs or {})
    fail = _Failure(cls, kwargs, None)
    layer = _construct(cls, kwargs, fail)
    config = layer.get_config()
    fail.check(
        config.get("type") == cls.__name__ and config.get("name") == layer.name,
        f"get_config() must hold type {cls.__name__!r} and name {layer.name!r}, got {config}",
    )
    missing = [k for k in cls.arguments if k not in config]
    fail.check(not missing, f"get_config() lacks the argument(s) {missing}")
    try:
        loaded = yaml.safe_load(yaml.safe_dump(config))
    except yaml.YAMLError as err:
        raise fail(f"get_config() is not plain YAML data: {err}") from err
    rest = {k: v for k, v in loaded.items() if k != "type"}
    again = _construct(cls, rest, _Failure(cls, rest, None))
    fail.check(
        again.get_config() == config,
        f"config round trip changed the layer: {config} became {again.get_config()}",
    )


def check_lazy_imports(cls: type, forbidden: Sequence[str] = ("numba",)) -> None:
    """Importing ``cls``'s module in a fresh interpreter must not import ``forbidden``
    modules: ``nbcnn summary`` and ``nbcnn layers`` import every layer module."""
    module = cls.__module__
    code = (
        "import importlib, json, sys; "
        f"importlib.import_module({module!r}); "
        f"print(json.dumps([m for m in {list(forbidden)!r} if m in sys.modules]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"importing {module} failed:\n{proc.stderr}")
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    if loaded:
        raise AssertionError(
            f"importing {module} (for {cls.__name__}) imports {', '.join(loaded)}; import it "
            "inside forward/backward instead, so that nbcnn summary stays instant"
        )


# --------------------------------------------------------------------------------- compute


def _distinct_values(shape: tuple[int, ...], rng: np.random.Generator, step: float) -> np.ndarray:
    """float32 values, all different and at least 4 steps apart, shuffled, centred on 0.

    Distinct values keep max-pooling ties away from the finite differences: no step of
    +-``step`` can change which entry is the largest.
    """
    size = math.prod(shape)
    spacing = max(2.0 / size, 4 * step)
    return ((rng.permutation(size) - (size - 1) / 2) * spacing).reshape(shape).astype(np.float32)


def check_layer(
    cls: type,
    kwargs: Mapping[str, Any] | None,
    input_shape: Sequence[int],
    *,
    batch: int = 2,
    seed: int = 0,
    rtol: float = RTOL,
    atol: float = ATOL,
    step: float = FD_STEP,
    max_entries: int = MAX_FD_ENTRIES,
) -> Layer:
    """Check a layer with compute against its own calculator and finite differences.

    Runs :func:`check_calculator` and :func:`check_config_round_trip`, then builds the layer
    on ``input_shape`` (batch axis excluded) and checks that

    * ``build`` fills ``params`` with exactly the ``param_shapes`` names, shapes, float32;
    * ``forward`` on ``x : (batch, *input_shape)`` returns float32
      ``(batch, *output_shape(input_shape))``, finite, in inference and in training mode,
      without modifying ``x``;
    * ``backward(dy)`` returns the input's shape and sets ``grads`` for exactly the
      trainable weights, with their shapes, without modifying ``dy``; with
      ``input_grad_needed = False`` (a model's first layer) it may return None, and the
      weight gradients stay the same;
    * the input gradient and every weight gradient equal central finite differences of
      ``L = sum(y * r)`` (``r`` random, ``dy = r``), on up to ``max_entries`` entries per
      array: ``|analytic - numeric| <= atol + rtol * |numeric|``.

    Each evaluation runs on a fresh deep copy of the built layer, so layers with state
    (BatchNormalization's moving averages, Dropout's random stream) see the same state
    every time. Entries where the forward pass has a kink within ``step`` (a ReLU or max
    crossing) show as different one-sided slopes and are skipped; at least half of the
    entries of each array must be checked. Returns the built layer.
    """
    kwargs = dict(kwargs or {})
    input_shape = tuple(input_shape)
    fail = _Failure(cls, kwargs, input_shape)
    check_config_round_trip(cls, kwargs)
    layer = check_calculator(cls, kwargs, input_shape)
    fail.check(layer.has_compute, "has no forward (a calculator-only layer: use check_calculator)")
    out_shape = layer.output_shape(input_shape)
    specs = layer.param_shapes(input_shape)

    rng = np.random.default_rng(seed)
    fail.call("build", layer.build, input_shape, np.random.default_rng(seed + 1))
    got = {name: (a.shape, a.dtype) for name, a in layer.params.items()}
    want = {p.name: (p.shape, np.dtype(np.float32)) for p in specs}
    fail.check(got == want, f"build made weights {got}; param_shapes says {want}")
    calculated = sum(p.size for p in specs)
    real = sum(a.size for a in layer.params.values())
    fail.check(real == calculated, f"{real} real weights but the calculator counts {calculated}")

    x = _distinct_values((batch, *input_shape), rng, step)
    r = rng.normal(size=(batch, *out_shape)).astype(np.float32)
    pristine = copy.deepcopy(layer)

    for training in (False, True):
        x_seen = x.copy()
        y = fail.call(
            f"forward(training={training})",
            copy.deepcopy(pristine).forward,
            x_seen,
            training=training,
        )
        _check_output(fail, y, (batch, *out_shape), f"forward(training={training})")
        fail.check(np.array_equal(x_seen, x), f"forward(training={training}) modified x")

    run = copy.deepcopy(pristine)
    fail.call("forward(training=True)", run.forward, x.copy(), training=True)
    dy = r.copy()
    dx = fail.call("backward", run.backward, dy)
    fail.check(np.array_equal(dy, r), "backward modified dy")
    _check_output(fail, dx, x.shape, "backward")
    trainable = {p.name: p.shape for p in specs if p.trainable}
    grads = dict(run.grads)
    fail.check(
        set(grads) == set(trainable),
        f"backward set grads for {sorted(grads)}; the trainable weights are {sorted(trainable)}",
    )
    for name, shape in trainable.items():
        _check_output(fail, grads[name], shape, f"grads[{name!r}]")

    # As the first layer of a model in training: the input gradient may be skipped (None),
    # the weight gradients may not change.
    first = copy.deepcopy(pristine)
    fail.call("forward(training=True)", first.forward, x.copy(), training=True)
    first.input_grad_needed = False
    skipped = fail.call("backward with input_grad_needed=False", first.backward, r.copy())
    if skipped is not None:
        _check_output(fail, skipped, x.shape, "backward with input_grad_needed=False")
    for name in trainable:
        fail.check(
            name in first.grads and np.allclose(first.grads[name], grads[name], rtol=1e-5),
            f"grads[{name!r}] differ when input_grad_needed is False",
        )

    def loss(x_in: np.ndarray, name: str | None = None, index=None, value=None) -> float:
        fresh = copy.deepcopy(pristine)
        if name is not None:
            fresh.params[name][index] = value
        y = fresh.forward(x_in, training=True)
        return float(np.sum(y.astype(np.float64) * r))

    base = loss(x.copy())
    pick = np.random.default_rng(seed + 2)

    def gradient_check(what: str, values: np.ndarray, analytic: np.ndarray, evaluate) -> None:
        flat = np.arange(values.size)
        if values.size > max_entries:
            flat = pick.choice(values.size, max_entries, replace=False)
        checked, worst = 0, None
        for k in flat:
            index = np.unravel_index(k, values.shape)
            v = values[index]
            up, down = np.float32(v + step), np.float32(v - step)
            loss_up, loss_down = evaluate(index, up), evaluate(index, down)
            # the steps actually taken in float32 (not quite +-step)
            h_up, h_down = float(up) - float(v), float(v) - float(down)
            numeric = (loss_up - loss_down) / (h_up + h_down)
            tol = atol + rtol * abs(numeric)
            if abs((loss_up - base) / h_up - (base - loss_down) / h_down) > tol:
                continue  # a kink within the step: the derivative is not defined here
            checked += 1
            error = abs(float(analytic[index]) - numeric)
            if error > tol and (worst is None or error > worst[0]):
                worst = (error, index, float(analytic[index]), numeric)
        if worst is not None:
            error, index, a, n = worst
            raise fail(
                f"gradient of {what} at {tuple(int(i) for i in index)} is {a:.6g} but finite "
                f"differences give {n:.6g} (error {error:.3g} > atol {atol} + rtol {rtol} * "
                "|numeric|)"
            )
        fail.check(
            checked * 2 >= len(flat),
            f"only {checked} of {len(flat)} entries of {what} are smooth enough to check; use "
            "a smooth activation (tanh) in the check, or a smaller step",
        )

    def move_x(index, value):
        moved = x.copy()
        moved[index] = value
        return loss(moved)

    gradient_check("the input x", x, dx, move_x)
    for name in trainable:
        gradient_check(
            f"weight {name!r}",
            pristine.params[name],
            grads[name],
            lambda index, value, name=name: loss(x.copy(), name, index, value),
        )
    return layer


def _check_output(fail: _Failure, a: Any, shape: tuple[int, ...], what: str) -> None:
    fail.check(isinstance(a, np.ndarray), f"{what} returned {type(a).__name__}, not an ndarray")
    fail.check(a.shape == tuple(shape), f"{what} has shape {a.shape}, expected {tuple(shape)}")
    fail.check(a.dtype == np.float32, f"{what} has dtype {a.dtype}, expected float32")
    fail.check(bool(np.isfinite(a).all()), f"{what} holds NaN or inf")
