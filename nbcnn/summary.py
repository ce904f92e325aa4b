"""The rows of ``nbcnn summary``, computed from the layers' calculators alone.

Computing (:func:`summarize`) is kept apart from rendering (:func:`render_table`,
:func:`to_json`), so tools can use the numbers without the table.

A chain (each layer takes the previous one's output) prints Keras's Sequential table; a graph
(some layer takes another output, nbcnn/graph.py) prints Keras 3's functional table: a first
row for the input, ``input_layer (InputLayer)``, and a "Connected to" column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nbcnn import graph
from nbcnn.errors import PluginError, printable
from nbcnn.layers.args import is_int, show
from nbcnn.layers.base import format_shape
from nbcnn.model import Sequential
from nbcnn.spec import INPUT_NAME

BYTES_PER_VALUE = 4  # float32


@dataclass
class Row:
    """One layer of the summary. Memory is per sample; receptive field in input pixels;
    ``inputs`` the names of the layers it takes its input from (``input_layer``: the
    model's input), in the order it takes them."""

    name: str
    type: str
    distribution: str
    inputs: list[str]
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
    #: Whether some layer takes another input than the previous layer's (Keras's functional
    #: table then, with the input's row and "Connected to").
    is_graph: bool = False

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
    """Per-layer shapes, counts, MACs, memory and receptive field of ``model``.

    Each layer's receptive field is computed from its own inputs' fields (in a graph the
    previous row may be another branch): see :func:`merged_field` for a merging layer.
    """
    spatial = len(model.input_shape) - 1
    start = ((1,) * spatial, (1,) * spatial) if spatial >= 1 else None
    # (receptive field, jump) of each output, the model's input included; None: no spatial map.
    fields: dict[int, tuple[tuple[float, ...], tuple[float, ...]] | None] = {graph.INPUT: start}
    rows = []
    specs = model.param_specs()
    for i, (layer, dist, (s_in, s_out)) in enumerate(
        zip(model.layers, model.distributions, model.shapes)
    ):
        params = specs[i]
        trainable = sum(p.size for p in params if p.trainable)
        total = sum(p.size for p in params)
        producers = model.inputs[i]
        given = merged_field([fields[j] for j in producers])
        field = None if given is None else model.calculate(i, "receptive_field", s_in, *given)
        fields[i] = field
        rf, jump = field if field is not None else (None, None)
        rows.append(
            Row(
                name=layer.name,
                type=type(layer).__name__,
                distribution=dist,
                inputs=[graph.source_name(j, model.layers) for j in producers],
                output_shape=list(s_out),
                params=total,
                trainable_params=trainable,
                non_trainable_params=total - trainable,
                macs=model.calculate(i, "macs", s_in),
                activation_bytes=math.prod(s_out) * BYTES_PER_VALUE,
                receptive_field=_plain(rf),
                jump=_plain(jump),
                explain=_explanation(model, i, s_in),
            )
        )
    return Summary(model.name, list(model.input_shape), rows, model.is_graph)


def _explanation(model: Sequential, i: int, s_in) -> str:
    """Layer ``i``'s ``explain`` text, or the failure of a layer's explain in its place: the
    counts do not depend on it, so a broken explain costs only its own line of
    ``--explain`` (and the ``explain`` field of ``--json``), not the whole summary."""
    try:
        return model.calculate(i, "explain", s_in)
    except PluginError as err:
        return f"(explain failed: {err})"


def merged_field(fields: list) -> tuple[tuple, tuple] | None:
    """The (receptive field, jump) a layer starts from, given its inputs' ``fields``.

    One input: its field. Several (a merge): the largest, axis by axis: the elementwise
    maximum of the fields and, chosen apart from them, the elementwise maximum of the jumps
    (not the jump of the input with the largest field: per axis, that input may differ). The
    inputs of a merge have the same spatial size, so their jumps agree in the usual blocks
    (ResNet's 1x1 stride-2 projection and its 3x3 stride-2 branch both have jump 2); where
    they differ, the coarser grid, like the larger field, is the bound a reader wants. Any
    input without a spatial map (None: after Flatten or global pooling) makes the merge's
    None too: its output then depends on the whole input.
    """
    if any(f is None for f in fields):
        return None
    if len(fields) == 1:
        return fields[0]
    rfs, jumps = zip(*fields)
    return tuple(map(max, zip(*rfs))), tuple(map(max, zip(*jumps)))


def _plain(values):
    if values is None:
        return None
    # Ints stay ints: float() of one beyond 1.8e308 (many stride layers) overflows.
    return [int(v) if is_int(v) or float(v).is_integer() else round(float(v), 4) for v in values]


def to_json(summary: Summary) -> dict:
    """The ``--json`` document (shapes without the batch axis)."""
    return {
        "name": summary.name,
        "input_shape": summary.input_shape,
        "layers": [dict(vars(r)) for r in summary.rows],  # asdict deep-copies: 4x slower
        "total_params": summary.total_params,
        "trainable_params": summary.trainable_params,
        "non_trainable_params": summary.non_trainable_params,
        "total_macs": summary.total_macs,
        "params_bytes": summary.total_params * BYTES_PER_VALUE,
        "activation_bytes_per_sample": summary.activation_bytes,
    }


#: Keras's byte units (1 KB = 1024 B), largest first.
BYTE_UNITS = (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10))


def human_bytes(n: int, units: tuple[tuple[str, int], ...] = BYTE_UNITS) -> str:
    """Keras's style: ``1.61 MB``, ``1.25 KB``, ``320 B``."""
    for unit, scale in units:
        if n >= scale:
            return f"{_two_decimals(n, scale)} {unit}"
    return f"{n} B"


def human_count(n: int) -> str:
    """``1.23 G``, ``4.50 M``, ``320.00 K``-style counts for MACs."""
    for unit, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{_two_decimals(n, scale)} {unit}"
    return str(n)


def _two_decimals(n: int, scale: int) -> str:
    """``n / scale`` with two decimals in integer arithmetic, which never overflows (a float
    does past 1.8e308); ties go to the even digit, as float formatting rounds them."""
    hundredths, rest = divmod(int(n) * 100, scale)
    if 2 * rest > scale or (2 * rest == scale and hundredths % 2):
        hundredths += 1
    return f"{hundredths // 100}.{hundredths % 100:02d}"


def _field_text(row: Row) -> str:
    if row.receptive_field is None:
        return "-"
    rf = "x".join(map(_number_text, row.receptive_field))
    jump = "x".join(map(_number_text, row.jump))
    return f"{rf} /{jump}"


def _number_text(v: float) -> str:
    try:
        return f"{v:g}"
    except OverflowError:  # an int beyond float's range (many stride layers)
        return show(v)


def _pad(cell: str, width: int, right: bool = False) -> str:
    """``cell`` padded to ``width`` terminal cells (a CJK character takes two)."""
    from rich.cells import cell_len

    gap = " " * (width - cell_len(cell))
    return gap + cell if right else cell + gap


def _width(cells: list[str]) -> int:
    from rich.cells import cell_len

    return max(map(cell_len, cells))


def _columns(header: list[str], rows: list[list[str]], right: list[bool]) -> list[str]:
    """Lines of a table in rich's SIMPLE_HEAD look: header, a rule, the rows. A cell of
    several lines (joined by newlines, which :func:`printable` never leaves in a name) makes
    its row as tall, the other cells blank below their first line."""
    lines_of_rows = []
    for row in rows:
        cells = [cell.split("\n") for cell in row]
        for k in range(max(map(len, cells))):
            lines_of_rows.append([cell[k] if k < len(cell) else "" for cell in cells])
    widths = [_width(column) for column in zip(header, *lines_of_rows)]

    def line(cells: list[str]) -> str:
        padded = [_pad(*cell) for cell in zip(cells, widths, right)]
        return ("  " + "   ".join(padded)).rstrip()

    rule = " " + "\u2500" * (sum(widths) + 3 * len(widths) - 1)
    return [line(header), rule, *map(line, lines_of_rows)]


def _connected_to(names: list[str]) -> str:
    """Keras 3's "Connected to" cell, as keras/src/utils/summary_utils.py (print_summary,
    get_connections) writes it: ``name[node_index][tensor_index]`` for each input, joined by
    ", "; rich then wraps the cell in its narrow column, one input a line. nbcnn calls each
    layer once and each layer has one output, so both indices are 0; its table has no fixed
    width, so the inputs go one a line, each but the last keeping its comma, as Keras shows
    them once wrapped."""
    return ",\n".join(f"{printable(name)}[0][0]" for name in names)


def render_table(summary: Summary, *, extras: bool = True, explain: bool = False) -> str:
    """Keras's columns, then MACs, memory and receptive field, as text with names escaped.

    A graph gets Keras 3's functional table: a first row for the model's input,
    ``input_layer (InputLayer)`` with 0 params and "-" connected (nbcnn's columns "-" too:
    it is not a layer, and the totals do not count it), and the column "Connected to" after
    Param #. A chain keeps Keras's Sequential table, without either.

    Plain string formatting rather than a rich Table: rich spent ~0.4 ms a row, 10 s of the
    16 s that a 25,000-layer config took to summarise (AMD EPYC, 2 cores); this is linear and
    takes milliseconds.
    """
    connected = summary.is_graph
    # (title, right-aligned): counts to the right, names, shapes and connections to the left.
    columns = [("Layer (type)", False), ("Output Shape", False), ("Param #", True)]
    if connected:
        columns.append(("Connected to", False))
    if extras:
        columns += [("MACs", True), ("Memory", True), ("RF /jump", True)]
    header, right = (list(part) for part in zip(*columns))
    rows = []
    if connected:
        shape = format_shape(tuple(summary.input_shape))
        rows.append([f"{INPUT_NAME} (InputLayer)", shape, "0", "-"] + ["-"] * (len(header) - 4))
    for row in summary.rows:
        cells = [
            f"{printable(row.name)} ({printable(row.type)})",
            format_shape(tuple(row.output_shape)),
            f"{row.params:,}",
        ]
        if connected:
            cells.append(_connected_to(row.inputs))
        if extras:
            cells += [f"{row.macs:,}", human_bytes(row.activation_bytes), _field_text(row)]
        rows.append(cells)
    lines = [f'Model: "{printable(summary.name)}"', "", *_columns(header, rows, right), ""]
    total_bytes = summary.total_params * BYTES_PER_VALUE
    lines += [
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
    if explain:
        names = [printable(r.name) for r in summary.rows]
        width = _width(names)
        lines += ["", "How each count is made:"]
        lines += [
            f" {_pad(name, width)}  {printable(r.explain)}".rstrip()
            for name, r in zip(names, summary.rows)
        ]
    return "\n".join(lines)
