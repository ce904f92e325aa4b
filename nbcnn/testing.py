"""The layer test kit: check a layer class against the contract, from any test runner.

A plugin's own tests call these functions with a few example arguments; each raises
``AssertionError`` with a message naming the layer (its class, its arguments and, for a
registered class, its distribution) and what went wrong, so they work under pytest, unittest
or a plain script (no pytest import here). An exception raised by the layer's own code (a
calculator, ``explain``, ``build``, ``forward``...) is reported the same way, naming the method,
with the original exception as its ``__cause__``.

* :func:`check_calculator`: the calculator half alone (what ``nbcnn summary`` uses): the class
  fits the contract, output shape, parameter specs, MACs, receptive field and explanation have
  the right types, and an input of the wrong rank raises ``ShapeError``. Enough for a
  calculator-only layer.
* :func:`check_config_round_trip`: ``get_config()`` survives YAML and recreates an equal layer.
* :func:`check_layer`: both of the above, then the compute half: the calculator's shapes and
  counts equal what a real forward pass and ``build`` produce, backward returns the input's
  shape and one gradient per trainable weight, and every gradient (input and weights) equals
  finite differences of the random projection loss ``L = sum(y * r)``, with trainable weights
  drawn at random (not ``build``'s, which may hide a bug: a scale of 1) or given as
  ``params=``, at a tolerance derived from float32 rounding (see :func:`check_layer`).
* :func:`check_model_gradients`: a whole model's gradients (input and every weight, chain or
  graph) against finite differences, for a plugin layer checked inside the models it serves.
* :func:`check_lazy_imports`: importing the layer's module in a fresh interpreter does not
  import numba (``nbcnn summary`` must stay instant).

A layer that merges several inputs (class attribute ``multi_input = True``, as Add and
Concatenate) is given ``input_shape`` as a list of shapes, one per input: its calculators and
``build`` receive that list, ``forward`` a list of arrays, and ``backward`` must return a list
of gradients in input order, each of its input's shape, each checked by finite differences.

Example, in a plugin's tests::

    from nbcnn.testing import check_layer
    from nbcnn_scale import Scale

    def test_scale_fits_the_contract():
        check_layer(Scale, {"init": 0.5}, input_shape=(4, 4, 3))
"""

from __future__ import annotations

import copy
import functools
import json
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nbcnn.graph import takes_many
from nbcnn.layers.args import is_int
from nbcnn.layers.base import Layer, ParamSpec, ShapeError
from nbcnn.registry import contract_problem

__all__ = [
    "CheckFailed",
    "FD_STEP",
    "MAX_FD_ENTRIES",
    "MAX_KINK_SHARE",
    "MODEL_ATOL",
    "MODEL_FD_STEPS",
    "MODEL_MAX_ENTRIES",
    "MODEL_RTOL",
    "RTOL",
    "SIGMAS",
    "UNIT_ROUNDOFF",
    "check_calculator",
    "check_config_round_trip",
    "check_layer",
    "check_lazy_imports",
    "check_model_gradients",
]

# The tolerances of check_layer, derived in its docstring.
#: float32's unit roundoff, 2**-24: a float32 result is off by at most this, relative.
UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2
#: Standard deviations of the loss's float32 rounding error that check_layer allows (its
#: docstring derives the deviation). The largest error of a correct layer, over nbcnn's
#: layers and the example plugins, was 0.16 of the tolerance this gives.
SIGMAS = 4
#: Finite-difference step (check_layer also uses half of it). The rounding error of a
#: difference falls as 1/step; the truncation error left after Richardson's extrapolation,
#: O(step^4), stays far below it, and a larger step meets more kinks (retried nearer).
FD_STEP = 4e-3
#: Relative tolerance of check_layer: what is left of the truncation error, O(step^4) after
#: Richardson's extrapolation (~1e-9 where the layer's derivatives are of order 1), and the
#: allowance for the O(step^2) differences of a smooth output in the kink proof.
RTOL = 1e-4
#: Arrays up to this size are checked entry by entry; larger ones on this many random entries.
MAX_FD_ENTRIES = 256
#: At most this share of an array's entries (and at least one) may be skipped at proven
#: kinks; more means the check examines too little of the layer.
MAX_KINK_SHARE = 0.1


class CheckFailed(AssertionError):
    """What every check raises: an AssertionError whose message names the layer."""


class _Failure:
    """Builds ``AssertionError`` messages that say which layer (class, arguments, input
    shape and, for a registered class, its distribution) failed."""

    def __init__(self, cls: type, kwargs: Mapping[str, Any], input_shape: Any):
        if input_shape is None:
            shape = ""
        elif _is_list_of_shapes(input_shape):
            shape = f" on inputs [{', '.join(str(tuple(s)) for s in input_shape)}]"
        else:
            shape = f" on input {tuple(input_shape)}"
        dist = _distribution(cls)
        origin = f" from distribution {dist!r}" if dist else ""
        self.prefix = f"{getattr(cls, '__name__', cls)}({_kwargs_text(kwargs)}){shape}{origin}"
        self.suffix = ""

    def __call__(self, message: str) -> AssertionError:
        return CheckFailed(f"{self.prefix}: {message}{self.suffix}")

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            raise self(message)

    def call(self, what: str, method, *args, **kwargs):
        """``method(*args, **kwargs)``; an exception (an ``assert`` of the layer's own
        included) becomes an AssertionError naming ``what``, the original as its cause."""
        try:
            return method(*args, **kwargs)
        except CheckFailed:
            raise
        except Exception as err:
            raise self(f"{what} raised {type(err).__name__}: {err}") from err


def _distribution(cls: Any) -> str | None:
    """The distribution that registers ``cls`` in the ``nbcnn.layers`` entry-point group, or
    None (a class defined in a test). Read from metadata: nothing is imported."""
    value = f"{getattr(cls, '__module__', '')}:{getattr(cls, '__qualname__', '')}"
    try:
        from nbcnn.registry import registry

        return next((e.distribution for e in registry().entries() if e.value == value), None)
    except Exception:  # a broken environment must not hide the layer's own failure
        return None


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _construct(cls: type, kwargs: Mapping[str, Any], fail: _Failure) -> Layer:
    return fail.call("constructor", cls, **kwargs)


def _is_shape(value: Any) -> bool:
    return isinstance(value, tuple) and all(is_int(d) and d >= 1 for d in value)


def _is_list_of_shapes(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(s, (list, tuple)) for s in value)
    )


def _given_shapes(layer: Layer, input_shape: Any, fail: _Failure) -> Any:
    """What the calculators receive: the list of input shapes (tuples) for a layer that
    merges several inputs (``multi_input = True``), else the one shape as a tuple."""
    if takes_many(layer):
        fail.check(
            _is_list_of_shapes(input_shape),
            "merges several inputs (multi_input = True): give input_shape as a list of shapes, "
            "one per input, e.g. [(4, 4, 3), (4, 4, 3)]",
        )
        return [tuple(s) for s in input_shape]
    fail.check(
        not _is_list_of_shapes(input_shape),
        "takes one input: give input_shape as one shape (a list of shapes is for layers with "
        "multi_input = True)",
    )
    return tuple(input_shape)


# ------------------------------------------------------------------------------ calculator


def check_calculator(cls: type, kwargs: Mapping[str, Any] | None, input_shape: Any) -> Layer:
    """Check the calculator half of ``cls`` built with ``kwargs`` on ``input_shape`` (one
    shape; a list of shapes, one per input, for a layer with ``multi_input = True``).

    The class passes nbcnn's registry checks (contract methods, ``api_version``, subclass of
    ``Layer``); ``output_shape`` returns a tuple of positive ints and is repeatable;
    ``param_shapes`` returns ``ParamSpec`` objects with unique names and positive int shapes;
    ``macs`` is an int >= 0; ``explain`` a non-empty str; ``receptive_field`` ``None`` or an
    ``(rf, jump)`` pair with one entry per output spatial axis; with ``input_rank`` set, an
    input of another rank raises ``ShapeError`` (for a multi-input layer, a first input of
    another rank). Any of these methods raising (``explain`` included, which ``nbcnn
    summary`` calls for every row) is a failure naming the method. Returns the layer (not
    built).
    """
    kwargs = dict(kwargs or {})
    fail = _Failure(cls, kwargs, input_shape)
    problem = contract_problem(cls)
    fail.check(problem is None, f"breaks the layer contract: {problem}")
    layer = _construct(cls, kwargs, fail)
    input_shape = _given_shapes(layer, input_shape, fail)
    many = takes_many(layer)

    out = fail.call("output_shape", layer.output_shape, input_shape)
    fail.check(_is_shape(out), f"output_shape returned {out!r}, not a tuple of ints >= 1")
    again = fail.call("output_shape", layer.output_shape, input_shape)
    fail.check(again == out, f"output_shape is not repeatable: {out} then {again}")

    specs = fail.call("param_shapes", layer.param_shapes, input_shape)
    fail.check(isinstance(specs, list), f"param_shapes returned {type(specs).__name__}, not list")
    for spec in specs:
        fail.check(isinstance(spec, ParamSpec), f"param_shapes holds {spec!r}, not a ParamSpec")
        fail.check(_is_shape(spec.shape), f"weight {spec.name!r} has shape {spec.shape!r}")
    names = [spec.name for spec in specs]
    fail.check(len(set(names)) == len(names), f"weight names repeat: {names}")

    macs = fail.call("macs", layer.macs, input_shape)
    fail.check(is_int(macs) and macs >= 0, f"macs returned {macs!r}, not an int >= 0")

    # nbcnn summary calls explain for every row: one that raises breaks the whole summary.
    text = fail.call("explain", layer.explain, input_shape)
    fail.check(isinstance(text, str) and text.strip() != "", f"explain returned {text!r}")

    # A merge's receptive field is that of its widest input: its inputs have one rank.
    spatial = len(input_shape[0] if many else input_shape) - 1
    if spatial >= 1:
        ones = (1,) * spatial
        field = fail.call("receptive_field", layer.receptive_field, input_shape, ones, ones)
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
        first = input_shape[0] if many else input_shape
        wrong = (*first[:-1], 1, first[-1])
        if many:
            wrong = [wrong, *input_shape[1:]]
        try:
            layer.output_shape(wrong)
        except ShapeError:
            pass
        except Exception as err:
            raise fail(
                f"output_shape({wrong}) (wrong rank) raised {type(err).__name__} instead of "
                "ShapeError (call self.check_rank(input_shape))"
            ) from err
        else:
            raise fail(f"output_shape({wrong}) accepted an input of the wrong rank")
    return layer


def check_config_round_trip(cls: type, kwargs: Mapping[str, Any] | None) -> None:
    """``get_config()`` is plain YAML (``type``, ``name`` and every argument) and
    ``cls(**config minus type)`` gives a layer with an equal config."""
    import yaml

    kwargs = dict(kwargs or {})
    fail = _Failure(cls, kwargs, None)
    problem = contract_problem(cls)
    fail.check(problem is None, f"breaks the layer contract: {problem}")
    layer = _construct(cls, kwargs, fail)
    config = fail.call("get_config", layer.get_config)
    fail.check(isinstance(config, dict), f"get_config() returned {config!r}, not a dict")
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
    recreated = fail.call("get_config", again.get_config)
    fail.check(
        recreated == config, f"config round trip changed the layer: {config} became {recreated}"
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
        raise AssertionError(f"importing {module} (for {cls.__name__}) failed:\n{proc.stderr}")
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    if loaded:
        raise AssertionError(
            f"importing {module} (for {cls.__name__}) imports {', '.join(loaded)}; import it "
            "inside forward/backward instead, so that nbcnn summary stays instant"
        )


# --------------------------------------------------------------------------------- compute


def _distinct_values(shape: tuple[int, ...], rng: np.random.Generator, step: float) -> np.ndarray:
    """float32 values, all different and at least 2 steps apart, shuffled, centred on 0.

    Distinct values keep max-pooling ties away from the finite differences: no step of
    +-``step`` can change which entry is the largest.
    """
    size = math.prod(shape)
    spacing = max(2.0 / size, 2 * step)
    return ((rng.permutation(size) - (size - 1) / 2) * spacing).reshape(shape).astype(np.float32)


def _inputs(shapes: list[tuple[int, ...]], rng: np.random.Generator, step: float) -> list:
    """One array per shape (batch axis included), all their values distinct together, so that
    no step ties two inputs of a Maximum either."""
    values = _distinct_values((sum(math.prod(s) for s in shapes),), rng, step)
    edges = np.cumsum([math.prod(s) for s in shapes])[:-1]
    return [part.reshape(s) for part, s in zip(np.split(values, edges), shapes)]


def check_layer(
    cls: type,
    kwargs: Mapping[str, Any] | None,
    input_shape: Any,
    *,
    params: Mapping[str, Any] | None = None,
    batch: int = 2,
    seed: int = 0,
    rtol: float = RTOL,
    atol: float | None = None,
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
    * the input gradient and every weight gradient equal finite differences of
      ``L = sum(y * r)`` (``r`` random normal, ``dy = r``) on every entry of each array of
      up to ``max_entries`` entries (``max_entries`` random entries of a larger one).

    Weights. After checking what ``build`` made, every trainable weight is replaced by random
    values: random signs times magnitudes uniform in [0.5, 1.5] times the RMS of build's
    values (1 where build made zeros). build's own values may hide a bug: a scale built as
    1 makes ``dx = dy`` right; random values differ from each other and from any constant,
    and keep build's scale (activations stay in their working range). Non-trainable weights
    (moving averages, a fixed mean and variance) keep build's values, which may have to obey
    a constraint (a positive variance). ``params`` (weight name -> array of the weight's
    shape) sets any weights instead, e.g. a trainable weight that must stay positive.

    Tolerance. Each checked entry ``v`` is moved to ``v +- h`` and ``v +- h/2`` (``h =
    step``; the offsets as stored in float32), and L's changes are summed in float64:

    * rounding: an output ``y_j`` of ``K`` multiply-adds (``K = macs / outputs``) is float32,
      off by about ``u * sqrt(1 + K) * (|y_j| + rms y)`` (``u = 2**-24``: one rounding of the
      result plus a random walk over the sum's; the RMS term covers an output that is a
      difference of larger values). In L these errors are weighted by ``r``, random and
      independent of them, so L's error has a standard deviation of ``s = u * sqrt(1 + K) *
      sqrt(sum_j ((|y_j| + rms y) * r_j)^2)`` over the outputs the entry moves, whatever the
      errors' correlations: it grows with the root of their number and with their
      magnitude. The check takes ``e = SIGMAS * s`` as the bound of L's error; a central
      difference ``D(h) = (L(v+h) - L(v-h)) / 2h`` is then off by up to ``e / h``, ``D(h/2)``
      by ``2e / h``.
    * truncation: where the layer is smooth within ``+-h``, ``D(h)`` is off by
      ``h^2 L''' / 6 + O(h^4)``; Richardson's extrapolation ``(4 D(h/2) - D(h)) / 3``, the
      numeric gradient, cancels the ``h^2`` term, and its rounding error is at most ``3e / h``.
    * so ``|analytic - numeric| <= 3e / h + rtol * |numeric| + SIGMAS * u * max|analytic|``
      (``rtol`` for what is left of the truncation; the last term the analytic gradient's
      own float32 rounding, its terms taken as large as the array's largest gradient).
      ``atol`` replaces ``e / h`` by a fixed value, for a layer whose arithmetic loses more
      than this model assumes. Over nbcnn's layers and the example plugins the tolerance is
      ~7e-4 at the median entry, a sixth of the fixed ``atol 1e-3 + rtol 1e-2 * |numeric|``
      of earlier versions, and the largest error of a correct layer was 0.16 of it.
    * kinks: where a ReLU or a max switches within ``+-h``, differences do not give the
      derivative. A kink is proven where an output ``y_j`` breaks, beyond its rounding bound
      ``SIGMAS * u * sqrt(1 + K) * (|y_j| + rms y)``, what every smooth function satisfies:
      its central differences at ``h`` and ``h/2`` agree up to ``O(h^2)``, and its one-sided
      slopes' difference ``(y(v+h) - y(v)) / h - (y(v) - y(v-h)) / h`` is twice the one at
      ``h/2`` up to ``O(h^3)`` (both are ``h y''``); a kink within the step breaks one of
      the two (``rtol`` times their size allows for the ``O(h^2)``). The entry is then
      retried at ``h/4`` and ``h/16`` (where a very curved output, its ``O(h^2)`` over the
      allowance, passes too); one still at a kink there is skipped, at most
      ``MAX_KINK_SHARE`` of an array's entries (and at least one).

    A layer with ``multi_input = True`` takes ``input_shape`` as a list of shapes, one per
    input: ``build`` and the calculators get that list, ``forward`` a list of arrays
    ``x[k] : (batch, *input_shape[k])``, and ``backward`` must return a list (or tuple) of
    one gradient per input, in order, each of its input's shape (with ``input_grad_needed
    = False``, entries may be None); each input's gradient is checked by finite
    differences.

    Inputs are distinct values at least ``2 * step`` apart (no max-pooling ties within a
    step). Each evaluation runs on a fresh deep copy of the weighted layer, so layers with
    state (BatchNormalization's moving averages, Dropout's random stream) see the same state
    every time. Returns the built layer, with the weights the check used.
    """
    kwargs = dict(kwargs or {})
    fail = _Failure(cls, kwargs, input_shape)
    check_config_round_trip(cls, kwargs)
    layer = check_calculator(cls, kwargs, input_shape)
    fail.check(layer.has_compute, "has no forward (a calculator-only layer: use check_calculator)")
    input_shape = _given_shapes(layer, input_shape, fail)
    many = takes_many(layer)
    shapes = input_shape if many else [input_shape]
    out_shape = layer.output_shape(input_shape)
    specs = layer.param_shapes(input_shape)

    rng = np.random.default_rng(seed)
    fail.call("build", layer.build, input_shape, np.random.default_rng(seed + 1))
    got = {name: (np.shape(a), getattr(a, "dtype", None)) for name, a in layer.params.items()}
    want = {p.name: (p.shape, np.dtype(np.float32)) for p in specs}
    fail.check(got == want, f"build made weights {got}; param_shapes says {want}")
    calculated = sum(p.size for p in specs)
    real = sum(a.size for a in layer.params.values())
    fail.check(real == calculated, f"{real} real weights but the calculator counts {calculated}")
    drawn = _set_weights(layer, specs, params, np.random.default_rng(seed + 3), fail)
    if drawn:  # said with every failure from here on, so that it can be reproduced
        fail.suffix = (
            f" (trainable weights {', '.join(drawn)} drawn at random with seed {seed}; "
            "params= sets them)"
        )

    xs = _inputs([(batch, *s) for s in shapes], rng, step)
    r = rng.normal(size=(batch, *out_shape)).astype(np.float32)
    pristine = copy.deepcopy(layer)
    names = [f"x[{k}]" for k in range(len(xs))] if many else ["x"]

    def given(arrays: list) -> Any:
        """What forward receives: copies, as a list for a multi-input layer."""
        copies = [a.copy() for a in arrays]
        return copies if many else copies[0]

    for training in (False, True):
        seen = given(xs)
        y = fail.call(
            f"forward(training={training})",
            copy.deepcopy(pristine).forward,
            seen,
            training=training,
        )
        _check_output(fail, y, (batch, *out_shape), f"forward(training={training})")
        for name, a, b in zip(names, seen if many else [seen], xs):
            fail.check(np.array_equal(a, b), f"forward(training={training}) modified {name}")

    run = copy.deepcopy(pristine)
    fail.call("forward(training=True)", run.forward, given(xs), training=True)
    dy = r.copy()
    dxs = _input_grads(fail, fail.call("backward", run.backward, dy), xs, many, "backward")
    fail.check(np.array_equal(dy, r), "backward modified dy")
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
    fail.call("forward(training=True)", first.forward, given(xs), training=True)
    first.input_grad_needed = False
    what = "backward with input_grad_needed=False"
    _input_grads(fail, fail.call(what, first.backward, r.copy()), xs, many, what, skipped=True)
    for name in trainable:
        fail.check(
            name in first.grads and np.allclose(first.grads[name], grads[name], rtol=1e-5),
            f"grads[{name!r}] differ when input_grad_needed is False",
        )

    def outputs(arrays: list, name: str | None = None, index=None, value=None) -> np.ndarray:
        """The training forward on ``arrays``, with weight ``name`` set to ``value`` at
        ``index``, on a fresh copy of the layer."""
        fresh = copy.deepcopy(pristine)
        if name is not None:
            fresh.params[name][index] = value
        what = "forward(training=True) in the finite differences"
        y = fail.call(what, fresh.forward, given(arrays), training=True)
        _check_output(fail, y, (batch, *out_shape), what)
        return y

    def move_input(k: int, index, value) -> np.ndarray:
        moved = [a.copy() for a in xs]
        moved[k][index] = value
        return outputs(moved)

    check = _GradientCheck(
        fail,
        outputs(xs),
        r,
        terms=max(0.0, layer.macs(input_shape) / math.prod(out_shape)),
        step=step,
        rtol=rtol,
        atol=atol,
        max_entries=max_entries,
        pick=np.random.default_rng(seed + 2),
    )
    for k, (name, x, dx) in enumerate(zip(names, xs, dxs)):
        what = f"the input {name}" if many else "the input x"
        check.array(what, x, dx, functools.partial(move_input, k))
    for name in trainable:
        evaluate = functools.partial(outputs, xs, name)
        check.array(f"weight {name!r}", pristine.params[name], grads[name], evaluate)
    return layer


def _set_weights(
    layer: Layer,
    specs: list[ParamSpec],
    params: Mapping[str, Any] | None,
    rng: np.random.Generator,
    fail: _Failure,
) -> list[str]:
    """Give ``layer`` the weights of the check: ``params``'s where given, random ones for
    the other trainable weights (check_layer's docstring says why and how), build's for the
    rest. Returns the names of the weights drawn at random."""
    given = {} if params is None else params
    fail.check(
        isinstance(given, Mapping),
        f"params= must map weight names to arrays; got {type(given).__name__}",
    )
    shapes = {p.name: tuple(p.shape) for p in specs}
    unknown = sorted(set(given) - set(shapes), key=str)
    fail.check(not unknown, f"params= names {unknown}; the layer's weights are {sorted(shapes)}")
    drawn = []
    for p in specs:
        if p.name in given:
            value = fail.call(f"params[{p.name!r}]", np.array, given[p.name], dtype=np.float32)
            fail.check(
                value.shape == shapes[p.name],
                f"params[{p.name!r}] has shape {value.shape}; the weight has {shapes[p.name]}",
            )
            fail.check(bool(np.isfinite(value).all()), f"params[{p.name!r}] holds NaN or inf")
            layer.params[p.name] = value
        elif p.trainable:
            layer.params[p.name] = _random_weights(layer.params[p.name], rng)
            drawn.append(p.name)
    return drawn


def _random_weights(built: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random signs times magnitudes uniform in [0.5, 1.5] times the RMS of ``built`` (1 if
    that is 0): of build's scale, but no two entries alike and none a constant."""
    rms = float(np.sqrt(np.mean(np.square(built, dtype=np.float64)))) if built.size else 0.0
    scale = rms if 0 < rms < np.inf else 1.0
    magnitude = rng.uniform(0.5, 1.5, built.shape) * scale
    return np.asarray(rng.choice((-1.0, 1.0), built.shape) * magnitude, dtype=np.float32)


class _GradientCheck:
    """Finite differences of ``L = sum(y * r)`` against analytic gradients, entry by entry,
    at the tolerance derived in :func:`check_layer`'s docstring."""

    def __init__(
        self,
        fail: _Failure,
        y0: np.ndarray,
        r: np.ndarray,
        *,
        terms: float,
        step: float,
        rtol: float,
        atol: float | None,
        max_entries: int,
        pick: np.random.Generator,
    ):
        self.fail, self.y0, self.step = fail, y0.astype(np.float64), step
        self.rtol, self.atol, self.max_entries, self.pick = rtol, atol, max_entries, pick
        self.r = r.astype(np.float64)
        y = y0.astype(np.float64)
        rms = float(np.sqrt(np.mean(y * y)))
        # each output's rounding error (a standard deviation, in units of u); times r_j and
        # squared, summed over the outputs an entry moves: the variance of L's error
        self.scale = math.sqrt(1 + terms) * (np.abs(y) + rms)
        self.rounding = np.square(self.scale * self.r)

    def array(self, what: str, values: np.ndarray, analytic: np.ndarray, evaluate) -> None:
        """Check ``analytic``, the gradient w.r.t. ``values``; ``evaluate(index, value)`` is
        the layer's output with ``values[index]`` set to ``value``."""
        flat = np.arange(values.size)
        if values.size > self.max_entries:
            flat = np.sort(self.pick.choice(values.size, self.max_entries, replace=False))
        floor = SIGMAS * UNIT_ROUNDOFF * float(np.abs(analytic).max(initial=0.0))
        worst, kinks = None, 0
        for k in flat:
            index = np.unravel_index(k, values.shape)
            # a kink within h may lie beyond h/4, or beyond h/16
            for h in (self.step, self.step / 4, self.step / 16):
                estimate = self._estimate(what, values, index, evaluate, h)
                if estimate is not None:
                    break
            else:
                kinks += 1
                continue
            numeric, noise, moved = estimate
            a = float(analytic[index])
            tol = noise + self.rtol * abs(numeric) + floor
            if abs(a - numeric) > tol and (worst is None or abs(a - numeric) / tol > worst[0]):
                worst = (abs(a - numeric) / tol, index, a, numeric, tol, moved)
        if worst is not None:
            _, index, a, numeric, tol, moved = worst
            if self.atol is not None:
                bound = f"3 * atol {self.atol:g}"
            else:
                bound = f"float32 rounding of the {moved} outputs it moves, over the step"
            raise self.fail(
                f"gradient of {what} at {tuple(int(i) for i in index)} is {a:.6g} but finite "
                f"differences give {numeric:.6g}: off by {abs(a - numeric):.3g}, over the "
                f"tolerance {tol:.3g} ({bound}, + rtol {self.rtol:g} * |numeric|)"
            )
        cap = max(1, int(MAX_KINK_SHARE * len(flat)))
        self.fail.check(
            kinks <= cap,
            f"{kinks} of the {len(flat)} entries of {what} checked sit at kinks (a ReLU or a "
            f"max switching within the step), over the cap of {cap} that may be skipped; use "
            "a smooth activation (tanh) in the check, or a smaller step",
        )

    def _estimate(
        self, what: str, values: np.ndarray, index: tuple, evaluate, h: float
    ) -> tuple[float, float, int] | None:
        """``(numeric, noise, moved)``: the Richardson extrapolation of the central
        differences at ``h`` and ``h/2``, its rounding bound and the number of outputs the
        moves changed; None at a proven kink."""
        v, y0 = values[index], self.y0
        offsets, ys = [], []
        for offset in (h, -h, h / 2, -h / 2):
            moved = np.float32(v + offset)  # as stored in float32
            ys.append(evaluate(index, moved).astype(np.float64))
            offsets.append(float(moved) - float(v))
        (a1, b1, a2, b2), (up1, down1, up2, down2) = offsets, ys  # b1, b2 < 0
        changed = (up1 != y0) | (down1 != y0) | (up2 != y0) | (down2 != y0)
        e = SIGMAS * UNIT_ROUNDOFF * math.sqrt(float(self.rounding[changed].sum()))
        rho = SIGMAS * UNIT_ROUNDOFF * self.scale  # each output's rounding bound
        h1, h2 = (a1 - b1) / 2, (a2 - b2) / 2
        if self.atol is not None and e > 0:  # a central difference at h1 is off by atol
            rho = rho * (self.atol * h1 / e)
            e = self.atol * h1
        # Each output's central differences and one-sided slopes' differences at h and h/2.
        d1, d2 = (up1 - down1) / (2 * h1), (up2 - down2) / (2 * h2)
        j1 = (up1 - y0) / a1 - (down1 - y0) / b1
        j2 = (up2 - y0) / a2 - (down2 - y0) / b2
        ratio, rtol = h1 / h2, self.rtol
        # A kink is proven where an output breaks, beyond its rounding bounds, what a smooth
        # function gives: d1 = d2 + O(h^2), j1 = ratio * j2 + O(h^3).
        kink = np.abs(d1 - d2) > rho / h1 + rho / h2 + rtol * (np.abs(d1) + np.abs(d2))
        kink |= np.abs(j1 - ratio * j2) > rho * (2 / a1 - 2 / b1 + ratio * (2 / a2 - 2 / b2)) + (
            rtol * (np.abs(j1) + ratio * np.abs(j2))
        )
        if kink.any():
            return None
        big, small = float(np.sum(d1 * self.r)), float(np.sum(d2 * self.r))
        numeric = (h1 * h1 * small - h2 * h2 * big) / (h1 * h1 - h2 * h2)
        # L is off by e at most, so D(h1) by e / h1 and D(h2) by e / h2
        noise = (h1 * h1 * e / h2 + h2 * h2 * e / h1) / (h1 * h1 - h2 * h2)
        self.fail.check(
            math.isfinite(numeric),
            f"finite differences of {what} at {tuple(int(i) for i in index)} are not finite",
        )
        return numeric, noise, int(changed.sum())


#: Steps of :func:`check_model_gradients`, tried largest first. A whole model sums many
#: float32 outputs: its loss carries rounding noise of ~1e-6, which a step of 1e-2 turns into
#: ~1e-4 of the derivative (1e-3 at the layer kit's step, as large as MODEL_ATOL).
MODEL_FD_STEPS = (1e-2, 5e-3, 2.5e-3, 1.25e-3)
#: Tolerances of check_model_gradients, ``|analytic - numeric| <= MODEL_ATOL + MODEL_RTOL *
#: |numeric|``: fixed, looser than check_layer's, because a model's steps are large (its kinks
#: and normalizing layers' curvature over one step are not separated from rounding there).
MODEL_RTOL = 1e-2
MODEL_ATOL = 1e-3
#: Entries per array that check_model_gradients checks (chosen at random).
MODEL_MAX_ENTRIES = 48


def check_model_gradients(
    model: Any,
    x: np.ndarray,
    *,
    seed: int = 0,
    rtol: float = MODEL_RTOL,
    atol: float = MODEL_ATOL,
    steps: Sequence[float] = MODEL_FD_STEPS,
    max_entries: int = MODEL_MAX_ENTRIES,
) -> dict[str, int]:
    """Check a whole model's backward (a chain or a graph, nbcnn.graph) against central finite
    differences of ``L = sum(y * r)`` (``r`` random, ``y`` the training forward on ``x :
    (N, *input_shape) float32``; the sum in float64): the gradient w.r.t. ``x`` and w.r.t.
    every trainable weight of every layer, on up to ``max_entries`` entries each (chosen at
    random), ``|analytic - numeric| <= atol + rtol * |numeric|``.

    Each entry must match the central difference, or a one-sided one, at one of ``steps``,
    tried largest first (each half the one before: a side's two points then make a
    three-point rule). The largest keeps float32 rounding noise small; a kink (a Maximum's
    tie, a ReLU) within a step spoils the central difference and one side, not the other,
    and a smaller step may pass it; a wrong gradient is wrong at every step and on both
    sides. Only an entry with kinks on both sides within every step is skipped (its central
    differences then disagree from one step to the next), and at least half of each array's
    entries must be checked. (Skipping entries whose one-sided slopes differ, the rule of
    earlier versions of the layer kit, would skip most entries of a model: normalizing layers
    curve the loss more than the tolerance over one step.) Each evaluation runs on a fresh
    deep copy of the model, so Dropout draws the same masks and BatchNormalization starts
    from the same averages every time. Builds the model (seed 0) if it has no weights.
    Returns the number of entries checked per array: ``{"x": 48, "conv2d/kernel": 47,
    "conv2d/bias": 8, ...}``.
    """
    fail = _Failure(type(model), {}, None)
    fail.prefix = f"model {model.name!r}"
    if not model.built:
        model.initialize(0)
    pristine = copy.deepcopy(model)
    x = np.ascontiguousarray(x, dtype=np.float32)
    r = np.random.default_rng(seed).normal(size=(len(x), *model.output_shape)).astype(np.float32)

    def loss(x_in: np.ndarray, weight: tuple[int, str] | None = None, index=None, value=None):
        fresh = copy.deepcopy(pristine)
        if weight is not None:
            fresh.layers[weight[0]].params[weight[1]][index] = value
        y = fresh.forward(x_in, training=True)
        return float(np.sum(y.astype(np.float64) * r))

    def move_x(index, value) -> float:
        moved = x.copy()
        moved[index] = value
        return loss(moved)

    run = copy.deepcopy(pristine)
    fail.call("forward(training=True)", run.forward, x.copy(), training=True)
    dx = fail.call("backward", run.backward, r.copy())
    _check_output(fail, dx, x.shape, "backward")
    base = loss(x)
    pick = np.random.default_rng(seed + 1)
    options = {"rtol": rtol, "atol": atol, "steps": tuple(steps), "max_entries": max_entries}
    checked = {"x": _step_ladder(fail, "the input x", x, dx, move_x, base, pick, **options)}
    for i, (layer, specs) in enumerate(zip(run.layers, run.param_specs())):
        for p in specs:
            if not p.trainable:
                continue
            key = f"{layer.name}/{p.name}"
            fail.check(p.name in layer.grads, f"backward set no gradient for {key}")
            evaluate = functools.partial(loss, x, (i, p.name))
            values = pristine.layers[i].params[p.name]
            what = f"weight {p.name!r} of layers[{i}] {layer.name!r} ({type(layer).__name__})"
            checked[key] = _step_ladder(
                fail, what, values, layer.grads[p.name], evaluate, base, pick, **options
            )
    return checked


def _step_ladder(
    fail: _Failure,
    what: str,
    values: np.ndarray,
    analytic: np.ndarray,
    evaluate,
    base: float,
    pick: np.random.Generator,
    *,
    rtol: float,
    atol: float,
    steps: tuple[float, ...],
    max_entries: int,
) -> int:
    """Each of up to ``max_entries`` entries of ``analytic`` (the gradient w.r.t. ``values``)
    must equal, at one of ``steps`` (decreasing), a finite difference of ``evaluate(index,
    value)`` (``base``: the loss unchanged): the central one, or a one-sided one from the
    step's point on that side and, from the second step on, the previous step's point too (a
    three-point rule, exact for a parabola: a side's curvature does not bias it). An entry
    that matches none fails where the central differences of all steps agree (the loss is
    smooth there) and is skipped where they do not (kinks on both sides within every
    step); at least half the entries must match. Returns how many did."""
    flat = np.arange(values.size)
    if values.size > max_entries:
        flat = pick.choice(values.size, max_entries, replace=False)
    matched = 0
    for k in flat:
        index = np.unravel_index(k, values.shape)
        v, a = values[index], float(analytic[index])
        centrals: list[float] = []
        sides: dict[int, tuple[float, float]] = {}  # side -> (offset, loss) of the last step
        for step in steps:
            points = {}
            for side in (1, -1):
                moved = np.float32(v + side * step)  # as stored in float32
                points[side] = (float(moved) - float(v), evaluate(index, moved))
            (h_up, loss_up), (h_down, loss_down) = points[1], points[-1]
            centrals.append((loss_up - loss_down) / (h_up - h_down))
            estimates = [centrals[-1], (loss_up - base) / h_up, (loss_down - base) / h_down]
            estimates += [_three_point(base, points[side], sides[side]) for side in sides]
            if any(abs(a - n) <= atol + rtol * abs(n) for n in estimates):
                matched += 1
                break
            sides = points
        else:
            spread = max(centrals) - min(centrals)
            if spread <= atol + rtol * max(abs(n) for n in centrals):
                shown = ", ".join(f"{n:.6g} (step {s:g})" for n, s in zip(centrals, steps))
                raise fail(
                    f"gradient of {what} at {tuple(int(i) for i in index)} is {a:.6g} but "
                    f"central differences give {shown}, and no one-sided difference agrees "
                    f"either; tolerance atol {atol} + rtol {rtol} * |numeric|"
                )
    fail.check(
        matched * 2 >= len(flat),
        f"only {matched} of {len(flat)} entries of {what} could be checked: the others have "
        "kinks on both sides within every step",
    )
    return matched


def _three_point(f0: float, near: tuple[float, float], far: tuple[float, float]) -> float:
    """f'(0) of the parabola through ``(0, f0)``, ``near`` and ``far`` (offset, value), both
    on one side of 0."""
    (a, fa), (b, fb) = near, far
    return -f0 * (a + b) / (a * b) + fa * b / (a * (b - a)) - fb * a / (b * (b - a))


def _input_grads(
    fail: _Failure, got: Any, xs: list, many: bool, what: str, skipped: bool = False
) -> list:
    """The gradients ``backward`` returned, one per input, each checked to have its input's
    shape; ``skipped``: with ``input_grad_needed = False``, where None may stand for any
    (for a multi-input layer, inside the list)."""
    if not many:
        if not (skipped and got is None):
            _check_output(fail, got, xs[0].shape, what)
        return [got]
    fail.check(
        isinstance(got, (list, tuple)),
        f"{what} returned {type(got).__name__}; a multi-input layer returns a list of one "
        "gradient per input",
    )
    fail.check(len(got) == len(xs), f"{what} returned {len(got)} gradients for {len(xs)} inputs")
    for k, (g, x) in enumerate(zip(got, xs)):
        if not (skipped and g is None):
            _check_output(fail, g, x.shape, f"{what}'s gradient of x[{k}]")
    return list(got)


def _check_output(fail: _Failure, a: Any, shape: tuple[int, ...], what: str) -> None:
    fail.check(isinstance(a, np.ndarray), f"{what} returned {type(a).__name__}, not an ndarray")
    fail.check(a.shape == tuple(shape), f"{what} has shape {a.shape}, expected {tuple(shape)}")
    fail.check(a.dtype == np.float32, f"{what} has dtype {a.dtype}, expected float32")
    fail.check(bool(np.isfinite(a).all()), f"{what} holds NaN or inf")
