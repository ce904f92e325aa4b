"""``nbcnn summary`` and ``nbcnn layers``: describing models and layer types without compiling
anything (neither command imports numba)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from nbcnn.cli.common import ConfigArg, JsonOpt, console, handles_errors, parse_shape
from nbcnn.errors import ConfigError, printable
from nbcnn.jsonout import print_json

if TYPE_CHECKING:
    from nbcnn.registry import LayerEntry


@handles_errors
def summary(
    config: ConfigArg,
    json_output: JsonOpt = False,
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
    from nbcnn.registry import stdout_to_stderr
    from nbcnn.summary import render_table, summarize, to_json

    shape = parse_shape(input_shape)
    with stdout_to_stderr():  # what plugins print while they build and calculate
        model = load_model(config, input_shape=shape)
        try:
            result = summarize(model)
        except ConfigError as err:
            raise err.located(file=str(config)) from None
    if json_output:
        print_json(to_json(result), indent=2)
        return
    print(render_table(result, extras=not plain, explain=explain))


@handles_errors
def layers(json_output: JsonOpt = False):
    """List the registered layer types: distribution, version, whether each can train, status.
    Imports every plugin (other commands import only the types a config uses), reporting broken
    ones and imports slower than a second."""
    from nbcnn.registry import registry

    entries = registry().load_all()  # every module imported, slow and broken ones reported
    if json_output:
        print_json([e.as_dict() for e in entries], indent=2)
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Layer types (entry-point group nbcnn.layers)", title_justify="left")
    for column in ("Type", "Distribution", "Version", "Trains", "Status"):
        table.add_column(column)
    for e in entries:
        status = _status_text(e)
        if e.slow:
            status += f" (slow import: {e.import_seconds:.1f} s)"
        cells = (e.name, e.distribution, e.version, "yes" if e.trainable else "no", status)
        # Text, not str: no rich markup in a plugin's name, and non-printables escaped.
        table.add_row(*(Text(printable(cell)) for cell in cells))
    console().print(table)


def _status_text(e: LayerEntry) -> str:
    """The Status cell of ``nbcnn layers``: the status, and for a shared name what a bare
    ``type:`` means and how to reach this entry (the rule in nbcnn/registry.py)."""
    others = ", ".join(e.clashes_with)
    if e.status == "broken":
        return f"broken: {e.error}"
    if e.status == "shadows":
        return (
            f"shadows nbcnn:{e.name} (a bare {e.name} means nbcnn's): use {e.qualified} "
            "for this one"
        )
    if e.status == "clash":
        return f"clash with {others}: use {e.qualified}"
    if e.clashes_with:  # a built-in that plugins shadow: the bare name still means this one
        return f"ok (also registered by {others}; a bare {e.name} means this one)"
    return e.status
