"""Safe, atomic file I/O: every write goes to a temporary file in the same folder, is flushed
to disk, then renamed over the target, so a crash or a full disk never leaves a half-written
checkpoint in place of a good one. Reads never unpickle, and are bounded: only regular files,
and the sizes that headers declare are checked against a cap and the memory available before
anything is read."""

from __future__ import annotations

import io
import math
import os
import stat
import tempfile
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from nbcnn.errors import DataError, TrainingError
from nbcnn.layers.args import show


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; written files get the usual mode.
_FILE_MODE = 0o666 & ~_umask()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically; TrainingError (the old file intact) on failure."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise TrainingError(f"{path}: cannot write: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.chmod(tmp, _FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise TrainingError(
            f"{path}: cannot write: {err.strerror or err} (the previous file is intact)"
        ) from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Save named arrays as an uncompressed ``.npz`` atomically (no object arrays)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


#: Refuse an ``.npz`` whose arrays hold more than this in all (as their .npy headers declare),
#: or whose file is larger: a zip bomb guard that holds whatever the memory.
MAX_NPZ_BYTES = 4 << 30

#: Errors that a corrupt, truncated or hostile zip or .npy header raises while being read.
_CORRUPT = (
    OSError,
    EOFError,
    ValueError,
    SyntaxError,  # the .npy header is a Python literal
    tokenize.TokenError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,  # a compression method zipfile lacks
    RuntimeError,  # an encrypted member
)


def check_room(nbytes: int, what: str, file: str) -> None:
    """Refuse, before allocating, ``nbytes`` for ``what`` that exceed the memory available now."""
    from nbcnn.resources import available_memory, human_bytes

    available = available_memory()
    if available is not None and nbytes > available:
        raise DataError(
            f"{what} need {human_bytes(nbytes)} but only {human_bytes(available)} of memory "
            "is available; refused before reading",
            file=file,
        )


def read_npy_header(stream) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the header of a .npy stream, leaving it at the array's data.

    ValueError when the stream is not a .npy array of format version 1.0 or 2.0 (np.savez
    writes those).
    """
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype


def load_npz(path: str | os.PathLike, *, extra_per_value: int = 0) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` without pickle; DataError naming the file otherwise.

    Only a regular file is read (a device or a pipe has no end to seek to). Before any array is
    read, the sizes their .npy headers declare are added up and checked against MAX_NPZ_BYTES
    and, with ``extra_per_value`` more bytes per value (what the caller will convert them to:
    4 for a float32 copy), against the memory available. Each array is then read by its
    header's count, so a member that decompresses to more (a zip bomb) is never expanded.
    """
    file = str(path)
    try:
        mode = os.stat(file).st_mode  # before opening: opening a pipe waits for a writer
        if stat.S_ISDIR(mode):
            raise DataError("is a folder, not an .npz file", file=file)
        if not stat.S_ISREG(mode):
            raise DataError("not a regular file; refused", file=file)
        with open(file, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_NPZ_BYTES:
                raise DataError(f"is {size:,} bytes; at most {MAX_NPZ_BYTES:,}; refused", file=file)
            with zipfile.ZipFile(handle) as archive:
                headers = {}
                for name in archive.namelist():
                    with archive.open(name) as member:
                        try:
                            headers[name] = read_npy_header(member)
                        except ValueError as err:
                            raise DataError(
                                f"member {show(name)} is not a .npy array ({_reason(err)})",
                                file=file,
                            ) from None
                if any(dtype.hasobject for _, dtype in headers.values()):
                    raise DataError("contains object arrays (pickle); refused", file=file)
                values = sum(math.prod(shape) for shape, _ in headers.values())
                total = sum(math.prod(shape) * dtype.itemsize for shape, dtype in headers.values())
                if total > MAX_NPZ_BYTES:
                    raise DataError(
                        f"its arrays declare {total:,} bytes; at most {MAX_NPZ_BYTES:,}; refused",
                        file=file,
                    )
                check_room(total + extra_per_value * values, "its arrays", file)
                arrays = {}
                for name in headers:
                    with archive.open(name) as member:
                        arrays[name.removesuffix(".npy")] = np.lib.format.read_array(
                            member, allow_pickle=False
                        )
                return arrays
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError("no such file", file=file) from None
    except PermissionError as err:
        raise DataError(f"cannot read: {err.strerror}", file=file) from None
    except MemoryError:
        raise DataError("not enough memory to read its arrays", file=file) from None
    except _CORRUPT as err:
        raise DataError(
            f"not a valid .npz (corrupt or truncated zip): {_reason(err)}", file=file
        ) from None


def _reason(err: Exception) -> str:
    # NumPy quotes a bad .npy header in full (up to 10,000 characters): keep the start.
    text = " ".join(str(err).split())
    return text if len(text) <= 80 else text[:77] + "..."
