"""``--resume`` continues the run as it was recorded, not as today's flags and config say.

The run folder's ``config.yaml`` holds the resolved config of the run (every default and
every command-line override written in). A resume takes its ``train:`` settings from there, so
a run started with ``--data my.npz --batch-size 64 --epochs 12`` resumes with that data, batch
size and epoch count without repeating the flags. What would silently change the run is
refused by name before anything is written: a flag given now that differs from the record
(``--epochs`` may extend the run, ``--threads`` may change), or a model part of the config
(``input_shape``, ``layers``, ``name``) edited since, or a ``train.augment`` section added or
removed since (augmentation switched on or off). Any other ``train:`` key of the config file
edited since (an augmentation op's arguments included) is reported on stderr and the recorded
value is used (the run continues as it was; Ultralytics' users complain of the silent version
of this).
"""

from __future__ import annotations

import json
import sys
import zlib
from dataclasses import replace
from typing import Any

import numpy as np

from nbcnn.errors import ConfigError
from nbcnn.layers.args import show
from nbcnn.runs import API_OPTIONS, CLI_OPTIONS, FIT_RECORD, Options, RunFolder
from nbcnn.spec import TrainSpec, parse_train, read_yaml, train_to_dict

#: Flags (their TrainSpec field) that a resume may change: more epochs, other threads.
MAY_CHANGE = ("epochs", "threads", "output")
MODEL_KEYS = ("name", "input_shape", "layers")
_ABSENT = object()  # a key one side does not have


def _differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """``(key path, value in a, value in b)`` where ``a`` and ``b`` differ, in key order, with
    key paths like ``train.data.path`` and ``layers[2].filters``. Mappings, and lists that hold
    mappings or lists, are compared item by item; a list of plain values is one value. A key
    that one side does not have (:data:`_ABSENT`), or whose value is a mapping on one side
    only, is one difference with the whole value, not one per leaf. Where a mapping's ``type``
    differs (``train.optimizer.type``), its other keys are left out: the resolved options of
    another type differ as a consequence and would hide the cause."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.get("type", _ABSENT) != b.get("type", _ABSENT):
            return _differences(a.get("type", _ABSENT), b.get("type", _ABSENT), _join(path, "type"))
        keys = sorted(set(a) | set(b), key=str)
        return [
            d
            for k in keys
            for d in _differences(a.get(k, _ABSENT), b.get(k, _ABSENT), _join(path, k))
        ]
    if isinstance(a, list) and isinstance(b, list) and _holds_containers(a, b):
        return [
            d
            for i in range(max(len(a), len(b)))
            for d in _differences(
                a[i] if i < len(a) else _ABSENT, b[i] if i < len(b) else _ABSENT, f"{path}[{i}]"
            )
        ]
    return [] if a == b else [(path, a, b)]


def _holds_containers(*lists: list) -> bool:
    # A list of plain values (a factor pair, a kernel size) is one value: shown whole.
    return any(isinstance(item, (dict, list)) for items in lists for item in items)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _shown(value: Any, limit: int = 30) -> str:
    return "(absent)" if value is _ABSENT else show(value, limit)


def check_model(
    record_file: str,
    then: dict[str, Any],
    now: dict[str, Any],
    options: Options = CLI_OPTIONS,
    source: str = "the config",
) -> None:
    """Refuse a resume whose model part (``name``, ``input_shape``, ``layers`` as the run's
    config.yaml records them) differs from ``now``, naming the first key that differs;
    ``source`` is what ``now`` comes from (the config file, or the model given to fit)."""
    differences = _differences(then, now)
    if not differences:
        return
    key, then, current = differences[0]
    if then is _ABSENT:
        change = f"{source} now adds {show(current)} here"
    elif current is _ABSENT:
        change = f"{source} no longer has it (the run was trained with {show(then)})"
    else:
        change = f"the run was trained with {show(then)}, {source} now says {show(current)}"
    raise ConfigError(
        f"{change}; {options.resume} continues the run as it was: undo the change, or start a "
        f"new run ({options.overwrite} or {options.other_output})",
        file=record_file,
        where=key,
    )


def resumed_train(
    record_file: str, raw: dict[str, Any], now: TrainSpec, flags: dict[str, Any]
) -> TrainSpec:
    """The train settings a resume continues with.

    Parameters
    ----------
    record_file : the run folder's ``config.yaml``.
    raw : the config file's document as read now (model part compared with the record).
    now : the train settings from today's config file and flags.
    flags : ``{TrainSpec field: value}`` of the flags given now (``path``/``dataset`` for
        ``--data``).
    """
    recorded = read_yaml(record_file)
    if not isinstance(recorded, dict) or not isinstance(recorded.get("train"), dict):
        raise ConfigError("not a resolved run config (no train: mapping)", file=record_file)
    model_now = {k: raw[k] for k in MODEL_KEYS if k in raw}
    model_then = {k: recorded[k] for k in MODEL_KEYS if k in recorded}
    if "name" not in model_now:
        model_then.pop("name", None)  # the default name is not written in a config
    check_model(record_file, model_then, model_now)
    try:
        then = parse_train(recorded["train"], default_output=now.output)
    except ConfigError as err:
        raise err.located(file=record_file, where="train") from None
    for field, value in flags.items():
        if field in MAY_CHANGE or getattr(then, field) == value:
            continue
        flag = "--data" if field in ("path", "dataset") else f"--{field.replace('_', '-')}"
        raise ConfigError(
            f"the run was trained with {field} {show(getattr(then, field))}, {flag} asks for "
            f"{show(value)}; --resume continues the run as it was: leave {flag} out, or "
            "start a new run (--overwrite or another --output)",
            file=record_file,
            where=flag,
        )
    if bool(then.augment) != bool(now.augment):
        change = (
            "the config no longer has train.augment (the run was trained with augmentation)"
            if then.augment
            else "the config now adds train.augment (the run was trained without augmentation)"
        )
        raise ConfigError(
            f"{change}; --resume does not switch augmentation on or off: undo the change, or "
            "start a new run (--overwrite or another --output)",
            file=record_file,
            where="train.augment",
        )
    edited = _differences(
        {k: v for k, v in train_to_dict(then).items() if k not in MAY_CHANGE},
        {k: v for k, v in train_to_dict(now).items() if k not in MAY_CHANGE},
    )
    if edited:
        listed = ", ".join(f"train.{key} {_shown(value)}" for key, value, _ in edited[:4])
        more = f" and {len(edited) - 4} more" if len(edited) > 4 else ""
        print(
            f"nbcnn: note: the run continues as it was recorded in {record_file}: {listed}"
            f"{more} (the config or its defaults now say otherwise)",
            file=sys.stderr,
        )
    return replace(
        then,
        epochs=flags.get("epochs", then.epochs),
        threads=flags.get("threads", then.threads),
        output=now.output,
    )


# ---------------------------------------------------------------------- fit(output=...) runs

#: ``fit`` arguments that a resume may change: more epochs extend the run.
FIT_MAY_CHANGE = ("epochs",)
#: Rows of x whose bytes the data fingerprint hashes: spread over the whole array, so that
#: other data or the same in another order is caught, and cheap at any size.
FINGERPRINT_ROWS = 1024
_FIT_FORMAT = 1


def fingerprint(a: Any, given_dtype: Any, rows: int | None = FINGERPRINT_ROWS) -> dict[str, Any]:
    """``{"shape", "dtype", "crc32"}`` of data given to fit: its shape, the dtype it was given
    in, and the CRC-32 of ``rows`` rows evenly spread over it (None: every row).

    a : (N, ...) array as fit trains on it (float32 x, checked labels), or an ImageArray.
    """
    n = len(a)
    if rows is None or n <= rows:
        sample = a[:]
    else:
        sample = a[np.linspace(0, n - 1, num=rows).round().astype(np.int64)]
    crc = zlib.crc32(np.ascontiguousarray(sample).tobytes())
    return {"shape": list(a.shape), "dtype": str(given_dtype), "crc32": f"{crc:08x}"}


def write_fit_record(folder: RunFolder, record: dict[str, Any], model_config: dict) -> None:
    """Write what defines a ``fit(output=...)`` run into its folder (held): config.yaml holds
    the model part of the config (as the CLI's does), fit.json the arguments of fit and
    compile and the fingerprints of the data."""
    import yaml

    from nbcnn.io import write_text_atomic

    model = {k: model_config[k] for k in MODEL_KEYS}
    write_text_atomic(folder.file("config.yaml"), yaml.safe_dump(model, sort_keys=False))
    text = json.dumps({"nbcnn_fit": _FIT_FORMAT, **record}, indent=1, allow_nan=False)
    write_text_atomic(folder.file(FIT_RECORD), text + "\n")


def check_fit_record(folder: RunFolder, record: dict[str, Any], model_config: dict) -> None:
    """Refuse ``fit(resume=True)`` that would change the run recorded in ``folder``, before
    anything is written, naming the argument: the model (config.yaml), an argument of fit or
    compile, or the data (``record`` as :func:`write_fit_record` takes it). ``epochs`` may
    differ: it extends the run."""
    import yaml

    record_file = folder.file(FIT_RECORD)
    if not record_file.is_file():
        raise ConfigError(
            f"records no fit() arguments (no {FIT_RECORD}: a run of `nbcnn train`, or of an "
            "older nbcnn), so resume=True cannot check that it continues the same run: resume "
            "it as it was started (`nbcnn train --resume`, nbcnn.fit_config(..., resume=True)), "
            "or start a new run (overwrite=True or another output=)",
            file=str(folder.path),
            where="fit(resume)",
        )
    try:
        recorded = json.loads(record_file.read_text("utf-8"))
        if not isinstance(recorded, dict) or recorded.get("nbcnn_fit") != _FIT_FORMAT:
            raise ValueError("not a fit record nbcnn writes")
        model_then = read_yaml(str(folder.file("config.yaml")))
        if not isinstance(model_then, dict):
            raise ValueError("config.yaml is not a mapping")
    except (OSError, ValueError, RecursionError, ConfigError) as err:
        raise ConfigError(
            f"cannot be read ({err}); start a new run (overwrite=True or another output=)",
            file=str(record_file),
        ) from None
    model_now = yaml.safe_load(yaml.safe_dump({k: model_config[k] for k in MODEL_KEYS}))
    check_model(
        str(folder.file("config.yaml")),
        {k: model_then[k] for k in MODEL_KEYS if k in model_then},
        model_now,
        API_OPTIONS,
        "the model",
    )
    now = json.loads(json.dumps(record))  # tuples as lists, as the record was read back
    advice = (
        f"; {API_OPTIONS.resume} continues the run as it was: pass what it was trained with, "
        f"or start a new run ({API_OPTIONS.overwrite} or {API_OPTIONS.other_output})"
    )
    for section in ("fit", "compile"):
        then_part, now_part = (
            {k: v for k, v in _mapping(part.get(section)).items() if k not in FIT_MAY_CHANGE}
            for part in (recorded, now)
        )
        differences = _differences(then_part, now_part)
        if differences:
            key, then, current = differences[0]
            top = key.split(".")[0].split("[")[0]
            # lr_schedule comes from the model config's train section, not from compile().
            where = "train.lr_schedule" if top == "lr_schedule" else f"{section}({top})"
            raise ConfigError(
                f"the run was trained with {_shown(then, 60)}, got {_shown(current, 60)}{advice}",
                file=str(record_file),
                where=where + key[len(top) :],
            )
    then_data, now_data = _mapping(recorded.get("data")), now["data"]
    for name in ("x", "y", "validation_data"):
        if then_data.get(name, _ABSENT) != now_data[name]:
            raise ConfigError(
                f"the run was trained on {_data_text(then_data.get(name, _ABSENT))}, got "
                f"{_data_text(now_data[name])} (other data, or the same in another order)"
                f"{advice}",
                file=str(record_file),
                where=f"fit({name})",
            )


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _data_text(value: Any) -> str:
    """A fingerprint in words: ``uint8 (1500, 8, 8, 1), sample CRC-32 1a2b3c4d``."""
    if value is None:
        return "none"
    if isinstance(value, dict) and set(value) == {"x", "y"}:  # validation_data
        return f"x {_data_text(value['x'])} and y {_data_text(value['y'])}"
    if isinstance(value, dict) and {"shape", "dtype", "crc32"} <= set(value):
        shape = tuple(value["shape"]) if isinstance(value["shape"], list) else value["shape"]
        return f"{value['dtype']} {shape}, sample CRC-32 {value['crc32']}"
    return _shown(value)
