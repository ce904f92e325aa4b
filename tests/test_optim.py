"""Optimizers against Keras 3's formulas (clipping and weight decay included), state round
trips, schedules. The losses are tested in test_losses.py."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from nbcnn.errors import ConfigError, DataError
from nbcnn.optim import SGD, Adam, AdamW, RMSprop, make_optimizer, make_schedule

# ---------------------------------------------------------------- hand-computed scalars


def run_constant_gradient(opt, steps: int, g: float = 1.0) -> list[float]:
    """Parameter value after each of ``steps`` updates of a scalar starting at 0 with gradient g."""
    p = np.zeros(1, np.float32)
    values = []
    for _ in range(steps):
        opt.step([p], [np.full(1, g, np.float32)])
        values.append(float(p[0]))
    return values


def test_sgd_hand_computed():
    # p -= lr * g
    assert run_constant_gradient(SGD(0.1), 3) == pytest.approx([-0.1, -0.2, -0.3])
    # m = 0.9 m - 0.1: m = -0.1, -0.19, -0.271; p += m
    values = run_constant_gradient(SGD(0.1, momentum=0.9), 3)
    assert values == pytest.approx([-0.1, -0.29, -0.561], rel=1e-6)
    # Nesterov: p += 0.9 m - 0.1 with the new m: -0.19, -0.271, -0.3439
    values = run_constant_gradient(SGD(0.1, momentum=0.9, nesterov=True), 3)
    assert values == pytest.approx([-0.19, -0.461, -0.8049], rel=1e-6)


def test_adam_first_step_is_lr_times_sign():
    # t=1: m = 0.1 g, v = 0.001 g^2, alpha = lr sqrt(0.001) / 0.1, so the step is
    # lr * g / (|g| + eps / sqrt(0.001)): lr * sign(g) up to epsilon.
    p = np.zeros(3, np.float32)
    Adam(0.01).step([p], [np.array([2.0, -0.5, 1e-3], np.float32)])
    expected = (
        -0.01 * np.array([2.0, -0.5, 1e-3]) / (np.array([2.0, 0.5, 1e-3]) + 1e-7 / 0.001**0.5)
    )
    np.testing.assert_allclose(p, expected, rtol=1e-6)


def test_rmsprop_keras_docstring_example():
    # Keras's RMSprop docstring: lr 0.1, var 10, loss var^2 / 2 (gradient = var) -> 9.683772.
    p = np.array([10.0], np.float32)
    RMSprop(learning_rate=0.1).step([p], [p.copy()])
    assert p[0] == pytest.approx(9.683772, abs=1e-6)


# ---------------------------------------------------------------- against float64 references


def keras_clip(grads, options):
    """BaseOptimizer._clip_gradients in float64: per-array norm, global norm, or value."""
    grads = [g.astype(np.float64) for g in grads]
    if options.get("clipnorm"):
        c = options["clipnorm"]
        return [g * c / max(np.sqrt((g * g).sum()), c) for g in grads]
    if options.get("global_clipnorm"):
        c = options["global_clipnorm"]
        norm = math.sqrt(sum((g * g).sum() for g in grads))
        return [g * c / max(norm, c) for g in grads]
    if options.get("clipvalue"):
        return [np.clip(g, -options["clipvalue"], options["clipvalue"]) for g in grads]
    return grads


def reference(kind: str, options: dict, params, grads_per_step, lrs):
    """Keras 3's update rules written out in float64, one parameter array at a time: clip the
    gradients, decay the weights (``p -= p * weight_decay * lr``), then update."""
    params = [p.astype(np.float64) for p in params]
    state = [dict.fromkeys(("m", "v", "a", "mom"), 0.0) for _ in params]
    decay = options.get("weight_decay", 0.004 if kind == "adamw" else None)
    for t, (grads, lr) in enumerate(zip(grads_per_step, lrs, strict=True), start=1):
        for i, g in enumerate(keras_clip(grads, options)):
            s = state[i]
            if decay:
                params[i] = params[i] - params[i] * decay * lr
            if kind == "sgd":
                mu = options.get("momentum", 0.0)
                if mu == 0:
                    params[i] = params[i] - lr * g
                    continue
                s["m"] = mu * s["m"] - lr * g
                step = mu * s["m"] - lr * g if options.get("nesterov") else s["m"]
                params[i] = params[i] + step
            elif kind in ("adam", "adamw"):
                b1, b2 = options.get("beta_1", 0.9), options.get("beta_2", 0.999)
                alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
                s["m"] = s["m"] + (g - s["m"]) * (1 - b1)
                s["v"] = s["v"] + (g * g - s["v"]) * (1 - b2)
                params[i] = params[i] - alpha * s["m"] / (np.sqrt(s["v"]) + 1e-7)
            else:
                rho, mu = options.get("rho", 0.9), options.get("momentum", 0.0)
                s["v"] = rho * s["v"] + (1 - rho) * g * g
                denominator = s["v"] + 1e-7
                if options.get("centered"):
                    s["a"] = rho * s["a"] + (1 - rho) * g
                    denominator = s["v"] - s["a"] ** 2 + 1e-7
                increment = lr * g / np.sqrt(denominator)
                if mu > 0:
                    s["mom"] = mu * s["mom"] + increment
                    increment = s["mom"]
                params[i] = params[i] - increment
    return params


CONFIGS = [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.5, "nesterov": True}),
    ("adam", {}),
    ("adam", {"beta_1": 0.5, "beta_2": 0.9}),
    ("rmsprop", {}),
    ("rmsprop", {"momentum": 0.9}),
    ("rmsprop", {"centered": True}),
    ("rmsprop", {"centered": True, "momentum": 0.5, "rho": 0.8}),
    ("adamw", {}),
    ("adamw", {"weight_decay": 0.5, "global_clipnorm": 0.5}),
    ("sgd", {"momentum": 0.9, "weight_decay": 0.3, "clipnorm": 0.4}),
    ("rmsprop", {"clipvalue": 0.2, "weight_decay": 0.1}),
    ("adam", {"global_clipnorm": 0.1}),
]


def problem(seed: int = 0, steps: int = 3):
    rng = np.random.default_rng(seed)
    shapes = [(3, 2), (4,), (1, 1, 2)]
    params = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize(("kind", "options"), CONFIGS)
def test_optimizers_match_keras_formulas(kind, options):
    params, grads = problem()
    lrs = [0.01, 0.02, 0.005]  # a schedule may change the rate between steps
    expected = reference(kind, options, params, grads, lrs)
    opt = make_optimizer({"type": kind, **options})
    for step_grads, lr in zip(grads, lrs, strict=True):
        opt.step(params, step_grads, lr)
    assert opt.iterations == 3
    for p, e in zip(params, expected, strict=True):
        assert p.dtype == np.float32
        np.testing.assert_allclose(p, e, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(("kind", "options"), CONFIGS)
def test_state_dict_round_trip_continues_bit_identically(kind, options):
    params, grads = problem(seed=1, steps=5)
    straight = [p.copy() for p in params]
    opt = make_optimizer({"type": kind, **options})
    for g in grads:
        opt.step(straight, g)

    resumed = [p.copy() for p in params]
    first = make_optimizer({"type": kind, **options})
    for g in grads[:2]:
        first.step(resumed, g)
    buffer = io.BytesIO()
    np.savez(buffer, **first.state_dict())  # through a real file format, as a checkpoint does
    buffer.seek(0)
    second = make_optimizer({"type": kind, **options})
    with np.load(buffer, allow_pickle=False) as saved:
        second.load_state_dict(dict(saved))
    for g in grads[2:]:
        second.step(resumed, g)
    assert second.iterations == 5
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_dict_contents_and_mismatch():
    assert set(Adam().state_dict()) == {"iterations"}
    params, grads = problem()
    adam = Adam()
    adam.step(params, grads[0])
    state = adam.state_dict()
    assert set(state) == {"iterations", "m.0", "m.1", "m.2", "v.0", "v.1", "v.2"}
    assert state["iterations"] == 1 and state["m.0"].dtype == np.float32
    with pytest.raises(DataError, match="does not fit SGD"):
        SGD(momentum=0.9).load_state_dict(state)
    with pytest.raises(DataError, match="missing"):
        Adam().load_state_dict({k: v for k, v in state.items() if k != "v.2"})
    other = Adam()
    other.load_state_dict(state)
    with pytest.raises(DataError, match="shapes"):
        other.step(params[:2], grads[0][:2])
    # A state saved before the first step loads and builds its slots lazily.
    fresh = Adam()
    fresh.load_state_dict(Adam().state_dict())
    fresh.step(params, grads[0])


def test_step_checks_shapes_and_dtypes():
    with pytest.raises(ValueError, match="same shape"):
        SGD().step([np.zeros(3, np.float32)], [np.zeros(2, np.float32)])
    with pytest.raises(ValueError, match="float32"):
        SGD().step([np.zeros(3)], [np.zeros(3)])
    with pytest.raises(ValueError, match="gradients"):
        SGD().step([np.zeros(3, np.float32)], [])


# ---------------------------------------------------------------- specs


def test_make_optimizer_specs():
    assert isinstance(make_optimizer("adam"), Adam)
    assert isinstance(make_optimizer("RMSprop"), RMSprop)
    sgd = make_optimizer({"type": "SGD", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True})
    assert (sgd.learning_rate, sgd.momentum, sgd.nesterov) == (0.1, 0.9, True)
    adam = make_optimizer({"type": "adam"})
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (1e-3, 0.9, 0.999, 1e-7)
    assert make_optimizer("sgd").learning_rate == 0.01
    assert adam.config() == {
        "type": "adam",
        "learning_rate": 1e-3,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "weight_decay": None,
        "clipnorm": None,
        "clipvalue": None,
        "global_clipnorm": None,
    }


@pytest.mark.parametrize(
    ("spec", "where", "match"),
    [
        ("adm", "train.optimizer", "did you mean 'adam'"),
        ({"type": "nadam"}, "train.optimizer.type", "choose one of adam, adamw, rmsprop, sgd"),
        ({"learning_rate": 0.1}, "train.optimizer", "missing 'type'"),
        (3, "train.optimizer", "got 3"),
        ({"type": "adam", "beta1": 0.9}, "train.optimizer.beta1", "did you mean 'beta_1'"),
        ({"type": "sgd", "rho": 0.9}, "train.optimizer.rho", "unknown option 'rho' for sgd"),
        ({"type": "adam", "learning_rate": -1}, "train.optimizer.learning_rate", "> 0, got -1"),
        ({"type": "adam", "learning_rate": "fast"}, "train.optimizer.learning_rate", "number"),
        ({"type": "adam", "beta_1": 1.0}, "train.optimizer.beta_1", r"\[0, 1\), got 1.0"),
        ({"type": "adam", "epsilon": 0}, "train.optimizer.epsilon", "> 0"),
        ({"type": "sgd", "momentum": 1.5}, "train.optimizer.momentum", r"\[0, 1\)"),
        ({"type": "sgd", "nesterov": "yes"}, "train.optimizer.nesterov", "true or false"),
        ({"type": "rmsprop", "centered": 1}, "train.optimizer.centered", "true or false"),
        ({"type": "rmsprop", "rho": True}, "train.optimizer.rho", "number"),
    ],
)
def test_bad_optimizer_specs(spec, where, match):
    with pytest.raises(ConfigError, match=match) as info:
        make_optimizer(spec)
    assert info.value.where == where
    assert str(info.value).startswith(where + ": ")


# ---------------------------------------------------------------- schedules


def test_schedules_hand_computed():
    assert [make_schedule(None, 0.1, 5)(e) for e in (0, 4)] == [0.1, 0.1]
    step = make_schedule({"type": "step", "step_size": 2, "gamma": 0.5}, 0.1, 10)
    assert [step(e) for e in range(5)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    default_step = make_schedule("step", 1.0, 30)
    assert [default_step(e) for e in (9, 10, 20)] == pytest.approx([1.0, 0.1, 0.01])
    exponential = make_schedule({"type": "exponential"}, 1.0, 5)
    assert [exponential(e) for e in range(3)] == pytest.approx([1.0, 0.96, 0.9216])
    cosine = make_schedule({"type": "cosine"}, 1.0, 4)
    # 0.5 * (1 + cos(pi * e / 4)) for e = 0..4, then held at the end.
    expected = [1.0, 0.8535533905932737, 0.5, 0.14644660940672627, 0.0, 0.0]
    assert [cosine(e) for e in range(6)] == pytest.approx(expected, abs=1e-15)
    floor = make_schedule({"type": "cosine", "alpha": 0.1}, 2.0, 2)
    assert [floor(e) for e in range(3)] == pytest.approx([2.0, 2 * (0.1 + 0.9 * 0.5), 0.2])


@pytest.mark.parametrize(
    ("spec", "where", "match"),
    [
        ("cosin", "train.lr_schedule", "did you mean 'cosine'"),
        ({"type": "step", "step_size": 0}, "train.lr_schedule.step_size", "integer >= 1"),
        ({"type": "step", "step_size": 2.5}, "train.lr_schedule.step_size", "integer >= 1"),
        ({"type": "step", "gamma": 0}, "train.lr_schedule.gamma", "> 0"),
        ({"type": "exponential", "decay": 0.9}, "train.lr_schedule.decay", "'decay_rate'"),
        ({"type": "cosine", "alpha": 2}, "train.lr_schedule.alpha", r"\[0, 1\]"),
        ({"type": "constant", "gamma": 0.1}, "train.lr_schedule.gamma", "allowed: none"),
    ],
)
def test_bad_schedules(spec, where, match):
    with pytest.raises(ConfigError, match=match) as info:
        make_schedule(spec, 0.1, 10)
    assert info.value.where == where


def test_schedule_needs_epochs():
    with pytest.raises(ConfigError, match="train.epochs"):
        make_schedule("cosine", 0.1, 0)


# ---------------------------------------------------------------- weight decay and clipping


def test_weight_decay_comes_before_the_update_with_the_steps_rate():
    # p = 1, g = 0.5, lr 0.1, weight_decay 0.2: decay first, p = 1 - 1 * 0.2 * 0.1 = 0.98,
    # then p -= 0.1 * 0.5: 0.93 (decaying after the update would give 0.95 * 0.98 = 0.931).
    p = np.ones(1, np.float32)
    SGD(0.1, weight_decay=0.2).step([p], [np.full(1, 0.5, np.float32)])
    assert p[0] == pytest.approx(0.93, abs=1e-7)
    # The rate is the step's (a schedule's), not the constructor's: 1 - 1 * 0.5 * 0.2 = 0.9.
    p = np.ones(1, np.float32)
    SGD(0.1, weight_decay=0.5).step([p], [np.zeros(1, np.float32)], learning_rate=0.2)
    assert p[0] == pytest.approx(0.9, abs=1e-7)


def test_adamw_one_step_by_hand():
    # Keras 3's AdamW defaults: weight_decay 0.004. p = 1, g = 2, lr 0.01: decay to
    # 1 - 0.004 * 0.01 = 0.99996, then Adam's first step: m = 0.2, v = 0.004,
    # alpha = 0.01 sqrt(0.001) / 0.1, step = alpha * 0.2 / (sqrt(0.004) + 1e-7).
    opt = AdamW(0.01)
    assert opt.config()["weight_decay"] == 0.004
    p = np.ones(1, np.float32)
    opt.step([p], [np.full(1, 2.0, np.float32)])
    alpha = 0.01 * math.sqrt(0.001) / 0.1
    expected = 0.99996 - alpha * 0.2 / (math.sqrt(0.004) + 1e-7)
    assert p[0] == pytest.approx(expected, abs=1e-7)


def test_clipping_by_hand():
    def step(**clip):
        params = [np.zeros(2, np.float32), np.zeros(2, np.float32)]
        grads = [np.array([3.0, 4.0], np.float32), np.array([0.3, 0.4], np.float32)]
        SGD(1.0, **clip).step(params, grads)
        return [(-p).tolist() for p in params]

    # clipnorm 1: [3, 4] (norm 5) becomes [0.6, 0.8]; [0.3, 0.4] (norm 0.5) stays.
    assert step(clipnorm=1.0) == [pytest.approx([0.6, 0.8]), pytest.approx([0.3, 0.4])]
    # global_clipnorm 1: both scaled by 1 / sqrt(25 + 0.25).
    scale = 1 / math.sqrt(25.25)
    assert step(global_clipnorm=1.0) == [
        pytest.approx([3 * scale, 4 * scale]),
        pytest.approx([0.3 * scale, 0.4 * scale]),
    ]
    # clipvalue 0.35: every element to [-0.35, 0.35].
    assert step(clipvalue=0.35) == [pytest.approx([0.35, 0.35]), pytest.approx([0.3, 0.35])]
    # A global norm below the threshold changes nothing.
    assert step(global_clipnorm=10.0) == [pytest.approx([3, 4]), pytest.approx([0.3, 0.4])]


def test_a_non_finite_global_norm_fails_loudly_as_in_keras():
    p = np.zeros(2, np.float32)
    with np.errstate(invalid="ignore"):
        SGD(1.0, global_clipnorm=1.0).step([p], [np.array([np.inf, 1.0], np.float32)])
    assert np.isnan(p).all()


@pytest.mark.parametrize(
    ("spec", "where", "match"),
    [
        ({"type": "sgd", "clipnorm": 1, "clipvalue": 1}, "train.optimizer.clipvalue", "only one"),
        ({"type": "adamw", "weight_decay": None}, "train.optimizer.weight_decay", "0.004"),
        ({"type": "adam", "weight_decay": -1}, "train.optimizer.weight_decay", ">= 0"),
        ({"type": "rmsprop", "global_clipnorm": 0}, "train.optimizer.global_clipnorm", "> 0"),
        ({"type": "sgd", "clip_norm": 1}, "train.optimizer.clip_norm", "did you mean 'clipnorm'"),
    ],
)
def test_bad_clipping_and_decay_options(spec, where, match):
    with pytest.raises(ConfigError, match=match) as err:
        make_optimizer(spec)
    assert err.value.where == where


def test_resolved_config_lists_every_option():
    assert make_optimizer("AdamW").config() == {
        "type": "adamw",
        "learning_rate": 0.001,
        "weight_decay": 0.004,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "clipnorm": None,
        "clipvalue": None,
        "global_clipnorm": None,
    }
    config = make_optimizer({"type": "sgd", "clipnorm": 2}).config()
    assert config["clipnorm"] == 2.0 and config["weight_decay"] is None
    assert make_optimizer(config).config() == config  # the record parses to itself
