"""What a sweep leaves in its folder, computed from its Optuna study.

- ``trials.jsonl``: one line per trial, in trial order (:func:`trial_record`);
- ``results.json``: the sweep's settings, the trials best first, the best trial;
- ``best.yaml``: the base config with the best trial's values and ``train.threads`` the
  trials' thread count, so ``nbcnn train best.yaml`` retrains it to the same metric;
- ``sweep.png``: the metric against each swept key, one panel per key.

Rendering the table is the CLI's (nbcnn.cli.sweep); these are records for tools and files.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

from nbcnn.sweep.spec import Sweep

STATES = {
    "COMPLETE": "complete",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
    "WAITING": "waiting",
}
BEST = "best.yaml"
PICTURE = "sweep.png"


def trial_record(sweep: Sweep, trial) -> dict[str, Any]:
    """One trial as JSON: ``number``, ``state``, ``values`` (key -> config value), ``value``
    (the metric at its last epoch: a pruned trial's is the last one reported), ``epochs``,
    ``seconds``, ``error``, ``retry_of`` / ``retried_as`` (a failed trial run again) and
    ``folder``."""
    by_key = {s.key: s for s in sweep.space}
    value = trial.value if trial.state.name == "COMPLETE" else None
    if trial.state.name == "PRUNED" and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "state": STATES.get(trial.state.name, trial.state.name.lower()),
        "values": {k: by_key[k].value(v) for k, v in trial.params.items() if k in by_key},
        "value": value,
        "epochs": attrs.get("epochs", len(trial.intermediate_values)),
        "seconds": attrs.get("seconds"),
        "error": attrs.get("error"),
        "retry_of": attrs.get("retry_of"),
        "retried_as": None,
        "folder": attrs.get("folder"),
    }


def ranked(sweep: Sweep, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best first: completed trials by their metric, then pruned ones, then the rest, each
    group in trial order among equals."""
    sign = -1.0 if sweep.direction == "maximize" else 1.0
    order = {"complete": 0, "pruned": 1}

    def key(r: dict[str, Any]):
        value = r["value"]
        scored = value is not None and math.isfinite(value)
        return (order.get(r["state"], 2), sign * value if scored else math.inf, r["number"])

    return sorted(records, key=key)


def summary(sweep: Sweep, study) -> dict[str, Any]:
    """results.json: the sweep's settings, ``counts`` of each state, ``best`` (a record, or
    None when no trial completed) and ``trials`` best first."""
    records = [trial_record(sweep, t) for t in study.get_trials(deepcopy=False)]
    for record in records:  # a failed trial run again names its rerun
        if record["retry_of"] is not None:
            records[record["retry_of"]]["retried_as"] = record["number"]
    counts: dict[str, int] = {}
    for record in records:
        counts[record["state"]] = counts.get(record["state"], 0) + 1
    order = ranked(sweep, records)
    best = order[0] if order and order[0]["state"] == "complete" else None
    return {
        "sweep": str(sweep.file),
        "base": str(sweep.base),
        "output": str(sweep.output),
        "search": sweep.search,
        "metric": sweep.metric,
        "direction": sweep.direction,
        "trials_asked": sweep.trials,
        "counts": counts,
        "best": best,
        "best_config": str(sweep.output / BEST) if best else None,
        "trials": order,
    }


def write_results(sweep: Sweep, study) -> dict[str, Any]:
    """Write trials.jsonl, results.json, best.yaml and sweep.png (atomically each); returns
    :func:`summary`. A picture that cannot be drawn (no matplotlib) is left out and said in
    ``picture_error``."""
    from nbcnn.io import write_bytes_atomic, write_text_atomic

    result = summary(sweep, study)
    by_number = sorted(result["trials"], key=lambda r: r["number"])
    write_text_atomic(
        sweep.output / "trials.jsonl", "".join(json.dumps(r) + "\n" for r in by_number)
    )
    if result["best"] is not None:
        write_text_atomic(sweep.output / BEST, best_config_text(sweep, result["best"]))
    result["picture"] = None
    try:
        picture = render_sweep(sweep, result["trials"])
    except Exception as err:  # matplotlib missing or broken: the sweep's results stand
        result["picture_error"] = " ".join(f"{type(err).__name__}: {err}".split())[:200]
    else:
        if picture is not None:
            write_bytes_atomic(sweep.output / PICTURE, picture)
            result["picture"] = str(sweep.output / PICTURE)
    write_text_atomic(sweep.output / "results.json", json.dumps(result, indent=2) + "\n")
    return result


def best_config_text(sweep: Sweep, best: dict[str, Any]) -> str:
    """best.yaml: the base config with the best trial's values, ``train.threads`` the trials'
    (the same arithmetic, so the same metric bit for bit) and ``train.output``
    ``<output>/best``, under a comment saying where it came from."""
    import yaml

    doc = sweep.trial_config(best["values"], output=sweep.output / "best")
    header = (
        f"# The best trial (#{best['number']}, {sweep.metric} {best['value']:.6g} at its last "
        f"epoch) of the sweep {sweep.file}:\n"
        f"# the base config {sweep.base} with the trial's values. `nbcnn train` of this file\n"
        "# retrains it to the same metric (same seed, same threads).\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False)


# ---------------------------------------------------------------------- the picture


def render_sweep(sweep: Sweep, records: list[dict[str, Any]]) -> bytes | None:
    """PNG bytes: for each swept key a panel of the metric (y) against the key's value (x):
    completed trials as dots, pruned ones as grey crosses at their last reported value, the
    best as a red star; categorical values are spread evenly in the order written. None when
    no trial has a value."""
    from nbcnn.pictures import _matplotlib

    scored = [r for r in records if r["value"] is not None and math.isfinite(r["value"])]
    if not scored:
        return None
    Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib.ticker import NullFormatter

    columns = 2 if len(sweep.space) == 4 else min(3, len(sweep.space))
    rows = math.ceil(len(sweep.space) / columns)
    fig = Figure(figsize=(3.6 * columns, 3.0 * rows + 0.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    best = scored[0] if scored[0]["state"] == "complete" else None
    for ax, search in zip(axes, sweep.space):
        positions = _positions(search)
        for state, style in (
            ("complete", {"marker": "o", "color": "C0", "label": "completed"}),
            ("pruned", {"marker": "x", "color": "0.55", "label": "pruned"}),
        ):
            points = [
                (positions(r["values"][search.key]), r["value"])
                for r in scored
                if r["state"] == state and search.key in r["values"]
            ]
            if points:
                ax.scatter(*zip(*points), s=22, linewidths=1.2, **style)
        if best is not None:
            x = positions(best["values"][search.key])
            ax.scatter([x], [best["value"]], marker="*", s=160, color="C3", label="best")
        if search.kind == "choice":
            ax.set_xticks(range(len(search.choices)))
            ax.set_xlim(-0.5, len(search.choices) - 0.5)
            ax.set_xticklabels([_label(c) for c in search.choices], fontsize=8)
        elif search.log or search.kind == "loguniform":
            ax.set_xscale("log")
            # Under two decades matplotlib labels the minor ticks too, on top of each other.
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(search.key, fontsize=9)
        ax.set_ylabel(sweep.metric, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(sweep.space) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=3, frameon=False, fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _positions(search):
    """value -> x: a categorical value's index among the choices, a number itself."""
    if search.kind != "choice":
        return float
    choices = list(search.choices)
    return lambda value: choices.index(value) if value in choices else math.nan


def _label(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 12 else text[:11] + "…"
