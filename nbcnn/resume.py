"""``--resume`` continues the run as it was recorded, not as today's flags and config say.

The run folder's ``config.yaml`` holds the resolved config of the run (every default and
every command-line override written in). A resume takes its ``train:`` settings from there, so
a run started with ``--data my.npz --batch-size 64 --epochs 12`` resumes with that data, batch
size and epoch count without repeating the flags. What would silently change the run is
refused by name before anything is written: a flag given now that differs from the record
(``--epochs`` may extend the run, ``--threads`` may change), or a model part of the config
(``input_shape``, ``layers``, ``name``) edited since. A ``train:`` key of the config file
edited since is reported on stderr and the recorded value is used (the run continues as it
was; Ultralytics' users complain of the silent version of this).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

from nbcnn.errors import ConfigError
from nbcnn.layers.args import show
from nbcnn.spec import TrainSpec, parse_train, read_yaml, train_to_dict

#: Flags (their TrainSpec field) that a resume may change: more epochs, other threads.
MAY_CHANGE = ("epochs", "threads", "output")
MODEL_KEYS = ("name", "input_shape", "layers")
_ABSENT = object()  # a key one side does not have


def _flatten(value: Any, path: str = "") -> dict[str, Any]:
    """``{"train.data.path": ..., "layers[2].filters": ...}``: every leaf by its key path."""
    if isinstance(value, dict):
        items = {}
        for key, item in value.items():
            items.update(_flatten(item, f"{path}.{key}" if path else str(key)))
        return items or {path: {}}
    if isinstance(value, list):
        items = {}
        for i, item in enumerate(value):
            items.update(_flatten(item, f"{path}[{i}]"))
        return items or {path: []}
    return {path: value}


def _differences(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """``(key path, value in a, value in b)`` of every leaf that differs, in key order. Where a
    mapping's ``type`` differs (``train.optimizer.type``), its other keys are left out: the
    resolved options of another type differ as a consequence and would hide the cause."""
    flat_a, flat_b = _flatten(a), _flatten(b)
    differing = [
        (key, flat_a.get(key, _ABSENT), flat_b.get(key, _ABSENT))
        for key in sorted(set(flat_a) | set(flat_b), key=str)
        if flat_a.get(key, _ABSENT) != flat_b.get(key, _ABSENT)
    ]
    retyped = [key.removesuffix("type") for key, _, _ in differing if key.endswith(".type")]
    return [
        d
        for d in differing
        if d[0].endswith(".type") or not any(d[0].startswith(prefix) for prefix in retyped)
    ]


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
    differences = _differences(model_then, model_now)
    if differences:
        key, then, current = differences[0]
        if then is _ABSENT:
            change = f"the config now adds {show(current)} here"
        elif current is _ABSENT:
            change = f"the config no longer has it (the run was trained with {show(then)})"
        else:
            change = f"the run was trained with {show(then)}, the config now says {show(current)}"
        raise ConfigError(
            f"{change}; --resume continues the run as it was: undo the change, or start a new "
            "run (--overwrite or another --output)",
            file=record_file,
            where=key,
        )
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
    edited = _differences(
        {k: v for k, v in train_to_dict(then).items() if k not in MAY_CHANGE},
        {k: v for k, v in train_to_dict(now).items() if k not in MAY_CHANGE},
    )
    if edited:
        listed = ", ".join(f"train.{key} {show(value, 30)}" for key, value, _ in edited[:4])
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
