"""One trial of a sweep: ``nbcnn train`` in a subprocess, started by a Dask task, and what
its end means.

The training runs in a process of its own, not in the Dask worker, so that whatever happens
to it (a crash, an out-of-memory kill, ``kill -9``) is a failed subprocess with an exit
status, and the worker goes on to the next trial. Its folder is an ordinary run folder
(:mod:`nbcnn.runs`) with two files of the sweep's beside the run's own:

- ``trial.json``: the trial's number, the host and pid of its ``nbcnn train``, the command;
- ``train.log``: what ``nbcnn train`` printed (stdout and stderr);
- ``stop``: written by the sweep to stop the trial (pruning): the task sends SIGINT, and
  ``nbcnn train`` stops between batches with its last epoch committed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORD = "trial.json"
LOG = "train.log"
STOP = "stop"
#: How often the task looks for the stop file (and the driver for new epochs).
POLL_SECONDS = 0.2
#: SIGINT stops nbcnn train within a batch; one still running this long after is killed.
STOP_GRACE_SECONDS = 60.0
#: Exit status of ``nbcnn train`` after a Ctrl-C (SIGINT) stopped it (nbcnn.cli.train).
INTERRUPTED = 130


def run_trial(config: str, folder: str, cwd: str, threads: int, number: int) -> dict[str, Any]:
    """Run ``nbcnn train CONFIG --resume`` in ``cwd`` (the sweep's working folder, where the
    relative paths of its configs point) and wait for it; runs on a Dask worker.

    ``--resume``: when Dask runs the task again (its worker died), the trial continues from
    its last committed epoch instead of being refused by its own run folder. The BLAS thread
    variables are set to ``threads`` (Dask sets them to 1 in its workers) so that the trial
    computes as ``nbcnn train`` of the same config does outside the sweep.

    Returns ``{returncode, seconds, stopped, host, pid}``; ``returncode`` is negative for a
    signal (-9: killed by SIGKILL), ``stopped`` whether the stop file was acted on.
    """
    if not os.path.isdir(cwd):
        raise FileNotFoundError(
            f"the sweep's folder {cwd} is not on this worker ({socket.gethostname()}): the "
            "workers need the sweep's files on a shared filesystem at the same path"
        )
    where = Path(cwd, folder)
    where.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "nbcnn.cli", "train", config, "--resume"]
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    started = time.monotonic()
    with open(where / LOG, "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_in_child if os.name == "posix" else None,  # noqa: PLW1509
        )
    record = {
        "number": number,
        "host": socket.gethostname(),
        "pid": process.pid,
        "command": command,
        "started": time.time(),
    }
    _write_json(where / RECORD, record)
    stop_sent = None
    while True:
        try:
            returncode = process.wait(timeout=POLL_SECONDS)
            break
        except subprocess.TimeoutExpired:
            pass
        if stop_sent is None and (where / STOP).exists():
            process.send_signal(signal.SIGINT)
            stop_sent = time.monotonic()
        elif stop_sent is not None and time.monotonic() - stop_sent > STOP_GRACE_SECONDS:
            process.kill()
    return {
        "returncode": returncode,
        "seconds": time.monotonic() - started,
        "stopped": stop_sent is not None,
        "host": record["host"],
        "pid": process.pid,
    }


def _in_child() -> None:
    """In the child, before exec. SIGINT back to its default (a local cluster's workers
    ignore it), so that nbcnn train stops on it. On Linux, SIGKILL it when the thread that
    started it dies, so that a Dask worker killed (or a local cluster closed) mid-trial
    leaves no training running on; atomic epoch commits make the kill safe for its run
    folder (nbcnn.runs)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _write_json(path: Path, record: dict[str, Any]) -> None:
    from nbcnn.io import write_text_atomic

    write_text_atomic(path, json.dumps(record) + "\n")


# ---------------------------------------------------------------------- what the end means


@dataclass
class Outcome:
    """How a trial ended: ``complete`` (``value`` is its metric at the last epoch),
    ``pruned`` (stopped by the sweep) or ``failed`` (``error`` says why; ``retry`` when the
    cause lies outside the trial's config, a kill or an interrupt, so a re-run of the sweep
    runs it again)."""

    state: str
    value: float | None = None
    error: str | None = None
    retry: bool = False


def epoch_values(folder: str | os.PathLike, metric: str) -> list[tuple[int, float | None]]:
    """``(epoch, value of metric)`` for each committed epoch of the run in ``folder`` (none
    yet: ``[]``); a value the run did not record, or NaN, is None."""
    from nbcnn.errors import DataError
    from nbcnn.pictures import read_metrics

    if not Path(folder, "metrics.jsonl").exists():
        return []
    try:
        records = read_metrics(folder)
    except DataError:
        return []  # being replaced between the check and the read; read again next poll
    values = []
    for record in records:
        value = record.get(metric)
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        values.append((record["epoch"], float(value) if finite else None))
    return values


def outcome(result: dict[str, Any], folder: str | os.PathLike, metric: str) -> Outcome:
    """The :class:`Outcome` of :func:`run_trial`'s ``result`` for the run in ``folder``."""
    code, stopped = result["returncode"], result["stopped"]
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return Outcome("failed", error=f"killed by {name}", retry=True)
    if code == INTERRUPTED and stopped:
        return Outcome("pruned")
    if code == INTERRUPTED:
        return Outcome("failed", error="interrupted (SIGINT)", retry=True)
    if code != 0:
        line = last_error(Path(folder, LOG))
        return Outcome("failed", error=f"nbcnn train exited with code {code}: {line}")
    values = epoch_values(folder, metric)
    if not values:
        return Outcome("failed", error="no epoch recorded")
    value = values[-1][1]
    if value is None:
        return Outcome("failed", error=f"{metric} is not a number at the last epoch")
    return Outcome("complete", value=value)


def last_error(log: Path, limit: int = 300) -> str:
    """The error line of a ``nbcnn train`` log (its last ``nbcnn: error:`` line, else its
    last line), at most ``limit`` characters."""
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 8192))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return f"see {log}"
    lines = [line.strip() for line in lines if line.strip()]
    errors = [line for line in lines if line.startswith("nbcnn: error:")]
    line = (errors or lines or [f"nothing printed (see {log})"])[-1]
    line = line.removeprefix("nbcnn: error: ")
    return line if len(line) <= limit else line[: limit - 3] + "..."
