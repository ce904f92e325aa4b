"""Pictures through the real CLI: filters on synthetic images read back from the PNG, feature-map
and filter grids compared tile by tile with the model's own numbers, training curves."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from PIL import Image

from nbcnn import pictures
from nbcnn.errors import DataError
from nbcnn.model import load_model
from tests.helpers import cli, cli_subprocess, model_doc

LIGHT, DARK = 200, 50


def save_grey(path, pixels):
    Image.fromarray(np.asarray(pixels, np.uint8), mode="L").save(path)
    return path


def read_png(path):
    with Image.open(path) as image:
        return np.asarray(image)


def dark_square(size=20, lo=6, hi=14):
    """A light image with a flat dark square in rows and columns lo..hi-1."""
    x = np.full((size, size), LIGHT, np.uint8)
    x[lo:hi, lo:hi] = DARK
    return x


def window_differs(x):
    """For each valid 3x3 window position: does the window hold more than one value?"""
    h, w = x.shape
    return np.array(
        [[np.ptp(x[i : i + 3, j : j + 3]) > 0 for j in range(w - 2)] for i in range(h - 2)]
    )


def test_edge_filter_is_zero_on_flat_regions_and_lights_the_square_outline(tmp_path):
    x = dark_square()
    src = save_grey(tmp_path / "square.png", x)
    result = cli("convolve", src, "--kernel", "edge", "--out", tmp_path / "edge.png")
    assert result.exit_code == 0, result.output
    y = read_png(tmp_path / "edge.png")
    assert y.shape == (18, 18)  # valid padding: 20 - 3 + 1
    edges = window_differs(x)
    assert edges.any() and (~edges).any()
    assert (y[~edges] == 0).all()  # flat light background and flat square: no response
    assert (y[edges] > 0).all()
    # The response is 8 * centre - sum of neighbours; 'abs' rescaling puts the largest
    # magnitude (a corner inside the square: 5 lighter neighbours) at 255.
    assert y.max() == 255


def test_edge_filter_signs_dark_inside_light_outside(tmp_path):
    x = dark_square()
    src = save_grey(tmp_path / "square.png", x)
    out = tmp_path / "signed.png"
    assert cli("convolve", src, "--rescale", "signed", "--out", out).exit_code == 0
    y = read_png(out).astype(int)
    centre = x[1:-1, 1:-1]  # the input pixel under each output
    edges = window_differs(x)
    assert (y[~edges] == 128).all()  # zero response is mid grey
    assert (y[edges & (centre == DARK)] < 128).all()  # a dark pixel beside light: negative
    assert (y[edges & (centre == LIGHT)] > 128).all()  # a light pixel beside dark: positive


@pytest.mark.parametrize(
    "kernel, step_axis, sign",
    [("sobel-x", 1, +1), ("sobel-x", 1, -1), ("sobel-y", 0, +1), ("sobel-y", 0, -1)],
)
def test_sobel_signs(tmp_path, kernel, step_axis, sign):
    # A step from dark to light (sign +1) or light to dark (-1) along x (axis 1) or y (axis 0).
    x = np.zeros((12, 12), np.uint8)
    ramp = np.arange(12) >= 6
    ramp = ramp if sign > 0 else ~ramp
    x[...] = 255 * (ramp[np.newaxis, :] if step_axis == 1 else ramp[:, np.newaxis])
    src = save_grey(tmp_path / "step.png", x)
    out = tmp_path / "sobel.png"
    assert (
        cli("convolve", src, "--kernel", kernel, "--rescale", "signed", "--out", out).exit_code == 0
    )
    y = read_png(out).astype(int)
    step = window_differs(x)
    assert step.any()
    assert (y[~step] == 128).all()
    assert (np.sign(y[step] - 128) == sign).all()
    # The other Sobel kernel sees no change across the step.
    other = "sobel-y" if kernel == "sobel-x" else "sobel-x"
    assert (
        cli("convolve", src, "--kernel", other, "--rescale", "signed", "--out", out).exit_code == 0
    )
    assert (read_png(out) == 128).all()


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_stride_and_padding_give_keras_output_sizes(tmp_path, stride, padding):
    h, w = 11, 16
    src = save_grey(tmp_path / "in.png", np.random.default_rng(0).integers(0, 256, (h, w)))
    out = tmp_path / "out.png"
    args = ("convolve", src, "--stride", stride, "--padding", padding, "--out", out)
    assert cli(*args).exit_code == 0
    if padding == "valid":
        expected = ((h - 3) // stride + 1, (w - 3) // stride + 1)
    else:
        expected = (math.ceil(h / stride), math.ceil(w / stride))
    assert read_png(out).shape == expected


def test_new_commands_run_as_python_dash_m(tmp_path):
    # `python -m nbcnn.cli` runs the package's __main__: every command module registers there.
    src = save_grey(tmp_path / "square.png", dark_square())
    done = cli_subprocess("convolve", src, "--out", tmp_path / "edge.png")
    assert done.returncode == 0, done.stderr
    assert read_png(tmp_path / "edge.png").shape == (18, 18)


def test_colour_images_are_filtered_per_channel(tmp_path):
    rgb = np.full((16, 16, 3), 120, np.uint8)
    rgb[5:11, 5:11, 0] = 250  # a square in the red channel only
    src = tmp_path / "colour.png"
    Image.fromarray(rgb, mode="RGB").save(src)
    out = tmp_path / "edge.png"
    assert cli("convolve", src, "--out", out).exit_code == 0
    y = read_png(out)
    assert y.shape == (14, 14, 3)
    edges = window_differs(rgb[..., 0])
    assert (y[..., 0][edges] > 0).all() and (y[..., 0][~edges] == 0).all()
    assert (y[..., 1:] == 0).all()  # flat green and blue: no response
    assert cli("convolve", src, "--grey", "--out", out).exit_code == 0
    assert read_png(out).ndim == 2


def test_blur_keeps_the_image_scale_and_same_padding_adds_zeros(tmp_path):
    src = save_grey(tmp_path / "flat.png", np.full((9, 9), 102, np.uint8))
    out = tmp_path / "blur.png"
    assert cli("convolve", src, "--kernel", "blur", "--out", out).exit_code == 0
    assert (read_png(out) == 102).all()  # the mean of a flat region is the region
    assert (
        cli("convolve", src, "--kernel", "blur", "--padding", "same", "--out", out).exit_code == 0
    )
    y = read_png(out)
    assert y.shape == (9, 9)
    assert (y[1:-1, 1:-1] == 102).all()
    assert y[0, 0] == round(102 * 4 / 9) and y[0, 4] == round(102 * 6 / 9)


def test_kernel_from_npy_file(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (10, 12)).astype(np.uint8)
    src = save_grey(tmp_path / "in.png", x)
    identity = np.zeros((3, 3), np.float32)
    identity[1, 1] = 1
    np.save(tmp_path / "k.npy", identity)
    out = tmp_path / "out.png"
    assert cli("convolve", src, "--kernel", tmp_path / "k.npy", "--out", out).exit_code == 0
    assert (read_png(out) == x[1:-1, 1:-1]).all()
    # A 1x2 kernel: the difference of horizontal neighbours, shown with min-max stretch.
    np.save(tmp_path / "d.npy", np.array([[-1.0, 1.0]]))
    args = ("convolve", src, "--kernel", tmp_path / "d.npy", "--rescale", "minmax", "--out", out)
    assert cli(*args).exit_code == 0
    diff = np.diff(x.astype(np.float64), axis=1)
    expected = np.round((diff - diff.min()) / (diff.max() - diff.min()) * 255)
    assert np.abs(read_png(out).astype(int) - expected).max() <= 1


def test_convolve_image_is_nbcnn_conv2d():
    rng = np.random.default_rng(2)
    image = rng.random((7, 9, 3), dtype=np.float32)
    w = rng.standard_normal((3, 3)).astype(np.float32)
    y = pictures.convolve_image(image, w)
    expected = np.zeros((5, 7, 3), np.float32)
    for i in range(5):
        for j in range(7):
            expected[i, j] = np.einsum("abc,ab->c", image[i : i + 3, j : j + 3], w)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def one_line_error(result, *fragments):
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nbcnn: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_convolve_errors(tmp_path):
    src = save_grey(tmp_path / "in.png", dark_square())
    out = tmp_path / "out.png"
    one_line_error(cli("convolve", src, "--kernel", "sobelx", "--out", out), "sobelx", "sobel-x")
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    one_line_error(cli("convolve", junk, "--out", out), str(junk), "not a readable image")
    one_line_error(cli("convolve", tmp_path / "missing.jpg", "--out", out), "missing.jpg")
    np.save(tmp_path / "cube.npy", np.zeros((3, 3, 3)))
    one_line_error(cli("convolve", src, "--kernel", tmp_path / "cube.npy", "--out", out), "2-D")
    one_line_error(cli("convolve", src, "--rescale", "log", "--out", out), "--rescale")
    one_line_error(cli("convolve", src, "--padding", "full", "--out", out), "--padding")
    one_line_error(cli("convolve", src, "--out", tmp_path / "out.xyz"), ".xyz")
    tiny = save_grey(tmp_path / "tiny.png", np.zeros((2, 2)))
    one_line_error(cli("convolve", tiny, "--out", out), "smaller than the 3x3 kernel")
    assert not out.exists()


# ----------------------------------------------------------------------------- grids


@pytest.fixture
def small_model(tmp_path, write_config):
    """A tiny digits-shaped convnet with seeded random weights saved to an .npz."""
    doc = model_doc(
        {"type": "Conv2D", "filters": 5, "kernel_size": 3, "padding": "same", "activation": "relu"},
        {"type": "MaxPooling2D"},
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same"},
        {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
        input_shape=(8, 8, 1),
    )
    config = write_config(doc)
    model = load_model(config).initialize(7)
    weights = tmp_path / "w.npz"
    model.save_weights(weights)
    digit = np.zeros((8, 8), np.uint8)
    digit[1:7, 2] = digit[1:7, 5] = digit[1, 2:6] = digit[6, 2:6] = 255  # a "0"
    image = save_grey(tmp_path / "digit.png", digit)
    return config, weights, image, model


def test_featuremap_grid_has_a_tile_per_channel_equal_to_the_layer_output(small_model, tmp_path):
    config, weights, image, model = small_model
    out = tmp_path / "maps.png"
    result = cli("featuremaps", config, image, "--weights", weights, "--out", out)
    assert result.exit_code == 0, result.output
    png = read_png(out)
    x = np.asarray(Image.open(image), np.float32)[..., np.newaxis] / 255
    y = model.layers[0].forward(x[np.newaxis])[0]  # the default layer: the first
    grid = pictures.featuremap_grid(model, x, source=image.name)
    assert np.array_equal(png, grid.pixels)
    assert len(grid.boxes) == 5 and grid.tile_shape == (8, 8)
    for c in range(5):
        v = y[..., c]
        expected = np.round((v - v.min()) / (v.max() - v.min()) * 255)
        assert np.abs(grid.tile(c).astype(int) - expected).max() <= 1
        # Every pixel of the upscaled tile holds its value (nearest neighbour).
        (top, left), (sy, sx) = grid.boxes[c], grid.scale
        block = png[top : top + 8 * sy, left : left + 8 * sx]
        assert np.array_equal(block, np.repeat(np.repeat(grid.tile(c), sy, 0), sx, 1))
    # Tiles do not overlap.
    cells = {(t // (8 * grid.scale[0]), left) for t, left in grid.boxes}
    assert len(cells) == 5


def test_featuremaps_of_a_later_layer(small_model, tmp_path):
    config, weights, image, model = small_model
    out = tmp_path / "pool.png"
    args = ("featuremaps", config, image, "--weights", weights, "--layer", "conv2d_1")
    assert cli(*args, "--out", out).exit_code == 0
    x = np.asarray(Image.open(image), np.float32)[np.newaxis, ..., np.newaxis] / 255
    y = pictures.layer_output(model, x, 2)[0]
    grid = pictures.featuremap_grid(model, x[0], "conv2d_1", source=image.name)
    assert np.array_equal(read_png(out), grid.pixels)
    assert len(grid.boxes) == 4 and grid.tile_shape == (4, 4)
    np.testing.assert_allclose(
        y, model.layers[2].forward(model.layers[1].forward(model.layers[0].forward(x)))[0]
    )
    for c in range(4):
        assert np.abs(grid.tile(c) - np.round(pictures.minmax(y[..., c]) * 255)).max() <= 1


def test_featuremaps_errors(small_model, tmp_path):
    config, weights, image, _ = small_model
    out = tmp_path / "x.png"
    base = ("featuremaps", config, image, "--weights", weights, "--out", out)
    one_line_error(cli(*base, "--layer", "conv2d_9"), "conv2d_9", "conv2d_1", "--layer")
    one_line_error(cli(*base, "--layer", "dense"), "'dense' (Dense)", "spatial")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG not really")
    args = ("featuremaps", config, junk, "--weights", weights, "--out", out)
    one_line_error(cli(*args), str(junk))
    assert not out.exists()


def test_featuremaps_of_a_conv1d_layer_are_strips(tmp_path, write_config):
    doc = model_doc(
        {"type": "Conv1D", "filters": 3, "kernel_size": 5, "padding": "same"},
        {"type": "GlobalAveragePooling1D"},
        input_shape=(32, 1),
    )
    model = load_model(write_config(doc)).initialize(0)
    x = np.random.default_rng(0).random((32, 1), dtype=np.float32)
    grid = pictures.featuremap_grid(model, x)
    y = model.layers[0].forward(x[np.newaxis])[0]
    assert len(grid.boxes) == 3 and grid.tile_shape == (1, 32)
    for c in range(3):
        assert np.abs(grid.tile(c)[0] - np.round(pictures.minmax(y[:, c]) * 255)).max() <= 1


def test_featuremaps_of_a_graph_merge_layer_and_a_branch(tmp_path, write_config):
    doc = model_doc(
        {"type": "Conv2D", "filters": 3, "kernel_size": 3, "padding": "same", "name": "stem"},
        {"type": "Conv2D", "filters": 3, "kernel_size": 3, "padding": "same"},
        {"type": "Add", "inputs": [-1, "stem"]},
        {"type": "Conv2D", "filters": 2, "kernel_size": 1, "inputs": "input_layer", "name": "side"},
        {"type": "MaxPooling2D", "inputs": "add"},
        {"type": "MaxPooling2D", "inputs": "side"},
        {"type": "Concatenate", "inputs": [-2, -1]},
        {"type": "Flatten"},
        {"type": "Dense", "units": 2},
        input_shape=(8, 8, 1),
    )
    config = write_config(doc)
    model = load_model(config).initialize(3)
    weights = tmp_path / "w.npz"
    model.save_weights(weights)
    image = save_grey(tmp_path / "digit.png", dark_square(8, 2, 6))
    x = np.asarray(Image.open(image), np.float32)[np.newaxis, ..., np.newaxis] / 255
    stem = model.layers[0].forward(x)
    side = model.layers[3].forward(x)  # a branch on the model's input, listed after the Add
    added = stem + model.layers[1].forward(stem)
    pooled = [model.layers[4].forward(added), model.layers[5].forward(side)]
    joined = np.concatenate(pooled, axis=-1)
    for name, want in (("add", added), ("side", side), ("concatenate", joined)):
        out = tmp_path / f"{name}.png"
        args = ("featuremaps", config, image, "--weights", weights, "--layer", name)
        result = cli(*args, "--out", out)
        assert result.exit_code == 0, result.output
        grid = pictures.featuremap_grid(model, x[0], name, source=image.name)
        assert np.array_equal(read_png(out), grid.pixels)
        assert len(grid.boxes) == want.shape[-1] and grid.tile_shape == want.shape[1:3]
        for c in range(want.shape[-1]):
            expected = np.round(pictures.minmax(want[0, ..., c]) * 255)
            assert np.abs(grid.tile(c) - expected).max() <= 1
    # Every layer with spatial maps can be drawn, merging ones included.
    one_line_error(
        cli(*args[:-2], "--layer", "flatten", "--out", tmp_path / "flatten.png"),
        "layers that have: stem, conv2d, add, side, max_pooling2d, max_pooling2d_1, concatenate",
    )


def test_filters_grid_draws_each_learned_filter(small_model, tmp_path):
    config, weights, _, model = small_model
    out = tmp_path / "filters.png"
    assert cli("filters", config, "--weights", weights, "--out", out).exit_code == 0
    grid = pictures.filter_grid(model)
    assert np.array_equal(read_png(out), grid.pixels)
    w = model.layers[0].params["kernel"]  # (3, 3, 1, 5)
    assert len(grid.boxes) == 5 and grid.tile_shape == (3, 3)
    for f in range(5):
        v = w[..., 0, f]
        expected = np.round((v - v.min()) / (v.max() - v.min()) * 255)
        assert np.abs(grid.tile(f).astype(int) - expected).max() <= 1
    # A layer with 5 input channels: one tile per filter and channel, one row per filter.
    args = ("filters", config, "--weights", weights, "--layer", "conv2d_1", "--out", out)
    assert cli(*args).exit_code == 0
    grid = pictures.filter_grid(model, "conv2d_1")
    assert len(grid.boxes) == 4 * 5
    assert len({top for top, _ in grid.boxes}) == 4
    w = model.layers[2].params["kernel"]
    scaled = pictures.minmax(w[..., 3])  # filter 3, over all its channels
    assert np.abs(grid.tile(3 * 5 + 2) - np.round(scaled[..., 2] * 255)).max() <= 1
    one_line_error(
        cli("filters", config, "--weights", weights, "--layer", "flatten", "--out", out),
        "'flatten' (Flatten)",
        "conv2d, conv2d_1",
    )


def test_filters_of_an_rgb_layer_are_colour_tiles(tmp_path, write_config):
    doc = model_doc({"type": "Conv2D", "filters": 2, "kernel_size": 5}, input_shape=(16, 16, 3))
    model = load_model(write_config(doc)).initialize(3)
    grid = pictures.filter_grid(model)
    w = model.layers[0].params["kernel"]
    assert grid.pixels.ndim == 3 and len(grid.boxes) == 2
    assert np.abs(grid.tile(1) - np.round(pictures.minmax(w[..., 1]) * 255)).max() <= 1


# ----------------------------------------------------------------------------- curves

C0, C1 = np.array([0x1F, 0x77, 0xB4]), np.array([0xFF, 0x7F, 0x0E])  # train, validation


def write_metrics(folder, with_validation=True):
    folder.mkdir()
    lines = []
    for epoch in range(1, 6):
        record = {"epoch": epoch, "loss": 2.0 / epoch, "accuracy": 0.5 + 0.08 * epoch}
        if with_validation:
            record |= {"val_loss": 2.2 / epoch, "val_accuracy": 0.45 + 0.08 * epoch}
        else:
            record |= {"val_loss": None, "val_accuracy": None}
        lines.append(json.dumps(record))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def colour_mask(rgb, colour):
    return np.abs(rgb[..., :3].astype(int) - colour).sum(axis=-1) < 60


def line_height_at_ends(mask):
    """Mean row of the line's pixels in its leftmost and rightmost 10% of columns."""
    rows, cols = np.nonzero(mask)
    span = cols.max() - cols.min()
    left = rows[cols <= cols.min() + span // 10].mean()
    right = rows[cols >= cols.max() - span // 10].mean()
    return left, right


def test_plot_draws_loss_and_accuracy_per_epoch(tmp_path):
    run = write_metrics(tmp_path / "run")
    result = cli("plot", run)
    assert result.exit_code == 0, result.output
    rgb = read_png(run / "curves.png")
    height, width = rgb.shape[:2]
    assert (width, height) == (800, 340)
    body = rgb[int(0.15 * height) :]  # below the legend
    loss, accuracy = body[:, : width // 2], body[:, width // 2 :]
    for panel in (loss, accuracy):
        assert colour_mask(panel, C0).sum() > 100 and colour_mask(panel, C1).sum() > 100
    left, right = line_height_at_ends(colour_mask(loss, C0))
    assert right > left + 50  # loss falls: the line ends lower in the picture
    left, right = line_height_at_ends(colour_mask(accuracy, C0))
    assert right < left - 50  # accuracy rises


def test_plot_without_validation_draws_only_training(tmp_path):
    run = write_metrics(tmp_path / "run", with_validation=False)
    out = tmp_path / "elsewhere.png"
    assert cli("plot", run, "--out", out).exit_code == 0
    rgb = read_png(out)
    assert colour_mask(rgb, C0).sum() > 100
    assert colour_mask(rgb, C1).sum() == 0
    assert not (run / "curves.png").exists()


def test_write_curves_from_a_real_training_run(tmp_path, write_config):
    doc = model_doc(
        {"type": "Conv2D", "filters": 2, "kernel_size": 3},
        {"type": "Flatten"},
        {"type": "Dense", "units": 3, "activation": "softmax"},
        input_shape=(6, 6, 1),
    )
    doc["train"] = {"data": {"dataset": "synthetic"}, "epochs": 2, "batch_size": 16}
    config = write_config(doc)
    run = tmp_path / "run"
    assert cli("train", config, "--output", run).exit_code == 0
    assert pictures.write_curves(run) == run / "curves.png"
    assert read_png(run / "curves.png").shape == (340, 800, 4)


def test_plot_errors_and_missing_matplotlib(tmp_path, monkeypatch, capsys):
    one_line_error(cli("plot", tmp_path), "metrics.jsonl", "not an nbcnn run folder")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"epoch": 1, "loss": 1}\n{oops\n')
    one_line_error(cli("plot", bad), "line 2 is not JSON")
    run = write_metrics(tmp_path / "run")
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # as if matplotlib were not installed
    one_line_error(cli("plot", run), "pip install 'nbcnn[plots]'")
    assert pictures.write_curves(run, missing_ok=True) is None
    assert "nbcnn[plots]" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"nbcnn\[plots\]"):
        pictures.write_curves(run)
