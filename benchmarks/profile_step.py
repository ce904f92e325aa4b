"""Where a training step's time goes: each layer's forward and backward, the loss and the
optimizer step, timed separately over many steps.

    python benchmarks/profile_step.py [CONFIG] [--batch 128] [--steps 30] [--no-fuse] [--checks]

CONFIG defaults to configs/mnist_convnet.yaml. Prints the mean milliseconds of each part
(synthetic data of the model's shape; the numbers are the same for real images); a fused
Conv(ReLU) + max-pooling step (nbcnn/fusion.py) is one part, ``--no-fuse`` runs every layer
on its own. Use it before and after a change to a kernel.

``--checks`` times whole steps instead, two ways in turns (benchmarks/timing.py): each step
called directly as above, and through ``model.forward``/``model.backward``, which guard every
layer and check its output, dx and weight gradients against the layer contract (the run-time
checks of docs/plugins.md); it prints both medians and their difference, an upper bound of
what the checks cost, lost in the noise of a shared machine; then the checks alone, called
on the arrays of one step, which the noise does not hide.
"""

from __future__ import annotations

# First, before numpy loads: timing sets OPENBLAS_THREAD_TIMEOUT (see nbcnn/__init__.py).
import timing  # isort: skip

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import nbcnn
from nbcnn.train import loss_and_grad

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs" / "mnist_convnet.yaml"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-fuse", action="store_true", help="run every layer on its own")
    parser.add_argument(
        "--checks", action="store_true", help="whole steps with and without the contract checks"
    )
    args = parser.parse_args()
    model = nbcnn.load_model(args.config).initialize(0)
    model.fuse = not args.no_fuse
    model.compile(optimizer="adam")
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, *model.input_shape), dtype=np.float32)
    y = rng.integers(0, model.output_shape[-1], args.batch)
    params, owners = model.trainable_weights()
    totals: dict[str, float] = defaultdict(float)

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        totals[name] += time.perf_counter() - start
        return value

    model.layers[-1].fused_activation = True
    if args.checks:
        check_overhead(model, x, y, args.steps)
        return
    steps = model.steps()  # a fused conv + pool pair is one step, named "conv2d+max_pooling2d"
    names = {i: "+".join(layer.name for layer in getattr(s, "layers", [s])) for i, s in steps}
    for step in range(args.steps + 3):  # 3 warm-up steps (compile, caches)
        if step == 3:
            totals.clear()
        out = x
        for i, s in steps:
            out = timed(f"forward  {names[i]}", s.forward, out, training=True)
        _, grad, _ = timed("loss", loss_and_grad, model, out, y)
        model.layers[0].input_grad_needed = False
        for i, s in reversed(steps):
            grad = timed(f"backward {names[i]}", s.backward, grad)
        model.layers[0].input_grad_needed = True
        grads = [layer.grads[name] for layer, name in owners]
        timed("optimizer", model.compiled.optimizer.step, params, grads)
    total = sum(totals.values())
    for name, seconds in totals.items():
        share = seconds / total
        print(f"{name:<32} {seconds / args.steps * 1e3:7.2f} ms  {share:5.1%}")
    print(
        f"{'step':<32} {total / args.steps * 1e3:7.2f} ms  "
        f"({args.batch * args.steps / total:,.0f} samples/s)"
    )


def check_overhead(model, x, y, rounds: int) -> None:
    """Median milliseconds of a training step, each step called directly (no guard, no
    check) and through model.forward/backward (guarded and checked), timed in turns."""
    params, owners = model.trainable_weights()
    steps = model.steps()

    def direct():
        out = x
        for _, s in steps:
            out = s.forward(out, training=True)
        _, grad, _ = loss_and_grad(model, out, y)
        model.layers[0].input_grad_needed = False
        for _, s in reversed(steps):
            grad = s.backward(grad)
        model.layers[0].input_grad_needed = True
        model.compiled.optimizer.step(params, [layer.grads[name] for layer, name in owners])

    def checked():
        _, grad, _ = loss_and_grad(model, model.forward(x, training=True), y)
        model.backward(grad, input_grad=False)
        model.compiled.optimizer.step(params, [layer.grads[name] for layer, name in owners])

    medians, _ = timing.interleaved({"direct": direct, "checked": checked}, rounds)
    for name, seconds in medians.items():
        print(f"step {name:<8} {seconds * 1e3:8.2f} ms (median of {rounds})")
    extra = medians["checked"] - medians["direct"]
    print(f"difference   {extra * 1e3:8.2f} ms ({extra / medians['direct']:+.1%})")
    alone = checks_alone(model, x)
    print(
        f"checks alone {alone * 1e6:8.1f} us a step ({alone / medians['direct']:.3%} of the "
        "direct step)"
    )


def checks_alone(model, x, repeats: int = 2000) -> float:
    """Median seconds of one step's contract checks (each step's output, input gradient and
    weight gradients), run on the arrays a training step made."""
    model.forward(x, training=True)  # sets model._steps, the steps backward runs
    runs = model._steps
    outputs, out = [], x
    for (_, s), _ in runs:
        out = s.forward(out, training=True)
        outputs.append(out)
    gradients, grad = [], np.ones_like(out)
    for (_, s), _ in reversed(runs):
        grad = s.backward(grad)
        gradients.append(grad)
    gradients.reverse()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for ((i, _), last), y, dx in zip(runs, outputs, gradients):
            model._checked_output(i, last, y, len(x))
            model._input_gradients(i, dx, len(x))
            model._check_weight_gradients(i, last)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    main()
