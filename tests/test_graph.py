"""Graph models compute right (issue 14, Compute): gradients of random small DAGs match central
finite differences, a graph that is a chain computes bit for bit what the chain computes, an
activation is freed once its last consumer has run, and conv+ReLU+pool fusion happens only
where the pool is the conv's only consumer.

The DAGs are built by construction: each layer takes earlier outputs only (or the model's
input), merges take inputs whose shapes fit Keras's rules (elementwise merges broadcast an
axis of 1; Concatenate joins channels), and the outputs no layer took are merged at the end,
so every drawn graph is valid. Layers compute in float32 (the kernels take nothing else); the
finite differences sum the loss in float64 and step by 1e-2, smaller where a kink is in the
way (nbcnn.testing.check_model_gradients). Dropout runs in training mode: each evaluation
runs on a deep copy of the model, so its masks are the same every time.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import numpy as np
import pytest
from helpers import model_doc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbcnn.fusion import ConvReluMaxPool
from nbcnn.layers.core import Activation, Dense
from nbcnn.layers.merging import Add, Concatenate
from nbcnn.model import Sequential
from nbcnn.spec import INPUT_NAME, parse_spec
from nbcnn.testing import check_model_gradients

MERGES = ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"]
SINGLE = ["Conv2D", "Dense", "Activation", "BatchNormalization", "Dropout"]
#: Entries compared per array (the input and each weight), or all of a smaller array.
ENTRIES = 20
BATCH = 2


def slow(examples: int) -> settings:
    """Hypothesis settings for tests whose examples take a while (numba's first compile)."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def build(doc: dict, seed: int = 0) -> Sequential:
    return Sequential.from_spec(parse_spec(doc)).initialize(seed)


# ------------------------------------------------------------------ DAGs by construction


def _fits(kind: str, channels: list[int]) -> bool:
    """Whether inputs with these channel counts (same height and width) can be merged by
    ``kind``: Concatenate always; elementwise merges when every count is 1 or one value."""
    if kind == "Subtract" and len(channels) != 2:
        return False
    return kind == "Concatenate" or len(set(channels) - {1}) <= 1


def _merged(kind: str, channels: list[int]) -> int:
    return sum(channels) if kind == "Concatenate" else max(channels)


def _reference(draw: Any, i: int, j: int) -> Any:
    """How layer ``i`` writes that it takes output ``j``: by name or by relative index."""
    if draw(st.booleans()):
        return INPUT_NAME if j == -1 else f"l{j}"
    return j - i


def _single(draw: Any, kind: str, channels: int) -> tuple[dict, int]:
    """A single-input layer of ``kind`` and its output's channel count."""
    if kind == "Conv2D":
        filters = draw(st.integers(1, 3))
        layer = {
            "type": "Conv2D",
            "filters": filters,
            "kernel_size": draw(st.integers(1, 3)),
            "padding": "same",
            "activation": draw(st.sampled_from([None, "tanh", "sigmoid"])),
        }
        return layer, filters
    if kind == "Dense":
        units = draw(st.integers(1, 3))
        return {
            "type": "Dense",
            "units": units,
            "activation": draw(st.sampled_from([None, "tanh"])),
        }, units
    if kind == "Activation":
        return {
            "type": "Activation",
            "activation": draw(st.sampled_from(["tanh", "sigmoid", "swish"])),
        }, channels
    if kind == "Dropout":
        return {"type": "Dropout", "rate": draw(st.sampled_from([0.25, 0.5]))}, channels
    return {"type": "BatchNormalization"}, channels


@st.composite
def dags(draw: Any, merge: str) -> dict:
    """A config of 2-9 layers over an (S, S, C) input with at least one ``merge`` layer: fan-out
    wherever two layers draw the same earlier output, fan-in at every merge.

    At most two Multiply layers: a product of products of ... grows the loss's degree, and
    with it the curvature, past what float32 finite differences can follow."""
    size, channels = draw(st.integers(2, 5)), draw(st.integers(1, 3))
    out_channels = {-1: channels}  # per output (-1: the model's input); H and W stay (S, S)
    n = draw(st.integers(2, 8))
    at = draw(st.integers(0, n - 1))  # where ``merge`` surely appears
    layers: list[dict] = []
    used: set[int] = set()
    products = 1 if merge == "Multiply" else 0  # Multiply layers made or to come at ``at``
    for i in range(n):
        kinds = SINGLE + [k for k in MERGES if k != "Multiply" or products < 2]
        kind = merge if i == at else draw(st.sampled_from(kinds))
        products += kind == "Multiply" and i != at
        sources = list(range(-1, i))
        if kind in MERGES:
            count = 2 if kind in ("Subtract", "Multiply") else draw(st.integers(2, 3))
            picked = [draw(st.sampled_from(sources))]  # a source may come twice: Add [a, a]
            while len(picked) < count:
                fitting = [
                    j for j in sources if _fits(kind, [out_channels[k] for k in [*picked, j]])
                ]
                picked.append(draw(st.sampled_from(fitting)))
            layer = {"type": kind, "inputs": [_reference(draw, i, j) for j in picked]}
            out_channels[i] = _merged(kind, [out_channels[j] for j in picked])
        else:
            picked = [draw(st.sampled_from(sources))]
            layer, out_channels[i] = _single(draw, kind, out_channels[picked[0]])
            if picked[0] != i - 1 or draw(st.booleans()):  # the previous layer may go unwritten
                layer["inputs"] = _reference(draw, i, picked[0])
        used.update(picked)
        layers.append({**layer, "name": f"l{i}"})
    dangling = [j for j in range(n - 1) if j not in used] + [n - 1]
    if len(dangling) > 1:  # every output must feed a later layer: merge the loose ends
        kinds = [
            k
            for k in MERGES
            if _fits(k, [out_channels[j] for j in dangling]) and (k != "Multiply" or products < 2)
        ]
        kind = draw(st.sampled_from(kinds))
        layers.append({"type": kind, "name": f"l{n}", "inputs": [f"l{j}" for j in dangling]})
    return model_doc(*layers, input_shape=(size, size, channels))


def untie(model: Sequential, rng: np.random.Generator) -> None:
    """Random biases, betas and gammas instead of Keras's zeros and ones. Two layers that
    start equal (two BatchNormalizations of one output; Dense layers giving 0 = tanh(0 + 0)
    where a Dropout zeroed their input) tie exactly in a Maximum, and one's weight moves it
    off the tie on one side only: there the loss has no derivative to compare with."""
    for layer in model.layers:
        for name, w in layer.params.items():
            if name in ("bias", "beta"):
                w[...] = rng.uniform(-0.5, 0.5, w.shape)
            elif name == "gamma":
                w[...] = rng.uniform(0.5, 1.5, w.shape)


@pytest.mark.parametrize("merge", MERGES)
@slow(25)
@given(data=st.data())
def test_dag_gradients_match_finite_differences(merge, data):
    doc = data.draw(dags(merge))
    model = build(doc, seed=data.draw(st.integers(0, 2**16)))
    untie(model, np.random.default_rng(data.draw(st.integers(0, 2**16))))
    assert model.is_graph
    # Uniform in [-1, 1]: a BatchNormalization of the input then differs from it (scaled by
    # ~1.7); a standard normal input would nearly equal it everywhere, and a Maximum of the
    # two would have a kink within every step.
    x = np.random.default_rng(0).uniform(-1, 1, (BATCH, *model.input_shape)).astype(np.float32)
    checked = check_model_gradients(model, x, max_entries=ENTRIES)
    arrays, _ = model.trainable_weights()
    assert len(checked) == 1 + len(arrays)  # the input and every trainable weight
    for (key, count), size in zip(checked.items(), [x.size] + [w.size for w in arrays]):
        assert count * 2 >= min(size, ENTRIES), key


RELU_CONV = {"type": "Conv2D", "kernel_size": 3, "padding": "same", "activation": "relu"}

# The shapes the issue names, by hand: ReLU and max pooling included (their kinks are
# stepped past), and Concatenate along another axis than the channels.
HAND_MADE = {
    "residual_with_projection": [
        {**RELU_CONV, "filters": 4, "name": "stem"},
        {**RELU_CONV, "filters": 6, "strides": 2},
        {**RELU_CONV, "filters": 6, "activation": None},
        {"type": "Conv2D", "filters": 6, "kernel_size": 1, "strides": 2, "inputs": "stem"},
        {"type": "Add", "inputs": [-2, -1]},
        {"type": "BatchNormalization"},
        {"type": "Activation", "activation": "relu"},
        {"type": "GlobalAveragePooling2D"},
        {"type": "Dense", "units": 3, "activation": "softmax"},
    ],
    "inception_block": [
        {**RELU_CONV, "filters": 4, "name": "stem"},
        {"type": "Conv2D", "filters": 2, "kernel_size": 1, "name": "one", "inputs": "stem"},
        {**RELU_CONV, "filters": 3, "name": "three", "inputs": "stem"},
        {"type": "MaxPooling2D", "pool_size": 3, "strides": 1, "padding": "same", "inputs": "stem"},
        {"type": "Concatenate", "inputs": ["one", "three", -1]},
        {"type": "Flatten"},
        {"type": "Dense", "units": 2},
    ],
    "a_branch_used_three_times": [
        {**RELU_CONV, "filters": 3, "name": "reused"},
        {**RELU_CONV, "filters": 3},
        {"type": "Multiply", "inputs": ["reused", -1]},
        {"type": "Maximum", "inputs": [-1, "reused", "reused"]},
    ],
    "concatenate_rows_then_columns": [
        {**RELU_CONV, "filters": 3, "name": "a"},
        {"type": "MaxPooling2D", "pool_size": 2, "name": "half", "inputs": "input_layer"},
        {"type": "Conv2D", "filters": 3, "kernel_size": 2, "strides": 2, "inputs": "a"},
        {"type": "Concatenate", "axis": 1, "inputs": ["half", -1]},
        {"type": "Concatenate", "axis": 2, "inputs": [-1, -1]},
    ],
}


@pytest.mark.parametrize("name", list(HAND_MADE))
def test_hand_made_graph_gradients_match_finite_differences(name):
    model = build(model_doc(*HAND_MADE[name], input_shape=(6, 6, 3)))
    untie(model, np.random.default_rng(1))
    assert model.is_graph
    x = np.random.default_rng(0).uniform(-1, 1, (BATCH, 6, 6, 3)).astype(np.float32)
    checked = check_model_gradients(model, x, max_entries=ENTRIES)
    assert set(checked) == {
        "x",
        *(f"{layer.name}/{p}" for layer, p in model.trainable_weights()[1]),
    }


# --------------------------------------------------------------- a graph that is a chain

CHAIN = [
    {"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
    {"type": "MaxPooling2D", "pool_size": 2},
    {"type": "Conv2D", "filters": 3, "kernel_size": 3, "padding": "same"},
    {"type": "BatchNormalization"},
    {"type": "Activation", "activation": "tanh"},
    {"type": "Dropout", "rate": 0.5},
    {"type": "Flatten"},
    {"type": "Dense", "units": 5, "activation": "softmax"},
]


def outputs_and_gradients(model: Sequential, x: np.ndarray) -> list[np.ndarray]:
    """Inference output, training output, input gradient and every weight's gradient, of a
    fresh copy of ``model`` (so that two models see the same Dropout masks)."""
    model = copy.deepcopy(model)
    inference = model.forward(x)
    y = model.forward(x, training=True)
    r = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
    dx = model.backward(r)
    grads = [layer.grads[name] for layer, name in model.trainable_weights()[1]]
    return [inference, y, dx, *grads]


def assert_same(a: Sequential, b: Sequential, x: np.ndarray) -> None:
    got, want = outputs_and_gradients(a, x), outputs_and_gradients(b, x)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_a_chain_written_with_inputs_is_the_naive_chain():
    """``inputs: -1``, the previous layer's name and ``input_layer`` on the first layer mean
    what a config without ``inputs`` means, bit for bit, fused steps included."""
    named = [{**layer, "name": f"l{i}"} for i, layer in enumerate(CHAIN)]
    written = [
        {**layer, "inputs": (INPUT_NAME if i == 0 else f"l{i - 1}") if i % 2 == 0 else -1}
        for i, layer in enumerate(named)
    ]
    chain, explicit = (
        build(model_doc(*named, input_shape=(6, 6, 2))),
        build(model_doc(*written, input_shape=(6, 6, 2))),
    )
    assert not explicit.is_graph and explicit.inputs == chain.inputs
    assert [type(step) for _, step in explicit.steps()] == [type(s) for _, s in chain.steps()]
    assert any(isinstance(step, ConvReluMaxPool) for _, step in chain.steps())
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 2)).astype(np.float32)
    assert_same(explicit, chain, x)


# Graphs that compute exactly their input: fan-out into a merge that gives it back (a + a is
# exact in float32, and so is halving it; the max of a and a is a), or a one-input merge.
IDENTITIES = [
    [{"type": "Average", "inputs": [-1, -1]}],
    [{"type": "Maximum", "inputs": [-1, -1]}],
    [{"type": "Minimum", "inputs": [-1, -1, -1]}],
    [{"type": "Add", "inputs": [-1]}],
    [{"type": "Concatenate", "inputs": [-1]}],
    [{"type": "Multiply", "inputs": [-1]}],
    [{"type": "Dropout", "rate": 0.0}, {"type": "Average", "inputs": [-1, -2]}],
]


@slow(25)
@given(
    insert=st.lists(st.tuples(st.integers(0, len(CHAIN) - 2), st.sampled_from(IDENTITIES))),
    seed=st.integers(0, 2**16),
)
def test_a_graph_equal_to_a_chain_by_construction_computes_the_chain(insert, seed):
    """The chain with identity sub-graphs spliced in after some layers: the same outputs and
    gradients bit for bit (each model unfused, since a splice separates a fusable pair)."""
    layers = []
    for i, layer in enumerate(CHAIN):
        layers.append(layer)
        for after, identity in insert:
            if after == i:
                layers.extend(identity)
    chain = build(model_doc(*CHAIN, input_shape=(6, 6, 2)), seed)
    graph = build(model_doc(*layers, input_shape=(6, 6, 2)), seed)
    graph.set_weights(chain.get_weights())  # the spliced layers have no weights
    assert graph.is_graph == any(
        len(identity) > 1 or len(identity[0]["inputs"]) > 1 for _, identity in insert
    )
    chain.fuse = graph.fuse = False
    x = np.random.default_rng(seed).normal(size=(3, 6, 6, 2)).astype(np.float32)
    assert_same(graph, chain, x)


# ------------------------------------------------------------------- freeing activations


class Recorder:
    """Records, whenever a probe layer runs, which outputs of the probe layers are still alive
    (weak references: only a strong one elsewhere keeps an array)."""

    alive: list[set[str]] = []
    made: dict[str, Any] = {}

    def forward(self, x, training=False):
        Recorder.alive.append({name for name, ref in Recorder.made.items() if ref() is not None})
        y = super().forward(x, training)
        Recorder.made[self.name] = weakref.ref(y)
        return y


class Probe(Recorder, Activation):
    """tanh: a new array every time."""


class ProbeAdd(Recorder, Add):
    pass


class ProbeConcatenate(Recorder, Concatenate):
    pass


@st.composite
def probe_graphs(draw: Any) -> tuple[list, list]:
    """Probe layers wired at random (each takes earlier outputs), loose ends concatenated."""
    n = draw(st.integers(2, 9))
    layers, inputs = [], []
    for i in range(n):
        sources = st.sampled_from(list(range(-1, i)))
        if i > 0 and draw(st.booleans()):
            picked = draw(st.lists(sources, min_size=2, max_size=3))
            layers.append(ProbeAdd(name=f"p{i}"))  # shapes stay (3, 4) inside
            inputs.append([INPUT_NAME if j == -1 else f"p{j}" for j in picked])
        else:
            j = draw(sources)
            layers.append(Probe("tanh", name=f"p{i}"))
            inputs.append(INPUT_NAME if j == -1 else f"p{j}")
    taken = {j for written in inputs for j in (written if isinstance(written, list) else [written])}
    loose = [f"p{i}" for i in range(n - 1) if f"p{i}" not in taken]
    if loose:
        layers.append(ProbeConcatenate(name=f"p{n}"))
        inputs.append([*loose, f"p{n - 1}"])
    return layers, inputs


@slow(60)
@given(probe_graphs())
def test_forward_frees_each_activation_after_its_last_consumer(graph):
    """When layer k runs (inference), exactly the outputs of earlier layers that layer k or a
    later one still takes are alive: none kept past its last use, none dropped too early."""
    layers, written = graph
    model = Sequential(layers, input_shape=(3, 4), inputs=written).initialize(0)
    Recorder.alive, Recorder.made = [], {}
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    y = model.forward(x)
    assert y.shape == (2, *model.output_shape)
    for k, alive in enumerate(Recorder.alive):
        needed = {
            model.layers[j].name for j in range(k) if any(c >= k for c in consumers(model, j))
        }
        assert alive == needed, (k, model.inputs)
    del y
    assert all(ref() is None for ref in Recorder.made.values())  # the model keeps nothing


def consumers(model: Sequential, j: int) -> list[int]:
    return [i for i, producers in enumerate(model.inputs) if j in producers]


def test_a_wide_graph_holds_only_the_live_activations():
    """Eight branches off one input, each used once by a running sum: the forward's peak
    holds a few activations of 1 MB, not all of them (tracemalloc of numpy's buffers)."""
    import tracemalloc

    branches = 8
    layers = [Activation("tanh", name="stem")]
    written: list[Any] = [None]
    for b in range(branches):
        layers.append(Activation("tanh", name=f"b{b}"))
        written.append("stem")
        layers.append(Add(name=f"sum{b}"))
        written.append([f"b{b}", "stem" if b == 0 else f"sum{b - 1}"])
    model = Sequential(layers, input_shape=(256, 256, 4), inputs=written).initialize(0)
    x = np.ones((1, 256, 256, 4), np.float32)  # 1 MiB per activation
    model.forward(x)
    tracemalloc.start()
    try:
        model.forward(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    mib = 2**20
    # stem, the running sum, one branch and the new sum are alive at once; freed nothing,
    # the peak would be 17 activations.
    assert peak < 5.5 * mib, peak / mib


# ------------------------------------------------------------------------------- fusion

FUSABLE = [
    {
        "type": "Conv2D",
        "filters": 4,
        "kernel_size": 3,
        "padding": "same",
        "activation": "relu",
        "name": "conv",
    },
    {"type": "MaxPooling2D", "pool_size": 2, "name": "pool"},
]


def step_types(model: Sequential) -> list[tuple[int, str]]:
    return [(i, type(step).__name__) for i, step in model.steps()]


def test_conv_relu_pool_fuses_in_a_graph_when_the_pool_is_the_convs_only_consumer():
    """A graph where the pair sits on a branch, the pool taking the conv by name."""
    doc = model_doc(
        {"type": "Conv2D", "filters": 4, "kernel_size": 1, "name": "stem"},
        {**FUSABLE[0], "inputs": "stem"},
        {**FUSABLE[1], "inputs": "conv"},
        {"type": "MaxPooling2D", "pool_size": 2, "inputs": "stem", "name": "skip"},
        {"type": "Add", "inputs": ["pool", "skip"]},
        input_shape=(8, 8, 2),
    )
    model = build(doc)
    assert model.is_graph
    assert step_types(model) == [
        (0, "Conv2D"),
        (1, "ConvReluMaxPool"),
        (3, "MaxPooling2D"),
        (4, "Add"),
    ]
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 2)).astype(np.float32)
    unfused = copy.deepcopy(model)
    unfused.fuse = False
    np.testing.assert_allclose(model.forward(x), unfused.forward(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "other_use",
    [
        # the conv's output also feeds the merge (next to the pool's, after a 2x upsampling)
        [
            {"type": "UpSampling2D", "size": 2, "inputs": "pool"},
            {"type": "Add", "inputs": [-1, "conv"]},
        ],
        # ...or a branch listed between the two
        [
            {"type": "UpSampling2D", "size": 2, "inputs": "pool"},
            {"type": "Concatenate", "inputs": ["conv", -1]},
        ],
    ],
    ids=["add", "concatenate"],
)
def test_no_fusion_when_the_conv_output_is_used_elsewhere(other_use):
    """The fused step never stores the conv's output, which another layer needs here."""
    model = build(model_doc(*FUSABLE, *other_use, input_shape=(8, 8, 2)))
    assert [name for _, name in step_types(model)][:2] == ["Conv2D", "MaxPooling2D"]
    # The same pair without the second use fuses: it is the other use that stops it.
    alone = build(model_doc(*FUSABLE, input_shape=(8, 8, 2)))
    assert step_types(alone) == [(0, "ConvReluMaxPool")]
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 2)).astype(np.float32)
    check_model_gradients(model, x, max_entries=ENTRIES)


def test_a_pool_listed_after_a_conv_but_taking_another_output_is_not_fused_with_it():
    """Adjacent in the list is not enough: the pool after the conv pools the model's input,
    and the conv's own pool comes later."""
    doc = model_doc(
        FUSABLE[0],
        {**FUSABLE[1], "inputs": INPUT_NAME},
        {"type": "MaxPooling2D", "pool_size": 2, "inputs": "conv"},
        {"type": "Concatenate", "inputs": ["pool", -1]},
        input_shape=(8, 8, 2),
    )
    model = build(doc)
    fused = [step for _, step in model.steps() if isinstance(step, ConvReluMaxPool)]
    assert all(step.pool is model.layers[2] for step in fused)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 2)).astype(np.float32)
    unfused = copy.deepcopy(model)
    unfused.fuse = False
    np.testing.assert_allclose(model.forward(x), unfused.forward(x), rtol=1e-6, atol=1e-6)


# ------------------------------------------------- merges and the model's input gradient


class SkipsWhenAllowed(Add):
    """Follows the contract to the letter: with ``input_grad_needed`` False, no input's
    gradient is needed, so it returns None for each (docs/plugins.md)."""

    def backward(self, dy):
        grads = super().backward(dy)
        return grads if self.input_grad_needed else [None] * len(grads)


def merge_of_input_and_layer(merge: Any) -> Sequential:
    """``merge(dense(x), x)``: one input of the merge is the model's input, one a layer's."""
    return Sequential(
        [Dense(3, name="dense"), merge], input_shape=(3,), inputs=[None, ["dense", INPUT_NAME]]
    ).initialize(0)


def test_training_reaches_a_layer_merged_with_the_models_input():
    """Training back-propagates without the input gradient (input_grad=False); the layer
    merged with the input still gets its weight gradients, the same as with it."""
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    grads = []
    for input_grad in (True, False):
        model = merge_of_input_and_layer(Add())
        y = model.forward(x, training=True)
        model.backward(np.ones_like(y), input_grad=input_grad)
        grads.append(model.layers[0].grads["kernel"])
    np.testing.assert_array_equal(grads[0], grads[1])
    assert np.abs(grads[0]).sum() > 0


def test_a_merge_is_told_its_gradients_are_not_needed_only_when_none_is():
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    model = merge_of_input_and_layer(SkipsWhenAllowed())
    y = model.forward(x, training=True)
    model.backward(np.ones_like(y), input_grad=False)
    assert np.abs(model.layers[0].grads["kernel"]).sum() > 0


class OneArray(Add):
    """Returns one array, not a list: with a batch of 2 and 2 inputs, a list() of it would
    pass as two gradients of the wrong shape."""

    def backward(self, dy):
        return super().backward(dy)[0]


class NoneForALayer(Add):
    def backward(self, dy):
        return [super().backward(dy)[0], None]


class CutGradients(Add):
    def backward(self, dy):
        return [g[:, :1] for g in super().backward(dy)]


@pytest.mark.parametrize("merge", [OneArray, NoneForALayer, CutGradients])
def test_a_merge_breaking_the_backward_contract_is_named(merge):
    from nbcnn.errors import TrainingError

    layer = merge()
    model = Sequential(
        [Dense(3, name="dense"), Dense(3, name="dense_1"), layer],
        input_shape=(3,),
        inputs=[None, INPUT_NAME, ["dense", "dense_1"]],
    ).initialize(0)
    y = model.forward(np.ones((2, 3), np.float32), training=True)
    with pytest.raises(TrainingError, match=rf"layers\[2\] '{layer.name}'.*backward"):
        model.backward(np.ones_like(y))
