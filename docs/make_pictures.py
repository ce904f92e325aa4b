"""Make the README's pictures (docs/images/*.png) with nbcnn's own commands.

Inputs come with scikit-learn, so nothing is downloaded: the sample photograph ``china.jpg``
(scaled down) and the bundled 8x8 digits, on which a small convnet is trained for a few
seconds (configs/digits.yaml, 10 epochs). Run from the repository root:

    python docs/make_pictures.py

Each command is printed as it runs; README.md ("Pictures and interop") shows the same commands.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits, load_sample_image

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
PHOTO_WIDTH = 320  # pixels: enough to see the filters work, small enough for a README


def nbcnn(*args, cwd: Path) -> None:
    print("$ nbcnn", " ".join(map(str, args)), flush=True)
    subprocess.run([sys.executable, "-m", "nbcnn.cli", *map(str, args)], cwd=cwd, check=True)


def save_small_png(source: Path, target: Path) -> None:
    """Copy a picture as an optimised PNG (fewer bytes in the repository)."""
    with Image.open(source) as image:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
    target.write_bytes(buffer.getvalue())
    print(f"  {target.relative_to(ROOT)}: {len(buffer.getvalue()) / 1024:.0f} KiB")


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nbcnn-pictures-"))
    try:
        photo = Image.fromarray(load_sample_image("china.jpg"))
        photo = photo.resize(
            (PHOTO_WIDTH, round(photo.height * PHOTO_WIDTH / photo.width)),
            Image.Resampling.LANCZOS,
        )
        photo.save(work / "china.png")
        (work / "configs").mkdir()
        shutil.copy(ROOT / "configs" / "digits.yaml", work / "configs")
        digits = load_digits()
        digit = digits.images[-1]  # a test-split digit (the last 20% are held out)
        Image.fromarray((digit * 255 / 16).astype(np.uint8)).save(work / "digit.png")

        nbcnn("convolve", "china.png", "--kernel", "edge", "--out", "edge.png", cwd=work)
        nbcnn(
            "convolve", "china.png", "--kernel", "sobel-x", "--grey", "--rescale", "signed",
            "--out", "sobel-x.png", cwd=work,
        )  # fmt: skip
        config = "configs/digits.yaml"
        nbcnn("train", config, "--epochs", 10, "--output", "run", cwd=work)
        nbcnn("plot", "run", cwd=work)
        weights = ("--weights", "run/model.npz")
        nbcnn("featuremaps", config, "digit.png", *weights, "--out", "maps.png", cwd=work)
        nbcnn("filters", config, *weights, "--out", "filters.png", cwd=work)

        for source, name in [
            ("china.png", "china.png"),
            ("edge.png", "china_edge.png"),
            ("sobel-x.png", "china_sobel_x.png"),
            ("run/curves.png", "digits_curves.png"),
            ("maps.png", "digits_featuremaps.png"),
            ("filters.png", "digits_filters.png"),
        ]:
            save_small_png(work / source, IMAGES / name)
        # The 8x8 input digit, scaled up 8x for the eye.
        Image.open(work / "digit.png").resize((64, 64), Image.Resampling.NEAREST).save(
            IMAGES / "digit.png", optimize=True
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(p.stat().st_size for p in IMAGES.glob("*.png"))
    print(f"docs/images: {total / 1024:.0f} KiB in all")


if __name__ == "__main__":
    main()
