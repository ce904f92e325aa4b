"""What ``nbcnn predict`` reads: image files, folders of images, lists of image paths.

Inputs are enumerated lazily and always in the same order, so that millions of paths never
sit in memory at once and a re-run cuts the same partitions:

- an image file (or any file that is not a folder, ``.txt`` or ``.npz``) is one path;
- a folder is walked depth-first, each folder's entries in name order (code point order),
  a subfolder's images where its name comes; files whose lower-cased name ends in one of
  :data:`~nbcnn.imagefolder.ALLOWLIST_FORMATS` are images, other files are skipped, and so
  are names starting with ``.`` (``.DS_Store``, ``.ipynb_checkpoints/``) and symlinked
  folders (not followed, as Keras's ``image_dataset_from_directory`` does not);
- a ``.txt`` file lists one image path per line, relative to the list's own folder (as a
  CSV dataset's paths are) or absolute; blank lines and lines starting with ``#`` are
  skipped. A listed path that is missing or not an image is not refused: it becomes a row
  with an error, like a corrupt image, so that one bad line does not stop a long job.
- ``.npz`` files of arrays are predicted in-process only (without ``--out``).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from nbcnn.errors import DataError
from nbcnn.imagefolder import ALLOWLIST_FORMATS
from nbcnn.io import refuse_special_file

#: The suffix that makes an input a list of image paths rather than an image.
LIST_SUFFIX = ".txt"
#: The suffix of array files (``nbcnn predict`` without ``--out`` reads them).
ARRAYS_SUFFIX = ".npz"


@dataclass(frozen=True)
class Input:
    """One INPUT of the command: ``path`` as given, ``kind`` image, folder, list or arrays."""

    path: str
    kind: str


def classify(paths: Iterable[str | os.PathLike]) -> list[Input]:
    """The kind of each input path. A folder or list that does not exist is a DataError naming
    it; a missing image file is left to the decoder (a row with an error, or the in-process
    predict's own message)."""
    found = []
    for raw in paths:
        path = os.fspath(raw)
        suffix = os.path.splitext(path)[1].lower()
        if os.path.isdir(path):
            found.append(Input(path, "folder"))
        elif suffix == LIST_SUFFIX:
            if not os.path.exists(path):
                raise DataError("list of image paths not found", file=path)
            refuse_special_file(path, "a list of image paths")
            found.append(Input(path, "list"))
        elif suffix == ARRAYS_SUFFIX:
            found.append(Input(path, "arrays"))
        else:
            found.append(Input(path, "image"))
    return found


def image_paths(inputs: Sequence[Input]) -> Iterator[str]:
    """Every image path of ``inputs``, lazily, in the order of the module's docstring."""
    for item in inputs:
        if item.kind == "folder":
            yield from _walk(item.path)
        elif item.kind == "list":
            yield from _listed(item.path)
        elif item.kind == "image":
            yield item.path
        else:
            raise DataError(
                "arrays (.npz) are predicted without --out; give image files, folders or "
                "lists of image paths (.txt) to write predictions to a file",
                file=item.path,
            )


def _walk(folder: str) -> Iterator[str]:
    try:
        # (name, is folder) pairs: DirEntry objects for a million-file folder would hold
        # several times the memory; d_type answers is_dir without a stat per file.
        with os.scandir(folder) as scan:
            entries = sorted(
                (e.name, e.is_dir(follow_symlinks=False))
                for e in scan
                if not e.name.startswith(".")
            )
    except OSError as err:
        raise DataError(f"cannot list it ({err.strerror})", file=folder) from None
    for name, is_folder in entries:
        path = os.path.join(folder, name)
        if is_folder:
            yield from _walk(path)
        elif name.lower().endswith(ALLOWLIST_FORMATS):
            yield path


def _listed(list_file: str) -> Iterator[str]:
    base = os.path.dirname(list_file)
    try:
        with open(list_file, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, 1):
                path = line.rstrip("\r\n")
                if not path.strip() or path.lstrip().startswith("#"):
                    continue
                if "\0" in path:
                    raise DataError(f"line {number}: holds a NUL character", file=list_file)
                yield os.path.join(base, path)
    except UnicodeDecodeError as err:
        raise DataError(
            f"is not UTF-8 text ({err.reason} at byte {err.start}); expected one image path "
            "per line",
            file=list_file,
        ) from None
    except OSError as err:
        raise DataError(f"cannot read it ({err.strerror})", file=list_file) from None


def partitions(paths: Iterable[str], size: int) -> Iterator[tuple[int, list[str]]]:
    """``(index, paths)`` of consecutive runs of ``size`` paths (the last may be shorter)."""
    paths = iter(paths)
    for index in itertools.count():
        chunk = list(itertools.islice(paths, size))
        if not chunk:
            return
        yield index, chunk


def paths_digest(paths: Sequence[str]) -> str:
    """A short digest of a partition's paths: a resumed job checks that each finished
    partition still lists the same files (a folder that gained files shifts them all)."""
    joined = "\n".join(paths).encode("utf-8", "surrogateescape")
    return hashlib.sha1(joined).hexdigest()[:16]


def expand(inputs: Sequence[Input], limit: int) -> list[str]:
    """The paths of ``inputs`` for the in-process predict: folders and lists expanded, images
    and .npz files as given. More than ``limit`` images from folders and lists is a DataError
    naming the input that went past it and pointing to ``--out``."""
    out: list[str] = []
    counted = 0
    for item in inputs:
        if item.kind in ("image", "arrays"):
            out.append(item.path)
            continue
        found = list(itertools.islice(image_paths([item]), limit - counted + 1))
        counted += len(found)
        if counted > limit:
            raise DataError(
                f"holds more than {limit:,} images (with the other inputs): write their "
                "predictions to a file with --out preds.csv (or preds.parquet)",
                file=item.path,
            )
        if not found:
            raise DataError(
                "holds no images (" + ", ".join(ALLOWLIST_FORMATS) + ")", file=item.path
            )
        out += found
    return out
