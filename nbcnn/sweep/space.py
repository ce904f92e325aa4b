"""The search space of a sweep: config key paths and what each one tries.

A sweep file's ``space:`` maps a key path of the model config to a search::

    layers[2].filters: [32, 64]                           # categorical: these values
    train.optimizer.learning_rate: loguniform(1e-4, 1e-2)
    train.data.validation_split: uniform(0.1, 0.3)
    train.batch_size: int(16, 128, 16)                    # 16, 32, ..., 128
    layers[7].units: logint(32, 512)
    train.optimizer: choice(adam, sgd)                    # the same as [adam, sgd]

Key paths are what nbcnn's errors print: names joined by dots, list items by ``[i]``. Nothing
here imports Optuna until a distribution is asked for.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from nbcnn.errors import ConfigError
from nbcnn.layers.args import is_int, is_number, show

#: Key paths a sweep sets itself, per trial: refused in ``space``.
RESERVED = {
    "train.output": "each trial writes into its own folder under the sweep's output",
    "train.threads": "the sweep's threads_per_trial sets it for every trial",
}
#: The most values a grid may hold (the product over its keys).
MAX_GRID = 10_000
FUNCTIONS = ("uniform", "loguniform", "int", "randint", "logint", "choice")
_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")
_INDEX = re.compile(r"\[(\d+)\]")
_CALL = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$", re.DOTALL)

Path = tuple[str | int, ...]


def parse_key(text: Any) -> Path:
    """``layers[2].filters`` -> ``("layers", 2, "filters")``; ValueError saying what a key
    path looks like otherwise."""
    if not isinstance(text, str) or not text:
        raise ValueError("expected a config key path such as layers[2].filters")
    path: list[str | int] = []
    for segment in text.split("."):
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            raise ValueError(
                f"{segment!r} is not a key: key paths are names joined by dots, with [i] for "
                "list items, e.g. layers[2].filters or train.optimizer.learning_rate"
            )
        path.append(match.group(1))
        path.extend(int(i) for i in _INDEX.findall(match.group(2)))
    return tuple(path)


def key_text(path: Path) -> str:
    """The inverse of :func:`parse_key`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


@dataclass(frozen=True)
class Search:
    """What one key tries.

    kind : ``choice`` (``choices``, the values as written), ``uniform`` / ``loguniform``
    (floats in [low, high]) or ``int`` (integers low..high by ``step``, log-spaced with
    ``log``). ``text`` is the search as the sweep file wrote it.
    """

    key: str
    kind: str
    text: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: int = 1
    log: bool = False

    @property
    def path(self) -> Path:
        return parse_key(self.key)

    @property
    def encoded(self) -> bool:
        """Whether the choices go to Optuna as JSON text: it takes None, bool, int, float and
        str only, and a choice may be a list (``kernel_size: [3, [3, 5]]``) or a mapping."""
        return self.kind == "choice" and not all(map(_primitive, self.choices))

    def distribution(self):
        """This search as an Optuna distribution."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "choice":
            return CategoricalDistribution(self.internal_choices())
        if self.kind == "int":
            step = 1 if self.log else self.step
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=step)
        return FloatDistribution(self.low, self.high, log=self.kind == "loguniform")

    def internal_choices(self) -> tuple[Any, ...]:
        if self.encoded:
            return tuple(json.dumps(c, sort_keys=True) for c in self.choices)
        return self.choices

    def grid(self) -> list[Any]:
        """The values a grid search tries (Optuna's form); ConfigError for a continuous
        range, which has no grid."""
        if self.kind == "choice":
            return list(self.internal_choices())
        if self.kind == "int" and not self.log:
            return list(range(int(self.low), int(self.high) + 1, self.step))
        raise ConfigError(
            f"grid search takes lists and int(a, b[, step]); {self.text} has no grid: give a "
            "list of values, or use search: random or tpe",
            where=f"space.{self.key}",
        )

    def value(self, internal: Any) -> Any:
        """The config value of Optuna's ``internal`` value (encoded choices decoded)."""
        return json.loads(internal) if self.encoded else internal

    def record(self) -> dict[str, Any]:
        """What a sweep folder records of this search (a resume compares it)."""
        if self.kind == "choice":
            return {"kind": "choice", "choices": list(self.choices)}
        return {
            "kind": self.kind,
            "low": self.low,
            "high": self.high,
            "step": self.step,
            "log": self.log,
        }


def parse_search(key: str, value: Any) -> Search:
    """The search that ``value`` (a list, or a ``name(args)`` string) writes for ``key``;
    ConfigError at ``space.<key>`` naming what was received."""
    where = f"space.{key}"
    if isinstance(value, list):
        return _choice(key, value, show(value), where)
    call = _CALL.match(value) if isinstance(value, str) else None
    if call is None or call.group(1) not in FUNCTIONS:
        raise ConfigError(
            "expected a list of values ([32, 64]) or uniform(a, b), loguniform(a, b), "
            f"int(a, b[, step]), logint(a, b), choice(x, y, ...); got {show(value)} (a list of "
            "one value fixes a key for every trial)",
            where=where,
        )
    name, text = call.group(1), value.strip()
    args = [_argument(a, where) for a in _split_arguments(call.group(2))]
    if name == "choice":
        return _choice(key, args, text, where)
    if name in ("uniform", "loguniform"):
        low, high = _numbers(args, 2, 2, text, where)
        if not low < high:
            raise ConfigError(f"{text}: needs a < b", where=where)
        if name == "loguniform" and low <= 0:
            raise ConfigError(f"{text}: a log scale needs 0 < a", where=where)
        return Search(key, name, text, low=float(low), high=float(high))
    low, high, *rest = _numbers(args, 2, 2 if name == "logint" else 3, text, where)
    step = rest[0] if rest else 1
    if not (is_int(low) and is_int(high) and is_int(step)):
        raise ConfigError(f"{text}: expected integers", where=where)
    if not low < high or step < 1:
        raise ConfigError(f"{text}: needs a < b and a step of at least 1", where=where)
    if (high - low) % step:
        raise ConfigError(f"{text}: b - a is not a multiple of the step {step}", where=where)
    if name == "logint" and low < 1:
        raise ConfigError(f"{text}: a log scale needs 1 <= a", where=where)
    return Search(key, "int", text, low=low, high=high, step=step, log=name == "logint")


def _choice(key: str, values: list[Any], text: str, where: str) -> Search:
    if not values:
        raise ConfigError("an empty list: give at least one value", where=where)
    seen = []
    for value in values:
        if value in seen:
            raise ConfigError(f"{show(value)} is listed twice", where=where)
        seen.append(value)
    for value in values:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{text}: {value} is not a finite number", where=where)
    return Search(key, "choice", text, choices=tuple(values))


def _split_arguments(text: str) -> list[str]:
    """``1e-4, [3, 5], {a: 1}`` -> its three arguments (commas inside brackets kept)."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [] if parts == [""] else [p.strip() for p in parts]


def _argument(text: str, where: str) -> Any:
    """One argument as YAML reads it, except that ``1e-4`` is a number (YAML 1.1 reads it as
    text: it wants ``1.0e-4``)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"cannot read the argument {show(text)}", where=where) from None


def _numbers(args: list[Any], least: int, most: int, text: str, where: str) -> list[Any]:
    if not least <= len(args) <= most:
        count = f"{least}" if least == most else f"{least} or {most}"
        raise ConfigError(f"{text}: expected {count} arguments, got {len(args)}", where=where)
    for arg in args:
        if not is_number(arg) or not math.isfinite(arg):
            raise ConfigError(f"{text}: {show(arg)} is not a finite number", where=where)
    return args


# ---------------------------------------------------------------------- applying values


def apply_values(doc: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config document ``doc`` with ``values`` (key path -> value) set.

    A key's parent must exist in ``doc``: a mapping (the key may be new in it, the config
    loader then checks it) or a list holding the index. A name written as a string where the
    path goes on (``optimizer: adam`` under ``train.optimizer.learning_rate``) becomes
    ``{type: adam}`` first, as every name-or-mapping key of nbcnn reads it. ConfigError at
    the key (without a file: the caller names the sweep file) otherwise.
    """
    doc = copy.deepcopy(doc)
    for key, value in values.items():
        _set(doc, parse_key(key), copy.deepcopy(value), key)
    return doc


def check_key(doc: dict[str, Any], key: str) -> None:
    """ConfigError at ``space.<key>`` when the base config ``doc`` has no place for ``key``."""
    if key in RESERVED:
        raise ConfigError(f"not swept: {RESERVED[key]}", where=f"space.{key}")
    _set(copy.deepcopy(doc), parse_key(key), None, key)


def _set(doc: Any, path: Path, value: Any, key: str) -> None:
    node = doc
    for depth, part in enumerate(path):
        here = key_text(path[:depth]) or "the config"
        last = depth == len(path) - 1
        if isinstance(part, int):
            if not isinstance(node, list):
                raise _missing(key, f"{here} is {_what(node)}, not a list")
            if part >= len(node):
                raise _missing(key, f"{here} has {len(node)} items, so no [{part}]")
        else:
            if isinstance(node, str) and node:
                # A name-or-mapping written as a name: `optimizer: adam` -> {type: adam}.
                node = {"type": node}
                _replace(doc, path[:depth], node)
            if not isinstance(node, dict):
                raise _missing(key, f"{here} is {_what(node)}, not a mapping")
            if part not in node and not last:
                parent = key_text(path[: depth + 1])
                raise _missing(
                    key,
                    f"{parent} is not in the base config, and a swept key's parent must be: "
                    f"add {parent} there (a mapping, or a name where the key takes one)",
                )
        if last:
            node[part] = value
        else:
            node = node[part]


def _replace(doc: Any, path: Path, value: Any) -> None:
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _what(value: Any) -> str:
    return "missing" if value is None else show(value, 40)


def _missing(key: str, message: str) -> ConfigError:
    return ConfigError(message, where=f"space.{key}")
