"""One optimizer step over the seed convnet's parameters: NumPy's passes against the fused kernels.

    python benchmarks/bench_optim.py [--threads 1 2] [--rounds 15]

The parameter arrays are the seed convnet's (configs/mnist_convnet.yaml: 3x3x1x32, 32,
3x3x32x64, 64, 3136x128, 128, 128x10, 10; 421,642 floats); one step updates all of them, for
SGD with momentum, Adam, AdamW and RMSprop. ``nbcnn.optim.FUSED`` picks the implementation:
False runs each update as NumPy's whole-array passes, True as one numba pass per array
(nbcnn/kernels/optim.py). The two run in turns (benchmarks/timing.py); medians of the rounds;
ratio = median over rounds of NumPy time / fused time (> 1: fused faster).
"""

from __future__ import annotations

# First, before numpy loads: timing sets OPENBLAS_THREAD_TIMEOUT (see nbcnn/__init__.py).
from timing import interleaved, machine, median_ratio  # isort: skip

import argparse
import os
from pathlib import Path

import numpy as np

import nbcnn
from nbcnn import optim
from nbcnn.kernels._jit import set_threads

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZERS = [
    {"type": "sgd", "momentum": 0.9},
    {"type": "adam"},
    {"type": "adamw"},
    {"type": "rmsprop"},
]


def cpu_class() -> str:
    """CPU family and model (AMD family 25 is Zen 3/Zen 4, 26 Zen 5) and the widest vectors."""
    try:
        with open("/proc/cpuinfo") as handle:
            info = dict(line.split(":", 1) for line in handle.read().split("\n\n")[0].splitlines())
    except (OSError, ValueError):
        return "unknown CPU class"
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = set(info.get("flags", "").split())
    vectors = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE/AVX"
    return f"cpu family {info.get('cpu family')} model {info.get('model')}, {vectors}"


def seed_parameters() -> list[np.ndarray]:
    model = nbcnn.load_model(ROOT / "configs" / "mnist_convnet.yaml").initialize(0)
    params, _ = model.trainable_weights()
    return [p.copy() for p in params]


def stepper(spec: dict, fused: bool, params: list[np.ndarray], grads: list[np.ndarray]):
    """One step of its own optimizer on its own copy of the parameters, fused or not."""
    opt = optim.make_optimizer(dict(spec))
    params = [p.copy() for p in params]

    def step():
        optim.FUSED = fused
        opt.step(params, grads)

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"{machine()}\n{cpu_class()}")
    params = seed_parameters()
    rng = np.random.default_rng(0)
    grads = [rng.normal(scale=1e-2, size=p.shape).astype(np.float32) for p in params]
    shapes = ", ".join("x".join(map(str, p.shape)) for p in params)
    print(f"parameters: {shapes} ({sum(p.size for p in params):,} floats)")
    for threads in args.threads:
        set_threads(threads)
        print(f"\n=== {threads} thread(s), load average {os.getloadavg()[0]:.2f}")
        for spec in OPTIMIZERS:
            candidates = {
                "numpy": stepper(spec, False, params, grads),
                "fused": stepper(spec, True, params, grads),
            }
            medians, times = interleaved(candidates, args.rounds)
            ratio = median_ratio(times, "fused", "numpy")
            print(
                f"  {spec['type']:8s} numpy {medians['numpy'] * 1e3:6.3f} ms  "
                f"fused {medians['fused'] * 1e3:6.3f} ms  fused is {ratio:4.2f}x faster"
            )
    optim.FUSED = True


if __name__ == "__main__":
    main()
