"""Images decoded once into a uint8 cache file, read back a batch at a time.

:func:`decoded_images` decodes a list of image files with a pool of threads (Pillow releases
the GIL while it decodes and resizes) into one ``.npy`` file of ``uint8 (N, *shape)`` in the
cache folder (:func:`cache_dir`), written in order through plain writes to a temporary file
then renamed: an interrupted decode leaves no cache behind. The file's name holds a hash of the
file list (paths, sizes, modification times) and the decoding options, so the next run reuses
it and a changed, added or removed image makes a new one (the old one is deleted).

:class:`ImageArray` is that file (or a subset of its rows) seen as ``float32 (N, *shape)`` in
[0, 1]: indexing it reads only the rows asked for, with ``readinto`` (no memory map, so the
process's resident memory stays one batch, whatever the size of the set; the operating system's
page cache keeps the file's hot parts) and converts them as :func:`nbcnn.data` converts uint8
images, so streamed and in-memory batches are equal bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nbcnn.errors import DataError
from nbcnn.io import image_bomb_warnings_as_errors, read_npy_header

if TYPE_CHECKING:
    from nbcnn.imagefolder import ImageList

#: ``stream: auto`` streams when the float32 images would take more than this fraction of the
#: available memory: the rest is for the model's activations, the optimizer and the OS.
IN_MEMORY_FRACTION = 0.5
#: Images one decoding task handles: large enough that the pool's overhead is small, small
#: enough that the progress moves and that the chunks in flight take little memory.
DECODE_CHUNK = 64
#: Bumped when the cache's layout or decoding changes, so old caches are not read.
CACHE_VERSION = 1
#: What the room check before an in-memory load names.
FLOAT32_ROOM = "the images as float32 (set stream: true to read them from disk)"
#: Images read per call by :func:`in_memory` (bounds its uint8 temporary).
CONVERT_CHUNK = 4096


def cache_dir() -> Path:
    """Where decoded images are cached: ``images/`` in nbcnn's home folder
    (:func:`nbcnn.datasets.home_dir`: ``$NBCNN_HOME``, else ``~/.cache/nbcnn`` on Linux). Safe to
    delete: a deleted cache is decoded again."""
    from nbcnn.datasets import home_dir

    return home_dir() / "images"


def should_stream(stream: bool | str, float32_bytes: int) -> bool:
    """``stream`` True/False, or "auto": True when ``float32_bytes`` exceed
    :data:`IN_MEMORY_FRACTION` of the available memory."""
    if stream != "auto":
        return bool(stream)
    from nbcnn.resources import available_memory

    available = available_memory()
    return available is not None and float32_bytes > IN_MEMORY_FRACTION * available


def to_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1], as :func:`nbcnn.data._scale_images` converts them."""
    out = pixels.astype(np.float32)
    out /= 255.0
    return out


class _CacheFile:
    """An open cache file: rows of ``row_bytes`` bytes from ``offset``, read under a lock."""

    def __init__(self, path: str, offset: int, rows: int, shape: tuple[int, ...]):
        self.path = path
        self.offset = offset
        self.rows = rows
        self.shape = shape
        self.row_bytes = math.prod(shape)
        self._lock = threading.Lock()
        self._handle = None

    def read(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (len(rows), *shape): runs of consecutive rows are read with one call each
        (a batch in order is one read)."""
        out = np.empty((len(rows), self.row_bytes), np.uint8)
        if not len(rows):
            return out.reshape(0, *self.shape)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        starts = np.flatnonzero(np.diff(ordered, prepend=ordered[0] - 2) != 1)
        ends = np.append(starts[1:], len(rows))
        gathered = np.empty_like(out)
        with self._lock:
            if self._handle is None:
                self._handle = open(self.path, "rb", buffering=0)  # noqa: SIM115 - kept open
            for start, end in zip(starts, ends):
                self._handle.seek(self.offset + int(ordered[start]) * self.row_bytes)
                view = memoryview(gathered[start:end]).cast("B")
                filled = 0
                while filled < len(view):
                    got = self._handle.readinto(view[filled:])
                    if not got:
                        raise DataError(
                            "the decoded-image cache file ends early (deleted or truncated "
                            "while in use?); run again to rebuild it",
                            file=self.path,
                        )
                    filled += got
        out[order] = gathered
        return out.reshape(len(rows), *self.shape)

    def __del__(self):
        if self._handle is not None:
            self._handle.close()


class ImageArray:
    """Rows of a decoded-image cache file seen as ``float32 (N, *shape)`` in [0, 1].

    ``x[i]``, ``x[a:b]``, ``x[index_array]`` read those rows from the file and return float32
    arrays; ``np.asarray(x)`` reads them all (only for sets that fit in memory); ``x.take(rows)``
    is a subset, still on disk. ``len``, ``shape``, ``ndim`` and ``dtype`` are an array's.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, cache: _CacheFile, rows: np.ndarray):
        self._cache = cache
        self.rows = np.asarray(rows, np.int64)

    @property
    def file(self) -> str:
        """The cache file the rows are read from."""
        return self._cache.path

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self._cache.shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self._cache.shape)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, rows: Any) -> ImageArray:
        """The subset ``rows`` (indices into this array), without reading it."""
        return ImageArray(self._cache, self.rows[np.asarray(rows, np.int64)])

    def __getitem__(self, key: Any) -> np.ndarray:
        selected = self.rows[key]
        if np.ndim(selected) == 0:
            return to_float(self._cache.read(np.array([selected])))[0]
        return to_float(self._cache.read(np.asarray(selected, np.int64)))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        x = self[:]
        return x if dtype is None else x.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"ImageArray(shape={self.shape}, file={self.file!r})"


def in_memory(parts: list[ImageArray]) -> list[np.ndarray]:
    """Each ImageArray read into a float32 array, :data:`CONVERT_CHUNK` images at a time (the
    caller checked the room, with :data:`FLOAT32_ROOM`, before decoding)."""
    out = []
    for part in parts:
        x = np.empty(part.shape, np.float32)
        for start in range(0, len(part), CONVERT_CHUNK):
            x[start : start + CONVERT_CHUNK] = part[start : start + CONVERT_CHUNK]
        out.append(x)
    return out


# ---------------------------------------------------------------------------- the cache


def _cache_names(images: ImageList, options: dict[str, Any]) -> tuple[str, str]:
    """``(prefix, name)``: the prefix hashes where the list came from and the decoding
    options (one cache per folder and options), the name adds the hash of every file's
    path, size and modification time."""
    stamps = []
    for i, path in enumerate(images.paths):
        try:
            st = os.stat(path)
        except OSError as err:
            raise DataError(
                f"cannot read it ({err.strerror}){images.describe(i)}", file=path
            ) from None
        stamps.append((path, st.st_size, st.st_mtime_ns))
    where = {"version": CACHE_VERSION, "origin": os.path.abspath(images.origin), **options}
    prefix = hashlib.sha256(json.dumps(where, sort_keys=True).encode()).hexdigest()[:16]
    listing = json.dumps(stamps, ensure_ascii=False).encode("utf-8", "surrogateescape")
    return prefix, f"{prefix}-{hashlib.sha256(listing).hexdigest()[:32]}.npy"


def _open_cache(path: Path, rows: int, shape: tuple[int, ...]) -> _CacheFile | None:
    """The cache file at ``path`` when it is complete and of the expected shape, else None."""
    try:
        with open(path, "rb") as handle:
            header = read_npy_header(handle)
            offset = handle.tell()
        size = path.stat().st_size
    except (OSError, ValueError):
        return None
    expected = (rows, *shape)
    if header.shape != expected or header.dtype != np.uint8 or header.fortran_order:
        return None
    if size != offset + math.prod(expected):
        return None
    return _CacheFile(str(path), offset, rows, shape)


def decoded_images(
    images: ImageList,
    *,
    shape: tuple[int, ...],
    color_mode: str,
    interpolation: str,
    progress: Callable[[int, int], None] | None = None,
) -> ImageArray:
    """Every image of ``images`` decoded (:func:`nbcnn.imagefolder.decode_image`) as an
    ImageArray over the cache file, decoded now unless a cache of the same files and options
    exists. ``progress(done, total)`` is called as images are decoded (not when cached)."""
    options = {"shape": list(shape), "color_mode": color_mode, "interpolation": interpolation}
    prefix, name = _cache_names(images, options)
    folder = cache_dir()
    n = len(images.paths)
    cached = _open_cache(folder / name, n, shape)
    if cached is None:
        _decode_into(folder, name, images, shape, color_mode, interpolation, progress)
        for old in folder.glob(f"{prefix}-*.npy"):  # the same images' earlier versions
            if old.name != name:
                old.unlink(missing_ok=True)
        cached = _open_cache(folder / name, n, shape)
        if cached is None:
            raise DataError(
                "the decoded-image cache just written cannot be read back", file=str(folder / name)
            )
    return ImageArray(cached, np.arange(n))


def _decode_into(
    folder: Path,
    name: str,
    images: ImageList,
    shape: tuple[int, ...],
    color_mode: str,
    interpolation: str,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Decode ``images`` into ``folder/name``: a temporary file renamed when complete."""
    from nbcnn.imagefolder import decode_image
    from nbcnn.resources import human_bytes

    n = len(images.paths)
    nbytes = n * math.prod(shape)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as err:
        raise DataError(
            f"cannot create the decoded-image cache ({err.strerror}); set NBCNN_HOME to a "
            "writable folder",
            file=str(folder),
        ) from None
    if nbytes > free:
        raise DataError(
            f"the decoded images need {human_bytes(nbytes)} but only {human_bytes(free)} is "
            "free there; set NBCNN_HOME to a folder on a larger disk",
            file=str(folder),
        )

    def decode_chunk(start: int) -> np.ndarray:
        chunk = np.empty((min(DECODE_CHUNK, n - start), *shape), np.uint8)
        for j in range(len(chunk)):
            try:
                chunk[j] = decode_image(images.paths[start + j], shape, color_mode, interpolation)
            except DataError as err:
                raise DataError(err.message + images.describe(start + j), file=err.file) from None
        return chunk

    handle, temporary = tempfile.mkstemp(dir=folder, prefix=name + ".", suffix=".tmp")
    workers = min(32, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="nbcnn-decode")
    try:
        with os.fdopen(handle, "wb") as out, image_bomb_warnings_as_errors():
            header = {"descr": "|u1", "fortran_order": False, "shape": (n, *shape)}
            np.lib.format.write_array_header_1_0(out, header)
            # A window of chunks in flight, written in order: memory stays a few chunks.
            starts = iter(range(0, n, DECODE_CHUNK))
            pending = deque(
                pool.submit(decode_chunk, s) for _, s in zip(range(2 * workers), starts)
            )
            done = 0
            while pending:
                chunk = pending.popleft().result()
                out.write(chunk.tobytes())
                done += len(chunk)
                if progress is not None:
                    progress(done, n)
                start = next(starts, None)
                if start is not None:
                    pending.append(pool.submit(decode_chunk, start))
        os.replace(temporary, folder / name)
    except BaseException:  # Ctrl-C too: no partial cache is left behind
        Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
