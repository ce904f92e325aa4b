"""Declarative keyword-argument parsing for layers and config sections.

A layer declares ``arguments = {"filters": Arg(positive_int), ...}`` with Keras's names and
defaults; :func:`parse_arguments` turns the YAML mapping into checked Python values and raises a
:class:`~nbcnn.errors.ConfigError` that names the key, what was received and what is allowed, with
a did-you-mean for unknown keys. Parsers raise ``ValueError(what_is_allowed)``.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nbcnn.errors import ConfigError

REQUIRED: Any = object()

#: Names accepted by ``activation:`` arguments (``null``/``linear`` mean identity); their
#: compute lives in nbcnn/layers/activations.py.
ACTIVATIONS = ("linear", "relu", "relu6", "sigmoid", "tanh", "softmax", "elu", "softplus", "swish")
#: Weight initialisers accepted by ``kernel_initializer`` / ``bias_initializer``.
INITIALIZERS = (
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "zeros",
    "ones",
)


@dataclass(frozen=True)
class Arg:
    """One keyword argument: its parser, default (``REQUIRED`` if none) and a one-line doc."""

    parse: Callable[[Any], Any]
    default: Any = REQUIRED
    doc: str = ""


def is_int(value: Any) -> bool:
    """An integer (NumPy's too), never a bool: YAML's true/false are bools, and bool is an int
    subclass, so they must be refused as counts."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real number (int or float, NumPy's too), never a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


#: Longest quote of a received value in an error message: enough to recognise the value, and
#: never the whole of one that expands (21 levels of YAML aliases repeat a list 4**21 times).
SHOW_LIMIT = 60


def show(value: Any, limit: int = SHOW_LIMIT) -> str:
    """``repr(value)`` cut to at most ``limit`` characters ("..." marks a cut).

    Built piece by piece and stopped once past the limit, so it costs about ``limit`` steps
    whatever ``value`` holds: shared or self-referencing lists and mappings (YAML aliases) are
    never expanded, and long strings are sliced before their repr is taken.
    """
    text = ""
    for piece in _repr_pieces(value, limit, set()):
        text += piece
        if len(text) > limit:
            return text[: limit - 3] + "..."
    return text


def show_some(values: Sequence[Any], first: int = 3, render: Callable[[Any], str] = show) -> str:
    """The first ``first`` values, each through ``render`` (:func:`show`), then "and N more":
    ``'a', 'b', 'c' and 199,997 more``. Its length grows with neither the number of values
    nor their sizes (the names in a hostile file)."""
    shown = ", ".join(render(v) for v in values[:first])
    rest = len(values) - first
    return f"{shown} and {rest:,} more" if rest > 0 else shown


def key_text(key: Any) -> str:
    """A mapping key as written in a key path (``layers[0].units``), cut like :func:`show`."""
    text = key if isinstance(key, str) else show(key)
    return text if len(text) <= SHOW_LIMIT else text[: SHOW_LIMIT - 3] + "..."


_BRACKETS = {list: ("[", "]"), tuple: ("(", ")"), set: ("{", "}"), frozenset: ("frozenset({", "})")}


def _repr_pieces(value: Any, limit: int, path: set[int]) -> Iterator[str]:
    """The pieces of ``repr(value)`` in order; ``path`` holds the containers being shown."""
    kind = type(value)
    if kind in (str, bytes):
        yield repr(value[: limit + 1])  # longer than the limit either way: the cut hides the end
    elif kind is dict or kind in _BRACKETS:
        if kind is set and not value:
            yield "set()"
            return
        if kind is frozenset and not value:
            yield "frozenset()"
            return
        opening, closing = ("{", "}") if kind is dict else _BRACKETS[kind]
        if id(value) in path:  # a container inside itself: repr writes [...] too
            yield f"{opening}...{closing}"
            return
        path.add(id(value))
        yield opening
        for i, item in enumerate(value.items() if kind is dict else value):
            if i:
                yield ", "
            if kind is dict:
                yield from _repr_pieces(item[0], limit, path)
                yield ": "
                item = item[1]
            yield from _repr_pieces(item, limit, path)
        if kind is tuple and len(value) == 1:
            yield ","
        yield closing
        path.discard(id(value))
    elif kind is int:
        try:
            yield repr(value)
        except ValueError:  # over Python's int-to-text digit limit
            yield f"<int of {value.bit_length()} bits>"
    elif getattr(value, "ndim", 0) and getattr(value, "size", 0) > limit:
        # A large NumPy array: NumPy's summary keeps 6 entries per axis, 6**ndim in all.
        yield f"<{value.dtype} array of shape {tuple(value.shape)}>"
    else:
        yield repr(value)


#: Largest int an argument or shape may hold: 2**53, the last one a float64 (and so any JSON
#: reader) keeps exactly. No real size comes near it, and 10**400 would overflow the float
#: arithmetic done with sizes (memory estimates, "1.61 MB" in the summary).
MAX_INT = 2**53
#: What an argument beyond MAX_INT is told (the caller adds the key and the value).
TOO_LARGE = f"expected ints of at most 2**53 ({MAX_INT})"


def capped(ints: tuple[int, ...]) -> tuple[int, ...]:
    """``ints`` as they are, or ValueError(:data:`TOO_LARGE`) when one is beyond MAX_INT."""
    if any(abs(v) > MAX_INT for v in ints):
        raise ValueError(TOO_LARGE)
    return ints


def _within(value: int, minimum: int | None, maximum: int | None) -> bool:
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def _bounds_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def integer(minimum: int | None = 1, maximum: int | None = None) -> Callable[[Any], int]:
    """An int within ``[minimum, maximum]``."""
    bounds = _bounds_text(minimum, maximum)

    def parse(value: Any) -> int:
        if not is_int(value) or not _within(value, minimum, maximum):
            raise ValueError(f"expected an int{bounds}")
        return capped((value,))[0]

    return parse


positive_int = integer(1)


def number(
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    min_open: bool = False,
    max_open: bool = False,
) -> Callable[[Any], float]:
    """A finite real number within the given (open or closed) bounds."""
    lo = "" if minimum is None else f"{'>' if min_open else '>='} {minimum}"
    hi = "" if maximum is None else f"{'<' if max_open else '<='} {maximum}"
    bounds = " " + " and ".join(p for p in (lo, hi) if p) if (lo or hi) else ""

    def parse(value: Any) -> float:
        ok = (is_int(value) or isinstance(value, float)) and value == value  # NaN != NaN
        if ok and value in (float("inf"), float("-inf")):
            ok = False
        if ok and minimum is not None:
            ok = value > minimum if min_open else value >= minimum
        if ok and maximum is not None:
            ok = value < maximum if max_open else value <= maximum
        if ok:
            try:
                result = float(value)  # an int of hundreds of digits overflows a float
            except OverflowError:
                ok = False
        if not ok:
            raise ValueError(f"expected a number{bounds}")
        return result

    return parse


def int_tuple(n: int, minimum: int = 1) -> Callable[[Any], tuple[int, ...]]:
    """An int (repeated ``n`` times) or a list of ``n`` ints, each >= ``minimum``."""
    allowed = f"an int >= {minimum} or a list of {n} ints >= {minimum}"

    def parse(value: Any) -> tuple[int, ...]:
        if is_int(value) and value >= minimum:
            return capped((value,) * n)
        if (
            isinstance(value, (list, tuple))
            and len(value) == n
            and all(is_int(v) and v >= minimum for v in value)
        ):
            return capped(tuple(value))
        raise ValueError(f"expected {allowed}")

    return parse


def int_pairs(n: int) -> Callable[[Any], tuple[tuple[int, int], ...]]:
    """Keras's padding/cropping forms: int, ``n`` ints (symmetric), or ``n`` pairs of ints >= 0.

    ``1`` -> ((1, 1), (1, 1)); ``[1, 2]`` -> ((1, 1), (2, 2)); ``[[1, 2], [3, 4]]`` as given.
    """
    allowed = f"an int >= 0, a list of {n} ints >= 0, or a list of {n} [before, after] pairs"

    def parse(value: Any) -> tuple[tuple[int, int], ...]:
        if is_int(value) and value >= 0:
            return ((capped((value,))[0],) * 2,) * n
        if isinstance(value, (list, tuple)) and len(value) == n:
            if all(is_int(v) and v >= 0 for v in value):
                return tuple((v, v) for v in capped(tuple(value)))
            if all(
                isinstance(p, (list, tuple))
                and len(p) == 2
                and all(is_int(v) and v >= 0 for v in p)
                for p in value
            ):
                return tuple(capped((p[0], p[1])) for p in value)
        raise ValueError(f"expected {allowed}")

    return parse


def choice(*values: Any) -> Callable[[Any], Any]:
    """One of ``values``; a near miss gets a did-you-mean."""
    allowed = ", ".join(repr(v) for v in values)

    def parse(value: Any) -> Any:
        if isinstance(value, str) and value in values:
            return value
        if len(values) == 1:  # no near miss to suggest: say it is the one supported
            raise ValueError(f"nbcnn supports only {allowed}")
        hint = did_you_mean(value, [v for v in values if isinstance(v, str)])
        raise ValueError(f"expected one of {allowed}{hint}")

    return parse


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``None`` (YAML ``null``) or whatever ``parse`` accepts."""

    def parse_optional(value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as err:
            raise ValueError(f"{err} or null") from None

    return parse_optional


def int_list(minimum_length: int = 1, allow_minus_one: bool = False) -> Callable[[Any], tuple]:
    """A list of ints >= 1 (optionally with one -1, as Reshape allows)."""
    allowed = f"a list of at least {minimum_length} ints >= 1"
    if allow_minus_one:
        allowed += " (one of them may be -1)"

    def parse(value: Any) -> tuple[int, ...]:
        if isinstance(value, (list, tuple)) and len(value) >= minimum_length:
            ints = all(is_int(v) and (v >= 1 or (allow_minus_one and v == -1)) for v in value)
            if ints and list(value).count(-1) <= 1:
                return capped(tuple(value))
        raise ValueError(f"expected {allowed}")

    return parse


def did_you_mean(value: Any, candidates: list[str]) -> str:
    """``" (did you mean 'x'?)"`` for a close match, else ``""``."""
    if not isinstance(value, str):
        return ""
    # The same word in other case first (`Relu` is `relu`, not the closer-spelled `elu`).
    lowered = {c.lower(): c for c in candidates}
    close = [lowered[value.lower()]] if value.lower() in lowered else []
    close = close or difflib.get_close_matches(value, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def split_type(
    spec: Any, where: str, choices: Sequence[str], noun: str = "type"
) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``{"type": "name", **options}`` -> ``(lower-case name, options)``: the form
    of the optimizer, lr_schedule, loss and metric keys. A spec of another kind, a missing
    ``type`` or an unknown name is a ConfigError at ``where`` (``where.type`` for the name
    inside a mapping), with a did-you-mean."""
    listed = ", ".join(choices)
    mapping = isinstance(spec, Mapping)
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"expected a {noun} name or a mapping with 'type', got {show(spec)}; choose one of "
            f"{listed}",
            where=where,
        )
    if "type" not in spec:
        raise ConfigError(f"missing 'type'; choose one of {listed}", where=where)
    kind = spec["type"]
    name = kind.lower() if isinstance(kind, str) else None
    if name not in choices:
        raise ConfigError(
            f"unknown {noun} {show(kind)}{did_you_mean(kind, list(choices))}; choose one of "
            f"{listed}",
            where=f"{where}.type" if mapping else where,
        )
    return name, {k: v for k, v in spec.items() if k != "type"}


def check_options(options: Mapping[str, Any], allowed: Sequence[str], owner: str, where: str):
    """Refuse a key of ``options`` that ``owner`` (an optimizer, loss or metric) does not take,
    at ``where.<key>``, with a did-you-mean and the keys it does take."""
    for key in options:
        if key not in allowed:
            raise ConfigError(
                f"unknown option {show(key)} for {owner}{did_you_mean(str(key), list(allowed))}; "
                f"allowed: {', '.join(allowed) or 'none'}",
                where=f"{where}.{key_text(key)}",
            )


def parse_arguments(
    schema: Mapping[str, Arg], values: Mapping[str, Any], *, what: str
) -> dict[str, Any]:
    """Check ``values`` against ``schema``; return every argument, defaults filled in.

    Raises ConfigError with ``where`` set to the offending key; ``what`` names the thing being
    configured in messages ("Conv2D", "train.data").
    """
    unknown = [k for k in values if k not in schema]
    if unknown:
        key = unknown[0]
        known = ", ".join(schema) or "none"
        hint = did_you_mean(key, list(schema))
        raise ConfigError(
            f"unknown argument for {what}{hint}; known arguments: {known}", where=key_text(key)
        )
    parsed = {}
    for key, arg in schema.items():
        if key not in values:
            if arg.default is REQUIRED:
                raise ConfigError(f"{what} needs this argument ({arg.doc})", where=key)
            parsed[key] = arg.default
            continue
        try:
            parsed[key] = arg.parse(values[key])
        except ValueError as err:
            raise ConfigError(f"{err}, got {show(values[key])}", where=key) from None
    return parsed
