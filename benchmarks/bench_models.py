"""Whole-model training and inference throughput of nbcnn against PyTorch CPU.

    python benchmarks/bench_models.py                 # seed convnet, LeNet-5, VGG-CIFAR
    python benchmarks/bench_models.py --scaling       # batch 32..256 x 1 and 2 threads
    python benchmarks/bench_models.py --memory        # peak resident memory of training

Both frameworks run the same model (weights copied), the same data, batch size and thread
count, in one process, in turns (nbcnn, PyTorch, nbcnn, ...). A training step is forward,
backward and an Adam step (softmax fused into the cross-entropy in both); inference is a
forward pass in inference mode. Each figure is the median over rounds; the ratio is the median
of per-round ratios (> 1: nbcnn is faster). Gradients of one step are compared first.
The seed model uses ../shared/data/mnist_10k.npz when present, else synthetic data of its
shape; the others use synthetic data.
"""

from __future__ import annotations

# First, before numpy loads: timing sets OPENBLAS_THREAD_TIMEOUT (see nbcnn/__init__.py).
from timing import interleaved, machine, median_ratio, memory_mib, try_torch  # isort: skip

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import nbcnn
from nbcnn.data import load_dataset
from nbcnn.train import loss_and_grad

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist_10k.npz"
MODELS = {
    "seed convnet": "mnist_convnet.yaml",
    "LeNet-5": "lenet5.yaml",
    "VGG-CIFAR": "vgg_cifar.yaml",
}


def batch_data(model, n, seed=0):
    """``n`` samples shaped for ``model``: MNIST for 28x28x1 models when available."""
    if model.input_shape == (28, 28, 1) and MNIST.exists():
        data = load_dataset(
            "npz", path=str(MNIST), input_shape=model.input_shape, validation_split=0.0
        )
        return data.x_train[:n], data.y_train[:n]
    rng = np.random.default_rng(seed)
    x = rng.random((n, *model.input_shape), dtype=np.float32)
    return x, rng.integers(0, model.output_shape[-1], n)


class NbcnnRunner:
    def __init__(self, model):
        self.model = model
        model.compile(optimizer={"type": "adam", "learning_rate": 1e-3})
        self.params, self.owners = model.trainable_weights()

    def step(self, x, y):
        m = self.model
        m.layers[-1].fused_activation = True
        out = m.forward(x, training=True)
        _, grad, _ = loss_and_grad(m, out, y)
        m.backward(grad, input_grad=False)
        grads = [layer.grads[name] for layer, name in self.owners]
        m.compiled.optimizer.step(self.params, grads)
        m.layers[-1].fused_activation = False

    def infer(self, x):
        return self.model.forward(x, training=False)


class TorchRunner:
    def __init__(self, model, torch):
        from torch_models import to_torch

        self.torch = torch
        self.net = to_torch(model)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3, eps=1e-7)
        self.loss = torch.nn.CrossEntropyLoss()

    def step(self, xt, yt):
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        self.loss(self.net(xt), yt).backward()
        self.opt.step()

    def infer(self, xt):
        self.net.eval()
        with self.torch.no_grad():
            return self.net(xt)


def gradient_check(config, x, y, torch):
    """Largest norm-relative difference of nbcnn's and PyTorch's gradients on one batch."""
    from torch_models import nchw, to_torch

    model = nbcnn.load_model(ROOT / "configs" / config).initialize(0)
    net = to_torch(model)
    net.train()
    for layer in model.layers:  # dropout masks differ between frameworks: compare without
        if type(layer).__name__ == "Dropout":
            layer.rate = 0.0
    for module in net.modules():  # a Graph nests them
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.layers[-1].fused_activation = True
    out = model.forward(x, training=True)
    _, grad, _ = loss_and_grad(model, out, y)
    model.backward(grad)
    torch.nn.CrossEntropyLoss()(net(nchw(x)), torch.from_numpy(y)).backward()
    ours = [layer.grads[n] for layer, n in model.trainable_weights()[1]]
    theirs = [p.grad.numpy() for p in net.parameters()]
    worst = 0.0
    for a, b in zip(ours, theirs):
        b = b.transpose(2, 3, 1, 0) if b.ndim == 4 else (b.T if b.ndim == 2 else b)
        # Norm-relative: a max-based measure would report single cells, the norm shows
        # whether the whole agrees. On the VGG net the deep feature maps of random weights are
        # nearly flat, so some 2x2 max-pool windows hold near-ties (1.3204381 vs 1.3204522 in
        # one case) that float32 rounding orders differently in the two frameworks; each sends
        # that window's gradient to a different cell, and the difference (~3e-2) comes from
        # those windows alone: every activation agrees to ~4e-5 and the gradient entering the
        # last pooling to 7e-6.
        worst = max(worst, float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-12)))
    return worst


def compare(config, batch, rounds, steps, torch, label=None):
    """Train and inference samples/s of both frameworks on one config; returns a result dict."""
    model = nbcnn.load_model(ROOT / "configs" / config).initialize(0)
    x, y = batch_data(model, batch * steps)
    ours = NbcnnRunner(model)
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
    candidates = {"nbcnn": lambda: [ours.step(a, b) for a, b in batches]}
    infer = {"nbcnn": lambda: [ours.infer(a) for a, _ in batches]}
    if torch is not None:
        from torch_models import nchw

        theirs = TorchRunner(nbcnn.load_model(ROOT / "configs" / config).initialize(0), torch)
        tb = [(nchw(a), torch.from_numpy(b.astype(np.int64))) for a, b in batches]
        candidates["torch"] = lambda: [theirs.step(a, b) for a, b in tb]
        infer["torch"] = lambda: [theirs.infer(a) for a, _ in tb]
    result = {"model": label or config, "batch": batch}
    for kind, cands in (("train", candidates), ("infer", infer)):
        med, times = interleaved(cands, rounds, warmup=1)
        result[f"{kind}_nbcnn"] = batch * steps / med["nbcnn"]
        if torch is not None:
            result[f"{kind}_torch"] = batch * steps / med["torch"]
            result[f"{kind}_ratio"] = median_ratio(times, "nbcnn", "torch")
    return result


def print_table(results, torch):
    head = f"{'model':<14} {'batch':>5} {'train nbcnn':>12} {'train torch':>12} {'ratio':>6}"
    head += f" {'infer nbcnn':>12} {'infer torch':>12} {'ratio':>6}"
    print(head)
    for r in results:
        line = f"{r['model']:<14} {r['batch']:>5} {r['train_nbcnn']:>12,.0f}"
        nan = float("nan")
        line += f" {r.get('train_torch', nan):>12,.0f} {r.get('train_ratio', nan):>5.2f}x"
        line += f" {r['infer_nbcnn']:>12,.0f} {r.get('infer_torch', float('nan')):>12,.0f}"
        line += f" {r.get('infer_ratio', float('nan')):>5.2f}x"
        print(line)
    print("(samples/s; ratio = nbcnn / PyTorch, median of per-round ratios)")


def set_threads(threads, torch):
    from nbcnn.kernels._jit import set_threads as nb_threads

    nb_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)


def peak_memory(framework, config, batch, steps):
    """Run training alone in a fresh process and return its peak resident memory in MiB."""
    here = str(Path(__file__).parent)
    code = (
        f"import sys; sys.path.insert(0, {here!r}); import bench_models as b; "
        f"b._train_only({framework!r}, {config!r}, {batch}, {steps})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def _train_only(framework, config, batch, steps):
    model = nbcnn.load_model(ROOT / "configs" / config).initialize(0)
    x, y = batch_data(model, batch * steps)
    if framework == "torch":
        import torch
        from torch_models import nchw

        runner = TorchRunner(model, torch)
        x, y = nchw(x), torch.from_numpy(y.astype(np.int64))
    else:
        runner = NbcnnRunner(model)
    for i in range(0, len(x), batch):
        runner.step(x[i : i + batch], y[i : i + batch])
    print(json.dumps({"peak_mib": memory_mib("VmHWM")}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=8, help="batches per round")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    torch = try_torch()
    print(machine())
    if args.memory:
        for name in args.models:
            config = MODELS[name]
            ours = peak_memory("nbcnn", config, args.batch, args.steps)
            line = f"{name:<14} peak RSS training batch {args.batch}: nbcnn {ours:,.0f} MiB"
            if torch is not None:
                line += f", PyTorch {peak_memory('torch', config, args.batch, args.steps):,.0f} MiB"
            print(line)
        return
    if args.scaling:
        results = []
        for threads in (1, 2):
            set_threads(threads, torch)
            for batch in (32, 64, 128, 256):
                steps = max(2, args.steps * 128 // batch)
                results.append(
                    compare(
                        MODELS["seed convnet"],
                        batch,
                        args.rounds,
                        steps,
                        torch,
                        label=f"seed {threads}thr",
                    )
                )
        print_table(results, torch)
        return
    if torch is not None:
        for name in args.models:
            model = nbcnn.load_model(ROOT / "configs" / MODELS[name])
            x, y = batch_data(model, 64)
            worst = gradient_check(MODELS[name], x, y, torch)
            print(f"{name}: largest gradient difference vs PyTorch {worst:.1e} (relative)")
    results = [
        compare(MODELS[n], args.batch, args.rounds, args.steps, torch, label=n) for n in args.models
    ]
    print_table(results, torch)


if __name__ == "__main__":
    main()
