"""Keras's weight initialisers (``keras/src/initializers``), drawn from a seeded Generator."""

from __future__ import annotations

import math

import numpy as np


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Keras's fan-in / fan-out: a conv kernel (kh, kw, c_in, c_out) counts its receptive field."""
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def initialize(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A float32 array of ``shape`` drawn as Keras's initialiser ``name`` would."""
    if name == "zeros":
        return np.zeros(shape, np.float32)
    if name == "ones":
        return np.ones(shape, np.float32)
    fan_in, fan_out = fans(shape)
    family, distribution = name.split("_")
    # Variance scaling: glorot = 1/avg(fans), he = 2/fan_in, lecun = 1/fan_in.
    scale = {
        "glorot": 2.0 / (fan_in + fan_out),
        "he": 2.0 / fan_in,
        "lecun": 1.0 / fan_in,
    }[family]
    if distribution == "uniform":
        limit = math.sqrt(3.0 * scale)
        return rng.uniform(-limit, limit, size=shape).astype(np.float32)
    # Keras draws a normal truncated at 2 std, with std corrected for the truncation.
    std = math.sqrt(scale) / 0.87962566103423978
    values = rng.normal(0.0, std, size=shape)
    bad = np.abs(values) > 2 * std
    while bad.any():
        values[bad] = rng.normal(0.0, std, size=int(bad.sum()))
        bad = np.abs(values) > 2 * std
    return values.astype(np.float32)
