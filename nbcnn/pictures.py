"""Pictures: the seed's filters on real images, feature-map and filter grids, training curves.

* :func:`convolve_image` runs a 3x3 filter (``FILTERS``: the seed's ``edge`` detector, Sobel,
  sharpen, blur) or any 2-D ``.npy`` kernel over a photograph with nbcnn's own Numba
  convolution, each colour channel on its own (the channels go in as the batch axis);
  :func:`rescale` maps the response to [0, 1] for viewing.
* :func:`featuremap_grid` and :func:`filter_grid` lay out one labelled tile per output channel
  of a layer (or per learned filter) with Pillow; :class:`Grid` records where each tile is, so
  tests and tools can read the values back.
* :func:`write_curves` draws loss and accuracy per epoch from a run's ``metrics.jsonl`` with
  matplotlib, an optional extra (``pip install 'nbcnn[plots]'``) imported only here.

Sizes are checked before anything is allocated: a convolution's work memory against
:func:`nbcnn.resources.available_memory`, images and grids against Pillow's decompression-bomb
limit, metrics files against ``MAX_METRICS_BYTES``; NaN, infinite and huge metric values are
left out of the curves with a warning.

Images are float32 in [0, 1] with a trailing channel axis: ``(H, W, C)``, C = 1 or 3.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nbcnn import resources
from nbcnn.errors import ConfigError, DataError, NbcnnError
from nbcnn.io import (
    READ_ERRORS,
    check_room,
    error_summary,
    read_npy_data,
    read_npy_header,
    refuse_image_bombs,
    refuse_special_file,
)
from nbcnn.layers.args import is_int, is_number

#: The named filters of ``nbcnn convolve``: 3x3 cross-correlation kernels.
FILTERS: dict[str, np.ndarray] = {
    # The seed's dark-edge detector: zero on flat regions (its taps sum to 0), strong where a
    # pixel differs from its eight neighbours.
    "edge": np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32),
    # Sobel (1968): positive where brightness grows to the right (x) or downwards (y).
    "sobel-x": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32),
    "sobel-y": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float32),
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32),
    "blur": np.full((3, 3), 1 / 9, np.float32),
}

#: How a response becomes [0, 1]: ``clip`` keeps the image scale (filters whose taps sum to
#: 1), ``abs`` shows |response| / peak (0 is black), ``signed`` puts 0 at mid grey and +-peak
#: at white and black, ``minmax`` stretches min..max; ``auto`` is ``clip`` for taps summing to
#: 1, else ``abs``. The peak is a high percentile of |response| (see ``_peak``).
RESCALES = ("auto", "clip", "abs", "signed", "minmax")
PADDINGS = ("valid", "same")

PLOTS_HINT = "pip install 'nbcnn[plots]'"


# ----------------------------------------------------------------------------- images


def load_kernel(spec: str) -> np.ndarray:
    """A filter by name (``FILTERS``) or from a ``.npy`` file holding a 2-D float array.

    Returns ``(KH, KW) float32``; ConfigError for an unknown name, DataError for a bad file.
    """
    from nbcnn.layers.args import did_you_mean

    if spec in FILTERS:
        return FILTERS[spec]
    if not spec.lower().endswith(".npy"):
        raise ConfigError(
            f"unknown kernel {spec!r}{did_you_mean(spec, list(FILTERS))}; known: "
            f"{', '.join(FILTERS)}, or a .npy file holding a 2-D array",
            where="--kernel",
        )
    refuse_special_file(spec, "a .npy file")
    try:
        with open(spec, "rb") as handle:
            header = read_npy_header(handle)
            shape, dtype = header.shape, header.dtype
            if len(shape) != 2 or min(shape) < 1 or not np.issubdtype(dtype, np.number):
                raise DataError(
                    f"expected a 2-D numeric kernel (KH, KW), got {dtype} of shape {shape}",
                    file=spec,
                )
            # Sizes from the header, checked before the kernel is read: a 144-byte file may
            # declare 100000 x 100000 (37 GiB).
            size = os.fstat(handle.fileno()).st_size - handle.tell()
            if size != header.nbytes:
                raise DataError(
                    f"its header declares {shape} of {dtype} = {header.nbytes:,} bytes of data "
                    f"but the file holds {size:,}",
                    file=spec,
                )
            check_room(
                header.values * (dtype.itemsize + resources.BYTES_PER_VALUE),
                "the kernel and its float32 copy",
                spec,
            )
            w = read_npy_data(handle, header)
    except FileNotFoundError:
        raise DataError("no such file", file=spec) from None
    except MemoryError:
        raise DataError("not enough memory to read the kernel", file=spec) from None
    except READ_ERRORS as err:
        raise DataError(f"not a readable .npy array ({error_summary(err)})", file=spec) from None
    w = w.astype(np.float32)
    if not np.isfinite(w).all():
        raise DataError("the kernel holds NaN or inf", file=spec)
    return w


def read_image(path: str | os.PathLike, grey: bool = False) -> np.ndarray:
    """An image file as ``(H, W, C) float32`` in [0, 1]: C = 1 for grey images (or with
    ``grey``: Pillow's ITU-R 601 luma), else 3 (RGB; alpha dropped)."""
    from PIL import Image, UnidentifiedImageError

    refuse_special_file(path, "an image")
    try:
        with refuse_image_bombs(path), Image.open(path) as image:
            mode = "L" if grey or image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            pixels = np.asarray(image.convert(mode), dtype=np.float32)
    except FileNotFoundError:
        raise DataError("file not found", file=str(path)) from None
    except UnidentifiedImageError as err:
        raise DataError(f"not a readable image ({err})", file=str(path)) from None
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read image ({err})", file=str(path)) from None
    pixels /= 255.0
    return pixels.reshape(*pixels.shape[:2], -1)


def convolve_image(
    image: np.ndarray,
    w: np.ndarray,
    stride: int = 1,
    padding: str = "valid",
    kernel_file: str | None = None,
) -> np.ndarray:
    """Cross-correlate each channel of ``image : (H, W, C)`` with ``w : (KH, KW)``.

    Runs nbcnn's Conv2D kernel with the C channels as a batch of one-channel images, so this is
    exactly what a one-filter Conv2D computes (no bias). 'same' padding splits like Keras.
    Returns ``(OH, OW, C) float32``. A kernel larger than the image with 'valid' padding, or
    one whose work buffers exceed the available memory, is a DataError naming ``kernel_file``
    (where the kernel came from), raised before anything is allocated.
    """
    from nbcnn import shapes
    from nbcnn.kernels.conv import conv2d_forward

    if padding not in PADDINGS:
        raise ConfigError(
            f"expected one of {', '.join(PADDINGS)}, got {padding!r}", where="--padding"
        )
    if stride < 1:
        raise ConfigError(f"expected an int >= 1, got {stride}", where="--stride")
    h, wd, channels = image.shape
    kh, kw = w.shape
    if padding == "valid" and (h < kh or wd < kw):
        raise DataError(
            f"the image ({h}x{wd}) is smaller than the {kh}x{kw} kernel; use --padding same or "
            "a smaller kernel",
            file=kernel_file,
        )
    pads = shapes.padding_amounts((h, wd), (kh, kw), (stride, stride), padding)
    out_hw = tuple(shapes.output_length(n, k, stride, padding) for n, k in ((h, kh), (wd, kw)))
    need = convolution_memory(image.shape, w.shape, pads, out_hw)
    available = resources.available_memory()
    if available is not None and need > available:
        need_text, available_text = map(resources.human_bytes, (need, available))
        raise DataError(
            f"convolving the {h}x{wd} image with the {kh}x{kw} kernel (--padding {padding}, "
            f"--stride {stride}) needs about {need_text} of memory ({kh * kw:,} taps for each "
            f"of {math.prod(out_hw):,} output pixels) but only {available_text} is available; "
            "use a smaller kernel or image",
            file=kernel_file,
        )
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[..., np.newaxis], np.float32)
    y = conv2d_forward(x, w.reshape(kh, kw, 1, 1), None, (stride, stride), (1, 1), pads)
    return y[..., 0].transpose(1, 2, 0)


#: Arrays the size of the response that ``nbcnn convolve`` holds at once: the response, and
#: rescale's and to_uint8's copies (abs, the percentile's sorted copy, the scaled result...).
RESPONSE_COPIES = 5


def convolution_memory(
    image_shape: tuple[int, int, int],
    kernel_shape: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    out_hw: tuple[int, int],
) -> int:
    """Bytes ``nbcnn convolve`` needs for an ``(H, W, C)`` image and a ``(KH, KW)`` kernel once
    the image is read: its channels-first copy, conv2d_forward's im2col columns and padded
    input for as many channels as its CHUNK_BYTES lets it take at once (one, when a channel's
    columns alone are larger), and ``RESPONSE_COPIES`` arrays of the ``(OH, OW, C)`` response."""
    from nbcnn.kernels.conv import CHUNK_BYTES

    h, wd, channels = image_shape
    per_channel = resources.conv_buffers((h, wd), 1, kernel_shape, pads, out_hw)
    column_bytes = per_channel.columns * resources.BYTES_PER_VALUE
    at_once = min(channels, max(1, CHUNK_BYTES // column_bytes))
    values = (
        h * wd * channels
        + at_once * (per_channel.columns + per_channel.padded)
        + RESPONSE_COPIES * math.prod(out_hw) * channels
    )
    return values * resources.BYTES_PER_VALUE


def rescale(y: np.ndarray, mode: str = "auto", w: np.ndarray | None = None) -> np.ndarray:
    """Map a response ``y`` to [0, 1] for viewing (see ``RESCALES``); ``w`` decides ``auto``."""
    check_rescale(mode)
    if mode == "auto":
        mode = "clip" if w is not None and abs(float(w.sum()) - 1.0) < 1e-4 else "abs"
    if mode == "clip":
        return np.clip(y, 0.0, 1.0)
    if mode == "minmax":
        return minmax(y)
    peak = _peak(y)
    if mode == "abs":
        return np.minimum(np.abs(y) / peak, 1.0) if peak > 0 else np.zeros_like(y)
    return np.clip(0.5 + 0.5 * y / peak, 0.0, 1.0) if peak > 0 else np.full_like(y, 0.5)


def check_rescale(mode: str) -> None:
    """ConfigError unless ``mode`` is one of ``RESCALES``."""
    if mode not in RESCALES:
        raise ConfigError(f"expected one of {', '.join(RESCALES)}, got {mode!r}", where="--rescale")


def _peak(y: np.ndarray) -> float:
    """The |response| shown at full brightness: the 99.5th percentile, so that a few spikes
    (on photographs, single bright pixels) do not leave everything else black; the maximum
    when that percentile is 0 (sparse responses, such as a drawing's edges)."""
    magnitude = np.abs(y)
    peak = float(np.percentile(magnitude, 99.5))
    return peak if peak > 0 else float(magnitude.max())


def minmax(a: np.ndarray) -> np.ndarray:
    """``(a - min) / (max - min)``; zeros when ``a`` is constant."""
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def to_uint8(v: np.ndarray) -> np.ndarray:
    """[0, 1] floats to 0..255 pixels (rounded half to even)."""
    return np.round(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_image(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """Write ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` uint8 pixels atomically; the format
    comes from the file's extension (``.png``, ``.jpg``...)."""
    from PIL import Image

    from nbcnn.io import write_bytes_atomic

    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise DataError(
            f"cannot tell an image format from the extension {suffix or '(none)'!r}; use .png",
            file=str(path),
        )
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    write_bytes_atomic(path, buffer.getvalue())


# ----------------------------------------------------------------------------- grids

#: Tiles are scaled up (nearest neighbour) to about this many pixels on their longer side.
TILE_PIXELS = 64
GAP = 4  # pixels between tiles and around the grid
LABEL_HEIGHT = 12  # pixels of caption above each tile
TITLE_HEIGHT = 16


@dataclass(frozen=True)
class Grid:
    """A labelled grid of tiles.

    pixels : ``(H, W)`` or ``(H, W, 3)`` uint8, white background, black captions.
    boxes : ``(top, left)`` of each tile's pixels, in tile order.
    tile_shape : ``(h, w)`` of every tile before scaling.
    scale : ``(sy, sx)``: each tile value covers ``sy x sx`` pixels.
    """

    pixels: np.ndarray
    boxes: list[tuple[int, int]]
    tile_shape: tuple[int, int]
    scale: tuple[int, int]

    def tile(self, i: int) -> np.ndarray:
        """Tile ``i`` read back at its original size: ``(h, w)`` or ``(h, w, 3)`` uint8."""
        (top, left), (h, w), (sy, sx) = self.boxes[i], self.tile_shape, self.scale
        return self.pixels[top : top + h * sy : sy, left : left + w * sx : sx]


def tile_scale(h: int, w: int) -> tuple[int, int]:
    """``(sy, sx)`` that brings an ``h x w`` tile to about ``TILE_PIXELS``; a 1-row tile (a 1-D
    feature map) is drawn as a strip a quarter of that high."""
    s = max(1, TILE_PIXELS // max(h, w))
    return (max(s, TILE_PIXELS // 4), s) if h == 1 else (s, s)


def make_grid(
    tiles: Sequence[np.ndarray], labels: Sequence[str], title: str, columns: int | None = None
) -> Grid:
    """Lay out ``tiles`` (each ``(h, w)`` or ``(h, w, 3)`` floats in [0, 1], one shape) with a
    caption above each and a title on top."""
    from PIL import Image, ImageDraw, ImageFont

    n = len(tiles)
    h, w = tiles[0].shape[:2]
    colour = tiles[0].ndim == 3
    if columns is None:  # 8 across for the usual 16..64 channels; strips of 1-D maps 4 across
        columns = min(n, 4 if h == 1 else max(8, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / columns)
    sy, sx = tile_scale(h, w)
    cell_h = LABEL_HEIGHT + h * sy + GAP
    height = TITLE_HEIGHT + GAP + rows * cell_h
    # Checked before the labels are measured (their widths only add) and once more after.
    _check_grid_size(title, n, GAP + columns * (w * sx + GAP), height)
    font = ImageFont.load_default()
    draw_probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    label_width = max(draw_probe.textbbox((0, 0), str(t), font=font)[2] for t in labels)
    cell_w = max(w * sx, label_width) + GAP
    title_w = draw_probe.textbbox((0, 0), title, font=font)[2]
    width = max(GAP + columns * cell_w, title_w + 2 * GAP)
    _check_grid_size(title, n, width, height)
    canvas = np.full((height, width, 3) if colour else (height, width), 255, np.uint8)
    boxes = []
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        top = TITLE_HEIGHT + GAP + r * cell_h + LABEL_HEIGHT
        left = GAP + c * cell_w
        canvas[top : top + h * sy, left : left + w * sx] = to_uint8(
            np.repeat(np.repeat(t, sy, axis=0), sx, axis=1)
        )
        boxes.append((top, left))
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    ink = (0, 0, 0) if colour else 0
    draw.text((GAP, 2), title, fill=ink, font=font)
    for (top, left), label in zip(boxes, labels):
        draw.text((left, top - LABEL_HEIGHT), str(label), fill=ink, font=font)
    return Grid(np.asarray(image), boxes, (h, w), (sy, sx))


def _check_grid_size(title: str, tiles: int, width: int, height: int) -> None:
    """Refuse a picture larger than Pillow opens without a decompression-bomb warning
    (``PIL.Image.MAX_IMAGE_PIXELS``), before allocating it: the grid of a layer with
    thousands of channels would take gigabytes and open nowhere."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ConfigError(
            f"the picture of {title} would be {width:,}x{height:,} pixels ({tiles:,} tiles), "
            f"more than the {limit:,} an image may have (PIL.Image.MAX_IMAGE_PIXELS); draw a "
            "layer with fewer channels or filters",
            where="--layer",
        )


def find_layer(model, name: str | None, accept: Callable, what: str) -> int:
    """Index of the layer called ``name`` (or the first that ``accept(index)`` takes when
    ``name`` is None); ConfigError naming the model's layers otherwise."""
    from nbcnn.layers.args import did_you_mean

    names = [layer.name for layer in model.layers]
    fitting = [n for i, n in enumerate(names) if accept(i)]
    if name is None:
        if not fitting:
            raise ConfigError(f"model {model.name!r} has no layer with {what}", where="--layer")
        return names.index(fitting[0])
    if name not in names:
        raise ConfigError(
            f"no layer {name!r} in model {model.name!r}{did_you_mean(name, names)}; its layers: "
            f"{', '.join(names)}",
            where="--layer",
        )
    index = names.index(name)
    if not accept(index):
        layer = model.layers[index]
        raise ConfigError(
            f"layer {name!r} ({type(layer).__name__}) has no {what}; layers that have: "
            f"{', '.join(fitting) or 'none'}",
            where="--layer",
        )
    return index


def layer_output(model, x: np.ndarray, index: int) -> np.ndarray:
    """The output of ``model.layers[index]`` for ``x : (N, *input_shape)``, inference mode;
    through the model's forward, which turns a plugin's failure into one TrainingError and,
    in a graph, runs each layer on the outputs its ``inputs`` name (a merging layer too)."""
    return model.forward(model.check_input(x), training=False, upto=index)


def _spatial(model, index: int) -> bool:
    # Feature maps: an output that still has the input's spatial axes ((H, W, C) or (L, C)).
    return len(model.shapes[index][1]) == len(model.input_shape) >= 2


def featuremap_grid(model, x: np.ndarray, layer: str | None = None, source: str = "") -> Grid:
    """One tile per output channel of a layer (default: the first) for one sample ``x :
    (*input_shape)``; each tile min-max scaled on its own, captioned with its channel."""
    index = find_layer(model, layer, lambda i: _spatial(model, i), "spatial feature maps")
    y = layer_output(model, x[np.newaxis], index)[0]
    maps = y if y.ndim == 3 else y[np.newaxis]  # (H, W, C), or (1, L, C) for 1-D maps
    chosen = model.layers[index]
    title = (
        f"{chosen.name} ({type(chosen).__name__}): {' x '.join(map(str, y.shape))}"
        f"{' for ' + source if source else ''}"
    )
    tiles = [minmax(maps[..., c]) for c in range(y.shape[-1])]
    return make_grid(tiles, [str(c) for c in range(len(tiles))], title)


def _has_kernel(model, index: int) -> bool:
    kernel = model.layers[index].params.get("kernel")
    return kernel is not None and kernel.ndim in (3, 4)  # Conv1D (K, C, F), Conv2D (KH, KW, C, F)


def filter_grid(model, layer: str | None = None) -> Grid:
    """A convolution layer's learned filters (default: the first convolution's).

    With 1 or 3 input channels each filter is one tile (grey, or RGB); otherwise each filter
    takes a row with one tile per input channel (caption ``filter/channel``). Each filter is
    min-max scaled over all its taps, so its channels compare.
    """
    model._require_built()
    index = find_layer(model, layer, lambda i: _has_kernel(model, i), "convolution kernel")
    chosen = model.layers[index]
    w = chosen.params["kernel"]
    if w.ndim == 3:
        w = w[np.newaxis]  # Conv1D: a 1 x K tile
    kh, kw, channels, filters = w.shape
    title = f"{chosen.name} ({type(chosen).__name__}): {filters} filters {kh}x{kw}x{channels}"
    scaled = [minmax(w[..., f]) for f in range(filters)]
    if channels in (1, 3):
        tiles = [s[..., 0] if channels == 1 else s for s in scaled]
        return make_grid(tiles, [str(f) for f in range(filters)], title)
    tiles = [s[..., c] for s in scaled for c in range(channels)]
    labels = [f"{f}/{c}" for f in range(filters) for c in range(channels)]
    return make_grid(tiles, labels, title, columns=channels)


# ----------------------------------------------------------------------------- curves


#: The metrics drawn: loss and accuracy, training and validation.
CURVES = ("loss", "val_loss", "accuracy", "val_accuracy")
#: A metrics.jsonl larger than this is not a run's (a record takes about 100 bytes).
MAX_METRICS_BYTES = 64 << 20
#: Epoch numbers drawn: integers exact in float64, where matplotlib places them (beyond
#: int64 its ticks raised TypeError).
MAX_EPOCH = 2**53
#: Values drawn: finite ones up to this magnitude. matplotlib's tick arithmetic overflows
#: near float64's largest (1e308 gave "arange: cannot compute length"); 1e300 measured fine.
MAX_DRAWN = 1e300


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The per-epoch records of a run's ``metrics.jsonl``: each an object with an integer
    ``epoch`` in [0, MAX_EPOCH] and, for the ``CURVES`` it has, a float (NaN and infinities
    included: see :func:`undrawn`) or None. DataError naming the file and line otherwise."""
    path = Path(run_dir) / "metrics.jsonl"
    refuse_special_file(path, "a metrics file")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_METRICS_BYTES + 1)
        if len(data) > MAX_METRICS_BYTES:
            raise DataError(
                f"larger than {MAX_METRICS_BYTES >> 20} MiB: not a run's metrics", file=str(path)
            )
        lines = data.decode("utf-8").splitlines()
    except FileNotFoundError:
        raise DataError("no metrics.jsonl here: not an nbcnn run folder", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read: {err}", file=str(path)) from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            raise DataError(f"line {number} is not JSON", file=str(path)) from None
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if not is_int(epoch) or not 0 <= epoch <= MAX_EPOCH:
            raise DataError(
                f"line {number} has no integer 'epoch' from 0 to {MAX_EPOCH:,}", file=str(path)
            )
        for key in CURVES:
            value = record.get(key)
            if value is not None and not is_number(value):
                raise DataError(
                    f"line {number}: {key!r} must be a number or null, got {type(value).__name__}",
                    file=str(path),
                )
            if value is not None:
                record[key] = _as_float(value)
        records.append(record)
    if not records:
        raise DataError("holds no epochs yet", file=str(path))
    return records


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond float64, such as 10**400
        return math.inf if value > 0 else -math.inf


def _drawn(value) -> bool:
    """Whether a metric value is drawn: a number within +-MAX_DRAWN (so not NaN or inf)."""
    return value is not None and abs(value) <= MAX_DRAWN


def undrawn(records: Sequence[dict]) -> list[str]:
    """``epoch 3 loss=inf``-style notes of the values :func:`render_curves` leaves out:
    NaN, infinities and magnitudes beyond MAX_DRAWN."""
    return [
        f"epoch {r['epoch']} {key}={r[key]:.3g}"
        for r in records
        for key in CURVES
        if r.get(key) is not None and not _drawn(r[key])
    ]


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise DataError(f"drawing curves needs matplotlib: {PLOTS_HINT}") from None
    return Figure, FigureCanvasAgg


def render_curves(records: Sequence[dict], title: str = "") -> bytes:
    """PNG bytes: loss (left) and accuracy (right) per epoch, training in blue, validation in
    orange (omitted when a run had none). The legend sits above the panels."""
    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=(8, 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    epochs = [r["epoch"] for r in records]
    panels = fig.subplots(1, 2)
    for ax, metric in zip(panels, ("loss", "accuracy")):
        for key, label, colour in ((metric, "train", "C0"), (f"val_{metric}", "validation", "C1")):
            points = [(r["epoch"], r[key]) for r in records if _drawn(r.get(key))]
            if not points:
                continue
            ax.plot(*zip(*points), marker="o", markersize=3, color=colour, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if len(epochs) < 12:
            ax.set_xticks(epochs)
    handles, labels = panels[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=2, frameon=False)
    if title:
        fig.suptitle(title, x=0.02, ha="left", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def write_curves(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    missing_ok: bool = False,
) -> Path | None:
    """Draw ``curves.png`` (or ``out``) from ``run_dir/metrics.jsonl``, atomically. Values
    left out (NaN, inf, beyond MAX_DRAWN) are named in one warning line on stderr.

    Any failure (bad metrics, no matplotlib, a file that cannot be written) raises, or with
    ``missing_ok``, what ``nbcnn train`` passes once its run has succeeded, becomes one warning
    line on stderr naming the picture and ``nbcnn plot RUN_DIR`` (which draws it again and
    shows the error), and ``None``: a finished run is not failed by its picture. With
    ``missing_ok`` a folder without metrics yet (interrupted in its first epoch) gives ``None``
    quietly.
    """
    from nbcnn.io import write_bytes_atomic

    target = Path(out) if out is not None else Path(run_dir) / "curves.png"
    if missing_ok and not (Path(run_dir) / "metrics.jsonl").exists():
        return None
    try:
        records = read_metrics(run_dir)
        left_out = undrawn(records)
        if left_out:
            shown = ", ".join(left_out[:3]) + (", ..." if len(left_out) > 3 else "")
            print(
                f"nbcnn: warning: {Path(run_dir) / 'metrics.jsonl'}: {len(left_out)} value(s) "
                f"not drawn (NaN, infinite or beyond +-{MAX_DRAWN:g}): {shown}",
                file=sys.stderr,
            )
        write_bytes_atomic(target, render_curves(records, title=Path(run_dir).resolve().name))
    except Exception as err:
        if not missing_ok:
            raise
        reason = str(err) if isinstance(err, NbcnnError) else f"{type(err).__name__}: {err}"
        print(
            f"nbcnn: warning: {target} not drawn ({' '.join(reason.split())}); the run is "
            f"complete, and `nbcnn plot {run_dir}` draws it again",
            file=sys.stderr,
        )
        return None
    return target
