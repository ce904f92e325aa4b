"""The rows of ``nbcnn summary``, computed from the layers' calculators alone.

Computing (:func:`summarize`) is kept apart from rendering (:func:`render_table`,
:func:`to_json`), so tools can use the numbers without the table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from nbcnn.layers.base import format_shape
from nbcnn.model import Sequential

BYTES_PER_VALUE = 4  # float32


@dataclass
class Row:
    """One layer of the summary. Memory is per sample; receptive field in input pixels."""

    name: str
    type: str
    distribution: str
    output_shape: list[int]
    params: int
    trainable_params: int
    non_trainable_params: int
    macs: int
    activation_bytes: int
    receptive_field: list[float] | None
    jump: list[float] | None
    explain: str


@dataclass
class Summary:
    name: str
    input_shape: list[int]
    rows: list[Row]

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def trainable_params(self) -> int:
        return sum(r.trainable_params for r in self.rows)

    @property
    def non_trainable_params(self) -> int:
        return sum(r.non_trainable_params for r in self.rows)

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def activation_bytes(self) -> int:
        return sum(r.activation_bytes for r in self.rows)


def summarize(model: Sequential) -> Summary:
    """Per-layer shapes, counts, MACs, memory and receptive field of ``model``."""
    spatial = len(model.input_shape) - 1
    rf: tuple[float, ...] | None = (1,) * spatial if spatial >= 1 else None
    jump: tuple[float, ...] | None = (1,) * spatial if spatial >= 1 else None
    rows = []
    specs = model.param_specs()
    for i, (layer, dist, (s_in, s_out)) in enumerate(
        zip(model.layers, model.distributions, model.shapes)
    ):
        params = specs[i]
        trainable = sum(p.size for p in params if p.trainable)
        total = sum(p.size for p in params)
        if rf is not None:
            field = model.calculate(i, "receptive_field", s_in, rf, jump)
            rf, jump = field if field is not None else (None, None)
        rows.append(
            Row(
                name=layer.name,
                type=type(layer).__name__,
                distribution=dist,
                output_shape=list(s_out),
                params=total,
                trainable_params=trainable,
                non_trainable_params=total - trainable,
                macs=int(model.calculate(i, "macs", s_in)),
                activation_bytes=math.prod(s_out) * BYTES_PER_VALUE,
                receptive_field=_plain(rf),
                jump=_plain(jump),
                explain=model.calculate(i, "explain", s_in),
            )
        )
    return Summary(model.name, list(model.input_shape), rows)


def _plain(values):
    if values is None:
        return None
    return [int(v) if float(v).is_integer() else round(float(v), 4) for v in values]


def to_json(summary: Summary) -> dict:
    """The ``--json`` document (shapes without the batch axis)."""
    return {
        "name": summary.name,
        "input_shape": summary.input_shape,
        "layers": [asdict(r) for r in summary.rows],
        "total_params": summary.total_params,
        "trainable_params": summary.trainable_params,
        "non_trainable_params": summary.non_trainable_params,
        "total_macs": summary.total_macs,
        "params_bytes": summary.total_params * BYTES_PER_VALUE,
        "activation_bytes_per_sample": summary.activation_bytes,
    }


def human_bytes(n: int) -> str:
    """Keras's style: ``1.61 MB``, ``1.25 KB``, ``320 B`` (1 KB = 1024 B)."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def human_count(n: int) -> str:
    """``1.23 G``, ``4.5 M``, ``320 K``-style counts for MACs."""
    for unit, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _field_text(row: Row) -> str:
    if row.receptive_field is None:
        return "-"
    rf = "x".join(f"{v:g}" for v in row.receptive_field)
    jump = "x".join(f"{v:g}" for v in row.jump)
    return f"{rf} /{jump}"


def render_table(summary: Summary, *, extras: bool = True, explain: bool = False):
    """A rich renderable: Keras's columns, then MACs, memory and receptive field."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f'Model: "{summary.name}"', box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("Layer (type)", no_wrap=True)
    table.add_column("Output Shape", no_wrap=True)
    table.add_column("Param #", justify="right")
    if extras:
        table.add_column("MACs", justify="right")
        table.add_column("Memory", justify="right")
        table.add_column("RF /jump", justify="right")
    for row in summary.rows:
        cells = [
            f"{row.name} ({row.type})",
            format_shape(tuple(row.output_shape)),
            f"{row.params:,}",
        ]
        if extras:
            cells += [
                f"{row.macs:,}" if row.macs else "0",
                human_bytes(row.activation_bytes),
                _field_text(row),
            ]
        table.add_row(*cells)
    total_bytes = summary.total_params * BYTES_PER_VALUE
    lines = [
        f" Total params: {summary.total_params:,} ({human_bytes(total_bytes)})",
        f" Trainable params: {summary.trainable_params:,} "
        f"({human_bytes(summary.trainable_params * BYTES_PER_VALUE)})",
        f" Non-trainable params: {summary.non_trainable_params:,} "
        f"({human_bytes(summary.non_trainable_params * BYTES_PER_VALUE)})",
    ]
    if extras:
        lines += [
            f" Total MACs: {summary.total_macs:,} ({human_count(summary.total_macs)}) per sample",
            f" Activation memory: {human_bytes(summary.activation_bytes)} per sample (float32)",
            " MACs = multiply-accumulates (1 MAC = 2 FLOPs); RF /jump = receptive field and "
            "effective stride in input pixels",
        ]
    parts = [table, Text("\n".join(lines))]
    if explain:
        width = max(len(r.name) for r in summary.rows)
        how = [f" {r.name:<{width}}  {r.explain}" for r in summary.rows]
        parts.append(Text("\nHow each count is made:\n" + "\n".join(how)))
    return Group(*parts)
