"""Memory a training run needs, estimated from the layers' calculators before anything is
allocated, and checked against the memory this machine has available.

The estimate (float32 throughout) is a fixed part plus a part per sample of the batch:

- fixed: every parameter for the weights, the gradients and the optimizer's slots (Adam keeps
  two: m and v), plus the optimizer's two scratch buffers the size of the largest parameter;
- per sample: ``ACTIVATION_COPIES`` copies of every layer's output (the output, what the layer
  keeps for its backward, the gradient flowing back), two of the input (the batch gathered
  from the data set and its gradient), and for the largest convolution two im2col matrices
  of ``OH*OW x KH*KW*C`` (nbcnn/kernels/conv.py builds ``cols`` in the forward, ``cols`` and
  ``dcols`` in the backward).

The data set itself is not counted: its size is known only once it is read.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nbcnn.errors import ConfigError

if TYPE_CHECKING:
    from nbcnn.model import Sequential

BYTES_PER_VALUE = 4  # float32
ACTIVATION_COPIES = 3
#: Per-parameter slot arrays of each optimizer, at most (SGD with momentum, centered RMSprop
#: with momentum); an unknown type counts as Adam.
OPTIMIZER_SLOTS = {"sgd": 1, "adam": 2, "rmsprop": 3}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes to train at ``batch_size``: ``fixed + per_sample * batch_size``."""

    fixed: int
    per_sample: int
    batch_size: int

    @property
    def total(self) -> int:
        return self.fixed + self.per_sample * self.batch_size

    def largest_batch(self, available: int) -> int:
        """The largest batch size that fits in ``available`` bytes (0 when none does)."""
        if available < self.fixed + self.per_sample:
            return 0
        return (available - self.fixed) // max(self.per_sample, 1)


def _optimizer_type(optimizer: Any) -> str:
    kind = optimizer.get("type") if isinstance(optimizer, dict) else optimizer
    return kind.lower() if isinstance(kind, str) else "adam"


def _im2col_values(layer, s_in, s_out) -> int:
    """Entries of one sample's im2col matrix for a convolution, else 0."""
    from nbcnn.layers.conv import Conv1D, Conv2D

    if not isinstance(layer, (Conv1D, Conv2D)):
        return 0
    kernel = layer.param_shapes(s_in)[0].shape  # (KH, KW, C, F) or (K, C, F)
    return math.prod(s_out[:-1]) * math.prod(kernel[:-1])


def estimate_training_memory(
    model: Sequential, batch_size: int, optimizer: Any = "adam"
) -> MemoryEstimate:
    """Estimate the bytes needed to train ``model`` at ``batch_size`` with ``optimizer``
    (``"adam"`` or ``{"type": "adam", ...}``), from shapes alone."""
    sizes = [p.size for specs in model.param_specs() for p in specs]
    slots = OPTIMIZER_SLOTS.get(_optimizer_type(optimizer), 2)
    fixed = sum(sizes) * (2 + slots) + 2 * max(sizes, default=0)
    outputs = sum(math.prod(s_out) for _, s_out in model.shapes)
    im2col = max(
        (
            _im2col_values(layer, s_in, s_out)
            for layer, (s_in, s_out) in zip(model.layers, model.shapes)
        ),
        default=0,
    )
    per_sample = ACTIVATION_COPIES * outputs + 2 * math.prod(model.input_shape) + 2 * im2col
    return MemoryEstimate(fixed * BYTES_PER_VALUE, per_sample * BYTES_PER_VALUE, batch_size)


def available_memory() -> int | None:
    """Bytes this process can still allocate: the kernel's MemAvailable (free pages where
    /proc is absent), lowered to what a cgroup v2 memory limit leaves; None when unknown."""
    found = []
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, OSError, ValueError):
            pass
    try:
        with open("/sys/fs/cgroup/memory.max") as handle:
            limit = handle.read().strip()
        with open("/sys/fs/cgroup/memory.current") as handle:
            used = int(handle.read().strip())
        if limit != "max":
            found.append(max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def human_bytes(n: int) -> str:
    from nbcnn.summary import human_bytes as keras_style

    if n >= 1 << 40:
        return f"{n / (1 << 40):.2f} TB"
    return keras_style(n)


def _largest(model: Sequential, sizes: list[int]) -> str:
    from nbcnn.model import layer_label

    i = max(range(len(sizes)), key=sizes.__getitem__)
    return layer_label(i, model.layers[i])


def _file(model: Sequential) -> str | None:
    return model.spec.file if model.spec is not None else None


def check_parameter_memory(model: Sequential, available: int | None = None) -> None:
    """Refuse, before allocating, weights that alone exceed the available memory."""
    available = available_memory() if available is None else available
    per_layer = [sum(p.size for p in specs) for specs in model.param_specs()]
    need = sum(per_layer) * BYTES_PER_VALUE
    if available is not None and need > available:
        raise ConfigError(
            f"the model's {sum(per_layer):,} parameters need {human_bytes(need)} but only "
            f"{human_bytes(available)} of memory is available; this layer holds "
            f"{max(per_layer):,} of them: make it smaller (fewer units or filters)",
            file=_file(model),
            where=_largest(model, per_layer),
        )


def check_training_memory(
    model: Sequential, batch_size: int, optimizer: Any = "adam", available: int | None = None
) -> MemoryEstimate:
    """Refuse, before allocating, a run whose estimated memory exceeds what is available.

    The ConfigError names the config, the estimate, the available memory and a batch_size
    that would fit, or, when not even batch_size 1 fits, the layer to make smaller.
    """
    estimate = estimate_training_memory(model, batch_size, optimizer)
    available = available_memory() if available is None else available
    if available is None or estimate.total <= available:
        return estimate
    needs = (
        f"training needs about {human_bytes(estimate.total)} at batch_size {batch_size} "
        f"({human_bytes(estimate.fixed)} for weights, gradients and optimizer state, "
        f"{human_bytes(estimate.per_sample)} per sample for activations and buffers) but only "
        f"{human_bytes(available)} of memory is available"
    )
    fits = estimate.largest_batch(available)
    if fits >= 1:
        suggestion = 1 << (fits.bit_length() - 1)  # a power of two, as batch sizes usually are
        raise ConfigError(
            f"{needs}; batch_size {suggestion} would fit (--batch-size {suggestion})",
            file=_file(model),
            where="train.batch_size",
        )
    if estimate.fixed >= estimate.per_sample:
        sizes = [sum(p.size for p in specs) for specs in model.param_specs()]
        advice = "not even batch_size 1 fits: make this layer smaller (fewer units or filters)"
    else:
        sizes = [math.prod(s_out) for _, s_out in model.shapes]
        advice = "even batch_size 1 does not fit: make this layer's output smaller"
    raise ConfigError(f"{needs}; {advice}", file=_file(model), where=_largest(model, sizes))
