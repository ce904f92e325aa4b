"""End to end: ``nbcnn train`` trains the MobileNet-style config on digits (slow job)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

MOBILENET = Path(__file__).resolve().parents[3] / "configs" / "mobilenet_digits.yaml"


@pytest.mark.slow
def test_mobilenet_digits_trains_above_95_percent(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nbcnn.cli",
            "train",
            str(MOBILENET),
            "--output",
            str(tmp_path / "run"),
            "--overwrite",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    # The last line reports the test split (rich may wrap the weights path onto another line).
    tests = re.findall(r"^test: loss \S+\s+accuracy ([0-9.]+)", proc.stdout, re.MULTILINE)
    assert tests, f"no test accuracy in the output:\n{proc.stdout[-2000:]}"
    assert float(tests[-1]) > 0.95, proc.stdout[-2000:]
    assert (tmp_path / "run" / "model.npz").exists()
