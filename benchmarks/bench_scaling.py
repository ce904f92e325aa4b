"""Data-parallel training: measured throughput and all-reduce, and the scaling model of
docs/scaling.md.

    python benchmarks/bench_scaling.py                 # everything, about 10 minutes on 2 cores
    python benchmarks/bench_scaling.py --part allreduce

Parts:
- ``train``: samples/s of training the seed convnet (configs/mnist_convnet.yaml) and ResNet-20
  (configs/resnet20.yaml) at global batch 128 on random data, as 1 process x 2 threads, 2 MPI
  ranks x 1 thread (``mpiexec -n 2``), and 1 process x 1 thread, each a fresh process timing
  its second epoch, repeated ``--rounds`` times in turns; medians.
- ``allreduce``: seconds of one in-place float32 MPI_Allreduce on 2 ranks for sizes from 4 KB
  to 16 MB (the ring model fitted to them checks its form on this machine), and for each
  model the flat buffer against one call per weight array, each beside the model's figure.
- then the projection of docs/scaling.md from the measured compute and the ring all-reduce's
  cost ``2 (K-1)/K * bytes / bandwidth + 2 (K-1) * alpha``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from timing import machine  # noqa: E402

MODELS = {"seed convnet": "configs/mnist_convnet.yaml", "ResNet-20": "configs/resnet20.yaml"}
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")

# One rank's (or one process's) training: prints rank 0's samples/s of its second epoch.
TRAIN = """
import json, sys
import numpy as np
from nbcnn import distributed, load_model
from nbcnn.kernels._jit import set_threads
set_threads(int(sys.argv[3]))
group = distributed.start()
model = load_model(sys.argv[1])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
n = int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.random((n, *model.input_shape), dtype=np.float32)
y = rng.integers(0, 10, n)
history = model.fit(x, y, epochs=2, batch_size=128, verbose=0)
if group is None or group.root:
    print(json.dumps(history.epochs[-1]["samples_per_second"]))
"""

ALLREDUCE = """
import json, sys, time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
def timed(arrays, repeats):
    for a in arrays:
        comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
    times = []
    for _ in range(repeats):
        comm.Barrier()
        start = time.perf_counter()
        for a in arrays:
            comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
result = {"sizes": {}, "models": {}}
# The models first: after a 16 MB all-reduce has gone through the caches, the next few
# measured up to 4x slower in one run.
for name, shapes in json.loads(sys.argv[1]).items():
    arrays = [np.ones(int(np.prod(s)), np.float32) for s in shapes]
    flat = np.ones(sum(a.size for a in arrays), np.float32)
    result["models"][name] = {"flat": timed([flat], 100), "per_array": timed(arrays, 100),
                              "arrays": len(arrays), "bytes": 4 * flat.size}
for size in [1 << k for k in range(12, 25, 2)]:
    result["sizes"][size] = timed([np.ones(size // 4, np.float32)], 100)
if comm.rank == 0:
    print(json.dumps(result))
"""


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["NUMBA_NUM_THREADS"] = str(max(threads, 1))
    return env


def _run(command: list[str], threads: int) -> str:
    done = subprocess.run(
        command, cwd=ROOT, env=_env(threads), capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def train_throughput(rounds: int, samples: int) -> dict[str, dict[str, float]]:
    """Median samples/s per model and setting, the settings run in turns."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "train.py"
        script.write_text(TRAIN)
        settings = {
            "1 process x 2 threads": ([sys.executable], 2),
            "2 ranks x 1 thread": ([MPIEXEC, "-n", "2", sys.executable], 1),
            "1 process x 1 thread": ([sys.executable], 1),
        }
        results: dict[str, dict[str, list[float]]] = {}
        for name, config in MODELS.items():
            per = results.setdefault(name, {s: [] for s in settings})
            for _ in range(rounds):
                for setting, (launcher, threads) in settings.items():
                    command = [*launcher, str(script), config, str(samples), str(threads)]
                    per[setting].append(float(_run(command, threads)))
                    print(f"  {name:13s} {setting:22s} {per[setting][-1]:8.1f} samples/s",
                          file=sys.stderr)  # fmt: skip
    return {m: {s: statistics.median(v) for s, v in per.items()} for m, per in results.items()}


def weight_shapes() -> dict[str, list[list[int]]]:
    from nbcnn import load_model

    shapes = {}
    for name, config in MODELS.items():
        model = load_model(str(ROOT / config))
        model.initialize(0)
        shapes[name] = [list(a.shape) for a in model.trainable_weights()[0]]
    return shapes


def allreduce(runs: int) -> dict:
    """The ALLREDUCE script's figures, each the median over ``runs`` fresh 2-rank jobs (the
    host is shared: one job's figures moved 4x from one minute to the next)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "allreduce.py"
        script.write_text(ALLREDUCE)
        command = [MPIEXEC, "-n", "2", sys.executable, str(script), json.dumps(weight_shapes())]
        jobs = [json.loads(_run(command, 1)) for _ in range(runs)]
    first = jobs[0]
    return {
        "sizes": {k: statistics.median(j["sizes"][k] for j in jobs) for k in first["sizes"]},
        "models": {
            name: {
                **m,
                "flat": statistics.median(j["models"][name]["flat"] for j in jobs),
                "per_array": statistics.median(j["models"][name]["per_array"] for j in jobs),
            }
            for name, m in first["models"].items()
        },
        "runs": runs,
    }


def fit_ring(sizes: dict, largest: int = 4 << 20) -> tuple[float, float]:
    """``(alpha, bandwidth)`` of the ring model for 2 ranks, ``bytes / bandwidth + 2 alpha``,
    fitted to the sizes up to ``largest`` (those that stay in the caches; 16 MB goes to
    memory and runs slower per byte) by least squares of the *relative* error, so that the
    4 KB sizes set the latency as much as the megabytes set the bandwidth."""
    points = [(float(b), t) for b, t in sizes.items() if int(b) <= largest]
    w = [1.0 / t**2 for _, t in points]
    sw = sum(w)
    mx = sum(wi * x for wi, (x, _) in zip(w, points)) / sw
    my = sum(wi * y for wi, (_, y) in zip(w, points)) / sw
    sxy = sum(wi * (x - mx) * (y - my) for wi, (x, y) in zip(w, points))
    sxx = sum(wi * (x - mx) ** 2 for wi, (x, _) in zip(w, points))
    slope = sxy / sxx
    return max(my - slope * mx, 0.0) / 2, 1.0 / slope


def ring_seconds(nbytes: float, k: int, bandwidth: float, alpha: float) -> float:
    """Ring all-reduce of ``nbytes`` over ``k`` nodes: a reduce-scatter and an all-gather,
    each k-1 steps moving nbytes/k (Patarasuk & Yuan 2009; Horovod's and NCCL's algorithm)."""
    return 2 * (k - 1) / k * nbytes / bandwidth + 2 * (k - 1) * alpha


#: The networks of the projection: bytes/s one all-reduce gets (90% of the line rate) and the
#: latency of one ring step (TCP on 10 Gbit/s Ethernet; RDMA on 100 Gbit/s InfiniBand or RoCE).
NETWORKS = {"10 Gbit/s": (10e9 / 8 * 0.9, 30e-6), "100 Gbit/s": (100e9 / 8 * 0.9, 5e-6)}


def projection(per_sample: float, nbytes: float, nodes=(8, 32, 128), strong_batch=1024):
    """Efficiency = compute / (compute + all-reduce), the two not overlapped (nbcnn
    all-reduces after the backward), for ``nodes`` nodes each computing ``per_sample``
    seconds per sample: weak scaling (128 samples per node per step, the global batch grows
    with the nodes) and strong scaling (a global batch of ``strong_batch`` shared)."""
    rows = []
    for network, (bandwidth, alpha) in NETWORKS.items():
        for k in nodes:
            comm = ring_seconds(nbytes, k, bandwidth, alpha)
            weak, strong = 128 * per_sample, strong_batch / k * per_sample
            rows.append(
                {
                    "network": network,
                    "nodes": k,
                    "allreduce_ms": 1e3 * comm,
                    "weak": weak / (weak + comm),
                    "strong": strong / (strong + comm),
                    "strong_local_batch": strong_batch // k,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["train", "allreduce", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1536)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    result: dict = {}
    if args.part in ("allreduce", "all"):
        result["allreduce"] = measured = allreduce(args.rounds * 3)
        alpha, bandwidth = fit_ring(measured["sizes"])
        print(
            f"\nMPI_Allreduce, 2 ranks on this machine (median of {measured['runs']} jobs of "
            "100 calls each):"
        )
        for size, seconds in measured["sizes"].items():
            model = int(size) / bandwidth + 2 * alpha
            print(
                f"  {int(size) / 1024:8.0f} KiB  {1e3 * seconds:7.3f} ms  (model {1e3 * model:.3f})"
            )
        print(f"  ring model fitted up to 4 MiB: alpha {1e6 * alpha:.1f} us, bandwidth "
              f"{bandwidth / 1e9:.2f} GB/s")  # fmt: skip
        for name, m in measured["models"].items():
            flat = m["bytes"] / bandwidth + 2 * alpha
            per = m["bytes"] / bandwidth + 2 * alpha * m["arrays"]
            print(
                f"  {name}: {m['bytes'] / 1e6:.2f} MB in {m['arrays']} arrays: one flat buffer "
                f"{1e3 * m['flat']:.3f} ms (model {1e3 * flat:.3f}), one call per array "
                f"{1e3 * m['per_array']:.3f} ms (model {1e3 * per:.3f})"
            )
    if args.part in ("train", "all"):
        result["train"] = throughput = train_throughput(args.rounds, args.samples)
        print("\ntraining, global batch 128, samples/s (median):")
        for name, per in throughput.items():
            base = per["1 process x 2 threads"]
            cells = "  ".join(f"{s}: {v:.0f} ({v / base:.2f}x)" for s, v in per.items())
            print(f"  {name}: {cells}")
    if args.part == "all":
        print("\nprojection: nodes like this one (2 ranks x 1 thread), a ring all-reduce")
        for name, per in result["train"].items():
            per_sample = 1.0 / per["2 ranks x 1 thread"]
            nbytes = result["allreduce"]["models"][name]["bytes"]
            print(f"  {name}: {1e3 * 128 * per_sample:.1f} ms per 128 samples, "
                  f"{nbytes / 1e6:.2f} MB all-reduced per step")  # fmt: skip
            for row in projection(per_sample, nbytes):
                print(
                    f"    {row['network']:10s} {row['nodes']:4d} nodes: all-reduce "
                    f"{row['allreduce_ms']:6.2f} ms, efficiency weak {100 * row['weak']:5.1f}%"
                    f", strong (batch 1024, {row['strong_local_batch']}/node) "
                    f"{100 * row['strong']:5.1f}%"
                )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
