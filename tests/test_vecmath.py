"""The vector activations of the tiles' epilogue (nbcnn/kernels/vecmath.py) against NumPy in
float64: a 1x1 convolution of one channel with weights of 1 and no bias hands each input value
to the epilogue unchanged, so the engine's output is the activation."""

from __future__ import annotations

import numpy as np
import pytest

from nbcnn.kernels import engine, microkernel

# Every float32 this test feeds: a dense sweep, the small and large ends, both signs.
_SWEEP = np.concatenate(
    [
        np.linspace(-30, 30, 6001),
        np.geomspace(1e-8, 100, 400),
        -np.geomspace(1e-8, 100, 400),
        [0.0, -0.0, 0.624, 0.626, -0.249, -0.251, 87.0, -87.0, 1e30, -1e30, np.inf, -np.inf],
    ]
).astype(np.float32)


def sigmoid(x):
    with np.errstate(over="ignore"):  # exp(-x) = inf for very negative x: sigmoid 0
        return 1 / (1 + np.exp(-x))


def elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


REFERENCES = {"sigmoid": sigmoid, "tanh": np.tanh, "elu": elu}


def through_epilogue(values, activation, filters=16):
    """values (n,) float32 -> the engine's act(values), as (n,) float32: one input channel,
    ``filters`` weights of 1, so every lane of a pixel's row holds its value (no 0 * inf)."""
    x = values.reshape(1, 1, -1, 1)
    w = np.ones((1, 1, 1, filters), np.float32)
    y = engine.conv_forward(
        x, w, None, (1, 1), (1, 1), ((0, 0), (0, 0)), x.shape[1:3],
        microkernel.ACTIVATIONS[activation],
    )  # fmt: skip
    y = y.reshape(-1, filters)
    assert np.array_equal(y, np.repeat(y[:, :1], filters, axis=1), equal_nan=True)
    return y[:, 0]


def ulps(got, want):
    """|got - want| in units of the float32 spacing at want (float64 want)."""
    finite = np.isfinite(want)
    spacing = np.spacing(np.abs(np.where(finite, want, 1)).astype(np.float32)).astype(np.float64)
    error = np.abs(got.astype(np.float64) - np.where(finite, want, 0)) / spacing
    return np.where(got == want, 0.0, np.where(finite, error, np.inf))


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "elu"])
@pytest.mark.parametrize("filters", [16, 8, 6])  # 16- and 8-wide vectors, masked lanes
def test_vector_activation_is_within_a_few_ulps(activation, filters):
    got = through_epilogue(_SWEEP, activation, filters)
    want = REFERENCES[activation](_SWEEP.astype(np.float64))
    error = ulps(got, want)
    # Measured: sigmoid 2.1 ulp at worst, tanh 1.4, ELU 2.1 (median 0.3 or less).
    # Below float32's normal range the spacing is meaningless: compare absolutely there.
    tiny = np.abs(want) < 1e-37
    assert np.all(np.abs(got[tiny] - want[tiny]) < 1e-37)
    worst = error[~tiny].max()
    assert worst <= 4, (
        f"{activation}: {worst:.1f} ulp at x = {_SWEEP[~tiny][error[~tiny].argmax()]}"
    )


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "elu", "relu", "relu6", "linear"])
def test_nan_stays_nan(activation):
    got = through_epilogue(np.array([np.nan, 1.0], np.float32), activation)
    if activation in ("relu", "relu6"):  # max(v, 0) with NaN -> 0, as the gradients test it
        assert got[0] == 0
    else:
        assert np.isnan(got[0])
    assert np.isfinite(got[1])
