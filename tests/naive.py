"""Obvious loop implementations with the same names as the kernels they check.

Each function follows the definition directly: explicit zero padding, one Python loop per index,
float64 accumulation, no cleverness and nothing imported from nbcnn, so a test that compares a
kernel with its namesake here compares against the definition. Slow by design: tests keep the
sizes small. Layouts are Keras's: x (N, H, W, C), w (KH, KW, C, F), y (N, OH, OW, F).

Padding is always explicit, ``((top, bottom), (left, right))``.
"""

from __future__ import annotations

import numpy as np


def _pad(x, padding, value=0.0):
    """x (N, H, W, C) as float64, padded with ``value`` on the spatial axes."""
    (top, bottom), (left, right) = padding
    return np.pad(
        np.asarray(x, dtype=np.float64),
        ((0, 0), (top, bottom), (left, right), (0, 0)),
        constant_values=value,
    )


def _out_size(padded, window, stride):
    return (padded - window) // stride + 1


# ------------------------------------------------------------------------------------ conv


def conv2d_forward(x, w, b, strides, dilation, padding):
    """y (N, OH, OW, F) float64 = cross-correlation of x (N, H, W, C) with w (KH, KW, C, F) + b."""
    xp = _pad(x, padding)
    w = np.asarray(w, dtype=np.float64)
    n_samples, hp, wp, channels = xp.shape
    kh, kw, _, filters = w.shape
    (sh, sw), (dil_h, dil_w) = strides, dilation
    out_h = _out_size(hp, (kh - 1) * dil_h + 1, sh)
    out_w = _out_size(wp, (kw - 1) * dil_w + 1, sw)
    y = np.zeros((n_samples, out_h, out_w, filters))
    for n in range(n_samples):
        for i in range(out_h):
            for j in range(out_w):
                for f in range(filters):
                    total = 0.0 if b is None else float(b[f])
                    for a in range(kh):
                        for e in range(kw):
                            for c in range(channels):
                                total += (
                                    xp[n, i * sh + a * dil_h, j * sw + e * dil_w, c] * w[a, e, c, f]
                                )
                    y[n, i, j, f] = total
    return y


def conv2d_backward(dy, x, w, strides, dilation, padding, *, need_dx=True):
    """(dx (N, H, W, C) or None, dw (KH, KW, C, F), db (F,)), all float64, for upstream dy.

    Every term x[n, h, w, c] * w[a, e, c, f] of y[n, i, j, f] contributes dy[n, i, j, f] times
    the other factor to the gradient of each factor.
    """
    xp = _pad(x, padding)
    w = np.asarray(w, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    n_samples, out_h, out_w, filters = dy.shape
    kh, kw, channels, _ = w.shape
    (sh, sw), (dil_h, dil_w) = strides, dilation
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    db = np.zeros(filters)
    for n in range(n_samples):
        for i in range(out_h):
            for j in range(out_w):
                for f in range(filters):
                    g = dy[n, i, j, f]
                    db[f] += g
                    for a in range(kh):
                        for e in range(kw):
                            h, wi = i * sh + a * dil_h, j * sw + e * dil_w
                            for c in range(channels):
                                dw[a, e, c, f] += xp[n, h, wi, c] * g
                                dxp[n, h, wi, c] += w[a, e, c, f] * g
    (top, _), (left, _) = padding
    height, width = np.shape(x)[1:3]
    dx = dxp[:, top : top + height, left : left + width, :]
    return (dx if need_dx else None), dw, db


# ------------------------------------------------------------------------------------ pooling


def _windows(x_shape, pool_size, strides, padding):
    """Yield (i, j, cells): cells lists the real (h, w) of window (i, j) in row-major order."""
    _, height, width, _ = x_shape
    (ph, pw), (sh, sw) = pool_size, strides
    (top, bottom), (left, right) = padding
    for i in range(_out_size(height + top + bottom, ph, sh)):
        for j in range(_out_size(width + left + right, pw, sw)):
            cells = [
                (i * sh - top + a, j * sw - left + e)
                for a in range(ph)
                for e in range(pw)
                if 0 <= i * sh - top + a < height and 0 <= j * sw - left + e < width
            ]
            yield i, j, cells


def _output_shape(x_shape, pool_size, strides, padding):
    (top, bottom), (left, right) = padding
    return (
        x_shape[0],
        _out_size(x_shape[1] + top + bottom, pool_size[0], strides[0]),
        _out_size(x_shape[2] + left + right, pool_size[1], strides[1]),
        x_shape[3],
    )


def max_pool2d_forward(x, pool_size, strides, padding):
    """(y (N, OH, OW, C) float64, argmax (N, OH, OW, C): the winner's index in x[n].ravel()).

    Only real cells compete (padding never wins); the first maximum in row-major order wins.
    """
    x = np.asarray(x, dtype=np.float64)
    shape = _output_shape(x.shape, pool_size, strides, padding)
    y = np.zeros(shape)
    argmax = np.zeros(shape, dtype=np.int64)
    for n in range(x.shape[0]):
        for c in range(x.shape[3]):
            for i, j, cells in _windows(x.shape, pool_size, strides, padding):
                values = [x[n, h, wi, c] for h, wi in cells]
                k = int(np.argmax(values))  # numpy's argmax returns the first maximum
                y[n, i, j, c] = values[k]
                h, wi = cells[k]
                argmax[n, i, j, c] = np.ravel_multi_index((h, wi, c), x.shape[1:])
    return y, argmax


def max_pool2d_backward(dy, argmax, x_shape):
    """dx (N, H, W, C) float64: each dy added to the cell its argmax names."""
    dy = np.asarray(dy, dtype=np.float64)
    dx = np.zeros(x_shape)
    for n, i, j, c in np.ndindex(*dy.shape):
        h, wi, channel = np.unravel_index(argmax[n, i, j, c], x_shape[1:])
        dx[n, h, wi, channel] += dy[n, i, j, c]
    return dx


def avg_pool2d_forward(x, pool_size, strides, padding):
    """y (N, OH, OW, C) float64: mean over each window's real cells (padding not counted)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.zeros(_output_shape(x.shape, pool_size, strides, padding))
    for n in range(x.shape[0]):
        for c in range(x.shape[3]):
            for i, j, cells in _windows(x.shape, pool_size, strides, padding):
                y[n, i, j, c] = sum(x[n, h, wi, c] for h, wi in cells) / len(cells)
    return y


def avg_pool2d_backward(dy, x_shape, pool_size, strides, padding):
    """dx (N, H, W, C) float64: each dy split equally over its window's real cells."""
    dy = np.asarray(dy, dtype=np.float64)
    dx = np.zeros(x_shape)
    for n in range(x_shape[0]):
        for c in range(x_shape[3]):
            for i, j, cells in _windows(x_shape, pool_size, strides, padding):
                for h, wi in cells:
                    dx[n, h, wi, c] += dy[n, i, j, c] / len(cells)
    return dx


# ---------------------------------------------------------------- NumPy layers, as loops


def dense_forward(x, w, b):
    """y (..., units): for every position of the leading axes, sum_i x[..., i] * w[i, u] + b[u]."""
    x = np.asarray(x, dtype=np.float64)
    lead = x.shape[:-1]
    y = np.zeros((*lead, w.shape[1]))
    for index in np.ndindex(*lead):
        for u in range(w.shape[1]):
            y[index + (u,)] = sum(x[index + (i,)] * w[i, u] for i in range(w.shape[0]))
            y[index + (u,)] += 0.0 if b is None else b[u]
    return y


def batchnorm_forward(x, gamma, beta, mean, var, epsilon):
    """y = gamma * (x - mean) / sqrt(var + epsilon) + beta, channel by channel (last axis)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        c = index[-1]
        y[index] = gamma[c] * (x[index] - mean[c]) / np.sqrt(var[c] + epsilon) + beta[c]
    return y


def batch_statistics(x):
    """Per-channel mean and (biased) variance over every other axis, by explicit sums."""
    x = np.asarray(x, dtype=np.float64)
    channels = x.shape[-1]
    values = [[] for _ in range(channels)]
    for index in np.ndindex(*x.shape):
        values[index[-1]].append(x[index])
    mean = np.array([sum(v) / len(v) for v in values])
    var = np.array([sum((t - m) ** 2 for t in v) / len(v) for v, m in zip(values, mean)])
    return mean, var


def batchnorm_backward(dy, x, gamma, epsilon):
    """(dx, dgamma, dbeta), float64, of batch normalisation with the batch's own statistics,
    y = gamma * xhat + beta, xhat = (x - mean) / sqrt(var + epsilon), channel by channel.

    Every x[i] moves xhat[i] directly and, through mean and var, every xhat of its channel:
    dxhat/dx = (1/s) * (delta - 1/m - xhat_i * xhat_j / m), with s = sqrt(var + epsilon).
    """
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    channels = x.shape[-1]
    mean, var = batch_statistics(x)
    dx, dgamma, dbeta = np.zeros_like(x), np.zeros(channels), np.zeros(channels)
    for c in range(channels):
        xs, gs = x[..., c].ravel(), dy[..., c].ravel()
        s, m = np.sqrt(var[c] + epsilon), len(xs)
        xhat = (xs - mean[c]) / s
        dgamma[c] = sum(g * h for g, h in zip(gs, xhat))
        dbeta[c] = sum(gs)
        grad = [
            sum(gamma[c] * gs[j] * ((i == j) - 1 / m - xhat[i] * xhat[j] / m) / s for j in range(m))
            for i in range(m)
        ]
        dx[..., c] = np.reshape(grad, x.shape[:-1])
    return dx, dgamma, dbeta


def upsampling2d_forward(x, size):
    """Nearest neighbour: y[n, i, j, c] = x[n, i // sh, j // sw, c]."""
    n, h, w, c = x.shape
    y = np.zeros((n, h * size[0], w * size[1], c))
    for index in np.ndindex(*y.shape):
        b, i, j, ch = index
        y[index] = x[b, i // size[0], j // size[1], ch]
    return y


def zero_padding2d_forward(x, padding):
    (top, bottom), (left, right) = padding
    n, h, w, c = x.shape
    y = np.zeros((n, h + top + bottom, w + left + right, c))
    for b, i, j, ch in np.ndindex(*x.shape):
        y[b, i + top, j + left, ch] = x[b, i, j, ch]
    return y


def cropping2d_forward(x, cropping):
    (top, bottom), (left, right) = cropping
    n, h, w, c = x.shape
    y = np.zeros((n, h - top - bottom, w - left - right, c))
    for b, i, j, ch in np.ndindex(*y.shape):
        y[b, i, j, ch] = x[b, i + top, j + left, ch]
    return y


def global_pool_forward(x, mode):
    """(N, ..., C) -> (N, C): max or mean over every position."""
    n, c = x.shape[0], x.shape[-1]
    y = np.zeros((n, c))
    for b in range(n):
        for ch in range(c):
            cells = [x[(b, *pos, ch)] for pos in np.ndindex(*x.shape[1:-1])]
            y[b, ch] = max(cells) if mode == "max" else sum(cells) / len(cells)
    return y
