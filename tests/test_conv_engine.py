"""The convolution engine (nbcnn/kernels/engine.py, microkernel.py) against the naive loops:
forward (with the max-pooling epilogue too), weight gradient and input gradient.

Geometries are built by construction (test_kernels.geometries) with filter and channel counts
around the tile sizes, so full tiles, remainders of MR (pixels) and NR (filters), C = 1 and
N = 1 all occur; bias and ReLU are fused in the tile's epilogue. Every tile variant runs on
this machine: the AVX-512, AVX2 and portable tiles are compiled in subprocesses with numba's
target CPU forced (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import RTOL, assert_close, geometries

from nbcnn.kernels import conv, engine, fused, microkernel, winograd
from nbcnn.kernels import pool as pool_kernels
from nbcnn.layers import activations

TESTS = Path(__file__).resolve().parent


def engine_forward(x, w, b, g, activation):
    act = microkernel.ACTIVATIONS[activation]
    y2d = engine.conv_forward(x, w, b, g.strides, g.dilation, g.padding, g.out_hw, act)
    return y2d.reshape(x.shape[0], *g.out_hw, w.shape[3])


@st.composite
def engine_cases(draw):
    """(geometry, x, w, b, activation): filters 1..70 (past one and several NR blocks of
    every tile), channels 1..40, batch 1..3."""
    g = draw(geometries(dilated=True))
    n, c = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 3, 8, 17, 40]))
    f = draw(st.sampled_from([1, 3, 8, 15, 16, 17, 31, 32, 33, 64, 70]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.uniform(-2, 2, (n, *g.in_hw, c)).astype(np.float32)
    w = rng.uniform(-2, 2, (*g.kernel, c, f)).astype(np.float32)
    b = rng.uniform(-2, 2, f).astype(np.float32)
    return g, x, w, b, draw(st.sampled_from(["linear", "relu", "relu6"]))


@settings(max_examples=40, deadline=None)
@given(case=engine_cases())
def test_engine_forward_matches_naive(case):
    """Every activation of the tile's epilogue (a run-time argument of one compiled tile)."""
    g, x, w, b, activation = case
    want = naive.conv2d_forward(x, w, b, g.strides, g.dilation, g.padding)
    want = activations.forward(activation, want)
    assert_close(engine_forward(x, w, b, g, activation), want, "engine forward")


@settings(max_examples=30, deadline=None)
@given(case=engine_cases())
def test_engine_backward_matches_naive(case):
    """The weight gradient (per-thread partials over pixel chunks, accumulated in the tile's
    epilogue) and the input gradient (the transposed convolution; strided ones phase by
    phase, stride > kernel included)."""
    g, x, w, _, _ = case
    rng = np.random.default_rng(0)
    dz = rng.uniform(-2, 2, (x.shape[0], *g.out_hw, w.shape[3])).astype(np.float32)
    want_dx, want_dw, _ = naive.conv2d_backward(dz, x, w, g.strides, g.dilation, g.padding)
    dw = engine.conv_weight_grad(dz, x, w.shape, g.strides, g.dilation, g.padding)
    assert_close(dw, want_dw, "engine dw")
    dx = engine.conv_input_grad(dz, w, x.shape, g.dilation, g.padding, g.strides)
    assert_close(dx, want_dx, "engine dx")


@settings(max_examples=30, deadline=None)
@given(case=engine_cases(), pool=st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_engine_pooling_epilogue_matches_naive(case, pool):
    """Conv + bias + ReLU + non-overlapping max pooling with the pooling in the tile's
    epilogue: the maxima against the naive chain, and each window's code is the first cell
    holding the maximum of the engine's own (unpooled) output, the layers' tie rule."""
    g, x, w, b, _ = case
    pooled_hw = (g.out_hw[0] // pool[0], g.out_hw[1] // pool[1])
    if min(pooled_hw) < 1:
        pool, pooled_hw = (1, 1), g.out_hw
    done = engine.conv_relu_maxpool(x, w, b, g.strides, g.dilation, g.padding, pool, pooled_hw)
    if done is None:  # no tile holds a whole window (3x3 pools): the fused path pools apart
        assert microkernel.choose_pool_tile(w.shape[3], pool[0] * pool[1]) is None
        done = fused.conv_relu_maxpool_forward(x, w, b, g.strides, g.dilation, g.padding, pool)
    got, code = done
    conv_out = np.maximum(naive.conv2d_forward(x, w, b, g.strides, g.dilation, g.padding), 0)
    want, _ = naive.max_pool2d_forward(conv_out, pool, pool, ((0, 0), (0, 0)))
    assert_close(got, want, "engine pooled")
    y = engine_forward(x, w, b, g, "relu")
    (ph, pw), (oh, ow) = pool, pooled_hw
    windows = y[:, : oh * ph, : ow * pw].reshape(x.shape[0], oh, ph, ow, pw, -1)
    windows = windows.transpose(0, 1, 3, 2, 4, 5).reshape(x.shape[0], oh, ow, ph * pw, -1)
    np.testing.assert_array_equal(got, windows.max(axis=3))
    np.testing.assert_array_equal(code, windows.argmax(axis=3))


@settings(max_examples=30, deadline=None)
@given(case=engine_cases(), pool=st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_engine_average_pooling_epilogue_matches_naive(case, pool):
    """Conv + bias + activation averaged over non-overlapping windows in the tile's
    epilogue: against the naive chain, and bit for bit the engine's own convolution then the
    average pooling kernel (the same sums in the same order)."""
    g, x, w, b, activation = case
    pooled_hw = (g.out_hw[0] // pool[0], g.out_hw[1] // pool[1])
    if min(pooled_hw) < 1:
        pool, pooled_hw = (1, 1), g.out_hw
    act = microkernel.ACTIVATIONS[activation]
    got = engine.conv_avgpool(x, w, b, g.strides, g.dilation, g.padding, pool, pooled_hw, act)
    if got is None:  # no tile holds a whole window (3x3 windows of AVX-512's 8-row tiles)
        assert microkernel.choose_pool_tile(w.shape[3], pool[0] * pool[1]) is None
        return
    conv_out = activations.forward(
        activation, naive.conv2d_forward(x, w, b, g.strides, g.dilation, g.padding)
    )
    (ph, pw), (oh, ow) = pool, pooled_hw
    windows = conv_out[:, : oh * ph, : ow * pw].reshape(x.shape[0], oh, ph, ow, pw, -1)
    assert_close(got, windows.mean(axis=(2, 4)), "engine averaged")
    y = engine_forward(x, w, b, g, activation)
    if not winograd.chosen(x.shape, w.shape, g.strides, g.dilation, g.out_hw):
        want = pool_kernels.avg_pool2d_forward(y, pool, pool, ((0, 0), (0, 0)))
        np.testing.assert_array_equal(got, want)


@settings(max_examples=25, deadline=None)
@given(case=engine_cases(), pool=st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_engine_pooled_weight_gradient_matches_naive(case, pool):
    """A first layer's dw and db from the pooled gradient (no dx) on the engine: against the
    naive convolution backward of the gradient unpooled by hand."""
    g, x, w, b, _ = case
    pooled_hw = (g.out_hw[0] // pool[0], g.out_hw[1] // pool[1])
    if min(pooled_hw) < 1:
        pool, pooled_hw = (1, 1), g.out_hw
    pooled, code = fused.conv_relu_maxpool_forward(x, w, b, g.strides, g.dilation, g.padding, pool)
    rng = np.random.default_rng(0)
    dpooled = rng.uniform(-2, 2, pooled.shape).astype(np.float32)
    _, dw, db = fused.conv_relu_maxpool_backward(
        dpooled, x, w, pooled, code, g.strides, g.dilation, g.padding, pool, need_dx=False
    )
    dz = np.zeros((x.shape[0], *g.out_hw, w.shape[3]))
    for n, i, j, f in np.ndindex(*pooled.shape):
        if pooled[n, i, j, f] > 0:
            u, v = divmod(int(code[n, i, j, f]), pool[1])
            dz[n, i * pool[0] + u, j * pool[1] + v, f] = dpooled[n, i, j, f]
    _, want_dw, want_db = naive.conv2d_backward(
        dz, x, w, g.strides, g.dilation, g.padding, need_dx=False
    )
    assert_close(dw, want_dw, "engine pooled dw")
    assert_close(db, want_db, "engine pooled db")


def test_a_layer_of_the_seed_model_agrees_with_blas(monkeypatch):
    """Many full tiles and several pixel blocks per thread (conv2 of the seed convnet at
    batch 4: 784 pixels), forward and backward, against the im2col + BLAS backend."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 14, 14, 32)).astype(np.float32)
    w = rng.standard_normal((3, 3, 32, 64)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    dy = rng.standard_normal((4, 14, 14, 64)).astype(np.float32)
    args = ((1, 1), (1, 1), ((1, 1), (1, 1)))

    def run():
        y = conv.conv2d_forward(x, w, b, *args, relu=True)
        return (y, *conv.conv2d_backward(dy, x, w, *args, relu_output=y))

    got = run()
    monkeypatch.setenv("NBCNN_CONV", "blas")
    for g, want in zip(got, run(), strict=True):
        np.testing.assert_allclose(g, want, rtol=RTOL, atol=RTOL * np.abs(want).max())


def test_the_backend_is_chosen_by_nbcnn_conv(monkeypatch):
    monkeypatch.delenv("NBCNN_CONV", raising=False)
    assert engine.backend() == "engine"
    monkeypatch.setenv("NBCNN_CONV", "BLAS")
    assert engine.backend() == "blas"
    monkeypatch.setenv("NBCNN_CONV", "cudnn")
    with pytest.raises(ValueError, match="NBCNN_CONV must be one of engine, blas"):
        engine.backend()


@pytest.mark.parametrize(
    ("width", "filters", "tile"),
    [
        (16, 64, (6, 64, 16)),  # the study's AVX-512 tile: 24 accumulators in zmm registers
        (16, 32, (8, 32, 16)),
        (16, 10, (8, 16, 16)),
        (16, 6, (8, 8, 8)),  # 6 filters: 8-wide vectors, 6 of 8 lanes used, not 6 of 16
        (8, 64, (6, 16, 8)),
        (8, 16, (6, 16, 8)),  # the study's AVX2 tile: 12 accumulators in ymm registers
        (8, 6, (6, 8, 8)),
        (4, 3, (6, 4, 4)),
    ],
)
def test_tiles_fit_the_vector_registers(width, filters, tile):
    chosen = microkernel.choose_tile(filters, width)
    assert (chosen.mr, chosen.nr, chosen.vl) == tile
    registers = 32 if width == 16 else 16
    assert chosen.mr * chosen.nr // chosen.vl + chosen.nr // chosen.vl + 1 <= registers


@pytest.mark.parametrize(
    ("width", "filters", "cells", "tile"),
    [
        (16, 64, 4, (8, 32)),  # whole 2x2 windows, no column wasted (4x64 measured the same)
        (16, 32, 4, (8, 32)),
        (16, 70, 4, (8, 16)),  # 80 columns for 70 filters, not 96 or 128
        (16, 64, 6, (6, 64)),
        (16, 6, 4, (8, 8)),  # 8-wide vectors in AVX-512's 32 registers
        (8, 64, 4, (4, 16)),
        (4, 3, 2, (6, 4)),
        (16, 64, 9, None),  # a 3x3 window is more rows than a tile has: pooled apart
    ],
)
def test_pooling_tiles_hold_whole_windows(width, filters, cells, tile):
    chosen = microkernel.choose_pool_tile(filters, cells, width)
    assert (chosen and (chosen.mr, chosen.nr)) == tile
    if chosen:
        assert chosen.mr % cells == 0
        registers = 32 if width == 16 else 16
        assert chosen.mr * chosen.nr // width + chosen.nr // width + 1 <= registers


def test_a_tile_configuration_carries_the_generator_version(monkeypatch):
    config = microkernel.Tile(6, 64, 16).config(microkernel.ACCUMULATE)
    assert microkernel.decode(config) == (6, 64, 16, microkernel.ACCUMULATE, 1)
    pooled = microkernel.Tile(8, 32, 16).config(microkernel.RELU_MAXPOOL, 4)
    assert microkernel.decode(pooled) == (8, 32, 16, microkernel.RELU_MAXPOOL, 4)
    with pytest.raises(ValueError, match="cannot pool"):
        microkernel.Tile(6, 64, 16).config(microkernel.RELU_MAXPOOL, 4)
    monkeypatch.setattr(microkernel, "GENERATOR_VERSION", microkernel.GENERATOR_VERSION + 1)
    assert microkernel.Tile(6, 64, 16).config(microkernel.ACCUMULATE) != config  # a new key
    with pytest.raises(ValueError, match="generator version"):
        microkernel.decode(config)


# A script for a subprocess: the engine on a few geometries against the naive loops, with
# numba's cache statistics, under whatever target CPU the environment forces.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    import naive
    from nbcnn.kernels import engine, microkernel
    if {bump}:
        microkernel.GENERATOR_VERSION += 1
    rng = np.random.default_rng(1)
    worst = 0.0
    for n, h, c, f, k, s, pad in [(2, 7, 3, 33, 3, 1, 1), (1, 6, 1, 5, 2, 2, 0),
                                  (3, 5, 17, 70, 3, 1, 1)]:
        x = rng.uniform(-2, 2, (n, h, h, c)).astype(np.float32)
        w = rng.uniform(-2, 2, (k, k, c, f)).astype(np.float32)
        b = rng.uniform(-2, 2, f).astype(np.float32)
        padding = ((pad, pad), (pad, pad))
        linear = naive.conv2d_forward(x, w, b, (s, s), (1, 1), padding)
        want = np.maximum(linear, 0)
        for act, expected in ((microkernel.RELU, want), (microkernel.RELU6, np.clip(linear, 0, 6))):
            got = engine.conv_forward(x, w, b, (s, s), (1, 1), padding, want.shape[1:3], act)
            error = np.abs(got.reshape(want.shape) - expected).max() / max(np.abs(want).max(), 1)
            worst = max(worst, float(error))
        hw = (want.shape[1] // 2, want.shape[2] // 2)
        pooled, _ = engine.conv_relu_maxpool(x, w, b, (s, s), (1, 1), padding, (2, 2), hw)
        windows = want[:, : 2 * hw[0], : 2 * hw[1]].reshape(n, hw[0], 2, hw[1], 2, f)
        error = np.abs(pooled - windows.max(axis=(2, 4))).max() / max(np.abs(want).max(), 1)
        worst = max(worst, float(error))
        averaged = engine.conv_avgpool(
            x, w, b, (s, s), (1, 1), padding, (2, 2), hw, microkernel.RELU
        )
        error = np.abs(averaged - windows.mean(axis=(2, 4))).max() / max(np.abs(want).max(), 1)
        worst = max(worst, float(error))
    if {winograd}:  # its transforms and masked stores at this width
        from nbcnn.kernels import winograd
        x = rng.uniform(-2, 2, (2, 7, 6, 17)).astype(np.float32)
        w = rng.uniform(-2, 2, (3, 3, 17, 70)).astype(np.float32)
        b = rng.uniform(-2, 2, 70).astype(np.float32)
        same = ((1, 1), (1, 1))
        want = np.maximum(naive.conv2d_forward(x, w, b, (1, 1), (1, 1), same), 0)
        got = winograd.conv_forward(x, w, b, same, microkernel.RELU)
        worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
        pooled, _ = winograd.conv_relu_maxpool(x, w, b, same)
        windows = want[:, :6, :6].reshape(2, 3, 2, 3, 2, 70).max(axis=(2, 4))
        worst = max(worst, float(np.abs(pooled - windows).max() / np.abs(want).max()))
        dz = rng.uniform(-2, 2, want.shape).astype(np.float32)
        _, want_dw, _ = naive.conv2d_backward(dz, x, w, (1, 1), (1, 1), same, need_dx=False)
        dw = winograd.conv_weight_grad(dz, x, same)
        worst = max(worst, float(np.abs(dw - want_dw).max() / np.abs(want_dw).max()))
    stats = [engine._forward_tiles.stats, engine.borders._class_tiles.stats]
    print(json.dumps({{"width": microkernel.vector_width(), "error": worst,
                      "hits": sum(sum(s.cache_hits.values()) for s in stats),
                      "misses": sum(sum(s.cache_misses.values()) for s in stats)}}))
    """
)


def run_engine(env_extra: dict, cache_dir: Path, bump: bool = False, winograd: bool = True) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), **env_extra}
    for name in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES"):
        if name not in env_extra:
            env.pop(name, None)
    code = SCRIPT.format(tests=str(TESTS), bump=bump, winograd=winograd)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("target", "width"),
    [
        ({"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "-avx512f"}, 8),  # AVX2 + FMA
        ({"NUMBA_CPU_NAME": "generic"}, 4),  # the portable tile (SSE2, no FMA)
    ],
)
def test_every_tile_variant_runs_with_the_target_forced(tmp_path, target, width):
    result = run_engine(target, tmp_path)
    assert result["width"] == width
    assert result["error"] < RTOL


def test_the_cache_is_reused_and_a_new_generator_version_recompiles(tmp_path):
    """The host's own tile (AVX-512 here) in a fresh cache, then again, then with the
    generator's version bumped (the direct and pooled tiles: Winograd's kernels, keyed the
    same way, are left out to keep three cold compiles short)."""
    first = run_engine({}, tmp_path, winograd=False)
    assert first["width"] == microkernel.vector_width()
    assert first["misses"] >= 1 and first["error"] < RTOL
    second = run_engine({}, tmp_path, winograd=False)
    assert second["misses"] == 0 and second["hits"] >= 1  # nothing compiled again
    bumped = run_engine({}, tmp_path, bump=True, winograd=False)
    assert bumped["misses"] >= 1  # the old tiles are not served to a new generator


def test_an_empty_batch_pools_to_empty_arrays():
    x = np.zeros((0, 8, 8, 2), np.float32)
    w = np.ones((3, 3, 2, 6), np.float32)
    pooled, code = fused.conv_relu_maxpool_forward(
        x, w, np.zeros(6, np.float32), (1, 1), (1, 1), ((0, 0), (0, 0)), (2, 2)
    )
    assert pooled.shape == code.shape == (0, 3, 3, 6)
    assert (pooled.dtype, code.dtype) == (np.float32, np.int8)
