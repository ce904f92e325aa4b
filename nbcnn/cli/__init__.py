"""The ``nbcnn`` command: a thin Typer layer that parses, calls the library, prints.

One ``app`` here; each command group lives in a module of its own and is registered below
(the modules never import this package back):

- :mod:`~nbcnn.cli.describe`: ``summary``, ``layers``
- :mod:`~nbcnn.cli.train`: ``train``
- :mod:`~nbcnn.cli.sweep`: ``sweep``
- :mod:`~nbcnn.cli.evaluate`: ``evaluate``, ``predict``
- :mod:`~nbcnn.cli.pictures`: ``convolve``, ``featuremaps``, ``filters``, ``plot``,
  ``augment-preview``
- :mod:`~nbcnn.cli.interop`: ``export``, ``import-keras-weights``
- :mod:`~nbcnn.cli.data`: ``data list``, ``data fetch`` (a sub-app)

Errors follow :mod:`nbcnn.cli.common`: one line on stderr, exit code 2 for bad input, 1 for a
failure during work; a traceback means a bug. The library never imports typer.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from nbcnn.cli import common, data, describe, evaluate, interop, pictures, sweep, train

app = typer.Typer(
    name="nbcnn",
    help="Small, fast CNNs on the CPU: YAML models, Keras-exact summaries, Numba kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from nbcnn import __version__

        print(f"nbcnn {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
    traceback: Annotated[
        bool,
        typer.Option(
            "--traceback",
            help="On an error, print its traceback too (a plugin's own, for a layer's bug); "
            "NBCNN_DEBUG=1 does the same.",
        ),
    ] = False,
):
    """Small, fast CNNs on the CPU: YAML models, Keras-exact summaries, Numba kernels."""
    common.show_tracebacks = traceback


# In the order `nbcnn --help` lists them: describe, train, use, look inside, interop.
for _command in (
    describe.summary,
    describe.layers,
    train.train,
    sweep.sweep,
    evaluate.evaluate,
    evaluate.predict,
    pictures.convolve,
    pictures.featuremaps,
    pictures.filters,
    pictures.augment_preview,
    pictures.plot,
    interop.export,
):
    app.command()(_command)
app.command("import-keras-weights")(interop.import_keras_weights)
app.add_typer(data.app)


def _click_exceptions():
    """Click's exception types: vendored inside typer since 0.22, the click package before."""
    try:
        from typer._click import exceptions
    except ImportError:  # an older typer on top of click
        from click import exceptions
    return exceptions


def main() -> None:
    """Console-script entry point. Usage errors (an unknown option, a value out of range) are
    one line like every other error, instead of click's three-line "Usage:" block."""
    exceptions = _click_exceptions()
    try:
        code = app(standalone_mode=False)
    except exceptions.UsageError as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `nbcnn`: the help text
            err.show()
            sys.exit(err.exit_code)
        command = err.ctx.command_path if err.ctx is not None else "nbcnn"
        print(
            f"nbcnn: error: {' '.join(err.format_message().split())} (see '{command} --help')",
            file=sys.stderr,
        )
        sys.exit(2)
    except exceptions.ClickException as err:
        print(f"nbcnn: error: {' '.join(err.format_message().split())}", file=sys.stderr)
        sys.exit(err.exit_code)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
