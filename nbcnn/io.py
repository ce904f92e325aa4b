"""Safe, atomic file I/O: every write goes to a temporary file in the same folder, is flushed
to disk, then renamed over the target, so a crash or a full disk never leaves a half-written
checkpoint in place of a good one. Reads never unpickle."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from nbcnn.errors import DataError, TrainingError


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


#: Refuse npz members that would decompress to more than this (a zip bomb guard).
MAX_NPZ_BYTES = 4 << 30


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` without pickle; DataError naming the file otherwise."""
    file = str(path)
    try:
        with zipfile.ZipFile(file) as archive:
            total = sum(info.file_size for info in archive.infolist())
        if total > MAX_NPZ_BYTES:
            raise DataError(f"holds {total:,} bytes uncompressed; refused", file=file)
        with np.load(file, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError("no such file", file=file) from None
    except IsADirectoryError:
        raise DataError("is a folder, not an .npz file", file=file) from None
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise DataError("contains object arrays (pickle); refused", file=file) from None
        raise DataError(f"not a valid .npz: {err}", file=file) from None
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataError(f"not a valid .npz (corrupt or truncated zip): {err}", file=file) from None
