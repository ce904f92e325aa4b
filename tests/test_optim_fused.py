"""The fused optimizer kernels (nbcnn/kernels/optim.py) against nbcnn.optim's NumPy code: the
same bits, for every optimizer and option, on arrays small enough for the serial loop and
large enough for the parallel one. test_optim.py checks the NumPy code against Keras's
formulas; this file carries that check over to the kernels exactly."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

from nbcnn import optim
from nbcnn.kernels import optim as kernels

CLIPPING = [{}, {"clipnorm": 0.5}, {"clipvalue": 0.05}, {"global_clipnorm": 1.0}]
DECAY = [{}, {"weight_decay": 0.1}]
UPDATES = [
    ("sgd", {"momentum": 0.0}),
    ("sgd", {"momentum": 0.0, "nesterov": True}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.7, "nesterov": True}),
    ("adam", {}),
    ("adam", {"beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-3}),
    ("adamw", {}),
    ("rmsprop", {}),
    ("rmsprop", {"momentum": 0.9}),
    ("rmsprop", {"centered": True}),
    ("rmsprop", {"centered": True, "momentum": 0.5, "rho": 0.8}),
]
CASES = [
    (kind, {**options, **decay, **clip})
    for (kind, options), decay, clip in itertools.product(UPDATES, DECAY, CLIPPING)
]


def shapes(rng) -> list[tuple[int, ...]]:
    """One element, random odd sizes, and one array past SERIAL_BELOW (the parallel loop,
    with a last block shorter than the others)."""
    odd = [tuple(int(d) for d in 2 * rng.integers(1, 12, size=rng.integers(1, 4)) + 1)]
    big = (kernels.SERIAL_BELOW // 127 + 2, 127)
    assert big[0] * big[1] % kernels.BLOCK != 0
    return [(1,), (int(2 * rng.integers(1, 50) + 1),), *odd, (3, 3, 1, 5), big]


def gradients(rng, shape) -> np.ndarray:
    """Normal values over several magnitudes, with exact zeros."""
    g = rng.normal(size=shape) * 10.0 ** rng.integers(-4, 2, size=shape)
    g[rng.random(shape) < 0.05] = 0.0
    return g.astype(np.float32)


def train(kind, options, fused, monkeypatch, seed, steps=4):
    """Parameters and optimizer state after ``steps`` steps, each at its own learning rate."""
    rng = np.random.default_rng(seed)
    sizes = shapes(rng)
    params = [rng.normal(size=s).astype(np.float32) for s in sizes]
    opt = optim.make_optimizer({"type": kind, **options})
    with monkeypatch.context() as patch:
        patch.setattr(optim, "FUSED", fused)
        if fused:  # the kernels must run, not the NumPy code behind them
            patch.setattr(type(opt), "_update", numpy_update_forbidden)
        for lr in rng.uniform(1e-3, 0.1, size=steps):
            opt.step(params, [gradients(rng, s) for s in sizes], float(lr))
    return params, opt.state_dict()


def numpy_update_forbidden(*args):
    raise AssertionError("the NumPy update ran instead of the fused one")


@pytest.mark.parametrize(("kind", "options"), CASES)
def test_fused_update_equals_numpy_bit_for_bit(kind, options, monkeypatch):
    seed = CASES.index((kind, options))
    params, state = train(kind, options, True, monkeypatch, seed)
    expected_params, expected_state = train(kind, options, False, monkeypatch, seed)
    for p, e in zip(params, expected_params, strict=True):
        np.testing.assert_array_equal(p, e)
    assert state.keys() == expected_state.keys()
    for name, value in expected_state.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)


def test_arrays_that_are_not_c_contiguous_take_the_numpy_path(monkeypatch):
    """A Fortran-ordered parameter (its slots follow its layout) and a transposed gradient."""
    rng = np.random.default_rng(7)
    p = np.asfortranarray(rng.normal(size=(5, 3)).astype(np.float32))
    grads = [np.ascontiguousarray(gradients(rng, (3, 5))).T for _ in range(3)]
    results = []
    for fused in (True, False):
        monkeypatch.setattr(optim, "FUSED", fused)
        q = p.copy(order="F")
        opt = optim.Adam(0.01)
        for g in grads:
            opt.step([q], [g])
        results.append(q)
    np.testing.assert_array_equal(*results)


def test_kernels_refuse_arrays_they_cannot_update_in_place():
    p = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="m must be a C-contiguous float32 array of 12"):
        kernels.adam_update(p, p.copy(), p.T, p.copy(), 1e-3, 0.9, 0.999, 1e-7, 0.0)
    with pytest.raises(ValueError, match="g must be"):
        kernels.sgd_update(p, np.zeros(12), None, 0.1, 0.0, False, 0.0)


def test_importing_optim_does_not_import_numba():
    code = "import nbcnn.optim, sys; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_optimizer_without_a_fused_update_runs_its_numpy_update():
    """A user's subclass that defines only ``_update`` (the documented contract) still steps."""

    class Halve(optim.Optimizer):
        def _slot_names(self):
            return ()

        def _update(self, i, p, g, lr, t1, t2):
            p -= g * np.float32(0.5)

    p = np.ones(5, np.float32)
    Halve(learning_rate=0.1).step([p], [np.ones(5, np.float32)])
    np.testing.assert_array_equal(p, np.full(5, 0.5, np.float32))
