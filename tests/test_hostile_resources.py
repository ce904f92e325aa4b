"""Hostile sizes through the real CLI (issue 16, findings 9, 10 and 15).

The memory guard counts the zero-padded input of dilated 'same'/'causal' convolutions and
respects ``ulimit -v`` and cgroup limits; ``convolve``, ``plot``, ``featuremaps`` and ``filters``
refuse what would not fit or not parse with one line and exit code 2, before allocating; a
curves.png that cannot be written after a finished training is a warning, not a failure.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, cli, cli_subprocess, model_doc
from PIL import Image
from test_robustness import error_line, write_run_config

import nbcnn
from nbcnn import pictures, resources
from nbcnn.model import Sequential
from nbcnn.resources import (
    estimate_inference_memory,
    estimate_training_memory,
    inference_batch_size,
)
from nbcnn.spec import parse_spec

MiB, GiB = 1 << 20, 1 << 30

# ---------------------------------------------------------------- padded inputs (finding 10)

# The finding's two configs: dilation 5000 'same' on 8x8 pads to 10008x10008 (11.9 GiB at
# batch 32); Conv1D 'causal' with dilation 1e8 pads 64 steps to 100000064 (23.8 GiB at 64).
DILATED_2D = [
    {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same", "dilation_rate": 5000},
    {"type": "Flatten"},
    {"type": "Dense", "units": 10, "activation": "softmax"},
]
CAUSAL_1D = [
    {"type": "Reshape", "target_shape": [64, 1]},  # the digits' 8x8x1 as 64 steps
    {"type": "Conv1D", "filters": 4, "kernel_size": 2, "padding": "causal", "dilation_rate": 10**8},
    {"type": "Flatten"},
    {"type": "Dense", "units": 10, "activation": "softmax"},
]


def _model(layers, input_shape=(8, 8, 1)):
    return Sequential.from_spec(parse_spec(model_doc(*layers, input_shape=input_shape)))


@pytest.mark.parametrize(
    ("layers", "batch_size", "padded", "layer", "shown"),
    [
        (DILATED_2D, 32, 10008 * 10008, "layers[0] 'conv2d' (Conv2D)", "(10008x10008x1)"),
        (CAUSAL_1D, 64, 100_000_064, "layers[1] 'conv1d' (Conv1D)", "(1x100000064x1)"),
    ],
    ids=["conv2d-same-dilation-5000", "conv1d-causal-dilation-1e8"],
)
def test_dilated_padding_is_counted_and_refused_naming_the_layer(
    tmp_path, write_config, monkeypatch, layers, batch_size, padded, layer, shown
):
    config = write_run_config(write_config, tmp_path, layers, batch_size=batch_size)
    model = nbcnn.load_model(config)
    estimate = estimate_training_memory(model, batch_size)
    # The padded copy dominates: about 400 MB per sample, the finding's 11.9 / 23.8 GiB.
    assert padded * 4 < estimate.per_sample < padded * 4 * 1.001
    assert f"{estimate.total / GiB:.1f}" == ("11.9" if layers is DILATED_2D else "23.8")
    # Not even one sample fits in 256 MiB: the line names the layer and its padded input.
    monkeypatch.setattr("nbcnn.resources.available_memory", lambda: 256 * MiB)
    result = cli("train", config)
    assert result.exit_code == 2
    line = error_line(result.stderr, str(config), layer, shown, "256.00 MB of memory")
    assert "even batch_size 1 does not fit" in line and "dilation_rate" in line
    assert not (tmp_path / "run").exists()


def test_estimate_counts_each_buffer_the_conv_kernels_allocate():
    model = nbcnn.load_model(ROOT / "configs" / "mnist_convnet.yaml")
    outputs = 28 * 28 * 32 + 14 * 14 * 32 + 14 * 14 * 64 + 7 * 7 * 64 + 3136 + 128 + 10
    # conv1 (first, one channel): its columns twice, its padded 30x30 input (the forward's,
    # then the fused backward's) and the fused backward's 3x3x1x32 weight gradient per sample.
    conv1 = 2 * 28 * 28 * 9 + 30 * 30 + 288
    # conv2: its columns twice and the backward's padded dx, 16x16x32.
    conv2 = 2 * 14 * 14 * 9 * 32 + 16 * 16 * 32
    per_sample = estimate_training_memory(model, 128).per_sample
    assert per_sample == 4 * (3 * outputs + 2 * 28 * 28 + max(conv1, conv2))
    # A first layer with several channels pads nothing in training: no dx, and its im2col
    # reads the input in place (nbcnn/kernels/conv.py _im2col).
    first = [{"type": "Conv2D", "filters": 2, "kernel_size": 3, "padding": "same"}]
    rgb = _model(first, input_shape=(8, 8, 3))
    assert estimate_training_memory(rgb, 1).per_sample == 4 * (3 * 128 + 2 * 192 + 2 * 64 * 27)
    # Inference holds one layer at a time: never more than training at the same batch size.
    for m in (model, rgb, _model(CAUSAL_1D)):
        assert estimate_inference_memory(m, 64).total <= estimate_training_memory(m, 64).total


def test_inference_batch_size_fits_the_available_memory(monkeypatch):
    model = _model(CAUSAL_1D)  # inference: about 400 MB per sample (the padded input)
    estimate = estimate_inference_memory(model, 1)
    monkeypatch.setattr("nbcnn.resources.available_memory", lambda: 10 * estimate.total)
    assert inference_batch_size(model) == 10
    monkeypatch.setattr("nbcnn.resources.available_memory", lambda: 1)
    assert inference_batch_size(model) == 1
    monkeypatch.setattr("nbcnn.resources.available_memory", lambda: None)
    assert inference_batch_size(model, 256) == 256


# ---------------------------------------------------------------- ulimit -v and cgroups


def _address_space_limit(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# 375 M parameters (1.40 GiB of weights, 11.6 GiB to train with Adam at batch 64): more than a
# 1 GiB address space allows.
BIG_WEIGHTS = [
    {"type": "Flatten"},
    {"type": "Dense", "units": 5_000_000},
    {"type": "Dense", "units": 10, "activation": "softmax"},
]
AVAILABLE = re.compile(r"only ([\d.]+) (GB|MB|KB|B) of memory is available")


def _available_in(line: str) -> float:
    value, unit = AVAILABLE.search(line).groups()
    return float(value) * {"GB": GiB, "MB": MiB, "KB": 1 << 10, "B": 1}[unit]


def test_ulimit_v_refuses_training_in_one_line(tmp_path, write_config):
    """Under ``ulimit -v`` 1 GiB a run that would exceed it is refused before anything is
    allocated or written, with what the limit leaves (not the machine's free memory)."""
    config = write_run_config(write_config, tmp_path, BIG_WEIGHTS)
    proc = cli_subprocess("train", config, preexec_fn=_address_space_limit(GiB))
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc.stderr, str(config), "training needs about")
    assert _available_in(line) < GiB
    assert not (tmp_path / "run").exists()


def test_ulimit_v_refuses_weights_for_evaluate(tmp_path, write_config):
    """evaluate/predict's weights guard (check_parameter_memory) sees the same limit: 1.40
    GiB of float32 weights, and 2.68 GiB more while the largest is drawn in float64."""
    config = write_run_config(write_config, tmp_path, BIG_WEIGHTS)
    np.savez(tmp_path / "w.npz", x=np.zeros(1))
    proc = cli_subprocess(
        "evaluate", config, "--weights", tmp_path / "w.npz", preexec_fn=_address_space_limit(GiB)
    )
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc.stderr, str(config), "parameters need 4.08 GB", "layers[1] 'dense'")
    assert _available_in(line) < GiB


def test_available_memory_is_the_smallest_of_memavailable_rlimits_and_cgroups(
    tmp_path, monkeypatch
):
    proc_self = tmp_path / "proc"
    proc_self.mkdir()
    (proc_self / "status").write_text("Name:\tpython\nVmSize:\t 300000 kB\nVmData:\t 100000 kB\n")
    (proc_self / "cgroup").write_text("0::/\n")
    monkeypatch.setattr(resources, "PROC_SELF", proc_self)
    monkeypatch.setattr(resources, "CGROUP_ROOT", tmp_path / "no-cgroups")
    machine = resources._machine_room()[0]
    limits = {resource.RLIMIT_AS: 2 * GiB, resource.RLIMIT_DATA: resource.RLIM_INFINITY}
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (limits.get(kind, -1), -1))
    assert resources.available_memory() == min(machine, 2 * GiB - 300000 * 1024)
    limits[resource.RLIMIT_DATA] = GiB
    assert resources.available_memory() == min(machine, GiB - 100000 * 1024)
    limits[resource.RLIMIT_AS] = 1024  # already past the limit: nothing left
    assert resources.available_memory() == 0


def _write_files(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_cgroup_v2_and_v1_limits_count_with_their_parents(tmp_path):
    root, proc_self = tmp_path / "cgroup", tmp_path / "proc"
    # cgroup v2: this process in /a/b; b has no limit ("max"), a allows 3 GiB and uses 2 GiB of
    # which 512 MiB is page cache it could drop: 1.5 GiB left.
    _write_files(proc_self, {"cgroup": "0::/a/b\n"})
    _write_files(root / "a" / "b", {"memory.max": "max\n", "memory.current": "100\n"})
    stat = f"anon 1\ninactive_file {512 * MiB}\nactive_file 7\n"
    _write_files(root / "a", {"memory.max": f"{3 * GiB}\n", "memory.current": f"{2 * GiB}\n"})
    _write_files(root / "a", {"memory.stat": stat})
    assert resources._cgroup_room(root, proc_self) == [3 * GiB - (2 * GiB - 512 * MiB)]
    # cgroup v1 (the memory controller's own hierarchy): limit_in_bytes minus usage.
    _write_files(proc_self, {"cgroup": "5:memory:/job\n4:cpu,cpuacct:/other\n0::/\n"})
    v1 = root / "memory"
    _write_files(v1, {"memory.limit_in_bytes": "9223372036854771712\n"})  # v1's "no limit"
    _write_files(v1 / "job", {"memory.limit_in_bytes": f"{GiB}\n"})
    _write_files(v1 / "job", {"memory.usage_in_bytes": f"{256 * MiB}\n"})
    _write_files(v1 / "job", {"memory.stat": f"total_inactive_file {128 * MiB}\n"})
    assert min(resources._cgroup_room(root, proc_self)) == GiB - 128 * MiB
    # A usage above the limit leaves 0, never a negative size.
    _write_files(v1 / "job", {"memory.usage_in_bytes": f"{2 * GiB}\n", "memory.stat": ""})
    assert min(resources._cgroup_room(root, proc_self)) == 0


# ---------------------------------------------------------------- convolve (finding 9)


def _grey(path: Path, size: int) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def test_convolve_with_a_huge_kernel_is_refused_naming_the_kernel(tmp_path):
    """A 5000x5000 kernel (uint8 .npy, 25 MB) over a 100x100 image: with 'valid' it does not
    fit the image; with 'same' its im2col columns would take 931 GB."""
    image, out = _grey(tmp_path / "in.png", 100), tmp_path / "out.png"
    kernel = tmp_path / "k5000.npy"
    np.save(kernel, np.ones((5000, 5000), np.uint8))
    args = ("convolve", image, "--kernel", kernel, "--out", out)
    result = cli(*args)
    assert result.exit_code == 2
    error_line(result.stderr, f"{kernel}: ", "smaller than the 5000x5000 kernel")
    result = cli(*args, "--padding", "same")
    assert result.exit_code == 2
    error_line(result.stderr, f"{kernel}: ", "needs about 931.42 GB", "is available")
    assert not out.exists()


def test_convolution_memory_counts_columns_padding_and_response():
    # One 10x10 channel, a 5x5 kernel, 'same': columns 25 x 100, padded 14x14, 5 responses.
    pads = ((2, 2), (2, 2))
    need = pictures.convolution_memory((10, 10, 1), (5, 5), pads, (10, 10))
    assert need == 4 * (100 + 25 * 100 + 14 * 14 + 5 * 100)
    # Three channels whose columns fit CHUNK_BYTES together are built at once.
    need = pictures.convolution_memory((10, 10, 3), (5, 5), pads, (10, 10))
    assert need == 4 * (300 + 3 * (25 * 100 + 14 * 14) + 5 * 300)


@pytest.mark.parametrize("command", ["convolve", "featuremaps"])
def test_decompression_bombs_are_one_line(tmp_path, monkeypatch, command):
    """Pillow warns (two lines of a Python warning) above Image.MAX_IMAGE_PIXELS and raises
    above twice that: both are one line naming the image, exit 2 (scaled down here)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    out = tmp_path / "out.png"
    doc = model_doc({"type": "Conv2D", "filters": 2, "kernel_size": 3}, input_shape=(8, 8, 1))
    config = tmp_path / "m.yaml"
    config.write_text(json.dumps(doc))
    model = nbcnn.load_model(config).initialize(0)
    model.save_weights(tmp_path / "w.npz")
    for size in (40, 50):  # 1600 pixels: Pillow's warning; 2500: its error
        image = _grey(tmp_path / f"bomb{size}.png", size)
        if command == "convolve":
            result = cli("convolve", image, "--out", out)
        else:
            result = cli(
                "featuremaps", config, image, "--weights", tmp_path / "w.npz", "--out", out
            )
        assert result.exit_code == 2
        error_line(result.stderr, f"{image}: ", "decompression bomb")
    assert not out.exists()


# ---------------------------------------------------------------- grids of huge layers


def test_grids_larger_than_an_image_may_be_are_refused_before_drawing(tmp_path, monkeypatch):
    """A grid of thousands of tiles would take gigabytes (a 300x300-channel Conv2D's filters:
    20,104x23,720 pixels, 34 s before this check): refused at Pillow's own limit, scaled
    down here to 10,000 pixels so that an 8-filter layer exceeds it."""
    doc = model_doc(
        {"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same"},
        {"type": "Conv2D", "filters": 8, "kernel_size": 3},
        input_shape=(8, 8, 1),
    )
    config = tmp_path / "m.yaml"
    config.write_text(json.dumps(doc))
    nbcnn.load_model(config).initialize(0).save_weights(tmp_path / "w.npz")
    image, out = _grey(tmp_path / "in.png", 8), tmp_path / "out.png"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    result = cli("filters", config, "--weights", tmp_path / "w.npz", "--layer", "conv2d_1")
    assert result.exit_code == 2
    error_line(result.stderr, "--layer: ", "conv2d_1 (Conv2D)", "64 tiles", "10,000")
    result = cli("featuremaps", config, image, "--weights", tmp_path / "w.npz", "--out", out)
    assert result.exit_code == 2
    error_line(result.stderr, "--layer: ", "conv2d (Conv2D)", "8 tiles", "fewer channels")
    assert not out.exists()


# ---------------------------------------------------------------- plot (finding 9)


def _run_with_metrics(folder: Path, *lines: str) -> Path:
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder


def test_plot_leaves_out_non_finite_values_with_one_warning(tmp_path):
    run = _run_with_metrics(
        tmp_path / "run",
        '{"epoch": 1, "loss": 1e308, "accuracy": 0.5, "val_loss": NaN}',
        '{"epoch": 2, "loss": -1e308, "accuracy": null, "val_loss": Infinity}',
        '{"epoch": 3, "loss": 1' + "0" * 400 + ', "accuracy": 0.7, "val_loss": 0.5}',
        '{"epoch": 4, "loss": 0.5, "accuracy": 0.8, "val_loss": 0.4}',
    )
    result = cli("plot", run)
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"nbcnn: warning: {run / 'metrics.jsonl'}: 5 value(s) not drawn")
    assert "epoch 1 loss=1e+308, epoch 1 val_loss=nan, epoch 2 loss=-1e+308, ..." in lines[0]
    with Image.open(run / "curves.png") as png:
        assert png.size == (800, 340)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"epoch": 1, "loss": "abc"}', "line 2: 'loss' must be a number or null, got str"),
        ('{"epoch": 1, "val_accuracy": [1]}', "line 2: 'val_accuracy' must be a number"),
        ('{"epoch": 1, "loss": true}', "'loss' must be a number or null, got bool"),
        ('{"epoch": 100000000000000000000, "loss": 1}', "line 2 has no integer 'epoch'"),
        ('{"epoch": -1, "loss": 1}', "line 2 has no integer 'epoch'"),
        ('{"epoch": true, "loss": 1}', "line 2 has no integer 'epoch'"),
        ("[1, 2]", "line 2 has no integer 'epoch'"),
        ('{"epoch": 1, "loss": ' + "[" * 100_000 + "]" * 100_000 + "}", "line 2 is not JSON"),
        ('{"epoch": 1, "loss": 1' + "0" * 5000 + "}", "line 2 is not JSON"),
    ],
)
def test_plot_refuses_malformed_metrics_naming_file_and_line(tmp_path, line, fragment):
    run = _run_with_metrics(tmp_path / "run", '{"epoch": 0, "loss": 1}', line)
    result = cli("plot", run)
    assert result.exit_code == 2
    error_line(result.stderr, f"{run / 'metrics.jsonl'}: ", fragment)
    assert not (run / "curves.png").exists()


def test_plot_refuses_metrics_larger_than_the_cap_without_reading_them_all(tmp_path, monkeypatch):
    run = _run_with_metrics(tmp_path / "run", *['{"epoch": 1, "loss": 1}'] * 100)
    monkeypatch.setattr(pictures, "MAX_METRICS_BYTES", 1000)
    result = cli("plot", run)
    assert result.exit_code == 2
    error_line(result.stderr, "metrics.jsonl: larger than")


# ---------------------------------------------------------------- curves after training (15)


def _full_disk_for(name: str, monkeypatch) -> None:
    """os.replace fails with ENOSPC for ``name``: the atomic writer's last step."""
    replace = os.replace

    def full_disk(src, dst):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)


def test_write_curves_warns_instead_of_failing_a_finished_run(tmp_path, monkeypatch, capsys):
    run = _run_with_metrics(tmp_path / "run", '{"epoch": 1, "loss": 1.0, "accuracy": 0.5}')
    _full_disk_for("curves.png", monkeypatch)
    assert pictures.write_curves(run, missing_ok=True) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"nbcnn: warning: {run / 'curves.png'} not drawn (")
    assert "No space left on device" in err[0] and f"nbcnn plot {run}" in err[0]
    assert [p.name for p in run.iterdir()] == ["metrics.jsonl"]  # no temporary file left
    # `nbcnn plot` itself still fails, in one line, exit code 1 (a failure during work).
    result = cli("plot", run)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "No space left on device" in result.stderr
    # A matplotlib failure is a warning too, naming the exception.
    monkeypatch.setattr(os, "replace", os.replace)

    def broken(*args, **kwargs):
        raise RuntimeError("Agg ran out of room")

    monkeypatch.setattr(pictures, "render_curves", broken)
    assert pictures.write_curves(run, missing_ok=True) is None
    assert "(RuntimeError: Agg ran out of room)" in capsys.readouterr().err
    with pytest.raises(RuntimeError):
        pictures.write_curves(run)


def test_train_succeeds_when_curves_png_cannot_be_written(tmp_path, write_config, monkeypatch):
    config = write_run_config(write_config, tmp_path, epochs=1)
    _full_disk_for("curves.png", monkeypatch)
    result = cli("train", config)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "curves.png" in line]
    assert len(warnings) == 1 and "nbcnn plot" in warnings[0], result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "run" / "model.npz").exists()
    assert not (tmp_path / "run" / "curves.png").exists()
