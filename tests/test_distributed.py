"""Data-parallel training over MPI (nbcnn/distributed.py, nbcnn/cli/workers.py).

The tests start their own MPI jobs with the mpiexec that MPICH's wheel installs beside the
venv's Python (the `mpi` extra; CI installs it with the test extra), on this machine only.
Ranks run one numba thread each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from nbcnn import distributed

MPIEXEC = Path(sys.executable).parent / "mpiexec"
pytest.importorskip("mpi4py", reason="the mpi extra (pip install 'nbcnn[mpi]')")
if not MPIEXEC.exists():  # pragma: no cover - the extra installs it
    pytest.fail(f"no {MPIEXEC}: install the mpi extra (MPICH's wheel)")

# A step that touches every part the ranks must agree on: a convolution, synchronized batch
# norm (statistics and backward), pooling, Dropout (a mask per global batch), Dense.
MODEL = {
    "input_shape": [8, 8, 2],
    "layers": [
        {"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same"},
        {"type": "BatchNormalization"},
        {"type": "Activation", "activation": "relu"},
        {"type": "MaxPooling2D"},
        {"type": "Conv2D", "filters": 6, "kernel_size": 3, "activation": "relu"},
        {"type": "Flatten"},
        {"type": "Dropout", "rate": 0.3},
        {"type": "Dense", "units": 5, "activation": "softmax"},
    ],
}

SCRIPT = """
import json, sys
import numpy as np
import nbcnn
from nbcnn import distributed
from nbcnn.kernels._jit import set_threads

set_threads(1)
group = distributed.start()
model = nbcnn.load_model(json.loads(sys.argv[2]))
model.compile(optimizer=json.loads(sys.argv[3]), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
rng = np.random.default_rng(0)
n, epochs = int(sys.argv[4]), int(sys.argv[5])
x = rng.normal(size=(n, 8, 8, 2)).astype(np.float32)
y = rng.integers(0, 5, n)
history = model.fit(x, y, epochs=epochs, batch_size=128, seed=3, verbose=0,
                    validation_data=(x[:50], y[:50]))
if group is None or group.root:
    np.savez(sys.argv[1], *model.get_weights())
    with open(sys.argv[1] + ".json", "w") as f:
        json.dump(history.history, f)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PMI_SIZE", None)
    env["NUMBA_NUM_THREADS"] = "1"
    return env


def _train_script(tmp_path: Path, ranks: int, optimizer: dict, name: str, samples, epochs):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{name}.npz"
    args = [sys.executable, str(script), str(out), json.dumps(MODEL), json.dumps(optimizer)]
    args += [str(samples), str(epochs)]
    if ranks > 1:
        args = [str(MPIEXEC), "-n", str(ranks), *args]
    done = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = np.load(out)
    return [weights[f"arr_{i}"] for i in range(len(weights))], json.loads(
        Path(f"{out}.json").read_text()
    )


@pytest.mark.parametrize("samples, epochs", [(384, 1), (321, 2)])
def test_two_ranks_of_64_equal_one_process_of_128(tmp_path, samples, epochs):
    """The issue's acceptance: the same global batches of 128, 3 steps, on 2 ranks x 64 and
    on one process (and 2 epochs each ending in an uneven batch of 65: 33 + 32); weights
    agree to float32 rounding (SGD with momentum: Adam divides by the root of tiny second
    moments, so a bias before BatchNormalization, whose gradient is rounding noise, would
    amplify it to a step of learning-rate size)."""
    sgd = {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9}
    one, history_one = _train_script(tmp_path, 1, sgd, "one", samples, epochs)
    two, history_two = _train_script(tmp_path, 2, sgd, "two", samples, epochs)
    for a, b in zip(one, two):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    for key in history_one:
        np.testing.assert_allclose(history_two[key], history_one[key], rtol=1e-5)
    # Not vacuous: every trainable weight moved from its initial value (moving_variance and
    # gamma aside, which 3 steps may leave equal to 1 in float32).
    moved = [not np.array_equal(a, b) for a, b in zip(one, _initial_weights())]
    assert sum(moved) >= len(moved) - 2, moved


def _initial_weights():
    import nbcnn

    model = nbcnn.load_model(MODEL)
    model.initialize(3)
    return model.get_weights()


# ------------------------------------------------------------------ pieces without MPI


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [1, 2, 5, 64, 127, 128])
def test_shards_cover_the_batch_once_in_order(size, n):
    group = _FakeGroup(size, 0)
    spans = []
    for rank in range(size):
        group.rank = rank
        spans.append(distributed.Group.shard(group, n))
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    sizes = [hi - lo for lo, hi in spans]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


class _FakeGroup:
    """K ranks simulated in one process: an all-reduce multiplies by K (every rank holding the
    same buffer), so a reducer that skipped a gradient or an extra is caught."""

    def __init__(self, size: int, rank: int):
        self.size, self.rank = size, rank
        self.calls = 0

    def allreduce_(self, buffer):
        self.calls += 1
        buffer *= self.size
        return buffer


@pytest.mark.parametrize("flat", [True, False])
def test_gradient_reducer_sums_every_gradient_and_extra(flat):
    rng = np.random.default_rng(1)
    params = [np.zeros((3, 3, 2, 4), np.float32), np.zeros(4, np.float32), np.zeros((7, 5))]
    grads = [rng.normal(size=p.shape).astype(np.float32) for p in params]
    group = _FakeGroup(3, 0)
    reducer = distributed.GradientReducer(group, params, extras=2, flat=flat)
    summed, extras = reducer.reduce(grads, [0.5, 1.0])
    for g, s in zip(grads, summed):
        assert s.shape == g.shape
        np.testing.assert_array_equal(s, 3 * g)
    np.testing.assert_array_equal(extras, [1.5, 3.0])
    assert group.calls == (1 if flat else len(params) + 1)


def test_not_launched_by_mpi_means_one_process(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.start() is None and distributed.active() is None
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")
    assert distributed.default_threads(2) == 1 and distributed.default_threads(16) == 8


# ------------------------------------------------------------------ the command


CONFIG = """
input_shape: [8, 8, 1]
layers:
  - {type: Conv2D, filters: 4, kernel_size: 3, activation: relu}
  - {type: BatchNormalization, momentum: 0.9}
  - {type: Flatten}
  - {type: Dense, units: 10, activation: softmax}
train:
  data: {dataset: digits, validation_split: 0.1}
  optimizer: {type: sgd, learning_rate: 0.05, momentum: 0.9}
  batch_size: 32
  epochs: %d
"""


def _config(tmp_path: Path, epochs: int = 2) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(CONFIG % epochs))
    return path


def _nbcnn(*args, cwd, timeout=300, **popen):
    command = [sys.executable, "-m", "nbcnn.cli", *map(str, args)]
    return subprocess.run(
        command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _weights(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "model.npz") as f:
        return {k: f[k] for k in f}


def test_train_workers_writes_one_run_folder_that_one_process_resumes(tmp_path):
    """`nbcnn train --workers 2`: rank 0's run folder alone, the same training as one process
    (to rounding, over 2 epochs of 41 steps), and a checkpoint that does not depend on K: the
    2-worker run resumed by one process matches one process throughout."""
    config = _config(tmp_path, epochs=1)
    two = _nbcnn("train", config, "--workers", "2", "--output", "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    assert (
        "workers: 2 processes, each batch of 32 split 2 x 16" in two.stdout
        and "test:" in two.stdout
    )
    assert two.stderr.count("warning") <= 1  # rank 0 alone speaks
    one = _nbcnn("train", config, "--threads", "1", "--output", "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    for name, w in _weights(tmp_path / "one").items():
        np.testing.assert_allclose(_weights(tmp_path / "two")[name], w, rtol=1e-4, atol=1e-5)
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == ["one", "two"]  # no rank wrote a folder of its own
    resumed = _nbcnn("train", config, "--epochs", "2", "--output", "two", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    whole = _nbcnn("train", config, "--epochs", "2", "--output", "one", "--resume", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    for name, w in _weights(tmp_path / "one").items():
        np.testing.assert_allclose(_weights(tmp_path / "two")[name], w, rtol=1e-3, atol=1e-4)
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_bad_config_with_workers_is_one_line_exit_2(tmp_path):
    config = _config(tmp_path)
    config.write_text(config.read_text().replace("filters: 4", "filters: -4"))
    done = _nbcnn("train", config, "--workers", "2", "--output", "run", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "filters" in errors[0] and "tiny.yaml" in errors[0]
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


def test_bad_data_with_workers_is_one_line_exit_2(tmp_path):
    config = _config(tmp_path)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    done = _nbcnn("train", config, "--workers", "2", "--data", "bad.npz", "--output", "run",
                  cwd=tmp_path, timeout=60)  # fmt: skip
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "bad.npz" in errors[0], done.stderr
    assert not (tmp_path / "run").exists()


def test_refused_run_folder_on_rank_0_stops_every_rank(tmp_path):
    """A check only rank 0 makes (the run folder holds a run) must not leave the others
    waiting, and the earlier run is untouched."""
    config = _config(tmp_path, epochs=1)
    first = _nbcnn("train", config, "--output", "run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = _weights(tmp_path / "run")
    done = _nbcnn("train", config, "--workers", "2", "--output", "run", cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("nbcnn: error:") == 1 and "--resume" in done.stderr
    after = _weights(tmp_path / "run")
    assert all(np.array_equal(before[k], after[k]) for k in before)


def _rank_pids(marker: str) -> dict[int, int]:
    """``{rank: pid}`` of the running ranks whose command line holds ``marker``."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() not in cmdline or b"nbcnn.cli" not in cmdline:
            continue
        for item in environ:
            if item.startswith(b"PMI_RANK="):
                pids[int(item[9:])] = int(entry.name)
    return pids


def _start_long_run(tmp_path: Path, output: str) -> subprocess.Popen:
    config = _config(tmp_path, epochs=500)
    command = [sys.executable, "-m", "nbcnn.cli", "train", str(config), "--workers", "2"]
    command += ["--output", output]
    return subprocess.Popen(
        command,
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a terminal's Ctrl-C goes to the whole foreground group
    )


def _wait_for_epochs(folder: Path, epochs: int, process) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if len((folder / "metrics.jsonl").read_text().splitlines()) >= epochs:
                return
        except OSError:
            pass
        assert process.poll() is None, process.communicate()
        time.sleep(0.1)
    raise AssertionError("no epoch committed in 120 s")


def test_a_dead_worker_stops_every_worker_and_loses_no_checkpoint(tmp_path):
    run = _start_long_run(tmp_path, "run")
    try:
        _wait_for_epochs(tmp_path / "run", 2, run)
        pids = _rank_pids(str(tmp_path / "tiny.yaml"))
        assert sorted(pids) == [0, 1], pids
        os.kill(pids[1], signal.SIGKILL)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode not in (0, 130)
    assert "a worker ended abnormally" in err and "every worker was stopped" in err
    assert not any(p for p in _rank_pids(str(tmp_path / "tiny.yaml")).values())
    done = len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    assert done >= 2
    resumed = _nbcnn("train", tmp_path / "tiny.yaml", "--epochs", done + 1, "--output", "run",
                     "--resume", cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.parametrize("target", ["terminal", "one rank"])
def test_ctrl_c_stops_every_worker_after_the_same_step(tmp_path, target):
    """Ctrl-C in the terminal (mpiexec passes it to every rank), or SIGINT to one rank alone
    (which the others learn of in the next all-reduce): every rank stops after the same step,
    rank 0 says how to resume, and the run resumes."""
    run = _start_long_run(tmp_path, "run")
    try:
        _wait_for_epochs(tmp_path / "run", 1, run)
        if target == "terminal":
            os.killpg(run.pid, signal.SIGINT)
        else:
            os.kill(_rank_pids(str(tmp_path / "tiny.yaml"))[1], signal.SIGINT)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, err
    assert err.count("nbcnn: interrupted in epoch") == 1, err
    assert "Resume with: nbcnn train" in err
    if target == "terminal":  # resumes as the message says (once: each run costs seconds)
        done = len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        resumed = _nbcnn("train", tmp_path / "tiny.yaml", "--epochs", done + 1, "--output", "run",
                         "--resume", "--workers", "2", cwd=tmp_path)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr


def test_fit_config_under_mpiexec_trains_in_step(tmp_path):
    """The Python API's twin of `nbcnn train`: `mpiexec -n 2 python script` calling
    nbcnn.fit_config joins the job by itself; rank 0 alone writes the run folder."""
    config = _config(tmp_path, epochs=1)
    script = tmp_path / "api.py"
    script.write_text(
        "import sys, nbcnn\n"
        "model, history = nbcnn.fit_config(sys.argv[1], output=sys.argv[2], verbose=0)\n"
        "print(f'epochs={len(history.epochs)};', flush=True)\n"
    )
    command = [str(MPIEXEC), "-n", "2", sys.executable, str(script), str(config), "two"]
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("epochs=1;") == 2  # both ranks (their lines may interleave)
    one = _nbcnn("train", config, "--threads", "1", "--output", "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    for name, w in _weights(tmp_path / "one").items():
        np.testing.assert_allclose(_weights(tmp_path / "two")[name], w, rtol=1e-4, atol=1e-5)


def test_a_ctrl_c_on_one_rank_at_an_epoch_end_stops_every_rank(tmp_path):
    """SIGINT reaching rank 0 alone after an epoch's last step (its flag set between that
    step's all-reduce and the epoch-end check): every rank must stop there, not rank 0 alone
    with the others waiting in the next epoch's first all-reduce."""
    script = tmp_path / "stop.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, sys
            import numpy as np
            import nbcnn
            from nbcnn import distributed
            from nbcnn.callbacks import Callback
            from nbcnn.train import StopRequested

            group = distributed.start()

            class SigintAfterFirstEpoch(Callback):
                def on_epoch_end(self, epoch, logs=None):
                    if epoch == 0 and group.rank == 0:
                        os.kill(os.getpid(), signal.SIGINT)

            model = nbcnn.load_model(sys.argv[1])
            rng = np.random.default_rng(0)
            x = rng.normal(size=(64, 8, 8, 2)).astype(np.float32)
            y = rng.integers(0, 5, 64)
            try:
                model.fit(x, y, epochs=5, batch_size=16, verbose=0,
                          callbacks=[SigintAfterFirstEpoch()])
            except StopRequested as stop:
                print(f"rank {group.rank} stopped in epoch {stop.epoch};", flush=True)
            """
        )
    )
    config = tmp_path / "model.json"
    config.write_text(json.dumps(MODEL))
    command = [str(MPIEXEC), "-n", "2", sys.executable, str(script), str(config)]
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        "rank 0 stopped in epoch 2;" in done.stdout and "rank 1 stopped in epoch 2;" in done.stdout
    )


EDGES = """
import json, sys
import numpy as np
import nbcnn
from nbcnn import distributed
from nbcnn.errors import ConfigError
from nbcnn.train import evaluate_arrays

group = distributed.start()
said = {}
# 1. An evaluation set smaller than the ranks: rank 1 has no sample and still gathers.
model = nbcnn.load_model({"input_shape": [6], "layers": [
    {"type": "Dense", "units": 16, "activation": "relu"},
    {"type": "Dense", "units": 3, "activation": "softmax"}]})
model.compile(optimizer={"type": "sgd", "learning_rate": 0.1},
              loss="sparse_categorical_crossentropy")
model.initialize(0)
said["one_sample_loss"] = evaluate_arrays(model, np.ones((1, 6), np.float32), np.array([1]),
                                          256, checked=True, sharded=True)["loss"]
# 2. Early stopping restoring its best weights after a resume: only rank 0 reads best.npz,
#    and every rank must end with the same weights.
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 6)).astype(np.float32)
y = rng.integers(0, 3, 256)
early = {"monitor": "loss", "patience": 10, "min_delta": 100.0, "restore_best_weights": True}
for epochs, resume in ((2, False), (4, True)):
    model = nbcnn.load_model({"input_shape": [6], "layers": [
        {"type": "Dense", "units": 16, "activation": "relu"},
        {"type": "Dense", "units": 3, "activation": "softmax"}]})
    model.compile(optimizer={"type": "sgd", "learning_rate": 0.1},
                  loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=64, seed=3, verbose=0, output=sys.argv[1],
              resume=resume, early_stopping=early)
flat = np.concatenate([w.ravel() for w in model.get_weights()])
said["same_weights"] = bool(all(np.array_equal(flat, w) for w in group.allgather(flat)))
# 3. A Dropout model whose last batch leaves rank 1 empty: refused alike on every rank.
model = nbcnn.load_model({"input_shape": [6], "layers": [
    {"type": "Dense", "units": 8}, {"type": "Dropout", "rate": 0.5},
    {"type": "Dense", "units": 3, "activation": "softmax"}]})
model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
try:
    model.fit(x[:129], y[:129], epochs=1, batch_size=128, verbose=0)
    said["refused"] = None
except ConfigError as err:
    said["refused"] = err.where
print(f"rank {group.rank}: {json.dumps(said)};", flush=True)
"""


def test_small_sets_resumed_early_stopping_and_empty_shards(tmp_path):
    """Three edges of the ranks' agreement, found in review: an evaluation set smaller than
    the ranks (rank 1 has nothing to predict), EarlyStopping's best weights after a resume
    (on rank 0 only, from best.npz), and a last batch that leaves a rank empty in a model
    with Dropout (whose random stream would fall behind: refused on every rank)."""
    script = tmp_path / "edges.py"
    script.write_text(EDGES)
    command = [str(MPIEXEC), "-n", "2", sys.executable, str(script), str(tmp_path / "run")]
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    said = {}
    for line in done.stdout.split(";"):
        if line.strip().startswith("rank "):
            rank, payload = line.strip()[5:].split(": ", 1)
            said[int(rank)] = json.loads(payload)
    assert sorted(said) == [0, 1], done.stdout
    assert said[0]["one_sample_loss"] == said[1]["one_sample_loss"] > 0
    assert said[0]["same_weights"] and said[1]["same_weights"]
    assert said[0]["refused"] == said[1]["refused"] == "train.batch_size"
