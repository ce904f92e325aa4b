"""Start-up costs: `nbcnn summary` wall time, and `nbcnn train`'s time to its first batch on
the very first run (kernels compiled) and with numba's cache warm; second runs must not
recompile.

    python benchmarks/bench_startup.py [--runs 5]

The cold run points NUMBA_CACHE_DIR at an empty folder, so it pays every compile; the warm runs
reuse that folder. Each probe is a fresh process, timed from its start to the end of the first
training batch (at the config's ``train.batch_size``, as ``nbcnn train`` runs it), and reports
which kernels numba had to compile (``cache_misses``, over every module of nbcnn.kernels).
``--backend blas`` measures the im2col + BLAS design, the reference of the start-up target.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import time, json, sys
start = time.perf_counter()
import nbcnn
from nbcnn.data import load_dataset
from nbcnn.spec import load_spec, parse_train
model = nbcnn.load_model(sys.argv[1])
batch = int(sys.argv[2]) or parse_train(load_spec(sys.argv[1]).train, default_output="x").batch_size
data = load_dataset("digits", input_shape=model.input_shape, validation_split=0.0)
first = {}
def callback(event, info):
    if event == "batch_end" and "t" not in first:
        first["t"] = time.perf_counter() - start
        raise SystemExit  # stop after the first batch
model.compile()
try:
    model.fit(data.x_train, data.y_train, epochs=1, batch_size=batch, verbose=0, callback=callback)
except SystemExit:
    pass
import importlib, pkgutil
import nbcnn.kernels
misses = {}
for info in pkgutil.iter_modules(nbcnn.kernels.__path__):
    module = importlib.import_module(f"nbcnn.kernels.{info.name}")
    for name in dir(module):
        stats = getattr(getattr(module, name), "stats", None)
        if stats is not None and sum(stats.cache_misses.values()):  # once, where defined
            f = getattr(module, name).py_func
            misses[f"{f.__module__}.{f.__qualname__}"] = sum(stats.cache_misses.values())
print(json.dumps({"first_batch_s": first["t"], "batch": batch, "compiled": misses}))
"""


def run_probe(config: Path, cache_dir: str, backend: str, batch: int = 0) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir, "NBCNN_CONV": backend}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(config), str(batch)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary_seconds(config: Path) -> float:
    start = time.perf_counter()
    beside = Path(sys.executable).with_name("nbcnn")  # this environment's, venv or not
    command = str(beside) if beside.exists() else "nbcnn"
    subprocess.run([command, "summary", str(config)], check=True, capture_output=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="warm-cache runs per backend")
    parser.add_argument("--cold", type=int, default=3, help="first runs per backend")
    parser.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    parser.add_argument("--batch", type=int, default=0, help="default: the config's")
    parser.add_argument(
        "--backend", choices=("engine", "blas", "both"), default="both",
        help="NBCNN_CONV of the probes; both interleaves them and prints the ratio",
    )  # fmt: skip
    args = parser.parse_args()
    config = Path(args.config)
    backends = ("engine", "blas") if args.backend == "both" else (args.backend,)
    times = [summary_seconds(ROOT / "configs" / "mnist_convnet.yaml") for _ in range(args.runs)]
    print(
        f"nbcnn summary configs/mnist_convnet.yaml: median {statistics.median(times):.3f} s "
        f"over {args.runs} runs (min {min(times):.3f}, max {max(times):.3f})"
    )
    cold = {backend: [] for backend in backends}
    with tempfile.TemporaryDirectory() as root:
        for round_ in range(args.cold):  # interleaved: the host's load hits both alike
            for backend in backends:
                cache = os.path.join(root, f"{backend}-{round_}")
                cold[backend].append(run_probe(config, cache, backend, args.batch))
        for backend in backends:
            firsts = [c["first_batch_s"] for c in cold[backend]]
            print(
                f"{backend}: first run (compiles), {config.name} at batch "
                f"{cold[backend][0]['batch']}: first batch after median "
                f"{statistics.median(firsts):.2f} s ({', '.join(f'{t:.2f}' for t in firsts)}); "
                f"compiled {len(cold[backend][0]['compiled'])} kernels: "
                f"{', '.join(sorted(cold[backend][0]['compiled']))}"
            )
            cache = os.path.join(root, f"{backend}-0")
            warm = [run_probe(config, cache, backend, args.batch) for _ in range(args.runs)]
            recompiled = sorted({k for w in warm for k in w["compiled"]})
            print(
                f"{backend}: warm cache: first batch after median "
                f"{statistics.median(w['first_batch_s'] for w in warm):.2f} s over {args.runs} "
                f"runs; recompiled: {', '.join(recompiled) or 'nothing'}"
            )
    if len(backends) == 2:
        ratios = [
            e["first_batch_s"] / b["first_batch_s"]
            for e, b in zip(cold["engine"], cold["blas"], strict=True)
        ]
        print(
            f"first run, engine / blas: median {statistics.median(ratios):.2f}x "
            f"({', '.join(f'{r:.2f}' for r in ratios)})"
        )


if __name__ == "__main__":
    main()
