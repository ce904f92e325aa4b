"""Start-up costs: `nbcnn summary` wall time, and `nbcnn train`'s time to its first batch on
the very first run (kernels compiled) and with numba's cache warm; second runs must not
recompile.

    python benchmarks/bench_startup.py [--runs 5]

The cold run points NUMBA_CACHE_DIR at an empty folder, so it pays every compile; the warm runs
reuse that folder. Each probe is a fresh process, timed from its start to the end of the first
training batch, and reports which kernels numba had to compile (``cache_misses``).
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
model = nbcnn.load_model(sys.argv[1])
data = load_dataset("digits", input_shape=model.input_shape, validation_split=0.0)
first = {}
def callback(event, info):
    if event == "batch_end" and "t" not in first:
        first["t"] = time.perf_counter() - start
        raise SystemExit  # stop after the first batch
model.compile()
try:
    model.fit(data.x_train, data.y_train, epochs=1, batch_size=128, verbose=0, callback=callback)
except SystemExit:
    pass
from nbcnn.kernels import conv, pool
misses = {}
for module in (conv, pool):
    for name in dir(module):
        stats = getattr(getattr(module, name), "stats", None)
        if stats is not None and sum(stats.cache_misses.values()):
            misses[f"{module.__name__}.{name}"] = sum(stats.cache_misses.values())
print(json.dumps({"first_batch_s": first["t"], "compiled": misses}))
"""


def run_probe(config: Path, cache_dir: str) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(config)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary_seconds(config: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["nbcnn", "summary", str(config)], check=True, capture_output=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    config = ROOT / "configs" / "digits.yaml"
    times = [summary_seconds(ROOT / "configs" / "mnist_convnet.yaml") for _ in range(runs)]
    print(
        f"nbcnn summary configs/mnist_convnet.yaml: median {statistics.median(times):.3f} s "
        f"over {runs} runs (min {min(times):.3f}, max {max(times):.3f})"
    )
    with tempfile.TemporaryDirectory() as cache:
        cold = run_probe(config, cache)
        print(
            f"train, first run (compiles): first batch after {cold['first_batch_s']:.2f} s; "
            f"compiled {len(cold['compiled'])} kernels"
        )
        warm = [run_probe(config, cache) for _ in range(runs)]
        recompiled = sorted({k for w in warm for k in w["compiled"]})
        print(
            f"train, warm cache: first batch after median "
            f"{statistics.median(w['first_batch_s'] for w in warm):.2f} s over {runs} runs; "
            f"recompiled: {', '.join(recompiled) or 'nothing'}"
        )


if __name__ == "__main__":
    main()
