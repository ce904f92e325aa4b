"""Hostile arguments through the Python API and hostile names and paths through the CLI
(issue 16, findings 1, 4, 9, 13, 14): each is refused with nbcnn's own error type, in one line
that names the argument or key, before any work starts."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ROOT, cli, model_doc

import nbcnn
from nbcnn.errors import ConfigError, DataError
from nbcnn.model import Sequential
from nbcnn.spec import check_output_path

TINY = (
    {"type": "Conv2D", "filters": 2, "kernel_size": 3},
    {"type": "Flatten"},
    {"type": "Dense", "units": 3, "activation": "softmax"},
)


@pytest.fixture
def tiny_config(write_config):
    return write_config(model_doc(*TINY, input_shape=(8, 8, 1)))


@pytest.fixture
def model(tiny_config):
    return nbcnn.load_model(tiny_config)


def data(n=4):
    rng = np.random.default_rng(0)
    return rng.random((n, 8, 8, 1), dtype=np.float32), np.arange(n) % 3


def refused(error_type, where, call):
    """``call()`` raises ``error_type`` whose one-line message names ``where``."""
    with pytest.raises(error_type) as info:
        call()
    message = str(info.value)
    assert where in message and "\n" not in message, message
    return message


def one_error_line(result, *fragments):
    """A CLI result that failed with exit 2 and one ``nbcnn: error:`` line holding each
    fragment, no traceback."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("nbcnn: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


# ---------------------------------------------------------------- fit, predict, evaluate

BAD_FIT_ARGUMENTS = [
    ("batch_size", 0),
    ("batch_size", -1),
    ("batch_size", 1.5),
    ("batch_size", True),
    ("batch_size", "32"),
    ("epochs", -1),
    ("epochs", 2.0),
    ("seed", -1),
    ("seed", "a"),
    ("verbose", "x"),
    ("verbose", 3),
    ("verbose", None),
    ("validation_data", 5),
    ("validation_data", (np.zeros((1, 8, 8, 1)),)),
    ("output", ""),
    ("output", "run\x00x"),
    ("output", "a" * 300),
    ("output", 5),
    ("resume", "yes"),
    ("early_stopping", 5),
    ("early_stopping", {"patience": -1}),
    ("early_stopping", {"patiense": 1}),
    ("callback", 5),
    ("callbacks", 5),
    ("callbacks", [print]),
    ("validation_split", 1.0),
    ("validation_split", -0.1),
    ("validation_split", "0.2"),
    ("shuffle", "yes"),
]


@pytest.mark.parametrize(("argument", "value"), BAD_FIT_ARGUMENTS)
def test_fit_refuses_bad_arguments_naming_them(model, argument, value):
    x, y = data()
    kwargs = {"verbose": 0, argument: value}
    refused(ConfigError, f"fit({argument})", lambda: model.fit(x, y, **kwargs))
    assert not model.built  # refused before any weights were made


def test_fit_refuses_empty_x(model):
    x, y = data()
    refused(DataError, "fit(x)", lambda: model.fit(x[:0], y[:0], verbose=0))


def test_fit_with_zero_epochs_trains_nothing_as_keras(model):
    x, y = data()
    model.initialize(0)
    before = model.get_weights()
    history = model.fit(x, y, epochs=0, verbose=0)
    assert history.history == {} and history.epochs == []
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("value", [-1, 0, 1.5, None, "8"])
def test_predict_and_evaluate_refuse_bad_batch_sizes(model, value):
    x, y = data()
    refused(ConfigError, "predict(batch_size)", lambda: model.predict(x, batch_size=value))
    refused(ConfigError, "evaluate(batch_size)", lambda: model.evaluate(x, y, batch_size=value))


@pytest.mark.parametrize(
    ("x", "fragment"),
    [
        (np.full((2, 8, 8, 1), 1e300), "x[0] holds NaN or infinite values, or values beyond"),
        (np.full((2, 8, 8, 1), np.nan, np.float32), "x[0] holds NaN"),
        (np.zeros((2, 8, 8, 1), np.complex64), "expected integers 0..255 or floats"),
        ([[0.0] * 3, [0.0]], "x is not an array"),
        (np.zeros((2, 8, 8, 2)), "(N, 8, 8, 1)"),
    ],
)
def test_predict_refuses_inputs_that_are_not_finite_numbers(model, x, fragment):
    refused(DataError, fragment, lambda: model.predict(x))


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"optimizer": 5}, "compile(optimizer)"),
        ({"optimizer": ["adam"]}, "compile(optimizer)"),
        ({"optimizer": {"type": "adamm"}}, "compile(optimizer).type"),
        ({"optimizer": {"type": "adam", "learning_rate": -1}}, "compile(optimizer)"),
        ({"loss": 5}, "compile(loss)"),
        ({"loss": ""}, "compile(loss)"),
        ({"loss": "msee"}, "compile(loss)"),
    ],
)
def test_compile_refuses_bad_optimizer_and_loss(model, kwargs, where):
    refused(ConfigError, where, lambda: model.compile(**kwargs))
    assert model.compiled is None


# ---------------------------------------------------------------- building and weights


@pytest.mark.parametrize("shape", [(8, 8, 1.5), (8, 8, True), (8, 8, 0), (), (1,) * 5, "881"])
def test_load_model_refuses_bad_input_shapes(tiny_config, shape):
    refused(
        ConfigError,
        "load_model(input_shape)",
        lambda: nbcnn.load_model(tiny_config, input_shape=shape),
    )


def test_load_model_takes_numpy_ints_as_plain_ints(tiny_config):
    model = nbcnn.load_model(tiny_config, input_shape=np.array([9, 9, 1]))
    assert model.input_shape == (9, 9, 1) and all(type(n) is int for n in model.input_shape)


@pytest.mark.parametrize("seed", [-1, 1.5, "a", True, None])
def test_initialize_refuses_bad_seeds(model, seed):
    refused(ConfigError, "initialize(seed)", lambda: model.initialize(seed))


def test_sequential_refuses_bad_arguments(model):
    layers = model.layers
    cases = [
        ("Sequential(layers)", lambda: Sequential(5, (8, 8, 1))),
        ("Sequential(layers)", lambda: Sequential({"type": "Dense"}, (8, 8, 1))),
        ("Sequential(layers[1])", lambda: Sequential([layers[0], 5], (8, 8, 1))),
        ("Sequential(input_shape)", lambda: Sequential(layers, (8, 8, 1.5))),
        ("Sequential(name)", lambda: Sequential(layers, (8, 8, 1), name="a\x1b[31m")),
        ("Sequential(distributions)", lambda: Sequential(layers, (8, 8, 1), distributions=[])),
    ]
    for where, call in cases:
        refused(ConfigError, where, call)


@pytest.mark.parametrize(
    ("weights", "fragment"),
    [
        (None, "expected a list of 4 arrays"),
        (5, "expected a list of 4 arrays"),
        ("abcd", "expected a list of 4 arrays"),
        ([np.zeros(3, np.float32)], "expected 4 weight arrays"),
        ([None, None, None, None], "kernel: expected shape (3, 3, 1, 2) float"),
        ([[[0.0], [0.0, 0.0]]] * 4, "kernel: not an array"),
    ],
)
def test_set_weights_refuses_what_is_not_its_list_of_arrays(model, weights, fragment):
    message = refused(DataError, "set_weights(weights)", lambda: model.set_weights(weights))
    assert fragment in message, message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (1e300, "holds 1e+300 at index [1, 0, 0, 0], beyond float32's range"),
        (-3.5e38, "holds -3.5e+38 at index [1, 0, 0, 0], beyond float32's range"),
        (np.inf, "holds NaN or inf (inf at index [1, 0, 0, 0])"),
    ],
)
def test_set_weights_refuses_values_float32_cannot_hold(model, value, fragment):
    weights = [w.astype(np.float64) for w in model.initialize(0).get_weights()]
    before = model.get_weights()
    weights[0][1, 0, 0, 0] = value
    message = refused(
        DataError, "layers[0] 'conv2d' (Conv2D) kernel", lambda: model.set_weights(weights)
    )
    assert fragment in message, message
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def _weights_file_with(model, path, value):
    """Save ``model``'s weights as float64 with ``value`` in the last Dense bias."""
    arrays = {n: w.astype(np.float64) for n, w in zip(model.weight_names(), model.get_weights())}
    arrays["dense/bias"][2] = value
    np.savez(path, **arrays)
    return path


def test_load_weights_names_the_file_layer_and_value_beyond_float32(model, tmp_path):
    path = _weights_file_with(model.initialize(0), tmp_path / "w.npz", 1e300)
    message = refused(DataError, str(path), lambda: model.load_weights(path))
    assert "layers[2] 'dense' (Dense) bias holds 1e+300 at index [2]" in message, message
    refused(DataError, "load_weights(path)", lambda: model.load_weights(None))


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_cli_weights_beyond_float32_are_one_line_exit_2(model, tiny_config, tmp_path, command):
    path = _weights_file_with(model.initialize(0), tmp_path / "w.npz", -1e300)
    args = [tmp_path / "x.npz"] if command == "predict" else []
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 8, 8, 1), np.float32))
    result = cli(command, tiny_config, *args, "--weights", path, "--json")
    one_error_line(result, str(path), "layers[2] 'dense' (Dense) bias holds -1e+300")


# ---------------------------------------------------------------- names and output paths


def _config(write_config, **changes):
    doc = model_doc(*TINY, input_shape=(8, 8, 1))
    layer_name = changes.pop("layer_name", None)
    if layer_name is not None:
        doc["layers"][0] = {**doc["layers"][0], "name": layer_name}
    return write_config({**doc, **changes})


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"name": "a\x00b"}, ["name:", "unprintable character '\\x00'"]),
        ({"name": "\x1b[31mred"}, ["name:", "unprintable character '\\x1b'"]),
        ({"name": "over\rwrite"}, ["name:", "unprintable character '\\r'"]),
        ({"name": "evil\u202eexe"}, ["name:", "unprintable character"]),
        ({"layer_name": "c\rx"}, ["layers[0].name:", "unprintable character '\\r'"]),
        ({"layer_name": "c\x00"}, ["layers[0].name:", "unprintable character '\\x00'"]),
        ({"layer_name": "a/b"}, ["layers[0].name:", "cannot contain '/'"]),
        ({"name": "../../escaped"}, ["name:", "runs/<name>", "'../../escaped'"]),
        ({"name": "a/b"}, ["name:", "cannot contain '/'"]),
        ({"name": "a\\b"}, ["name:", "cannot contain '/' or '\\'"]),
        ({"name": ".."}, ["name:", "be '.' or '..'"]),
        ({"name": "."}, ["name:", "be '.' or '..'"]),
        ({"name": "é" * 128}, ["name:", "256 bytes", "at most 255"]),
        ({"train": {"output": ""}}, ["train.output:", "non-empty"]),
        ({"train": {"output": "run\x00x"}}, ["train.output:", "control character '\\x00'"]),
        ({"train": {"output": "run\nx"}}, ["train.output:", "control character '\\n'"]),
        ({"train": {"output": "runs/" + "a" * 256}}, ["train.output:", "256 bytes", "NAME_MAX"]),
        ({"train": {"output": "a/" * 2100}}, ["train.output:", "4,200 bytes", "PATH_MAX"]),
    ],
)
def test_summary_refuses_hostile_names_and_output_paths(write_config, changes, fragments):
    path = _config(write_config, **changes)
    one_error_line(cli("summary", path), str(path), *fragments)


def test_longest_allowed_names_pass(write_config):
    path = _config(
        write_config, name="é" * 127 + "a", train={"output": "/tmp/" + "b" * 255}, layer_name="x y"
    )
    result = cli("summary", path)
    assert result.exit_code == 0, result.stderr


def test_shipped_configs_names_pass():
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        result = cli("summary", config)
        assert result.exit_code == 0, (config, result.stderr)


@pytest.mark.parametrize(
    "changes", [{"name": "../../escaped"}, {"train": {"output": "run\x00x", "epochs": 1}}]
)
def test_train_refuses_hostile_names_before_writing_anything(
    write_config, tmp_path, monkeypatch, changes
):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    path = _config(write_config, **changes)
    one_error_line(cli("train", path), str(path))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "model.yaml"]


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("", "non-empty folder path"),
        (None, "non-empty folder path"),
        ("x\x00", "control character"),
        ("x/" + "y" * 256, "NAME_MAX"),
    ],
)
def test_check_output_path_names_the_option(path, fragment):
    message = refused(ConfigError, "--output", lambda: check_output_path(path, "--output"))
    assert fragment in message


def test_check_output_path_accepts_ordinary_paths(tmp_path):
    assert check_output_path(tmp_path / "run", "--output") == str(tmp_path / "run")
    assert check_output_path("runs/élan vital", "--output") == "runs/élan vital"


# ---------------------------------------------------------------- huge integers

HUGE = 10**400


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"layers": [{"type": "Flatten"}, {"type": "Dense", "units": HUGE}]}, "layers[1].units"),
        ({"layers": [{"type": "Conv2D", "filters": HUGE, "kernel_size": 1}]}, "layers[0].filters"),
        ({"layers": [{"type": "ZeroPadding2D", "padding": HUGE}]}, "layers[0].padding"),
        (
            {"layers": [{"type": "Conv2D", "filters": 1, "kernel_size": 1, "strides": HUGE}]},
            "layers[0].strides",
        ),
        ({"layers": [{"type": "Reshape", "target_shape": [HUGE]}]}, "layers[0].target_shape"),
        ({"input_shape": [HUGE, 1], "layers": [{"type": "Flatten"}]}, "input_shape"),
    ],
)
def test_summary_refuses_integers_beyond_2_53_naming_the_key(write_config, changes, where):
    """10**400 gave OverflowError tracebacks from the summary's "1.61 MB" arithmetic: now one
    line naming the key and the bound, exit 2."""
    path = write_config({**model_doc(input_shape=(4, 4, 1)), **changes})
    one_error_line(cli("summary", path), f"{where}: expected ints of at most 2**53")


def test_summary_input_shape_option_refuses_huge_integers(tiny_config):
    one_error_line(cli("summary", tiny_config, "--input-shape", f"{HUGE},8,1"), "2**53")


def test_train_refuses_a_huge_batch_size_before_writing(write_config, tmp_path):
    doc = model_doc({"type": "Flatten"}, {"type": "Dense", "units": 10}, input_shape=(8, 8, 1))
    doc["train"] = {"data": {"dataset": "digits"}, "batch_size": HUGE}
    result = cli("train", write_config(doc), "--output", tmp_path / "run")
    one_error_line(result, "train.batch_size: expected ints of at most 2**53")
    assert not (tmp_path / "run").exists()


def test_load_model_refuses_a_huge_input_shape(tiny_config):
    message = refused(
        ConfigError,
        "load_model(input_shape)",
        lambda: nbcnn.load_model(tiny_config, input_shape=(HUGE, 1)),
    )
    assert "2**53" in message


def test_sizes_at_the_bound_summarise(write_config):
    """At 2**53 itself the summary still prints, its byte and MAC figures exact integers."""
    doc = model_doc({"type": "Flatten"}, {"type": "Dense", "units": 2**53}, input_shape=(4, 4, 1))
    result = cli("summary", write_config(doc))
    assert result.exit_code == 0, result.stderr
    assert f"{17 * 2**53:,}" in result.stdout  # kernel and bias


def test_human_sizes_use_integer_arithmetic():
    from nbcnn.resources import human_bytes as with_terabytes
    from nbcnn.summary import human_bytes, human_count

    assert human_bytes(HUGE).endswith(" GB") and human_count(HUGE).endswith(" G")
    assert with_terabytes(HUGE).endswith(" TB") and with_terabytes(5 << 40) == "5.00 TB"
    rng = np.random.default_rng(0)
    for n in [0, 1023, 1024, 1_690_000, 1005, *rng.integers(0, 1 << 45, 2000).tolist()]:
        # As float formatting wrote them where a float holds the value exactly.
        bytes_unit = next(
            (u for u in ((1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB")) if n >= u[0]), None
        )
        expected = f"{n / bytes_unit[0]:.2f} {bytes_unit[1]}" if bytes_unit else f"{n} B"
        assert human_bytes(n) == expected


# ---------------------------------------------------------------- save_weights


@pytest.mark.parametrize("path", [None, 5, "", "a\x00b", b"x\x00"])
def test_save_weights_refuses_what_is_not_a_path(model, path):
    message = refused(DataError, "save_weights(path)", lambda: model.save_weights(path))
    assert "expected a file path" in message


def test_save_weights_refuses_a_missing_folder_and_creates_none(model, tmp_path):
    target = tmp_path / "missing" / "dir" / "w.npz"
    message = refused(DataError, "save_weights(path)", lambda: model.save_weights(target))
    assert f"the folder '{target.parent}' does not exist" in message
    assert not (tmp_path / "missing").exists()
    (tmp_path / "file").write_text("")
    message = refused(
        DataError, "save_weights(path)", lambda: model.save_weights(tmp_path / "file" / "w.npz")
    )
    assert "is not a folder" in message
    model.save_weights(tmp_path / "w.npz")
    model.load_weights(tmp_path / "w.npz")
