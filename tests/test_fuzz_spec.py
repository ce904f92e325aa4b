"""Fuzzing the config loader: whatever the file holds, loading it either gives a usable model
and train spec or raises ConfigError with a one-line message naming the file; nothing else.

Four sources of input: arbitrary text, YAML-like token soup (anchors, tags, flow collections),
random documents dumped with PyYAML, and random mutations of the shipped configs/*.yaml.
Each input goes through what ``nbcnn summary`` and ``nbcnn train`` do before any compute:
``load_spec`` (which also checks ``train:``), ``Sequential.from_spec``, ``parse_train`` and
the summary's calculators. The quick profile runs in the normal suite; the long one (tens of
thousands of examples) is marked slow and runs in the separate CI job.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml
from helpers import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbcnn.errors import ConfigError
from nbcnn.model import Sequential
from nbcnn.registry import registry
from nbcnn.spec import load_spec, parse_train
from nbcnn.summary import summarize

VALID_CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
VALID_DOCS = [yaml.safe_load(p.read_text()) for p in VALID_CONFIGS]
LAYER_ARGUMENTS = {name: list(registry().get(name).arguments) for name in registry().names()}
KNOWN_KEYS = sorted(
    {"name", "input_shape", "layers", "train", "type", "data", "dataset", "path", "epochs"}
    | {"batch_size", "optimizer", "learning_rate", "lr_schedule", "loss", "seed", "output"}
    | {"early_stopping", "patience", "monitor", "threads", "validation_split", "alpha"}
    | {arg for args in LAYER_ARGUMENTS.values() for arg in args}
)
WORDS = [
    *LAYER_ARGUMENTS,
    *KNOWN_KEYS,
    "same",
    "valid",
    "causal",
    "relu",
    "softmax",
    "adam",
    "sgd",
    "rmsprop",
    "cosine",
    "step",
    "digits",
    "npz",
    "idx",
    "synthetic",
    "val_loss",
    "channels_first",
    "bilinear",
    "glorot_uniform",
    "categorical_crossentropy",
]

# ------------------------------------------------------------------ strategies

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.integers(),
    st.floats(),  # NaN and +-inf included
    st.text(max_size=10),
    st.sampled_from(WORDS),
    st.dates(),  # PyYAML writes and reads timestamps
    st.binary(max_size=6),  # !!binary
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8), st.integers(), st.none())
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


# A real layer type with a random choice of its arguments, each with a random value.
random_layer = st.one_of(
    [
        st.fixed_dictionaries({"type": st.just(kind)}, optional=dict.fromkeys(args, values))
        for kind, args in sorted(LAYER_ARGUMENTS.items())
    ]
)
# A top-level mapping with some of the known keys (and maybe another), random values.
random_document = st.tuples(
    st.fixed_dictionaries(
        {},
        optional={
            "input_shape": st.lists(st.integers(-1, 40), max_size=5) | values,
            "layers": st.lists(random_layer | values, max_size=6),
            "train": st.dictionaries(st.sampled_from(KNOWN_KEYS), values, max_size=5),
            "name": values,
        },
    ),
    st.dictionaries(keys, values, max_size=1),
    st.booleans(),
).map(lambda t: yaml.safe_dump({**t[0], **t[1]}, sort_keys=False, allow_unicode=t[2]))


layer_types = st.sampled_from(sorted(LAYER_ARGUMENTS)) | st.text(max_size=8)
actions = st.sampled_from(["delete", "replace", "retype", "insert", "rename"])


def _paths(node, prefix=()):
    """Every (path, value) in a document tree; a path is a tuple of keys and indices."""
    yield prefix, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


@st.composite
def mutated_config(draw):
    """One of configs/*.yaml after one to four random edits: delete a key or item, replace a
    value (often by one of another type), change a layer's type, insert a random layer."""
    doc = copy.deepcopy(draw(st.sampled_from(VALID_DOCS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p, _ in _paths(doc) if p]
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        action = draw(actions)
        layers = doc.get("layers") if isinstance(doc.get("layers"), list) else None
        if action == "delete":
            del parent[last]
        elif action == "replace":
            parent[last] = draw(values)
        elif action == "retype" and layers and isinstance(layers[0], dict):
            target = draw(st.sampled_from([x for x in layers if isinstance(x, dict)]))
            target["type"] = draw(layer_types)
        elif action == "insert" and layers is not None:
            layers.insert(draw(st.integers(0, len(layers))), draw(random_layer))
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(keys)] = parent.pop(last)
        else:
            parent[last] = draw(scalars)
    return yaml.safe_dump(doc, sort_keys=False)


YAML_TOKENS = [
    "input_shape: ",
    "layers:",
    "train:",
    "name: ",
    "- ",
    "type: ",
    "Conv2D",
    "Dense",
    "units: ",
    "filters: ",
    "kernel_size: ",
    "[",
    "]",
    "{",
    "}",
    ", ",
    ": ",
    "? ",
    "\n",
    "\n  ",
    "\n    ",
    "\t",
    "&a ",
    "*a",
    "<<: *a",
    "!!python/object:os.system ",
    "!!binary ",
    "!!set ",
    "!!float ",
    "!!str ",
    "!!timestamp ",
    "!custom ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "|",
    ">",
    "'",
    '"',
    "#",
    "28",
    "-1",
    "0",
    "1e400",
    ".nan",
    "~",
    "null",
    "yes",
    "2001-12-14",
    "0x1F",
    "0o17",
    "1_000",
    "\\u0000",
    "\x00",
    "\ufeff",
    "\x85",
]
token_soup = st.lists(st.sampled_from(YAML_TOKENS) | st.text(max_size=3), max_size=40).map("".join)
raw_text = st.text(max_size=200)
raw_bytes = st.binary(max_size=200)

STRATEGIES = {
    "text": raw_text,
    "bytes": raw_bytes,
    "token_soup": token_soup,
    "documents": random_document,
    "mutations": mutated_config(),
}
# Quick profile (about 300 examples in all): the normal suite. Long profile: the slow job.
QUICK = {"text": 40, "bytes": 20, "token_soup": 60, "documents": 80, "mutations": 100}
# documents and mutations each cost ~8-12 ms an example (a model is built and summarised):
# 4,000 of each keeps the slow job, and CI with it, inside its 15 minutes (6,000 took 48 + 70 s
# once the MPI and Dask tests of issue 17 joined the suite; 10,000: 94 + 78 s before).
LONG = {
    "text": 10_000,
    "bytes": 5_000,
    "token_soup": 15_000,
    "documents": 4_000,
    "mutations": 4_000,
}

# ------------------------------------------------------------------ the property


def check_config(path: Path, content: str | bytes) -> str:
    """Load ``content`` as a config the way the CLI does; return "accepted" or "refused".

    Fails the test when anything but a ConfigError escapes, when the message is empty, spans
    several lines or does not name the file, or when an accepted config is not usable.
    """
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    try:
        spec = load_spec(path)
        try:
            model = Sequential.from_spec(spec)
        except ConfigError as err:
            raise err.located(file=str(path)) from None
        train = parse_train(spec.train, default_output=f"runs/{spec.name}")
        summary = summarize(model)
    except ConfigError as err:
        message = str(err)
        assert message.strip(), "empty message"
        assert "\n" not in message and "\r" not in message, message
        assert str(path) in message, message
        return "refused"
    assert spec.layers and all(min(out) >= 1 for _, out in model.shapes)
    # The summary's rows add up to the model's own count, split into trainable and frozen.
    assert summary.total_params == model.count_params()
    assert summary.trainable_params + summary.non_trainable_params == summary.total_params
    assert train.epochs >= 1 and train.batch_size >= 1 and math.isfinite(train.validation_split)
    return "accepted"


def run_fuzz(strategy, examples: int, path: Path) -> None:
    outcomes = set()

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def loads_or_refuses(content):
        outcomes.add(check_config(path, content))

    loads_or_refuses()
    assert outcomes  # hypothesis ran


@pytest.mark.parametrize("kind", sorted(STRATEGIES))
def test_fuzz_quick(kind, tmp_path):
    run_fuzz(STRATEGIES[kind], QUICK[kind], tmp_path / "fuzz.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(STRATEGIES))
def test_fuzz_long(kind, tmp_path):
    run_fuzz(STRATEGIES[kind], LONG[kind], tmp_path / "fuzz.yaml")


def test_shipped_configs_are_accepted(tmp_path):
    """The mutations start from valid configs: check they really are."""
    for path in VALID_CONFIGS:
        assert check_config(tmp_path / "c.yaml", path.read_text()) == "accepted", path


# More of the fuzzer's finds are in the CLI corpus of test_config_errors.py (list_as_key,
# set_tag_on_scalar, bad_tagged_float, impossible_date, huge_integer, control_character_key).
@pytest.mark.parametrize(
    "text",
    [
        "? {a: 1}\n: 3\n",  # a mapping as a key: TypeError (unhashable) in the loader
        "input_shape: [4, 4, 1]\nlayers: [{type: Dense, units: 2}]\ntrain: {? [a]: 1}\n",
        "a: !!timestamp abc",  # PyYAML's constructors: AttributeError, KeyError, ValueError
        "a: !!bool maybe",
        "a: !!int 0x",
        '"": 1',  # an empty unknown key, shown as ''
    ],
)
def test_regressions_found_by_the_fuzzer(text, tmp_path):
    assert check_config(tmp_path / "r.yaml", text) == "refused"
