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
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, NamedTuple

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


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays as the bytes of an uncompressed ``.npz``."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Save named arrays as an uncompressed ``.npz`` atomically (no object arrays)."""
    write_bytes_atomic(path, npz_bytes(arrays))


#: Refuse an ``.npz`` whose arrays hold more than this in all (as their .npy headers declare),
#: or whose file is larger: a zip bomb guard that holds whatever the memory.
MAX_NPZ_BYTES = 4 << 30

#: Most members an ``.npz`` may have unless the caller allows more (the weights of a large
#: model): a 45 MB file of 200,000 one-value arrays took 16 s to read header by header.
MAX_NPZ_MEMBERS = 10_000

#: Bytes of zip listing (its central directory) allowed per member: ZipFile parses the whole
#: listing, whatever count the end record states (200,000 entries took 1 s). nbcnn's own
#: entries are far shorter ('conv2d_1/kernel.npy' takes 65 bytes).
LISTING_BYTES_PER_MEMBER = 1024

#: The compressions np.savez (stored) and np.savez_compressed (deflated) write. zipfile reads
#: deflate a bounded step at a time, but hands bzip2 and LZMA data to their decompressors with
#: no output limit: the first read of a 1 KB bzip2 member expanded it to 1 GiB.
NPZ_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)

#: Longest .npy header read: NumPy's own cap (np.lib.format's max_header_size), checked here
#: on the length field, because NumPy reads a 2.0 header (up to 4 GiB) in full before it checks.
MAX_NPY_HEADER_BYTES = 10_000

#: Array data is read this many bytes at a time, into the array itself (never held twice).
_READ_CHUNK = 16 << 20

#: Errors that a corrupt, truncated or hostile zip or .npy file raises while being read.
READ_ERRORS = (
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


def refuse_special_file(path: str | os.PathLike, what: str = "a file") -> None:
    """DataError naming ``path`` when it exists but is not a regular file, checked before it
    is opened: opening a FIFO waits for a writer (forever), and a device never ends. Symlinks
    are followed; a path that cannot be stat'ed is left to the caller's ``open``, which says
    why in its own words."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return
    if stat.S_ISDIR(mode):
        raise DataError(f"is a folder, not {what}", file=str(path))
    if not stat.S_ISREG(mode):
        raise DataError("not a regular file (a pipe, a device...); refused", file=str(path))


@contextmanager
def image_bomb_warnings_as_errors() -> Iterator[None]:
    """Turn Pillow's ``DecompressionBombWarning`` into an exception while the block runs.

    Pillow refuses an image of more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels
    (89,478,485: about 9459 x 9459) when it opens it, but only warns, two lines on stderr, up
    to twice that. The warning filter is process-wide (``warnings`` is not thread-safe): enter
    this once, in the main thread, around a pool of threads that open images."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def image_bomb_error(err: Exception, path: str | os.PathLike) -> DataError | None:
    """The DataError naming ``path`` for Pillow's decompression-bomb warning or error, None for
    any other exception."""
    from PIL import Image

    if isinstance(err, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
        return DataError(f"image too large to read ({err})", file=str(path))
    return None


@contextmanager
def refuse_image_bombs(path: str | os.PathLike) -> Iterator[None]:
    """Pillow's decompression-bomb guard (:func:`image_bomb_warnings_as_errors`) as one
    DataError naming ``path``."""
    with image_bomb_warnings_as_errors():
        try:
            yield
        except Exception as err:
            refused = image_bomb_error(err, path)
            if refused is None:
                raise
            raise refused from None


class NpyHeader(NamedTuple):
    """What a .npy header declares: the array's shape, dtype and memory order."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def values(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.values * self.dtype.itemsize


def read_npy_header(stream) -> NpyHeader:
    """The header of a .npy stream, leaving it at the array's data; never reads more than
    MAX_NPY_HEADER_BYTES of header.

    ValueError when the stream is not a .npy array of format version 1.0 or 2.0 (np.savez
    writes those).
    """
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unsupported .npy format version {version}")
    length_field = stream.read(2 if version == (1, 0) else 4)
    length = int.from_bytes(length_field, "little")
    if length > MAX_NPY_HEADER_BYTES:
        raise ValueError(f"its header declares {length:,} bytes; at most {MAX_NPY_HEADER_BYTES:,}")
    # NumPy parses and checks the header (a Python literal) from the bytes read within the cap.
    within = io.BytesIO(length_field + stream.read(length))
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(within)
    else:
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(within)
    return NpyHeader(shape, dtype, fortran_order)


def read_npy_data(stream, header: NpyHeader) -> np.ndarray:
    """The array ``header`` declares, read from ``stream`` (left at the array's data by
    :func:`read_npy_header`): its declared bytes, then one more to tell a stream that holds
    more (a bomb behind a small header) from a complete one, and never further.

    ValueError when the stream ends early or goes on, or the array would hold objects.
    """
    if header.dtype.hasobject:
        raise ValueError("an object array (pickle); refused")
    array = np.empty(header.values, header.dtype)
    data = memoryview(array.view(np.uint8)) if array.nbytes else memoryview(b"")
    filled = 0
    while filled < len(data):
        got = stream.readinto(data[filled : filled + _READ_CHUNK])
        if not got:
            raise ValueError(
                f"truncated: its header declares {len(data):,} bytes of data, found {filled:,}"
            )
        filled += got
    if stream.read(1):
        raise ValueError(f"longer than the {len(data):,} bytes of data its header declares")
    if header.fortran_order:
        return array.reshape(header.shape[::-1]).transpose()
    return array.reshape(header.shape)


def open_zip(handle: BinaryIO, file: str, max_members: int = MAX_NPZ_MEMBERS) -> zipfile.ZipFile:
    """The zip archive of an open ``.npz`` (or ``.keras``) file, refused (DataError naming
    ``file``) when it has more than ``max_members`` members or a listing longer than
    LISTING_BYTES_PER_MEMBER each (both from its end record, before the listing is parsed,
    and the count again after), or a member compressed otherwise than NPZ_COMPRESSIONS
    (before any member is opened)."""
    end = zipfile._EndRecData(handle)  # what ZipFile reads first (a private helper of zipfile)
    if end is not None:
        _check_members(end[zipfile._ECD_ENTRIES_TOTAL], max_members, file)
        listing, most = end[zipfile._ECD_SIZE], max_members * LISTING_BYTES_PER_MEMBER
        if listing > most:
            raise DataError(
                f"its zip listing takes {listing:,} bytes; at most {most:,}; refused", file=file
            )
    archive = zipfile.ZipFile(handle)
    try:
        members = archive.infolist()
        _check_members(len(members), max_members, file)  # the end record may understate it
        for info in members:
            if info.compress_type not in NPZ_COMPRESSIONS:
                method = zipfile.compressor_names.get(
                    info.compress_type, f"method {info.compress_type}"
                )
                raise DataError(
                    f"member {show(info.filename)} is {method}-compressed; only stored or "
                    "deflated members (what np.savez, np.savez_compressed and Keras write) are "
                    "read; refused",
                    file=file,
                )
    except BaseException:
        archive.close()
        raise
    return archive


def _check_members(count: int, max_members: int, file: str) -> None:
    if count > max_members:
        raise DataError(
            f"holds {count:,} members; at most {max_members:,} are read; refused", file=file
        )


def read_npz_member(archive: zipfile.ZipFile, name: str, header: NpyHeader, file: str):
    """The array of member ``name``, read by ``header`` (read before, and checked by the
    caller): no more than it declares, whatever the member holds; DataError naming the file
    and the member when the member ends early, goes on, or now declares something else."""
    with archive.open(name) as member:
        try:
            if read_npy_header(member) != header:
                raise ValueError("its header changed while it was being read")
            return read_npy_data(member, header)
        except ValueError as err:
            raise DataError(f"member {show(name)}: {error_summary(err)}", file=file) from None


def load_npz(
    path: str | os.PathLike, *, extra_per_value: int = 0, max_members: int = MAX_NPZ_MEMBERS
) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` without pickle; DataError naming the file otherwise.

    Only a regular file is read (a device or a pipe has no end to seek to), with at most
    ``max_members`` members, each stored or deflated (:func:`open_zip`). Before any
    array is read, the sizes their .npy headers declare are added up and checked against
    MAX_NPZ_BYTES and, with ``extra_per_value`` more bytes per value (what the caller will
    convert them to: 4 for a float32 copy), against the memory available. Each array is then
    read by its header's count, so a member that decompresses to more (a zip bomb) is never
    expanded.
    """
    file = str(path)
    refuse_special_file(file, "an .npz file")
    try:
        with open(file, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_NPZ_BYTES:
                raise DataError(f"is {size:,} bytes; at most {MAX_NPZ_BYTES:,}; refused", file=file)
            with open_zip(handle, file, max_members) as archive:
                headers = {}
                for name in archive.namelist():
                    with archive.open(name) as member:
                        try:
                            headers[name] = read_npy_header(member)
                        except ValueError as err:
                            raise DataError(
                                f"member {show(name)} is not a .npy array ({error_summary(err)})",
                                file=file,
                            ) from None
                if any(header.dtype.hasobject for header in headers.values()):
                    raise DataError("contains object arrays (pickle); refused", file=file)
                values = sum(header.values for header in headers.values())
                total = sum(header.nbytes for header in headers.values())
                if total > MAX_NPZ_BYTES:
                    raise DataError(
                        f"its arrays declare {total:,} bytes; at most {MAX_NPZ_BYTES:,}; refused",
                        file=file,
                    )
                check_room(total + extra_per_value * values, "its arrays", file)
                return {
                    name.removesuffix(".npy"): read_npz_member(archive, name, header, file)
                    for name, header in headers.items()
                }
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError("no such file", file=file) from None
    except PermissionError as err:
        raise DataError(f"cannot read: {err.strerror}", file=file) from None
    except MemoryError:
        raise DataError("not enough memory to read its arrays", file=file) from None
    except READ_ERRORS as err:
        raise DataError(
            f"not a valid .npz (corrupt or truncated zip): {error_summary(err)}", file=file
        ) from None


def error_summary(err: Exception) -> str:
    """The start of ``str(err)`` on one line: NumPy quotes a bad .npy header in full (up to
    10,000 characters)."""
    text = " ".join(str(err).split())
    return text if len(text) <= 80 else text[:77] + "..."
