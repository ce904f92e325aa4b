"""Robustness through the real CLI: bad data and weights files are refused with one line and
exit code 2, an impossible memory request is refused before anything is allocated, and faults
during training (kill -9, a full disk, an unwritable folder, a NaN loss, a plugin that raises)
end with a clear message and leave the earlier checkpoint intact. Each promise in
docs/guarantees.md names the test here (or in test_train.py, test_config_errors.py,
test_fuzz_spec.py) that checks it."""

from __future__ import annotations

import errno
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ROOT, cli, cli_subprocess, model_doc, snapshot
from test_data import IDX_NAMES, idx_bytes
from test_registry import make_distribution, pip_install_target

import nbcnn
from nbcnn.errors import ConfigError
from nbcnn.resources import (
    available_memory,
    check_training_memory,
    estimate_training_memory,
)
from nbcnn.runs import RunFolder

SMALL = [
    {"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
    {"type": "Flatten"},
    {"type": "Dense", "units": 10, "activation": "softmax"},
]


def write_run_config(write_config, tmp_path, layers=SMALL, name="model.yaml", **train):
    """A small digits model (8x8x1 -> 10 classes) with a train section writing to tmp/run."""
    doc = model_doc(*layers, input_shape=(8, 8, 1))
    doc["train"] = {
        "data": {"dataset": "digits"},
        "epochs": 2,
        "batch_size": 64,
        "output": str(tmp_path / "run"),
        **train,
    }
    return write_config(doc, name)


def error_line(stderr: str, *fragments: str) -> str:
    """The one ``nbcnn: error:`` line of ``stderr``; no traceback, no other message lines."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("nbcnn: error: ") and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ---------------------------------------------------------------- bad data through the CLI


def _images(n=6, dtype=np.uint8):
    return np.random.default_rng(0).integers(0, 256, (n, 8, 8)).astype(dtype)


def _npz(folder: Path, **overrides) -> Path:
    arrays = {
        "x_train": _images(),
        "y_train": np.arange(6) % 10,
        "x_test": _images(4),
        "y_test": np.arange(4),
    }
    arrays.update(overrides)
    path = folder / "data.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _idx(folder: Path, images: bytes | None = None, labels: bytes | None = None, gz=False):
    """A t10k IDX pair (8x8 images) in ``folder``; returns the folder."""
    images = images if images is not None else idx_bytes(_images(5))
    labels = labels if labels is not None else idx_bytes(np.arange(5, dtype=np.uint8))
    suffix = ".gz" if gz else ""
    pack = gzip.compress if gz else bytes
    (folder / (IDX_NAMES["t10k"][0] + suffix)).write_bytes(pack(images))
    (folder / (IDX_NAMES["t10k"][1] + suffix)).write_bytes(pack(labels))
    return folder


def _cut(path: Path, end: int, name: str) -> Path:
    """A copy of ``path`` cut at byte ``end``, named ``name`` beside it."""
    out = path.with_name(name)
    out.write_bytes(path.read_bytes()[:end])
    return out


def _junk(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated_gz(folder):
    _idx(folder, gz=True)
    bad = folder / (IDX_NAMES["t10k"][0] + ".gz")
    bad.write_bytes(bad.read_bytes()[:-12])
    return folder


OBJECTS = np.array([_images(1)[0], "pickled", None], dtype=object)

# name -> (writes the data into a folder and returns what --data gets, message fragments)
BAD_DATA = {
    "idx_truncated_gz": (_truncated_gz, [IDX_NAMES["t10k"][0] + ".gz", "truncated or corrupt"]),
    "idx_wrong_magic": (
        lambda d: _idx(d, labels=idx_bytes(_images(5))),
        [IDX_NAMES["t10k"][1], "magic number 0x00000803"],
    ),
    "idx_count_mismatch": (
        lambda d: _idx(d, labels=idx_bytes(np.arange(4, dtype=np.uint8))),
        ["5 images but", IDX_NAMES["t10k"][1]],
    ),
    "idx_label_out_of_range": (
        lambda d: _idx(d, labels=idx_bytes(np.array([0, 1, 2, 3, 12], np.uint8))),
        ["label 12 but num_classes is 10"],
    ),
    "npz_label_out_of_range": (
        lambda d: _npz(d, y_test=np.array([0, 1, 2, 10])),
        ["data.npz", "label 10 but num_classes is 10"],
    ),
    "npz_count_mismatch": (
        lambda d: _npz(d, y_train=np.arange(5)),
        ["data.npz", "6 images but y_train has 5 labels"],
    ),
    "npz_object_arrays": (lambda d: _npz(d, x_test=OBJECTS), ["data.npz", "object arrays"]),
    "npz_missing_arrays": (lambda d: _npz(d, y_test=None), ["data.npz", "missing arrays"]),
    "npz_float_labels": (
        lambda d: _npz(d, y_train=np.zeros(6)),
        ["data.npz", "y_train", "float targets"],
    ),
    "npz_bool_images": (
        lambda d: _npz(d, x_train=_images(dtype=bool)),
        ["data.npz", "x_train has dtype bool"],
    ),
    "npz_images_rank": (
        lambda d: _npz(d, x_train=np.zeros(6, np.uint8)),
        ["data.npz", "x_train has shape (6,)"],
    ),
    "npz_labels_rank": (
        lambda d: _npz(d, y_test=np.zeros((4, 2, 2), np.int64)),
        ["data.npz", "y_test has shape (4, 2, 2)"],
    ),
    "npz_nan_images": (
        lambda d: _npz(d, x_train=np.full((6, 8, 8), np.nan)),
        ["data.npz", "NaN or infinite"],
    ),
    "npz_inf_images": (
        lambda d: _npz(d, x_test=np.full((4, 8, 8), -np.inf)),
        ["data.npz", "NaN or infinite"],
    ),
    "npz_wrong_image_shape": (
        lambda d: _npz(d, x_train=np.zeros((6, 28, 28), np.uint8)),
        ["data.npz", "(28, 28, 1)", "[8, 8, 1]"],
    ),
    "npz_truncated_zip": (
        lambda d: _cut(_npz(d), 300, "cut.npz"),
        ["cut.npz", "not a complete .npz archive"],
    ),
}


@pytest.fixture
def weights_for_small(tmp_path, write_config):
    """The small model's config and a weights file that fits it."""
    config = write_run_config(write_config, tmp_path)
    model = nbcnn.load_model(config).initialize(0)
    model.save_weights(tmp_path / "w.npz")
    return config, tmp_path / "w.npz"


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_through_cli_is_one_line_exit_2(case, command, tmp_path, weights_for_small):
    config, weights = weights_for_small
    folder = tmp_path / "data"
    folder.mkdir()
    make, fragments = BAD_DATA[case]
    data = make(folder)
    args = ["--data", data]
    if command == "evaluate":
        args += ["--weights", weights]
    result = cli(command, config, *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    error_line(result.stderr, str(data), *fragments)
    assert not (tmp_path / "run" / "model.npz").exists()


def test_bad_data_in_a_real_process_has_no_traceback(tmp_path, weights_for_small):
    config, _ = weights_for_small
    data = _npz(tmp_path, x_test=OBJECTS)
    proc = cli_subprocess("train", config, "--data", data)
    assert proc.returncode == 2
    error_line(proc.stderr, str(data), "object arrays (pickle); refused")


# ---------------------------------------------------------------- weights files


def test_weights_of_another_model_name_the_layer_and_both_shapes(
    tmp_path, write_config, weights_for_small
):
    config, _ = weights_for_small
    wider = [{**SMALL[0], "filters": 6}, *SMALL[1:]]
    other = nbcnn.load_model(write_run_config(write_config, tmp_path, wider, "other.yaml"))
    other.initialize(0).save_weights(tmp_path / "other.npz")
    result = cli("evaluate", config, "--weights", tmp_path / "other.npz")
    assert result.exit_code == 2
    error_line(
        result.stderr,
        str(tmp_path / "other.npz"),
        "layers[0] 'conv2d' (Conv2D) kernel",
        "(3, 3, 1, 4)",
        "(3, 3, 1, 6)",
    )


def _rewrite(path: Path, out: Path, **changes) -> Path:
    arrays = dict(np.load(path))
    arrays.update(changes)
    np.savez(out, **{k: v for k, v in arrays.items() if v is not None})
    return out


BAD_WEIGHTS = {
    "missing_array": (
        lambda w, d: _rewrite(w, d / "bad.npz", **{"dense/bias": None}),
        ["layers[2] 'dense' (Dense) bias", "no array 'dense/bias' of shape (10,)"],
    ),
    "different_names": (
        lambda w, d: _rewrite(w, d / "bad.npz", **{"conv2d/kernel": None, "c/k": np.ones(3)}),
        ["layers[0] 'conv2d' (Conv2D) kernel", "(3, 3, 1, 4)", "the file has"],
    ),
    "extra_layer": (
        lambda w, d: _rewrite(w, d / "bad.npz", **{"dense_1/kernel": np.ones((10, 3))}),
        ["'dense_1/kernel' (10, 3)", "does not have"],
    ),
    "integer_weights": (
        lambda w, d: _rewrite(w, d / "bad.npz", **{"dense/bias": np.zeros(10, np.int64)}),
        ["layers[2] 'dense' (Dense) bias", "float", "int64"],
    ),
    "nan_weights": (
        lambda w, d: _rewrite(w, d / "bad.npz", **{"dense/bias": np.full(10, np.nan)}),
        ["layers[2] 'dense' (Dense) bias holds NaN or inf"],
    ),
    "object_arrays": (
        lambda w, d: _rewrite(w, d / "bad.npz", **{"dense/bias": OBJECTS}),
        ["object arrays (pickle); refused"],
    ),
    "truncated_zip": (
        lambda w, d: _cut(w, -40, "bad.npz"),
        ["not a valid .npz (corrupt or truncated zip)"],
    ),
    "not_a_zip": (
        lambda w, d: _junk(d / "bad.npz", b"PK\x03\x04 a zip header and then garbage"),
        ["not a valid .npz"],
    ),
    "missing_file": (lambda w, d: d / "absent.npz", ["no such file"]),
}


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_bad_weights_are_one_line_exit_2(case, command, tmp_path, weights_for_small):
    config, weights = weights_for_small
    make, fragments = BAD_WEIGHTS[case]
    bad = make(weights, tmp_path)
    args = [tmp_path / "x.npz"] if command == "predict" else []
    np.savez(tmp_path / "x.npz", x=_images(2))
    result = cli(command, config, *args, "--weights", bad)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    error_line(result.stderr, str(bad), *fragments)


# ---------------------------------------------------------------- resource guard


HUGE_DENSE = [{"type": "Flatten"}, {"type": "Dense", "units": 10**9, "activation": "softmax"}]


def test_absurd_model_is_refused_before_allocating(tmp_path, write_config):
    """Dense with 10**9 units: 65 G parameters. A real process refuses it in about a second,
    with the estimate, the available memory and what to change, and writes nothing."""
    config = write_run_config(write_config, tmp_path, HUGE_DENSE)
    start = time.perf_counter()
    proc = cli_subprocess("train", config)
    assert time.perf_counter() - start < 30
    assert proc.returncode == 2, proc.stderr
    line = error_line(
        proc.stderr, str(config), "layers[1] 'dense' (Dense)", "training needs about", "TB"
    )
    assert "of memory is available" in line and "make this layer smaller" in line
    assert not (tmp_path / "run").exists()
    # evaluate/predict allocate only the weights: refused there too, before allocating them.
    np.savez(tmp_path / "w.npz", x=np.zeros(1))
    ev = cli("evaluate", config, "--weights", tmp_path / "w.npz")
    assert ev.exit_code == 2
    error_line(ev.stderr, str(config), "parameters need", "make it smaller")


def test_batch_too_large_for_memory_suggests_one_that_fits(tmp_path, write_config, monkeypatch):
    config = write_run_config(write_config, tmp_path, batch_size=4096)
    model = nbcnn.load_model(config)
    estimate = estimate_training_memory(model, 4096)
    # Pretend the machine has room for about 100 samples: the guard must suggest 64.
    room = estimate.fixed + 100 * estimate.per_sample
    monkeypatch.setattr("nbcnn.resources.available_memory", lambda: room)
    result = cli("train", config)
    assert result.exit_code == 2
    error_line(
        result.stderr,
        str(config),
        "train.batch_size",
        "at batch_size 4096",
        "batch_size 64 would fit (--batch-size 64)",
    )
    assert not (tmp_path / "run").exists()
    ok = cli("train", config, "--batch-size", "64", "--epochs", "1")
    assert ok.exit_code == 0, ok.stderr


def test_memory_estimate_counts_weights_optimizer_activations_and_im2col():
    model = nbcnn.load_model(ROOT / "configs" / "mnist_convnet.yaml")
    params = model.count_params()  # 421,642
    adam = estimate_training_memory(model, 128, {"type": "adam"})
    sgd = estimate_training_memory(model, 128, "sgd")
    # weights + gradients + 2 Adam slots (SGD: 1), plus two scratch arrays of the largest.
    assert adam.fixed == 4 * (4 * params + 2 * 401_408)
    assert adam.fixed - sgd.fixed == 4 * params
    outputs = 28 * 28 * 32 + 14 * 14 * 32 + 14 * 14 * 64 + 7 * 7 * 64 + 3136 + 128 + 10
    conv2_im2col = 14 * 14 * 3 * 3 * 32
    padded_conv2 = 16 * 16 * 32  # conv2's zero-padded input ('same', 3x3)
    assert adam.per_sample == 4 * (3 * outputs + 2 * 28 * 28 + 2 * conv2_im2col + padded_conv2)
    assert adam.total == adam.fixed + 128 * adam.per_sample
    assert adam.largest_batch(adam.total) == 128
    assert adam.largest_batch(adam.fixed) == 0
    memory = available_memory()
    assert memory is None or memory > 0
    assert check_training_memory(model, 128, "adam", available=adam.total) == adam
    with pytest.raises(ConfigError, match="batch_size 64 would fit"):
        check_training_memory(model, 128, "adam", available=adam.total - 1)


# ---------------------------------------------------------------- kill -9 while writing

WRITER_DOC = model_doc(
    {"type": "Flatten"}, {"type": "Dense", "units": 256}, input_shape=(64, 64, 1)
)
# argv: run folder, epoch to start after, the fsync call after the first commit to die in
# (0: never), model doc. Every weight of epoch k holds k; best.npz is new on odd epochs only
# (even epochs hard-link the previous one), so best holds the last odd epoch.
WRITER = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np
    from nbcnn.model import Sequential
    from nbcnn.runs import RunFolder, layer_signature
    from nbcnn.spec import parse_spec
    from nbcnn.train import compile

    die_at, fsync, calls = int(sys.argv[3]), os.fsync, [-10**9]

    def dying_fsync(fd):
        calls[0] += 1
        if calls[0] == die_at:  # a file or folder of the epoch written, not yet committed
            os.kill(os.getpid(), signal.SIGKILL)
        fsync(fd)

    os.fsync = dying_fsync
    model = Sequential.from_spec(parse_spec(json.loads(sys.argv[4]))).initialize(0)
    compile(model)
    params, _ = model.trainable_weights()
    model.compiled.optimizer.step(params, [np.zeros_like(p) for p in params])  # Adam slots
    folder = RunFolder(sys.argv[1])
    folder.acquire(resume=True)
    epoch = int(sys.argv[2])
    rng_state = np.random.default_rng(0).bit_generator.state
    while True:
        epoch += 1
        for p in params:
            p[...] = epoch  # every array of checkpoint number k holds k
        history = [{"epoch": e, "loss": 1.0 / e} for e in range(1, epoch + 1)]
        state = {"epoch": epoch, "history": history, "best": 1.0 / epoch, "wait": 0,
                 "shuffle_rng": rng_state, "model_rng": rng_state, "layer_rngs": [],
                 "layers": layer_signature(model)}
        folder.commit_epoch(model, state, best=epoch % 2 == 1)
        calls[0] = 0  # count the fsyncs of the next commit
        print(epoch, flush=True)
""")


def check_run_files(folder: Path) -> int:
    """Every file a reader uses loads, and all of them show one and the same epoch (the last
    committed): checkpoint, model, metrics; best the last odd epoch. Returns the epoch."""
    with np.load(folder / "checkpoint.npz", allow_pickle=False) as ckpt:
        epoch = json.loads(str(ckpt["meta"]))["epoch"]
        for name in ckpt.files:
            if name != "meta" and not name.startswith("optimizer/"):
                assert (ckpt[name] == epoch).all(), name
    for name, expected in (("model.npz", epoch), ("best.npz", epoch - (epoch % 2 == 0))):
        with np.load(folder / name, allow_pickle=False) as weights:
            assert all((weights[k] == expected).all() for k in weights.files), (name, epoch)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epoch + 1))
    return epoch


# A commit fsyncs checkpoint, model, best (odd epochs), metrics, the epoch folder, epochs/
# and the run folder: 6 or 7 calls; die in each of them, then at random moments.
COMMIT_FSYNCS = 7


def test_kill_9_at_any_moment_leaves_consistent_files(tmp_path):
    """A writer commits epochs of 4 MB weights (12 MB with Adam's slots) in a loop and is
    killed with SIGKILL: by itself inside each fsync of a commit (its files written, not yet
    committed), and by us at random moments. After every kill all the files show the same
    epoch, the checkpoint resumes, and the next writer cleans what the killed one left."""
    folder = tmp_path / "run"
    rng = random.Random(0)
    epoch = 0
    for die_at in (*range(1, COMMIT_FSYNCS + 1), 0, 0, 0, 0):
        args = [str(folder), str(epoch), str(die_at), json.dumps(WRITER_DOC)]
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, *args], stdout=subprocess.PIPE, text=True
        )
        first = proc.stdout.readline()  # one epoch committed, the next being written
        assert first.strip(), "the writer died before its first commit"
        if die_at:
            assert proc.wait(timeout=60) == -signal.SIGKILL
        else:
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        epoch = check_run_files(folder)
        RunFolder(folder).load_checkpoint(_writer_model())  # what --resume does
    run = RunFolder(folder)
    run.acquire(resume=True)  # removes what the killed writers left
    run.release()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            ".nbcnn-lock",
            "nbcnn-run.json",
            "current",
            "epochs",
            "best.npz",
            "checkpoint.npz",
            "metrics.jsonl",
            "model.npz",
        ]
    )
    assert [p.name for p in (folder / "epochs").iterdir()] == [f"{epoch:06d}"]


def _writer_model():
    from nbcnn.model import Sequential
    from nbcnn.spec import parse_spec
    from nbcnn.train import compile

    model = Sequential.from_spec(parse_spec(WRITER_DOC)).initialize(0)
    compile(model)
    return model


def test_stale_temporary_files_are_ignored_and_removed(tmp_path, write_config):
    config = write_run_config(write_config, tmp_path, epochs=1)
    assert cli("train", config).exit_code == 0
    run = tmp_path / "run"
    stale = [run / ".config.yaml.k1ll3d_x.tmp", run / "epochs" / ".tmp-000002-999"]
    stale[0].write_bytes(b"half a config")
    stale[1].mkdir()
    (stale[1] / "checkpoint.npz").write_bytes(b"half a checkpoint")
    result = cli("train", config, "--resume", "--epochs", "2")
    assert result.exit_code == 0, result.stderr
    assert not any(p.exists() for p in stale)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


# ---------------------------------------------------------------- disk full, not writable


BIG_DENSE = [
    {"type": "Flatten"},
    {"type": "Dense", "units": 400, "activation": "relu"},
    {"type": "Dense", "units": 10, "activation": "softmax"},
]  # 30,010 parameters: model.npz about 120 KB, checkpoint.npz about 360 KB


def _spy_checkpoints(monkeypatch, folder: Path) -> list[dict[str, bytes]]:
    """Record the run folder's bytes just before each checkpoint write."""
    before = []
    save = RunFolder.commit_epoch

    def recording(self, *args, **kwargs):
        before.append(snapshot(folder))
        return save(self, *args, **kwargs)

    monkeypatch.setattr(RunFolder, "commit_epoch", recording)
    return before


def _assert_failed_write_kept_files(result, folder, before, *fragments):
    assert result.exit_code == 1, (result.stdout, result.stderr)
    error_line(
        result.stderr, "cannot write epoch 2", "(the files of epoch 1 are intact)", *fragments
    )
    assert len(before) == 2  # epoch 1 was saved, epoch 2's save failed
    assert snapshot(folder) == before[-1]  # byte for byte what epoch 1 left
    metrics = before[-1]["epochs/000001/metrics.jsonl"]
    assert [json.loads(x)["epoch"] for x in metrics.splitlines()] == [1]


def test_disk_full_simulated_keeps_earlier_checkpoint(tmp_path, write_config, monkeypatch):
    config = write_run_config(write_config, tmp_path, BIG_DENSE, epochs=3)
    run = tmp_path / "run"
    before = _spy_checkpoints(monkeypatch, run)
    write = nbcnn.runs._write_new

    def full_disk(path, data):
        if path.name == "checkpoint.npz" and (run / "current").exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(path, data)

    monkeypatch.setattr(nbcnn.runs, "_write_new", full_disk)
    result = cli("train", config)
    monkeypatch.setattr(nbcnn.runs, "_write_new", write)
    _assert_failed_write_kept_files(result, run, before, "checkpoint.npz", "No space left")
    # The checkpoint left behind is usable: evaluate reads it as weights.
    ev = cli("evaluate", config, "--weights", run / "checkpoint.npz", "--json")
    assert ev.exit_code == 0, ev.stderr


@pytest.fixture
def small_tmpfs(tmp_path):
    """Mount an 800 KB tmpfs (root only); skip where mounting is not permitted."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=800k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_real_full_disk_keeps_earlier_checkpoint(small_tmpfs, write_config, monkeypatch):
    """On an 800 KB tmpfs epoch 1's files fit (612 KB at the peak) but epoch 2's new 360 KB
    checkpoint beside them does not: ENOSPC from the kernel, not from a mock."""
    run = small_tmpfs / "run"
    config = write_run_config(write_config, small_tmpfs.parent, BIG_DENSE, epochs=3)
    before = _spy_checkpoints(monkeypatch, run)
    result = cli("train", config, "--output", run)
    _assert_failed_write_kept_files(result, run, before, "No space left on device")


def test_output_under_a_file_fails_before_training(tmp_path, write_config):
    (tmp_path / "plain-file").write_text("")
    config = write_run_config(write_config, tmp_path)
    result = cli("train", config, "--output", tmp_path / "plain-file" / "run")
    assert result.exit_code == 1
    error_line(result.stderr, "plain-file", "output folder is not writable")
    assert "epoch" not in result.stdout


def test_read_only_output_folder_fails_before_training(tmp_path, write_config):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: mount a read-only tmpfs instead
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs: {proc.stderr.strip()}")
    else:
        folder.chmod(0o500)
    try:
        config = write_run_config(write_config, tmp_path)
        result = cli("train", config, "--output", folder)
        assert result.exit_code == 1
        error_line(result.stderr, str(folder), "output folder is not writable", "Read-only")
        assert "epoch" not in result.stdout
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        else:
            folder.chmod(0o700)


# ---------------------------------------------------------------- NaN loss

# SGD at 0.01 for epoch 1, then 0.01 * 1e300 from epoch 2: the first step of epoch 2
# overflows the weights and the loss of batch 2 is NaN.
EXPLODING = {
    "optimizer": {"type": "sgd", "learning_rate": 0.01},
    "lr_schedule": {"type": "exponential", "decay_rate": 1e300},
}


def test_nan_loss_stops_with_epoch_batch_and_advice(tmp_path, write_config):
    config = write_run_config(write_config, tmp_path, epochs=3, **EXPLODING)
    proc = cli_subprocess("train", config)
    assert proc.returncode == 1, proc.stderr
    error_line(proc.stderr, "loss became nan in epoch 2, batch 2", "lower learning_rate")
    # The checkpoint kept is epoch 1's: the same as a run asked for one epoch only.
    run, one = tmp_path / "run", tmp_path / "one"
    assert cli("train", config, "--epochs", "1", "--output", one).exit_code == 0
    for name in ("checkpoint.npz", "model.npz", "best.npz"):
        a, b = np.load(run / name), np.load(one / name)
        assert a.files == b.files
        for key in a.files:
            if key == "meta":  # holds the epoch's timings
                assert json.loads(str(a[key]))["epoch"] == 1
            else:
                np.testing.assert_array_equal(a[key], b[key])
    assert (run / "metrics.jsonl").read_text().count("\n") == 1


def test_weights_overflowing_in_the_last_batch_are_not_checkpointed(tmp_path):
    """One batch per epoch: epoch 2's only step overflows the weights after its loss was
    computed; the checkpoint of epoch 1 stays, and resuming from it works."""
    model = nbcnn.load_model(ROOT / "configs" / "digits.yaml")
    from nbcnn.data import load_dataset

    data = load_dataset("digits", input_shape=(8, 8, 1), validation_split=0.0)
    x, y = data.x_train[:64], data.y_train[:64]
    model.compile(optimizer=EXPLODING["optimizer"])
    model.compiled.lr_schedule = EXPLODING["lr_schedule"]
    with pytest.raises(nbcnn.errors.TrainingError, match="in epoch 2, batch 1.*lower"):
        model.fit(x, y, epochs=3, batch_size=64, output=tmp_path, verbose=0)
    with np.load(tmp_path / "checkpoint.npz") as ckpt:
        assert json.loads(str(ckpt["meta"]))["epoch"] == 1
    model.load_weights(tmp_path / "checkpoint.npz")  # finite, so accepted


# ---------------------------------------------------------------- plugin that raises

EXPLODING_PLUGIN = """
from nbcnn.layers.base import Layer


class BoomForward(Layer):
    def output_shape(self, input_shape):
        return input_shape

    def forward(self, x, training=False):
        raise RuntimeError("forward went boom\\nsecond line of the plugin's message")

    def backward(self, dy):
        return dy


class BoomBackward(BoomForward):
    def forward(self, x, training=False):
        return x

    def backward(self, dy):
        raise ValueError("backward went boom")
"""


@pytest.fixture(scope="module")
def exploding_plugin_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("explode")
    dist = make_distribution(
        root,
        "nbcnn-test-explode",
        "nbcnn_test_explode",
        EXPLODING_PLUGIN,
        {
            "BoomForward": "nbcnn_test_explode:BoomForward",
            "BoomBackward": "nbcnn_test_explode:BoomBackward",
        },
    )
    pip_install_target(root / "site", dist)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(root / "site")}


@pytest.mark.parametrize(
    ("layer", "fragments"),
    [
        ("BoomForward", ["'boom_forward' (BoomForward)", "in forward", "RuntimeError"]),
        ("BoomBackward", ["'boom_backward' (BoomBackward)", "in backward", "ValueError"]),
    ],
)
def test_plugin_raising_names_layer_and_distribution(
    exploding_plugin_env, tmp_path, write_config, layer, fragments
):
    layers = [SMALL[0], {"type": layer}, *SMALL[1:]]
    config = write_run_config(write_config, tmp_path, layers)
    proc = cli_subprocess("train", config, env=exploding_plugin_env)
    assert proc.returncode == 1, proc.stderr
    error_line(proc.stderr, "layers[1]", "from distribution 'nbcnn-test-explode'", *fragments)


# ---------------------------------------------------------------- determinism


def _without_timings(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("seconds", "samples_per_second")}


def test_same_config_seed_threads_give_identical_runs(tmp_path, write_config):
    """Two fresh processes, same config, seed and --threads: metrics and every array of
    every file equal bit for bit (only the timings differ)."""
    config = write_run_config(write_config, tmp_path, epochs=2, seed=3)
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        proc = cli_subprocess("train", config, "--threads", "2", "--output", run)
        assert proc.returncode == 0, proc.stderr
    for name in ("model.npz", "best.npz", "checkpoint.npz"):
        a, b = np.load(runs[0] / name), np.load(runs[1] / name)
        assert a.files == b.files
        for key in a.files:
            if key == "meta":  # the checkpoint's state: the history holds the timings
                meta_a, meta_b = json.loads(str(a[key])), json.loads(str(b[key]))
                for meta in (meta_a, meta_b):
                    meta["history"] = [_without_timings(r) for r in meta["history"]]
                assert meta_a == meta_b
            else:
                assert a[key].tobytes() == b[key].tobytes(), (name, key)

    def metrics(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [_without_timings(json.loads(x)) for x in lines]

    assert metrics(runs[0]) == metrics(runs[1])


def _tiny_config(tmp_path):
    doc = {
        "input_shape": [8, 8, 1],
        "layers": [{"type": "Flatten"}, {"type": "Dense", "units": 10, "activation": "softmax"}],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    weights = tmp_path / "w.npz"
    nbcnn.load_model(path).initialize(0).save_weights(weights)
    return path, weights


def test_empty_test_split_and_empty_prediction_arrays_are_refused(tmp_path):
    config, weights = _tiny_config(tmp_path)
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "empty.npz",
        x_train=rng.integers(0, 255, (4, 8, 8), dtype=np.uint8),
        y_train=np.arange(4),
        x_test=np.zeros((0, 8, 8), np.uint8),
        y_test=np.zeros(0, np.int64),
    )
    result = cli("evaluate", config, "--weights", weights, "--data", tmp_path / "empty.npz")
    assert result.exit_code == 2 and "x_test holds no images" in result.stderr
    np.savez(tmp_path / "none.npz", x=np.zeros((0, 8, 8), np.float32))
    result = cli("predict", config, tmp_path / "none.npz", "--weights", weights)
    assert result.exit_code == 2 and "holds no images" in result.stderr


def test_npz_members_without_npy_suffix_are_missing_arrays(tmp_path):
    import zipfile

    config, weights = _tiny_config(tmp_path)
    with zipfile.ZipFile(tmp_path / "nosuffix.npz", "w") as archive:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            archive.writestr(key, b"not an array")
    result = cli("evaluate", config, "--weights", weights, "--data", tmp_path / "nosuffix.npz")
    assert result.exit_code == 2 and "missing arrays" in result.stderr
