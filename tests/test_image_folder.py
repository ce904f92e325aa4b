"""Your own images (issue 13, items 2 and 3): ``dataset: folder`` and ``dataset: csv`` with
Keras's discovery and split rules, decoding errors named by file, the decoded-image cache and
streamed batches equal to in-memory ones, and ``nbcnn train``/``evaluate`` through the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ROOT, cli
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from nbcnn import imagefolder, streaming
from nbcnn.data import batches, load_dataset, load_images
from nbcnn.errors import ConfigError, DataError
from nbcnn.spec import parse_train, train_to_dict
from nbcnn.streaming import ImageArray

FORMATS = ("png", "jpg", "bmp", "gif")


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    """Every test decodes into its own cache folder."""
    monkeypatch.setenv("NBCNN_HOME", str(tmp_path / "home"))


def make_folder(root: Path, counts: dict[str, int], size=(12, 10), seed=0, ext="png") -> Path:
    """``root/<class>/<i>.<ext>``: RGB noise images whose mean colour depends on the class."""
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 100, (*size, 3)) + 50 * c
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i:03d}.{ext}")
    return root


def load(path, **kwargs):
    options = dict(input_shape=(8, 8, 3), num_classes=None, stream=True)
    return load_dataset(kwargs.pop("dataset", "folder"), path=str(path), **{**options, **kwargs})


def everything(ds):
    return [np.asarray(x) for x in (ds.x_train, ds.x_val, ds.x_test)]


# ---------------------------------------------------------------------------- discovery


def test_classes_are_sorted_subfolders_and_other_files_are_ignored(tmp_path):
    root = make_folder(tmp_path / "f", {"zebra": 3, "ant": 2, "moth": 4})
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / "ant" / "Upper.PNG").write_bytes((root / "ant" / "000.png").read_bytes())
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes((root / "ant" / "000.png").read_bytes())
    (root / "loose.png").write_bytes((root / "ant" / "000.png").read_bytes())
    (root / "moth" / "deeper").mkdir()
    (root / "moth" / "deeper" / "d.png").write_bytes((root / "ant" / "000.png").read_bytes())
    images = imagefolder.list_folder(str(root))
    assert images.class_names == ["ant", "moth", "zebra"]
    assert np.bincount(images.labels).tolist() == [3, 5, 3]  # Upper.PNG and deeper/ count
    assert images.names[:3] == ["ant/000.png", "ant/001.png", "ant/Upper.PNG"]
    ds = load(root, test_split=0.0)
    assert ds.class_names == ["ant", "moth", "zebra"]
    assert "found 11 files in 3 classes: ant 3, moth 5, zebra 3" in ds.source


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize(("color_mode", "channels"), [("grayscale", 1), ("rgb", 3), ("rgba", 4)])
def test_formats_sizes_and_color_modes(tmp_path, ext, color_mode, channels):
    root = make_folder(tmp_path / "f", {"a": 2, "b": 2}, size=(13, 21), ext=ext)
    ds = load(root, input_shape=(6, 9, channels), test_split=0.0, validation_split=0.0)
    x = np.asarray(ds.x_train)
    assert x.shape == (4, 6, 9, channels) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    # Pillow's convert + bilinear resize, scaled by 1/255; predict's load_images decodes alike.
    first = root / "a" / f"000.{ext}"
    with Image.open(first) as image:
        mode = imagefolder.COLOR_MODES[color_mode][0]
        pixels = np.asarray(image.convert(mode).resize((9, 6), Image.Resampling.BILINEAR))
    expected = (pixels.astype(np.float32) / 255).reshape(6, 9, channels)
    train_images = imagefolder.list_folder(str(root)).paths
    row = int(np.flatnonzero(ds.x_train.rows == train_images.index(str(first)))[0])
    np.testing.assert_array_equal(x[row], expected)
    np.testing.assert_array_equal(load_images([str(first)], (6, 9, channels))[0], expected)


def test_color_mode_and_image_size_must_agree_with_input_shape(tmp_path):
    root = make_folder(tmp_path / "f", {"a": 2, "b": 2})
    with pytest.raises(ConfigError, match=r"train\.data\.color_mode: 'grayscale' gives 1"):
        load(root, color_mode="grayscale")
    with pytest.raises(ConfigError, match=r"train\.data\.image_size: \[4, 4\] differs"):
        load(root, image_size=[4, 4])


def test_unreadable_image_is_named(tmp_path):
    root = make_folder(tmp_path / "f", {"a": 3, "b": 3})
    broken = root / "b" / "001.png"
    broken.write_bytes(broken.read_bytes()[:-30])  # truncated inside the pixel data
    with pytest.raises(DataError) as info:
        load(root)
    assert str(info.value).startswith(str(broken) + ": cannot read image")
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "home" / "images").glob("*.npy"))  # no partial cache
    broken.write_bytes(b"this is text, not a PNG")
    with pytest.raises(DataError, match="not a readable image"):
        load(root)


def test_image_bombs_are_refused_by_name(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "f", {"a": 2, "b": 2}, size=(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # warns above 1000, refuses above 2000
    with pytest.raises(DataError, match=r"/f/a/000\.png: image too large to read"):
        load(root)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "holds no class subfolders"),
        ({"a": 2, "empty": 0}, "class folder 'empty' holds no images"),
    ],
)
def test_folders_without_images_are_refused(tmp_path, layout, message):
    root = make_folder(tmp_path / "f", layout)
    root.mkdir(exist_ok=True)
    with pytest.raises(DataError, match=message):
        load(root)
    with pytest.raises(DataError, match="folder not found"):
        load(tmp_path / "missing")


def test_class_count_must_match_the_model(tmp_path):
    root = make_folder(tmp_path / "f", {"a": 2, "b": 2, "c": 2})
    with pytest.raises(
        DataError, match=r"holds 3 classes \('a', 'b', 'c'\) but the model outputs 10"
    ):
        load(root, num_classes=10)


# ---------------------------------------------------------------------------- splits


def test_validation_split_is_keras_rule_seeded(tmp_path):
    root = make_folder(tmp_path / "f", {"a": 10, "b": 10})
    images = imagefolder.list_folder(str(root))
    train, val = imagefolder.validation_split_rows(20, 0.25, seed=7)
    # Keras: shuffle the paths with RandomState(seed), the last int(0.25 * 20) = 5 validate.
    paths = list(images.paths)
    np.random.RandomState(7).shuffle(paths)
    assert [images.paths[i] for i in val] == paths[-5:]
    assert [images.paths[i] for i in train] == paths[:-5]
    one = load(root, test_split=0.0, validation_split=0.25, seed=7)
    again = load(root, test_split=0.0, validation_split=0.25, seed=7)
    other = load(root, test_split=0.0, validation_split=0.25, seed=8)
    assert one.y_val.tolist() == images.labels[val].tolist()
    assert all(np.array_equal(a, b) for a, b in zip(everything(one), everything(again)))
    assert not np.array_equal(np.asarray(one.x_val), np.asarray(other.x_val))


@settings(max_examples=20, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=2, max_size=5),
    split=st.floats(0.05, 0.9),
)
def test_test_split_is_per_class_and_stable(counts, split):
    names, labels = [], []
    for c, n in enumerate(counts):
        names += [f"class{c}/{i}.png" for i in range(n)]
        labels += [c] * n
    labels = np.array(labels, np.int64)
    mask = imagefolder.in_test_split(names, labels, split)
    for c, n in enumerate(counts):
        assert mask[labels == c].sum() == int(split * n + 0.5)
    # Adding a file to a class moves at most one of that class's files out of the test set.
    grown = imagefolder.in_test_split([*names, "class0/new.png"], np.append(labels, 0), split)
    assert (mask & ~grown[:-1]).sum() <= 1


def test_test_split_does_not_depend_on_the_seed(tmp_path):
    root = make_folder(tmp_path / "f", {"a": 10, "b": 10})
    one, other = load(root, seed=1), load(root, seed=2)
    assert np.array_equal(np.asarray(one.x_test), np.asarray(other.x_test))
    assert one.y_test.tolist() == other.y_test.tolist() == [0, 0, 1, 1]


def test_test_path_is_the_test_set_with_the_training_classes(tmp_path):
    root = make_folder(tmp_path / "f", {"a": 4, "b": 4, "c": 4})
    tests = make_folder(tmp_path / "t", {"c": 2, "a": 1}, seed=1)
    ds = load(root, test_path=str(tests))
    assert ds.y_test.tolist() == [0, 2, 2]  # 'a' is class 0, 'c' class 2 of the training set
    assert len(ds.x_train) + len(ds.x_val) == 12
    make_folder(tmp_path / "t", {"zebra": 1})
    with pytest.raises(DataError, match="has class 'zebra', which .* does not have"):
        load(root, test_path=str(tests))


# ---------------------------------------------------------------------------- csv


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_of_names_and_of_indices(tmp_path):
    root = make_folder(tmp_path / "f", {"cat": 3, "dog": 3})
    lines = [
        f"{p.relative_to(tmp_path).as_posix()},{p.parent.name}" for p in sorted(root.rglob("*.png"))
    ]
    named = write_csv(tmp_path / "labels.csv", "path,label\n" + "\n".join(lines) + "\n\n")
    ds = load(named, dataset="csv", test_split=0.0, validation_split=0.0)
    assert ds.class_names == ["cat", "dog"] and sorted(ds.y_train.tolist()) == [0, 0, 0, 1, 1, 1]
    from_folder = load(root, test_split=0.0, validation_split=0.0)
    assert np.array_equal(np.asarray(ds.x_train), np.asarray(from_folder.x_train))
    (tmp_path / "sub").mkdir()
    rows = "".join(f"{i % 2},../{line.split(',')[0]},x\n" for i, line in enumerate(lines))
    indexed = write_csv(tmp_path / "sub" / "i.csv", "label,path,comment\n" + rows)
    ds = load(indexed, dataset="csv", num_classes=4, test_split=0.0, validation_split=0.0)
    assert ds.class_names is None and ds.num_classes == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,class\nx.png,a\n", r"line 1: the header has columns \['file', 'class'\]"),
        ("path,label\nf/a/000.png,\n", "line 2: the label is empty"),
        ("path,label\nf/a/000.png,a\nf/a/nope.png,a\n", "line 3: 'f/a/nope.png': file not found"),
        ("path,label\nf/a/000.png\n", "line 2: 1 column"),
        ("path,label\n", "lists no images"),
        ("path,label\nf/a/000.png,7\n", "label 7 \\(line 2 of .*\\) is not below the model's 2"),
    ],
)
def test_csv_errors_name_the_file_and_line(tmp_path, text, message):
    make_folder(tmp_path / "f", {"a": 1})
    csv_file = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=message) as info:
        load(csv_file, dataset="csv", num_classes=2)
    assert str(info.value).startswith(str(csv_file) + ": ")


def test_csv_decode_error_names_the_line(tmp_path):
    make_folder(tmp_path / "f", {"a": 2})
    (tmp_path / "f" / "a" / "001.png").write_bytes(b"junk")
    csv_file = write_csv(tmp_path / "l.csv", "path,label\nf/a/000.png,a\nf/a/001.png,b\n")
    with pytest.raises(DataError, match=r"001\.png: not a readable image .*\(line 3 of .*l\.csv\)"):
        load(csv_file, dataset="csv")


# ---------------------------------------------------------------------------- streaming


def test_streamed_batches_equal_in_memory_batches(tmp_path):
    root = make_folder(tmp_path / "f", {"a": 9, "b": 8, "c": 7})
    streamed = load(root, stream=True)
    loaded = load(root, stream=False)
    assert isinstance(streamed.x_train, ImageArray) and isinstance(loaded.x_train, np.ndarray)
    assert streamed.source.startswith(loaded.source) and "streamed from" in streamed.source
    for rng_seed in (None, 3):
        rngs = [None if rng_seed is None else np.random.default_rng(rng_seed) for _ in "ab"]
        pairs = zip(
            batches(streamed.x_train, streamed.y_train, 5, rngs[0]),
            batches(loaded.x_train, loaded.y_train, 5, rngs[1]),
        )
        for (xs, ys), (xm, ym) in pairs:
            assert xs.dtype == np.float32 and xs.flags.c_contiguous
            np.testing.assert_array_equal(xs, xm)
            np.testing.assert_array_equal(ys, ym)
    x = streamed.x_test
    assert x[1].shape == (8, 8, 3) and np.array_equal(x[[2, 0, 2]], loaded.x_test[[2, 0, 2]])


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "f", {"a": 3, "b": 3})
    decoded = []
    real = imagefolder.decode_image
    monkeypatch.setattr(imagefolder, "decode_image", lambda p, *a: decoded.append(p) or real(p, *a))
    first = everything(load(root))
    assert len(decoded) == 6
    cache = list((tmp_path / "home" / "images").glob("*.npy"))
    assert len(cache) == 1
    assert all(np.array_equal(a, b) for a, b in zip(first, everything(load(root))))
    assert len(decoded) == 6  # read from the cache
    changed = root / "a" / "000.png"
    Image.new("RGB", (12, 10), (255, 255, 255)).save(changed)
    os.utime(changed, ns=(1, 1))
    again = everything(load(root))
    assert len(decoded) == 12
    assert not all(np.array_equal(a, b) for a, b in zip(first, again))
    now = list((tmp_path / "home" / "images").glob("*.npy"))
    assert len(now) == 1 and now != cache  # the stale cache is deleted
    now[0].write_bytes(now[0].read_bytes()[:-5])  # a damaged cache is decoded again
    assert all(np.array_equal(a, b) for a, b in zip(again, everything(load(root))))
    assert len(decoded) == 18


def test_model_takes_image_arrays_without_loading_them(tmp_path, monkeypatch):
    import nbcnn

    root = make_folder(tmp_path / "f", {"a": 6, "b": 6})
    ds = load(root)
    monkeypatch.setattr(ImageArray, "__array__", None)  # np.asarray(x) would fail
    model = nbcnn.load_model(_config(tmp_path)).initialize(0)
    model.fit(
        ds.x_train,
        ds.y_train,
        epochs=1,
        batch_size=4,
        validation_data=(ds.x_val, ds.y_val),
        verbose=0,
    )
    assert model.predict(ds.x_test).shape == (len(ds.x_test), 2)
    assert model.evaluate(ds.x_test, ds.y_test)["samples"] == len(ds.x_test)


def test_stream_auto_follows_the_available_memory(monkeypatch):
    monkeypatch.setattr("nbcnn.resources.available_memory", lambda: 1000)
    assert streaming.should_stream("auto", 501) and not streaming.should_stream("auto", 500)
    assert streaming.should_stream(True, 1) and not streaming.should_stream(False, 10**12)


# ---------------------------------------------------------------------------- config


def test_train_keys_are_validated_and_recorded():
    data = {"dataset": "folder", "path": "imgs", "stream": True, "image_size": [8, 8]}
    spec = parse_train({"data": data}, default_output="runs/x")
    assert spec.test_split == 0.2 and spec.stream is True and spec.image_size == (8, 8)
    recorded = train_to_dict(spec)["data"]
    assert recorded["test_split"] == 0.2 and recorded["image_size"] == [8, 8]
    assert parse_train({"data": recorded}, default_output="runs/x") == spec
    assert "stream" not in train_to_dict(parse_train({}, default_output="runs/x"))["data"]
    for section, where in [
        ({"dataset": "digits", "stream": True}, "train.data.stream"),
        ({"dataset": "folder"}, "train.data.path"),
        (
            {"dataset": "folder", "path": "a", "test_path": "b", "test_split": 0.1},
            "train.data.test_split",
        ),
        ({"dataset": "folder", "path": "a", "stream": "yes"}, "train.data.stream"),
        ({"dataset": "folder", "path": "a", "color_mode": "rgbx"}, "train.data.color_mode"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_train({"data": section}, default_output="runs/x")
        assert info.value.where == where


# ---------------------------------------------------------------------------- CLI


def _config(tmp_path: Path, **data) -> Path:
    doc = {
        "name": "pets",
        "input_shape": [8, 8, 3],
        "layers": [
            {"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
            {"type": "Flatten"},
            {"type": "Dense", "units": 2, "activation": "softmax"},
        ],
        "train": {
            "data": {"dataset": "folder", "path": str(tmp_path / "f"), **data},
            "epochs": 2,
            "batch_size": 8,
            "output": str(tmp_path / "run"),
        },
    }
    path = tmp_path / "pets.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_train_and_evaluate_a_folder_through_the_cli(tmp_path):
    make_folder(tmp_path / "f", {"cat": 10, "dog": 10})
    config = _config(tmp_path, stream=True)
    done = cli("train", config)
    assert done.exit_code == 0, done.output
    printed = "".join(done.output.split())  # rich wraps lines at the terminal's width
    shown = "found 20 files in 2 classes: cat 10, dog 10; 15 train / 1 validation (seed 0) / 4 test"
    assert "".join(shown.split()) in printed
    assert "test:loss" in printed and "(4samples)" in printed
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["data"]
    assert recorded["stream"] is True and recorded["test_split"] == 0.2
    done = cli("train", config, "--resume", "--epochs", "3")
    assert done.exit_code == 0, done.output
    weights = tmp_path / "run" / "model.npz"
    done = cli("evaluate", config, "--weights", weights)
    assert done.exit_code == 0 and "(4samples,folder" in "".join(done.output.split())
    other = make_folder(tmp_path / "other", {"dog": 3})
    done = cli("evaluate", config, "--weights", weights, "--data", other)
    assert done.exit_code == 0 and "(3samples,folder" in "".join(done.output.split())
    (tmp_path / "f" / "dog" / "003.png").write_bytes(b"broken")
    done = cli("train", config, "--overwrite")
    assert done.exit_code == 2
    broken = tmp_path / "f" / "dog" / "003.png"
    message = f"nbcnn: error: {broken}: not a readable image (Pillow cannot identify it)"
    assert done.stderr.strip() == message
    assert (tmp_path / "run" / "model.npz").exists()  # nothing saved is lost


def test_data_flag_takes_a_class_folder_or_a_csv_for_any_config(tmp_path):
    """QA of issue 13: `nbcnn train configs/digits.yaml --data imgs` (class subfolders) was
    read as an IDX folder ("missing t10k-images-idx3-ubyte"), and `evaluate --data pets.csv`
    of a folder config took the CSV for a folder."""
    imgs = make_folder(tmp_path / "imgs", {str(c): 3 for c in range(10)}, size=(8, 8))
    run = tmp_path / "digits"
    done = cli(
        "train", ROOT / "configs" / "digits.yaml", "--data", imgs, "--epochs", "1", "--output", run
    )
    assert done.exit_code == 0, done.output
    assert "found 30 files in 10 classes" in " ".join(done.output.split())
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["data"]["dataset"] == "folder"

    make_folder(tmp_path / "f", {"cat": 6, "dog": 6})
    config = _config(tmp_path)
    assert cli("train", config, "--epochs", "1").exit_code == 0
    csv = tmp_path / "pets.csv"
    csv.write_text("path,label\nf/cat/000.png,cat\nf/dog/001.png,dog\nf/dog/002.png,dog\n")
    done = cli("evaluate", config, "--weights", tmp_path / "run" / "model.npz", "--data", csv)
    assert done.exit_code == 0, done.output
    assert "(3samples,folder" in "".join(done.output.split())


def test_a_split_that_rounds_to_nothing_is_a_warning_and_the_end_says_why(tmp_path):
    """QA of issue 13: a folder of 2 images per class with validation_split 0.1 and
    test_split 0.2 reported "4 train / 0 validation / 0 test" without a word, and ended with
    "no test images (test_split 0 and no test_path)" though test_split was 0.2."""
    make_folder(tmp_path / "f", {"cat": 2, "dog": 2})
    config = _config(tmp_path, validation_split=0.1, test_split=0.2)
    done = cli("train", config, "--epochs", "1")
    assert done.exit_code == 0, done.output
    warnings = [line for line in done.stderr.splitlines() if line.startswith("nbcnn: warning:")]
    assert len(warnings) == 2, done.stderr
    assert (
        "train.data.test_split 0.2 gives no test images: too few images per class" in (warnings[0])
    )
    assert "the largest class has 2; one test image takes a class of 3" in warnings[0]
    assert "train.data.validation_split 0.1 gives no validation images" in warnings[1]
    assert "10 or more" in warnings[1]
    printed = " ".join(done.stdout.split())
    assert "no test images (test_split 0.2 rounds to 0 images in every class" in printed
    assert "test_split 0 and no test_path" not in printed
    # Enough images: no warning; test_split 0 says so at the end.
    make_folder(tmp_path / "f", {"cat": 10, "dog": 10})
    done = cli("train", _config(tmp_path, test_split=0.0), "--epochs", "1", "--overwrite")
    assert done.exit_code == 0 and "warning" not in done.stderr, done.stderr
    assert "no test images (test_split 0 and no test_path)" in " ".join(done.stdout.split())


def test_ctrl_c_while_decoding_is_one_line_and_creates_nothing(tmp_path, monkeypatch):
    """QA of issue 13: Ctrl-C during image decoding printed only a blank line (rc 130)."""
    make_folder(tmp_path / "f", {"cat": 10, "dog": 10})
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args)
        raise KeyboardInterrupt

    monkeypatch.setattr(imagefolder, "decode_image", interrupted)
    done = cli("train", _config(tmp_path))
    assert calls and done.exit_code == 130
    assert done.stderr.strip() == "nbcnn: interrupted while decoding images; nothing was created"
    assert not (tmp_path / "run").exists()
    assert not list((tmp_path / "home").rglob("*.tmp"))  # no partial cache either


def test_decode_progress_off_a_terminal_leaves_no_blank_line(capsys):
    """Off a terminal rich's bar drew nothing but a blank line (the "one blank line" of the
    QA report); now only the closing line is printed, and nothing when interrupted."""
    from nbcnn.progress import DecodeProgress

    with DecodeProgress() as decoding:
        decoding(0, 4)
        decoding(4, 4)
    assert capsys.readouterr().err.startswith("decoded 4 images in ")
    with pytest.raises(KeyboardInterrupt), DecodeProgress() as decoding:
        decoding(0, 4)
        raise KeyboardInterrupt
    assert capsys.readouterr().err == ""
