"""ResNet-20 (configs/resnet20.yaml) against PyTorch CPU: training and inference samples/s on
two threads and one, and the peak memory of training.

    python benchmarks/bench_resnet.py [--rounds 7] [--steps 2] [--batch 128] [--threads 2 1]
    python benchmarks/bench_resnet.py --profile     # where nbcnn's step goes, by layer type

The same graph in both frameworks (benchmarks/torch_models.py translates it, weights copied),
the same synthetic 32x32x3 data, batch size and thread count, timed in turns in one process
(nbcnn, PyTorch NCHW, PyTorch channels_last, nbcnn, ...: ``timing.interleaved``). A training
step is forward, backward and an Adam step (softmax fused into the cross-entropy in both,
as bench_models.py); inference is a forward pass in inference mode. Figures are medians over
rounds, ratios medians of per-round ratios (> 1: nbcnn faster).

First, one step's gradients on 64 samples are compared with the same graph run by PyTorch in
float64, for nbcnn and for PyTorch in float32 alike: a float32 framework is as close as its
rounding lets it be, and this says whether nbcnn is as close as PyTorch is.

Last, each framework trains a few steps alone in a fresh process (``--memory-only`` runs just
that), at the batch size and at half of it: the peak resident memory of each, and their
difference per sample, the memory a training sample costs free of the fixed part.
"""

from __future__ import annotations

# First, before numpy loads: timing sets OPENBLAS_THREAD_TIMEOUT (see nbcnn/__init__.py).
from timing import interleaved, machine, median_ratio, memory_mib, try_torch  # isort: skip

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from bench_models import NbcnnRunner, TorchRunner, set_threads

import nbcnn
from nbcnn.resources import estimate_training_memory
from nbcnn.train import loss_and_grad

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "resnet20.yaml"
LAYOUTS = ("torch NCHW", "torch channels_last")


def load(seed=0):
    return nbcnn.load_model(CONFIG).initialize(seed)


def synthetic(model, n, seed=0):
    """``n`` random samples of the model's input shape and random labels."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, *model.input_shape), dtype=np.float32)
    return x, rng.integers(0, model.output_shape[-1], n)


def torch_layout(model, torch, layout):
    """A TorchRunner for ``model`` in ``layout`` and the function that converts a batch."""
    from torch_models import nchw

    runner = TorchRunner(model, torch)
    if layout == "torch channels_last":
        runner.net = runner.net.to(memory_format=torch.channels_last)
        return runner, lambda x: nchw(x).contiguous(memory_format=torch.channels_last)
    return runner, nchw


def gradient_check(torch, n=64):
    """Largest norm-relative gradient difference over the parameters: (nbcnn vs PyTorch
    float64, PyTorch float32 vs float64, nbcnn vs PyTorch float32)."""
    from torch_models import nchw, to_torch

    model = load()
    x, y = synthetic(model, n)
    net32 = to_torch(model)
    net64 = copy.deepcopy(net32).double()
    model.layers[-1].fused_activation = True
    out = model.forward(x, training=True)
    _, grad, _ = loss_and_grad(model, out, y)
    model.backward(grad, input_grad=False)
    labels = torch.from_numpy(y)
    for net, xt in ((net32, nchw(x)), (net64, nchw(x).double())):
        net.train()
        torch.nn.CrossEntropyLoss()(net(xt), labels).backward()
    ours = [layer.grads[name] for layer, name in model.trainable_weights()[1]]

    def channels_last(p):
        g = p.grad.double().numpy()
        return g.transpose(2, 3, 1, 0) if g.ndim == 4 else (g.T if g.ndim == 2 else g)

    def worst(a_list, b_list):
        return max(
            float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))
            for a, b in zip(a_list, b_list)
        )

    f32 = [channels_last(p) for p in net32.parameters()]
    f64 = [channels_last(p) for p in net64.parameters()]
    return worst(ours, f64), worst(f32, f64), worst(ours, f32)


def candidates(torch, batch, steps):
    """``{"train": {name: fn}, "infer": {name: fn}}``, each fn running ``steps`` batches."""
    model = load()
    x, y = synthetic(model, batch * steps)
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
    ours = NbcnnRunner(model)
    found = {
        "train": {"nbcnn": lambda: [ours.step(a, b) for a, b in batches]},
        "infer": {"nbcnn": lambda: [ours.infer(a) for a, _ in batches]},
    }
    if torch is None:
        return found
    for layout in LAYOUTS:
        runner, convert = torch_layout(load(), torch, layout)
        tb = [(convert(a), torch.from_numpy(b.astype(np.int64))) for a, b in batches]
        found["train"][layout] = lambda r=runner, tb=tb: [r.step(a, b) for a, b in tb]
        found["infer"][layout] = lambda r=runner, tb=tb: [r.infer(a) for a, _ in tb]
    return found


def throughput(torch, threads, batch, steps, rounds):
    set_threads(threads, torch)
    print(f"\n{threads} thread(s), batch {batch}, load average {os.getloadavg()[0]:.2f}")
    print(f"  {'':26s} {'samples/s':>10} {'ms/batch':>9}  nbcnn vs it")
    for kind, cands in candidates(torch, batch, steps).items():
        medians, times = interleaved(cands, rounds, warmup=1)
        for name, seconds in medians.items():
            line = f"  {kind + ' ' + name:26s} {batch * steps / seconds:>10,.0f}"
            line += f" {seconds / steps * 1e3:>9.1f}"
            if name != "nbcnn":
                line += f"  {median_ratio(times, 'nbcnn', name):.2f}x"
            print(line)


def profile(threads, batch, steps=5):
    """Where nbcnn's training step goes: each layer type's forward and backward (3x3 and 1x1
    convolutions apart) and the optimizer, mean milliseconds over ``steps`` steps after two
    untimed ones. benchmarks/profile_step.py does this for chains, step by step; here the
    layers' own methods are wrapped, so the model runs its graph as it does in training."""
    import time
    from collections import defaultdict

    set_threads(threads, None)
    model = load()
    runner = NbcnnRunner(model)
    x, y = synthetic(model, batch)
    totals = defaultdict(float)

    def timed(owner, method, key):
        call = getattr(owner, method)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            value = call(*args, **kwargs)
            totals[key] += time.perf_counter() - start
            return value

        setattr(owner, method, wrapper)  # an instance attribute, shadowing the class's

    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            kind += " {}x{}".format(*layer.kernel_size)
        timed(layer, "forward", f"forward  {kind}")
        timed(layer, "backward", f"backward {kind}")
    timed(model.compiled.optimizer, "step", "optimizer")
    for _ in range(2):
        runner.step(x, y)
    totals.clear()
    start = time.perf_counter()
    for _ in range(steps):
        runner.step(x, y)
    step = (time.perf_counter() - start) / steps
    print(f"\nnbcnn training step, {threads} thread(s), batch {batch}: {step * 1e3:.0f} ms")
    for key, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {key:34s} {seconds / steps * 1e3:7.1f} ms  {seconds / steps / step:5.1%}")


def _train_only(framework, batch, steps):
    """Train ``steps`` batches in this (fresh) process; print as JSON its resident memory
    before the first step (imports, model, data) and its peak."""
    model = load()
    x, y = synthetic(model, batch * steps)
    if framework == "nbcnn":
        runner, convert = NbcnnRunner(model), lambda a: a
        labels = y
    else:
        import torch

        runner, convert = torch_layout(model, torch, framework)
        labels = torch.from_numpy(y.astype(np.int64))
    batches = [(convert(x[i : i + batch]), labels[i : i + batch]) for i in range(0, len(x), batch)]
    base = memory_mib("VmRSS")
    for a, b in batches:
        runner.step(a, b)
    print(json.dumps({"base_mib": base, "peak_mib": memory_mib("VmHWM")}))


def _peak(framework, batch, steps):
    here = str(Path(__file__).parent)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); import bench_resnet as b; "
        f"b._train_only({framework!r}, {batch}, {steps})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=here
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(torch, batch, steps):
    """Peak resident memory of training at ``batch`` and ``batch // 2``: the difference over
    the batch halves is the memory a training sample costs, free of the fixed part (imports,
    kernels, weights, optimizer state, allocator caches)."""
    half = batch // 2
    estimate = estimate_training_memory(load(), batch)
    print(
        f"\npeak resident memory of training ({steps} steps, each run alone in a fresh process); "
        f"\nnbcnn's own estimate: {estimate.total / 2**20:,.0f} MiB at batch {batch}, "
        f"{estimate.per_sample / 2**20:.2f} MiB a sample"
    )
    print(
        f"  {'':26s} {'batch ' + str(batch):>10} {'batch ' + str(half):>10} {'before':>7}  a sample"
    )
    for framework in ("nbcnn", *(LAYOUTS if torch is not None else ())):
        full, part = _peak(framework, batch, steps), _peak(framework, half, steps)
        slope = (full["peak_mib"] - part["peak_mib"]) / (batch - half)
        print(
            f"  {framework:26s} {full['peak_mib']:>6,.0f} MiB {part['peak_mib']:>6,.0f} MiB "
            f"{full['base_mib']:>3,.0f} MiB  {slope:.2f} MiB"
        )
    print("  (before: resident before the first step, with the imports, model and data)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2, help="batches per timed run")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="*", default=[2, 1])
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--profile", action="store_true", help="only nbcnn's step, by layer")
    args = parser.parse_args()
    torch = try_torch()
    print(machine())
    if args.profile:
        for threads in args.threads:
            profile(threads, args.batch)
        return
    if not args.memory_only:
        if torch is not None:
            ours, theirs, between = gradient_check(torch)
            print(
                "gradients of one step (64 samples), largest norm-relative difference to "
                f"PyTorch float64: nbcnn {ours:.1e}, PyTorch float32 {theirs:.1e} "
                f"(nbcnn vs PyTorch float32: {between:.1e})"
            )
        for threads in args.threads:
            throughput(torch, threads, args.batch, args.steps, args.rounds)
    memory(torch, args.batch, 4)


if __name__ == "__main__":
    main()
