"""The ``nbcnn`` command: a thin Typer layer that parses, calls the library, prints.

Known errors (:class:`~nbcnn.errors.NbcnnError`) become one line on stderr and exit code 2
(bad input) or 1 (failure during work); a traceback means a bug. The library never imports
typer.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from nbcnn.errors import ConfigError, NbcnnError

app = typer.Typer(
    name="nbcnn",
    help="Small, fast CNNs on the CPU: YAML models, Keras-exact summaries, Numba kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _fail(message: str, code: int) -> None:
    # One line, whatever the message holds: scripts grep it, people read it.
    print(f"nbcnn: error: {' '.join(message.split())}", file=sys.stderr)
    raise typer.Exit(code)


def handles_errors(command):
    """Map the project's errors to one line and an exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except NbcnnError as err:
            _fail(str(err), err.exit_code)

    return wrapper


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1 or len(shape) > 4:
        raise ConfigError(
            f"expected 1 to 4 positive ints separated by commas, e.g. 32,32,3; got {text!r}",
            where="--input-shape",
        )
    return shape


def console():
    """A rich Console; when output is not a terminal, wide enough that tables don't wrap."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=max(out.width, 120))


ConfigArg = Annotated[Path, typer.Argument(help="The model's YAML config.", show_default=False)]


@app.command()
@handles_errors
def summary(
    config: ConfigArg,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for tools.")] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Show the arithmetic behind each parameter count.")
    ] = False,
    plain: Annotated[
        bool, typer.Option("--plain", help="Only Keras's columns (no MACs, memory, RF).")
    ] = False,
    input_shape: Annotated[
        str | None,
        typer.Option("--input-shape", help="Override input_shape, e.g. 32,32,3.", metavar="H,W,C"),
    ] = None,
):
    """Print the Keras-style summary of CONFIG: output shapes, parameters, MACs, memory and
    receptive field, computed instantly without compiling anything."""
    from nbcnn.model import load_model
    from nbcnn.summary import render_table, summarize, to_json

    model = load_model(config, input_shape=_parse_shape(input_shape))
    result = summarize(model)
    if json_output:
        print(json.dumps(to_json(result), indent=2))
        return
    console().print(render_table(result, extras=not plain, explain=explain))


@app.command()
@handles_errors
def layers(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for tools.")] = False,
):
    """List the registered layer types: distribution, version, whether each can train, status."""
    from nbcnn.registry import registry

    entries = registry().entries()
    if json_output:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return
    from rich.table import Table

    table = Table(title="Layer types (entry-point group nbcnn.layers)", title_justify="left")
    for column in ("Type", "Distribution", "Version", "Trains", "Status"):
        table.add_column(column)
    for e in entries:
        status = e.status
        if e.error:
            status = f"broken: {e.error}"
        elif e.clashes_with:
            status = f"clash with {', '.join(e.clashes_with)}: use {e.distribution}:{e.name}"
        table.add_row(e.name, e.distribution, e.version, "yes" if e.trainable else "no", status)
    console().print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
