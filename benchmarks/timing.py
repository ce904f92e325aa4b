"""Timing helpers shared by the benchmarks: interleaved repeats, medians, ratios.

Machines here are shared and noisy, so candidates are timed in turns (A, B, A, B, ...) in one
process and compared by the median of their per-round times, never by a single run; each turn
starts with untimed runs that absorb the hand-over from the other framework.
"""

from __future__ import annotations

import os

# OpenBLAS reads this once, when numpy loads it (see nbcnn/__init__.py): set it first.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

#: Seconds each turn runs its candidate untimed before timing it (see ``interleaved``).
SETTLE = 0.1


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 2):
    """Median seconds of each candidate over ``rounds`` rounds, run in turns.

    In each turn the candidate first runs untimed for at least ``SETTLE`` seconds, then once
    timed: the untimed runs absorb the switch from the other framework. Without them, whoever
    follows PyTorch finds PyTorch's OpenMP workers still spinning on both cores for up to
    ~20 ms after its op (measured: an nbcnn conv2 forward took 8.3 ms right after PyTorch's,
    4.2 ms on its own; one untimed run of a 2 ms kernel was not enough), which measures the
    hand-over, not the framework: a program runs one framework, warm. Sleeping instead would
    let the candidate's own threads fall asleep too (PyTorch's conv2 then took 3.0 ms instead
    of 2.3). The rounds still alternate, so both see the same drift of a shared machine.
    """
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            settle_until = time.perf_counter() + SETTLE
            while time.perf_counter() < settle_until:  # untimed: takes the switch
                fn()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, times


def median_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of time[denominator] / time[numerator]: > 1 means numerator faster."""
    return statistics.median(d / n for n, d in zip(times[numerator], times[denominator]))


def try_torch(threads: int | None = None):
    """PyTorch, if installed, set to ``threads`` threads (default: all cores); else None."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch


def machine() -> str:
    """One line naming the machine, the date and the versions that matter."""
    import platform

    import numba
    import numpy

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if "model name" in line)
    except (OSError, StopIteration):
        pass
    torch = try_torch()
    return (
        f"{time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, numpy {numpy.__version__}, numba {numba.__version__}, "
        f"torch {torch.__version__ if torch else 'not installed'}"
    )


def memory_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB. Not
    ``getrusage``'s ru_maxrss: Linux carries it over from the parent through fork and exec,
    so a child started by a bigger parent (one that imported torch) reports the parent's
    peak."""
    with open("/proc/self/status") as handle:
        kib = next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))
    return kib / 1024
