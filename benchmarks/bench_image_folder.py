"""Image folders: first-pass decode throughput, streamed batch throughput, peak memory.

Generates N small PNGs (32x32 RGB, 10 classes: a filled shape per class at a random place,
size and colour, on a noisy background, so the set is learnable) into a temporary folder, then
measures, in one process:

1. the first pass: listing, decoding with Pillow in a thread pool and writing the uint8 cache
   (``load_dataset("folder", stream=True)`` on an empty cache), in images/s;
2. the second pass: the same call, which only hashes the file list and opens the cache;
3. the data pipeline alone: one epoch of shuffled training batches (``nbcnn.data.batches``)
   gathered from the cache file and converted to float32, in samples/s;
4. peak RSS (``resource.getrusage(...).ru_maxrss``) against the size the float32 set would
   take in memory.

Run: ``python benchmarks/bench_image_folder.py [--images 50000] [--batch-size 128]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = 10
SIZE = 32


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def draw(label: int, rng: np.random.Generator) -> Image.Image:
    """A noisy background with one shape: class = (shape kind, fill style)."""
    pixels = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    pen = ImageDraw.Draw(image)
    size = int(rng.integers(10, 24))
    x, y = (int(v) for v in rng.integers(0, SIZE - size, 2))
    box = [x, y, x + size, y + size]
    colour = tuple(int(v) for v in rng.integers(120, 256, 3))
    kind, filled = divmod(label, 2)
    fill, outline = (colour, None) if filled else (None, colour)
    if kind == 0:
        pen.ellipse(box, fill=fill, outline=outline, width=2)
    elif kind == 1:
        pen.rectangle(box, fill=fill, outline=outline, width=2)
    elif kind == 2:
        pen.polygon(
            [(x, y + size), (x + size, y + size), (x + size // 2, y)], fill=fill, outline=outline
        )
    elif kind == 3:
        pen.line([x, y, x + size, y + size], fill=colour, width=2 + 2 * filled)
    else:
        pen.line([x, y + size, x + size, y], fill=colour, width=2 + 2 * filled)
    return image


def generate(folder: Path, n: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for c in range(CLASSES):
        (folder / f"class_{c}").mkdir(parents=True)
    for i in range(n):
        label = i % CLASSES
        draw(label, rng).save(folder / f"class_{label}" / f"{i:06d}.png")
    return time.perf_counter() - start


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    from nbcnn.data import batches, load_dataset

    scratch = Path(tempfile.mkdtemp(prefix="nbcnn-bench-images-"))
    os.environ["NBCNN_HOME"] = str(scratch / "home")
    try:
        print(
            f"CPU: {cpu_name()}, {os.cpu_count()} cores seen; decode threads: "
            f"{min(32, os.cpu_count() or 1)}"
        )
        seconds = generate(scratch / "images", args.images)
        print(
            f"generated {args.images:,} PNGs ({SIZE}x{SIZE} RGB, {CLASSES} classes) in "
            f"{seconds:.1f}s"
        )
        rss_before = peak_rss()
        shape = (SIZE, SIZE, 3)
        kwargs = dict(input_shape=shape, num_classes=CLASSES, stream=True)

        start = time.perf_counter()
        ds = load_dataset("folder", path=str(scratch / "images"), **kwargs)
        first = time.perf_counter() - start
        print(
            f"first pass (list + decode + write cache): {first:.1f}s = "
            f"{args.images / first:,.0f} images/s"
        )
        start = time.perf_counter()
        ds = load_dataset("folder", path=str(scratch / "images"), **kwargs)
        print(f"second pass (cache reused): {time.perf_counter() - start:.2f}s")

        rng = np.random.default_rng(0)
        start = time.perf_counter()
        seen = 0
        for xb, _ in batches(ds.x_train, ds.y_train, args.batch_size, rng):
            seen += len(xb)
        streamed = time.perf_counter() - start
        print(
            f"streamed epoch of training batches (batch {args.batch_size}, shuffled, "
            f"float32): {seen:,} samples in {streamed:.2f}s = {seen / streamed:,.0f} samples/s"
        )

        streamed_peak = peak_rss()  # before the float32 copy below
        in_memory = np.asarray(ds.x_train)
        start = time.perf_counter()
        for _ in batches(in_memory, ds.y_train, args.batch_size, np.random.default_rng(0)):
            pass
        memory = time.perf_counter() - start
        print(
            f"same epoch from a float32 array in memory: {seen / memory:,.0f} samples/s "
            "(for comparison)"
        )
        float_bytes = args.images * int(np.prod(shape)) * 4
        print(
            f"peak RSS through generation, decoding and the streamed epoch: "
            f"{streamed_peak / 2**20:,.0f} MiB ({rss_before / 2**20:,.0f} MiB before decoding); "
            f"the whole set as float32: {float_bytes / 2**20:,.0f} MiB, the uint8 cache: "
            f"{float_bytes / 4 / 2**20:,.0f} MiB"
        )
        print(f"source: {ds.source}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
