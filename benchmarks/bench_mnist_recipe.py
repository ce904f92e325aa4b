"""The seed recipe end to end: the seed convnet, 5 epochs of Adam 1e-3 at batch 128 on the
8,000 training images of ../shared/data/mnist_10k.npz, test accuracy on its 2,000 test images;
nbcnn and PyTorch CPU in the same session, one after the other, each with its own default
initialisation (nbcnn: Keras's glorot_uniform; PyTorch: its kaiming_uniform).

    python benchmarks/bench_mnist_recipe.py [--seeds 0 1 2]

Reports test accuracy and training samples/s (the training loop only, data in memory).
"""

from __future__ import annotations

# First, before numpy loads: timing sets OPENBLAS_THREAD_TIMEOUT (see nbcnn/__init__.py).
from timing import machine, try_torch  # isort: skip

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import nbcnn
from nbcnn.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist_10k.npz"
EPOCHS, BATCH = 5, 128


def run_nbcnn(data, seed):
    model = nbcnn.load_model(ROOT / "configs" / "mnist_convnet.yaml").initialize(seed)
    model.compile(optimizer={"type": "adam", "learning_rate": 1e-3})
    start = time.perf_counter()
    model.fit(data.x_train, data.y_train, epochs=EPOCHS, batch_size=BATCH, seed=seed, verbose=0)
    seconds = time.perf_counter() - start
    accuracy = model.evaluate(data.x_test, data.y_test)["accuracy"]
    return accuracy, EPOCHS * len(data.x_train) / seconds


def run_torch(torch, data, seed):
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3136, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.from_numpy(np.ascontiguousarray(data.x_train.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(data.y_train)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    net.train()
    for _ in range(EPOCHS):
        order = torch.from_numpy(rng.permutation(len(x)))
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x[idx]), y[idx]).backward()
            opt.step()
    seconds = time.perf_counter() - start
    net.eval()
    xt = torch.from_numpy(np.ascontiguousarray(data.x_test.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        predicted = np.concatenate(
            [net(xt[i : i + 256]).argmax(1).numpy() for i in range(0, len(xt), 256)]
        )
    return float((predicted == data.y_test).mean()), EPOCHS * len(x) / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    seeds = parser.parse_args().seeds
    if not MNIST.exists():
        raise SystemExit(f"{MNIST} not found: this benchmark needs the shared MNIST data")
    data = load_dataset("npz", path=str(MNIST), input_shape=(28, 28, 1), validation_split=0.0)
    assert len(data.x_train) == 8000 and len(data.x_test) == 2000
    torch = try_torch()
    print(machine())
    rows = {"nbcnn": [], "PyTorch": []}
    for seed in seeds:
        rows["nbcnn"].append(run_nbcnn(data, seed))
        if torch is not None:
            rows["PyTorch"].append(run_torch(torch, data, seed))
    for name, results in rows.items():
        if results:
            accs = ", ".join(f"{a:.4f}" for a, _ in results)
            speed = statistics.median(s for _, s in results)
            print(
                f"{name:<8} test accuracy {accs} (seeds {seeds}); training "
                f"{speed:,.0f} samples/s (median)"
            )


if __name__ == "__main__":
    main()
