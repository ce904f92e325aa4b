"""nbcnn's convolution engine against im2col + OpenBLAS and PyTorch CPU (NCHW and channels_last).

    python benchmarks/bench_engine.py [--threads 1 2] [--rounds 9]

At the seed convnet's shapes, batch 128: conv2 (14x14x32 -> 64, 3x3 'same') forward with bias
and ReLU, its backward (dx, dw, db), the fused conv2 + ReLU + 2x2 max-pool block forward; then
the whole seed convnet's training step (forward, backward, Adam) and inference. nbcnn runs
with NBCNN_CONV=engine and =blas; PyTorch in its default NCHW layout and in channels_last.
Candidates run in turns (benchmarks/timing.py); medians of the rounds; ratio = PyTorch time /
nbcnn time (> 1: nbcnn faster). Both nbcnn backends run on the engine's threading layer
(OpenMP); a process of its own with NBCNN_CONV=blas would run workqueue, on which the im2col
path measured 25-30% faster (``profile_step.py``). The FMA peak is measured in-process with
the engine's own micro-kernel on a tile that stays in L1 (the ceiling the engine's kernels
are measured against). GFLOP/s count the direct convolution's FLOPs (2 N OH OW F KH KW C):
where the engine runs Winograd (conv2 here; ``NBCNN_WINOGRAD=0`` turns it off) they are
effective rates, and may exceed that ceiling.
"""

from __future__ import annotations

# First, before numpy loads: timing sets OPENBLAS_THREAD_TIMEOUT (see nbcnn/__init__.py).
from timing import interleaved, machine, try_torch  # isort: skip

import argparse
import os
import time
from pathlib import Path

import numba
import numpy as np
from bench_models import NbcnnRunner, TorchRunner

import nbcnn
from nbcnn.kernels import conv, fused, microkernel
from nbcnn.kernels._jit import set_threads

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128
CONV2 = 2 * BATCH * 14 * 14 * 9 * 32 * 64 / 1e9  # GFLOP of conv2's forward


def with_backend(name, fn):
    def run():
        os.environ["NBCNN_CONV"] = name
        return fn()

    return run


@numba.njit
def _repeat_tile(config, a, rows, taps, b, bias, c, n):
    for _ in range(n):
        microkernel.tile_kernel(
            numba.literally(config), a, rows, 0, taps, taps.shape[0], b, bias, 0, c, 0,
            b.shape[1], b.shape[1], microkernel.LINEAR,
        )  # fmt: skip


def tile_peak() -> tuple[float, str]:
    """GFLOP/s of the engine's micro-kernel for 64 filters on one thread, data in L1."""
    tile = microkernel.choose_tile(64)
    k = 256
    a = np.random.default_rng(0).random(4096, dtype=np.float32)
    rows = (np.arange(tile.mr) * 257).astype(np.int64)
    taps = np.arange(k, dtype=np.int64)
    b = np.random.default_rng(1).random((k, tile.nr), dtype=np.float32)
    bias, c = np.zeros(tile.nr, np.float32), np.zeros(tile.mr * tile.nr, np.float32)
    config = tile.config(microkernel.BIAS)
    microkernel.launch(_repeat_tile, config, a, rows, taps, b, bias, c, 10)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        microkernel.launch(_repeat_tile, config, a, rows, taps, b, bias, c, 20_000)
        seconds = time.perf_counter() - start
        best = max(best, 2 * tile.mr * tile.nr * k * 20_000 / seconds / 1e9)
    return best, f"{tile.mr}x{tile.nr} tile, {tile.vl}-wide vectors"


def kernel_candidates(torch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 14, 14, 32)).astype(np.float32)
    w = rng.standard_normal((3, 3, 32, 64)).astype(np.float32) * 0.1
    b = rng.standard_normal(64).astype(np.float32)
    dy = rng.standard_normal((BATCH, 14, 14, 64)).astype(np.float32)
    geometry = ((1, 1), (1, 1), ((1, 1), (1, 1)))
    y = conv.conv2d_forward(x, w, b, *geometry, relu=True)
    ops = {
        "forward": lambda: conv.conv2d_forward(x, w, b, *geometry, relu=True),
        "backward": lambda: conv.conv2d_backward(dy, x, w, *geometry, relu_output=y),
        "block": lambda: fused.conv_relu_maxpool_forward(x, w, b, *geometry, (2, 2)),
    }
    candidates = {op: {} for op in ops}
    for op, fn in ops.items():
        for backend in ("engine", "blas"):
            candidates[op][f"nbcnn {backend}"] = with_backend(backend, fn)
    if torch is None:
        return candidates
    F = torch.nn.functional
    bt = torch.from_numpy(b)
    for layout in ("nchw", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=fmt)
        wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).contiguous(memory_format=fmt)
        xg = xt.clone().requires_grad_(True)
        wg = wt.clone().requires_grad_(True)
        bg = bt.clone().requires_grad_(True)
        dyt = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=fmt)

        def forward(xt=xt, wt=wt):
            with torch.no_grad():
                return F.relu(F.conv2d(xt, wt, bt, padding=1))

        def backward(xg=xg, wg=wg, bg=bg, dyt=dyt):
            out = F.relu(F.conv2d(xg, wg, bg, padding=1))
            out.backward(dyt)

        def block(xt=xt, wt=wt):
            with torch.no_grad():
                return F.max_pool2d(F.relu(F.conv2d(xt, wt, bt, padding=1)), 2)

        for op, fn in (("forward", forward), ("backward", backward), ("block", block)):
            candidates[op][f"torch {layout}"] = fn
    return candidates


def model_candidates(torch):
    from torch_models import nchw

    model = nbcnn.load_model(ROOT / "configs" / "mnist_convnet.yaml").initialize(0)
    runner = NbcnnRunner(model)
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, BATCH)
    candidates = {"train step": {}, "inference": {}}
    for backend in ("engine", "blas"):
        candidates["train step"][f"nbcnn {backend}"] = with_backend(
            backend, lambda: runner.step(x, y)
        )
        candidates["inference"][f"nbcnn {backend}"] = with_backend(backend, lambda: runner.infer(x))
    if torch is None:
        return candidates
    yt = torch.from_numpy(y)
    for layout in ("nchw", "channels_last"):
        theirs = TorchRunner(model, torch)
        xt = nchw(x)
        if layout == "channels_last":
            theirs.net = theirs.net.to(memory_format=torch.channels_last)
            xt = xt.contiguous(memory_format=torch.channels_last)
        candidates["train step"][f"torch {layout}"] = lambda t=theirs, xt=xt: t.step(xt, yt)
        candidates["inference"][f"torch {layout}"] = lambda t=theirs, xt=xt: t.infer(xt)
    return candidates


def report(title, candidates, rounds, flops=None):
    medians, _ = interleaved(candidates, rounds)
    reference = medians.get("nbcnn engine")
    print(f"\n{title}")
    for name, seconds in medians.items():
        line = f"  {name:22s} {seconds * 1e3:8.2f} ms"
        if flops:
            line += f"  {flops / seconds:6.0f} GFLOP/s"
        if reference and name != "nbcnn engine":
            line += f"  engine is {seconds / reference:4.2f}x faster"
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    print(machine())
    peak, tile = tile_peak()
    print(f"micro-kernel on one thread, data in L1 ({tile}): {peak:.0f} GFLOP/s")
    for threads in args.threads:
        set_threads(threads)
        torch = try_torch(threads)
        print(f"\n=== {threads} thread(s), batch {BATCH}, load average {os.getloadavg()[0]:.2f}")
        kernels = kernel_candidates(torch)
        report("conv2 forward + bias + ReLU", kernels["forward"], args.rounds, CONV2)
        report("conv2 backward (dx, dw, db)", kernels["backward"], args.rounds, 2 * CONV2)
        report("conv2 + ReLU + 2x2 max pool, forward", kernels["block"], args.rounds, CONV2)
        models = model_candidates(torch)
        report("seed convnet training step", models["train step"], args.rounds)
        report("seed convnet inference", models["inference"], args.rounds)
    # One process, one threading layer: the engine's. A process started with NBCNN_CONV=blas
    # runs workqueue instead (nbcnn/kernels/_jit.py), on which that path measured faster.
    print(f"\nnumba threading layer: {numba.threading_layer()} (the blas figures ran on it too)")


if __name__ == "__main__":
    main()
