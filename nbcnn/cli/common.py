"""What every command shares: the error mapping, the console, argument types, threads.

Known errors (:class:`~nbcnn.errors.NbcnnError`) become one line on stderr and exit code 2
(bad input) or 1 (failure during work, a layer's bug caught at its boundary); a traceback
means a bug of nbcnn's. ``nbcnn --traceback`` or ``NBCNN_DEBUG=1`` prints the traceback
behind the line too: the one a plugin's layer raised, kept as the error's ``__cause__``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from nbcnn.errors import ConfigError, NbcnnError, PluginError, printable

ConfigArg = Annotated[Path, typer.Argument(help="The model's YAML config.", show_default=False)]
WeightsOpt = Annotated[Path, typer.Option(help="Weights (.npz) saved by nbcnn train.")]
OutOpt = Annotated[Path, typer.Option("--out", help="The picture to write (.png).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for tools.")]


#: Set by ``nbcnn --traceback`` (the app's callback sets it on every invocation).
show_tracebacks = False


def tracebacks_wanted() -> bool:
    """Whether errors come with their traceback: ``--traceback``, or ``NBCNN_DEBUG`` set to
    anything but empty or ``0`` (for a command started by a script or a test)."""
    return show_tracebacks or os.environ.get("NBCNN_DEBUG", "") not in ("", "0")


def fail(message: str, code: int) -> None:
    # One line, whatever the message holds: scripts grep it, people read it.
    print(f"nbcnn: error: {printable(' '.join(message.split()))}", file=sys.stderr)
    raise typer.Exit(code)


def handles_errors(command):
    """Map the project's errors to one line and an exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except NbcnnError as err:
            message = str(err)
            if tracebacks_wanted():
                # The chain: the plugin's own exception first, then where nbcnn caught it;
                # each line escaped, as the error line is (a plugin's message may hold ESC).
                text = "".join(traceback.format_exception(err)).rstrip("\n")
                print("\n".join(map(printable, text.split("\n"))), file=sys.stderr)
            elif isinstance(err, PluginError) and err.__cause__ is not None:
                message += " (nbcnn --traceback or NBCNN_DEBUG=1 shows its traceback)"
            fail(message, err.exit_code)
        except (MemoryError, ImportError, OSError) as err:
            if not out_of_memory(err):
                raise
            fail(
                "ran out of memory (the machine's, `ulimit -v` or a cgroup limit) "
                f"{'loading a library' if isinstance(err, (ImportError, OSError)) else ''}: "
                f"{type(err).__name__}: {' '.join(str(err).split())[:160]}",
                2,
            )

    return wrapper


def out_of_memory(err: BaseException) -> bool:
    """True for the ways a process under a memory limit fails: a MemoryError, or a shared
    library (numpy's, scipy's, llvmlite's) the loader could not map."""
    if isinstance(err, MemoryError) or getattr(err, "errno", None) == errno.ENOMEM:
        return True
    text = str(err)
    return any(
        sign in text for sign in ("failed to map segment", "Cannot allocate memory", "libllvmlite")
    )


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``--input-shape 32,32,3`` as a tuple (None when not given)."""
    if text is None:
        return None
    from nbcnn.layers.args import show

    try:
        shape = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1 or len(shape) > 4:
        raise ConfigError(
            f"expected 1 to 4 positive ints separated by commas, e.g. 32,32,3; got {show(text)}",
            where="--input-shape",
        )
    return shape


def console():
    """A rich Console; when output is not a terminal, wide enough that tables don't wrap."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=max(out.width, 120))


def say(text: str) -> None:
    """One line of a result on stdout, without rich's highlighting."""
    console().print(text, highlight=False, soft_wrap=True, markup=False)


def plugin_output_to_stderr(json_output: bool):
    """With ``--json``, whatever plugins print while the model is built and run goes to
    stderr, so that stdout holds the JSON alone."""
    from contextlib import nullcontext

    from nbcnn.registry import stdout_to_stderr

    return stdout_to_stderr() if json_output else nullcontext()


@contextlib.contextmanager
def loading_data(dataset: str) -> Iterator[Callable[[int, int], None]]:
    """The ``progress`` to give :func:`nbcnn.prepare.load_data` for ``dataset`` (the loader's
    name): a bar while image folders are decoded (:class:`nbcnn.progress.DecodeProgress`);
    a Ctrl-C meanwhile ends the command with one line saying what was left, exit code 130.
    The run folder comes after the data, and the image decoder removes an unfinished cache
    file (nbcnn.streaming), so an interrupted decode leaves nothing behind."""
    from nbcnn.progress import DecodeProgress
    from nbcnn.spec import IMAGE_DATASETS

    decoded = []
    try:
        with DecodeProgress() as decoding:

            def progress(done: int, total: int) -> None:
                decoding(done, total)
                if done == total:
                    decoded.append(total)

            yield progress
    except KeyboardInterrupt:
        if decoded:
            what = (
                "loading the data; the decoded images stay in the cache for the next run, no "
                "run folder was created"
            )
        elif dataset in IMAGE_DATASETS:
            what = "decoding images; nothing was created"
        else:
            what = "loading the data; no run folder was created"
        print(f"nbcnn: interrupted while {what}", file=sys.stderr)
        raise typer.Exit(130) from None


def load_compiler() -> None:
    """Load numba's LLVM (llvmlite's shared library, ~100 MB of address space) before the data
    and the run folder: under a tight `ulimit -v` the command fails here, as one line (see
    ``handles_errors``), with nothing created, instead of in the first batch."""
    from llvmlite.binding import ffi

    ffi.lib._lib  # noqa: B018 - the property loads the library
