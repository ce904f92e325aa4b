"""The depthwise plugin's kernels (plugins/nbcnn-depthwise) against PyTorch's depthwise conv.

    python benchmarks/bench_depthwise.py [--rounds 11] [--threads 2]

MobileNet-sized 3x3 depthwise layers at batch 32 (stride 1 and 2, depth multiplier 1) and the
digits MobileNet's strided multiplier-2 layer at batch 128. PyTorch runs
``conv2d(groups=C)`` in its default NCHW layout on the same data, timed in turns with nbcnn
(``timing.interleaved``); the ratio is the median of per-round ratios (> 1: nbcnn faster).
Results are compared first. Needs the plugin installed (``pip install -e
plugins/nbcnn-depthwise``) and, for the comparison, ``pip install torch==2.13.0``.
"""

from __future__ import annotations

# First, before numpy loads: timing sets OPENBLAS_THREAD_TIMEOUT (see nbcnn/__init__.py).
from timing import interleaved, machine, median_ratio, try_torch  # isort: skip

import argparse

import numpy as np
from nbcnn_depthwise import kernels

from nbcnn.kernels import set_threads

# (batch, side, channels, multiplier, stride)
LAYERS = [(32, 56, 64, 1, 1), (32, 28, 128, 1, 1), (32, 28, 128, 1, 2), (128, 8, 32, 2, 2)]


def bench_layer(n, side, c, m, s, rounds, rng, torch):
    """Time one layer's forward, and its forward + backward, against PyTorch's."""
    pad = ((1, 1), (1, 1)) if s == 1 else ((0, 1), (0, 1))  # Keras's 'same'
    x = rng.standard_normal((n, side, side, c), dtype=np.float32)
    w = rng.standard_normal((3, 3, c, m), dtype=np.float32)
    geometry = ((s, s), (1, 1), pad)
    y = kernels.depthwise_conv2d_forward(x, w, None, *geometry)
    dy = rng.standard_normal(y.shape, dtype=np.float32)

    def forward():
        return kernels.depthwise_conv2d_forward(x, w, None, *geometry)

    def forward_backward():  # PyTorch's backward needs its forward's graph: time both
        forward()
        return kernels.depthwise_conv2d_backward(dy, x, w, *geometry)

    fwd, bwd = {"nbcnn": forward}, {"nbcnn": forward_backward}
    if torch is not None:
        f = torch.nn.functional
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        tw = torch.from_numpy(w.transpose(2, 3, 0, 1).reshape(c * m, 1, 3, 3).copy())
        tw.requires_grad_(True)
        tdy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous()
        tpad = (0, 1, 0, 1)

        def conv():  # stride 2: Keras's uneven 'same' padding, which conv2d cannot express
            padded = tx if s == 1 else f.pad(tx, tpad)
            return f.conv2d(padded, tw, None, s, 1 if s == 1 else 0, 1, c)

        def torch_forward():
            with torch.no_grad():
                return conv()

        def torch_forward_backward():
            return torch.autograd.grad(conv(), (tx, tw), tdy)

        want = torch_forward().permute(0, 2, 3, 1).numpy()
        error = np.abs(y - want).max() / np.abs(want).max()
        assert error < 1e-5, f"results differ by {error:.1e}"
        fwd["torch"], bwd["torch"] = torch_forward, torch_forward_backward
    name = f"{n}x{side}x{side}x{c} M{m} stride {s}"
    for what, candidates in (("forward", fwd), ("forward + backward", bwd)):
        medians, times = interleaved(candidates, rounds)
        line = f"  {name:<28} {what:<19} nbcnn {medians['nbcnn'] * 1e3:7.2f} ms"
        if "torch" in medians:
            ratio = median_ratio(times, "nbcnn", "torch")
            line += f"   torch {medians['torch'] * 1e3:7.2f} ms   nbcnn/torch speed {ratio:.2f}x"
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    torch = try_torch(args.threads)
    print(machine(), f"threads {args.threads}")
    rng = np.random.default_rng(0)
    for layer in LAYERS:
        bench_layer(*layer, args.rounds, rng, torch)


if __name__ == "__main__":
    main()
