"""Where a training step's time goes: each layer's forward and backward, the loss and the
optimizer step, timed separately over many steps.

    python benchmarks/profile_step.py [CONFIG] [--batch 128] [--steps 30] [--no-fuse]

CONFIG defaults to configs/mnist_convnet.yaml. Prints the mean milliseconds of each part
(synthetic data of the model's shape; the numbers are the same for real images); a fused
Conv(ReLU) + max-pooling step (nbcnn/fusion.py) is one part, ``--no-fuse`` runs every layer
on its own. Use it before and after a change to a kernel.
"""

from __future__ import annotations

# First, before numpy loads: timing sets OPENBLAS_THREAD_TIMEOUT (see nbcnn/__init__.py).
import timing  # noqa: F401  # isort: skip

import argparse
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


if __name__ == "__main__":
    main()
