"""YAML config -> validated model and train specs, with errors that say where.

Loading is strict: ``yaml.SafeLoader`` (no tags run), duplicate keys refused, aliases capped
(so an alias bomb fails fast), devices refused, and at most 1 MiB read (a cap on the read
itself, so it holds for pipes too). Every problem raises :class:`~nbcnn.errors.ConfigError`
naming the file and the key path (``layers[2].kernel_size``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import yaml

from nbcnn import datasets
from nbcnn.errors import ConfigError
from nbcnn.layers.args import (
    MAX_INT,
    TOO_LARGE,
    Arg,
    boolean,
    choice,
    did_you_mean,
    int_tuple,
    integer,
    key_text,
    number,
    optional,
    parse_arguments,
    positive_int,
    show,
    string,
)

MAX_CONFIG_BYTES = 1 << 20
MAX_ALIASES = 64
TOP_LEVEL_KEYS = ("name", "input_shape", "layers", "train")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and more than MAX_ALIASES aliases."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"more than {MAX_ALIASES} YAML aliases (alias bomb?)", mark
                )
        return super().compose_node(parent, index)

    def construct_object(self, node, deep=False):
        # PyYAML's scalar constructors raise plain Python errors on values their tag cannot
        # hold (`!!float ''`, `!!bool maybe`, the date 2001-13-45, an int of 5,000 digits).
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            text = node.value if isinstance(node.value, str) else "this value"
            what = repr(text if len(text) <= 40 else text[:37] + "...")
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {what} as {tag}", node.start_mark
            ) from None

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):  # `!!set 0`: the base class says why
            return super().construct_mapping(node, deep)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # `? [a, b]` keys: refuse before `in seen`
                raise yaml.constructor.ConstructorError(
                    None, None, f"a {type(key).__name__} cannot be a key", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {show(key)}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse one YAML document from ``path`` strictly; ConfigError with the line on failure."""
    file = str(path)
    try:
        mode = os.stat(file).st_mode
        # A device is not a config (/dev/zero never ends); a pipe is (`summary /dev/stdin`).
        if stat.S_ISDIR(mode):
            raise ConfigError("is a folder, not a config file", file=file)
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise ConfigError("not a regular file or a pipe; refused", file=file)
        with open(file, "rb") as handle:
            # One byte past the cap, whatever size the file claims: a pipe's size is 0.
            text = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"cannot read the config: {err.strerror or err}", file=file) from None
    return parse_yaml(text, file)


def parse_yaml(text: str | bytes, file: str | None = None) -> Any:
    """Parse one YAML document (a file's bytes or a str, at most MAX_CONFIG_BYTES) strictly;
    ConfigError with the line on failure, naming ``file`` when there is one."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config is over {MAX_CONFIG_BYTES:,} bytes; refused", file=file)
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        what = err.problem or err.context or "invalid YAML"
        raise ConfigError(f"not valid YAML: {what}", file=file, where=where) from None
    except yaml.reader.ReaderError as err:
        raise ConfigError(
            f"not a text file: {err.reason} at byte {err.position}", file=file
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML: {' '.join(str(err).split())}", file=file) from None
    except UnicodeDecodeError:
        raise ConfigError("not a text file (not UTF-8)", file=file) from None
    except RecursionError:
        raise ConfigError("YAML nested too deeply", file=file) from None


@dataclass
class LayerSpec:
    """One entry of ``layers``: its type, optional name, Keras keyword arguments and where
    its input comes from (``inputs``, as written: None for the previous layer; see
    :func:`check_inputs`)."""

    index: int
    type: str
    name: str | None
    kwargs: dict[str, Any]
    inputs: Any = None


#: The name by which a layer's ``inputs`` refers to the model's input (Keras 3's name for a
#: functional model's InputLayer); no layer may take it.
INPUT_NAME = "input_layer"

#: Most inputs one layer may list (a Concatenate of many branches stays far below).
MAX_INPUTS = 64


def check_inputs(value: Any, where: str) -> Any:
    """A layer's ``inputs``: a layer name, a relative index (-1 the previous layer, -2 the
    one before...), or a non-empty list of them (layers that merge several inputs);
    ConfigError otherwise. Names and indices are resolved against the model's layers
    later (nbcnn.graph), where unknown names and forward references are refused."""

    def one(item: Any, at: str) -> Any:
        if isinstance(item, str) and item:
            return item
        if isinstance(item, int) and not isinstance(item, bool):
            if item < 0:
                return item
            raise ConfigError(
                f"a relative index counts back from this layer: -1 is the previous layer, "
                f"-2 the one before; got {item} (name the layer instead to refer to it "
                "wherever it is)",
                where=at,
            )
        raise ConfigError(
            f"expected a layer name or a negative relative index (-1 the previous layer), "
            f"got {show(item)}",
            where=at,
        )

    if isinstance(value, list):
        if not value:
            raise ConfigError("expected at least one input, got an empty list", where=where)
        if len(value) > MAX_INPUTS:
            raise ConfigError(f"at most {MAX_INPUTS} inputs, got {len(value)}", where=where)
        return [one(item, f"{where}[{k}]") for k, item in enumerate(value)]
    return one(value, where)


@dataclass
class ModelSpec:
    """A validated config: the model and, if present, the raw ``train`` mapping."""

    input_shape: tuple[int, ...]
    layers: list[LayerSpec]
    name: str = "model"
    train: dict[str, Any] | None = None
    file: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def load_spec(path: str | os.PathLike, input_shape: tuple[int, ...] | None = None) -> ModelSpec:
    """Read and validate the model part of a config file (``train`` checked by train_spec)."""
    file = str(path)
    return spec_from_document(read_yaml(file), input_shape=input_shape, file=file)


def spec_from_document(
    doc: Any, input_shape: tuple[int, ...] | None = None, file: str | None = None
) -> ModelSpec:
    """Validate a parsed config (a file's YAML or a dict from Python): the model part, and
    the ``train`` section when there is one; errors name ``file`` when there is one."""
    try:
        spec = parse_spec(doc, input_shape=input_shape)
        if spec.train is not None:
            parse_train(spec.train, default_output=f"runs/{spec.name}")
    except ConfigError as err:
        raise err.located(file=file) from None
    spec.file = file
    return spec


def parse_spec(doc: Any, input_shape: tuple[int, ...] | None = None) -> ModelSpec:
    """Validate an already-parsed YAML document; ConfigError names the key path."""
    if not isinstance(doc, dict):
        raise ConfigError(
            f"the config must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}, got {_kind(doc)}"
        )
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            hint = did_you_mean(key, list(TOP_LEVEL_KEYS))
            raise ConfigError(
                f"unknown top-level key{hint}; allowed: {', '.join(TOP_LEVEL_KEYS)}",
                where=key_text(key),
            )
    name = doc.get("name")
    name = "model" if name is None else check_model_name(name, "name")
    if input_shape is None:
        if "input_shape" not in doc:
            layers = doc.get("layers") if isinstance(doc.get("layers"), list) else []
            on_a_layer = any(isinstance(e, dict) and "input_shape" in e for e in layers)
            raise ConfigError(
                "missing: give the shape of one sample, channels-last, e.g. [28, 28, 1]"
                + (
                    "; nbcnn takes it at the top level of the config, not on the first "
                    "layer as Keras's Sequential does: move it up"
                    if on_a_layer
                    else ""
                ),
                where="input_shape",
            )
        input_shape = _parse_input_shape(doc["input_shape"])
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        got = "missing" if "layers" not in doc else f"got {_kind(layers)}"
        got = "got an empty list" if layers == [] else got
        raise ConfigError(
            f"expected a non-empty list of layers like '- type: Conv2D', {got}", where="layers"
        )
    specs = [_parse_layer(i, entry) for i, entry in enumerate(layers)]
    names = {}
    for spec in specs:
        if spec.name is not None:
            if spec.name in names:
                raise ConfigError(
                    f"duplicate layer name {show(spec.name)} (also layers[{names[spec.name]}])",
                    where=f"layers[{spec.index}].name",
                )
            names[spec.name] = spec.index
    train = doc.get("train")
    if "train" in doc and not isinstance(train, dict):
        raise ConfigError(f"expected a mapping, got {_kind(train)}", where="train")
    return ModelSpec(input_shape=input_shape, layers=specs, name=name, train=train, raw=doc)


def _parse_input_shape(value: Any) -> tuple[int, ...]:
    ok = (
        isinstance(value, list)
        and 1 <= len(value) <= 4
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    )
    if not ok:
        batch = isinstance(value, list) and len(value) > 1 and value[0] is None
        raise ConfigError(
            "expected a list of 1 to 4 ints >= 1, channels-last: [H, W, C] for 2D models, "
            f"[L, C] for 1D; got {show(value)}"
            + ("; drop the batch axis (None): input_shape is one sample's shape" if batch else ""),
            where="input_shape",
        )
    if max(value) > MAX_INT:
        raise ConfigError(f"{TOO_LARGE}, got {show(value)}", where="input_shape")
    return tuple(value)


def _parse_layer(index: int, entry: Any) -> LayerSpec:
    where = f"layers[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(
            f"expected a mapping like '{{type: Dense, units: 10}}', got {_kind(entry)}",
            where=where,
        )
    if "type" not in entry:
        raise ConfigError("missing 'type' (the layer class, e.g. Conv2D)", where=where)
    type_name = entry["type"]
    if not isinstance(type_name, str) or not type_name:
        raise ConfigError(
            f"expected a layer type name, got {show(type_name)}", where=f"{where}.type"
        )
    name = entry.get("name")
    if name is not None:
        check_layer_name(name, f"{where}.name")
        if name == INPUT_NAME:
            raise ConfigError(
                f"{INPUT_NAME!r} names the model's input (a layer's inputs refer to it by "
                "that name); choose another name",
                where=f"{where}.name",
            )
    inputs = None
    if "inputs" in entry:
        inputs = check_inputs(entry["inputs"], f"{where}.inputs")
    kwargs = {k: v for k, v in entry.items() if k not in ("type", "name", "inputs")}
    bad_keys = [k for k in kwargs if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"argument names must be strings, got {show(bad_keys[0])}", where=where)
    return LayerSpec(index=index, type=type_name, name=name, kwargs=kwargs, inputs=inputs)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", str: f"the string {show(value)}"}.get(
        type(value), f"{type(value).__name__} {show(value)}"
    )


# ---------------------------------------------------------------------- names and paths

#: Linux's limits in bytes: a whole path (PATH_MAX counts the final NUL) and one folder or file
#: name in it (NAME_MAX); past them mkdir fails with "File name too long".
PATH_MAX = 4096
NAME_MAX = 255


def _refuse_unprintable(text: str, where: str) -> None:
    """Names are printed by summary and in messages: a control character (ESC, CR, NUL) or
    another unprintable one (a bidi override) would rewrite the terminal or hide text."""
    if not text.isprintable():
        i, char = next((i, c) for i, c in enumerate(text) if not c.isprintable())
        raise ConfigError(
            f"holds the unprintable character {char!r} at position {i}; names must be printable",
            where=where,
        )


def check_layer_name(name: Any, where: str) -> str:
    """A layer's ``name``: a printable non-empty string without '/', as Keras 3 requires
    (weights files store the arrays as ``layer/param``)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"expected a non-empty string, got {show(name)}", where=where)
    _refuse_unprintable(name, where)
    if "/" in name:
        raise ConfigError(
            f"cannot contain '/' (weights are stored as 'layer/param'), got {show(name)}",
            where=where,
        )
    return name


def check_model_name(name: Any, where: str) -> str:
    """A model's ``name``: printable, and usable as the one folder name of its default output
    ``runs/<name>``, so that a run without ``train.output`` stays under ``runs/``."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"expected a non-empty string, got {show(name)}", where=where)
    _refuse_unprintable(name, where)
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ConfigError(
            "cannot contain '/' or '\\' or be '.' or '..': the default output folder is "
            f"runs/<name>; got {show(name)}",
            where=where,
        )
    size = len(name.encode("utf-8"))  # printable, so no lone surrogates
    if size > NAME_MAX:
        raise ConfigError(
            f"is {size} bytes in UTF-8; at most {NAME_MAX} (it names the folder runs/<name>)",
            where=where,
        )
    return name


def check_output_path(path: Any, where: str) -> str:
    """``path`` as a str if it can name an output folder, else ConfigError at ``where``
    (``train.output``, ``--output``): a non-empty string without control characters (NUL
    ends a path in the kernel's calls), each name in it at most NAME_MAX bytes and the whole
    below PATH_MAX bytes in the file system's encoding."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise ConfigError(f"expected a non-empty folder path, got {_kind(path)}", where=where)
    control = next((i for i, c in enumerate(path) if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None)
    if control is not None:
        raise ConfigError(
            f"holds the control character {path[control]!r} at position {control}; a folder "
            "path cannot hold control characters",
            where=where,
        )
    try:
        data = os.fsencode(path)
    except UnicodeEncodeError as err:
        raise ConfigError(
            f"cannot be a file name: {err.reason} at position {err.start}", where=where
        ) from None
    if len(data) >= PATH_MAX:
        raise ConfigError(
            f"is {len(data):,} bytes long; a path has at most {PATH_MAX - 1} (PATH_MAX)",
            where=where,
        )
    longest = max(data.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise ConfigError(
            f"holds the name {show(os.fsdecode(longest))} of {len(longest)} bytes; a folder "
            f"or file name has at most {NAME_MAX} (NAME_MAX)",
            where=where,
        )
    return path


# ---------------------------------------------------------------------- train section


@dataclass
class TrainSpec:
    """The ``train:`` section with every default filled in (README documents each key)."""

    dataset: str = "digits"
    path: str | None = None
    label_mode: str = "fine"
    validation_split: float = 0.1
    epochs: int = 10
    batch_size: int = 128
    optimizer: dict[str, Any] = field(default_factory=lambda: {"type": "adam"})
    lr_schedule: dict[str, Any] | None = None
    #: The resolved loss mapping (nbcnn.losses.Loss.config()): ``{type, from_logits, ...}``.
    loss: dict[str, Any] = field(default_factory=lambda: {"type": "categorical_crossentropy"})
    #: The resolved metrics (nbcnn.metrics.Metric.config() each); None: the loss's default.
    metrics: list[Any] | None = None
    seed: int = 0
    output: str = "runs/model"
    early_stopping: dict[str, Any] | None = None
    threads: int | None = None
    augment: dict[str, dict[str, Any]] | None = None  # nbcnn.augment.parse_augment's form
    # dataset folder and csv only (nbcnn.imagefolder; docs/own-images.md): None = the default
    # that input_shape implies (image_size, color_mode); test_split resolved by parse_train.
    test_path: str | None = None
    test_split: float | None = None
    image_size: tuple[int, int] | None = None
    color_mode: str | None = None
    interpolation: str = "bilinear"
    stream: bool | str = "auto"


DATASETS = ("digits", "npz", "idx", "synthetic", "folder", "csv", *datasets.NAMES)
#: The datasets of image files of your own (nbcnn.imagefolder reads them).
IMAGE_DATASETS = ("folder", "csv")
#: ``color_mode`` -> (Pillow mode, channels). Here, not in nbcnn.imagefolder, so that reading
#: a config imports no numpy.
COLOR_MODES = {"grayscale": ("L", 1), "rgb": ("RGB", 3), "rgba": ("RGBA", 4)}
#: ``interpolation`` (Keras's names) -> Pillow's resampling filter. Pillow's filters widen
#: their support when shrinking (antialiased), Keras's tf.image.resize does not by default.
INTERPOLATIONS = {
    "bilinear": "BILINEAR",
    "nearest": "NEAREST",
    "bicubic": "BICUBIC",
    "area": "BOX",
    "lanczos3": "LANCZOS",
}
#: Fraction of the files held out for testing when there is no ``test_path``.
DEFAULT_TEST_SPLIT = 0.2


def _stream(value: Any) -> bool | str:
    if isinstance(value, bool) or value == "auto":
        return value
    raise ValueError("expected auto, true or false")


def _mapping(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError("expected a mapping")
    return value


def _name_or_mapping(value: Any) -> dict:
    """``cosine`` or ``{type: cosine, ...}``, as the optimizer key takes ``adam``."""
    if isinstance(value, str) and value:
        return {"type": value}
    return _mapping(value)


_DATA_SCHEMA = {
    "dataset": Arg(choice(*DATASETS), "digits", "which data"),
    "path": Arg(optional(string), None, "file or folder for npz and idx"),
    "label_mode": Arg(choice(*datasets.LABEL_MODES), "fine", "cifar100's fine or coarse labels"),
    "validation_split": Arg(number(0.0, 1.0, max_open=True), 0.1, "fraction held out"),
    "test_path": Arg(optional(string), None, "folder or CSV file of the test images"),
    "test_split": Arg(optional(number(0.0, 1.0, max_open=True)), None, "fraction for testing"),
    "image_size": Arg(optional(int_tuple(2)), None, "[height, width] (input_shape's)"),
    "color_mode": Arg(optional(choice(*COLOR_MODES)), None, "grayscale, rgb or rgba"),
    "interpolation": Arg(choice(*INTERPOLATIONS), "bilinear", "resizing filter"),
    "stream": Arg(_stream, "auto", "read batches from disk: auto, true or false"),
}
#: The keys of the image datasets, with their defaults (taken from the schema).
IMAGE_KEYS = {
    key: _DATA_SCHEMA[key].default
    for key in ("test_path", "test_split", "image_size", "color_mode", "interpolation", "stream")
}
_EARLY_STOPPING_SCHEMA = {
    "patience": Arg(integer(0), 3, "epochs without improvement before stopping"),
    "monitor": Arg(choice("val_loss", "val_accuracy", "loss", "accuracy"), "val_loss", "metric"),
    "min_delta": Arg(number(0.0), 0.0, "smallest change that counts as improvement"),
    "restore_best_weights": Arg(boolean, False, "end with the best epoch's weights"),
}
_TRAIN_SCHEMA = {
    "data": Arg(_mapping, None, "data section"),
    "epochs": Arg(integer(1), 10, "passes over the training data"),
    "batch_size": Arg(positive_int, 128, "samples per step"),
    "optimizer": Arg(lambda v: v, "adam", "optimizer"),
    "lr_schedule": Arg(optional(_name_or_mapping), None, "learning-rate schedule"),
    "loss": Arg(lambda v: v, "categorical_crossentropy", "loss (nbcnn.losses)"),
    "metrics": Arg(lambda v: v, None, "metrics (nbcnn.metrics)"),
    "seed": Arg(integer(0), 0, "random seed"),
    "output": Arg(string, None, "output folder"),
    "early_stopping": Arg(optional(_mapping), None, "early stopping"),
    "threads": Arg(optional(integer(1, 1024)), None, "numba threads"),
    "augment": Arg(lambda v: v, None, "training-batch augmentation (nbcnn.augment)"),
}


def parse_train(section: dict[str, Any] | None, *, default_output: str) -> TrainSpec:
    """Validate a ``train:`` mapping (None for all defaults) into a TrainSpec.

    Errors carry ``where`` as ``train.<key>``; the optimizer and schedule are checked by
    nbcnn.optim, which knows their arguments.
    """
    from nbcnn import optim
    from nbcnn.losses import make_loss
    from nbcnn.metrics import make_metrics

    section = {} if section is None else section
    try:
        top = parse_arguments(_TRAIN_SCHEMA, section, what="train")
    except ConfigError as err:
        raise err.located(where="train") from None
    try:
        data = parse_arguments(_DATA_SCHEMA, top["data"] or {}, what="train.data")
    except ConfigError as err:
        raise err.located(where="train.data") from None
    if data["dataset"] in ("npz", "idx") and data["path"] is None:
        raise ConfigError(
            f"dataset {data['dataset']!r} needs a path (the .npz file or the IDX folder)",
            where="train.data.path",
        )
    if data["dataset"] in datasets.NAMES and data["path"] is not None:
        raise ConfigError(
            f"dataset {data['dataset']!r} is downloaded into the dataset cache and takes no "
            "path; to read a file of your own, use dataset npz or idx (docs/datasets.md)",
            where="train.data.path",
        )
    datasets.check_label_mode(data["label_mode"], data["dataset"], "train.data.label_mode")
    _check_image_keys(data)
    early = None
    if top["early_stopping"] is not None:
        try:
            early = parse_arguments(
                _EARLY_STOPPING_SCHEMA, top["early_stopping"], what="train.early_stopping"
            )
        except ConfigError as err:
            raise err.located(where="train.early_stopping") from None
    optimizer = top["optimizer"]
    if isinstance(optimizer, str):
        optimizer = {"type": optimizer}
    # Recorded resolved (every default written in), so a resume compares every option.
    optimizer = optim.make_optimizer(optimizer).config()  # ConfigError(where="train.optimizer.*")
    loss = make_loss(top["loss"])  # raises ConfigError(where="train.loss...")
    metrics = make_metrics(top["metrics"], loss)  # raises ConfigError(where="train.metrics[i]")
    if early and early["monitor"].removeprefix("val_") not in ["loss", *(m.name for m in metrics)]:
        raise ConfigError(
            f"monitor {early['monitor']!r} is not recorded: train.metrics is "
            f"{[m.name for m in metrics]}",
            where="train.early_stopping.monitor",
        )
    schedule = top["lr_schedule"]
    if schedule is not None:
        optim.make_schedule(schedule, 0.001, top["epochs"])
    if top["output"] is not None:
        check_output_path(top["output"], "train.output")
    from nbcnn.augment import parse_augment

    augment = parse_augment(top["augment"])  # raises ConfigError(where="train.augment...")
    return TrainSpec(
        dataset=data["dataset"],
        path=data["path"],
        label_mode=data["label_mode"],
        validation_split=data["validation_split"],
        epochs=top["epochs"],
        batch_size=top["batch_size"],
        optimizer=optimizer,
        lr_schedule=schedule,
        loss=loss.config(),
        metrics=[m.config() for m in metrics],
        seed=top["seed"],
        output=top["output"] or default_output,
        early_stopping=early,
        threads=top["threads"],
        augment=augment,
        **{key: data[key] for key in IMAGE_KEYS},
    )


def _check_image_keys(data: dict[str, Any]) -> None:
    """The keys of folder and csv datasets: refused elsewhere; ``test_split`` resolved (0.2,
    or 0 with a ``test_path``, which is the test set then)."""
    if data["dataset"] not in IMAGE_DATASETS:
        for key, default in IMAGE_KEYS.items():
            if data[key] != default:
                raise ConfigError(
                    f"applies to dataset folder or csv only, not {data['dataset']!r}",
                    where=f"train.data.{key}",
                )
        return
    if data["path"] is None:
        raise ConfigError(
            f"dataset {data['dataset']!r} needs a path (the folder with one subfolder per "
            "class, or the CSV file)",
            where="train.data.path",
        )
    data["test_split"] = resolve_test_split(data["test_path"], data["test_split"], "train.data")


def resolve_test_split(test_path: str | None, test_split: float | None, where: str) -> float:
    """``test_split`` as the image loaders use it: 0 with a ``test_path`` (which is the test
    set then; a non-zero one is refused at ``where.test_split``), DEFAULT_TEST_SPLIT when not
    given."""
    if test_path and test_split:
        raise ConfigError(
            f"test_path {show(test_path)} is the test set: leave test_split out (or 0)",
            where=f"{where}.test_split",
        )
    if test_split is None:
        return 0.0 if test_path else DEFAULT_TEST_SPLIT
    return test_split


def _plain(value: Any) -> Any:
    """A tuple as a list: yaml.safe_dump writes lists only."""
    return list(value) if isinstance(value, tuple) else value


def train_to_dict(train: TrainSpec) -> dict[str, Any]:
    """The ``train:`` mapping with every default filled in (for the run's resolved config)."""
    return {
        "data": {
            "dataset": train.dataset,
            "path": train.path,
            "label_mode": train.label_mode,
            "validation_split": train.validation_split,
            # Written for the datasets that take them only: the others' config stays short.
            **(
                {key: _plain(getattr(train, key)) for key in IMAGE_KEYS}
                if train.dataset in IMAGE_DATASETS
                else {}
            ),
        },
        "epochs": train.epochs,
        "batch_size": train.batch_size,
        "optimizer": train.optimizer,
        "lr_schedule": train.lr_schedule,
        "loss": train.loss,
        "metrics": train.metrics,
        "seed": train.seed,
        "output": train.output,
        "early_stopping": train.early_stopping,
        "threads": train.threads,
        "augment": train.augment,
    }
