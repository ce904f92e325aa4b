"""Training-batch augmentation (nbcnn/augment.py, ``train.augment``): each op against a naive
per-image, per-pixel reference and hand-computed values; seeded reproducibility; training
batches only; an interrupted and resumed run equal to the uninterrupted one; config errors;
``nbcnn augment-preview``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from helpers import cli, model_doc
from hypothesis import given, settings
from hypothesis import strategies as st
from test_robustness import error_line

import nbcnn.augment as aug
from nbcnn.errors import ConfigError, DataError
from nbcnn.io import load_npz
from nbcnn.model import Sequential

# ---------------------------------------------------------------- naive references


def naive_index(i: int, size: int, fill_mode: str) -> int | None:
    """Where an integer index outside [0, size) reads, walked one reflection at a time (None:
    the constant fill)."""
    if 0 <= i < size:
        return i
    if fill_mode == "constant":
        return None
    if fill_mode == "nearest":
        return min(max(i, 0), size - 1)
    if fill_mode == "wrap":
        return i % size
    while not 0 <= i < size:  # reflect: d c b a | a b c d | d c b a
        i = -i - 1 if i < 0 else 2 * size - 1 - i
    return i


def naive_pixel(image, r, c, args):
    """Image (H, W, C) read at the real point (r, c) as Keras's map_coordinates does."""
    h, w, _ = image.shape

    def value(i, j):
        ii, jj = naive_index(i, h, args["fill_mode"]), naive_index(j, w, args["fill_mode"])
        if ii is None or jj is None:
            return np.full(image.shape[2], args["fill_value"], np.float64)
        return image[ii, jj].astype(np.float64)

    if args["interpolation"] == "nearest":
        return value(int(math.floor(r + 0.5)), int(math.floor(c + 0.5)))
    r0, c0 = math.floor(r), math.floor(c)
    fr, fc = r - r0, c - c0
    return (
        (1 - fr) * (1 - fc) * value(r0, c0)
        + (1 - fr) * fc * value(r0, c0 + 1)
        + fr * (1 - fc) * value(r0 + 1, c0)
        + fr * fc * value(r0 + 1, c0 + 1)
    )


def naive_affine(x, matrices, args):
    """Pixel by pixel: output (i, j) = input at (b0 j + b1 i + b2, a0 j + a1 i + a2)."""
    out = np.zeros(x.shape, np.float64)
    for n, (a0, a1, a2, b0, b1, b2) in enumerate(matrices):
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                out[n, i, j] = naive_pixel(x[n], b0 * j + b1 * i + b2, a0 * j + a1 * i + a2, args)
    return out


def naive_op(op, x, rng, args):
    """Each op image by image, drawing its random values in the documented order."""
    n, h, w, _ = x.shape
    if op == "flip":
        out = x.astype(np.float64)
        mode = args["mode"]
        for axis, on in ((1, mode != "vertical"), (0, mode != "horizontal")):  # W first, then H
            if on:
                for k in np.flatnonzero(rng.random(n) < 0.5):
                    out[k] = np.flip(out[k], axis=axis)
        return out
    if op == "crop":
        p = args["padding"]
        shifts = rng.integers(-p, p + 1, size=(n, 2))
        matrices = [(1, 0, dx, 0, 1, dy) for dy, dx in shifts]
        return naive_affine(x, matrices, {**args, "interpolation": "nearest"})
    if op == "translation":
        dy = rng.uniform(*args["height_factor"], size=n) * h
        dx = rng.uniform(*args["width_factor"], size=n) * w
        return naive_affine(x, [(1, 0, -a, 0, 1, -b) for a, b in zip(dx, dy)], args)
    if op == "rotation":
        matrices = []
        cy, cx = (h - 1) / 2, (w - 1) / 2
        for t in rng.uniform(*args["factor"], size=n) * 2 * math.pi:
            # About the centre: input = centre + R(t) (output - centre).
            cos, sin = math.cos(t), math.sin(t)
            matrices.append(
                (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)
            )
        return naive_affine(x, matrices, args)
    if op == "zoom":
        zy = 1 + rng.uniform(*args["height_factor"], size=n)
        zx = zy if args["width_factor"] is None else 1 + rng.uniform(*args["width_factor"], size=n)
        cy, cx = (h - 1) / 2, (w - 1) / 2
        matrices = [(a, 0, cx * (1 - a), 0, b, cy * (1 - b)) for a, b in zip(zx, zy)]
        return naive_affine(x, matrices, args)
    low, high = args["value_range"]
    out = np.zeros(x.shape, np.float64)
    if op == "brightness":
        for k, f in enumerate(rng.uniform(*args["factor"], size=n)):
            out[k] = np.clip(x[k] + f * (high - low), low, high)
        return out
    lower, upper = args["factor"]  # contrast
    for k, f in enumerate(rng.uniform(1 - lower, 1 + upper, size=n)):
        for ch in range(x.shape[3]):
            plane = x[k, :, :, ch].astype(np.float64)
            out[k, :, :, ch] = np.clip((plane - plane.mean()) * f + plane.mean(), low, high)
    return out


# ---------------------------------------------------------------- each op


SECTIONS = {
    "flip": [{"mode": m} for m in aug.FLIP_MODES],
    "crop": [{"padding": 2}, {"padding": 3, "fill_mode": "reflect"}],
    "translation": [
        {"height_factor": 0.3, "width_factor": [-0.2, 0.4]},
        {"height_factor": 0.5, "width_factor": 0.5, "fill_mode": "constant", "fill_value": 0.5},
        {"height_factor": 0.4, "width_factor": 0.4, "fill_mode": "wrap"},
        {"height_factor": 0.4, "width_factor": 0.4, "interpolation": "nearest"},
    ],
    "rotation": [
        {"factor": 0.2},
        {"factor": [0.1, 0.3], "fill_mode": "nearest"},
        {"factor": 0.5, "fill_mode": "constant"},
    ],
    "zoom": [
        {"height_factor": 0.5},
        {"height_factor": [-0.4, -0.1], "width_factor": [0.2, 0.6], "fill_mode": "constant"},
    ],
    "brightness": [{"factor": 0.5}, {"factor": [-0.8, 0.1], "value_range": [-1, 1]}],
    "contrast": [{"factor": 0.9}, {"factor": [0.2, 0.7], "value_range": [0.1, 0.9]}],
}


def section_cases():
    for op, sections in SECTIONS.items():
        for i, section in enumerate(sections):
            yield pytest.param(op, section, id=f"{op}-{i}")


@pytest.mark.parametrize("op, section", list(section_cases()))
def test_each_op_matches_the_naive_reference(op, section):
    x = np.random.default_rng(3).random((5, 6, 7, 2), dtype=np.float32)
    args = aug.parse_augment({op: section})[op]
    y = aug.Augmenter({op: args})(x, np.random.default_rng(11))
    assert y.dtype == np.float32 and y.shape == x.shape
    expected = naive_op(op, x, np.random.default_rng(11), args)
    np.testing.assert_allclose(y, expected, atol=2e-5)
    assert not np.array_equal(y, x)  # every case changes some image


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    fill_mode=st.sampled_from(aug.FILL_MODES),
    interpolation=st.sampled_from(aug.INTERPOLATIONS),
    seed=st.integers(0, 2**16),
)
def test_affine_matches_the_naive_reference_for_any_matrix(h, w, fill_mode, interpolation, seed):
    """Any matrix, far outside the image too (reflections of reflections)."""
    rng = np.random.default_rng(seed)
    x = rng.random((2, h, w, 1), dtype=np.float32)
    matrices = rng.uniform(-3, 3, size=(2, 6)).astype(np.float32)
    args = {"fill_mode": fill_mode, "fill_value": -1.0, "interpolation": interpolation}
    expected = naive_affine(x, matrices.astype(np.float64), args)
    y = aug.affine(x, matrices, args)
    if interpolation == "nearest":
        # A coordinate within float32 rounding of .5 may round either way: compare elsewhere.
        yy, xx = np.mgrid[0:h, 0:w]
        m = matrices.astype(np.float64)[:, :, None, None]
        coords = [m[:, 0] * xx + m[:, 1] * yy + m[:, 2], m[:, 3] * xx + m[:, 4] * yy + m[:, 5]]
        clear = np.all([np.abs(np.abs(c % 1) - 0.5) > 1e-4 for c in coords], axis=0)
        np.testing.assert_allclose(y[clear], expected[clear], atol=1e-5)
    else:
        np.testing.assert_allclose(y, expected, atol=1e-4)


def row(values):
    """One image of one row: (1, 1, W, 1)."""
    return np.asarray(values, np.float32).reshape(1, 1, -1, 1)


@pytest.mark.parametrize(
    "fill_mode, expected",
    [
        ("reflect", [2, 1, 1, 2]),
        ("constant", [9, 9, 1, 2]),
        ("wrap", [3, 4, 1, 2]),
        ("nearest", [1, 1, 1, 2]),
    ],
)
def test_translation_by_two_columns_by_hand(fill_mode, expected):
    """Shift right by 2 of [1, 2, 3, 4]... (reflect: 2 1 | 1 2 3 4 | 4 3)."""
    args = {"fill_mode": fill_mode, "fill_value": 9.0, "interpolation": "bilinear"}
    m = aug.translation_matrices(np.zeros(1), np.array([2.0]))
    y = aug.affine(row([1, 2, 3, 4]), m, args)
    np.testing.assert_array_equal(y.ravel(), expected)


def test_half_pixel_translation_blends_neighbours_by_hand():
    args = {"fill_mode": "constant", "fill_value": 0.0, "interpolation": "bilinear"}
    m = aug.translation_matrices(np.zeros(1), np.array([0.5]))
    y = aug.affine(row([2, 4, 8]), m, args)
    np.testing.assert_allclose(y.ravel(), [1, 3, 6])  # (0+2)/2, (2+4)/2, (4+8)/2


def test_quarter_turn_is_counter_clockwise_by_hand():
    """Keras: a positive factor rotates counter-clockwise; 0.25 of 2 pi is a quarter turn."""
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    args = {"fill_mode": "constant", "fill_value": 0.0, "interpolation": "bilinear"}
    y = aug.affine(x, aug.rotation_matrices(3, 3, np.array([np.pi / 2])), args)
    np.testing.assert_allclose(y[0, :, :, 0], [[3, 6, 9], [2, 5, 8], [1, 4, 7]], atol=1e-5)


def test_zoom_out_by_two_by_hand():
    """Zoom 2 about the centre of [1 2 3]: output x reads input 2x - 1: -1, 1, 3."""
    args = {"fill_mode": "constant", "fill_value": 0.0, "interpolation": "bilinear"}
    y = aug.affine(row([1, 2, 3]), aug.zoom_matrices(1, 3, np.ones(1), np.array([2.0])), args)
    np.testing.assert_allclose(y.ravel(), [0, 2, 0])


def test_crop_keeps_a_shifted_window_of_the_padded_image():
    """Padding 1: each output is the input moved by at most one pixel, zeros coming in."""
    x = np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4, 1)
    rng = np.random.default_rng(0)
    dy, dx = np.random.default_rng(0).integers(-1, 2, size=(1, 2))[0]
    y = aug.crop(x, rng, {"padding": 1, "fill_mode": "constant", "fill_value": 0.0})
    padded = np.pad(x[0, :, :, 0], 1)
    np.testing.assert_array_equal(y[0, :, :, 0], padded[1 + dy : 5 + dy, 1 + dx : 5 + dx])


def test_brightness_and_contrast_by_hand():
    x = np.array([0.25, 0.75], np.float32).reshape(1, 1, 2, 1)
    up = aug.brightness(x, _Fixed(0.5), {"factor": [-1, 1], "value_range": [0.0, 1.0]})
    np.testing.assert_allclose(up.ravel(), [0.75, 1.0])  # + 0.5, clipped at 1
    double = aug.contrast(x, _Fixed(2.0), {"factor": [1, 1], "value_range": [0.0, 1.0]})
    np.testing.assert_allclose(double.ravel(), [0.0, 1.0])  # 0.5 -+ 2 * 0.25
    half = aug.contrast(x, _Fixed(0.5), {"factor": [1, 1], "value_range": [0.0, 1.0]})
    np.testing.assert_allclose(half.ravel(), [0.375, 0.625])


class _Fixed:
    """A stand-in Generator whose uniform() always returns one value."""

    def __init__(self, value):
        self.value = value

    def uniform(self, low, high, size):
        return np.full(size, self.value)


def test_same_seed_same_batch_and_input_left_alone():
    section = {"flip": "horizontal", "crop": 2, "rotation": 0.1, "contrast": 0.2}
    augmenter = aug.Augmenter(aug.parse_augment(section))
    x = np.random.default_rng(0).random((8, 6, 6, 3), dtype=np.float32)
    before = x.copy()
    a = augmenter(x, aug.augment_rng(5))
    b = augmenter(x, aug.augment_rng(5))
    c = augmenter(x, aug.augment_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(x, before)


# ---------------------------------------------------------------- config


def test_parse_fills_defaults_and_shorthands():
    parsed = aug.parse_augment(
        {"flip": "horizontal", "crop": 4, "translation": 0.1, "zoom": -0.2, "contrast": 0.3}
    )
    assert parsed["flip"] == {"mode": "horizontal"}
    assert parsed["crop"] == {"padding": 4, "fill_mode": "constant", "fill_value": 0.0}
    assert parsed["translation"]["height_factor"] == [-0.1, 0.1]
    assert parsed["translation"]["width_factor"] == [-0.1, 0.1]
    assert parsed["zoom"]["height_factor"] == [-0.2, 0.2] and parsed["zoom"]["width_factor"] is None
    assert parsed["contrast"] == {"factor": [0.3, 0.3], "value_range": [0.0, 1.0]}
    assert aug.parse_augment(parsed) == parsed  # the recorded form parses to itself
    assert aug.parse_augment({}) is None and aug.parse_augment({"flip": None}) is None


@pytest.mark.parametrize(
    "section, where, fragment",
    [
        ({"rotate": 0.1}, "train.augment.rotate", "did you mean 'rotation'"),
        ({"rotation": 1.5}, "train.augment.rotation.factor", "each in [-1.0, 1.0]"),
        ({"flip": "sideways"}, "train.augment.flip.mode", "'horizontal'"),
        ({"crop": {"padding": -1}}, "train.augment.crop.padding", "expected an int"),
        (
            {"translation": {"height_factor": 0.1}},
            "train.augment.translation.width_factor",
            "needs",
        ),
        ({"brightness": {"factor": 0.1, "value_range": [1, 0]}}, "value_range", "low < high"),
        ({"zoom": {"height_factor": 0.1, "fill": "wrap"}}, "zoom.fill", "did you mean 'fill_mode'"),
        # Keras's layer names get the key they have here (as `type: ReLU` gets Activation).
        ({"RandomFlip": "horizontal"}, "train.augment.RandomFlip", "key 'flip' here"),
        ({"random_flip": "horizontal"}, "train.augment.random_flip", "(flip: horizontal)"),
        ({"RandomRotation": 0.1}, "train.augment.RandomRotation", "key 'rotation' here"),
        # Keras's default value_range is for 0..255 pixels; nbcnn's are in [0, 1].
        (
            {"contrast": {"factor": 0.2, "value_range": [0, 255]}},
            "train.augment.contrast.value_range",
            "images are in [0, 1]",
        ),
    ],
)
def test_bad_sections_name_the_key(write_config, section, where, fragment):
    doc = model_doc({"type": "Flatten"}, {"type": "Dense", "units": 2}, input_shape=(4, 4, 1))
    doc["train"] = {"augment": section}
    result = cli("summary", write_config(doc))
    line = error_line(result.stderr, where, fragment)
    assert result.exit_code == 2 and "model.yaml" in line


def test_keras_value_range_is_refused_before_training(write_config, tmp_path):
    """QA of issue 13: `brightness: {factor: 0.2, value_range: [0, 255]}` (Keras's default
    range) trained silently on saturated images; now the run is refused, nothing created."""
    doc = model_doc({"type": "Flatten"}, {"type": "Dense", "units": 10}, input_shape=(8, 8, 1))
    doc["train"] = {
        "data": {"dataset": "digits"},
        "augment": {"brightness": {"factor": 0.2, "value_range": [0, 255]}},
    }
    result = cli("train", write_config(doc), "--output", tmp_path / "run", "--epochs", "1")
    assert result.exit_code == 2
    error_line(result.stderr, "model.yaml", "train.augment.brightness.value_range", "use [0, 1]")
    assert not (tmp_path / "run").exists()
    assert aug.parse_augment({"brightness": {"factor": 0.2, "value_range": [-1, 1]}})


# ---------------------------------------------------------------- in training


def small_model(input_shape=(8, 8, 1)):
    doc = model_doc(
        {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
        input_shape=input_shape,
    )
    from nbcnn.spec import parse_spec

    return Sequential.from_spec(parse_spec(doc))


def digits():
    from nbcnn.data import load_dataset

    return load_dataset("digits", input_shape=(8, 8, 1), validation_split=0.2)


def test_only_training_batches_are_augmented():
    """Brightness +1 makes every training input white; validation and predict see the data."""
    data = digits()
    model = small_model()
    seen = []
    first = model.layers[0]
    forward = first.forward

    def spy(x, training=False):
        seen.append((training, x.copy()))
        return forward(x, training=training)

    first.forward = spy
    model.compile(optimizer="adam")
    model.fit(
        data.x_train,
        data.y_train,
        epochs=1,
        batch_size=64,
        validation_data=(data.x_val, data.y_val),
        verbose=0,
        augment={"brightness": {"factor": [1.0, 1.0]}},
    )
    training = [x for t, x in seen if t]
    inference = [x for t, x in seen if not t]
    assert len(training) >= math.ceil(len(data.x_train) / 64)
    assert all((x == 1.0).all() for x in training[1:])  # [0] is the kernels' warm-up
    np.testing.assert_array_equal(np.concatenate(inference[-1:]), data.x_val[-len(inference[-1]) :])
    seen.clear()
    model.predict(data.x_test[:5])
    assert not seen[-1][0] and np.array_equal(seen[-1][1], data.x_test[:5])


def fit_run(output, epochs, resume=False, augment=None):
    data = digits()
    model = small_model()
    model.compile(optimizer="adam")
    model.fit(
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=64,
        verbose=0,
        seed=3,
        output=output,
        resume=resume,
        augment=augment or {"crop": 1, "rotation": 0.05, "brightness": 0.1},
    )
    return model


def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path):
    full = fit_run(tmp_path / "full", 3)
    fit_run(tmp_path / "part", 1)
    resumed = fit_run(tmp_path / "part", 3, resume=True)
    for a, b in zip(full.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    plain = fit_run(tmp_path / "plain", 3, augment={"flip": "vertical"})
    assert not np.array_equal(plain.get_weights()[0], full.get_weights()[0])


def test_resume_with_augmentation_switched_is_refused(tmp_path):
    fit_run(tmp_path / "run", 1)
    data = digits()
    model = small_model()
    model.compile(optimizer="adam")
    # The run's fit.json names the argument (tests/test_fit_runs.py); the checkpoint's own
    # check (DataError, "trained with augmentation") stays behind it.
    with pytest.raises(ConfigError, match=r"fit\(augment\): the run was trained with \{"):
        model.fit(
            data.x_train,
            data.y_train,
            epochs=2,
            batch_size=64,
            verbose=0,
            seed=3,
            output=tmp_path / "run",
            resume=True,
        )


def test_a_hand_edited_augmentation_stream_is_refused(tmp_path):
    import json
    import os

    fit_run(tmp_path / "run", 1)
    path = os.path.realpath(tmp_path / "run" / "checkpoint.npz")
    arrays = dict(np.load(path, allow_pickle=False))
    meta = json.loads(str(arrays["meta"]))
    meta["augment_rng"] = {"bit_generator": "PCG64", "state": "edited"}
    np.savez(path, **{**arrays, "meta": np.array(json.dumps(meta))})
    with pytest.raises(DataError, match="'augment_rng' is not a random-generator state"):
        fit_run(tmp_path / "run", 2, resume=True)


def test_cli_resume_equals_uninterrupted_and_records_the_section(write_config, tmp_path):
    doc = model_doc(
        {"type": "Flatten"},
        {"type": "Dense", "units": 10, "activation": "softmax"},
        input_shape=(8, 8, 1),
    )
    doc["train"] = {"data": {"dataset": "digits"}, "batch_size": 64, "augment": {"crop": 2}}
    config = write_config(doc)
    part, full = tmp_path / "part", tmp_path / "full"
    assert cli("train", config, "--output", part, "--epochs", "1").exit_code == 0
    result = cli("train", config, "--output", part, "--resume", "--epochs", "2")
    assert result.exit_code == 0, result.stderr
    assert cli("train", config, "--output", full, "--epochs", "2").exit_code == 0
    a, b = load_npz(part / "model.npz"), load_npz(full / "model.npz")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    recorded = yaml.safe_load((full / "config.yaml").read_text())["train"]["augment"]
    assert recorded == {"crop": {"padding": 2, "fill_mode": "constant", "fill_value": 0.0}}


def test_augmentation_needs_images():
    model = small_model(input_shape=(8, 2))
    with pytest.raises(ConfigError, match=r"fit\(augment\).*images \(H, W, C\)"):
        model.fit(
            np.zeros((4, 8, 2), np.float32),
            np.zeros(4, np.int64),
            verbose=0,
            augment={"flip": "horizontal"},
        )


# ---------------------------------------------------------------- augment-preview


def test_augment_preview_writes_a_grid(write_config, tmp_path):
    """The command docs/augmentation.md shows."""
    from PIL import Image

    doc = load_model_doc("cifar_augment")
    config = write_config(doc)
    out = tmp_path / "grid.png"
    result = cli("augment-preview", config, "--out", out, "--samples", "6")
    assert result.exit_code == 0, result.stderr
    assert "6 training images" in result.stdout
    image = np.asarray(Image.open(out))
    assert image.ndim == 3 and image.shape[2] == 3 and image.shape[1] > 8 * 64


def load_model_doc(name):
    from helpers import ROOT

    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


def test_augment_preview_needs_an_augment_section(write_config, tmp_path):
    doc = model_doc({"type": "Flatten"}, {"type": "Dense", "units": 10}, input_shape=(8, 8, 1))
    result = cli("augment-preview", write_config(doc), "--out", tmp_path / "g.png")
    assert result.exit_code == 2
    error_line(result.stderr, "train.augment", "nothing to preview")
    assert not (tmp_path / "g.png").exists()


def test_preview_pairs_originals_with_augmented():
    x = np.random.default_rng(0).random((3, 5, 5, 1), dtype=np.float32)
    augmenter = aug.Augmenter(aug.parse_augment({"flip": "horizontal"}))
    tiles, labels = aug.preview(x, augmenter, np.random.default_rng(1))
    assert labels == ["0", "0 aug", "1", "1 aug", "2", "2 aug"]
    np.testing.assert_array_equal(tiles[2], x[1, :, :, 0])
    flipped = augmenter(x, np.random.default_rng(1))
    np.testing.assert_array_equal(tiles[5], flipped[2, :, :, 0])
    with pytest.raises(ConfigError, match="grey .* or RGB"):
        aug.preview(np.zeros((1, 4, 4, 2), np.float32), augmenter, np.random.default_rng(0))
