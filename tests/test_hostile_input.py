"""Hostile input that used to hang nbcnn, fill its memory or print invalid output (issue 16,
findings 4, 5, 6, 7 and 11, and the variants its verification of "bounded reading" found:
bzip2 npz members, .npy headers that understate their data, unbounded name listings, FIFOs):
each case goes through the real CLI and ends with exit code 2 and one line naming the file
and the key, fast, or, for JSON, with output any parser accepts.

Cases whose bug was a hang run in a child process with a timeout, so that a regression fails
the test instead of stalling the suite.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from helpers import ROOT, cli, model_doc
from PIL import Image
from test_data import IDX_NAMES
from test_robustness import error_line

import nbcnn

DENSE = [{"type": "Flatten"}, {"type": "Dense", "units": 10, "activation": "softmax"}]

# Runs CLI calls in-process, one after another, in a fresh interpreter; prints for each its
# exit code, stderr and seconds. Timing inside the child leaves out the interpreter's start.
# HANG: far below the minute and more that the bugs hung for, far above what a loaded host
# needs for these refusals (0.2-1 s measured).
HANG = 10
_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from helpers import cli
found = []
for args in json.loads(sys.argv[2]):
    start = time.monotonic()
    result = cli(*args)
    found.append((result.exit_code, result.stderr, time.monotonic() - start))
print(json.dumps(found))
"""


def cli_calls_in_child(*calls: list, timeout: float = 60) -> list[tuple[int, str, float]]:
    """Run each CLI call (a list of arguments) in one child process; a hang fails the test."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(ROOT / "tests"),
            json.dumps([list(map(str, c)) for c in calls]),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return [tuple(found) for found in json.loads(proc.stdout)]


def alias_bomb(levels: int = 21) -> str:
    """Nested YAML lists with 3 aliases a level: 63 aliases, under the 64 cap, in ~500 bytes
    that expand to 4**21 (4e12) leaves."""
    text = "&a0 [1]"
    for k in range(1, levels + 1):
        text = f"&a{k} [{text}, *a{k - 1}, *a{k - 1}, *a{k - 1}]"
    return text


def test_alias_bomb_in_any_key_is_quoted_by_its_start_and_fails_fast(tmp_path):
    """Finding 5: error messages quote a bounded prefix of a value and never expand it; the
    same ~500-byte bomb hung for over a minute in any key whose message showed the value."""
    bomb = alias_bomb()
    model = "input_shape: [8, 8, 1]\nlayers:\n  - {type: Flatten}\n  - {type: Dense, units: 2}\n"
    configs = {
        "layers[0].units": f"input_shape: [4]\nlayers:\n  - {{type: Dense, units: {bomb}}}\n",
        "train.epochs": f"{model}train:\n  epochs: {bomb}\n",
        "train.optimizer": f"{model}train:\n  optimizer: {bomb}\n",
        "name": f"name: {bomb}\n{model}",
        "input_shape": f"input_shape: {bomb}\nlayers:\n  - {{type: Flatten}}\n",
    }
    paths = {}
    for key, text in configs.items():
        paths[key] = tmp_path / f"{key.replace('[', '_').replace(']', '_')}.yaml"
        paths[key].write_text(text)
        assert len(text) < 700
    found = cli_calls_in_child(*(["summary", path] for path in paths.values()), timeout=30)
    for (key, path), (code, stderr, seconds) in zip(paths.items(), found):
        assert code == 2, (key, stderr[:300])
        line = error_line(stderr, f"{path}: {key}: ", "[[[[")
        assert len(line) < len(str(path)) + 250, line
        assert seconds < HANG, (key, seconds)


def test_devices_and_pipes_as_config_are_read_with_a_byte_cap(tmp_path, write_config):
    """Finding 6: the 1 MiB cap held only for a file's stated size (0 for devices and pipes):
    /dev/zero ended in a MemoryError after 44 s, /dev/urandom read forever, and 100 MB through
    a pipe parsed for a minute. Devices are refused; a pipe is read up to the cap, no further."""
    zero, urandom = cli_calls_in_child(["summary", "/dev/zero"], ["summary", "/dev/urandom"])
    for (code, stderr, seconds), device in ((zero, "/dev/zero"), (urandom, "/dev/urandom")):
        assert code == 2 and seconds < HANG, (device, seconds, stderr[:300])
        error_line(stderr, f"{device}: not a regular file or a pipe")

    config = write_config(model_doc(*DENSE, input_shape=(8, 8, 1))).read_bytes()
    piped = subprocess.run(
        [sys.executable, "-m", "nbcnn.cli", "summary", "/dev/stdin", "--json"],
        input=config,
        capture_output=True,
        timeout=30,
    )
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["total_params"] == 650

    # A comment line of 100 MB: the reader stops after the cap, and the writer's next write
    # fails (a reader of everything would take all 100 MB and parse for a minute).
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbcnn.cli", "summary", "/dev/stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    sent = 0
    try:
        proc.stdin.write(config + b"#")
        for _ in range(100):
            sent += proc.stdin.write(b"x" * (1 << 20))
    except BrokenPipeError:
        pass
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2 and sent < 8 << 20, (sent, stderr)
    error_line(stderr.decode(), "/dev/stdin: config is over 1,048,576 bytes")


def test_weights_from_a_device_are_refused_naming_the_file(tmp_path, write_config):
    """Finding 6: `--weights /dev/zero`, or a weights file that is a symlink to it, ended in a
    traceback after reading forever; only regular files are read as .npz."""
    doc = model_doc(*DENSE, input_shape=(8, 8, 1))
    doc["train"] = {"data": {"dataset": "synthetic"}}
    config = write_config(doc)
    link = tmp_path / "model.npz"
    link.symlink_to("/dev/zero")
    found = cli_calls_in_child(
        ["evaluate", config, "--weights", "/dev/zero"],
        ["predict", config, link, "--weights", link],
    )
    for (code, stderr, seconds), weights in zip(found, ("/dev/zero", link)):
        assert code == 2 and seconds < HANG, (weights, seconds, stderr[:300])
        error_line(stderr, f"{weights}: not a regular file")


def _idx_header(magic: int, *dims: int) -> bytes:
    return b"".join(int(v).to_bytes(4, "big") for v in (magic, *dims))


def _zeros_gz(path, header: bytes, nbytes: int) -> None:
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + bytes(nbytes))


def _npz_of_zeros(path, compressed: bool, **shapes) -> None:
    """An .npz of uint8 zero arrays of the given shapes (deflated: a few KB per 16 MB)."""
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, shape in shapes.items():
            member = io.BytesIO()
            np.save(member, np.zeros(shape, np.uint8))
            archive.writestr(f"{name}.npy", member.getvalue())


def test_decompression_bombs_are_refused_before_they_are_expanded(
    tmp_path, write_config, monkeypatch
):
    """Finding 7: a small .gz IDX or deflated .npz whose header declares more than memory
    can hold (once converted to float32) became a multi-GiB copy and a MemoryError traceback.
    The declared size, with the float32 and shuffled copies, is now checked first; here the
    machine has 40 MB and each file declares 16-20 MB of zeros (~150 MB once loaded)."""
    monkeypatch.setattr("nbcnn.resources.available_memory", lambda: 40 << 20)
    doc = model_doc(*DENSE, input_shape=(28, 28, 1))
    doc["train"] = {"epochs": 1, "batch_size": 16, "output": str(tmp_path / "run")}
    config = write_config(doc)
    n = 20_000  # 20,000 28x28 images: 15.7 MB stored, 173 MB once loaded
    idx = tmp_path / "idx"
    idx.mkdir()
    images = idx / (IDX_NAMES["t10k"][0] + ".gz")
    _zeros_gz(images, _idx_header(0x803, n, 28, 28), n * 784)
    _zeros_gz(idx / (IDX_NAMES["t10k"][1] + ".gz"), _idx_header(0x801, n), n)
    data = tmp_path / "data.npz"
    _npz_of_zeros(data, True, x_train=(n, 28, 28), y_train=(n,), x_test=(10, 28, 28), y_test=(10,))
    inputs = tmp_path / "inputs.npz"
    _npz_of_zeros(inputs, True, x=(n, 28, 28))
    weights = tmp_path / "w.npz"
    nbcnn.load_model(config).initialize(0).save_weights(weights)
    assert max(os.path.getsize(p) for p in (images, data, inputs)) < 200_000

    for args, file, what in (
        (["train", config, "--data", idx], images, "images"),
        (["train", config, "--data", data], data, "arrays"),
        (["predict", config, inputs, "--weights", weights], inputs, "arrays"),
    ):
        result = cli(*args)
        assert result.exit_code == 2, result.stderr
        error_line(result.stderr, f"{file}: its {what} need", "of memory is available")

    # A .gz that holds more than its header declares is decompressed no further than that.
    monkeypatch.undo()
    asked = []
    read = gzip.GzipFile.read
    monkeypatch.setattr(
        gzip.GzipFile, "read", lambda f, size=-1: asked.append(size) or read(f, size)
    )
    labels = idx / (IDX_NAMES["t10k"][1] + ".gz")
    _zeros_gz(labels, _idx_header(0x801, 10), 50 << 20)
    _zeros_gz(images, _idx_header(0x803, 10, 28, 28), 10 * 784)
    result = cli("train", config, "--data", idx)
    assert result.exit_code == 2, result.stderr
    error_line(result.stderr, f"{labels}: longer than declared")
    assert all(0 <= size <= 10 * 784 + 1 for size in asked), asked  # never "all of it" (-1)


def _npy_header(shape) -> bytes:
    """The .npy magic and header of a uint8 array of ``shape``, without its data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    return header.getvalue()


def _zip_member(path, name: str, method: int, *chunks: bytes, mode: str = "w") -> None:
    """Add member ``name`` written as ``chunks`` (streamed: nothing is held whole)."""
    with (
        zipfile.ZipFile(
            path, mode, method, compresslevel=1 if method == zipfile.ZIP_DEFLATED else None
        ) as archive,
        archive.open(name, "w", force_zip64=True) as member,
    ):
        for chunk in chunks:
            member.write(chunk)


def _weights_and_config(tmp_path, write_config):
    doc = model_doc(*DENSE, input_shape=(8, 8, 1))
    doc["train"] = {"data": {"dataset": "synthetic"}, "output": str(tmp_path / "run")}
    config = write_config(doc)
    weights = tmp_path / "w.npz"
    nbcnn.load_model(config).initialize(0).save_weights(weights)
    return config, weights


def test_bzip2_and_lzma_members_are_refused_before_they_are_opened(
    tmp_path, write_config, monkeypatch
):
    """Issue 16, bounded reading: zipfile hands bzip2 and LZMA data to their decompressors with
    no output limit, so in a 1,016-byte npz a member whose header declared 768 bytes expanded
    to 1 GiB at its first read (predict: 10 s, 2.15 GB). A member compressed otherwise than
    np.savez, np.savez_compressed and Keras write is refused by its listing, unopened, in
    predict, train --data, evaluate --weights and import-keras-weights."""
    config, weights = _weights_and_config(tmp_path, write_config)
    # 768 bytes declared, 16 MiB more held: 45 bytes once bzip2-compressed.
    bomb = (_npy_header((12, 8, 8)), bytes(768), bytes(16 << 20))
    inputs = tmp_path / "inputs.npz"
    _zip_member(inputs, "x.npy", zipfile.ZIP_BZIP2, *bomb)
    data = tmp_path / "data.npz"
    _zip_member(data, "x_train.npy", zipfile.ZIP_BZIP2, *bomb)
    for key in ("y_train", "x_test", "y_test"):
        member = io.BytesIO()
        np.save(member, np.zeros((12, 8, 8) if key == "x_test" else 12, np.uint8))
        _zip_member(data, f"{key}.npy", zipfile.ZIP_STORED, member.getvalue(), mode="a")
    lzma_weights = tmp_path / "lzma.npz"
    with np.load(weights) as arrays:
        for name in arrays:
            member = io.BytesIO()
            np.save(member, arrays[name])
            _zip_member(lzma_weights, f"{name}.npy", zipfile.ZIP_LZMA, member.getvalue(), mode="a")
    keras = tmp_path / "model.keras"
    _zip_member(keras, "model.weights.h5", zipfile.ZIP_BZIP2, bytes(16 << 20))
    opened = []
    for module, name in ((bz2, "BZ2Decompressor"), (zipfile, "LZMADecompressor")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda real=real: opened.append(real) or real())

    for args, file, member, method in (
        (["predict", config, inputs, "--weights", weights], inputs, "x.npy", "bzip2"),
        (["train", config, "--data", data], data, "x_train.npy", "bzip2"),
        (["evaluate", config, "--weights", lzma_weights], lzma_weights, "dense/kernel.npy", "lzma"),
        (
            ["import-keras-weights", config, keras, "--out", tmp_path / "k.npz"],
            keras,
            "model.weights.h5",
            "bzip2",
        ),
    ):
        result = cli(*args)
        assert result.exit_code == 2, result.stderr
        error_line(
            result.stderr, f"{file}: member '{member}' is {method}-compressed", "stored or deflated"
        )
    assert opened == []
    assert not (tmp_path / "run").exists()


def test_npy_data_and_headers_are_read_no_further_than_declared(
    tmp_path, write_config, monkeypatch
):
    """Issue 16, bounded reading: a deflated member that holds more than its .npy header
    declares is read to the declared size and one byte more, then refused (it was accepted);
    a 2.0 header whose length field says 4 GiB is refused before it is read (NumPy reads such
    a header in full before its own 10,000-byte check)."""
    config, weights = _weights_and_config(tmp_path, write_config)
    longer = tmp_path / "longer.npz"
    _zip_member(longer, "x.npy", zipfile.ZIP_DEFLATED, _npy_header((12, 8, 8)), bytes(16 << 20))
    long_header = tmp_path / "long_header.npz"
    magic = np.lib.format.magic(2, 0) + (2**32 - 1).to_bytes(4, "little")
    _zip_member(long_header, "x.npy", zipfile.ZIP_DEFLATED, magic, b" " * (16 << 20))
    asked = []
    read = zipfile.ZipExtFile.read
    monkeypatch.setattr(zipfile.ZipExtFile, "read", lambda f, n=-1: asked.append(n) or read(f, n))

    for inputs, message in (
        (longer, "member 'x.npy': longer than the 768 bytes of data its header declares"),
        (long_header, "its header declares 4,294,967,295 bytes; at most 10,000"),
    ):
        asked.clear()
        result = cli("predict", config, inputs, "--weights", weights)
        assert result.exit_code == 2, result.stderr
        error_line(result.stderr, f"{inputs}: ", message)
        # The weights' reads included (3 KB): never "all of it" (-1), nor the 16 MiB held.
        assert all(n is not None and n >= 0 for n in asked), asked
        assert sum(asked) < 30_000, sum(asked)


def test_convolve_kernel_is_checked_by_its_header_before_it_is_read(tmp_path, monkeypatch):
    """Issue 16, bounded reading: `convolve --kernel k.npy` with a 144-byte file whose header
    declares 100000 x 100000 ended in a MemoryError traceback (np.load allocated 37 GiB
    first). The header is read alone and its size checked against the file and the memory."""
    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    lying = tmp_path / "k.npy"
    with open(lying, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)}
        )
        f.write(bytes(16))
    assert os.path.getsize(lying) == 144
    large = tmp_path / "large.npy"
    np.save(large, np.ones((200, 200), np.float32))  # 160 KB, 320 KB with its float32 copy
    monkeypatch.setattr("nbcnn.resources.available_memory", lambda: 100_000)

    for kernel, message in (
        (lying, "its header declares (100000, 100000) of float32 = 40,000,000,000 bytes"),
        (large, "the kernel and its float32 copy need"),
    ):
        result = cli("convolve", image, "--out", tmp_path / "out.png", "--kernel", kernel)
        assert result.exit_code == 2, result.stderr
        error_line(result.stderr, f"{kernel}: {message}")
    assert not (tmp_path / "out.png").exists()


def test_error_messages_quote_a_few_array_names_and_count_the_rest(tmp_path, write_config):
    """Issue 16, bounded reading: errors listed a file's array names in full, so two 60 KB
    names gave 120 KB "one-line" errors in predict, train --data and evaluate --weights. Each
    name is now quoted by its start, at most three of them, and the rest counted."""
    config, _ = _weights_and_config(tmp_path, write_config)
    names = tmp_path / "names.npz"
    np.savez(
        names,
        **{"a" * 60_000: np.zeros((2, 8, 8)), "b" * 60_000: np.zeros(2)},
        c=np.zeros(1),
        d=np.zeros(1),
        e=np.zeros(1),
    )

    for args, listing in (
        (["predict", config, names, "--weights", tmp_path / "w.npz"], "holds arrays 'aaa"),
        (["train", config, "--data", names], "(has 'aaa"),
        (["evaluate", config, "--weights", names], "the file has 'aaa"),
    ):
        result = cli(*args)
        assert result.exit_code == 2, result.stderr
        line = error_line(result.stderr, f"{names}: ", listing, "'bbb", "and 2 more")
        assert len(line) < 500, len(line)
        assert "'c'" in line and "'d'" not in line, line


def test_npz_files_with_too_many_members_are_refused_before_their_headers(
    tmp_path, write_config, monkeypatch
):
    """Issue 16, bounded reading: a 45 MB npz of 200,000 one-value arrays kept `predict`
    reading headers for 16 s, then printed all their names (2 MB). More than 10,000 members
    are refused at once, by the count in the zip's end record or, should that understate it,
    by the listing itself; a listing longer than 1 KiB a member allowed is refused unparsed."""
    config, weights = _weights_and_config(tmp_path, write_config)
    one = io.BytesIO()
    np.save(one, np.zeros(1, np.uint8))
    many = tmp_path / "many.npz"
    with zipfile.ZipFile(many, "w") as archive:
        for i in range(10_001):
            archive.writestr(f"m{i}.npy", one.getvalue())
    # The same file with an end record that states one member (its last 22 bytes; count at 8).
    understated = tmp_path / "understated.npz"
    content = bytearray(many.read_bytes())
    content[-14:-10] = (1).to_bytes(2, "little") * 2
    understated.write_bytes(bytes(content))
    long_listing = tmp_path / "long_listing.npz"
    with zipfile.ZipFile(long_listing, "w") as archive:
        for i in range(180):  # 180 names of 60,000 bytes: a 10.8 MB listing
            archive.writestr(f"{i:03}{'n' * 59_993}.npy", one.getvalue())

    parsed = []  # the listing entries that ZipFile parses
    init = zipfile.ZipInfo.__init__
    monkeypatch.setattr(
        zipfile.ZipInfo, "__init__", lambda info, *a, **k: parsed.append(1) or init(info, *a, **k)
    )

    for args, file, message in (
        (["predict", config, many, "--weights", weights], many, "holds 10,001 members"),
        (["train", config, "--data", many], many, "holds 10,001 members"),
        (["evaluate", config, "--weights", understated], understated, "holds 10,001 members"),
        (
            ["predict", config, long_listing, "--weights", weights],
            long_listing,
            "its zip listing takes 10,808,280 bytes; at most 10,240,000",
        ),
    ):
        parsed.clear()
        result = cli(*args)
        assert result.exit_code == 2, result.stderr
        error_line(result.stderr, f"{file}: {message}", "refused")
        if file != understated:  # refused by its end record (the weights' 2 entries aside)
            assert len(parsed) < 10, len(parsed)


def test_fifos_are_refused_before_they_are_opened(tmp_path, write_config):
    """Issue 16, bounded reading: opening a FIFO waits for a writer, so `plot` hung on a run
    whose metrics.jsonl was one, and so did an image argument of convolve, featuremaps and
    predict, a --kernel .npy, and a Keras weights file. Each is refused as not a regular
    file before it is opened."""
    config, weights = _weights_and_config(tmp_path, write_config)
    run = tmp_path / "run"
    run.mkdir()
    for fifo in (
        run / "metrics.jsonl",
        tmp_path / "in.png",
        tmp_path / "k.npy",
        tmp_path / "k.weights.h5",
    ):
        os.mkfifo(fifo)
    image = tmp_path / "in.png"
    real = tmp_path / "real.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(real)
    out = tmp_path / "out.png"
    calls = {
        run / "metrics.jsonl": ["plot", run],
        image: ["convolve", image, "--out", out],
        tmp_path / "k.npy": ["convolve", real, "--out", out, "--kernel", tmp_path / "k.npy"],
        tmp_path / "k.weights.h5": [
            "import-keras-weights",
            config,
            tmp_path / "k.weights.h5",
            "--out",
            tmp_path / "k.npz",
        ],
    }
    found = cli_calls_in_child(
        *calls.values(),
        ["featuremaps", config, image, "--weights", weights, "--out", out],
        ["predict", config, image, "--weights", weights],
        timeout=30,
    )
    for (code, stderr, seconds), fifo in zip(found, [*calls, image, image]):
        assert code == 2 and seconds < HANG, (fifo, seconds, stderr[:300])
        error_line(stderr, f"{fifo}: not a regular file")
    assert not out.exists()


# predict's forward pass overflows on purpose here (its NumPy warnings are expected)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_evaluate_json_prints_non_finite_values_as_null(tmp_path, write_config):
    """Finding 4: weights that overflow gave `evaluate --json` a loss of NaN, printed as `NaN`
    (not JSON); non-finite floats are now null, with a warning on stderr naming them."""
    doc = model_doc(*DENSE, input_shape=(8, 8, 1))
    doc["train"] = {"data": {"dataset": "synthetic"}}
    config = write_config(doc)
    model = nbcnn.load_model(config).initialize(0)
    model.set_weights([np.full_like(w, 3e38) for w in model.get_weights()])  # finite float32
    weights = tmp_path / "huge.npz"
    model.save_weights(weights)

    def strict(constant):
        raise AssertionError(f"{constant} is not JSON")

    result = cli("evaluate", config, "--weights", weights, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout, parse_constant=strict)
    assert report["loss"] is None and 0 <= report["accuracy"] <= 1
    assert result.stderr.strip() == (
        "nbcnn: warning: loss not finite (NaN or infinity): printed as null"
    )

    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=np.ones((2, 8, 8), np.uint8))
    result = cli("predict", config, inputs, "--weights", weights, "--json", "--top", "1")
    assert result.exit_code == 0, result.stderr
    predictions = json.loads(result.stdout, parse_constant=strict)
    assert [p["top"][0]["probability"] for p in predictions] == [None, None]
    assert "[0].top[0].probability" in result.stderr


def test_uint64_label_beyond_int64_is_refused_naming_the_file(tmp_path, write_config):
    """Finding 11: a uint64 label 2**64 - 1 wrapped to -1 in the cast to int64 and was refused
    later without a file name, after config.yaml was written; it is checked in its own dtype."""
    data = tmp_path / "data.npz"
    labels = np.arange(20, dtype=np.uint64) % 10
    labels[3] = 2**64 - 1
    x = np.zeros((20, 8, 8), np.uint8)
    np.savez(data, x_train=x, y_train=labels, x_test=x[:5], y_test=labels[:5] * 0)
    doc = model_doc(*DENSE, input_shape=(8, 8, 1))
    out = tmp_path / "run"
    doc["train"] = {"data": {"dataset": "npz", "path": str(data)}, "output": str(out)}
    result = cli("train", write_config(doc))
    assert result.exit_code == 2
    error_line(result.stderr, f"{data}: y_train has label 18446744073709551615")
    assert not (out / "config.yaml").exists()
