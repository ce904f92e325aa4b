"""Time the conv and pooling kernels at the seed convnet's shapes (batch 128).

    python benchmarks/bench_kernels.py [--repeats 20]

Prints the median time of each op and its GFLOP/s (2 flops per multiply-add), next to a
plain sgemm of the same size as the op's GEMMs (the ceiling an im2col conv can reach) and
PyTorch's op when ``import torch`` works. Pooling is memory-bound, so it reports GB/s moved
(input read plus output written). Threading layer and BLAS pools are printed first: the
numbers mean little without them (STYLE.md, "Measured on these 2-core machines").
"""

from __future__ import annotations

import os

# OpenBLAS reads this once when it loads, so before numpy: idle BLAS threads sleep after 1 ms
# instead of spinning and taking the cores from numba's loops (STYLE.md).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from nbcnn.kernels import _jit, conv, pool  # noqa: E402

BATCH = 128
VALID = ((0, 0), (0, 0))
CONVS = {  # name: (input H, W, C), filters; 3x3 kernel, stride 1, 'valid'
    "conv1 28x28x1->32": ((28, 28, 1), 32),
    "conv2 13x13x32->64": ((13, 13, 32), 64),
}
POOLS = {  # name: input H, W, C; 2x2 window, stride 2
    "maxpool 26x26x32": (26, 26, 32),
    "maxpool 11x11x64": (11, 11, 64),
}


def median_seconds(fn, repeats: int) -> float:
    fn()  # compile / warm caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(name: str, seconds: float, amount: float, unit: str) -> None:
    print(f"  {name:<34} {seconds * 1e3:8.2f} ms  {amount / seconds / 1e9:7.1f} {unit}")


def try_torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def bench_conv(name, in_shape, filters, repeats, rng, torch):
    height, width, channels = in_shape
    x = rng.standard_normal((BATCH, *in_shape), dtype=np.float32)
    w = rng.standard_normal((3, 3, channels, filters), dtype=np.float32)
    b = np.zeros(filters, np.float32)
    out_h, out_w = height - 2, width - 2
    dy = rng.standard_normal((BATCH, out_h, out_w, filters), dtype=np.float32)
    rows, inner = BATCH * out_h * out_w, 9 * channels
    flops = 2.0 * rows * inner * filters
    args = ((1, 1), (1, 1), VALID)

    print(f"{name}  (GEMM {rows} x {inner} x {filters})")
    row(
        "forward",
        median_seconds(lambda: conv.conv2d_forward(x, w, b, *args), repeats),
        flops,
        "GFLOP/s",
    )
    row(
        "backward (dx, dw, db)",
        median_seconds(lambda: conv.conv2d_backward(dy, x, w, *args), repeats),
        2 * flops,
        "GFLOP/s",
    )
    row(
        "backward (dw, db only)",
        median_seconds(lambda: conv.conv2d_backward(dy, x, w, *args, need_dx=False), repeats),
        flops,
        "GFLOP/s",
    )
    a = rng.standard_normal((rows, inner), dtype=np.float32)
    bmat = rng.standard_normal((inner, filters), dtype=np.float32)
    row("sgemm of the forward's shape", median_seconds(lambda: a @ bmat, repeats), flops, "GFLOP/s")
    if torch is not None:
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
        tdy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous()
        conv2d = torch.nn.functional.conv2d
        with torch.no_grad():
            row("torch forward", median_seconds(lambda: conv2d(tx, tw), repeats), flops, "GFLOP/s")
        ty = conv2d(tx, tw)
        row(
            "torch backward",
            median_seconds(
                lambda: torch.autograd.grad(ty, (tx, tw), tdy, retain_graph=True), repeats
            ),
            2 * flops,
            "GFLOP/s",
        )


def bench_pool(name, in_shape, repeats, rng, torch):
    x = rng.standard_normal((BATCH, *in_shape), dtype=np.float32)
    y, argmax = pool.max_pool2d_forward(x, (2, 2), (2, 2), VALID)
    dy = np.ones_like(y)
    moved = 4.0 * (x.size + y.size)

    print(name)
    row(
        "max forward",
        median_seconds(lambda: pool.max_pool2d_forward(x, (2, 2), (2, 2), VALID), repeats),
        moved,
        "GB/s",
    )
    row(
        "max backward",
        median_seconds(lambda: pool.max_pool2d_backward(dy, argmax, x.shape), repeats),
        moved,
        "GB/s",
    )
    row(
        "avg forward",
        median_seconds(lambda: pool.avg_pool2d_forward(x, (2, 2), (2, 2), VALID), repeats),
        moved,
        "GB/s",
    )
    if torch is not None:
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            row(
                "torch max forward",
                median_seconds(lambda: torch.nn.functional.max_pool2d(tx, 2), repeats),
                moved,
                "GB/s",
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    repeats = parser.parse_args().repeats
    rng = np.random.default_rng(0)
    torch = try_torch()
    conv.conv2d_forward(  # launch numba's pool so that threading_info can report the layer
        np.ones((2, 3, 3, 2), np.float32),
        np.ones((1, 1, 2, 1), np.float32),
        None,
        (1, 1),
        (1, 1),
        VALID,
    )
    print("threading:", _jit.threading_info())
    print("torch:", "not installed" if torch is None else torch.__version__)
    for name, (in_shape, filters) in CONVS.items():
        bench_conv(name, in_shape, filters, repeats, rng, torch)
    for name, in_shape in POOLS.items():
        bench_pool(name, in_shape, repeats, rng, torch)


if __name__ == "__main__":
    main()
