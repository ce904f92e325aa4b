"""Datasets for training and images for prediction.

``load_dataset`` returns a ``Dataset`` of float32 images scaled to [0, 1] with int64 labels,
from one of these sources:

- ``digits``: scikit-learn's bundled 8x8 digits (no download), a fixed 80/20 train/test split.
- ``npz``: Keras's ``mnist.npz`` layout (``x_train``, ``y_train``, ``x_test``, ``y_test``).
- ``idx``: a folder with the MNIST IDX files, raw or ``.gz``; with only the ``t10k`` pair the
  10,000 test images are split into the first 80% for training and the last 20% for testing,
  the split that MNIST-10k samples (8,000 train, 2,000 test) commonly use.
- ``synthetic``: a small learnable dataset generated from the seed, for tests.
- ``mnist``, ``fashion_mnist``, ``kmnist``, ``cifar10``, ``cifar100``: fetched into the cache on
  first use and verified (nbcnn.datasets), read with the npz and IDX readers here or, for CIFAR,
  from the binary tarball member by member; the official train/test split.

Every file is untrusted input: headers are checked against the real sizes before anything is
allocated, and every defect is a ``DataError`` naming the file.
"""

from __future__ import annotations

import difflib
import gzip
import math
import os
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from nbcnn import datasets
from nbcnn.errors import ConfigError, DataError
from nbcnn.io import (
    READ_ERRORS,
    NpyHeader,
    check_room,
    error_summary,
    load_npz,
    open_zip,
    read_npy_header,
    read_npz_member,
)
from nbcnn.layers.args import show, show_some
from nbcnn.spec import DATASETS, IMAGE_DATASETS

# Largest array a data file may declare. MNIST's 60k training images are 47 MB; the cap stops a
# corrupt or hostile header from making us allocate gigabytes before the data is even read.
MAX_ARRAY_BYTES = 2**31

#: Bytes each stored value costs once loaded, beyond the stored bytes: images become float32
#: (4) and the training set is shuffled into a copy (4); labels become int64 (8), shuffled too.
LOADED_BYTES_PER_VALUE = {"images": 8, "labels": 16}

# Fraction of a lone t10k set used for training (the first 8,000 of its 10,000 images).
T10K_TRAIN_FRACTION = 0.8

# IDX magic numbers: 0x00 0x00, type 0x08 (unsigned byte), number of dimensions.
IDX_LABELS_MAGIC = 0x00000801
IDX_IMAGES_MAGIC = 0x00000803

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass
class Dataset:
    """Train/validation/test arrays.

    x_* : (N, *input_shape) float32 in [0, 1], or for streamed image folders
    :class:`~nbcnn.streaming.ImageArray` that read from disk a batch at a time (index them, or
    ``np.asarray`` for all); y_* : (N,) int64 in [0, num_classes), or float32 targets (N,) or
    (N, K) from an npz (one-hot, multi-hot, regression: see nbcnn.losses). x_val/y_val are
    empty (N = 0) when validation_split is 0. source says where the data came from and how it was
    split; class_names names each class (folder and csv datasets), else None; test_missing says
    why x_test is empty (``test_split`` too small for a tiny folder...) when a loader knows.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str
    class_names: list[str] | None = None
    test_missing: str | None = None


def load_dataset(
    dataset: str,
    *,
    path: str | None = None,
    input_shape: tuple[int, ...],
    validation_split: float = 0.1,
    seed: int = 0,
    num_classes: int | None = None,
    size: int | tuple[int, int] | None = None,
    label_mode: str = "fine",
    test_path: str | None = None,
    test_split: float | None = None,
    image_size: Sequence[int] | None = None,
    color_mode: str | None = None,
    interpolation: str = "bilinear",
    stream: bool | str = "auto",
    progress: Callable[[int, int], None] | None = None,
    where: str = "train.data",
) -> Dataset:
    """Load ``dataset`` (one of ``DATASETS``) shaped for ``input_shape``.

    path : the .npz file or IDX folder (required for npz and idx, ignored otherwise).
    label_mode : cifar100 only, "fine" (100 classes) or "coarse" (20), as Keras's.
    input_shape : per-sample shape the model takes, e.g. (28, 28, 1); data with one axis fewer
    gets a trailing channel axis. validation_split : the last fraction of the training set,
    after shuffling it with ``np.random.default_rng(seed)``, becomes x_val/y_val.
    num_classes : labels must be below it; inferred as max label + 1 when None (10 for
    synthetic). size : synthetic only, the number of training samples (test = a quarter) or a
    (train, test) pair; default (512, 128). Bad options are a ConfigError located at ``where``.
    test_path, test_split, image_size, color_mode, interpolation, stream, progress : folder
    and csv only, see :func:`nbcnn.imagefolder.load_image_dataset` (docs/own-images.md).
    """
    if dataset not in DATASETS:
        close = (
            difflib.get_close_matches(dataset, DATASETS, n=1) if isinstance(dataset, str) else []
        )
        hint = f" did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown dataset {show(dataset)};{hint} choose one of {', '.join(DATASETS)}",
            where=f"{where}.dataset",
        )
    if isinstance(validation_split, bool) or not (
        isinstance(validation_split, (int, float)) and 0 <= validation_split < 1
    ):
        raise ConfigError(
            f"must be a number in [0, 1), got {show(validation_split)}",
            where=f"{where}.validation_split",
        )
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ConfigError(
            f"must be an integer >= 1, got {show(num_classes)}", where=f"{where}.num_classes"
        )
    input_shape = tuple(input_shape)
    if dataset in ("npz", "idx", *IMAGE_DATASETS) and not path:
        raise ConfigError(f"dataset {show(dataset)} needs a path", where=f"{where}.path")
    datasets.check_label_mode(label_mode, dataset, f"{where}.label_mode")

    if dataset in IMAGE_DATASETS:
        from nbcnn.imagefolder import load_image_dataset

        return load_image_dataset(
            dataset,
            path,
            input_shape=input_shape,
            validation_split=validation_split,
            seed=seed,
            num_classes=num_classes,
            test_path=test_path,
            test_split=test_split,
            image_size=image_size,
            color_mode=color_mode,
            interpolation=interpolation,
            stream=stream,
            where=where,
            progress=progress,
        )
    if dataset == "digits":
        x_train, y_train, x_test, y_test, source = _load_digits()
    elif dataset == "npz":
        x_train, y_train, x_test, y_test, source = _load_npz(path)
    elif dataset == "idx":
        x_train, y_train, x_test, y_test, source = _load_idx_folder(path)
    elif dataset in datasets.NAMES:
        x_train, y_train, x_test, y_test, source = _load_downloaded(dataset, label_mode)
    else:
        num_classes = num_classes or 10
        if num_classes < 2:
            raise ConfigError(
                f"synthetic data needs 2 classes or more, got {num_classes}",
                where=f"{where}.num_classes",
            )
        n_train, n_test = _synthetic_sizes(size, where)
        x_train, y_train, x_test, y_test, source = _make_synthetic(
            input_shape, num_classes, seed, n_train, n_test
        )

    origin = path or dataset
    num_classes = _check_classes(y_train, y_test, num_classes, origin)
    x_train = _fit_shape(x_train, input_shape, origin)
    x_test = _fit_shape(x_test, input_shape, origin)

    order = np.random.default_rng(seed).permutation(len(x_train))
    x_train, y_train = x_train[order], y_train[order]
    # Keras's rule for validation_split: the split index is floor(N * (1 - split)).
    n_fit = int(math.floor(len(x_train) * (1.0 - validation_split)))
    if n_fit == 0:
        raise ConfigError(
            f"validation_split {validation_split} leaves no training samples out of {len(x_train)}",
            where=f"{where}.validation_split",
        )
    return Dataset(
        x_train=x_train[:n_fit],
        y_train=y_train[:n_fit],
        x_val=x_train[n_fit:],
        y_val=y_train[n_fit:],
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        source=f"{source}; {n_fit} train / {len(x_train) - n_fit} validation (seed {seed})",
    )


def batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(xb, yb)`` mini-batches covering every sample once.

    x : (N, ...) float32 (or an ImageArray, read a batch at a time); y : (N,). xb : (B, ...)
    C-contiguous float32, yb : (B,), B <= batch_size (the last batch may be smaller; nothing
    is dropped). In order when rng is None (xb is then a view of an array x), else in the
    order of ``rng.permutation(N)``.
    """
    from nbcnn.streaming import ImageArray

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} samples but {len(y)} labels")
    if not isinstance(x, ImageArray):  # its batches are float32 copies already
        x = np.ascontiguousarray(x, dtype=np.float32)
    for rows in batch_rows(len(x), batch_size, rng):
        yield x[rows], y[rows]


def batch_rows(n: int, batch_size: int, rng: np.random.Generator | None = None):
    """The rows of each mini-batch of :func:`batches` over ``n`` samples: slices in order when
    rng is None, else index arrays of ``rng.permutation(n)``, ``batch_size`` at a time (one
    draw from rng per epoch). Data-parallel ranks take their shard of each
    (nbcnn.distributed.sharded_batches)."""
    order = None if rng is None else rng.permutation(n)
    for start in range(0, n, batch_size):
        if order is None:
            yield slice(start, min(start + batch_size, n))
        else:
            # Gather one batch at a time: a shuffled copy of the whole set would double memory.
            yield order[start : start + batch_size]


def load_images(
    paths: Sequence[str], input_shape: tuple[int, ...], interpolation: str = "bilinear"
) -> np.ndarray:
    """Read image files as a batch for prediction, decoded as ``dataset: folder`` decodes them
    (:func:`nbcnn.imagefolder.decode_image`).

    input_shape : (H, W, 1) or (H, W) for grayscale, (H, W, 3) for RGB, (H, W, 4) for RGBA.
    Each image is converted to that Pillow mode, resized to W x H with ``interpolation``
    (Keras's name) and scaled by 1/255. Returns (len(paths), *input_shape) float32 in [0, 1].
    No inversion: MNIST-trained models expect a light digit on a dark background.
    """
    from nbcnn.imagefolder import decode_image, image_shape
    from nbcnn.io import image_bomb_warnings_as_errors

    try:
        import PIL  # noqa: F401 - a dependency, but an environment may lack it
    except ImportError:
        raise DataError("reading images needs Pillow: pip install pillow") from None
    shape, color_mode = image_shape(tuple(input_shape), None, None, "predict")
    out = np.empty((len(paths), *shape), dtype=np.float32)
    with image_bomb_warnings_as_errors():
        for i, path in enumerate(paths):
            out[i] = decode_image(str(path), shape, color_mode, interpolation)
    out /= 255.0
    return out


def _fit_shape(x: np.ndarray, input_shape: tuple[int, ...], origin: str) -> np.ndarray:
    """Add a trailing channel axis when the data has one axis fewer; check the sample shape."""
    if x.ndim == len(input_shape):
        x = x[..., np.newaxis]
    if x.shape[1:] != input_shape:
        raise ShapeMismatch(
            f"data has samples of shape {x.shape[1:]} but input_shape is {list(input_shape)}",
            file=origin,
            samples=tuple(x.shape[1:]),
        )
    return x


class ShapeMismatch(DataError):
    """Data whose samples do not have the model's ``input_shape`` (``samples`` is theirs):
    the CLI names the config too, since either side may be the one to change."""

    def __init__(self, message: str, *, file: str | None, samples: tuple[int, ...]):
        super().__init__(message, file=file)
        self.samples = samples


def to_model_input(x: np.ndarray, name: str, file: str | None = None) -> np.ndarray:
    """The one rule for what a model is fed, shared by the data loaders and the Python API
    (``fit``, ``evaluate``, ``predict``; docs/python-api.md states it):

    - integer arrays (``uint8`` and every other integer dtype) hold pixels 0..255 and become
      ``x / 255`` in float32, the scaling Keras's examples apply to MNIST by hand;
    - float arrays are taken as they are, as float32, and must be finite there (1e300 is not);
    - anything else (bool, complex, strings) is refused.

    x : (N, ...) -> (N, ...) float32, C-contiguous. DataError names ``name`` (and ``file``).
    """
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(
                f"{name} has integer pixels in [{x.min()}, {x.max()}]; expected 0..255 (integer "
                "inputs are pixels, divided by 255; give floats to have values taken as they are)",
                file=file,
            )
        out = np.ascontiguousarray(x, dtype=np.float32)
        out /= 255.0
        return out
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"{name} has dtype {x.dtype}; expected integers 0..255 or floats", file=file
        )
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(x, dtype=np.float32)
    # One float64 sum (no temporary the size of x) is finite exactly when every value is.
    if not np.isfinite(out.sum(dtype=np.float64)):
        sample = np.argwhere(~np.isfinite(out.reshape(len(out), -1)))[0][0]
        raise DataError(
            f"{name}[{sample}] holds NaN or infinite values, or values beyond float32's range "
            f"(largest {np.finfo(np.float32).max:.8g})",
            file=file,
        )
    return out


#: Float input with no value below 0 and some above this looks like 0..255 pixels.
UNSCALED_ABOVE = 2.0


def warn_unscaled_pixels(x: np.ndarray, name: str) -> None:
    """Warn (UserWarning) when float input ``x`` given to ``fit``, ``evaluate`` or ``predict``
    looks like 0..255 pixels that were not divided by 255: no value below 0, some above
    :data:`UNSCALED_ABOVE`. Floats are taken as they are (:func:`to_model_input`), so such
    pixels train to garbage (a loss in the tens of thousands) where the CLI refuses a file of
    them; standardised inputs (negative values) pass. The text is the same for every call, so
    Python's default filter shows it once."""
    import warnings

    if x.size and x.max() > UNSCALED_ABOVE and x.min() >= 0:
        warnings.warn(
            f"{name} holds floats above {UNSCALED_ABOVE:g} and none below 0, like 0..255 pixels; "
            "floats are used as they are (only integer pixels are divided by 255): divide by "
            "255 (x / 255) or pass the uint8 pixels",
            UserWarning,
            stacklevel=2,
        )


def _scale_images(x: np.ndarray, origin: str, name: str) -> np.ndarray:
    """:func:`to_model_input`; a file's float pixels must also lie in [0, 1], since a float
    file of 0..255 values is almost always a scaling left out."""
    out = to_model_input(x, name, file=origin)
    if np.issubdtype(x.dtype, np.floating) and out.size and (out.min() < 0 or out.max() > 1):
        raise DataError(
            f"{name} has float pixels in [{out.min():g}, {out.max():g}]; expected [0, 1] "
            "(or integers 0..255)",
            file=origin,
        )
    return out


def _check_classes(
    y_train: np.ndarray, y_test: np.ndarray, num_classes: int | None, origin: str
) -> int:
    """The number of classes (or target columns) of the labels, checked against the model's
    ``num_classes`` outputs when given. Integer labels must lie below it (a model with one
    output unit takes 0/1 labels: binary_crossentropy); (N, K) targets must have K columns."""
    forms = [_target_form(y) for y in (y_train, y_test)]
    if forms[0] != forms[1]:
        raise DataError(
            f"y_train holds {forms[0]} but y_test {forms[1]}: both must have the same form",
            file=origin,
        )
    if y_train.ndim == 2:
        columns = y_train.shape[1]
        if num_classes is not None and columns != num_classes:
            raise DataError(
                f"targets have {columns} columns but the model has {num_classes} outputs "
                "(the last layer's units)",
                file=origin,
            )
        return columns
    if not np.issubdtype(y_train.dtype, np.integer):
        return num_classes or 1  # float targets (N,): regression or binary, one output
    found = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    if num_classes is None:
        return max(found, 2)
    if found > num_classes and num_classes > 1:
        raise DataError(
            f"has label {found - 1} but num_classes is {num_classes} (labels must be in "
            f"[0, {num_classes}))",
            file=origin,
        )
    return num_classes


def _target_form(y: np.ndarray) -> str:
    if y.ndim == 2:
        return f"one-hot or multi-column targets of {y.shape[1]} columns"
    return "integer class labels" if np.issubdtype(y.dtype, np.integer) else "float targets"


def _labels(y: np.ndarray, origin: str, name: str) -> np.ndarray:
    """Targets as the losses take them (nbcnn.losses.check_targets checks them against the
    chosen loss): integer class labels (N,) or (N, 1) -> (N,) int64; float targets (N,)
    (regression, binary) and (N, K) targets (one-hot, multi-hot, regression) -> float32."""
    if y.ndim == 2 and y.shape[1] == 1 and np.issubdtype(y.dtype, np.integer):
        y = y[:, 0]  # Keras's CIFAR files store labels as (N, 1)
    if y.ndim == 2 or np.issubdtype(y.dtype, np.floating):
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
            raise DataError(f"{name} has dtype {y.dtype}; expected numbers", file=origin)
        with np.errstate(over="ignore", invalid="ignore"):
            targets = y.astype(np.float32)
        if not np.isfinite(targets).all():
            raise DataError(f"{name} holds NaN, inf or values beyond float32's range", file=origin)
        return targets
    if y.ndim != 1:
        raise DataError(
            f"{name} has shape {y.shape}; expected class labels (N,) or targets (N, K)",
            file=origin,
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name} has dtype {y.dtype}; expected integer labels", file=origin)
    if y.size and y.min() < 0:
        raise DataError(f"{name} has negative label {y.min()}", file=origin)
    # Checked in the stored dtype: a uint64 above int64's range would wrap to a negative label.
    if y.size and int(y.max()) > np.iinfo(np.int64).max:
        raise DataError(f"{name} has label {y.max()}, beyond int64's range", file=origin)
    return y.astype(np.int64)


def _check_pairs(images: np.ndarray, labels: np.ndarray, origin: str, labels_name: str) -> None:
    if len(images) != len(labels):
        raise DataError(
            f"{len(images)} images but {labels_name} has {len(labels)} labels", file=origin
        )


def _load_digits():
    """scikit-learn's 1797 8x8 digits (values 0..16), fixed 80/20 split independent of seed."""
    from sklearn.datasets import load_digits  # imported lazily: sklearn takes ~1 s to import

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    # A fixed permutation (seed 0, not the training seed) so every run tests on the same 20%.
    order = np.random.default_rng(0).permutation(len(x))
    n_test = round(0.2 * len(x))
    train, test = order[:-n_test], order[-n_test:]
    source = f"digits (scikit-learn, {len(train)} train+validation / {n_test} test, fixed split)"
    return x[train], y[train], x[test], y[test], source


def _load_npz(path: str):
    """Keras's mnist.npz layout; each array's header is checked before it is read."""
    if not os.path.isfile(path):
        raise DataError(
            "not a regular file" if os.path.exists(path) else "file not found", file=path
        )
    if not zipfile.is_zipfile(path):
        raise DataError(
            "is not a complete .npz archive (truncated, or not a zip of .npy arrays like "
            "Keras's mnist.npz)",
            file=path,
        )
    try:
        with open(path, "rb") as handle, open_zip(handle, path) as archive:
            # np.savez names members "<key>.npy"; only those are arrays np.load would read.
            members = {n.removesuffix(".npy") for n in archive.namelist() if n.endswith(".npy")}
            missing = [k for k in NPZ_KEYS if k not in members]
            if missing:
                raise DataError(
                    f"missing arrays {missing} (has {show_some(sorted(members)) or 'none'}); "
                    f"expected {', '.join(NPZ_KEYS)} as in Keras's mnist.npz",
                    file=path,
                )
            headers = {key: _check_npy_header(archive, key, path) for key in NPZ_KEYS}
            check_room(
                sum(_loaded_bytes(key, header) for key, header in headers.items()),
                "its arrays",
                path,
            )
            arrays = {
                key: read_npz_member(archive, f"{key}.npy", header, path)
                for key, header in headers.items()
            }
    except MemoryError:
        raise DataError("not enough memory to read its arrays", file=path) from None
    except READ_ERRORS as err:
        raise DataError(f"corrupt .npz archive ({error_summary(err)})", file=path) from None
    for key in ("x_train", "x_test"):
        if len(arrays[key]) == 0:
            raise DataError(f"{key} holds no images", file=path)

    x_train = _scale_images(arrays["x_train"], path, "x_train")
    x_test = _scale_images(arrays["x_test"], path, "x_test")
    y_train = _labels(arrays["y_train"], path, "y_train")
    y_test = _labels(arrays["y_test"], path, "y_test")
    _check_pairs(x_train, y_train, path, "y_train")
    _check_pairs(x_test, y_test, path, "y_test")
    return x_train, y_train, x_test, y_test, f"npz {path}"


def _check_npy_header(archive: zipfile.ZipFile, key: str, path: str) -> NpyHeader:
    """Refuse object arrays, wrong ranks and oversized arrays from the .npy header alone."""
    with archive.open(f"{key}.npy") as member:
        try:
            header = read_npy_header(member)
        except ValueError as err:
            raise DataError(f"{key}: {err}", file=path) from None
    shape, dtype = header.shape, header.dtype
    if dtype.hasobject:
        raise DataError(f"{key} contains object arrays (pickle); refused", file=path)
    if header.nbytes > MAX_ARRAY_BYTES:
        raise DataError(
            f"{key} declares shape {shape} of {dtype}, over the {MAX_ARRAY_BYTES} byte limit",
            file=path,
        )
    ranks = (2, 3, 4) if key.startswith("x") else (1, 2)
    if len(shape) not in ranks:
        what = "images (N, H, W) or (N, H, W, C)" if key.startswith("x") else "labels (N,)"
        raise DataError(f"{key} has shape {shape}; expected {what}", file=path)
    return header


def _loaded_bytes(key: str, header: NpyHeader) -> int:
    """Bytes the array of ``key`` needs once read and converted (LOADED_BYTES_PER_VALUE)."""
    kind = "images" if key.startswith("x") else "labels"
    return header.values * (header.dtype.itemsize + LOADED_BYTES_PER_VALUE[kind])


def _find_idx_file(folder: str, name: str) -> str | None:
    for candidate in (name, name + ".gz"):
        full = os.path.join(folder, candidate)
        if os.path.isfile(full):
            return full
    return None


def _load_idx_folder(folder: str):
    """The four MNIST IDX files, or only the t10k pair split 80/20 into train and test."""
    if not os.path.isdir(folder):
        raise DataError("not a folder (expected the MNIST IDX files inside)", file=folder)
    names = {
        split: (f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte")
        for split in ("train", "t10k")
    }
    files = {split: [_find_idx_file(folder, n) for n in pair] for split, pair in names.items()}
    for split, found in files.items():
        missing = [n for n, f in zip(names[split], found, strict=True) if f is None]
        if missing and (split == "t10k" or len(missing) == 1):
            raise DataError(f"missing {missing[0]}[.gz]", file=folder)
    x_test, y_test = _read_idx_pair(*files["t10k"])
    if files["train"][0] is not None:
        x_train, y_train = _read_idx_pair(*files["train"])
        return x_train, y_train, x_test, y_test, f"idx {folder}"
    n_train = int(len(x_test) * T10K_TRAIN_FRACTION)
    source = (
        f"idx {folder} (t10k files only: first {n_train} as train, "
        f"last {len(x_test) - n_train} as test)"
    )
    return x_test[:n_train], y_test[:n_train], x_test[n_train:], y_test[n_train:], source


def _read_idx_pair(images_path: str, labels_path: str):
    x = _scale_images(read_idx(images_path, IDX_IMAGES_MAGIC), images_path, "images")
    y = read_idx(labels_path, IDX_LABELS_MAGIC).astype(np.int64)
    _check_pairs(x, y, images_path, os.path.basename(labels_path))
    return x, y


def _load_downloaded(name: str, label_mode: str):
    """A dataset of nbcnn.datasets' catalogue, fetched (or found in the cache) and verified,
    with its official train/test split."""
    info = datasets.info(name)
    paths = {file: str(path) for file, path in datasets.fetch(name).items()}
    if info.reader == "npz":
        x_train, y_train, x_test, y_test, _ = _load_npz(paths[info.files[0].name])
    elif info.reader == "idx":
        x_train, y_train = _read_idx_pair(
            paths["train-images-idx3-ubyte.gz"], paths["train-labels-idx1-ubyte.gz"]
        )
        x_test, y_test = _read_idx_pair(
            paths["t10k-images-idx3-ubyte.gz"], paths["t10k-labels-idx1-ubyte.gz"]
        )
    else:
        archive = paths[info.files[0].name]
        label_bytes = info.cifar.label_bytes
        splits = (info.cifar.train, info.cifar.test)
        (x_train, y_train), (x_test, y_test) = _read_cifar(archive, splits, label_bytes, label_mode)
    labels = f", {label_mode} labels" if info.coarse_classes else ""
    source = (
        f"{name} ({info.title}{labels}; official split {len(x_train)} train+validation / "
        f"{len(x_test)} test; cached in {datasets.cache_dir(name)})"
    )
    return x_train, y_train, x_test, y_test, source


#: Bytes of one CIFAR image: 32 x 32 pixels, 3 channels.
CIFAR_PIXELS = 32 * 32 * 3


def _read_cifar(
    path: str, splits: tuple[tuple[str, ...], ...], label_bytes: int, label_mode: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Images and labels of a CIFAR binary .tar.gz, one ``(x, y)`` per split: the records of
    its members (named in ``splits``) joined in order, in one pass over the archive.

    label_bytes : label bytes before each image (``nbcnn.datasets.CifarLayout`` says the
    record layout); label_mode : "fine" or "coarse". The archive is read member by member with
    tarfile: only the named members are read, each must be a regular file holding a whole
    number of records, and nothing is extracted to disk. (The python version that Keras and
    torchvision read holds pickles, which run code when loaded: never used here.)
    x : (N, 32, 32, 3) float32 in [0, 1]; y : (N,) int64.
    """
    members = [name for split in splits for name in split]
    record = label_bytes + CIFAR_PIXELS
    found: dict[str, np.ndarray] = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                if member.name not in members:
                    continue
                if member.name in found:
                    raise DataError(f"holds {member.name} twice", file=path)
                if not member.isreg():
                    raise DataError(f"{member.name} is not a regular file", file=path)
                if not 0 < member.size <= MAX_ARRAY_BYTES or member.size % record:
                    raise DataError(
                        f"{member.name} has {member.size} bytes, not a whole number of "
                        f"{record}-byte records",
                        file=path,
                    )
                check_room(member.size * (1 + LOADED_BYTES_PER_VALUE["images"]), member.name, path)
                with archive.extractfile(member) as stream:
                    data = stream.read(member.size)
                if len(data) != member.size:
                    raise DataError(f"{member.name} is truncated", file=path)
                found[member.name] = np.frombuffer(data, np.uint8).reshape(-1, record)
    except MemoryError:
        raise DataError("not enough memory to read its images", file=path) from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"truncated or corrupt archive ({err})", file=path) from None
    missing = [name for name in members if name not in found]
    if missing:
        raise DataError(f"has no member {missing[0]}", file=path)
    # CIFAR-100's records start with the coarse label, then the fine one.
    label_at = label_bytes - 1 if label_mode == "fine" else 0
    out = []
    for split in splits:
        records = np.concatenate([found.pop(name) for name in split])
        y = records[:, label_at].astype(np.int64)
        # Channel planes (N, 3, 32, 32) -> channels_last (N, 32, 32, 3), as Keras's loaders.
        x = records[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        out.append((_scale_images(x, path, "images"), y))
    return out


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (raw, or gzip when the name ends in .gz).

    magic : 0x00000801 for labels (returns (N,) uint8) or 0x00000803 for images
    ((N, rows, cols) uint8). The header is a big-endian magic number and one uint32 per
    dimension; the data size they declare is checked against the cap and, for raw files, the
    file size, before the data is read.
    """
    path = os.fspath(path)
    ndim = magic & 0xFF
    kind = "labels" if magic == IDX_LABELS_MAGIC else "images"
    compressed = path.endswith(".gz")
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as f:
            header = f.read(4 + 4 * ndim)
            found = int.from_bytes(header[:4], "big")
            if len(header) >= 4 and found != magic:
                hint = " (looks gzip-compressed: name it .gz)" if header[:2] == b"\x1f\x8b" else ""
                raise DataError(
                    f"magic number 0x{found:08x} but an IDX {kind} file starts with "
                    f"0x{magic:08x}{hint}",
                    file=path,
                )
            if len(header) < 4 + 4 * ndim:
                raise DataError(f"truncated: {len(header)}-byte IDX header", file=path)
            dims = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
            nbytes = math.prod(dims)
            if nbytes > MAX_ARRAY_BYTES:
                raise DataError(
                    f"header declares {dims} = {nbytes} bytes, over the {MAX_ARRAY_BYTES} "
                    "byte limit",
                    file=path,
                )
            if not compressed and os.path.getsize(path) != len(header) + nbytes:
                raise DataError(
                    f"header declares {dims} = {nbytes} bytes of data but the file has "
                    f"{os.path.getsize(path) - len(header)}",
                    file=path,
                )
            check_room(nbytes * (1 + LOADED_BYTES_PER_VALUE[kind]), f"its {kind}", path)
            # One byte more than declared, so extra data is noticed without reading it all: a
            # .gz that holds more than its header says is decompressed no further.
            data = f.read(nbytes + 1)
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except MemoryError:
        raise DataError(f"not enough memory to read its {kind}", file=path) from None
    except (EOFError, zlib.error, OSError) as err:
        raise DataError(f"truncated or corrupt file ({err})", file=path) from None
    if len(data) != nbytes:
        state = "truncated" if len(data) < nbytes else "longer than declared"
        raise DataError(
            f"{state}: header declares {dims} = {nbytes} bytes of data, found "
            f"{'more' if len(data) > nbytes else len(data)}",
            file=path,
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _synthetic_sizes(size: int | tuple[int, int] | None, where: str) -> tuple[int, int]:
    if size is None:
        return 512, 128
    sizes = (size, max(size // 4, 1)) if isinstance(size, int) else tuple(size)
    if len(sizes) != 2 or any(isinstance(n, bool) or not isinstance(n, int) for n in sizes):
        raise ConfigError(
            f"expected an integer or (train, test), got {show(size)}", where=f"{where}.size"
        )
    if sizes[0] < 1 or sizes[1] < 1:
        raise ConfigError(f"sizes must be >= 1, got {show(size)}", where=f"{where}.size")
    return sizes


def _make_synthetic(input_shape, num_classes, seed, n_train, n_test):
    """One random prototype image per class, mixed 60/40 with uniform noise: values stay in
    [0, 1], classes are balanced, and a linear model already separates them."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((num_classes, *input_shape), dtype=np.float32)

    def draw(n):
        y = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
        noise = rng.random((n, *input_shape), dtype=np.float32)
        return 0.6 * prototypes[y] + 0.4 * noise, y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    source = f"synthetic (seed {seed}, {num_classes} classes, {n_train} train / {n_test} test)"
    return x_train, y_train, x_test, y_test, source


def load_prediction_arrays(path: str, input_shape: tuple[int, ...]) -> np.ndarray:
    """Images to predict from an ``.npz``: the array ``x``, else ``x_test``, else its only one.

    Returns (N, *input_shape) float32 in [0, 1] (integer pixels are divided by 255).
    """
    # Each value is converted to float32 (4 bytes) and copied once more when the CLI joins the
    # inputs into one batch (4): counted before anything is read.
    arrays = load_npz(path, extra_per_value=8)
    for key in ("x", "x_test"):
        if key in arrays:
            break
    else:
        if len(arrays) != 1:
            raise DataError(
                f"holds arrays {show_some(sorted(arrays))}; name the images 'x' (or 'x_test')",
                file=path,
            )
        key = next(iter(arrays))
    x = np.asarray(arrays[key])
    if x.ndim == 0 or len(x) == 0:
        raise DataError(f"array {show(key)} holds no images", file=path)
    x = _fit_shape(x, tuple(input_shape), path)
    return _scale_images(x, path, key)
