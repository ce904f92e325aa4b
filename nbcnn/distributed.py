"""Data-parallel training over MPI: one model trained by K processes (ranks) in step.

``mpiexec -n K nbcnn train config.yaml`` (or ``nbcnn train --workers K``, which starts that)
runs the same program on K ranks. Each step, every rank draws the same global batch of
``train.batch_size`` samples (the run's seeded shuffle, identical on every rank) and takes its
contiguous shard of it (:meth:`Group.shard`: sizes differ by at most one); computes the
gradient of the *global* mean loss restricted to its shard (the loss gradient scaled by
``shard / batch``); then one in-place all-reduce (sum) of a single flat float32 buffer holding
every gradient, the step's loss and the stop flag (:class:`GradientReducer`) gives every rank
the gradient of the whole batch, and identical optimizer steps keep the weights identical.
What K ranks compute is what one process computes on the whole batch, up to the order of
float32 sums (tests/test_distributed.py: 2 ranks x 64 against 1 x 128).

Kept independent of K, so that a checkpoint resumes with any K:
- BatchNormalization uses the statistics of the whole global batch (synchronized batch norm,
  as PyTorch's SyncBatchNorm): the forward all-gathers each rank's (count, mean, variance)
  per channel and combines them (:meth:`Group.batch_statistics`), the backward all-reduces
  the two per-channel sums it needs (:meth:`Group.sum_channels`). The moving statistics then
  stay identical on every rank. Cost: two small collectives per BatchNormalization per step.
- Dropout draws its mask for the whole global batch and keeps its shard's rows
  (:func:`batch_shard`), so masks are those of one process.
- Augmentation transforms the whole global batch on every rank (its random stream is drawn
  per batch), then each rank keeps its shard: exact, at K times the augmentation work.
- Validation and the test evaluation are sharded: each rank predicts its slice, the outputs
  are gathered (:meth:`Group.gather_rows`) and every rank computes the same metrics.

Rank 0 alone writes the run folder, logs and progress; the other ranks receive its resolved
settings and, at the start of training, its weights, optimizer slots and random streams
(:func:`sync_from_root`): the state of a resumed checkpoint reaches every rank.

Only :func:`start` imports mpi4py; without MPI (no launcher in the environment, or one rank)
nothing here is active and training is untouched.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

#: Environment variables a launcher sets on each rank: (world size, ranks on this node).
#: MPICH/Hydra and Intel MPI: PMI_SIZE, MPI_LOCALNRANKS; Open MPI: OMPI_COMM_WORLD_*;
#: PMIx launchers (srun): PMIX_RANK with the size from the library.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_LOCAL_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")

_active: Group | None = None
_shard: tuple[int, int] | None = None  # (first row, global batch) of this rank's current batch


class MPIMissing(ImportError):
    pass


def launched_size() -> int:
    """The number of ranks the environment says this process was launched among (1 when no
    MPI launcher started it)."""
    for var in _SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


def local_ranks() -> int:
    """Ranks sharing this machine (its cores), from the launcher's environment; 1 if unknown."""
    for var in _LOCAL_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def active() -> Group | None:
    """The group of ranks training together, or None (one process: nothing to do)."""
    return _active


def speaks() -> bool:
    """Whether this process prints warnings and progress: one process, or rank 0 of many."""
    return _active is None or _active.root


def start() -> Group | None:
    """Join the MPI job this process was launched in (``mpiexec -n K``), once; None when it
    was not launched by MPI or the job has one rank. Raises :class:`MPIMissing` with the
    install hint when a launcher started it but mpi4py is missing."""
    global _active
    if _active is not None:
        return _active
    if launched_size() <= 1 and "PMIX_RANK" not in os.environ:
        return None
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise MPIMissing(
            "this process was started by an MPI launcher but mpi4py is not installed: "
            "pip install 'nbcnn[mpi]'"
        ) from err
    comm = MPI.COMM_WORLD
    if comm.Get_size() <= 1:
        return None
    _active = Group(comm)
    return _active


def stop() -> None:
    """Leave data-parallel mode (tests; the process stays in its MPI job)."""
    global _active
    _active = None


def batch_shard() -> tuple[int, int] | None:
    """``(first row, global batch size)`` of the rows this rank holds of the current training
    batch, or None outside data-parallel training (Dropout draws its mask from it)."""
    return _shard


@contextlib.contextmanager
def sharding(first: int, total: int) -> Iterator[None]:
    global _shard
    _shard = (first, total)
    try:
        yield
    finally:
        _shard = None


class Group:
    """The ranks of one data-parallel run (an ``MPI.Comm``), with the few collectives
    training uses."""

    def __init__(self, comm: Any):
        from mpi4py import MPI

        self.comm, self._mpi = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    @property
    def root(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """``(lo, hi)``: this rank's rows of a batch of ``n`` (contiguous, sizes n // K or
        n // K + 1, the larger first, as ``np.array_split``)."""
        base, extra = divmod(n, self.size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (self.rank < extra)

    def allreduce_(self, buffer: np.ndarray) -> np.ndarray:
        """Sum ``buffer`` (contiguous) over the ranks, in place; returns it."""
        self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)
        return buffer

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (the same answer on every rank)."""
        return bool(self.allreduce_(np.array([float(flag)]))[0])

    def bcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled: objects of this job only)."""
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def abort(self, code: int) -> None:
        """End every rank of the job at once with exit status ``code`` (a rank that cannot go
        on would otherwise leave the others waiting in a collective forever)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    def batch_statistics(self, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and biased variance (float64 (C,)) of the rows of every rank's
        ``x2`` (M_r, C): each rank's own (count, mean, variance), all-gathered and combined in
        rank order (Chan et al.'s pairwise formula: no cancellation from raw sums of squares),
        so that every rank gets the same numbers."""
        from nbcnn.kernels import batchnorm

        rows, channels = x2.shape
        local = np.zeros((3, channels))
        if rows:
            mean, var = batchnorm.batch_statistics(x2)
            local[0], local[1], local[2] = rows, mean, var
        parts = np.empty((self.size, 3, channels))
        self.comm.Allgather(local, parts)
        counts = parts[:, 0, 0]
        total = counts.sum()
        mean = (counts[:, None] * parts[:, 1]).sum(axis=0) / total
        spread = parts[:, 2] + (parts[:, 1] - mean) ** 2
        var = (counts[:, None] * spread).sum(axis=0) / total
        return mean, var

    def sum_channels(self, *sums: np.ndarray, rows: int) -> tuple[list[np.ndarray], int]:
        """Every rank's per-channel float64 ``sums`` and row count, summed over the ranks."""
        buffer = np.concatenate([*(np.asarray(s, np.float64) for s in sums), [float(rows)]])
        self.allreduce_(buffer)
        c = len(sums[0])
        return [buffer[i * c : (i + 1) * c] for i in range(len(sums))], int(buffer[-1])

    def gather_rows(self, part: np.ndarray) -> np.ndarray:
        """Every rank's ``part`` (M_r, ...) concatenated in rank order."""
        return np.concatenate(self.comm.allgather(part))

    def merge_tally(self, tally: Any) -> None:
        """Sum a :class:`nbcnn.metrics.Tally`'s running sums over the ranks, in place."""
        names = list(tally.sums)
        values = [tally.loss_sum, tally.samples]
        for name in names:
            values += tally.sums[name]
        buffer = self.allreduce_(np.array(values, np.float64))
        tally.loss_sum, tally.samples = float(buffer[0]), int(buffer[1])
        for i, name in enumerate(names):
            total, count = buffer[2 + 2 * i], buffer[3 + 2 * i]
            tally.sums[name] = [float(total), int(count)]


class GradientReducer:
    """One all-reduce per step: every gradient, then ``extras`` (the step's loss and the stop
    flag), copied into one flat float32 buffer, summed in place across the ranks, and handed
    back as views of it (the optimizer reads them before the next step overwrites them).

    ``flat=False`` all-reduces each gradient array on its own instead (one call per weight:
    the alternative benchmarks/bench_scaling.py measures)."""

    def __init__(self, group: Group, params: list[np.ndarray], extras: int, flat: bool = True):
        self.group, self.flat = group, flat
        sizes = [p.size for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.shapes = [p.shape for p in params]
        self.buffer = np.empty(int(self.offsets[-1]) + extras, np.float32)
        self.extras = extras

    def reduce(self, grads: list[np.ndarray], extras: list[float]) -> tuple[list, np.ndarray]:
        """``(summed gradients, summed extras)`` of this step over the ranks."""
        buffer, offsets, end = self.buffer, self.offsets, int(self.offsets[-1])
        for i, g in enumerate(grads):
            buffer[offsets[i] : offsets[i + 1]] = np.ravel(g)
        buffer[end:] = extras
        if self.flat:
            self.group.allreduce_(buffer)
        else:
            for i in range(len(grads)):
                self.group.allreduce_(buffer[offsets[i] : offsets[i + 1]])
            self.group.allreduce_(buffer[end:])
        views = [
            buffer[offsets[i] : offsets[i + 1]].reshape(shape)
            for i, shape in enumerate(self.shapes)
        ]
        return views, buffer[end:].astype(np.float64)


def sharded_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    rng: np.random.Generator | None,
    group: Group,
    whole: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, int, int]]:
    """This rank's part of each global batch of :func:`nbcnn.data.batches` (the same order,
    from the same ``rng``): ``(xb, yb, first, total)`` with ``xb`` rows ``first`` ..
    ``first + len(xb)`` of a global batch of ``total``. Only the shard's samples are read,
    unless ``whole`` (augmentation needs the global batch): then ``xb`` is the whole batch.
    """
    from nbcnn.data import batch_rows
    from nbcnn.streaming import ImageArray

    if not isinstance(x, ImageArray):
        x = np.ascontiguousarray(x, dtype=np.float32)
    for rows in batch_rows(len(x), batch_size, rng):
        ordered = isinstance(rows, slice)  # no shuffle: slices, so that xb is a view
        total = rows.stop - rows.start if ordered else len(rows)
        lo, hi = (0, total) if whole else group.shard(total)
        mine = slice(rows.start + lo, rows.start + hi) if ordered else rows[lo:hi]
        yield x[mine], y[mine], lo, total


def sync_from_root(model: Any, rngs: list[np.random.Generator], state: dict[str, Any]) -> dict:
    """Make every rank start from rank 0's weights (moving statistics included), optimizer
    slots, random streams ``rngs`` (in the same order on every rank) and loop ``state`` (a
    resumed run's epoch, best value, history); returns rank 0's ``state``."""
    group = _active
    optimizer = model.compiled.optimizer
    payload = None
    if group.root:
        payload = {
            "weights": model.get_weights(),
            "optimizer": optimizer.state_dict() if optimizer._slots is not None else None,
            "rngs": [rng.bit_generator.state for rng in rngs],
            "state": state,
        }
    payload = group.bcast(payload)
    if not group.root:
        model.set_weights(payload["weights"])
        if payload["optimizer"] is not None:
            optimizer.load_state_dict(payload["optimizer"])
        for rng, rng_state in zip(rngs, payload["rngs"]):
            rng.bit_generator.state = rng_state
    return payload["state"]


def default_threads(cores: int) -> int:
    """Numba threads per rank when the run names none: the machine's cores shared by the
    ranks on it (2 ranks on 2 cores: 1 thread each), so that they do not oversubscribe."""
    return max(1, cores // local_ranks())
