"""Augmentation throughput against a training step: does ``train.augment`` starve training?

    python benchmarks/bench_augment.py [--rounds 7] [--batch-size 128]

Times each op of nbcnn/augment.py alone and all of them together on a 32x32x3 float32 batch,
and one training step (forward, loss, backward, Adam update) of configs/vgg_cifar.yaml on the
same batch size, in turns (benchmarks/timing.py's ``interleaved``: medians over rounds on a
shared machine). Prints images/s for each and the share of a step that augmenting its batch
costs; augmentation runs on the training thread, so that share is what it adds to an epoch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import interleaved, machine  # noqa: E402  (sets OpenBLAS's timeout before numpy)

#: Each op as the docs show it, and all of them together (the CIFAR recipe plus the rest).
OPS = {
    "flip": {"flip": "horizontal"},
    "crop": {"crop": {"padding": 4}},
    "translation": {"translation": 0.1},
    "rotation": {"rotation": 0.05},
    "zoom": {"zoom": 0.1},
    "brightness": {"brightness": 0.2},
    "contrast": {"contrast": 0.2},
}
ALL = {k: v for op in OPS.values() for k, v in op.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    import numpy as np

    from nbcnn.augment import Augmenter, parse_augment
    from nbcnn.model import load_model
    from nbcnn.train import loss_and_grad

    b = args.batch_size
    rng = np.random.default_rng(0)
    x = rng.random((b, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, b)

    model = load_model(ROOT / "configs" / "vgg_cifar.yaml")
    model.compile(optimizer="adam")
    model.initialize(0)
    params, owners = model.trainable_weights()
    optimizer = model.compiled.optimizer
    model.layers[-1].fused_softmax = True  # as fit runs it: softmax fused with the loss

    def step():
        out = model.forward(x, training=True)
        _, grad, _ = loss_and_grad(model, out, y)
        model.backward(grad, input_grad=False)
        optimizer.step(params, [layer.grads[name] for layer, name in owners], 1e-3)

    candidates = {"vgg_cifar training step": step}
    for name, section in [*OPS.items(), ("all seven", ALL)]:
        augmenter = Augmenter(parse_augment(section))
        candidates[name] = lambda a=augmenter: a(x, rng)

    medians, _ = interleaved(candidates, rounds=args.rounds)
    step_s = medians["vgg_cifar training step"]
    print(f"# {machine()}")
    print(f"# batch {b} of 32x32x3 float32, median of {args.rounds} rounds")
    print(f"{'':26s} {'ms/batch':>9s} {'images/s':>10s} {'of a step':>10s}")
    for name, seconds in medians.items():
        share = "" if name == "vgg_cifar training step" else f"{100 * seconds / step_s:9.1f}%"
        print(f"{name:26s} {1000 * seconds:9.2f} {b / seconds:10,.0f} {share:>10s}")


if __name__ == "__main__":
    main()
