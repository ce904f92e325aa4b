"""Downloadable datasets (nbcnn.datasets) against an HTTP server on 127.0.0.1 started here.

The server serves small files made by the tests in the real formats (Keras's mnist.npz, IDX
.gz files, CIFAR binary tarballs); their true SHA-256s are patched into the catalogue, and
NBCNN_HOME points at tmp_path, so nothing outside the test's folders is read or written.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import json
import shlex
import shutil
import socket
import tarfile
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ROOT, cli, model_doc
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcnn import datasets
from nbcnn.data import _read_cifar, load_dataset
from nbcnn.errors import ConfigError, DataError
from nbcnn.spec import parse_train, train_to_dict

IDX_FILES = {
    "train-images-idx3-ubyte.gz": ("x_train", 0x0803),
    "train-labels-idx1-ubyte.gz": ("y_train", 0x0801),
    "t10k-images-idx3-ubyte.gz": ("x_test", 0x0803),
    "t10k-labels-idx1-ubyte.gz": ("y_test", 0x0801),
}
N_TRAIN, N_TEST = 12, 5  # per dataset; CIFAR-10 spreads its training images over 5 batches


# ------------------------------------------------------------------------ the HTTP server


class Cut:
    """A response that announces ``len(body)`` bytes, sends half of them and hangs up."""

    def __init__(self, body: bytes):
        self.body = body


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.hits.append(self.path)
        responses = self.server.routes.get(self.path)
        if not responses:
            self.send_error(404)
            return
        # A list plays its responses in turn, the last one for every later request.
        response = responses.pop(0) if len(responses) > 1 else responses[0]
        body = response.body if isinstance(response, Cut) else response
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if isinstance(response, Cut):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.wfile.write(body)

    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1: ``routes`` maps a path to a list of responses (bytes or
    Cut), ``hits`` lists the paths requested, ``url`` is its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.hits = {}, []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ files in real formats


def idx_gz(array: np.ndarray, magic: int) -> bytes:
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes())


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def cifar_records(x: np.ndarray, labels: list[np.ndarray]) -> bytes:
    """CIFAR binary records: the label bytes, then the red, green and blue 32x32 planes."""
    planes = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    return (
        np.concatenate([*(y[:, None] for y in labels), planes], axis=1).astype(np.uint8).tobytes()
    )


def tar_gz(members: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    """A .tar.gz of regular files (and symlinks named in ``links``), in the given order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if name in links:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def cifar_tar(layout: datasets.CifarLayout, arrays: dict) -> bytes:
    """A CIFAR binary tarball holding ``arrays`` (x_*, y_*, and coarse_* for CIFAR-100), the
    training images split evenly over ``layout.train``, plus the archive's text files."""

    def labels(split):
        return [arrays[f"coarse_{split}"], arrays[f"y_{split}"]][-layout.label_bytes :]

    folder = layout.test[0].split("/")[0]
    members = {f"{folder}/readme.html": b"<html></html>"}
    train = cifar_records(arrays["x_train"], labels("train"))
    share = len(train) // len(layout.train)
    for i, name in enumerate(layout.train):
        members[name] = train[i * share : (i + 1) * share]
    members[layout.test[0]] = cifar_records(arrays["x_test"], labels("test"))
    return tar_gz(members)


def make_arrays(info: datasets.DatasetInfo, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Small uint8 images of the dataset's sample shape (without the channel axis for MNIST's
    kind, as its files hold them) and labels that cover every class."""
    shape = info.shape if info.shape[-1] == 3 else info.shape[:2]
    n_train = N_TRAIN - N_TRAIN % len(info.cifar.train) if info.cifar else N_TRAIN
    arrays = {}
    for split, n in (("train", n_train), ("test", N_TEST)):
        arrays[f"x_{split}"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"y_{split}"] = (np.arange(n) * 7 % info.classes).astype(np.uint8)
        arrays[f"coarse_{split}"] = (np.arange(n) % 20).astype(np.uint8)
    return arrays


def dataset_files(info: datasets.DatasetInfo, arrays: dict) -> dict[str, bytes]:
    if info.reader == "npz":
        keys = ("x_train", "y_train", "x_test", "y_test")
        return {"mnist.npz": npz_bytes({k: arrays[k] for k in keys})}
    if info.reader == "idx":
        return {name: idx_gz(arrays[key], magic) for name, (key, magic) in IDX_FILES.items()}
    return {info.files[0].name: cifar_tar(info.cifar, arrays)}


class Served:
    """What the ``served`` fixture set up: each dataset's arrays and file bytes, the server."""

    def __init__(self, server, home: Path, monkeypatch):
        self.server, self.home, self.monkeypatch = server, home, monkeypatch
        self.arrays, self.files = {}, {}
        rng = np.random.default_rng(0)
        for name, info in list(datasets.CATALOGUE.items()):
            self.arrays[name] = make_arrays(info, rng)
            self.serve(name, dataset_files(info, self.arrays[name]))

    def serve(self, name: str, files: dict[str, bytes], responses=None):
        """Serve ``files`` for dataset ``name`` with their SHA-256s patched into the catalogue
        (``responses``, if given, is what the server sends instead of the files' bytes)."""
        info = datasets.CATALOGUE[name]
        remote = tuple(
            datasets.RemoteFile(file, hashlib.sha256(data).hexdigest(), len(data))
            for file, data in files.items()
        )
        self.monkeypatch.setitem(datasets.CATALOGUE, name, dataclasses.replace(info, files=remote))
        self.files[name] = files
        for file, data in files.items():
            self.server.routes[f"/{name}/{file}"] = list((responses or {}).get(file, [data]))

    def folder(self, name: str) -> Path:
        return self.home / "datasets" / name


@pytest.fixture
def served(server, tmp_path, monkeypatch):
    """Every dataset served from 127.0.0.1 (NBCNN_DATASETS_URL), cached under tmp_path
    (NBCNN_HOME), retried without waiting."""
    home = tmp_path / "home"
    monkeypatch.setenv("NBCNN_HOME", str(home))
    monkeypatch.setenv("NBCNN_DATASETS_URL", server.url)
    monkeypatch.setattr(datasets, "RETRY_WAIT_S", 0.0)
    return Served(server, home, monkeypatch)


def load(name: str, **kwargs):
    info = datasets.CATALOGUE[name]
    return load_dataset(name, input_shape=info.shape, validation_split=0.0, **kwargs)


def expected_order(n: int, seed: int = 0) -> np.ndarray:
    """load_dataset shuffles the training set with default_rng(seed) before splitting."""
    return np.random.default_rng(seed).permutation(n)


def scaled(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 pixels as the loaders give them: float32 / 255, samples of ``shape``."""
    return x.reshape(-1, *shape).astype(np.float32) / np.float32(255)


def cache_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize("name", datasets.NAMES)
def test_first_use_downloads_verifies_and_loads_the_official_split(served, name):
    data = load(name)
    arrays = served.arrays[name]
    shape = datasets.CATALOGUE[name].shape
    order = expected_order(len(arrays["x_train"]))
    assert data.x_train.shape == (len(arrays["x_train"]), *shape)
    assert data.x_train.dtype == np.float32 and data.x_test.shape == (N_TEST, *shape)
    np.testing.assert_array_equal(data.x_train, scaled(arrays["x_train"][order], shape))
    np.testing.assert_array_equal(data.y_train, arrays["y_train"][order])
    np.testing.assert_array_equal(data.x_test, scaled(arrays["x_test"], shape))
    np.testing.assert_array_equal(data.y_test, arrays["y_test"])
    assert cache_listing(served.folder(name)) == sorted(served.files[name])
    assert name in data.source and "official split" in data.source


def test_second_load_uses_the_cache_without_the_server(served, server, monkeypatch):
    first = load("fashion_mnist")
    assert len(server.hits) == 4
    monkeypatch.setenv("NBCNN_DATASETS_URL", f"http://127.0.0.1:{closed_port()}")
    again = load("fashion_mnist")
    assert len(server.hits) == 4
    np.testing.assert_array_equal(first.x_train, again.x_train)
    np.testing.assert_array_equal(first.y_test, again.y_test)


def test_cifar100_label_mode_coarse_reads_the_superclass_byte(served):
    arrays = served.arrays["cifar100"]
    fine, coarse = load("cifar100"), load("cifar100", label_mode="coarse")
    order = expected_order(len(arrays["x_train"]))
    np.testing.assert_array_equal(fine.y_test, arrays["y_test"])
    np.testing.assert_array_equal(coarse.y_test, arrays["coarse_test"])
    np.testing.assert_array_equal(coarse.y_train, arrays["coarse_train"][order])
    np.testing.assert_array_equal(fine.x_train, coarse.x_train)


def test_validation_split_comes_from_the_training_set(served):
    data = load_dataset("mnist", input_shape=(28, 28, 1), validation_split=0.25)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (9, 3, N_TEST)


def test_a_transfer_cut_once_is_retried(served, server):
    files = served.files["mnist"]
    served.serve(
        "mnist", files, responses={"mnist.npz": [Cut(files["mnist.npz"]), files["mnist.npz"]]}
    )
    load("mnist")
    assert server.hits == ["/mnist/mnist.npz"] * 2
    assert cache_listing(served.folder("mnist")) == ["mnist.npz"]


def test_without_nbcnn_home_the_platform_cache_folder_is_used(monkeypatch, tmp_path):
    monkeypatch.delenv("NBCNN_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # platformdirs' Linux cache root
    assert datasets.cache_dir("mnist") == tmp_path / "nbcnn" / "datasets" / "mnist"
    monkeypatch.setenv("NBCNN_HOME", str(tmp_path / "h"))
    assert datasets.cache_dir("mnist") == tmp_path / "h" / "datasets" / "mnist"


def test_progress_bar_only_when_asked_or_on_a_terminal(served, capsys):
    datasets.fetch("mnist")  # stderr is not a terminal under pytest: no bar
    assert capsys.readouterr().err == ""
    datasets.fetch("kmnist", progress=True)
    assert "kmnist" not in capsys.readouterr().out  # the bar draws on stderr only
    assert cache_listing(served.folder("kmnist")) == sorted(served.files["kmnist"])


# --------------------------------------------------------------------------- failures


def assert_nothing_cached(served, name):
    """The dataset's folder holds no file: neither a partial download nor a temporary."""
    assert cache_listing(served.folder(name)) == []


def download_error(name: str, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        load(name)
    message = str(info.value)
    assert "\n" not in message
    for fragment in ("nothing of it was cached", "to install it by hand", *fragments):
        assert fragment in message, (fragment, message)
    return message


def test_checksum_mismatch_is_refused_and_nothing_cached(served, server):
    served.server.routes["/mnist/mnist.npz"] = [b"not the published bytes"]
    folder = served.folder("mnist")
    download_error(
        "mnist",
        "SHA-256 is not the published one",
        "mnist/mnist.npz",
        str(folder / "mnist.npz"),
        datasets.CATALOGUE["mnist"].files[0].sha256,
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
    )
    assert_nothing_cached(served, "mnist")
    assert len(server.hits) == 1 + datasets.RETRIES  # a corrupt transfer may pass: retried


def test_interrupted_transfer_names_the_file_and_caches_nothing(served, server):
    archive = served.files["cifar10"]["cifar-10-binary.tar.gz"]
    served.server.routes["/cifar10/cifar-10-binary.tar.gz"] = [Cut(archive)]
    download_error("cifar10", "interrupted", "cifar10/cifar-10-binary.tar.gz")
    assert_nothing_cached(served, "cifar10")
    assert len(server.hits) == 1 + datasets.RETRIES


def test_404_is_not_retried(served, server):
    del served.server.routes["/kmnist/t10k-images-idx3-ubyte.gz"]
    download_error(
        "kmnist",
        "HTTP 404",
        "kmnist/t10k-images-idx3-ubyte.gz",
        "https://codh.rois.ac.jp/kmnist/dataset/kmnist/t10k-images-idx3-ubyte.gz",
    )
    assert server.hits.count("/kmnist/t10k-images-idx3-ubyte.gz") == 1
    # The files fetched before the missing one stay: each is whole and verified.
    assert "t10k-images-idx3-ubyte.gz" not in cache_listing(served.folder("kmnist"))


def test_offline_says_it_cannot_connect(served, monkeypatch):
    monkeypatch.setenv("NBCNN_DATASETS_URL", f"http://127.0.0.1:{closed_port()}")
    download_error("mnist", "cannot connect")
    assert_nothing_cached(served, "mnist")


def test_a_corrupt_cached_file_is_refused_and_kept_out_of_use(served, server):
    target = served.folder("mnist") / "mnist.npz"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"half a download")
    with pytest.raises(DataError, match="refused, not read") as info:
        load("mnist")
    assert str(target) in str(info.value) and "delete it" in str(info.value)
    assert target.read_bytes() == b"half a download" and server.hits == []


def test_a_file_put_in_the_cache_by_hand_is_used_offline(served, monkeypatch):
    folder = served.folder("mnist")
    folder.mkdir(parents=True)
    (folder / "mnist.npz").write_bytes(served.files["mnist"]["mnist.npz"])
    monkeypatch.setenv("NBCNN_DATASETS_URL", f"http://127.0.0.1:{closed_port()}")
    assert len(load("mnist").x_test) == N_TEST


def test_a_mirror_url_must_be_http(served, monkeypatch):
    monkeypatch.setenv("NBCNN_DATASETS_URL", "file:///srv/mirror")
    with pytest.raises(ConfigError, match="NBCNN_DATASETS_URL: must be an http"):
        load("mnist")


SYMLINK = object()
CIFAR10 = datasets.CATALOGUE["cifar10"].cifar


def cifar10_with(member: str, data) -> bytes:
    """A CIFAR-10 tarball (two blank records a member) whose ``member`` holds ``data`` instead,
    or is left out (None), or is a symlink (SYMLINK)."""
    members = {name: bytes(2 * (1 + 3072)) for name in (*CIFAR10.train, *CIFAR10.test)}
    if data is None:
        del members[member]
    elif data is not SYMLINK:
        members[member] = data
    return tar_gz(members, links=(member,) if data is SYMLINK else ())


@pytest.mark.parametrize(
    "archive, match",
    [
        (cifar10_with(CIFAR10.test[0], None), "has no member cifar-10-batches-bin/test_batch.bin"),
        (cifar10_with(CIFAR10.train[0], SYMLINK), "data_batch_1.bin is not a regular file"),
        (cifar10_with(CIFAR10.train[0], bytes(3073 + 5)), "not a whole number of 3073-byte"),
        (cifar10_with(CIFAR10.test[0], b""), "has 0 bytes"),
        (b"\x1f\x8b not really gzip", "truncated or corrupt archive"),
    ],
)
def test_a_defective_cifar_archive_is_one_error_naming_it(served, archive, match):
    served.serve("cifar10", {"cifar-10-binary.tar.gz": archive})
    with pytest.raises(DataError, match=match) as info:
        load("cifar10")
    assert str(served.folder("cifar10") / "cifar-10-binary.tar.gz") in str(info.value)


@settings(max_examples=20, deadline=None)
@given(
    per_member=st.lists(st.integers(1, 3), min_size=2, max_size=2),
    label_mode=st.sampled_from(datasets.LABEL_MODES),
    seed=st.integers(0, 2**16),
)
def test_cifar_reader_round_trips_records(per_member, label_mode, seed):
    rng = np.random.default_rng(seed)
    members = ("b/one.bin", "b/two.bin")
    x = rng.integers(0, 256, (sum(per_member), 32, 32, 3), dtype=np.uint8)
    coarse, fine = rng.integers(0, 20, len(x)), rng.integers(0, 100, len(x))
    records = cifar_records(x, [coarse, fine])
    cut = per_member[0] * (2 + 3072)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.tar.gz"
        path.write_bytes(
            tar_gz({members[0]: records[:cut], "b/x.txt": b"", members[1]: records[cut:]})
        )
        [(images, labels)] = _read_cifar(str(path), (members,), 2, label_mode)
    np.testing.assert_array_equal(images, scaled(x, x.shape[1:]))
    np.testing.assert_array_equal(labels, fine if label_mode == "fine" else coarse)


# ------------------------------------------------------------------------------ config


def test_label_mode_and_path_are_checked_in_the_train_section():
    assert (
        train_to_dict(parse_train({"data": {"dataset": "cifar100"}}, default_output="o"))["data"][
            "label_mode"
        ]
        == "fine"
    )
    coarse = parse_train(
        {"data": {"dataset": "cifar100", "label_mode": "coarse"}}, default_output="o"
    )
    assert coarse.label_mode == "coarse"
    assert parse_train(train_to_dict(coarse), default_output="o") == coarse
    with pytest.raises(ConfigError, match="train.data.label_mode: label_mode 'coarse' applies"):
        parse_train({"data": {"dataset": "mnist", "label_mode": "coarse"}}, default_output="o")
    with pytest.raises(ConfigError, match="train.data.label_mode"):
        parse_train({"data": {"dataset": "cifar100", "label_mode": "super"}}, default_output="o")
    with pytest.raises(ConfigError, match="train.data.path: dataset 'mnist' is downloaded"):
        parse_train({"data": {"dataset": "mnist", "path": "m.npz"}}, default_output="o")


def test_an_unknown_dataset_name_suggests_the_close_one():
    with pytest.raises(ConfigError, match="did you mean 'fashion_mnist'"):
        parse_train({"data": {"dataset": "fashion-mnist"}}, default_output="o")


# --------------------------------------------------------------------------------- CLI


def test_cli_data_list_and_fetch(served, server):
    listed = cli("data", "list")
    assert listed.exit_code == 0, listed.stderr
    for name in datasets.NAMES:
        assert name in listed.stdout

    fetched = cli("data", "fetch", "mnist")
    assert fetched.exit_code == 0, fetched.stderr
    assert fetched.stdout.startswith("mnist: 1 file, ")
    assert "SHA-256 verified" in fetched.stdout and str(served.folder("mnist")) in fetched.stdout
    again = cli("data", "fetch", "mnist")  # idempotent: verified in the cache, not fetched
    assert again.exit_code == 0 and server.hits == ["/mnist/mnist.npz"]

    rows = {row["name"]: row for row in json.loads(cli("data", "list", "--json").stdout)}
    assert rows["mnist"]["cached"] == "yes" and rows["kmnist"]["cached"] == "no"
    assert rows["mnist"]["folder"] == str(served.folder("mnist"))
    assert rows["cifar100"]["coarse_classes"] == 20
    assert rows["mnist"]["files"][0]["url"] == f"{server.url}/mnist/mnist.npz"

    everything = cli("data", "fetch", "--all")
    assert everything.exit_code == 0, everything.stderr
    rows = json.loads(cli("data", "list", "--json").stdout)
    assert [row["cached"] for row in rows] == ["yes"] * len(datasets.NAMES)


def test_cli_data_fetch_errors_are_one_line(served, server, monkeypatch):
    unknown = cli("data", "fetch", "mnsit")
    assert unknown.exit_code == 2 and "did you mean 'mnist'" in unknown.stderr
    assert cli("data", "fetch").exit_code == 2
    assert cli("data", "fetch", "mnist", "--all").exit_code == 2
    monkeypatch.setenv("NBCNN_DATASETS_URL", f"http://127.0.0.1:{closed_port()}")
    offline = cli("data", "fetch", "mnist")
    lines = offline.stderr.strip().splitlines()
    assert offline.exit_code == 2 and len(lines) == 1 and "cannot connect" in lines[0]
    assert server.hits == []


def test_cli_train_with_dataset_mnist_from_the_local_server(served, write_config, tmp_path):
    doc = model_doc(
        {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
    )
    doc["train"] = {"data": {"dataset": "mnist"}, "epochs": 1, "batch_size": 4}
    run = tmp_path / "run"
    result = cli("train", write_config(doc), "--output", run)
    assert result.exit_code == 0, result.stderr
    assert "mnist" in result.stdout
    recorded = yaml.safe_load((run / "config.yaml").read_text())["train"]["data"]
    assert recorded["dataset"] == "mnist" and recorded["label_mode"] == "fine"
    assert cache_listing(served.folder("mnist")) == ["mnist.npz"]


@pytest.mark.parametrize("config", ["mnist_convnet.yaml", "lenet5.yaml"])
def test_shipped_mnist_configs_train_from_a_clone(served, config, tmp_path):
    """configs/ name no file outside the repository: they fetch MNIST (here, the local one)."""
    path = ROOT / "configs" / config
    train = yaml.safe_load(path.read_text())["train"]
    assert train["data"]["dataset"] == "mnist" and "path" not in train["data"]
    result = cli("train", path, "--epochs", "1", "--output", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert "official split 12 train+validation / 5 test" in result.stdout


def test_the_download_examples_of_docs_datasets_md_run_as_written(served, tmp_path, monkeypatch):
    """docs/datasets.md's blocks marked as needing the network (tests/test_docs.py runs the
    rest), through the real CLI, served by 127.0.0.1, in a folder with a copy of configs/."""
    from test_docs import steps

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    shown = steps("docs/datasets.md", network=True)
    assert [s.kind for s in shown] == ["shell"] * len(shown) and len(shown) >= 2
    for step in shown:
        words = shlex.split(step.text)
        assert words[0] == "nbcnn", step.text
        result = cli(*words[1:])
        assert result.exit_code == 0, (step.text, result.stderr)
    assert (tmp_path / "runs" / "mnist_convnet" / "model.npz").is_file()
