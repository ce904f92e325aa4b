"""BatchNormalization over channels-last rows x2 (M, C), M = every position of every sample.

NumPy's version made about ten full passes over the activations each way (mean, variance,
centring, scaling, the backward's products and sums, each with a temporary): on the VGG-CIFAR
net's first BatchNormalization (batch 128, 32x32x32) 12.3 ms forward and 15.9 ms backward,
15% of a training step. Here the training forward is two passes (statistics, then the
normalisation) and the backward two (sums, then dx), and the normalised x is not stored: the
backward recomputes it from x, the mean and 1/std.

Reductions over rows go through partial sums: prange iteration k adds only into row k of a
(blocks, C) float64 array, and the rows are summed afterwards (race-free, and float64 keeps
sums over millions of rows accurate). Statistics are shifted by the first row (sums of x - s
and (x - s)^2) so that the variance does not cancel away when |mean| >> std.
"""

from __future__ import annotations

import numba
import numpy as np

from nbcnn.kernels._jit import kernel

#: Rows per parallel block: enough work per iteration, few partial rows to sum. Read by the
#: wrappers at each call and passed to the kernels as an argument: a module constant read
#: inside a kernel would be frozen into numba's on-disk cache at its first compile.
BLOCK_ROWS = 2048


@kernel
def _shifted_sums(x2, block, shift, sums, squares):
    """sums[k, c], squares[k, c] (float64, zeroed) += x - shift[c] and its square, over the
    rows k*block ... (k+1)*block - 1."""
    rows, channels = x2.shape
    for k in numba.prange(sums.shape[0]):
        for r in range(k * block, min(rows, (k + 1) * block)):
            for c in range(channels):
                d = np.float64(x2[r, c]) - shift[c]
                sums[k, c] += d
                squares[k, c] += d * d


@kernel
def _normalize(x2, block, mean, scale, beta, relu, y2):
    """y2 = (x2 - mean) * scale + beta, row by row (all (C,) float32), then with ``relu``
    (a run-time flag) the values of ``np.maximum(y2, 0)`` (NaN and -0.0 kept)."""
    rows, channels = x2.shape
    for k in numba.prange((rows + block - 1) // block):
        for r in range(k * block, min(rows, (k + 1) * block)):
            for c in range(channels):
                v = (x2[r, c] - mean[c]) * scale[c] + beta[c]
                y2[r, c] = np.float32(0.0) if relu and v < 0.0 else v


@kernel
def _grad_sums(x2, block, dy2, a2, relu, mean, inv_std, sum_dy, sum_dy_xhat):
    """sum_dy[k, c] += dy, sum_dy_xhat[k, c] += dy * xhat over block k (float64, zeroed),
    with xhat = (x - mean) * inv_std recomputed; with ``relu``, dy is first masked as
    ReLU's backward does, ``dy * (a > 0)`` for a2 the ReLU's output (else a2 is not read)."""
    rows, channels = x2.shape
    for k in numba.prange(sum_dy.shape[0]):
        for r in range(k * block, min(rows, (k + 1) * block)):
            for c in range(channels):
                g = dy2[r, c] * np.float32(a2[r, c] > 0.0) if relu else dy2[r, c]
                xhat = (x2[r, c] - mean[c]) * inv_std[c]
                sum_dy[k, c] += g
                sum_dy_xhat[k, c] += g * xhat


@kernel
def _input_grad(x2, block, dy2, a2, relu, mean, inv_std, scale, mean_dy, mean_dy_xhat, dx2):
    """dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)); scale = gamma*inv_std;
    dy masked by ReLU's output as in ``_grad_sums``."""
    rows, channels = x2.shape
    for k in numba.prange((rows + block - 1) // block):
        for r in range(k * block, min(rows, (k + 1) * block)):
            for c in range(channels):
                g = dy2[r, c] * np.float32(a2[r, c] > 0.0) if relu else dy2[r, c]
                xhat = (x2[r, c] - mean[c]) * inv_std[c]
                dx2[r, c] = scale[c] * (g - mean_dy[c] - xhat * mean_dy_xhat[c])


def _blocks(rows: int) -> int:
    return max(1, (rows + BLOCK_ROWS - 1) // BLOCK_ROWS)


def batch_statistics(x2):
    """Per-channel mean and biased variance, float64 (C,), of contiguous float32 x2 (M, C)."""
    rows, channels = x2.shape
    shift = x2[0].astype(np.float64)
    sums = np.zeros((_blocks(rows), channels))
    squares = np.zeros((_blocks(rows), channels))
    _shifted_sums(x2, BLOCK_ROWS, shift, sums, squares)
    offset = sums.sum(axis=0) / rows
    var = np.maximum(squares.sum(axis=0) / rows - offset * offset, 0.0)
    return shift + offset, var


def normalize(x2, mean, scale, beta, relu=False):
    """y2 (M, C) float32 = (x2 - mean) * scale + beta for contiguous float32 x2 (M, C), then
    ReLU (``np.maximum(y2, 0)``'s values) when ``relu``: one pass for BatchNormalization and
    the ReLU after it (fusion.ConvBatchNorm)."""
    y2 = np.empty_like(x2)
    f32 = np.float32
    _normalize(
        x2, BLOCK_ROWS, mean.astype(f32), scale.astype(f32), beta.astype(f32), bool(relu), y2
    )  # fmt: skip
    return y2


def batchnorm_backward(dy2, x2, mean, inv_std, gamma, relu_output=None, reduce=None):
    """(dx2, dgamma, dbeta) of a training forward given dy2 (M, C); mean, inv_std (C,) float32
    as the forward used them, gamma (C,) float32. dgamma, dbeta are float32 (C,). With
    ``relu_output`` (M, C), the forward's output through a ReLU, dy2 is the gradient w.r.t.
    that output and ReLU's mask is applied inside both passes (no pass of its own).

    ``reduce(sum_dy, sum_dy_xhat, rows=M) -> ([sum_dy, sum_dy_xhat], rows)``: data-parallel
    training's hook (nbcnn.distributed.Group.sum_channels) turning this rank's per-channel
    sums into the whole batch's for dx; dgamma, dbeta stay this rank's (its gradients are
    summed with the others')."""
    rows, channels = x2.shape
    relu = relu_output is not None
    a2 = relu_output if relu else dy2
    sum_dy = np.zeros((_blocks(rows), channels))
    sum_dy_xhat = np.zeros((_blocks(rows), channels))
    _grad_sums(x2, BLOCK_ROWS, dy2, a2, relu, mean, inv_std, sum_dy, sum_dy_xhat)
    dbeta, dgamma = sum_dy.sum(axis=0), sum_dy_xhat.sum(axis=0)
    total_dy, total_dy_xhat, total_rows = dbeta, dgamma, rows
    if reduce is not None:
        (total_dy, total_dy_xhat), total_rows = reduce(dbeta, dgamma, rows=rows)
    f32 = np.float32
    dx2 = np.empty_like(x2)
    scale = (gamma * inv_std).astype(f32)
    mean_dy = (total_dy / total_rows).astype(f32)
    mean_dy_xhat = (total_dy_xhat / total_rows).astype(f32)
    _input_grad(x2, BLOCK_ROWS, dy2, a2, relu, mean, inv_std, scale, mean_dy, mean_dy_xhat, dx2)
    return dx2, dgamma.astype(f32), dbeta.astype(f32)
