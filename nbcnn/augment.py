"""Random augmentation of training batches: the ``augment:`` section of ``train:``.

Names and argument meanings are those of Keras 3's preprocessing layers
(keras/src/layers/preprocessing/image_preprocessing/): ``flip`` is RandomFlip, ``translation``
RandomTranslation, ``rotation`` RandomRotation, ``zoom`` RandomZoom, ``brightness``
RandomBrightness, ``contrast`` RandomContrast. ``crop`` is the classic CIFAR recipe (pad by
``padding`` on every side, take a random crop of the original size; torchvision's
``RandomCrop(32, padding=4)``), which Keras's RandomCrop, having no padding, cannot express.

Each op runs on a whole batch at once with vectorised NumPy, draws its random values from the
one ``numpy.random.Generator`` it is given (``fit`` keeps that stream in the checkpoint, so a
resumed run draws what the uninterrupted one would), and keeps float32. The ops run in the
fixed order of :data:`OPS` (geometry first, then colour), each on the result of the one
before, as a Keras ``Sequential`` of those layers would.

Geometry follows ``keras.ops.image.affine_transform`` (numpy backend, itself JAX's
``map_coordinates``): output pixel ``(x, y)`` (x the column) takes the input at ``(a0 x + a1 y
+ a2, b0 x + b1 y + b2)``; bilinear interpolation blends the four neighbours, each one outside
the image replaced as ``fill_mode`` says (``reflect`` ``d c b a | a b c d | d c b a``,
``wrap``, ``nearest``, or ``constant`` = ``fill_value``).

Two defaults differ from Keras's, on purpose: ``value_range`` of brightness and contrast is
``[0, 1]`` (Keras: ``[0, 255]``) because nbcnn hands the model images already scaled to
[0, 1] (a top above 1 is refused: see :func:`value_range`); and contrast's single ``factor``
f draws from ``[1 - f, 1 + f]`` as Keras's docstring says (its code at the time of writing
draws from ``[1, 1 + f]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from nbcnn.errors import ConfigError
from nbcnn.layers.args import (
    REQUIRED,
    Arg,
    choice,
    integer,
    is_number,
    key_text,
    number,
    parse_arguments,
    show,
)

FILL_MODES = ("reflect", "wrap", "constant", "nearest")
INTERPOLATIONS = ("bilinear", "nearest")
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


def _factor_pair(minimum: float, maximum: float, single: Callable[[float], tuple]):
    """A number or a ``[lower, upper]`` pair within ``[minimum, maximum]`` -> ``[lower,
    upper]`` sorted, as Keras's ``_set_factor``; ``single(f)`` expands one number."""

    def parse(value: Any) -> list[float]:
        check = number(minimum, maximum)
        try:
            if isinstance(value, (list, tuple)) and len(value) == 2:
                return sorted(check(v) for v in value)
            return list(single(check(value)))
        except ValueError:
            raise ValueError(
                f"expected a number or a [lower, upper] pair, each in [{minimum}, {maximum}]"
            ) from None

    return parse


#: Translation, rotation, zoom and brightness: ``f`` means ``[-|f|, |f|]`` (Keras).
symmetric_factor = _factor_pair(-1.0, 1.0, lambda f: (-abs(f), abs(f)))
#: Contrast: ``f`` means ``[f, f]``, drawn from ``[1 - f, 1 + f]`` (Keras's docstring).
contrast_factor = _factor_pair(0.0, 1.0, lambda f: (f, f))


def optional_factor(value: Any) -> list[float] | None:
    return None if value is None else symmetric_factor(value)


def value_range(value: Any) -> list[float]:
    """``[low, high]`` with low < high <= 1, the range images are clipped to.

    A top above 1 is refused: nbcnn hands the model images in [0, 1], so Keras's default
    ``[0, 255]``, copied into a config, would add up to ``factor * 255`` to values of at most 1
    and clip the result to [0, 255]: every image saturated, and training would not say so."""
    if not (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(is_number(v) and math.isfinite(v) for v in value)
        and value[0] < value[1]
    ):
        raise ValueError("expected [low, high] with low < high")
    if value[1] > 1:
        raise ValueError(
            "nbcnn's images are in [0, 1] (integer pixels are divided by 255), so the top of "
            "value_range cannot be above 1 (Keras's default [0, 255] would saturate every "
            "image); use [0, 1] or leave value_range out"
        )
    return [float(value[0]), float(value[1])]


def _fill_args(fill_mode: str) -> dict[str, Arg]:
    return {
        "fill_mode": Arg(choice(*FILL_MODES), fill_mode, "how points outside the image fill"),
        "fill_value": Arg(number(), 0.0, "the value of fill_mode constant"),
    }


_INTERPOLATION = {"interpolation": Arg(choice(*INTERPOLATIONS), "bilinear", "resampling")}

#: Each op's arguments, with Keras's names and defaults (but ``value_range``: see above).
SCHEMAS: dict[str, dict[str, Arg]] = {
    "flip": {"mode": Arg(choice(*FLIP_MODES), "horizontal_and_vertical", "which flips")},
    "crop": {
        "padding": Arg(integer(0, 1 << 16), REQUIRED, "pixels added on each side"),
        **_fill_args("constant"),  # the CIFAR recipe pads with zeros
    },
    "translation": {
        "height_factor": Arg(symmetric_factor, REQUIRED, "vertical shift, fraction of H"),
        "width_factor": Arg(symmetric_factor, REQUIRED, "horizontal shift, fraction of W"),
        **_fill_args("reflect"),
        **_INTERPOLATION,
    },
    "rotation": {
        "factor": Arg(symmetric_factor, REQUIRED, "angle, fraction of 2 pi"),
        **_fill_args("reflect"),
        **_INTERPOLATION,
    },
    "zoom": {
        "height_factor": Arg(symmetric_factor, REQUIRED, "vertical zoom; > 0 zooms out"),
        "width_factor": Arg(optional_factor, None, "horizontal zoom; null keeps the aspect"),
        **_fill_args("reflect"),
        **_INTERPOLATION,
    },
    "brightness": {
        "factor": Arg(symmetric_factor, REQUIRED, "added, fraction of the value range"),
        "value_range": Arg(value_range, [0.0, 1.0], "range of the pixel values"),
    },
    "contrast": {
        "factor": Arg(contrast_factor, REQUIRED, "contrast factor in [1 - lower, 1 + upper]"),
        "value_range": Arg(value_range, [0.0, 1.0], "range of the pixel values"),
    },
}
#: The ops in the order they run.
OPS = tuple(SCHEMAS)
#: What a value that is not a mapping stands for (``flip: horizontal``, ``rotation: 0.1``,
#: ``translation: 0.1`` for both factors): Keras's positional arguments.
SHORTHAND = {
    "flip": ("mode",),
    "crop": ("padding",),
    "translation": ("height_factor", "width_factor"),
    "rotation": ("factor",),
    "zoom": ("height_factor",),
    "brightness": ("factor",),
    "contrast": ("factor",),
}
#: Each op written with its shorthand, for the hint given to a Keras layer name used as a key.
EXAMPLES = {
    "flip": "flip: horizontal",
    "crop": "crop: {padding: 4}",
    "translation": "translation: 0.1",
    "rotation": "rotation: 0.05",
    "zoom": "zoom: 0.1",
    "brightness": "brightness: 0.2",
    "contrast": "contrast: 0.2",
}


def _keras_name_hint(key: Any, where: str) -> None:
    """ConfigError for a Keras layer name used as an op key (``RandomFlip``, ``random_flip``):
    the key that op has here, with an example."""
    if not isinstance(key, str):
        return
    name = key.replace("_", "").lower()
    op = name.removeprefix("random")
    if op not in SCHEMAS or op == name:
        return
    keras = "Random" + op.capitalize()
    raise ConfigError(
        f"Keras's {keras} layer is the key {op!r} here ({EXAMPLES[op]}); the keys are "
        f"{', '.join(OPS)}",
        where=f"{where}.{key_text(key)}",
    )


def parse_augment(section: Any, where: str = "train.augment") -> dict[str, dict] | None:
    """Validate an ``augment:`` mapping into ``{op: {argument: value}}`` with every default
    filled in and factors as ``[lower, upper]`` (what the run's config.yaml records), or None
    when no op is on. ConfigError names the key (``train.augment.rotation.factor``)."""
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise ConfigError(
            f"expected a mapping of ops like {{flip: horizontal, crop: {{padding: 4}}}}, got "
            f"{show(section)}",
            where=where,
        )
    for key in section:
        _keras_name_hint(key, where)
    try:
        ops = parse_arguments({op: Arg(lambda v: v, None) for op in OPS}, section, what="augment")
    except ConfigError as err:
        raise err.located(where=where) from None
    parsed = {}
    for op, value in ops.items():
        if value is None:
            continue
        if not isinstance(value, Mapping):
            value = dict.fromkeys(SHORTHAND[op], value)
        try:
            parsed[op] = parse_arguments(SCHEMAS[op], value, what=f"augment {op}")
        except ConfigError as err:
            raise err.located(where=f"{where}.{op}") from None
    return parsed or None


# ---------------------------------------------------------------------- sampling


def _fixed_index(index: np.ndarray, size: int, fill_mode: str):
    """``(index inside [0, size), inside)`` for integer indices: ``inside`` is None except for
    ``constant``, where it marks the indices that were inside the image."""
    if fill_mode == "reflect":  # d c b a | a b c d | d c b a: period 2 * size
        folded = np.mod(index, 2 * size)
        return np.where(folded >= size, 2 * size - 1 - folded, folded), None
    if fill_mode == "wrap":
        return np.mod(index, size), None
    inside = (index >= 0) & (index < size) if fill_mode == "constant" else None
    return np.clip(index, 0, size - 1), inside


def _round_half_away(a: np.ndarray) -> np.ndarray:
    # keras/src/backend/numpy/image.py: nearest rounds half away from zero (np.round would
    # round half to even).
    return np.sign(a) * np.floor(np.abs(a) + 0.5)


def sample(
    x: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    fill_mode: str,
    fill_value: float,
    interpolation: str,
) -> np.ndarray:
    """Resample each image at the given input coordinates.

    x : (B, H, W, C) float32; rows, cols : (B, H, W) float32, the input row and column that
    output pixel ``[b, i, j]`` takes. Returns (B, H, W, C) float32.
    """
    b, h, w, c = x.shape
    if interpolation == "nearest":
        taps = [(_round_half_away(rows), _round_half_away(cols), None)]
    else:
        r0, c0 = np.floor(rows), np.floor(cols)
        fr, fc = rows - r0, cols - c0
        taps = [
            (r0, c0, (1 - fr) * (1 - fc)),
            (r0, c0 + 1, (1 - fr) * fc),
            (r0 + 1, c0, fr * (1 - fc)),
            (r0 + 1, c0 + 1, fr * fc),
        ]
    # One flat gather per tap from (B*H*W, C) rows: far faster than a 3-index fancy index.
    flat = x.reshape(-1, c)
    base = (np.arange(b, dtype=np.intp) * (h * w))[:, None, None]
    out = np.zeros_like(x)
    for r, q, weight in taps:
        ri, r_inside = _fixed_index(r.astype(np.intp), h, fill_mode)
        ci, c_inside = _fixed_index(q.astype(np.intp), w, fill_mode)
        values = np.take(flat, base + ri * w + ci, axis=0)  # (B, H, W, C)
        if fill_mode == "constant":
            values = np.where((r_inside & c_inside)[..., None], values, np.float32(fill_value))
        out += values if weight is None else weight[..., None] * values
    return out


def affine(x: np.ndarray, matrices: np.ndarray, args: Mapping[str, Any]) -> np.ndarray:
    """``x : (B, H, W, C) float32`` warped by ``matrices : (B, 6)`` = ``[a0, a1, a2, b0, b1,
    b2]`` per image (output (x, y) takes input (a0 x + a1 y + a2, b0 x + b1 y + b2)), with the
    op's ``fill_mode``, ``fill_value`` and ``interpolation``."""
    _, h, w, _ = x.shape
    m = matrices.astype(np.float32)[:, :, None, None]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cols = m[:, 0] * xx + m[:, 1] * yy + m[:, 2]
    rows = m[:, 3] * xx + m[:, 4] * yy + m[:, 5]
    return sample(x, rows, cols, args["fill_mode"], args["fill_value"], args["interpolation"])


# ---------------------------------------------------------------------- the ops
# Each op: (x : (B, H, W, C) float32, rng, its parsed arguments) -> (B, H, W, C) float32.


def flip(x: np.ndarray, rng: np.random.Generator, args: Mapping[str, Any]) -> np.ndarray:
    """Each image flipped with probability 1/2 (keras random_flip.py), left-right for
    ``horizontal``, upside down for ``vertical``, each independently for both."""
    out = x.copy()
    if args["mode"] in ("horizontal", "horizontal_and_vertical"):
        chosen = rng.random(len(x)) < 0.5
        out[chosen] = out[chosen, :, ::-1]
    if args["mode"] in ("vertical", "horizontal_and_vertical"):
        chosen = rng.random(len(x)) < 0.5
        out[chosen] = out[chosen, ::-1]
    return out


def crop(x: np.ndarray, rng: np.random.Generator, args: Mapping[str, Any]) -> np.ndarray:
    """Pad by ``padding`` on every side, then a random H x W crop: output (i, j) takes input
    (i + dy, j + dx) with dy, dx uniform integers in [-padding, padding]."""
    b, h, w, _ = x.shape
    p = args["padding"]
    shifts = rng.integers(-p, p + 1, size=(b, 2)).astype(np.float32)  # (dy, dx)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rows = yy + shifts[:, 0, None, None]
    cols = xx + shifts[:, 1, None, None]
    return sample(x, rows, cols, args["fill_mode"], args["fill_value"], "nearest")


def translation_matrices(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """``(B, 6)`` shifting each image down by dy and right by dx pixels (random_translation.py
    ``_get_translation_matrix``)."""
    one, zero = np.ones_like(dx), np.zeros_like(dx)
    return np.stack([one, zero, -dx, zero, one, -dy], axis=1)


def translation(x: np.ndarray, rng: np.random.Generator, args: Mapping[str, Any]) -> np.ndarray:
    """Shift by ``height_factor * H`` rows and ``width_factor * W`` columns (fractions drawn
    per image; positive is down and right)."""
    b, h, w, _ = x.shape
    dy = rng.uniform(*args["height_factor"], size=b) * h
    dx = rng.uniform(*args["width_factor"], size=b) * w
    return affine(x, translation_matrices(dy, dx), args)


def rotation_matrices(h: int, w: int, angles: np.ndarray) -> np.ndarray:
    """``(B, 6)`` rotating each image by ``angles`` radians counter-clockwise about its centre
    ((W - 1) / 2, (H - 1) / 2); Keras 3.0's random_rotation.py ``_get_rotation_matrix``."""
    cos, sin = np.cos(angles), np.sin(angles)
    x_offset = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2
    y_offset = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2
    return np.stack([cos, -sin, x_offset, sin, cos, y_offset], axis=1)


def rotation(x: np.ndarray, rng: np.random.Generator, args: Mapping[str, Any]) -> np.ndarray:
    """Rotate by ``factor * 2 pi`` (drawn per image; positive is counter-clockwise)."""
    b, h, w, _ = x.shape
    angles = rng.uniform(*args["factor"], size=b) * 2 * np.pi
    return affine(x, rotation_matrices(h, w, angles), args)


def zoom_matrices(h: int, w: int, zy: np.ndarray, zx: np.ndarray) -> np.ndarray:
    """``(B, 6)`` scaling the sampled area by (zy, zx) about the centre: a zoom above 1 takes
    in more of the input (zooms out); random_zoom.py ``_get_zoom_matrix``."""
    zero = np.zeros_like(zx)
    return np.stack([zx, zero, (w - 1) / 2 * (1 - zx), zero, zy, (h - 1) / 2 * (1 - zy)], axis=1)


def zoom(x: np.ndarray, rng: np.random.Generator, args: Mapping[str, Any]) -> np.ndarray:
    """Zoom by ``1 + height_factor`` vertically and ``1 + width_factor`` horizontally (the
    same draw for both when width_factor is null); positive factors zoom out."""
    b, h, w, _ = x.shape
    zy = 1 + rng.uniform(*args["height_factor"], size=b)
    zx = zy if args["width_factor"] is None else 1 + rng.uniform(*args["width_factor"], size=b)
    return affine(x, zoom_matrices(h, w, zy, zx), args)


def brightness(x: np.ndarray, rng: np.random.Generator, args: Mapping[str, Any]) -> np.ndarray:
    """Add ``factor * (high - low)`` (drawn per image, the same for every channel), then clip
    to ``value_range`` (random_brightness.py)."""
    low, high = args["value_range"]
    delta = (rng.uniform(*args["factor"], size=len(x)) * (high - low)).astype(np.float32)
    return np.clip(x + delta[:, None, None, None], np.float32(low), np.float32(high))


def contrast(x: np.ndarray, rng: np.random.Generator, args: Mapping[str, Any]) -> np.ndarray:
    """``(x - mean) * f + mean`` per image and channel (mean over H and W), f drawn per image
    from ``[1 - lower, 1 + upper]``, then clipped to ``value_range`` (random_contrast.py)."""
    lower, upper = args["factor"]
    f = rng.uniform(1 - lower, 1 + upper, size=len(x)).astype(np.float32)[:, None, None, None]
    mean = x.mean(axis=(1, 2), keepdims=True, dtype=np.float32)
    low, high = args["value_range"]
    return np.clip((x - mean) * f + mean, np.float32(low), np.float32(high))


_APPLY = {
    "flip": flip,
    "crop": crop,
    "translation": translation,
    "rotation": rotation,
    "zoom": zoom,
    "brightness": brightness,
    "contrast": contrast,
}


class Augmenter:
    """The ops of a parsed ``augment:`` section, applied in :data:`OPS` order.

    ``augmenter(x, rng)`` with ``x : (B, H, W, C) float32`` returns a new (B, H, W, C) float32
    batch; ``x`` is not changed.
    """

    def __init__(self, config: Mapping[str, Mapping[str, Any]]):
        self.config = {op: dict(config[op]) for op in OPS if op in config}

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for op, args in self.config.items():
            x = _APPLY[op](x, rng, args)
        return x

    def check_input_shape(self, input_shape: tuple[int, ...], where: str) -> None:
        """ConfigError at ``where`` unless the model takes images ``(H, W, C)``."""
        if len(input_shape) != 3:
            raise ConfigError(
                f"augmentation works on images (H, W, C); this model takes samples of shape "
                f"{list(input_shape)}",
                where=where,
            )


def augment_rng(seed: int) -> np.random.Generator:
    """The run's augmentation stream: its own, so that turning augmentation on or off leaves
    the shuffling stream (``[seed, 1]``) as it was."""
    return np.random.default_rng([seed, 2])


def preview(
    x: np.ndarray, augmenter: Augmenter, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[str]]:
    """Tiles and captions for a grid of originals beside their augmented versions.

    x : (N, H, W, C) float32 in [0, 1] with C 1 or 3. Returns 2N tiles, ``(H, W)`` (grey) or
    ``(H, W, 3)`` floats clipped to [0, 1], in pairs: sample i, then i augmented.
    """
    c = x.shape[-1]
    if c not in (1, 3):
        raise ConfigError(
            f"a preview draws grey (1 channel) or RGB (3 channel) images; the model takes {c} "
            "channels",
            where="input_shape",
        )
    augmented = augmenter(x, rng)
    tiles, labels = [], []
    for i, (a, b) in enumerate(zip(x, augmented)):
        for image, label in ((a, f"{i}"), (b, f"{i} aug")):
            tiles.append(np.clip(image[..., 0] if c == 1 else image, 0.0, 1.0))
            labels.append(label)
    return tiles, labels


def preview_grid(x: np.ndarray, augmenter: Augmenter, rng: np.random.Generator, title: str):
    """:func:`preview`'s tiles laid out by :func:`nbcnn.pictures.make_grid`, four pairs to a
    row (an original always beside its augmented version)."""
    from nbcnn.pictures import make_grid

    tiles, labels = preview(x, augmenter, rng)
    return make_grid(tiles, labels, title, columns=min(len(tiles), 8))
