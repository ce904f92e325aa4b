"""Test helpers: run the real CLI in-process or as a subprocess, build config documents."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from nbcnn.cli import app

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str):
    """Run the real Typer app in-process; returns the click Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def cli_subprocess(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m nbcnn.cli`` as a user would, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "nbcnn.cli", *map(str, args)],
        capture_output=True,
        text=True,
        **kwargs,
    )


#: A model that trains an epoch of the embedded digits in a fraction of a second: the tests
#: of sweeps and batch prediction run many of them (add a ``train`` section).
TINY_MODEL = {
    "name": "tiny",
    "input_shape": [8, 8, 1],
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
    ],
}


def model_doc(*layers, input_shape=(28, 28, 1)):
    """A minimal config document with the given layer mappings."""
    return {"input_shape": list(input_shape), "layers": list(layers)}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every entry under ``folder``: file bytes, link targets, folders as empty markers."""
    entries = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            entries[key] = b"-> " + os.readlink(p).encode()
        elif p.is_file():
            entries[key] = p.read_bytes()
        else:
            entries[key] = b"<dir>"
    return entries
