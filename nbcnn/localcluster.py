"""The local Dask cluster that ``nbcnn sweep`` and ``nbcnn predict --out`` start when no
``--scheduler`` is given: worker processes of one thread each, on 127.0.0.1, quiet.

Imported only by those two commands; Dask itself is imported inside :func:`start`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any


def start(workers: int, dashboard: str | None = None) -> Any:
    """A ``distributed.LocalCluster`` of ``workers`` single-threaded worker processes on
    127.0.0.1 (``dashboard``: its address, e.g. ``127.0.0.1:0`` for a free port; None for
    none), started with SIGINT ignored (see :func:`sigint_ignored`)."""
    from distributed import LocalCluster

    with sigint_ignored():
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=dashboard,
            silence_logs=logging.ERROR,
        )


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while the local workers are spawned: they inherit it, so a Ctrl-C (sent
    to the terminal's whole process group) reaches the driver alone, which stops the cluster,
    instead of printing a KeyboardInterrupt traceback from every worker process. (A sweep's
    trials get SIGINT back: nbcnn.sweep.trials.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
