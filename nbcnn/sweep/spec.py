"""A sweep file (``sweep.yaml``) -> a validated :class:`Sweep`, with errors that say where.

Every problem is a :class:`~nbcnn.errors.ConfigError` naming the sweep file and the key
(``sweep.yaml: space.layers[9].filters: layers has 9 items, so no [9]``), raised before any
trial runs. docs/sweeps.md documents each key.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbcnn.errors import ConfigError
from nbcnn.layers.args import Arg, choice, integer, optional, parse_arguments, show, string
from nbcnn.sweep.space import (
    MAX_GRID,
    Search,
    apply_values,
    check_key,
    parse_key,
    parse_search,
)

SEARCHES = ("grid", "random", "tpe")
#: Trials of a random or TPE search when the file does not say.
DEFAULT_TRIALS = 20
#: MedianPruner's settings, Optuna's defaults: no pruning before 5 trials completed; then from
#: the first epoch on (warmup_epochs: the epochs every trial completes before it may be pruned).
PRUNING_DEFAULTS = {"startup_trials": 5, "warmup_epochs": 0}


def _pruning(value: Any) -> dict[str, int] | None:
    if value in (None, False, "none"):
        return None
    if value == "median":
        return dict(PRUNING_DEFAULTS)
    if isinstance(value, dict) and value.get("type") == "median":
        options = {k: v for k, v in value.items() if k != "type"}
        schema = {k: Arg(integer(0), d, k) for k, d in PRUNING_DEFAULTS.items()}
        try:
            return parse_arguments(schema, options, what="median pruning")
        except ConfigError as err:
            raise err.located(where="pruning") from None
    raise ValueError("expected none, median or {type: median, startup_trials: 5, warmup_epochs: 0}")


_SCHEMA = {
    "base": Arg(string, None, "the model config the trials start from"),
    "space": Arg(lambda v: v, None, "key path -> search"),
    "search": Arg(choice(*SEARCHES), "tpe", "grid, random or tpe"),
    "trials": Arg(optional(integer(1)), None, "trials to run"),
    "metric": Arg(optional(string), None, "what a trial is scored by"),
    "direction": Arg(optional(choice("maximize", "minimize")), None, "maximize or minimize"),
    "pruning": Arg(_pruning, None, "none or median"),
    "seed": Arg(integer(0), 0, "the sampler's seed"),
    "output": Arg(optional(string), None, "the sweep's folder"),
    "threads_per_trial": Arg(integer(1, 1024), 1, "numba threads of each trial"),
}


@dataclass
class Sweep:
    """A checked sweep file. ``base_doc`` is the base config as written (no defaults filled
    in): each trial's config is it with the trial's values set (:meth:`trial_config`)."""

    file: Path
    base: Path
    base_doc: dict[str, Any]
    space: list[Search]
    search: str
    trials: int
    metric: str
    direction: str
    pruning: dict[str, int] | None
    seed: int
    output: Path
    threads_per_trial: int
    grid_size: int | None = field(default=None)

    def error(self, message: str, where: str | None = None) -> ConfigError:
        return ConfigError(message, file=str(self.file), where=where)

    def trial_config(
        self, values: dict[str, Any], output: str | os.PathLike | None = None
    ) -> dict[str, Any]:
        """The base config with ``values`` (key -> config value) set, ``train.threads`` the
        sweep's ``threads_per_trial`` and ``train.output`` ``output`` when given."""
        doc = apply_values(self.base_doc, values)
        train = doc.setdefault("train", {})
        if train is None:
            train = doc["train"] = {}
        train["threads"] = self.threads_per_trial
        if output is not None:
            train["output"] = str(output)
        return doc

    def record(self) -> dict[str, Any]:
        """What decides which trials a sweep runs and how it scores them: a re-run of the same
        output folder must agree on all of it (``trials`` may change)."""
        return {
            "base": self.base_doc,
            "space": {s.key: s.record() for s in self.space},
            "search": self.search,
            "metric": self.metric,
            "direction": self.direction,
            "pruning": self.pruning,
            "seed": self.seed,
            "threads_per_trial": self.threads_per_trial,
        }


def load_sweep(path: str | os.PathLike, output: str | None = None) -> Sweep:
    """Read and check the sweep file ``path``: its keys, the base config (loaded as ``nbcnn
    train`` loads it), each key of the space against the base config, the metric."""
    from nbcnn.spec import check_output_path, read_yaml

    file = str(path)
    doc = read_yaml(file)
    if not isinstance(doc, dict):
        raise ConfigError(
            f"a sweep file is a mapping with keys {', '.join(_SCHEMA)}, got {show(doc, 40)}",
            file=file,
        )
    for key in ("base", "space"):
        if doc.get(key) is None:
            raise ConfigError(f"missing: {_SCHEMA[key].doc}", file=file, where=key)
    try:
        top = parse_arguments(_SCHEMA, doc, what="a sweep")
        if output is None and top["output"] is not None:
            output = check_output_path(top["output"], "output")
    except ConfigError as err:
        raise err.located(file=file) from None
    base = Path(file).parent / top["base"]
    if not base.is_file():
        raise ConfigError(
            f"{base} is not a file (base is relative to the sweep file)", file=file, where="base"
        )
    base_doc, train = _load_base(base)
    space = _parse_space(top["space"], base_doc, file)
    sweep = Sweep(
        file=Path(file),
        base=base,
        base_doc=base_doc,
        space=space,
        search=top["search"],
        trials=top["trials"] or DEFAULT_TRIALS,
        metric="",
        direction="",
        pruning=top["pruning"],
        seed=top["seed"],
        output=Path(output if output is not None else f"runs/{Path(file).stem}"),
        threads_per_trial=top["threads_per_trial"],
    )
    _set_metric(sweep, top["metric"], top["direction"], train)
    if sweep.search == "grid":
        _set_grid(sweep, top["trials"])
    return sweep


def _load_base(base: Path) -> tuple[dict[str, Any], Any]:
    """The base config's document and resolved train section, checked as ``nbcnn train``
    checks a config (its own errors name the base file and its key)."""
    from nbcnn.prepare import prepare
    from nbcnn.spec import read_yaml

    doc = read_yaml(base)
    _spec, _model, train = prepare(base)
    return doc, train


def _parse_space(space: Any, base_doc: dict[str, Any], file: str) -> list[Search]:
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            "expected a mapping of config keys to searches, e.g. "
            "train.optimizer.learning_rate: loguniform(1e-4, 1e-2)",
            file=file,
            where="space",
        )
    searches = []
    for key, value in space.items():
        where = f"space.{key}"
        try:
            parse_key(key)
        except ValueError as err:
            raise ConfigError(str(err), file=file, where=where) from None
        try:
            check_key(base_doc, key)
            searches.append(parse_search(key, value))
        except ConfigError as err:
            raise err.located(file=file) from None
    return searches


def _set_metric(sweep: Sweep, metric: str | None, direction: str | None, train) -> None:
    """The metric (default: val_accuracy, val_loss, accuracy or loss, the first the base
    config records) and its direction (``accuracy`` in the name maximizes, a loss or an
    error minimizes)."""
    from nbcnn.losses import make_loss
    from nbcnn.metrics import make_metrics

    names = ["loss", *(m.name for m in make_metrics(train.metrics, make_loss(train.loss)))]
    if train.validation_split > 0:
        names = [f"val_{n}" for n in names] + names
    if metric is None:
        preferred = [n for n in names if n.endswith("accuracy")] or names
        metric = preferred[0]
    touched = [s.key for s in sweep.space]
    if metric not in names and not any(
        k.startswith(("train.metrics", "train.loss", "train.data")) for k in touched
    ):
        raise sweep.error(
            f"{metric!r} is not recorded by the base config's runs; metrics.jsonl has "
            f"{', '.join(names)}",
            where="metric",
        )
    sweep.metric = metric
    sweep.direction = direction or ("maximize" if "accuracy" in metric else "minimize")


def _set_grid(sweep: Sweep, trials: int | None) -> None:
    sizes = []
    for search in sweep.space:
        try:
            sizes.append(len(search.grid()))
        except ConfigError as err:
            raise err.located(file=str(sweep.file)) from None
    size = math.prod(sizes)
    if size > MAX_GRID:
        raise sweep.error(
            f"the grid has {size:,} points (over {MAX_GRID:,}): use search: random or tpe",
            where="space",
        )
    if trials is not None and trials > size:
        raise sweep.error(
            f"the grid has {size} points, so at most {size} trials; got {trials}",
            where="trials",
        )
    sweep.grid_size = size
    sweep.trials = trials or size
