"""Dataset loaders on small files written into tmp_path, plus the real MNIST t10k files."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from nbcnn.data import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    MAX_ARRAY_BYTES,
    batches,
    load_dataset,
    load_images,
    read_idx,
)
from nbcnn.errors import ConfigError, DataError

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array: big-endian magic, one uint32 per dim, then the bytes."""
    magic = magic if magic is not None else 0x0800 | array.ndim
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def write(path: Path, payload: bytes, gz: bool = False) -> Path:
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def make_images(n: int, rng: np.random.Generator, size: int = 6) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), rng.integers(0, 10, n)


def write_idx_split(folder: Path, split: str, n: int, gz: bool, seed: int = 0):
    x, y = make_images(n, np.random.default_rng(seed))
    write(folder / IDX_NAMES[split][0], idx_bytes(x), gz)
    write(folder / IDX_NAMES[split][1], idx_bytes(y.astype(np.uint8)), gz)
    return x, y


def assert_data_error(named, match: str, **kwargs) -> DataError:
    """Load with ``kwargs``; expect a one-line DataError that names file ``named`` and matches."""
    with pytest.raises(DataError, match=match) as info:
        load_dataset(**{"validation_split": 0.0, "input_shape": (6, 6, 1), **kwargs})
    assert str(named) in str(info.value)
    assert "\n" not in str(info.value)
    return info.value


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_full_set(tmp_path, gz):
    x_train, y_train = write_idx_split(tmp_path, "train", 20, gz, seed=1)
    x_test, y_test = write_idx_split(tmp_path, "t10k", 10, gz, seed=2)
    d = load_dataset("idx", path=str(tmp_path), input_shape=(6, 6, 1), validation_split=0.0)
    np.testing.assert_array_equal(d.x_test[..., 0], x_test / np.float32(255))
    np.testing.assert_array_equal(d.y_test, y_test)
    assert d.x_train.shape == (20, 6, 6, 1) and d.x_train.dtype == np.float32
    assert d.y_train.dtype == np.int64
    # The training set is shuffled, not changed.
    assert sorted(d.y_train.tolist()) == sorted(y_train.tolist())
    assert "t10k files only" not in d.source


def test_idx_t10k_only_is_split_80_20(tmp_path):
    x, y = write_idx_split(tmp_path, "t10k", 50, gz=True)
    d = load_dataset("idx", path=str(tmp_path), input_shape=(6, 6, 1), validation_split=0.0)
    assert len(d.x_train) == 40
    np.testing.assert_array_equal(d.x_test[..., 0], x[40:] / np.float32(255))
    np.testing.assert_array_equal(d.y_test, y[40:])
    assert "t10k files only" in d.source


def test_read_idx_raw_and_gz_agree(tmp_path):
    x, _ = make_images(3, np.random.default_rng(0))
    raw = write(tmp_path / "a", idx_bytes(x))
    gz = write(tmp_path / "b", idx_bytes(x), gz=True)
    np.testing.assert_array_equal(read_idx(str(raw), IDX_IMAGES_MAGIC), x)
    np.testing.assert_array_equal(read_idx(str(gz), IDX_IMAGES_MAGIC), x)


def idx_case(tmp_path, images: bytes, labels: bytes, gz: bool = False) -> Path:
    """A t10k pair with the given bytes; returns the images file (the one usually at fault)."""
    write(tmp_path / IDX_NAMES["t10k"][1], labels, gz)
    return write(tmp_path / IDX_NAMES["t10k"][0], images, gz)


def good_pair(n=5):
    x, y = make_images(n, np.random.default_rng(0))
    return idx_bytes(x), idx_bytes(y.astype(np.uint8))


def test_idx_wrong_magic(tmp_path):
    images, labels = good_pair()
    idx_case(tmp_path, images, images)  # an images file where the labels file should be
    labels_file = tmp_path / IDX_NAMES["t10k"][1]
    assert_data_error(labels_file, "magic number 0x00000803", dataset="idx", path=str(tmp_path))


def test_idx_raw_file_that_is_gzip_gets_a_hint(tmp_path):
    images, labels = good_pair()
    bad = idx_case(tmp_path, gzip.compress(images), labels)
    assert_data_error(bad, "name it .gz", dataset="idx", path=str(tmp_path))


@pytest.mark.parametrize("end", [3, 10, -20])  # inside the magic, the dims, the data
def test_idx_truncated_raw(tmp_path, end):
    images, labels = good_pair()
    bad = idx_case(tmp_path, images[:end], labels)
    assert_data_error(bad, "truncated|declares", dataset="idx", path=str(tmp_path))


def test_idx_extra_bytes(tmp_path):
    images, labels = good_pair()
    for gz, match in ((False, "declares"), (True, "longer than declared")):
        folder = tmp_path / str(gz)
        folder.mkdir()
        bad = idx_case(folder, images + b"\0", labels, gz=gz)
        assert_data_error(bad, match, dataset="idx", path=str(folder))


def test_idx_truncated_gzip(tmp_path):
    images, labels = good_pair()
    write(tmp_path / IDX_NAMES["t10k"][1], labels, gz=True)
    bad = tmp_path / (IDX_NAMES["t10k"][0] + ".gz")
    bad.write_bytes(gzip.compress(images)[:-12])
    assert_data_error(bad, "truncated or corrupt", dataset="idx", path=str(tmp_path))


def test_idx_gzip_truncated_inside_data(tmp_path):
    images, labels = good_pair()
    bad = idx_case(tmp_path, images[:-7], labels, gz=True)  # a valid gzip of too few bytes
    assert_data_error(bad, "truncated", dataset="idx", path=str(tmp_path))


def test_idx_corrupt_gzip(tmp_path):
    images, labels = good_pair()
    write(tmp_path / IDX_NAMES["t10k"][1], labels, gz=True)
    bad = tmp_path / (IDX_NAMES["t10k"][0] + ".gz")
    bad.write_bytes(b"not gzip at all")
    assert_data_error(bad, "truncated or corrupt", dataset="idx", path=str(tmp_path))


def test_idx_huge_header_refused_before_allocating(tmp_path):
    header = IDX_IMAGES_MAGIC.to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in (60000, 2**16, 2**16)
    )
    assert 60000 * 2**32 > MAX_ARRAY_BYTES
    _, labels = good_pair()
    for gz in (False, True):
        folder = tmp_path / str(gz)
        folder.mkdir()
        bad = idx_case(folder, header + b"\0" * 64, labels, gz=gz)
        assert_data_error(bad, "byte limit", dataset="idx", path=str(folder))


def test_idx_count_mismatch(tmp_path):
    x, y = make_images(5, np.random.default_rng(0))
    bad = idx_case(tmp_path, idx_bytes(x), idx_bytes(y[:4].astype(np.uint8)))
    err = assert_data_error(bad, "5 images but", dataset="idx", path=str(tmp_path))
    assert IDX_NAMES["t10k"][1] in str(err)


def test_idx_missing_files(tmp_path):
    assert_data_error(tmp_path / "nope", "not a folder", dataset="idx", path=str(tmp_path / "nope"))
    write_idx_split(tmp_path, "t10k", 5, gz=False)
    (tmp_path / IDX_NAMES["train"][0]).write_bytes(good_pair()[0])  # labels file missing
    err = assert_data_error(tmp_path, "missing", dataset="idx", path=str(tmp_path))
    assert IDX_NAMES["train"][1] in str(err)


def test_idx_label_beyond_num_classes(tmp_path):
    x, _ = make_images(5, np.random.default_rng(0))
    idx_case(tmp_path, idx_bytes(x), idx_bytes(np.array([0, 1, 2, 3, 12], np.uint8)))
    kwargs = {"dataset": "idx", "path": str(tmp_path), "num_classes": 10}
    assert_data_error(tmp_path, "label 12 but num_classes is 10", **kwargs)


def test_idx_t10k_only_folder_in_mnists_layout(tmp_path):
    """A folder holding only MNIST's t10k pair, gzipped under MNIST's names (made here, 100
    28x28 images), is split 80/20; the same images as a Keras-layout npz load the same."""
    x, y = make_images(100, np.random.default_rng(7), size=28)
    x[0, 0, 0], x[1, 0, 0] = 0, 255  # the full pixel range, so scaling is checked end to end
    images, labels = IDX_NAMES["t10k"]
    write(tmp_path / images, idx_bytes(x), gz=True)
    write(tmp_path / labels, idx_bytes(y.astype(np.uint8)), gz=True)
    read = read_idx(str(tmp_path / f"{labels}.gz"), IDX_LABELS_MAGIC)
    assert read.shape == (100,) and read[:5].tolist() == y[:5].tolist()
    d = load_dataset("idx", path=str(tmp_path), input_shape=(28, 28, 1), validation_split=0.1)
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (72, 8, 20)
    assert "t10k files only" in d.source
    np.testing.assert_array_equal(d.x_test[..., 0], x[80:] / np.float32(255))
    np.testing.assert_array_equal(d.y_test, y[80:])
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=x[:80], y_train=y[:80], x_test=x[80:], y_test=y[80:])
    n = load_dataset("npz", path=str(npz), input_shape=(28, 28, 1), validation_split=0.1)
    np.testing.assert_array_equal(n.x_test, d.x_test)
    np.testing.assert_array_equal(n.y_train, d.y_train)


# ---------------------------------------------------------------- npz


def write_npz(path: Path, **overrides) -> Path:
    x, y = make_images(12, np.random.default_rng(3))
    arrays = {"x_train": x[:8], "y_train": y[:8], "x_test": x[8:], "y_test": y[8:]}
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_npz_integer_and_float_images(tmp_path):
    path = write_npz(tmp_path / "ok.npz")
    d = load_dataset("npz", path=str(path), input_shape=(6, 6, 1), validation_split=0.0)
    raw = np.load(path)
    np.testing.assert_array_equal(d.x_test[..., 0], raw["x_test"] / np.float32(255))
    np.testing.assert_array_equal(d.y_test, raw["y_test"])
    floats = write_npz(tmp_path / "f.npz", x_test=raw["x_test"] / 255.0)
    f = load_dataset("npz", path=str(floats), input_shape=(6, 6, 1), validation_split=0.0)
    np.testing.assert_allclose(f.x_test, d.x_test, rtol=1e-6)


def test_npz_labels_shaped_n_by_1_accepted(tmp_path):
    path = write_npz(tmp_path / "c.npz", y_test=np.arange(4).reshape(4, 1))
    d = load_dataset("npz", path=str(path), input_shape=(6, 6, 1), validation_split=0.0)
    assert d.y_test.tolist() == [0, 1, 2, 3]


X6 = np.zeros((4, 6, 6), np.uint8)

BAD_NPZ = {
    "object": ({"x_test": np.array([X6[0], "a", None], dtype=object)}, "object arrays"),
    "missing": ({"y_test": None}, r"missing arrays \['y_test'\]"),
    "bool_images": ({"x_test": X6.astype(bool)}, "dtype bool"),
    "float_labels": ({"y_test": np.zeros(4)}, "integer class labels but y_test float targets"),
    "int_out_of_range": ({"x_test": X6.astype(np.int16) + 300}, "0..255"),
    "float_out_of_range": ({"x_test": X6 + 2.0}, r"\[0, 1\]"),
    "nan": ({"x_test": np.full((4, 6, 6), np.nan)}, "NaN"),
    "inf": ({"x_test": np.full((4, 6, 6), np.inf)}, "NaN or infinite"),
    "images_rank_1": ({"x_test": np.zeros(4, np.uint8)}, "expected images"),
    "one_hot_labels": ({"y_test": np.eye(4, 10, dtype=np.int64)}, "one-hot"),
    "labels_rank_3": ({"y_test": np.zeros((4, 1, 1), np.int64)}, "expected labels"),
    "count_mismatch": ({"y_test": np.zeros(3, np.int64)}, "4 images but y_test has 3"),
    "negative_label": ({"y_test": np.array([0, 1, -1, 2])}, "negative label -1"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_npz_bad_inputs(tmp_path, case):
    overrides, match = BAD_NPZ[case]
    path = write_npz(tmp_path / f"{case}.npz", **overrides)
    assert_data_error(path, match, dataset="npz", path=str(path))


def test_npz_label_beyond_num_classes(tmp_path):
    path = write_npz(tmp_path / "k.npz", y_test=np.array([0, 1, 2, 10]))
    assert_data_error(
        path, "label 10 but num_classes is 10", dataset="npz", path=str(path), num_classes=10
    )
    # Without num_classes it is inferred from the labels.
    d = load_dataset("npz", path=str(path), input_shape=(6, 6, 1), validation_split=0.0)
    assert d.num_classes == 11


def test_npz_corrupt_files(tmp_path):
    good = write_npz(tmp_path / "good.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])
    assert_data_error(truncated, "npz", dataset="npz", path=str(truncated))
    scrambled = tmp_path / "scrambled.npz"
    scrambled.write_bytes(good[:60] + b"\xff" * 200 + good[260:])
    assert_data_error(scrambled, "corrupt", dataset="npz", path=str(scrambled))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"hello, not a zip")
    assert_data_error(junk, "not a complete .npz archive", dataset="npz", path=str(junk))
    missing = tmp_path / "missing.npz"
    assert_data_error(missing, "not found", dataset="npz", path=str(missing))


def test_npz_oversized_header_refused(tmp_path):
    path = tmp_path / "huge.npz"
    import zipfile

    header = {"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**4, 10)}
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("x_train.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, header)
        for key in ("y_train", "x_test", "y_test"):
            with archive.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, np.zeros(2, np.uint8))
    assert_data_error(path, "byte limit", dataset="npz", path=str(path))


# ---------------------------------------------------------------- digits, synthetic, options


def test_digits_shape_range_and_fixed_test_split():
    a = load_dataset("digits", path=None, input_shape=(8, 8, 1), seed=0)
    b = load_dataset("digits", path=None, input_shape=(8, 8, 1), seed=5, validation_split=0.0)
    assert a.x_train.shape[1:] == (8, 8, 1) and a.x_train.dtype == np.float32
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    assert len(a.x_test) == 359 and a.num_classes == 10
    assert a.x_train.min() == 0.0 and a.x_train.max() == 1.0
    # The test split does not depend on the training seed.
    np.testing.assert_array_equal(a.x_test, b.x_test)


def test_synthetic_deterministic_and_learnable():
    kwargs = {"path": None, "input_shape": (5, 5, 2), "num_classes": 4, "size": 200}
    a = load_dataset("synthetic", seed=3, **kwargs)
    b = load_dataset("synthetic", seed=3, **kwargs)
    c = load_dataset("synthetic", seed=4, **kwargs)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert len(a.x_train) + len(a.x_val) == 200 and len(a.x_test) == 50
    assert a.x_train.shape[1:] == (5, 5, 2) and set(a.y_train.tolist()) == {0, 1, 2, 3}
    assert 0 <= a.x_train.min() and a.x_train.max() <= 1
    # Nearest class mean separates the classes: a model has something to learn.
    means = np.stack([a.x_train[a.y_train == k].mean(0) for k in range(4)])
    distances = ((a.x_test[:, None] - means[None]) ** 2).reshape(len(a.x_test), 4, -1).sum(-1)
    assert (distances.argmin(1) == a.y_test).mean() > 0.9
    default = load_dataset("synthetic", path=None, input_shape=(3,), validation_split=0.0)
    assert (len(default.x_train), len(default.x_test), default.num_classes) == (512, 128, 10)


def test_validation_split_is_last_fraction_of_shuffled_train():
    full = load_dataset("synthetic", path=None, input_shape=(4,), validation_split=0.0, seed=7)
    d = load_dataset("synthetic", path=None, input_shape=(4,), validation_split=0.25, seed=7)
    assert (len(d.x_train), len(d.x_val)) == (384, 128)
    np.testing.assert_array_equal(np.concatenate([d.x_train, d.x_val]), full.x_train)
    other = load_dataset("synthetic", path=None, input_shape=(4,), validation_split=0.0, seed=8)
    assert not np.array_equal(other.y_train, full.y_train)
    assert full.x_val.shape == (0, 4) and full.y_val.shape == (0,)
    for bad in (-0.1, 1.0, "0.1", True):
        with pytest.raises(ConfigError, match="validation_split"):
            load_dataset("synthetic", path=None, input_shape=(4,), validation_split=bad)


def test_channel_axis_and_shape_mismatch(tmp_path):
    path = write_npz(tmp_path / "s.npz")
    with_channel = load_dataset("npz", path=str(path), input_shape=(6, 6, 1), validation_split=0)
    without = load_dataset("npz", path=str(path), input_shape=(6, 6), validation_split=0)
    assert with_channel.x_train.shape == (8, 6, 6, 1) and without.x_train.shape == (8, 6, 6)
    err = assert_data_error(
        path, "input_shape", dataset="npz", path=str(path), input_shape=(32, 32, 3)
    )
    assert "data has samples of shape (6, 6, 1) but input_shape is [32, 32, 3]" in str(err)


def test_bad_options():
    with pytest.raises(ConfigError, match="did you mean 'digits'") as info:
        load_dataset("digit", path=None, input_shape=(8, 8, 1))
    assert info.value.where == "train.data.dataset"
    with pytest.raises(ConfigError, match="needs a path"):
        load_dataset("npz", path=None, input_shape=(8, 8, 1))
    with pytest.raises(ConfigError, match="num_classes"):
        load_dataset("synthetic", path=None, input_shape=(4,), num_classes=1)


# ---------------------------------------------------------------- batches, images


def test_batches_cover_everything():
    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    y = np.arange(10)
    plain = list(batches(x, y, 4))
    assert [len(yb) for _, yb in plain] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in plain]), x)
    shuffled = list(batches(x, y, 4, rng=np.random.default_rng(0)))
    again = list(batches(x, y, 4, rng=np.random.default_rng(0)))
    order = np.concatenate([yb for _, yb in shuffled])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    assert order.tolist() == np.concatenate([yb for _, yb in again]).tolist()
    for xb, yb in shuffled:
        assert xb.dtype == np.float32 and xb.flags.c_contiguous
        np.testing.assert_array_equal(xb, x[yb])


def test_load_images(tmp_path):
    image = pytest.importorskip("PIL.Image")
    gray = np.zeros((20, 10), np.uint8)
    gray[:, 5:] = 255
    image.fromarray(gray).save(tmp_path / "g.png")
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    image.fromarray(rgb).save(tmp_path / "c.png")
    paths = [str(tmp_path / "g.png"), str(tmp_path / "c.png")]
    out = load_images(paths, (10, 10, 1))
    assert out.shape == (2, 10, 10, 1) and out.dtype == np.float32
    assert out[0, :, 0, 0].max() == 0.0 and out[0, :, -1, 0].min() == 1.0
    colour = load_images(paths, (4, 4, 3))
    np.testing.assert_allclose(colour[1, ..., 0], 1.0)
    np.testing.assert_allclose(colour[1, ..., 1:], 0.0)
    assert load_images(paths[:1], (5, 5)).shape == (1, 5, 5)


def test_load_images_bad_files(tmp_path):
    pytest.importorskip("PIL")
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    for path in (not_image, tmp_path / "absent.png"):
        with pytest.raises(DataError) as info:
            load_images([str(path)], (8, 8, 1))
        assert str(path) in str(info.value)
    with pytest.raises(ConfigError):
        load_images([str(not_image)], (8, 8, 2))


def test_load_images_without_pillow(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match="pip install pillow"):
        load_images([os.fspath(tmp_path / "x.png")], (8, 8, 1))
