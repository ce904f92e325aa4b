"""The driver: cut the inputs into partitions, run them on Dask (or here), write the rows.

The paths are enumerated lazily and only a bounded number of partitions is in flight at once
(:data:`IN_FLIGHT_PER_WORKER` per worker), so a job over millions of images holds a few
partitions' worth of paths and futures, never all of them. Finished partitions are written in
the order they finish; the journal of :mod:`nbcnn.batchpredict.output` makes that resumable.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from nbcnn import localcluster
from nbcnn.batchpredict.inputs import classify, image_paths, partitions, paths_digest
from nbcnn.batchpredict.output import open_output
from nbcnn.batchpredict.worker import PartitionRows, PartitionTask, predict_partition
from nbcnn.datasets import sha256_of
from nbcnn.errors import ConfigError, DataError, TrainingError

#: Partitions queued per worker beyond the one it runs: it never waits for the driver, and
#: the driver never holds more than a few partitions per worker.
IN_FLIGHT_PER_WORKER = 2


@dataclass
class BatchSummary:
    """What a job did. images : rows written by this run (failed ones included); failed : of
    them, images that could not be read; resumed_images / resumed_partitions : found already
    written; partitions : computed by this run, their indices; seconds : this run's time."""

    out: str
    images: int = 0
    failed: int = 0
    resumed_images: int = 0
    resumed_partitions: int = 0
    partitions: list[int] = field(default_factory=list)
    seconds: float = 0.0
    workers: str = ""

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "out": self.out,
            "images": self.images,
            "failed": self.failed,
            "resumed_images": self.resumed_images,
            "resumed_partitions": self.resumed_partitions,
            "partitions": len(self.partitions),
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 1),
            "workers": self.workers,
        }


def predict_to_file(
    config: str | os.PathLike,
    weights: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    top: int = 3,
    partition_size: int = 1000,
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: Callable[[BatchSummary], None] | None = None,
) -> BatchSummary:
    """Predict every image of ``inputs`` (image files, folders, .txt lists: see
    :mod:`nbcnn.batchpredict.inputs`) with ``config`` and ``weights`` into ``out`` (``.csv``
    or ``.parquet``, see :mod:`nbcnn.batchpredict.output`), skipping the partitions a previous
    run of the same job wrote.

    workers : worker processes of a local Dask cluster (None: :func:`default_workers`), or 0
    to predict in this process without Dask; scheduler : the address of a running Dask
    scheduler instead (its workers must see the files at the same paths). ``progress`` is
    called with the summary so far after each partition written.
    """
    config, weights, out = os.fspath(config), os.fspath(weights), os.fspath(out)
    if partition_size < 1 or top < 1:
        raise DataError(f"partition size and top must be >= 1, got {partition_size} and {top}")
    items = classify(inputs)
    paths = image_paths(items)
    first = next(paths, None)  # before any output exists: inputs without images are refused
    if first is None:
        raise DataError("holds no images", file=" ".join(i.path for i in items))
    outputs, class_names = _check_model(config, weights)
    fingerprint = {
        "inputs": [[i.kind, os.path.abspath(i.path)] for i in items],
        "config": sha256_of(config),
        "weights": sha256_of(weights),
        "partition_size": partition_size,
        "top": min(top, outputs),
    }
    sink = open_output(out, fingerprint, overwrite=overwrite, class_names=class_names)
    summary = BatchSummary(sink.path, resumed_partitions=len(sink.done))
    summary.resumed_images = sum(r["rows"] for r in sink.done.values())
    started = time.perf_counter()

    def tasks() -> Iterator[tuple[PartitionTask, str]]:
        for index, chunk in partitions(_chain(first, paths), partition_size):
            digest = paths_digest(chunk)
            if not sink.check_partition(index, digest):
                yield PartitionTask(index, chunk, config, weights, top, threads), digest

    threads = None  # the runner's, set below: tasks() reads it as it makes each task
    try:
        todo = tasks()
        next_task = next(todo, None)  # a finished job starts no cluster
        if next_task is None:
            summary.workers = "nothing left to do"
            return summary
        with _runner(workers, scheduler) as (run, threads, described):
            summary.workers = described
            # The first task was made before the runner said how many threads tasks take.
            next_task = (replace(next_task[0], threads=threads), next_task[1])
            for rows, digest in run(_chain(next_task, todo)):
                sink.write(rows, digest)
                summary.images += len(rows.paths)
                summary.failed += rows.failed
                summary.partitions.append(rows.index)
                summary.seconds = time.perf_counter() - started
                if progress is not None:
                    progress(summary)
    except BaseException:
        if sink.created and not summary.partitions:
            sink.discard()
        raise
    finally:
        sink.close()
        summary.seconds = time.perf_counter() - started
    return summary


def _chain(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def _check_model(config: str, weights: str) -> tuple[int, list[str] | None]:
    """Load the model here once, so that a bad config or weights file is refused before any
    output or cluster exists; returns its number of outputs and its class names (the
    training folder's class subfolders, for a ``dataset: folder`` config whose folder is
    here; None otherwise)."""
    import math

    from nbcnn.data import load_images
    from nbcnn.imagefolder import image_shape
    from nbcnn.prepare import model_with_weights

    _, model, train = model_with_weights(config, weights)
    try:
        image_shape(tuple(model.input_shape), None, None, "predict")
    except ConfigError as err:  # the model does not take images
        raise err.located(file=config) from None
    load_images([], model.input_shape)  # DataError here when Pillow is missing
    outputs = math.prod(model.output_shape)
    names = None
    if train.dataset == "folder" and train.path and os.path.isdir(train.path):
        names = sorted(
            n
            for n in os.listdir(train.path)
            if not n.startswith(".") and os.path.isdir(os.path.join(train.path, n))
        )
        if len(names) != outputs:
            names = None
    return outputs, names


def default_workers(cores: int | None = None) -> int:
    """Worker processes of the local cluster: one per core, each with one numba thread
    (measured faster than one worker with every core's threads: docs/batch-prediction.md)."""
    return max(1, cores or len(os.sched_getaffinity(0)))


@contextmanager
def _runner(workers: int | None, scheduler: str | None):
    """``(run, threads, described)``: ``run(tasks)`` yields ``(rows, digest)`` as partitions
    finish; ``threads`` the numba threads each task sets (None: the worker's own)."""
    cores = len(os.sched_getaffinity(0))
    if workers == 0 and scheduler is None:
        yield _in_process, None, f"in-process, {cores} thread(s)"
        return
    try:
        from distributed import Client
    except ImportError:
        raise DataError(
            "predicting on Dask needs dask[distributed]: pip install 'nbcnn[dask]' (or "
            "--workers 0 to predict in this process)"
        ) from None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as err:
            raise DataError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from None
        cluster, threads = None, None
        described = f"scheduler {scheduler}"
    else:
        workers = workers or default_workers(cores)
        threads = max(1, cores // workers)
        cluster = localcluster.start(workers)
        client = Client(cluster)
        described = f"{workers} worker(s) x {threads} thread(s)"
    try:
        count = max(1, len(client.scheduler_info().get("workers", {})))
        yield (
            (lambda tasks: _on_dask(client, tasks, count * IN_FLIGHT_PER_WORKER)),
            threads,
            described,
        )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _in_process(tasks: Iterator[tuple[PartitionTask, str]]):
    for task, digest in tasks:
        yield predict_partition(task), digest


def _on_dask(client, tasks: Iterator[tuple[PartitionTask, str]], in_flight: int):
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    running = as_completed()
    digests: dict[int, str] = {}

    def finished() -> tuple[PartitionRows, str]:
        future = next(running)
        try:
            rows = future.result()
        except KilledWorker as err:
            raise TrainingError(
                f"workers died running a partition ({err}); out of memory? The partitions "
                "written are kept: run the same command again to resume"
            ) from None
        future.release()
        return rows, digests.pop(rows.index)

    for task, digest in tasks:
        digests[task.index] = digest
        running.add(client.submit(predict_partition, task, pure=False))
        if running.count() >= in_flight:
            yield finished()
    while running.count():
        yield finished()
