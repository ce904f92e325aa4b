"""The installed plugin through nbcnn's real CLI: listed, summarised, refused by train."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

VOLUME_MODEL = {
    "name": "volume",
    "input_shape": [16, 16, 16, 1],
    "layers": [
        {"type": "Conv3D", "filters": 8, "kernel_size": 3, "activation": "relu"},
        {"type": "MaxPooling3D", "pool_size": 2},
        {"type": "Conv3D", "filters": 16, "kernel_size": 3, "strides": 2, "padding": "same"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
    ],
    "train": {"data": {"dataset": "digits"}, "epochs": 1},
}


def nbcnn(*args, cwd=None) -> subprocess.CompletedProcess:
    """Run the nbcnn command as a user would, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "nbcnn.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def write(tmp_path, doc) -> str:
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_layers_lists_the_plugin_as_calculator_only():
    proc = nbcnn("layers", "--json")
    assert proc.returncode == 0, proc.stderr
    entries = {e["name"]: e for e in json.loads(proc.stdout)}
    for name in ("Conv3D", "MaxPooling3D", "AveragePooling3D", "Conv2DTranspose"):
        entry = entries[name]
        assert entry["distribution"] == "nbcnn-volumetric" and entry["version"] == "0.1.0"
        assert entry["status"] == "ok" and entry["trainable"] is False


def test_summary_plans_a_volumetric_model(tmp_path):
    proc = nbcnn("summary", write(tmp_path, VOLUME_MODEL), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = [(r["output_shape"], r["params"], r["distribution"]) for r in doc["layers"]]
    # Conv3D 3x3x3x1x8 + 8 = 224 -> (14, 14, 14, 8); pool -> (7, 7, 7, 8);
    # Conv3D 3x3x3x8x16 + 16 = 3,472, same, stride 2 -> ceil(7 / 2) = 4;
    # Flatten 4*4*4*16 = 1,024; Dense 1,024x10 + 10 = 10,250
    assert rows == [
        ([14, 14, 14, 8], 224, "nbcnn-volumetric"),
        ([7, 7, 7, 8], 0, "nbcnn-volumetric"),
        ([4, 4, 4, 16], 3472, "nbcnn-volumetric"),
        ([1024], 0, "nbcnn"),
        ([10], 10250, "nbcnn"),
    ]
    assert doc["total_params"] == 224 + 3472 + 10250
    # receptive field: 3 (jump 1), pool 3 + 1 = 4 (jump 2), conv 4 + (3 - 1) * 2 = 8 (jump 4)
    assert doc["layers"][2]["receptive_field"] == [8, 8, 8]
    assert doc["layers"][2]["jump"] == [4, 4, 4]


def test_train_refuses_before_training_naming_layer_and_distribution(tmp_path):
    out = tmp_path / "run"
    proc = nbcnn("train", write(tmp_path, VOLUME_MODEL), "--output", out)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip()
    assert "Conv3D" in message and "'nbcnn-volumetric'" in message
    assert "layers[0] 'conv3d'" in message
    assert "calculator only" in message
    assert not out.exists()  # refused before any work
