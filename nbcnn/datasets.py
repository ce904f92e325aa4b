"""Datasets fetched on first use: the catalogue, the cache folder and the verified download.

Each dataset is downloaded from the public location Keras or torchvision use, checked against
its published SHA-256 and only then moved into the cache (``$NBCNN_HOME/datasets/<name>/``, else
the platform's cache folder), so the cache holds whole, verified files or nothing. A cached file
is verified again on every use: one that no longer matches is refused, never read. Downloads go
through pooch (streamed into a temporary file beside the target, hash-checked, renamed) and are
retried after failures that may pass; every failure is one ``DataError`` line saying which file,
why, and where to put it by hand.

Pure Python: pooch and rich are imported only when a download starts.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nbcnn.errors import ConfigError, DataError

#: Environment variables: the root of nbcnn's files, and a mirror replacing every origin.
HOME_ENV = "NBCNN_HOME"
MIRROR_ENV = "NBCNN_DATASETS_URL"

#: Further attempts after a failure that may pass, waiting RETRY_WAIT_S, then twice that.
RETRIES = 2
RETRY_WAIT_S = 1.0
#: Seconds without a byte from the server before a transfer counts as failed.
TIMEOUT_S = 60
#: Bytes per read while streaming: pooch's default of 1 KiB costs a write call per KiB.
CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its name (in the origin folder and in the cache), SHA-256, bytes."""

    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class CifarLayout:
    """Members of a CIFAR binary archive and their records.

    Each record is ``label_bytes`` label bytes then 32 x 32 x 3 pixel bytes: the red, green and
    blue planes, each row-major (https://www.cs.toronto.edu/~kriz/cifar.html, "Binary version").
    CIFAR-100's two label bytes are the coarse label, then the fine one.
    """

    train: tuple[str, ...]
    test: tuple[str, ...]
    label_bytes: int


@dataclass(frozen=True)
class DatasetInfo:
    """A downloadable dataset.

    origin : the folder URL its files are fetched from (``origin + file.name``).
    reader : "npz" (Keras's mnist.npz layout), "idx" (the four MNIST IDX .gz files) or "cifar"
    (a CIFAR binary .tar.gz, read as ``cifar``). shape : one sample as a model takes it.
    classes : label classes (CIFAR-100's fine labels; ``coarse_classes`` its 20 superclasses).
    """

    name: str
    title: str
    origin: str
    files: tuple[RemoteFile, ...]
    reader: str
    shape: tuple[int, int, int]
    classes: int
    train: int
    test: int
    cifar: CifarLayout | None = None
    coarse_classes: int | None = None

    @property
    def download_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _idx_files(sizes_and_hashes: dict[str, tuple[int, str]]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(name, sha, size) for name, (size, sha) in sizes_and_hashes.items())


# Checksums and sizes, each checked against two independent sources:
# - mnist.npz: SHA-256 from Keras (keras/src/datasets/mnist.py); the size is the byte count
#   Keras prints while downloading it (11490434/11490434).
# - Fashion-MNIST: SHA-256 in Keras (keras/src/datasets/fashion_mnist.py, FILE_HASHES) and in
#   TensorFlow Datasets (url_checksums/fashion_mnist.txt, with the sizes), identical; torchvision
#   (torchvision/datasets/mnist.py, FashionMNIST) publishes MD5s of the same files.
# - KMNIST: SHA-256 and sizes from TensorFlow Datasets (url_checksums/kmnist.txt), the same
#   SHA-256 in torchvision-ruby (datasets/kmnist.rb); torchvision publishes MD5s (KMNIST).
# - CIFAR: Keras and torchvision fetch the *python* tarballs, whose batches are pickles, and
#   unpickling a downloaded file can run any code it holds. nbcnn takes the authors' *binary*
#   tarballs instead (plain records, no code). SHA-256 and sizes from TensorFlow Datasets
#   (url_checksums/cifar10.txt, cifar100.txt); the authors' page publishes their MD5s
#   (c32a1d4ab5d03f1284b67883e8d87530 and 03b5dce01913d631647c71ecec9e9cb8).
_KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"

CATALOGUE: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="mnist",
            title="MNIST handwritten digits, Keras's mnist.npz",
            origin=_KERAS_ORIGIN,
            files=(
                RemoteFile(
                    "mnist.npz",
                    "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
                    11_490_434,
                ),
            ),
            reader="npz",
            shape=(28, 28, 1),
            classes=10,
            train=60_000,
            test=10_000,
        ),
        DatasetInfo(
            name="fashion_mnist",
            title="Fashion-MNIST (Zalando), the IDX files Keras fetches",
            origin=_KERAS_ORIGIN,
            files=_idx_files(
                {
                    "train-images-idx3-ubyte.gz": (
                        26_421_880,
                        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                    ),
                    "train-labels-idx1-ubyte.gz": (
                        29_515,
                        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                    ),
                    "t10k-images-idx3-ubyte.gz": (
                        4_422_102,
                        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                    ),
                    "t10k-labels-idx1-ubyte.gz": (
                        5_148,
                        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                    ),
                }
            ),
            reader="idx",
            shape=(28, 28, 1),
            classes=10,
            train=60_000,
            test=10_000,
        ),
        DatasetInfo(
            name="kmnist",
            title="Kuzushiji-MNIST (ROIS-DS CODH), the IDX files torchvision fetches",
            origin="https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
            files=_idx_files(
                {
                    "train-images-idx3-ubyte.gz": (
                        18_165_135,
                        "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
                    ),
                    "train-labels-idx1-ubyte.gz": (
                        29_497,
                        "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
                    ),
                    "t10k-images-idx3-ubyte.gz": (
                        3_041_136,
                        "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
                    ),
                    "t10k-labels-idx1-ubyte.gz": (
                        5_120,
                        "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
                    ),
                }
            ),
            reader="idx",
            shape=(28, 28, 1),
            classes=10,
            train=60_000,
            test=10_000,
        ),
        DatasetInfo(
            name="cifar10",
            title="CIFAR-10 (Krizhevsky), the authors' binary version",
            origin="https://www.cs.toronto.edu/~kriz/",
            files=(
                RemoteFile(
                    "cifar-10-binary.tar.gz",
                    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
                    170_052_171,
                ),
            ),
            reader="cifar",
            shape=(32, 32, 3),
            classes=10,
            train=50_000,
            test=10_000,
            cifar=CifarLayout(
                train=tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)),
                test=("cifar-10-batches-bin/test_batch.bin",),
                label_bytes=1,
            ),
        ),
        DatasetInfo(
            name="cifar100",
            title="CIFAR-100 (Krizhevsky), the authors' binary version",
            origin="https://www.cs.toronto.edu/~kriz/",
            files=(
                RemoteFile(
                    "cifar-100-binary.tar.gz",
                    "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
                    168_513_733,
                ),
            ),
            reader="cifar",
            shape=(32, 32, 3),
            classes=100,
            train=50_000,
            test=10_000,
            cifar=CifarLayout(
                train=("cifar-100-binary/train.bin",),
                test=("cifar-100-binary/test.bin",),
                label_bytes=2,
            ),
            coarse_classes=20,
        ),
    )
}

#: Names a config may give as ``train.data.dataset`` to fetch a dataset on first use.
NAMES = tuple(CATALOGUE)
#: ``train.data.label_mode``: Keras's cifar100.load_data(label_mode=...) choices.
LABEL_MODES = ("fine", "coarse")


def info(name: str, where: str = "dataset") -> DatasetInfo:
    """The catalogue entry of ``name``; ConfigError at ``where`` (with a suggestion) if none."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    close = difflib.get_close_matches(str(name), NAMES, n=1)
    hint = f" did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"no downloadable dataset {name!r};{hint} choose one of {', '.join(NAMES)}", where=where
    )


def check_label_mode(label_mode: str, dataset: str, where: str) -> None:
    """ConfigError at ``where`` unless ``label_mode`` is one of LABEL_MODES, and "fine" for
    every dataset but cifar100 (the only one with two kinds of label)."""
    if label_mode not in LABEL_MODES:
        raise ConfigError(
            f"must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}", where=where
        )
    entry = CATALOGUE.get(dataset)
    if label_mode != "fine" and (entry is None or entry.coarse_classes is None):
        raise ConfigError(
            f"label_mode {label_mode!r} applies to cifar100 only (its 20 superclasses), "
            f"not to dataset {dataset!r}",
            where=where,
        )


def home_dir() -> Path:
    """The root of nbcnn's cached files: ``$NBCNN_HOME`` when set, else ``<the platform's
    user cache folder>/nbcnn`` (``~/.cache/nbcnn`` on Linux, from platformdirs through
    pooch.os_cache)."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    import pooch

    return Path(pooch.os_cache("nbcnn"))


def cache_dir(name: str) -> Path:
    """Where the files of dataset ``name`` are kept: ``<home_dir()>/datasets/<name>``."""
    return home_dir() / "datasets" / name


def file_url(dataset: DatasetInfo, file: RemoteFile) -> str:
    """The URL ``file`` is fetched from: ``$NBCNN_DATASETS_URL/<dataset>/<file>`` when the mirror
    is set (the cache folder's own layout, so a copy of a cache can serve as a mirror), else
    the dataset's origin."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return dataset.origin + file.name
    if not mirror.startswith(("http://", "https://")):
        raise ConfigError(
            f"must be an http:// or https:// URL, got {mirror!r}; to use files without a "
            f"server, put them in {cache_dir(dataset.name)}",
            where=MIRROR_ENV,
        )
    return f"{mirror.rstrip('/')}/{dataset.name}/{file.name}"


def cached(name: str) -> dict[str, bool]:
    """``{file name: present in the cache}`` (presence only: the checksum is checked on use)."""
    folder = cache_dir(name)
    return {f.name: (folder / f.name).is_file() for f in info(name).files}


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(name: str, *, progress: bool | None = None) -> dict[str, Path]:
    """The verified files of dataset ``name``, downloaded into the cache first if missing.

    Returns ``{file name: path in the cache}``. progress : show a rich bar on stderr while
    downloading; None shows one when stderr is a terminal. Idempotent: a file already cached
    is only verified. Raises DataError naming the file on any failure (nothing is cached then),
    ConfigError for an unknown name or a bad NBCNN_DATASETS_URL.
    """
    dataset = info(name)
    folder = cache_dir(name)
    if progress is None:
        progress = sys.stderr.isatty()
    return {f.name: _fetch_file(dataset, f, folder, progress) for f in dataset.files}


def _by_hand(dataset: DatasetInfo, file: RemoteFile, target: Path) -> str:
    # The origin, not the mirror: the address to try from another machine or a browser.
    return (
        f"to install it by hand, download {dataset.origin + file.name} and save it as {target} "
        f"(SHA-256 {file.sha256}; docs/datasets.md)"
    )


def _fetch_file(dataset: DatasetInfo, file: RemoteFile, folder: Path, progress: bool) -> Path:
    target = folder / file.name
    if target.exists():
        if not target.is_file():
            raise DataError("is in the dataset cache but is not a regular file", file=str(target))
        try:
            found = sha256_of(target)
        except OSError as err:
            raise DataError(
                f"cannot read the cached file ({err.strerror})", file=str(target)
            ) from None
        if found != file.sha256:
            raise DataError(
                f"cached file has SHA-256 {found[:16]}..., not the published {file.sha256[:16]}"
                "... (corrupt or incomplete): refused, not read; delete it to download it "
                f"again, or {_by_hand(dataset, file, target)}",
                file=str(target),
            )
        return target
    url = file_url(dataset, file)
    reason = _download(url, file, target, progress)
    if reason is not None:
        raise DataError(
            f"download of {url} failed: {reason}; nothing of it was cached; "
            f"{_by_hand(dataset, file, target)}",
            file=f"{dataset.name}/{file.name}",
        )
    return target


def _download(url: str, file: RemoteFile, target: Path, progress: bool) -> str | None:
    """Fetch ``url`` to ``target``, trying again after a failure that may pass (a dropped
    connection, a timeout, a server error, a corrupt transfer) but not after a refusal (HTTP
    4xx). Returns None on success, else why the last attempt failed, in a few words."""
    retries = 0
    while True:
        reason, may_pass = _attempt(url, file, target, progress)
        if reason is None or not may_pass or retries == RETRIES:
            return reason
        retries += 1
        time.sleep(RETRY_WAIT_S * retries)


def _attempt(url: str, file: RemoteFile, target: Path, progress: bool) -> tuple[str | None, bool]:
    """One download: pooch.retrieve streams ``url`` into a temporary file beside ``target``,
    checks its SHA-256 and renames it to ``target``, deleting it on any failure. Returns
    ``(None, _)`` on success, else ``(why it failed, whether another attempt may succeed)``."""
    import pooch
    import requests

    host = urllib.parse.urlsplit(url).netloc  # the whole URL leaves the bar no room
    bar = _DownloadBar(f"{file.name} from {host}") if progress else contextlib.nullcontext()
    try:
        with _quiet_pooch(), bar:
            downloader = pooch.HTTPDownloader(
                progressbar=bar if progress else False, timeout=TIMEOUT_S, chunk_size=CHUNK_BYTES
            )
            pooch.retrieve(
                url,
                known_hash=f"sha256:{file.sha256}",
                fname=file.name,
                path=target.parent,
                downloader=downloader,
            )
    # requests' errors are OSErrors too: they come first.
    except requests.HTTPError as err:
        response = err.response
        why = f"the server answered HTTP {response.status_code} {response.reason}".rstrip()
        return why, response.status_code >= 500
    except requests.exceptions.ChunkedEncodingError:
        return "the transfer was interrupted (the connection closed before the whole file)", True
    except requests.Timeout:
        return f"no answer within {TIMEOUT_S} s", True
    except requests.ConnectionError:
        return "cannot connect (offline, or the host is unreachable)", True
    except requests.RequestException as err:
        return type(err).__name__, False
    except ValueError as err:
        if "hash" not in str(err).lower():
            raise
        # pooch.utils.hash_matches deleted the download before raising.
        return "its SHA-256 is not the published one (a corrupt transfer, or a changed file)", True
    except OSError as err:
        return f"cannot write the cache folder ({err.strerror or err})", False
    return None, False


@contextlib.contextmanager
def _quiet_pooch() -> Iterator[None]:
    """Silence pooch's INFO lines ("Downloading data from ...") on stderr: the bar says it."""
    import pooch

    logger = pooch.get_logger()  # pooch's own Logger object, not in logging's registry
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class _DownloadBar:
    """The progress-bar object pooch's HTTPDownloader drives (``total``, ``update``, ``reset``,
    ``close``), drawn by rich on stderr. A context manager, since pooch does not close it when
    a transfer fails."""

    def __init__(self, what: str):
        self.what = what
        self.progress = None
        self.task = None

    def __enter__(self) -> _DownloadBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def total(self) -> int | None:
        return None if self.task is None else self.progress.tasks[0].total

    @total.setter
    def total(self, nbytes: int) -> None:
        # Set once per attempt, before the first byte: (re)start the bar at zero.
        if self.progress is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.progress = Progress(
                TextColumn("downloading {task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task(self.what, total=nbytes or None)
        else:
            self.progress.reset(self.task, total=nbytes or None)

    def update(self, nbytes: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, nbytes)

    def reset(self) -> None:
        if self.task is not None:
            self.progress.reset(self.task)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.task = None
