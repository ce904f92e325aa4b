"""Every bad config gets one line naming the file and key or layer, and exit code 2."""

from __future__ import annotations

import time

import pytest
from helpers import cli, cli_subprocess, model_doc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbcnn.errors import ConfigError
from nbcnn.model import Sequential
from nbcnn.spec import parse_spec

CONV = {"type": "Conv2D", "filters": 8, "kernel_size": 3}


def summary_error(path):
    result = cli("summary", path)
    assert result.exit_code == 2, result.stdout
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith("nbcnn: error: ") and str(path) in message
    return message


# (config document or raw YAML text, fragments the one-line message must contain)
BAD_CONFIGS = {
    # ints too large for a float (OverflowError, not ValueError) found by review
    "huge_int_layer": (
        model_doc({"type": "Flatten"}, {"type": "Dropout", "rate": 10**400}),
        ["layers[1].rate", "expected a number"],
    ),
    "huge_int_optimizer": (
        {
            **model_doc({"type": "Flatten"}),
            "train": {"optimizer": {"type": "sgd", "learning_rate": 10**400}},
        },
        ["train.optimizer.learning_rate", "finite number"],
    ),
    "not_yaml": (
        "input_shape: [28, 28, 1]\nlayers: [\n  - {type: Conv2D",
        ["line ", "not valid YAML"],
    ),
    "tab_indent": ("layers:\n\t- type: Dense\n", ["line 2", "not valid YAML"]),
    "top_level_list": ("- 1\n- 2\n", ["must be a mapping", "a list"]),
    "empty_file": ("", ["must be a mapping", "nothing"]),
    "unknown_top_key": (
        {"input_shape": [4, 4, 1], "layer": []},
        ["layer", "did you mean 'layers'"],
    ),
    "missing_input_shape": ({"layers": [CONV]}, ["input_shape", "missing"]),
    "bad_input_shape": ({"input_shape": [28, -1], "layers": [CONV]}, ["input_shape", "ints >= 1"]),
    "input_shape_string": ({"input_shape": "28x28", "layers": [CONV]}, ["input_shape", "'28x28'"]),
    "no_layers": ({"input_shape": [4, 4, 1], "layers": []}, ["layers", "non-empty list"]),
    "layer_not_mapping": (model_doc("Conv2D"), ["layers[0]", "a mapping"]),
    "missing_type": (model_doc({"filters": 3}), ["layers[0]", "missing 'type'"]),
    "unknown_type": (
        model_doc({"type": "Conv2d", "filters": 3, "kernel_size": 3}),
        ["layers[0].type", "unknown layer type 'Conv2d'", "did you mean 'Conv2D'"],
    ),
    "unknown_key": (
        model_doc({"type": "Conv2D", "filters": 3, "kernel_sise": 3}),
        ["layers[0].kernel_sise", "did you mean 'kernel_size'"],
    ),
    "duplicate_key": (
        "input_shape: [8, 8, 1]\nlayers:\n  - {type: Dense, units: 3, units: 4}\n",
        ["duplicate key 'units'", "line 3"],
    ),
    "duplicate_layer_name": (
        model_doc({"type": "Flatten", "name": "a"}, {"type": "Dense", "units": 2, "name": "a"}),
        ["layers[1].name", "duplicate layer name 'a'"],
    ),
    "missing_argument": (
        model_doc({"type": "Conv2D", "kernel_size": 3}),
        ["layers[0].filters", "needs"],
    ),
    "wrong_type": (
        model_doc({"type": "Conv2D", "filters": "32", "kernel_size": 3}),
        ["layers[0].filters", "expected an int >= 1", "'32'"],
    ),
    "bool_as_int": (model_doc({"type": "Dense", "units": True}), ["layers[0].units", "True"]),
    "negative": (
        model_doc({"type": "Conv2D", "filters": -4, "kernel_size": 3}),
        ["layers[0].filters", "-4"],
    ),
    "kernel_rank": (
        model_doc({"type": "Conv2D", "filters": 4, "kernel_size": [3, 3, 3]}),
        ["layers[0].kernel_size", "list of 2 ints"],
    ),
    "dropout_range": (
        model_doc({"type": "Flatten"}, {"type": "Dropout", "rate": 1.5}),
        ["layers[1].rate", "1.5"],
    ),
    "unknown_activation": (
        model_doc({"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "rleu"}),
        ["layers[0].activation", "did you mean 'relu'"],
    ),
    "unknown_padding": (
        model_doc({"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "sam"}),
        ["layers[0].padding", "did you mean 'same'"],
    ),
    "stride_and_dilation": (
        model_doc(
            {"type": "Conv2D", "filters": 4, "kernel_size": 3, "strides": 2, "dilation_rate": 2}
        ),
        ["layers[0].dilation_rate", "not supported"],
    ),
    "kernel_larger_than_input": (
        model_doc({"type": "Conv2D", "filters": 4, "kernel_size": 5}, input_shape=(4, 4, 1)),
        ["layers[0] 'conv2d' (Conv2D)", "larger than its input"],
    ),
    "pool_below_one": (
        model_doc(
            CONV,
            {"type": "MaxPooling2D"},
            {"type": "MaxPooling2D"},
            {"type": "MaxPooling2D", "pool_size": 2},
            input_shape=(7, 7, 1),
        ),
        ["layers[3] 'max_pooling2d_2' (MaxPooling2D)", "fewer than one"],
    ),
    "conv_on_rank1": (
        model_doc({"type": "Flatten"}, CONV, input_shape=(4, 4, 1)),
        ["layers[1] 'conv2d' (Conv2D)", "rank 3", "(None, 16)"],
    ),
    "reshape_size": (
        model_doc({"type": "Reshape", "target_shape": [5, 5]}, input_shape=(4, 4, 1)),
        ["layers[0] 'reshape' (Reshape)", "cannot change the size"],
    ),
    "crop_too_much": (
        model_doc({"type": "Cropping2D", "cropping": [[2, 2], [0, 0]]}, input_shape=(4, 4, 1)),
        ["layers[0] 'cropping2d' (Cropping2D)", "removes all"],
    ),
    "python_tag": (
        "input_shape: !!python/object/apply:os.system ['echo hacked']\nlayers: []\n",
        ["not valid YAML", "python/object"],
    ),
    # Found by tests/test_fuzz_spec.py: each once escaped as a Python exception.
    "list_as_key": ("? [1, 2]\n: 3\n", ["line 1", "not valid YAML", "a list cannot be a key"]),
    "set_tag_on_scalar": ("!!set 0\n", ["line 1", "not valid YAML"]),
    "bad_tagged_float": ("input_shape: !!float ''\n", ["line 1", "cannot read '' as !!float"]),
    "impossible_date": ("name: 2001-13-45\n", ["cannot read '2001-13-45' as !!timestamp"]),
    "huge_integer": ("input_shape: [" + "9" * 5000 + "]\n", ["line 1", "as !!int"]),
    "control_character_key": ('"a\\rb": 1\n', ["'a\\rb'", "unknown top-level key"]),
    "bad_train_section": (
        {**model_doc({"type": "Flatten"}), "train": {"epochs": -1}},
        ["train.epochs", "-1"],
    ),
    "train_unknown_key": (
        {**model_doc({"type": "Flatten"}), "train": {"epoch": 3}},
        ["train.epoch", "did you mean 'epochs'"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_exit_2(case, write_config):
    content, fragments = BAD_CONFIGS[case]
    message = summary_error(write_config(content))
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_missing_file(tmp_path):
    message = summary_error(tmp_path / "nope.yaml")
    assert "cannot read" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    summary_error(path)


def test_alias_bomb_fails_fast(write_config):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]")
    start = time.perf_counter()
    message = summary_error(write_config("\n".join(lines) + "\n"))
    assert time.perf_counter() - start < 5
    assert "alias" in message


def test_real_subprocess_has_no_traceback(write_config):
    path = write_config(model_doc({"type": "Conv2D", "filters": 0, "kernel_size": 3}))
    proc = cli_subprocess("summary", path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "layers[0].filters" in proc.stderr


def test_bad_input_shape_option():
    from helpers import ROOT

    result = cli("summary", ROOT / "configs" / "mnist_convnet.yaml", "--input-shape", "a,b")
    assert result.exit_code == 2 and "--input-shape" in result.stderr


# ---------------------------------------------------------------- random stacks

_LAYERS_2D = st.one_of(
    st.builds(
        lambda f, k, s, p, d: {
            "type": "Conv2D",
            "filters": f,
            "kernel_size": k,
            "strides": s,
            "padding": p,
            "dilation_rate": d,
        },
        st.integers(1, 8),
        st.integers(1, 7),
        st.integers(1, 3),
        st.sampled_from(["valid", "same"]),
        st.integers(1, 3),
    ),
    st.builds(
        lambda t, k, s, p: {"type": t, "pool_size": k, "strides": s, "padding": p},
        st.sampled_from(["MaxPooling2D", "AveragePooling2D"]),
        st.integers(1, 4),
        st.integers(1, 4),
        st.sampled_from(["valid", "same"]),
    ),
    st.builds(lambda p: {"type": "ZeroPadding2D", "padding": p}, st.integers(0, 3)),
    st.builds(lambda c: {"type": "Cropping2D", "cropping": c}, st.integers(0, 4)),
    st.builds(lambda s: {"type": "UpSampling2D", "size": s}, st.integers(1, 3)),
    st.just({"type": "BatchNormalization"}),
    st.just({"type": "Flatten"}),
    st.builds(lambda u: {"type": "Dense", "units": u}, st.integers(1, 16)),
    st.just({"type": "GlobalMaxPooling2D"}),
    st.builds(
        lambda t: {"type": "Reshape", "target_shape": t},
        st.lists(st.sampled_from([-1, 1, 2, 3, 4]), min_size=1, max_size=3),
    ),
    st.builds(
        lambda f, k: {"type": "Conv1D", "filters": f, "kernel_size": k},
        st.integers(1, 4),
        st.integers(1, 5),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layers=st.lists(_LAYERS_2D, min_size=1, max_size=8),
    shape=st.lists(st.integers(1, 12), min_size=1, max_size=3),
)
def test_random_stacks_raise_only_config_errors_naming_a_layer(layers, shape):
    try:
        model = Sequential.from_spec(parse_spec({"input_shape": shape, "layers": layers}))
    except ConfigError as err:
        assert err.where and err.where.startswith("layers["), str(err)
        return
    assert all(min(out) >= 1 for _, out in model.shapes)
    # The calculators' count must be what building makes: the weights' sizes, moving
    # statistics included (Keras's count_params counts them too).
    model.initialize(0)
    assert model.count_params() == sum(w.size for w in model.get_weights())
