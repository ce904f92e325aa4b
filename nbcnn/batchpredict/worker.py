"""What runs on a worker: one partition of image paths in, its predictions out.

The model is loaded once per worker process and kept in a module-level cache keyed by the
config and weights files (path, size, modification time), so that a worker running thousands
of partitions reads and builds it once, and an edited weights file is read again. Dask ships
:func:`predict_partition` by reference (this module is imported on the worker), so the cache
lives as long as the worker does.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np

from nbcnn.errors import DataError

#: Models a worker keeps (least recently used dropped first): a long-lived cluster serving
#: a few models in turn does not reload them, and does not keep every model it ever ran.
CACHED_MODELS = 2

_models: OrderedDict[tuple, _Loaded] = OrderedDict()
_loads: Counter[tuple] = Counter()
_cache_lock = threading.Lock()


@dataclass
class _Loaded:
    model: object
    batch_size: int
    # A worker with several task threads decodes partitions in parallel but runs one forward
    # at a time per model: layers are not promised to be reentrant, and numba's workqueue
    # layer aborts the process when two threads launch parallel kernels at once.
    lock: threading.Lock


@dataclass(frozen=True)
class PartitionTask:
    """One partition to predict: ``paths`` (as they will be written), the model's files,
    how many classes to keep per image, and numba's threads (None: leave them)."""

    index: int
    paths: list[str]
    config: str
    weights: str
    top: int
    threads: int | None = None


@dataclass
class PartitionRows:
    """The predictions of one partition, row i for ``paths[i]``.

    classes : (N, K) int64, the K most probable classes, most probable first (-1 where the
    image failed); probabilities : (N, K) float32, theirs (NaN where it failed); errors : N
    messages, None where the image was read; pid : the worker process's id.
    """

    index: int
    paths: list[str]
    classes: np.ndarray
    probabilities: np.ndarray
    errors: list[str | None]
    seconds: float
    pid: int

    @property
    def failed(self) -> int:
        return sum(e is not None for e in self.errors)


def model_key(config: str, weights: str) -> tuple:
    """What identifies a model on a worker: both files' absolute paths, sizes, mtimes."""
    key = []
    for path in (config, weights):
        try:
            stat = os.stat(path)
        except OSError as err:
            raise DataError(f"cannot read it on this worker ({err.strerror})", file=path) from None
        key += [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]
    return tuple(key)


def model_loads(config: str, weights: str) -> int:
    """How many times this process loaded the model of ``config`` and ``weights`` (tests ask
    each worker with ``client.run``)."""
    return _loads[model_key(config, weights)]


def cached_model(config: str, weights: str) -> _Loaded:
    """The model of ``config`` with ``weights``, loaded on the first call in this process."""
    key = model_key(config, weights)
    with _cache_lock:
        loaded = _models.get(key)
        if loaded is None:
            from nbcnn.prepare import model_with_weights
            from nbcnn.resources import inference_batch_size

            _, model, _ = model_with_weights(config, weights)
            loaded = _Loaded(model, inference_batch_size(model), threading.Lock())
            _models[key] = loaded
            _loads[key] += 1
            while len(_models) > CACHED_MODELS:
                _models.popitem(last=False)
        _models.move_to_end(key)
        return loaded


def predict_partition(task: PartitionTask) -> PartitionRows:
    """Decode the images of ``task`` and predict them; an image that cannot be read is a row
    with its error, and the partition goes on."""
    started = time.perf_counter()
    if task.threads is not None:
        # numba's thread count is per calling thread: set it in the task's own thread.
        from nbcnn.kernels._jit import set_threads

        set_threads(task.threads)
    loaded = cached_model(task.config, task.weights)
    x, errors = _decode(task.paths, loaded.model.input_shape)
    read = np.array([e is None for e in errors], dtype=bool)
    outputs = int(np.prod(loaded.model.output_shape))
    top = min(task.top, outputs)
    classes = np.full((len(task.paths), top), -1, dtype=np.int64)
    probabilities = np.full((len(task.paths), top), np.nan, dtype=np.float32)
    if read.any():
        with loaded.lock, np.errstate(over="ignore", invalid="ignore"):
            probs = loaded.model.predict(x[read], loaded.batch_size).reshape(-1, outputs)
        # Row by row as the in-process predict orders them (np.argsort of -p, its default
        # kind), so that ties come out in the same order.
        order = np.argsort(-probs, axis=1)[:, :top]
        classes[read] = order
        probabilities[read] = np.take_along_axis(probs, order, axis=1)
    return PartitionRows(
        task.index,
        task.paths,
        classes,
        probabilities,
        errors,
        time.perf_counter() - started,
        os.getpid(),
    )


def _decode(paths: list[str], input_shape: tuple[int, ...]) -> tuple[np.ndarray, list]:
    """(N, *input_shape) float32 as :func:`nbcnn.data.load_images` decodes them, and the
    error of each path (None when read). All at once first; only a partition with a bad
    image is decoded again one image at a time to find which."""
    from nbcnn.data import load_images

    try:
        return load_images(paths, input_shape), [None] * len(paths)
    except DataError:
        pass
    x = np.zeros((len(paths), *input_shape), dtype=np.float32)
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            x[i] = load_images([path], input_shape)[0]
            errors.append(None)
        except DataError as err:
            errors.append(err.message)
    return x, errors
