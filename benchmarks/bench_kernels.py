"""Conv and pooling kernels at the seed convnet's shapes (batch 128), against PyTorch.

    python benchmarks/bench_kernels.py [--rounds 15]

For each op: median time, GFLOP/s (2 flops per multiply-accumulate) and, when PyTorch is
installed (``pip install torch==2.13.0``), PyTorch's op on the same data timed in turns with
nbcnn's, and the median ratio (PyTorch time / nbcnn time: > 1 means nbcnn is faster). An sgemm
of the forward's im2col shape shows the ceiling an im2col convolution can reach. Pooling is
memory-bound, so it reports GB/s moved.
"""

from __future__ import annotations

# First, before numpy loads: timing sets OPENBLAS_THREAD_TIMEOUT (see nbcnn/__init__.py).
from timing import interleaved, machine, median_ratio, try_torch  # isort: skip

import argparse

import numpy as np

from nbcnn import shapes
from nbcnn.kernels import _jit, conv, fused, pool

BATCH = 128
# The seed model (configs/mnist_convnet.yaml): 3x3 'same' convolutions, 2x2 max pooling.
CONVS = {"conv1 28x28x1->32": ((28, 28, 1), 32), "conv2 14x14x32->64": ((14, 14, 32), 64)}
POOLS = {"maxpool 28x28x32": (28, 28, 32), "maxpool 14x14x64": (14, 14, 64)}


def report(name, seconds, amount, unit, ratio=None):
    extra = "" if ratio is None else f"   nbcnn/torch speed {ratio:5.2f}x"
    print(f"  {name:<28} {seconds * 1e3:8.2f} ms  {amount / seconds / 1e9:7.1f} {unit}{extra}")


def bench_conv(name, in_shape, filters, rounds, rng, torch):
    h, w_, c = in_shape
    pads = shapes.padding_amounts((h, w_), (3, 3), (1, 1), "same")
    x = rng.standard_normal((BATCH, *in_shape), dtype=np.float32)
    w = rng.standard_normal((3, 3, c, filters), dtype=np.float32) * 0.1
    b = np.zeros(filters, np.float32)
    dy = rng.standard_normal((BATCH, h, w_, filters), dtype=np.float32)
    flops = 2.0 * BATCH * h * w_ * 9 * c * filters
    args = ((1, 1), (1, 1), pads)
    a = rng.standard_normal((BATCH * h * w_, 9 * c), dtype=np.float32)
    bm = rng.standard_normal((9 * c, filters), dtype=np.float32)
    fwd = {"nbcnn": lambda: conv.conv2d_forward(x, w, b, *args), "sgemm": lambda: a @ bm}
    bwd = {"nbcnn": lambda: conv.conv2d_backward(dy, x, w, *args)}
    # A first layer's backward: only dw and db (training never needs the input's gradient).
    wgrad = {"nbcnn": lambda: conv.conv2d_backward(dy, x, w, *args, need_dx=False)}
    if torch is not None:
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
        tb = torch.from_numpy(b).requires_grad_(True)
        tdy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous()
        f = torch.nn.functional.conv2d

        def torch_forward():
            with torch.no_grad():
                return f(tx, tw, tb, padding=1)

        ty = f(tx, tw, tb, padding=1)
        fwd["torch"] = torch_forward
        bwd["torch"] = lambda: torch.autograd.grad(ty, (tx, tw, tb), tdy, retain_graph=True)
        ty_first = f(tx.detach(), tw, tb, padding=1)  # an input that needs no gradient
        wgrad["torch"] = lambda: torch.autograd.grad(ty_first, (tw, tb), tdy, retain_graph=True)
    print(f"{name}  (im2col GEMM {BATCH * h * w_} x {9 * c} x {filters})")
    med, times = interleaved(fwd, rounds)
    ratio = median_ratio(times, "nbcnn", "torch") if torch else None
    report("forward", med["nbcnn"], flops, "GFLOP/s", ratio)
    if torch:
        report("torch forward", med["torch"], flops, "GFLOP/s")
    report("sgemm, forward's shape", med["sgemm"], flops, "GFLOP/s")
    med, times = interleaved(bwd, rounds)
    ratio = median_ratio(times, "nbcnn", "torch") if torch else None
    report("backward (dx, dw, db)", med["nbcnn"], 2 * flops, "GFLOP/s", ratio)
    if torch:
        report("torch backward", med["torch"], 2 * flops, "GFLOP/s")
    med, times = interleaved(wgrad, rounds)
    ratio = median_ratio(times, "nbcnn", "torch") if torch else None
    report("backward, first layer (dw, db)", med["nbcnn"], flops, "GFLOP/s", ratio)
    if torch:
        report("torch backward (dw, db)", med["torch"], flops, "GFLOP/s")


def bench_block(name, in_shape, filters, rounds, rng, torch):
    """A seed-model block as training runs it: Conv2D(relu) + 2x2 max pooling, fused
    (nbcnn/kernels/fused.py); the first block's backward skips dx, as a first layer's does.
    PyTorch runs conv2d, relu and max_pool2d."""
    h, w_, c = in_shape
    pads = shapes.padding_amounts((h, w_), (3, 3), (1, 1), "same")
    x = rng.standard_normal((BATCH, *in_shape), dtype=np.float32)
    w = rng.standard_normal((3, 3, c, filters), dtype=np.float32) * 0.1
    b = np.zeros(filters, np.float32)
    args = ((1, 1), (1, 1), pads, (2, 2))
    need_dx = c > 1
    pooled, code, _ = fused.conv_relu_maxpool_forward(x, w, b, *args, return_cols=True)
    dp = rng.standard_normal(pooled.shape, dtype=np.float32)
    flops = 2.0 * BATCH * h * w_ * 9 * c * filters

    def train_pair():  # forward keeping its columns, then the backward that uses them
        p, k, cols = fused.conv_relu_maxpool_forward(x, w, b, *args, return_cols=True)
        fused.conv_relu_maxpool_backward(dp, x, w, p, k, *args, need_dx=need_dx, cols=cols)

    fwd = {"nbcnn": lambda: fused.conv_relu_maxpool_forward(x, w, b, *args)}
    both = {"nbcnn": train_pair}
    if torch is not None:
        functional = torch.nn.functional
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(need_dx)
        tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
        tb = torch.from_numpy(b).requires_grad_(True)
        tdp = torch.from_numpy(dp).permute(0, 3, 1, 2).contiguous()
        wanted = (tx, tw, tb) if need_dx else (tw, tb)

        def block():
            return functional.max_pool2d(
                functional.relu(functional.conv2d(tx, tw, tb, padding=1)), 2
            )

        def torch_forward():
            with torch.no_grad():
                return block()

        fwd["torch"] = torch_forward
        both["torch"] = lambda: torch.autograd.grad(block(), wanted, tdp)
    print(f"{name}  fused conv(relu) + 2x2 max pool{'' if need_dx else ', backward without dx'}")
    for label, candidates, work in (
        ("forward", fwd, flops),
        ("forward + backward", both, (3 if need_dx else 2) * flops),
    ):
        med, times = interleaved(candidates, rounds)
        ratio = median_ratio(times, "nbcnn", "torch") if torch else None
        report(label, med["nbcnn"], work, "GFLOP/s", ratio)
        if torch:
            report(f"torch {label}", med["torch"], work, "GFLOP/s")


def bench_pool(name, in_shape, rounds, rng, torch):
    x = rng.standard_normal((BATCH, *in_shape), dtype=np.float32)
    none = ((0, 0), (0, 0))
    y, argmax = pool.max_pool2d_forward(x, (2, 2), (2, 2), none)
    dy = np.ones_like(y)
    moved = 4.0 * (x.size + y.size)
    fwd = {"nbcnn": lambda: pool.max_pool2d_forward(x, (2, 2), (2, 2), none)}
    bwd = {"nbcnn": lambda: pool.max_pool2d_backward(dy, argmax, x.shape)}
    if torch is not None:
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        ty = torch.nn.functional.max_pool2d(tx, 2)
        tdy = torch.ones_like(ty)

        def torch_forward():
            with torch.no_grad():
                return torch.nn.functional.max_pool2d(tx, 2)

        fwd["torch"] = torch_forward
        bwd["torch"] = lambda: torch.autograd.grad(ty, tx, tdy, retain_graph=True)
    print(name)
    for label, candidates in (("max forward", fwd), ("max backward", bwd)):
        med, times = interleaved(candidates, rounds)
        ratio = median_ratio(times, "nbcnn", "torch") if torch else None
        report(label, med["nbcnn"], moved, "GB/s", ratio)
        if torch:
            report(f"torch {label}", med["torch"], moved, "GB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    rng = np.random.default_rng(0)
    torch = try_torch()
    conv.conv2d_forward(  # launch numba's pool so that threading_info can report the layer
        np.ones((2, 3, 3, 2), np.float32),
        np.ones((1, 1, 2, 1), np.float32),
        None,
        (1, 1),
        (1, 1),
        ((0, 0), (0, 0)),
    )
    print(machine())
    print("threading:", _jit.threading_info())
    big = rng.standard_normal((2048, 2048), dtype=np.float32)
    med, _ = interleaved({"sgemm": lambda: big @ big}, rounds)
    print(f"large square sgemm 2048^3: {2 * 2048**3 / med['sgemm'] / 1e9:.1f} GFLOP/s (ceiling)")
    for name, (in_shape, filters) in CONVS.items():
        bench_conv(name, in_shape, filters, rounds, rng, torch)
    for name, in_shape in POOLS.items():
        bench_pool(name, in_shape, rounds, rng, torch)
    for name, (in_shape, filters) in CONVS.items():
        bench_block(name.split()[0] + " + pool", in_shape, filters, rounds, rng, torch)


if __name__ == "__main__":
    main()
