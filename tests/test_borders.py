"""The implicit GEMM that skips the padding's multiply-adds (nbcnn/kernels/borders.py) against
the naive loops and the direct engine, on paddings of every size: less than the kernel's
reach, all of it ('full', the input gradient's), and more (output pixels no tap reaches)."""

from __future__ import annotations

import naive
import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import assert_close

from nbcnn.kernels import borders, engine, microkernel
from nbcnn.layers import activations


@st.composite
def padded_axis(draw):
    """(in, kernel, stride, dilation, (before, after), out) with any padding up to 5 a side."""
    kernel, stride, dilation = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(
        st.integers(1, 2)
    )  # fmt: skip
    extent = (kernel - 1) * dilation + 1
    before, after = draw(st.integers(0, 5)), draw(st.integers(0, 5))
    length = draw(st.integers(max(1, extent - before - after), 9))
    out = (length + before + after - extent) // stride + 1
    return length, kernel, stride, dilation, (before, after), out


@st.composite
def cases(draw):
    """(x, w, b, strides, dilation, padding, out_hw, activation), filters around the tiles'
    widths, channels 1..17, batch 1..9 (sample groups of MR and a remainder)."""
    rows, cols = draw(padded_axis()), draw(padded_axis())
    n, c = draw(st.integers(1, 9)), draw(st.sampled_from([1, 2, 3, 8, 17]))
    f = draw(st.sampled_from([1, 6, 8, 16, 17, 33, 64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.uniform(-2, 2, (n, rows[0], cols[0], c)).astype(np.float32)
    w = rng.uniform(-2, 2, (rows[1], cols[1], c, f)).astype(np.float32)
    b = rng.uniform(-2, 2, f).astype(np.float32)
    geometry = tuple(zip(rows, cols, strict=True))
    _, _, strides, dilation, padding, out_hw = geometry
    activation = draw(st.sampled_from(["linear", "relu", "relu6"]))
    return x, w, b, strides, dilation, padding, out_hw, activation


@settings(max_examples=60, deadline=None)
@given(case=cases())
def test_borders_match_naive_and_the_direct_engine(case):
    """Against the float64 loops, and bit for bit against the direct implicit GEMM over the
    zero-padded copy: the skipped terms are exact zeros, the others summed in the same order."""
    x, w, b, strides, dilation, padding, out_hw, activation = case
    act = microkernel.ACTIVATIONS[activation]
    got = borders.conv_forward(x, w, b, strides, dilation, padding, out_hw, act)
    got = got.reshape(x.shape[0], *out_hw, w.shape[3])
    want = naive.conv2d_forward(x, w, b, strides, dilation, padding)
    assert_close(got, activations.forward(activation, want), "borders forward")
    rows = microkernel.choose_tile(w.shape[3]).mr
    xp, pixels, taps = engine._addressing(x, w.shape, strides, dilation, padding, out_hw, rows)
    w2d = w.reshape(-1, w.shape[3])
    direct = engine._gathered_product(xp, pixels, taps, w2d, got.size // w.shape[3], b, act)
    np.testing.assert_array_equal(got.reshape(direct.shape), direct)


def test_useful_fraction_of_lenets_input_gradient():
    """LeNet-5's second layer (14x14x6 -> 10x10x16, 5x5 'valid'): its input gradient is a 5x5
    convolution of the 10x10 gradient padded by 4 a side to 14x14 outputs. Along one axis,
    outputs 0..3 and 10..13 see 1, 2, 3, 4 taps each, outputs 4..9 all 5: 50 of 70; both
    axes: (50 / 70)^2 = 0.510."""
    fraction = borders.useful_fraction((10, 10), (5, 5), (1, 1), (1, 1), ((4, 4), (4, 4)), (14, 14))
    assert fraction == pytest.approx((50 / 70) ** 2)
    assert borders.useful_fraction((8, 8), (3, 3), (1, 1), (1, 1), ((0, 0), (0, 0)), (6, 6)) == 1


def test_classes_of_a_same_convolution():
    """A 3x3 'same' convolution of a 5x5 map: rows 0 (taps 1, 2), 1..3 (all) and 4 (0, 1),
    the same for columns: 9 classes, 25 pixels a sample, each seen exactly once."""
    same = ((1, 1), (1, 1))
    tables = borders._build_tables(2, (5, 5), (3, 3), 1, (1, 1), (1, 1), same, (5, 5), 8)
    _, out_rows, _, _, _, k_len, _, tile_first, tile_count = tables
    assert len(k_len) == 9
    assert sorted(k_len) == [4, 4, 4, 4, 6, 6, 6, 6, 9]
    seen = [out_rows[f + r] for f, c in zip(tile_first, np.abs(tile_count)) for r in range(c)]
    assert sorted(seen) == list(range(50))


def test_the_rule(monkeypatch):
    """Padding and enough columns (or two threads) take this path; no padding never does."""
    none, one = ((0, 0), (0, 0)), ((1, 1), (1, 1))
    assert not borders.chosen((3, 3, 32, 64), none)
    assert borders.chosen((3, 3, 32, 64), one)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert not borders.chosen((3, 3, 1, 32), one)  # 9 columns, one thread: direct
        assert borders.chosen((3, 3, 4, 32), one)  # 36 columns
        if threads > 1:
            numba.set_num_threads(2)
            assert borders.chosen((3, 3, 1, 32), one)
    finally:
        numba.set_num_threads(threads)


def test_strided_views_are_refused_by_the_tile():
    """A reshaped view of a sliced array keeps its strides (numba types it layout 'A'); the
    tile reads flat memory, so it must refuse one at compile time, not read it wrongly (a
    dz sliced to its filters once lost every sample but the first)."""
    wide = np.zeros((2, 1, 1, 8), np.float32)
    view = wide[..., :1].reshape(-1)
    assert not view.flags.c_contiguous
    with pytest.raises(numba.core.errors.TypingError, match="C-contiguous"):
        engine._gathered_product(
            view, np.zeros(8, np.int64), np.zeros(1, np.int64), np.ones((1, 1), np.float32), 2
        )  # fmt: skip


@pytest.mark.parametrize("filters", [1, 6, 16, 20])
def test_backward_with_few_filters_matches_naive(filters):
    """dz is written NR lanes wide for the weight gradient (engine.gradient_lanes) and cut
    back to the filters for the input gradient: both against the loops, batch > 1."""
    from nbcnn.kernels import conv

    rng = np.random.default_rng(filters)
    x = rng.uniform(-2, 2, (3, 7, 6, 4)).astype(np.float32)
    w = rng.uniform(-2, 2, (3, 2, 4, filters)).astype(np.float32)
    geometry = ((1, 1), (1, 1), ((1, 1), (0, 1)))
    dy = rng.uniform(-2, 2, (3, 7, 6, filters)).astype(np.float32)
    dx, dw, db = conv.conv2d_backward(dy, x, w, *geometry)
    want_dx, want_dw, want_db = naive.conv2d_backward(dy, x, w, *geometry)
    assert_close(dx, want_dx, "dx")
    assert_close(dw, want_dw, "dw")
    assert_close(db, want_db, "db")
    assert engine.gradient_lanes(filters) >= filters
