"""Memory a training run needs, estimated from the layers' calculators before anything is
allocated, and checked against the memory this process can still have.

The estimate (float32 throughout) is a fixed part plus a part per sample of the batch:

- fixed: every parameter for the weights, the gradients and the optimizer's slots (Adam keeps
  two: m and v), plus the optimizer's two scratch buffers the size of the largest parameter;
- per sample: ``ACTIVATION_COPIES`` copies of every layer's output (the output, what the layer
  keeps for its backward, the gradient flowing back), two of the input (the batch gathered
  from the data set and its gradient), and the work buffers of the convolution that needs the
  most (:func:`conv_buffers`: what nbcnn/kernels/conv.py and fused.py allocate): two im2col
  matrices of ``OH*OW x KH*KW*C`` (``cols`` in the forward, ``cols`` and ``dcols`` in the
  backward), the zero-padded copy of its input (a dilated 'same' or 'causal' window pads by
  ``(k - 1) * dilation``: dilation 5000 turns an 8x8 input into 10008x10008), and in a first
  layer with one channel the fused backward's weight gradient per sample.

The data set itself is not counted: its size is known only once it is read. What is available
is the smallest of the machine's free memory, the process's limits (``ulimit -v``/``-d``) and
its cgroup's (a container's memory limit): :func:`available_memory`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbcnn.errors import ConfigError

if TYPE_CHECKING:
    from nbcnn.model import Sequential

BYTES_PER_VALUE = 4  # float32
ACTIVATION_COPIES = 3
#: Per-parameter slot arrays of each optimizer, at most (SGD with momentum, centered RMSprop
#: with momentum); an unknown type counts as Adam.
OPTIMIZER_SLOTS = {"sgd": 1, "adam": 2, "adamw": 2, "rmsprop": 3}


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


@dataclass(frozen=True)
class ConvBuffers:
    """Float32 entries of the work buffers of one sample's 2-D convolution.

    columns : one im2col matrix, ``OH*OW x KH*KW*C``.
    padded_shape : ``(H + top + bottom, W + left + right, C)``, the input with its zero padding.
    padded : entries of that padded copy; 0 without padding (the kernels then use x itself).
    """

    columns: int
    padded_shape: tuple[int, int, int]
    padded: int


def conv_buffers(
    input_hw: tuple[int, int],
    channels: int,
    kernel_hw: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    output_hw: tuple[int, int],
) -> ConvBuffers:
    """The work buffers nbcnn/kernels/conv.py allocates per sample for a convolution of an
    ``input_hw`` x ``channels`` input with a ``kernel_hw`` window, explicit ``padding``
    ``((top, bottom), (left, right))`` and an ``output_hw`` output."""
    (top, bottom), (left, right) = padding
    shape = (input_hw[0] + top + bottom, input_hw[1] + left + right, channels)
    columns = math.prod(output_hw) * math.prod(kernel_hw) * channels
    return ConvBuffers(columns, shape, math.prod(shape) if top + bottom + left + right else 0)


@dataclass(frozen=True)
class LayerMemory:
    """Float32 entries one layer needs per sample.

    inputs, outputs : one sample's input and output.
    columns : one im2col matrix (convolutions only).
    padded : its zero-padded input copy (0 without padding); ``padded_shape`` its shape.
    padded_in_inference : whether the forward makes that copy (one-channel inputs, whose
        im2col copies rows of it).
    padded_in_training : whether a training step does: the backward also sums dx into one,
        except in the first layer (training needs no dx there).
    weight_grad : the fused first layer's weight gradient per sample (nbcnn/kernels/fused.py).
    """

    inputs: int
    outputs: int
    columns: int = 0
    padded: int = 0
    padded_shape: tuple[int, ...] = ()
    padded_in_inference: bool = False
    padded_in_training: bool = False
    weight_grad: int = 0

    @property
    def kept(self) -> int:
        """What training keeps per layer: ``ACTIVATION_COPIES`` copies of the output."""
        return ACTIVATION_COPIES * self.outputs

    @property
    def training_work(self) -> int:
        """What a training step allocates only while this layer runs: the forward's columns,
        the backward's columns and dcols, the padded copy, the per-sample weight gradient."""
        padded = self.padded if self.padded_in_training else 0
        return 2 * self.columns + padded + self.weight_grad

    @property
    def inference_peak(self) -> int:
        """Held while this layer runs in inference: its input, output and forward buffers."""
        padded = self.padded if self.padded_in_inference else 0
        return self.inputs + self.outputs + self.columns + padded


def _optimizer_type(optimizer: Any) -> str:
    kind = optimizer.get("type") if isinstance(optimizer, dict) else optimizer
    return kind.lower() if isinstance(kind, str) else "adam"


def _layer_memory(index: int, layer, s_in, s_out) -> LayerMemory:
    from nbcnn.layers.conv import Conv1D, Conv2D

    if isinstance(s_in, list):  # a merging layer: the list of its inputs' shapes
        return LayerMemory(sum(math.prod(s) for s in s_in), math.prod(s_out))
    sizes = (math.prod(s_in), math.prod(s_out))
    if not isinstance(layer, (Conv1D, Conv2D)):
        return LayerMemory(*sizes)
    channels = s_in[-1]
    buffers = conv_buffers(
        layer._as_2d(tuple(s_in[:-1])),
        channels,
        layer._as_2d(tuple(layer.kernel_size)),
        layer._padding_2d(s_in),
        layer._as_2d(tuple(s_out[:-1])),
    )
    # A first layer with one channel may run fused with the max pooling after it, whose
    # backward pads the input again and keeps a weight gradient per sample.
    first_one_channel = index == 0 and channels == 1
    return LayerMemory(
        *sizes,
        columns=buffers.columns,
        padded=buffers.padded,
        padded_shape=buffers.padded_shape,
        padded_in_inference=channels == 1,
        padded_in_training=channels == 1 or index > 0,
        weight_grad=math.prod(layer.param_shapes(s_in)[0].shape) if first_one_channel else 0,
    )


def layer_memory(model: Sequential) -> list[LayerMemory]:
    """Per-sample memory of each layer of ``model``, from shapes alone."""
    return [
        _layer_memory(i, layer, s_in, s_out)
        for i, (layer, (s_in, s_out)) in enumerate(zip(model.layers, model.shapes))
    ]


def _parameters(model: Sequential) -> list[int]:
    return [p.size for specs in model.param_specs() for p in specs]


def estimate_training_memory(
    model: Sequential, batch_size: int, optimizer: Any = "adam"
) -> MemoryEstimate:
    """Estimate the bytes needed to train ``model`` at ``batch_size`` with ``optimizer``
    (``"adam"`` or ``{"type": "adam", ...}``), from shapes alone."""
    sizes = _parameters(model)
    slots = OPTIMIZER_SLOTS.get(_optimizer_type(optimizer), 2)
    fixed = sum(sizes) * (2 + slots) + 2 * max(sizes, default=0)
    layers = layer_memory(model)
    per_sample = (
        sum(m.kept for m in layers)
        + 2 * math.prod(model.input_shape)
        + max((m.training_work for m in layers), default=0)
    )
    return MemoryEstimate(fixed * BYTES_PER_VALUE, per_sample * BYTES_PER_VALUE, batch_size)


def estimate_inference_memory(model: Sequential, batch_size: int) -> MemoryEstimate:
    """Estimate the bytes ``model.predict`` needs at ``batch_size``: the weights, and per
    sample the layer that holds the most at once (its input, output and work buffers) plus
    the predictions gathered so far. At most what training at that batch size needs."""
    layers = layer_memory(model)
    per_sample = max((m.inference_peak for m in layers), default=0) + math.prod(model.output_shape)
    return MemoryEstimate(
        sum(_parameters(model)) * BYTES_PER_VALUE, per_sample * BYTES_PER_VALUE, batch_size
    )


def inference_batch_size(model: Sequential, wanted: int = 256) -> int:
    """The batch size to evaluate or predict with: ``wanted``, or the largest smaller one that
    fits in the available memory (at least 1)."""
    available = available_memory()
    if available is None:
        return wanted
    return max(1, min(wanted, estimate_inference_memory(model, wanted).largest_batch(available)))


# ----------------------------------------------------------------------------- available

#: Where Linux shows this process and its control groups.
PROC_SELF = Path("/proc/self")
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: A cgroup's memory limit, its usage and the memory.stat entry of the page cache it could
#: drop (usage minus that is its working set, as ``docker stats`` and the kubelet count it):
#: cgroup v2, then v1 (whose "no limit" is a huge number, never the smallest).
CGROUP_FILES = {
    "v2": ("memory.max", "memory.current", "inactive_file"),
    "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
}


def available_memory() -> int | None:
    """Bytes this process can still allocate, None when unknown: the smallest of the
    machine's available memory, what ``ulimit -v``/``-d`` leave above the process's current
    size, and what the memory limits of its cgroup and the cgroups above it leave above their
    usage."""
    found = [*_machine_room(), *_rlimit_room(), *_cgroup_room()]
    return min(found) if found else None


def _machine_room() -> list[int]:
    """The kernel's MemAvailable (free pages where /proc/meminfo is absent)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return [int(line.split()[1]) * 1024]
    except (OSError, ValueError, IndexError):
        pass
    try:
        return [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
    except (AttributeError, OSError, ValueError):
        return []


def _status_bytes(status: Path) -> dict[str, int]:
    """The ``Vm*`` sizes of /proc/PID/status in bytes (``VmSize: 330732 kB``)."""
    sizes = {}
    try:
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.startswith("Vm") and value.strip().endswith("kB"):
                sizes[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return sizes


def _rlimit_room(proc_self: Path | None = None) -> list[int]:
    """What the soft limits left: RLIMIT_AS (``ulimit -v``) caps the address space, VmSize;
    RLIMIT_DATA (``ulimit -d``) caps private writable mappings, VmData (Linux >= 4.7), where
    NumPy's large arrays go. A process already at its limit has 0 left."""
    try:
        import resource
    except ImportError:  # not a Unix
        return []
    sizes = _status_bytes((proc_self or PROC_SELF) / "status")
    room = []
    for limit, used in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(limit)
        if soft != resource.RLIM_INFINITY:
            room.append(max(soft - sizes.get(used, 0), 0))
    return room


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None  # absent, unreadable, or "max" (no limit)


def _stat_entry(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_dirs(root: Path, proc_self: Path) -> list[tuple[Path, str]]:
    """``(folder, "v1" or "v2")`` of this process's memory cgroup and every cgroup above it,
    from /proc/self/cgroup (``0::/path`` for v2, ``4:memory:/path`` for v1); the mount's
    root alone where that file is absent or names a path outside the mount."""
    bases = [(root, "v2"), (root / "unified", "v2"), (root / "memory", "v1")]
    own = {"v2": "/", "v1": "/"}
    try:
        lines = (proc_self / "cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for fields in (line.split(":", 2) for line in lines):
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            own["v2"] = path
        elif "memory" in controllers.split(","):
            own["v1"] = path
    dirs = []
    for base, version in bases:
        parts = [p for p in own[version].split("/") if p]
        if ".." in parts:
            parts = []
        for depth in range(len(parts), -1, -1):
            dirs.append((base.joinpath(*parts[:depth]), version))
    return dirs


def _cgroup_room(root: Path | None = None, proc_self: Path | None = None) -> list[int]:
    """For each memory cgroup holding this process (its own and those above it, where a
    limit also applies), its limit minus its working set."""
    room = []
    for folder, version in _cgroup_dirs(root or CGROUP_ROOT, proc_self or PROC_SELF):
        limit_file, usage_file, cache_key = CGROUP_FILES[version]
        limit = _read_int(folder / limit_file)
        if limit is None:
            continue
        usage = _read_int(folder / usage_file) or 0
        working_set = max(usage - _stat_entry(folder / "memory.stat", cache_key), 0)
        room.append(max(limit - working_set, 0))
    return room


def human_bytes(n: int) -> str:
    """The summary's ``1.61 MB`` style, with TB for what no machine here has."""
    from nbcnn.summary import BYTE_UNITS
    from nbcnn.summary import human_bytes as keras_style

    return keras_style(n, (("TB", 1 << 40), *BYTE_UNITS))


def _largest_index(sizes: list[int]) -> int:
    return max(range(len(sizes)), key=sizes.__getitem__)


def _largest(model: Sequential, sizes: list[int]) -> str:
    from nbcnn.model import layer_label

    i = _largest_index(sizes)
    return layer_label(i, model.layers[i])


def _file(model: Sequential) -> str | None:
    return model.spec.file if model.spec is not None else None


#: Bytes per entry an initializer draws before its float32 copy: float64 values, and the
#: truncated normal's one-byte mask of values to draw again (nbcnn/layers/initializers.py).
INITIALIZER_SCRATCH = 8 + 1


def check_parameter_memory(model: Sequential, available: int | None = None) -> None:
    """Refuse, before allocating, weights that alone exceed the available memory, counting
    the initializer's float64 draw of the largest parameter (``INITIALIZER_SCRATCH``)."""
    available = available_memory() if available is None else available
    per_layer = [sum(p.size for p in specs) for specs in model.param_specs()]
    largest = max(_parameters(model), default=0)
    need = sum(per_layer) * BYTES_PER_VALUE + largest * INITIALIZER_SCRATCH
    if available is not None and need > available:
        raise ConfigError(
            f"the model's {sum(per_layer):,} parameters need {human_bytes(need)} (float32, and "
            "a float64 draw of the largest while initializing) but only "
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
        layers = layer_memory(model)
        sizes = [m.kept + m.training_work for m in layers]
        advice = "even batch_size 1 does not fit: " + _advice(layers[_largest_index(sizes)])
    raise ConfigError(f"{needs}; {advice}", file=_file(model), where=_largest(model, sizes))


def _advice(m: LayerMemory) -> str:
    """What to change in the layer whose per-sample memory ``m`` does not fit."""
    padded = m.padded if m.padded_in_training else 0
    if padded >= max(2 * m.columns, m.kept):
        shape = "x".join(map(str, m.padded_shape))
        need = human_bytes(padded * BYTES_PER_VALUE)
        return (
            f"this layer's zero-padded input ({shape}) needs {need} per sample: make its "
            "dilation_rate or kernel_size smaller, or use padding='valid'"
        )
    if 2 * m.columns >= m.kept:
        need = human_bytes(2 * m.columns * BYTES_PER_VALUE)
        return (
            f"this layer's im2col buffers need {need} per sample: make its kernel_size or its "
            "output smaller"
        )
    return "make this layer's output smaller"
