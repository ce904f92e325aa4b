"""``nbcnn train`` on several processes: ``--workers K`` starts ``mpiexec -n K``, and each rank
of an MPI job (``mpiexec -n K nbcnn train ...``) runs :func:`train_rank`.

Rank 0 checks and prepares the run as a single process would, owns the run folder, prints the
progress and the test line; the other ranks receive its resolved settings, load the same data,
train in step (nbcnn/distributed.py) and write nothing. How a rank that cannot go on ends the
job: an error every rank meets at the same point (bad config, bad data, a non-finite loss,
Ctrl-C) is printed once, by rank 0, and every rank exits with its code; an error of one rank
alone ends every rank at once (``MPI_Abort``), since the others would wait in the next
all-reduce forever; a rank that dies (killed, out of memory) makes the launcher stop the
others. The run folder is committed one whole epoch at a time, so none of these loses a
committed epoch.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

from nbcnn.errors import ConfigError, NbcnnError, printable


def launch(workers: int, config: Path, options: dict[str, Any]) -> None:
    """``nbcnn train --workers K``: run this same training as an MPI job of K local ranks
    (``mpiexec -n K python -m nbcnn.cli train ...``) and end with its exit status. Ctrl-C goes
    to the ranks through mpiexec (which forwards the first one); this process only waits."""
    try:
        import mpi4py  # noqa: F401 - only whether it is there
    except ImportError:
        raise ConfigError(
            "training on several workers needs MPI: pip install 'nbcnn[mpi]' (mpi4py and MPICH)",
            where="--workers",
        ) from None
    mpiexec = _mpiexec()
    command = [mpiexec, "-n", str(workers), sys.executable, "-m", "nbcnn.cli", "train"]
    command += _flags(config, options)
    env = dict(os.environ)
    from nbcnn.cli.common import tracebacks_wanted

    if tracebacks_wanted():
        env["NBCNN_DEBUG"] = "1"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # mpiexec gets it and passes it on
    try:
        process = subprocess.Popen(command, env=env)
        code = process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    if code not in (0, 1, 2, 130):  # a rank died: the launcher stopped the others
        output = options.get("output")
        where = f" in {printable(str(output))}" if output else ""
        print(
            f"nbcnn: a worker ended abnormally (mpiexec exit status {code}) and every worker "
            f"was stopped; the epochs completed before it are kept{where} (resume with "
            "--resume)",
            file=sys.stderr,
        )
    raise typer.Exit(code)


def _mpiexec() -> str:
    """The mpiexec beside this Python (MPICH's wheel installs it into the environment's bin),
    else the first on PATH."""
    here = Path(sys.executable).parent
    found = shutil.which("mpiexec", path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise ConfigError(
            "no mpiexec found: pip install 'nbcnn[mpi]' (MPICH's wheel brings one) or put "
            "your MPI's bin folder on PATH",
            where="--workers",
        )
    return found


def _flags(config: Path, options: dict[str, Any]) -> list[str]:
    """The ``nbcnn train`` arguments that reproduce ``options`` (the command's own)."""
    words = [str(config)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value is not None and value is not False:
            words += [flag, str(value)]
    return words


def train_rank(group, config: Path, prepare_args: dict[str, Any], after) -> None:
    """One rank's ``nbcnn train`` in an MPI job of ``group.size`` ranks. ``prepare_args``:
    :func:`nbcnn.prepare.prepare_run`'s keywords; ``after(run, dataset, history)`` prints and
    draws on rank 0 once training is done (the test evaluation runs on every rank)."""
    from nbcnn.cli.common import console, load_compiler, loading_data
    from nbcnn.errors import PeerFailed
    from nbcnn.prepare import apply_rank_threads, load_data, prepare_run_in_group, run_training
    from nbcnn.progress import TrainingProgress
    from nbcnn.train import StopRequested

    # 1. Rank 0 checks everything (run folder included) and sends the resolved settings.
    try:
        run = prepare_run_in_group(group, config, **prepare_args)
    except PeerFailed as err:
        raise typer.Exit(err.exit_code) from None  # rank 0 printed why
    except NbcnnError as err:
        if group.root:  # sent to the others, which stop with its code
            raise
        _abort_for(group, err)  # this rank alone (another config file on its node?)
    except BaseException as err:  # noqa: BLE001 - the others wait for this rank
        _abort_for(group, err)
    try:
        load_compiler()
        apply_rank_threads(run)
    except BaseException as err:  # noqa: BLE001
        _abort_for(group, err)

    # 2. Rank 0 loads the data first (an image folder is decoded once, into the cache the
    #    others then read), then the others; any rank's error is printed once, by rank 0.
    dataset = failure = None
    try:
        if group.root:
            try:
                with loading_data(run.train.dataset) as decoding:
                    dataset = load_data(run.model, run.train, config, progress=decoding)
            except NbcnnError as err:
                failure = err
            group.bcast(failure is None)
        elif group.bcast(None):
            try:
                dataset = load_data(run.model, run.train, config)
            except NbcnnError as err:
                failure = err
    except BaseException as err:  # noqa: BLE001 - Ctrl-C while decoding, out of memory...
        _abort_for(group, err)
    failures = group.allgather(None if failure is None else (str(failure), _code(failure)))
    first = next(((rank, f) for rank, f in enumerate(failures) if f is not None), None)
    if first is not None:
        rank, (message, code) = first
        if group.root:
            prefix = "" if rank == 0 else f"worker {rank}: "
            print(f"nbcnn: error: {prefix}{printable(message)}", file=sys.stderr)
        raise typer.Exit(code)

    # 3. Training in step, then the test evaluation; one rank's own failure ends the job.
    try:
        if group.root:
            for line in (
                f"data: {printable(dataset.source)}",
                f"workers: {group.size} processes, each batch of {run.train.batch_size} split "
                f"{_split(run.train.batch_size, group.size)}",
            ):
                console().print(line, highlight=False, markup=False)
            with TrainingProgress() as progress:
                history = run_training(run, dataset, callback=progress)
        else:
            history = run_training(run, dataset, writes=False)
        after(run, dataset, history)
    except StopRequested as stop:
        stop.output = run.train.output  # every rank stopped after the same step
        raise
    except BaseException as err:  # noqa: BLE001
        _abort_for(group, err)


def _split(batch: int, size: int) -> str:
    base, extra = divmod(batch, size)
    return f"{base + 1} x {extra} + {base} x {size - extra}" if extra else f"{size} x {base}"


def _code(err: BaseException | None) -> int:
    """The exit status of ``err`` as one process would end (every rank must end with the
    same: MPICH's launcher exits with the bitwise OR of the ranks' statuses)."""
    return getattr(err, "exit_code", 1)


def _abort_for(group, err: BaseException) -> None:
    """End every rank because of ``err`` on this one, with the line one process would print."""
    if isinstance(err, typer.Exit):  # said already (Ctrl-C while decoding images)
        group.abort(err.exit_code)
    if isinstance(err, NbcnnError):
        _abort(group, f"nbcnn: error: {printable(' '.join(str(err).split()))}", _code(err))
    if isinstance(err, KeyboardInterrupt):
        _abort(group, "nbcnn: interrupted", 130)
    import traceback

    _abort(group, "".join(traceback.format_exception(err)).rstrip(), 1)


def _abort(group, message: str, code: int) -> None:
    """Print ``message`` (rank 0's plainly, another rank's named) and end every rank: the
    others may be waiting for this one in a collective. A rank other than 0 waits a moment
    first, so that when every rank fails alike, rank 0's line is the one printed."""
    if not group.root:
        time.sleep(1.0)
        message = message.replace("nbcnn: ", f"nbcnn: worker {group.rank}: ", 1)
    print(message, file=sys.stderr, flush=True)
    group.abort(code)
