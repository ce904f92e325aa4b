"""``nbcnn sweep``: a hyper-parameter sweep (:mod:`nbcnn.sweep`) with a line per finished
trial on stderr and the results as a table, or JSON."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from nbcnn.cli.common import JsonOpt, console, handles_errors
from nbcnn.errors import TrainingError, printable

SweepArg = Annotated[
    Path, typer.Argument(help="The sweep file (docs/sweeps.md).", show_default=False)
]


@handles_errors
def sweep(
    sweep_file: SweepArg,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Address of a running Dask scheduler (tcp://host:8786); its workers need the "
            "sweep folder on a shared filesystem. Default: a local cluster."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1024,
            help="Trials at once (default: cores / threads_per_trial, or the scheduler's "
            "worker threads).",
        ),
    ] = None,
    output: Annotated[str | None, typer.Option(help="Override the sweep's output.")] = None,
    json_output: JsonOpt = False,
):
    """Train the base config of SWEEP_FILE once per trial, with the values its space gives,
    on Dask; print the trials best first and write results.json, trials.jsonl, best.yaml
    and sweep.png into the sweep's output. Running it again continues the sweep: finished
    trials are kept, killed or interrupted ones run again."""
    from nbcnn.spec import check_output_path
    from nbcnn.sweep import load_sweep, run_sweep, write_results

    if output is not None:
        output = check_output_path(output, "--output")
    definition = load_sweep(sweep_file, output=output)
    started = time.monotonic()
    finished, ran = [], []

    def on_start(plan, slots: int, where: str) -> None:
        ran.append(slots)
        parts = [f"{plan.new} new trial(s)"] if plan.new or not plan.retries else []
        if plan.retries:
            parts.append(f"{len(plan.retries)} to run again ({_numbers(plan.retries)})")
        print(
            f"nbcnn: sweep {printable(str(sweep_file))}: {definition.search} search, "
            f"{' and '.join(parts)}, {slots} at once on {where}; output "
            f"{printable(str(definition.output))}",
            file=sys.stderr,
        )

    def on_trial(trial) -> None:
        from nbcnn.sweep.results import trial_record

        finished.append(trial.number)
        record = trial_record(definition, trial)
        print(f"nbcnn: {_trial_line(definition, record)}", file=sys.stderr)

    try:
        study = run_sweep(
            definition,
            scheduler=scheduler,
            workers=workers,
            on_start=on_start,
            on_trial=on_trial,
        )
    except KeyboardInterrupt:
        print(
            f"nbcnn: sweep interrupted after {len(finished)} trial(s) finished; run the same "
            "command again to continue it (the trials it stopped run again)",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None
    if not ran:
        print(
            f"nbcnn: sweep {printable(str(sweep_file))}: nothing left to run; its "
            f"{len(study.trials)} trial(s) ran before, in {printable(str(definition.output))}",
            file=sys.stderr,
        )
    result = write_results(definition, study)
    result["seconds"] = time.monotonic() - started
    if result.get("picture_error"):
        print(f"nbcnn: warning: sweep.png not drawn: {result['picture_error']}", file=sys.stderr)
    if json_output:
        print(json.dumps(result, indent=2))
    else:
        _print_table(definition, result)
    if result["best"] is None:
        raise TrainingError(
            f"no trial of {sweep_file} completed: see the errors above and "
            f"{definition.output}/trials.jsonl"
        )


def _numbers(numbers: list[int]) -> str:
    return ", ".join(f"#{n}" for n in numbers)


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _trial_line(sweep, record: dict[str, Any]) -> str:
    """``trial 3 complete  val_accuracy 0.9722  lr=0.003 filters=32  8.4s``."""
    values = " ".join(f"{k}={_value_text(v)}" for k, v in record["values"].items())
    metric = "" if record["value"] is None else f"  {sweep.metric} {record['value']:.4f}"
    seconds = "" if record["seconds"] is None else f"  {record['seconds']:.1f}s"
    note = _note(record)
    return printable(
        f"trial {record['number']} {record['state']}{metric}  {values}{seconds}"
        + (f"  ({note})" if note else "")
    )


def _note(record: dict[str, Any], table: bool = False) -> str:
    notes = []
    if record["state"] == "pruned" and not table:  # the table's epochs column says it
        notes.append(f"pruned after epoch {record['epochs']}")
    if record["error"]:
        notes.append(record["error"])
    if record["retry_of"] is not None:
        notes.append(f"run again for #{record['retry_of']}")
    if record.get("retried_as") is not None:
        notes.append(f"run again as #{record['retried_as']}")
    return "; ".join(notes)


#: Prefixes a column header leaves out when the rest still names one key alone.
_PREFIXES = ("train.optimizer.", "train.data.", "train.")


def _headers(keys: list[str]) -> list[str]:
    """Column headers for swept keys: ``learning_rate`` for ``train.optimizer.learning_rate``
    (results.json and the trial lines keep the whole key)."""
    short = []
    for key in keys:
        prefix = next((p for p in _PREFIXES if key.startswith(p)), "")
        short.append(key[len(prefix) :])
    headers = short if len(set(short)) == len(short) else keys
    # Two lines (layers[0]. / filters) rather than a header rich cuts to fit the width.
    return [_two_lines(h) for h in headers]


def _two_lines(header: str) -> str:
    cut = header.rfind(".") + 1
    return f"{header[:cut]}\n{header[cut:]}" if cut else header


def _shortened(note: str, limit: int = 60) -> str:
    """A table's note: the whole of an error is on its trial's line and in trials.jsonl."""
    return note if len(note) <= limit else note[: limit - 1] + "…"


def _print_table(sweep, result: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    counts = ", ".join(f"{n} {state}" for state, n in result["counts"].items())
    table = Table(
        title=f"sweep {printable(result['sweep'])}: {counts}",
        title_justify="left",
        highlight=False,
    )
    table.add_column("trial", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for header in _headers([printable(s.key) for s in sweep.space]):
        table.add_column(Text(header), justify="right")
    table.add_column(Text(printable(sweep.metric)), justify="right", no_wrap=True)
    table.add_column("epochs", justify="right", no_wrap=True)
    table.add_column("seconds", justify="right", no_wrap=True)
    table.add_column("note")
    for record in result["trials"]:
        cells = [
            str(record["number"]),
            record["state"],
            *(_value_text(record["values"].get(s.key, "")) for s in sweep.space),
            "" if record["value"] is None else f"{record['value']:.4f}",
            str(record["epochs"]),
            "" if record["seconds"] is None else f"{record['seconds']:.1f}",
            _shortened(_note(record, table=True)),
        ]
        table.add_row(*(Text(printable(cell)) for cell in cells))
    out = console()
    out.print(table, markup=False)
    best = result["best"]
    if best is not None:
        out.print(
            f"best: trial {best['number']}, {sweep.metric} {best['value']:.4f}; its config: "
            f"{printable(result['best_config'])} (nbcnn train it to retrain)",
            highlight=False,
            markup=False,
        )
    if result["picture"]:
        out.print(f"picture: {printable(result['picture'])}", highlight=False, markup=False)
