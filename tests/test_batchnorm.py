"""BatchNormalization's numba kernels (nbcnn/kernels/batchnorm.py) against tests/naive.py.

Rows are summed in blocks (BLOCK_ROWS) whose partial sums are added afterwards; the tests
shrink the block so that small arrays still span several blocks, and shift the data far from 0
(|mean| >> std) where a plain sum-of-squares variance would cancel away.
"""

from __future__ import annotations

import naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbcnn.kernels import batchnorm
from nbcnn.layers.normalization import BatchNormalization


@st.composite
def cases(draw):
    """x of rank 2 or 4 (channels last), values with an offset up to 1e4, gamma, dy."""
    shape = draw(
        st.one_of(
            st.tuples(st.integers(1, 9), st.integers(1, 5)),
            st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
        )
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offset = draw(st.sampled_from([0.0, 3.0, 1e4]))
    x = (rng.normal(size=shape) + offset).astype(np.float32)
    gamma = rng.normal(size=shape[-1]).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    return x, gamma, dy, draw(st.sampled_from([1, 2, 3, 2048]))


@settings(max_examples=60, deadline=None)
@given(cases())
def test_batchnorm_kernels_match_naive(case):
    x, gamma, dy, block_rows = case
    eps = 1e-3
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batchnorm, "BLOCK_ROWS", block_rows)
        layer = BatchNormalization()
        layer.build(x.shape[1:], np.random.default_rng(0))
        layer.params["gamma"][:] = gamma
        y = layer.forward(x, training=True)
        dx = layer.backward(dy)
    mean, var = naive.batch_statistics(x)
    rows = x.size // x.shape[-1]
    np.testing.assert_allclose(layer.params["moving_mean"], 0.01 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.params["moving_variance"], 0.99 + 0.01 * var, rtol=1e-5)
    # float32 x - mean carries the rounding of the float32 mean (half an ulp of |x|), which
    # normalisation magnifies by 1/std: the tolerance for |mean| >> std.
    xhat_err = 4 * 2.0**-24 * float(np.abs(x).max()) / np.sqrt(var.min() + eps)
    g = max(1.0, float(np.abs(gamma).max()))
    want_y = naive.batchnorm_forward(x, gamma, np.zeros_like(gamma), mean, var, eps)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4 + g * xhat_err)
    want_dx, want_dgamma, want_dbeta = naive.batchnorm_backward(dy, x, gamma, eps)
    dy_max = float(np.abs(dy).max())
    np.testing.assert_allclose(layer.grads["beta"], want_dbeta, rtol=1e-4, atol=1e-4)
    atol_gamma = 1e-4 * np.sqrt(rows) + rows * dy_max * xhat_err
    np.testing.assert_allclose(layer.grads["gamma"], want_dgamma, rtol=1e-4, atol=atol_gamma)
    atol_dx = 1e-4 + g * dy_max * 3 * xhat_err / np.sqrt(var.min() + eps)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-3, atol=max(1e-4, atol_dx))


def test_batchnorm_statistics_survive_a_large_offset():
    """Shifted sums: variance 1 around a mean of 1e4, where E[x^2] - E[x]^2 in float32 (or
    even a naive float64 sum of squares of float32 data) would be mostly rounding."""
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(100_000, 2)) + 1e4).astype(np.float32)
    mean, var = batchnorm.batch_statistics(x)
    want = x.astype(np.float64)
    np.testing.assert_allclose(mean, want.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(var, want.var(axis=0), rtol=1e-9)
