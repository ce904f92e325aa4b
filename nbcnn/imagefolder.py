"""Your own images: a folder with one subfolder per class, or a CSV file of paths and labels.

Discovery follows Keras's ``image_dataset_from_directory`` (keras/src/utils/dataset_utils.py,
``index_directory`` and ``iter_valid_files``): the classes are the subfolders in sorted order
(names starting with "." skipped), each class folder is walked recursively (symlinked folders
not followed) in sorted order, and only files whose lower-cased name ends in one of
:data:`ALLOWLIST_FORMATS` are images; other files are ignored. Unlike Keras, a class folder
without images is refused (its class could never be learned). The validation split is Keras's
too (:func:`validation_split_rows`), so the same folder and seed give the same split.

Images are decoded with Pillow into ``uint8 (H, W, C)`` (:func:`decode_image`); every defect
is a one-line :class:`~nbcnn.errors.DataError` naming the file, never a silently skipped image.
:func:`load_image_dataset` builds the :class:`~nbcnn.data.Dataset`, decoding through the cache
of :mod:`nbcnn.streaming`.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from nbcnn.errors import ConfigError, DataError
from nbcnn.io import check_room, image_bomb_error, refuse_special_file
from nbcnn.layers.args import show, show_some
from nbcnn.spec import COLOR_MODES, INTERPOLATIONS, resolve_test_split

#: File name endings read as images: Keras's ALLOWLIST_FORMATS (image_dataset_utils.py).
ALLOWLIST_FORMATS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
#: Largest CSV file read (a million rows of 200-byte lines); checked before reading.
MAX_CSV_BYTES = 256 << 20
#: A CSV label made of digits only is a class index; anything else is a class name.
_INDEX_LABEL = re.compile(r"[0-9]+")


@dataclass
class ImageList:
    """Image files and their labels, in Keras's order (class by class, sorted names).

    paths : absolute file paths; names : the same relative to ``root`` (the folder, or the
    CSV file's folder), which choose the test split; labels : (N,) int64; class_names : the
    class of each label index (None for a CSV of integer labels); origin : the folder or CSV
    file, for messages; lines : the CSV line of each file (None for a folder).
    """

    paths: list[str]
    names: list[str]
    labels: np.ndarray
    class_names: list[str] | None
    origin: str
    lines: list[int] | None = None

    def describe(self, i: int) -> str:
        """Where file ``i`` was listed, for messages about it."""
        if self.lines is None:
            return ""
        return f" (line {self.lines[i]} of {self.origin})"

    def counts(self) -> str:
        """``cat 400, dog 400, fish 400`` (the first ten classes)."""
        counts = np.bincount(self.labels, minlength=len(self.class_names or ()))
        names = self.class_names or [str(c) for c in range(len(counts))]
        pairs = [f"{names[c]} {int(n):,}" for c, n in enumerate(counts) if n or self.class_names]
        return show_some(pairs, first=10, render=str)


# ---------------------------------------------------------------------------- discovery


def list_folder(folder: str) -> ImageList:
    """The images of ``folder``: one subfolder per class (see the module's docstring)."""
    if not os.path.isdir(folder):
        what = "not a folder" if os.path.exists(folder) else "folder not found"
        raise DataError(f"{what} (expected one subfolder of images per class)", file=folder)
    try:
        entries = sorted(os.listdir(folder))
    except OSError as err:
        raise DataError(f"cannot list it ({err.strerror})", file=folder) from None
    classes = [
        name
        for name in entries
        if not name.startswith(".") and os.path.isdir(os.path.join(folder, name))
    ]
    if not classes:
        raise DataError(
            "holds no class subfolders: put the images of each class in a subfolder named "
            "after it (cat/, dog/, ...)",
            file=folder,
        )
    paths, names, labels = [], [], []
    for index, name in enumerate(classes):
        found = _images_under(os.path.join(folder, name))
        if not found:
            raise DataError(
                f"class folder {show(name)} holds no images ({', '.join(ALLOWLIST_FORMATS)}): "
                "add some or remove the folder",
                file=folder,
            )
        paths += found
        names += [os.path.relpath(p, folder) for p in found]
        labels += [index] * len(found)
    return ImageList(paths, names, np.array(labels, np.int64), classes, folder)


def _images_under(class_folder: str) -> list[str]:
    """Image files under ``class_folder`` in Keras's order: folders sorted by path, files
    sorted by name; symlinked folders are not followed (Keras's follow_links=False)."""
    found = []
    walk = sorted(os.walk(class_folder), key=lambda entry: entry[0])
    for root, _, files in walk:
        found += [
            os.path.join(root, f) for f in sorted(files) if f.lower().endswith(ALLOWLIST_FORMATS)
        ]
    return found


def read_csv(path: str) -> ImageList:
    """The images listed in the CSV file ``path``: a header naming the columns ``path`` and
    ``label`` (others ignored), then one image per line. Paths are relative to the CSV
    file's folder (or absolute); labels are class names (classes sorted, as Keras sorts
    given labels) or, when every label is digits only, class indices."""
    refuse_special_file(path, "a CSV file")
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except OSError as err:
        raise DataError(f"cannot read it ({err.strerror})", file=path) from None
    if size > MAX_CSV_BYTES:
        raise DataError(
            f"is {size:,} bytes; a CSV file may have at most {MAX_CSV_BYTES:,}", file=path
        )
    base = os.path.dirname(os.path.abspath(path))
    files, labels, lines = [], [], []
    try:
        # utf-8-sig: spreadsheet programs start their CSV files with a byte-order mark.
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = [column.strip().lower() for column in next(reader, [])]
            missing = [c for c in ("path", "label") if c not in header]
            if missing:
                raise DataError(
                    f"line 1: the header has columns {show(header)}; expected a header line "
                    "'path,label' (other columns are ignored)",
                    file=path,
                )
            at_path, at_label = header.index("path"), header.index("label")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank lines, as spreadsheets leave them
                line = reader.line_num
                if len(row) <= max(at_path, at_label):
                    raise DataError(
                        f"line {line}: {len(row)} column(s), the header has {len(header)}",
                        file=path,
                    )
                name, label = row[at_path].strip(), row[at_label].strip()
                if not name or not label:
                    empty = "path" if not name else "label"
                    raise DataError(f"line {line}: the {empty} is empty", file=path)
                files.append(name)
                labels.append(label)
                lines.append(line)
    except UnicodeDecodeError as err:
        raise DataError(
            f"is not UTF-8 text ({err.reason} at byte {err.start})", file=path
        ) from None
    except csv.Error as err:
        raise DataError(f"line {reader.line_num}: not valid CSV ({err})", file=path) from None
    except OSError as err:
        raise DataError(f"cannot read it ({err.strerror})", file=path) from None
    if not files:
        raise DataError("lists no images (only a header)", file=path)
    if all(_INDEX_LABEL.fullmatch(label) for label in labels):
        class_names = None
        values = np.array([min(int(label), 2**62) for label in labels], np.int64)
    else:
        class_names = sorted(set(labels))
        index = {name: i for i, name in enumerate(class_names)}
        values = np.array([index[label] for label in labels], np.int64)
    paths = [os.path.normpath(os.path.join(base, name)) for name in files]
    for i, full in enumerate(paths):
        if not os.path.isfile(full):
            what = "not a regular file" if os.path.exists(full) else "file not found"
            raise DataError(f"line {lines[i]}: {show(files[i])}: {what}", file=path)
    names = [os.path.relpath(p, base) for p in paths]
    return ImageList(paths, names, values, class_names, path, lines)


def list_images(dataset: str, path: str) -> ImageList:
    """``dataset`` "folder" or "csv" at ``path``."""
    return list_folder(path) if dataset == "folder" else read_csv(path)


def kind_of_path(path: str, default: str) -> str:
    """``folder`` for a folder, ``csv`` for a ``.csv`` file, else ``default`` (whose loader
    then names what is wrong with the path): a test set, or ``--data``, may be either."""
    if os.path.isdir(path):
        return "folder"
    return "csv" if path.lower().endswith(".csv") else default


def holds_class_folders(folder: str) -> bool:
    """True when ``folder`` has a subfolder (not hidden) and no MNIST IDX file (``*-ubyte``,
    ``*-ubyte.gz``): the layout of ``dataset: folder``, not of ``dataset: idx``."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False  # the loader names the folder and the reason
    if any("-ubyte" in entry.name for entry in entries):
        return False
    return any(entry.is_dir() and not entry.name.startswith(".") for entry in entries)


# ---------------------------------------------------------------------------- decoding


def image_shape(
    input_shape: tuple[int, ...],
    image_size: Sequence[int] | None,
    color_mode: str | None,
    where: str,
) -> tuple[tuple[int, ...], str]:
    """The per-sample shape images are decoded to and the resolved ``color_mode``.

    input_shape : (H, W, C) with C = 1, 3 or 4, or (H, W) for grayscale. image_size : (H, W),
    must equal input_shape's (the model takes only that size); None = input_shape's (Keras's
    default is (256, 256)). color_mode : grayscale, rgb or rgba; None = from C.
    """
    if len(input_shape) not in (2, 3) or (
        len(input_shape) == 3 and input_shape[2] not in (1, 3, 4)
    ):
        raise ConfigError(
            f"images need input_shape [H, W, C] with C = 1 (grayscale), 3 (rgb) or 4 (rgba), "
            f"got {list(input_shape)}",
            where="input_shape",
        )
    channels = input_shape[2] if len(input_shape) == 3 else 1
    by_channels = {c: mode for mode, (_, c) in COLOR_MODES.items()}
    if color_mode is None:
        color_mode = by_channels[channels]
    elif COLOR_MODES[color_mode][1] != channels:
        raise ConfigError(
            f"{color_mode!r} gives {COLOR_MODES[color_mode][1]} channel(s) but input_shape "
            f"{list(input_shape)} has {channels}: use color_mode {by_channels[channels]!r} or "
            "change input_shape",
            where=f"{where}.color_mode",
        )
    if image_size is not None and tuple(image_size) != tuple(input_shape[:2]):
        raise ConfigError(
            f"{list(image_size)} differs from input_shape {list(input_shape)}: images are "
            "resized to the input_shape the model takes (leave image_size out, or make them "
            "equal)",
            where=f"{where}.image_size",
        )
    return tuple(input_shape), color_mode


def decode_image(
    path: str, shape: tuple[int, ...], color_mode: str, interpolation: str = "bilinear"
) -> np.ndarray:
    """The image file ``path`` as ``uint8`` of ``shape`` ((H, W, C) or (H, W)).

    Converted to the Pillow mode of ``color_mode`` (the first frame of a GIF), resized to
    W x H with the filter of ``interpolation`` when its size differs. Unreadable, truncated or
    oversized files (Pillow's decompression-bomb limit: enter
    :func:`nbcnn.io.image_bomb_warnings_as_errors` around the calls) are a DataError naming
    ``path``.
    """
    from PIL import Image, UnidentifiedImageError

    refuse_special_file(path, "an image")
    height, width = shape[:2]
    try:
        with Image.open(path) as image:
            image = image.convert(COLOR_MODES[color_mode][0])
            if image.size != (width, height):
                image = image.resize(
                    (width, height), Image.Resampling[INTERPOLATIONS[interpolation]]
                )
            pixels = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except UnidentifiedImageError:
        raise DataError("not a readable image (Pillow cannot identify it)", file=path) from None
    except Exception as err:
        refused = image_bomb_error(err, path)
        if refused is not None:
            raise refused from None
        if isinstance(err, (OSError, ValueError, SyntaxError, EOFError)):
            # Pillow's decoders raise these for truncated and corrupt data (SyntaxError from
            # some header parsers).
            raise DataError(f"cannot read image ({err})", file=path) from None
        raise
    return pixels.reshape(shape)


# ---------------------------------------------------------------------------- splits


def in_test_split(names: Sequence[str], labels: np.ndarray, test_split: float) -> np.ndarray:
    """(N,) bool: in each class, the ``test_split`` fraction (rounded) of its files whose
    names hash lowest (SHA-1 of the name relative to the dataset's folder).

    The choice depends on the file names only, not on the seed or the listing order: every
    run and ``nbcnn evaluate`` test on the same files, and adding images moves only the few
    at the boundary (TensorFlow's image-retraining example chose its test set by a hash of
    the file name for this reason: ``create_image_lists`` in
    tensorflow/examples/image_retraining/retrain.py). Per class, so that the test set keeps
    the classes' proportions.
    """
    mask = np.zeros(len(names), bool)
    if test_split <= 0:
        return mask
    keys = np.array(
        [hashlib.sha1(n.encode("utf-8", "surrogateescape")).digest()[:8] for n in names],
        dtype="S8",
    )
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = math.floor(test_split * len(members) + 0.5)
        mask[members[np.argsort(keys[members], kind="stable")[:count]]] = True
    return mask


def validation_split_rows(
    n: int, validation_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` indices into ``n`` files in Keras's order: shuffled with
    ``np.random.RandomState(seed)``, the last ``int(validation_split * n)`` for validation
    (keras/src/utils/dataset_utils.py: ``index_directory`` shuffles the file paths with that
    generator, ``get_training_or_validation_split`` takes the last fraction)."""
    order = np.random.RandomState(seed).permutation(n)
    n_val = int(validation_split * n)
    return order[: n - n_val], order[n - n_val :]


# ---------------------------------------------------------------------------- dataset


def load_image_dataset(
    dataset: str,
    path: str,
    *,
    input_shape: tuple[int, ...],
    validation_split: float,
    seed: int,
    num_classes: int | None,
    test_path: str | None,
    test_split: float | None,
    image_size: Sequence[int] | None,
    color_mode: str | None,
    interpolation: str,
    stream: bool | str,
    where: str,
    progress: Callable[[int, int], None] | None,
):
    """The :class:`~nbcnn.data.Dataset` of a ``folder`` or ``csv`` dataset.

    The test set is ``test_path`` (a folder or CSV file with the same classes) or, without
    it, the files :func:`in_test_split` picks (``test_split``, default 0.2); the validation
    split comes from the rest (:func:`validation_split_rows`). Images are decoded once into
    the cache of :mod:`nbcnn.streaming`; with ``stream`` True (or "auto" when the float32
    images would take over :data:`~nbcnn.streaming.IN_MEMORY_FRACTION` of the available
    memory) x_* are :class:`~nbcnn.streaming.ImageArray` that read a batch at a time, else
    float32 arrays in memory.
    """
    from nbcnn import streaming
    from nbcnn.data import Dataset

    shape, color_mode = image_shape(input_shape, image_size, color_mode, where)
    test_split = resolve_test_split(test_path, test_split, where)
    images = list_images(dataset, path)
    classes = _check_classes(images, num_classes)
    if test_path:
        tests = list_images(kind_of_path(test_path, dataset), test_path)
        test_labels = _test_labels(tests, images)
        if tests.class_names is None:
            _check_classes(tests, classes)
        test_mask = np.zeros(len(images.paths), bool)
    else:
        tests = None
        test_mask = in_test_split(images.names, images.labels, test_split)
        test_labels = images.labels[test_mask]
    rest = np.flatnonzero(~test_mask)
    train_at, val_at = validation_split_rows(len(rest), validation_split, seed)
    train_rows, val_rows = rest[train_at], rest[val_at]
    if len(train_rows) == 0:
        raise ConfigError(
            f"leaves no training images out of {len(images.paths)} (validation_split "
            f"{validation_split}, test_split {test_split})",
            where=f"{where}.validation_split",
        )
    n_test = len(tests.paths) if tests else int(test_mask.sum())
    test_missing = _empty_splits(
        images.labels, len(rest), n_test, len(val_rows), validation_split, test_split, where
    )
    values = (len(images.paths) + (n_test if tests else 0)) * math.prod(shape)
    streamed = streaming.should_stream(stream, values * 4)
    if not streamed:  # before the decode, not after it
        check_room(values * 4, streaming.FLOAT32_ROOM, images.origin)
    decode = dict(
        shape=shape, color_mode=color_mode, interpolation=interpolation, progress=progress
    )
    store = streaming.decoded_images(images, **decode)
    test_store = streaming.decoded_images(tests, **decode) if tests else store
    test_rows = np.arange(n_test) if tests else np.flatnonzero(test_mask)
    parts = [store.take(train_rows), store.take(val_rows), test_store.take(test_rows)]
    if not streamed:
        parts = streaming.in_memory(parts)
    test_from = tests.origin if tests else f"test_split {test_split} of each class"
    source = (
        f"{dataset} {images.origin}: found {len(images.paths):,} files in {classes} classes: "
        f"{images.counts()}; {len(train_rows):,} train / {len(val_rows):,} validation (seed "
        f"{seed}) / {n_test:,} test ({test_from})"
    )
    if streamed:
        source += f"; streamed from {store.file}"
    return Dataset(
        x_train=parts[0],
        y_train=images.labels[train_rows],
        x_val=parts[1],
        y_val=images.labels[val_rows],
        x_test=parts[2],
        y_test=test_labels,
        num_classes=classes,
        source=source,
        class_names=images.class_names,
        test_missing=test_missing,
    )


def _empty_splits(
    labels: np.ndarray,
    n_rest: int,
    n_test: int,
    n_val: int,
    validation_split: float,
    test_split: float,
    where: str,
) -> str | None:
    """Warn on stderr, naming the key, when ``test_split`` or ``validation_split`` asks for
    images but its rounding gives none (a tiny folder: 2 images a class at test_split 0.2);
    returns why the test set is empty, or None when it is not."""
    import sys

    def warn(message: str) -> None:
        print(f"nbcnn: warning: {' '.join(message.split())}", file=sys.stderr)

    test_missing = None
    if n_test == 0:
        test_missing = "test_split 0 and no test_path"
        if test_split > 0:
            # A class gets round(test_split * n) images (in_test_split): 1 from n >= 0.5 / split.
            largest = int(np.bincount(labels).max()) if len(labels) else 0
            need = math.ceil(0.5 / test_split - 1e-9)
            test_missing = (
                f"test_split {test_split:g} rounds to 0 images in every class: too few images "
                "per class"
            )
            warn(
                f"{where}.test_split {test_split:g} gives no test images: too few images per "
                f"class (the largest class has {largest}; one test image takes a class of "
                f"{need} or more at this split); add images, raise test_split, or give test_path"
            )
    if n_val == 0 and validation_split > 0:
        need = math.ceil(1 / validation_split - 1e-9)  # int(split * n) >= 1 (Keras's rule)
        warn(
            f"{where}.validation_split {validation_split:g} gives no validation images: too "
            f"few images ({n_rest} left after the test split; one validation image takes "
            f"{need} or more at this split); training goes on without validation"
        )
    return test_missing


def _check_classes(images: ImageList, num_classes: int | None) -> int:
    """The number of classes: the class names', which the model's output must match, or
    for integer labels ``num_classes`` (max label + 1 when None)."""
    if images.class_names is not None:
        found = len(images.class_names)
        if num_classes is not None and found != num_classes:
            raise DataError(
                f"holds {found} classes ({show_some(images.class_names, 5)}) but "
                f"the model outputs {num_classes}: give the last Dense units: {found}",
                file=images.origin,
            )
        return found
    top = int(images.labels.max())
    if num_classes is not None and top >= num_classes:
        i = int(np.argmax(images.labels))
        raise DataError(
            f"label {top}{images.describe(i)} is not below the model's {num_classes} outputs",
            file=images.origin,
        )
    return num_classes or max(top + 1, 2)


def _test_labels(tests: ImageList, images: ImageList) -> np.ndarray:
    """The test set's labels as indices of the training classes (a test set may lack some)."""
    if images.class_names is None or tests.class_names is None:
        if (images.class_names is None) != (tests.class_names is None):
            raise DataError(
                "labels are class names in one of the training and test CSV files and "
                "class indices in the other: use the same kind in both",
                file=tests.origin,
            )
        return tests.labels
    index = {name: i for i, name in enumerate(images.class_names)}
    unknown = [name for name in tests.class_names if name not in index]
    if unknown:
        raise DataError(
            f"has class {show(unknown[0])}, which {images.origin} does not have (its "
            f"classes: {show_some(images.class_names, 5)})",
            file=tests.origin,
        )
    remap = np.array([index[name] for name in tests.class_names], np.int64)
    return remap[tests.labels]
