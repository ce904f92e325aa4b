"""Keras weights into nbcnn: files written here with h5py in Keras 3's ``.weights.h5`` layout
(``layers/<class_snake_case>/vars/<i>``), in a ``.keras`` archive, and in Keras 2's h5 layout."""

from __future__ import annotations

import io
import zipfile

import h5py
import numpy as np
import pytest

from nbcnn.errors import DataError
from nbcnn.keras_import import import_keras_weights, keras_layer_order
from nbcnn.model import load_model
from tests.helpers import ROOT, cli

DIGITS = ROOT / "configs" / "digits.yaml"
# What Keras 3 calls the layers of configs/digits.yaml in a weights file: the class in snake
# case, numbered per class in model order (not the layers' own names).
DIGITS_KERAS3_KEYS = [
    "conv2d",
    "conv2d_1",
    "max_pooling2d",
    "conv2d_2",
    "max_pooling2d_1",
    "flatten",
    "dropout",
    "dense",
    "dense_1",
]


def keras_weights(model, seed=11):
    """Per layer, random arrays shaped like the layer's weights (what Keras would hold)."""
    rng = np.random.default_rng(seed)
    return [
        [rng.standard_normal(p.shape).astype(np.float32) for p in specs]
        for specs in model.param_specs()
    ]


def write_keras3(target, keys, per_layer):
    """Keras 3's H5IOStore layout, with the extras a real file has (root vars, a dropout seed
    generator, optimizer variables)."""
    with h5py.File(target, "w") as f:
        f.create_group("vars")
        layers = f.create_group("layers")
        for key, arrays in zip(keys, per_layer):
            group = layers.create_group(key).create_group("vars")
            for i, a in enumerate(arrays):
                group[str(i)] = a
            if key.startswith("dropout"):
                layers[key].create_group("seed_generator").create_group("vars")["0"] = [0, 1]
        f.create_group("optimizer").create_group("vars")["0"] = np.int64(3)


def write_legacy(target, names, per_layer, kinds, model_weights=False):
    """Keras 2 (tf.keras) h5: layer_names, weight_names and ``<layer>/<layer>/<w>:0``."""
    with h5py.File(target, "w") as f:
        root = f.create_group("model_weights") if model_weights else f
        root.attrs["layer_names"] = [n.encode() for n in names]
        root.attrs["backend"] = b"tensorflow"
        for name, arrays, kind in zip(names, per_layer, kinds):
            group = root.create_group(name)
            weight_names = [f"{name}/{k}:0" for k in kind[: len(arrays)]]
            group.attrs["weight_names"] = [w.encode() for w in weight_names]
            for w, a in zip(weight_names, arrays):
                group[w] = a


def flat(per_layer):
    return [a for arrays in per_layer for a in arrays]


def assert_same_weights(model, per_layer):
    got = model.get_weights()
    want = flat(per_layer)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.array_equal(g, w)


def test_keras3_weights_round_trip_through_the_cli(tmp_path):
    model = load_model(DIGITS).initialize(0)
    per_layer = keras_weights(model)
    source = tmp_path / "digits.weights.h5"
    write_keras3(source, DIGITS_KERAS3_KEYS, per_layer)
    out = tmp_path / "digits.npz"
    result = cli("import-keras-weights", DIGITS, source, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "conv2d_1 (Conv2D) <- layers/conv2d_1: 3x3x32x32, 32" in result.stdout
    fresh = load_model(DIGITS).initialize(5)
    fresh.load_weights(out)
    assert_same_weights(fresh, per_layer)


def test_keras3_batchnorm_in_keras_order(tmp_path, write_config):
    config = write_config(
        {
            "input_shape": [6, 6, 2],
            "layers": [
                {"type": "Conv2D", "filters": 3, "kernel_size": 3, "name": "stem"},
                {"type": "BatchNormalization", "name": "bn"},
                {"type": "BatchNormalization", "center": False},
                {"type": "Flatten"},
                {"type": "Dense", "units": 2, "use_bias": False},
            ],
        }
    )
    model = load_model(config).initialize(0)
    per_layer = keras_weights(model)
    for arrays in per_layer[1:3]:
        arrays[-1] = np.abs(arrays[-1])  # variances are positive
    keys = ["conv2d", "batch_normalization", "batch_normalization_1", "flatten", "dense"]
    write_keras3(tmp_path / "m.weights.h5", keys, per_layer)
    matches = import_keras_weights(model, tmp_path / "m.weights.h5")
    assert_same_weights(model, per_layer)
    assert [m.source for m in matches] == [
        "layers/conv2d",
        "layers/batch_normalization",
        "layers/batch_normalization_1",
        "layers/dense",
    ]
    assert model.layers[1].params["moving_variance"].tolist() == per_layer[1][3].tolist()


def test_dot_keras_archive(tmp_path):
    model = load_model(DIGITS).initialize(0)
    per_layer = keras_weights(model, seed=3)
    buffer = io.BytesIO()
    write_keras3(buffer, DIGITS_KERAS3_KEYS, per_layer)
    archive = tmp_path / "digits.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("metadata.json", "{}")
        z.writestr("model.weights.h5", buffer.getvalue())
    import_keras_weights(model, archive)
    assert_same_weights(model, per_layer)


KINDS = {
    "Conv2D": ["kernel", "bias"],
    "Dense": ["kernel", "bias"],
    "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"],
}


@pytest.mark.parametrize("model_weights", [False, True])
def test_legacy_h5_by_name(tmp_path, model_weights):
    model = load_model(DIGITS).initialize(0)
    per_layer = keras_weights(model, seed=4)
    names = [layer.name for layer in model.layers]
    kinds = [KINDS.get(type(layer).__name__, []) for layer in model.layers]
    write_legacy(tmp_path / "w.h5", names, per_layer, kinds, model_weights)
    out = tmp_path / "w.npz"
    result = cli("import-keras-weights", DIGITS, tmp_path / "w.h5", "--out", out)
    assert result.exit_code == 0, result.stderr
    fresh = load_model(DIGITS).initialize(1)
    fresh.load_weights(out)
    assert_same_weights(fresh, per_layer)


def test_legacy_h5_by_order_when_names_differ(tmp_path):
    model = load_model(DIGITS).initialize(0)
    per_layer = keras_weights(model, seed=5)
    # A Keras session that built other models first numbers its layers on.
    names = [f"{layer.name}_{7 + i}" for i, layer in enumerate(model.layers)]
    kinds = [KINDS.get(type(layer).__name__, []) for layer in model.layers]
    write_legacy(tmp_path / "w.h5", names, per_layer, kinds)
    matches = import_keras_weights(model, tmp_path / "w.h5")
    assert_same_weights(model, per_layer)
    assert matches[0].source == "conv2d_7" and matches[-1].source == "dense_1_15"


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nbcnn: error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_errors_name_the_layer_and_both_shapes(tmp_path):
    model = load_model(DIGITS).initialize(0)
    per_layer = keras_weights(model)
    per_layer[7][0] = np.zeros((512, 128), np.float32)  # dense kernel for another input size
    source = tmp_path / "bad.weights.h5"
    write_keras3(source, DIGITS_KERAS3_KEYS, per_layer)
    out = tmp_path / "out.npz"
    one_line_error(
        cli("import-keras-weights", DIGITS, source, "--out", out),
        str(source),
        "layers[7] 'dense' (Dense) kernel",
        "(256, 128)",
        "(512, 128)",
    )
    assert not out.exists()
    # A bias-free Keras layer where nbcnn expects a bias.
    per_layer = keras_weights(model)
    per_layer[0] = per_layer[0][:1]
    write_keras3(source, DIGITS_KERAS3_KEYS, per_layer)
    one_line_error(
        cli("import-keras-weights", DIGITS, source, "--out", out), "'conv2d' (Conv2D)", "use_bias"
    )
    # A Keras model with other layers.
    write_keras3(source, ["conv2d", "dense"], keras_weights(model)[:2])
    one_line_error(
        cli("import-keras-weights", DIGITS, source, "--out", out),
        "layers[1] 'conv2d_1' (Conv2D)",
        "layers/conv2d_1",
    )


def test_unreadable_files(tmp_path):
    out = tmp_path / "out.npz"
    text = tmp_path / "notes.weights.h5"
    text.write_text("not hdf5")
    one_line_error(cli("import-keras-weights", DIGITS, text, "--out", out), str(text), "HDF5")
    one_line_error(
        cli("import-keras-weights", DIGITS, tmp_path / "none.h5", "--out", out), "no such file"
    )
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    one_line_error(
        cli("import-keras-weights", DIGITS, tmp_path / "other.h5", "--out", out), "neither Keras 3"
    )
    model = load_model(DIGITS)
    with pytest.raises(DataError, match="no layer of model 'digits' takes"):
        per_layer = keras_weights(model.initialize(0))
        write_keras3(
            tmp_path / "x.weights.h5",
            [*DIGITS_KERAS3_KEYS, "dense_2"],
            [*per_layer, [np.zeros((10, 2), np.float32)]],
        )
        import_keras_weights(model, tmp_path / "x.weights.h5")


# A functional Keras model with a projection shortcut created before the branch beside it:
#   x = Input((8, 8, 3)); proj = Conv2D(8, 1, strides=2)(x)
#   a = Conv2D(5, 3, strides=2, padding="same")(x); b = Conv2D(8, 3, padding="same")(a)
#   y = Dense(2)(GlobalAveragePooling2D()(Add()([b, proj])))
# Keras's model.layers sorts by depth (longest path to the output): a is 3 from the output, b
# and proj 2 (b first: the walk from the output takes Add's inputs in order). So a is conv2d,
# b conv2d_1 and proj conv2d_2, whatever order they were created in (Keras 3.15 wrote these
# keys for that model).
PROJECTION_FIRST = {
    "input_shape": [8, 8, 3],
    "layers": [
        {"type": "Conv2D", "filters": 8, "kernel_size": 1, "strides": 2, "name": "proj"},
        {
            "type": "Conv2D",
            "filters": 5,
            "kernel_size": 3,
            "strides": 2,
            "padding": "same",
            "name": "a",
            "inputs": "input_layer",
        },
        {"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same", "name": "b"},
        {"type": "Add", "inputs": ["b", "proj"]},
        {"type": "GlobalAveragePooling2D"},
        {"type": "Dense", "units": 2},
    ],
}
PROJECTION_FIRST_KEYS = {"proj": "conv2d_2", "a": "conv2d", "b": "conv2d_1", "dense": "dense"}


def test_keras3_functional_graph_keys_follow_keras_layer_order(tmp_path, write_config):
    model = load_model(write_config(PROJECTION_FIRST)).initialize(0)
    per_layer = keras_weights(model, seed=6)
    names = [layer.name for layer in model.layers]
    saved = {
        PROJECTION_FIRST_KEYS[name]: arrays
        for name, arrays in zip(names, per_layer)
        if name in PROJECTION_FIRST_KEYS
    }
    # Keras's own order in the file, with the weightless layers' keys.
    keys = ["input_layer", "conv2d", "conv2d_1", "conv2d_2", "add", "global_average_pooling2d"]
    arrays = [[], saved["conv2d"], saved["conv2d_1"], saved["conv2d_2"], [], []]
    write_keras3(tmp_path / "g.weights.h5", [*keys, "dense"], [*arrays, saved["dense"]])
    fresh = load_model(write_config(PROJECTION_FIRST)).initialize(1)
    matches = import_keras_weights(fresh, tmp_path / "g.weights.h5")
    assert_same_weights(fresh, per_layer)
    assert {m.layer: m.source for m in matches} == {
        name: f"layers/{key}" for name, key in PROJECTION_FIRST_KEYS.items()
    }


@pytest.mark.parametrize(
    ("layers", "order"),
    [
        # A chain keeps its order.
        ([(-1,), (0,), (1,)], [0, 1, 2]),
        # PROJECTION_FIRST: proj (0) is as deep as b (2), which Add takes first.
        ([(-1,), (-1,), (1,), (2, 0), (3,), (4,)], [1, 2, 0, 3, 4, 5]),
        # Branches concatenated in another order than written: p (0) = Conv2D(x),
        # q (1) = Conv2D(x), r (2) = Conv2D(q), Concatenate([r, p]): Keras 3.15 lists q, r, p.
        ([(-1,), (-1,), (1,), (2, 0), (3,)], [1, 2, 0, 3, 4]),
        # Fan-out, Add([right, left]) of two layers on one trunk: right is reached first.
        ([(-1,), (0,), (0,), (2, 1)], [0, 2, 1, 3]),
        # Depth wins over the walk: Add([short, long]) where long = Conv(Conv(x)).
        ([(-1,), (-1,), (1,), (0, 2)], [1, 0, 2, 3]),
    ],
)
def test_keras_layer_order(layers, order):
    assert keras_layer_order(layers) == order


def test_legacy_h5_graph_by_keras_order_when_names_differ(tmp_path, write_config):
    model = load_model(write_config(PROJECTION_FIRST)).initialize(0)
    per_layer = keras_weights(model, seed=8)
    # tf.keras lists layer_names in model.layers order: a, b, proj, add, pooling, dense.
    order = [1, 2, 0, 3, 4, 5]
    names = [f"{model.layers[i].name}_{20 + k}" for k, i in enumerate(order)]
    kinds = [KINDS.get(type(model.layers[i]).__name__, []) for i in order]
    write_legacy(tmp_path / "w.h5", names, [per_layer[i] for i in order], kinds)
    matches = import_keras_weights(model, tmp_path / "w.h5")
    assert_same_weights(model, per_layer)
    assert {m.layer: m.source for m in matches} == {
        "proj": "proj_22",
        "a": "a_20",
        "b": "b_21",
        "dense": "dense_25",
    }
