"""Training, evaluation and checkpoints: the Keras-like ``compile``/``fit``/``evaluate``.

One epoch: shuffle with the run's Generator, forward in training mode, the loss (fused with the
last layer's softmax or sigmoid when that is the activation the cross-entropy expects: see
nbcnn.losses), backward, one optimizer step per batch; then validation in inference mode.
:class:`RunFolder` writes every file atomically, and a checkpoint holds everything a resumed
run needs to continue bit for bit: weights, optimizer slots, both random streams,
early-stopping state and the metrics so far.
"""

from __future__ import annotations

import math
import numbers
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nbcnn import losses
from nbcnn.augment import Augmenter, augment_rng, parse_augment
from nbcnn.callbacks import Callback, CallbackList, EarlyStopping, Monitor
from nbcnn.data import batches
from nbcnn.distributed import (
    GradientReducer,
    active,
    sharded_batches,
    sharding,
    speaks,
    sync_from_root,
)
from nbcnn.errors import ConfigError, DataError, TrainingError
from nbcnn.layers.args import did_you_mean, show
from nbcnn.layers.normalization import BatchNormalization, moving_statistics_warning
from nbcnn.layers.preprocessing import adapt_model
from nbcnn.metrics import Metric, Tally, classification_report, make_metrics
from nbcnn.model import Sequential, check_int
from nbcnn.resources import check_training_memory, inference_batch_size
from nbcnn.runs import API_OPTIONS, RunFolder, layer_signature, own_rng_layers

#: Keys of an epoch record that describe the epoch rather than the model: not in History.
RECORD_ONLY = ("epoch", "seconds", "samples_per_second")


@dataclass
class History:
    """What ``fit`` returns: ``history.history["loss"]`` etc., one value per epoch, as Keras:
    ``loss``, each metric by name (``accuracy``, ``top_5_accuracy``, ``mae``), their ``val_``
    twins when there is validation data, and ``learning_rate``."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    interrupted: bool = False  # Ctrl-C came during the last epoch, which still completed

    def add(self, record: dict[str, Any]) -> None:
        self.epochs.append(record)
        for key, value in record.items():
            if key not in RECORD_ONLY:
                self.history.setdefault(key, []).append(value)


@dataclass
class Compiled:
    """The result of ``compile``: optimizer, schedule spec, loss and metrics."""

    optimizer: Any
    optimizer_spec: dict[str, Any]
    lr_schedule: dict[str, Any] | None
    loss: losses.Loss
    metrics: list[Metric] = field(default_factory=list)


def compile(
    model: Sequential,
    optimizer: str | dict | None = None,
    loss: str | dict | None = None,
    metrics: list | tuple | None = None,
):
    """Choose the optimizer (``"adam"`` or ``{"type": "adam", "learning_rate": 1e-3}``), the
    loss (``"mse"`` or ``{"type": "binary_crossentropy", "from_logits": True}``, see
    nbcnn.losses) and the metrics (``["accuracy", {"type": "top_k_accuracy", "k": 3}]``, see
    nbcnn.metrics); defaults come from the config's ``train:`` section."""
    from nbcnn import optim
    from nbcnn.spec import parse_train

    train = parse_train(model.spec.train if model.spec else None, default_output="runs/model")
    spec = train.optimizer if optimizer is None else optimizer
    if isinstance(spec, str):
        spec = {"type": spec}
    elif isinstance(spec, Mapping):
        spec = dict(spec)
    else:
        raise ConfigError(
            f"expected an optimizer name like 'adam' or a mapping like {{'type': 'adam', "
            f"'learning_rate': 0.001}}, got {show(spec)}",
            where="compile(optimizer)",
        )
    optimizer = optim.make_optimizer(
        spec, where="train.optimizer" if optimizer is None else "compile(optimizer)"
    )
    loss = losses.make_loss(
        train.loss if loss is None else loss,
        where="train.loss" if loss is None else "compile(loss)",
    )
    if metrics is None:
        metrics = _config_metrics(model, loss, "train.metrics")
    else:
        metrics = make_metrics(metrics, loss, where="compile(metrics)")
    model.compiled = Compiled(optimizer, spec, train.lr_schedule, loss, metrics)
    return model.compiled


def _config_metrics(model: Sequential, loss: losses.Loss, where: str) -> list[Metric]:
    """The config's ``train.metrics`` for ``loss`` (its default when the config has none)."""
    section = (model.spec.train if model.spec else None) or {}
    return make_metrics(section.get("metrics"), loss, where=where)


def _loss_and_metrics(
    model: Sequential, loss: Any = None, metrics: Any = None
) -> tuple[losses.Loss, list[Metric]]:
    """The loss and metrics to use: those given (specs as in a config, or resolved objects),
    else the compiled ones, else the config's."""
    compiled = model.compiled
    if loss is None:
        loss = compiled.loss if compiled else _config_loss(model)
    loss = losses.make_loss(loss, where="loss")
    if metrics is None:
        return loss, (compiled.metrics if compiled else _config_metrics(model, loss, "metrics"))
    if all(isinstance(m, Metric) for m in metrics):
        return loss, list(metrics)
    return loss, make_metrics(metrics, loss, where="metrics")


def _config_loss(model: Sequential) -> losses.Loss:
    from nbcnn.spec import parse_train

    train = parse_train(model.spec.train if model.spec else None, default_output="runs/model")
    return losses.make_loss(train.loss)


def _check_fit_arguments(
    x,
    epochs,
    batch_size,
    validation_data,
    verbose,
    seed,
    output,
    resume,
    overwrite,
    early_stopping,
) -> tuple[int, int, int, int, dict[str, Any] | None]:
    """Refuse bad ``fit`` arguments before any work, naming each (``fit(batch_size)``);
    returns ``epochs, batch_size, verbose, seed`` as ints and ``early_stopping`` with its
    defaults filled in (``{}`` is early stopping with the defaults, as in a config).

    ``epochs=0`` trains nothing and returns an empty History, as Keras's ``fit`` does."""
    from nbcnn.layers.args import parse_arguments
    from nbcnn.spec import _EARLY_STOPPING_SCHEMA, check_output_path

    epochs = check_int(epochs, "fit(epochs)", 0)
    batch_size = check_int(batch_size, "fit(batch_size)", 1)
    seed = check_int(seed, "fit(seed)", 0)
    if isinstance(verbose, str) and verbose == "auto":  # Keras's default
        verbose = 1
    if not isinstance(verbose, numbers.Integral) or verbose not in (0, 1, 2):
        raise ConfigError(
            f"expected 0 (silent), 1 or 2 (a line per epoch), got {show(verbose)}",
            where="fit(verbose)",
        )
    try:
        samples = len(x)
    except TypeError:  # not a sequence: check_input says what it is
        samples = None
    if samples == 0:
        raise DataError("fit(x) holds no samples: there is nothing to train on")
    if validation_data is not None and (
        not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2
    ):
        raise ConfigError(
            f"expected a pair (x_val, y_val) or None, got {show(validation_data)}",
            where="fit(validation_data)",
        )
    if isinstance(output, (str, os.PathLike)):
        check_output_path(output, "fit(output)")
    elif output is not None and not isinstance(output, RunFolder):
        raise ConfigError(
            f"expected a folder path or None, got {show(output)}", where="fit(output)"
        )
    for name, flag in (("resume", resume), ("overwrite", overwrite)):
        if not isinstance(flag, bool):
            raise ConfigError(f"expected True or False, got {show(flag)}", where=f"fit({name})")
    if early_stopping is not None:
        if not isinstance(early_stopping, Mapping):
            raise ConfigError(
                f"expected a mapping like {{'patience': 3}} or None, got {show(early_stopping)}",
                where="fit(early_stopping)",
            )
        try:
            early_stopping = parse_arguments(
                _EARLY_STOPPING_SCHEMA, early_stopping, what="fit(early_stopping)"
            )
        except ConfigError as err:
            raise err.located(where="fit(early_stopping)") from None
    return epochs, batch_size, int(verbose), seed, early_stopping


def _validation_split(split: Any, validation_data: Any) -> float:
    """``fit(validation_split)`` as a float in [0, 1); ignored (0) with validation_data, as
    Keras ignores it then."""
    from nbcnn.layers.args import number

    try:
        split = number(0.0, 1.0, max_open=True)(split)
    except ValueError as err:
        raise ConfigError(f"{err}, got {show(split)}", where="fit(validation_split)") from None
    return 0.0 if validation_data is not None else split


def _split_off(x: np.ndarray, y: np.ndarray, split: float):
    """Keras's rule (keras/src/trainers/data_adapters/data_adapter_utils.py,
    ``train_validation_split``): the last ``split`` of the samples, taken before any
    shuffling, validate; ``(x, y, x_val, y_val)``."""
    at = math.floor(len(x) * (1.0 - split))
    if at in (0, len(x)):
        raise DataError(
            f"fit(validation_split): {len(x)} samples cannot be split into training and "
            f"validation sets with validation_split={split} (one of them would be empty)"
        )
    return x[:at], y[:at], x[at:], y[at:]


def _callback_list(
    model: Sequential,
    callbacks: Any,
    early_stopping: dict[str, Any] | None,
    callback: Callable[[str, dict[str, Any]], None] | None,
    verbose: int,
    params: dict[str, Any],
    logs_keys: list[str],
) -> tuple[CallbackList, EarlyStopping | None]:
    """The callbacks of one fit, in the order they run: the caller's ``callbacks``, the
    EarlyStopping of ``early_stopping`` (a config's ``train.early_stopping``), then the
    progress: ``callback(event, info)`` or, with ``verbose``, a line per epoch. A monitor
    that the epoch's logs will not hold is refused before any work (Keras warns each epoch
    and does nothing)."""
    from nbcnn.callbacks import EpochLines, EventCallback, check_callbacks

    chosen = check_callbacks(callbacks)
    early = None
    if early_stopping is not None:
        early = EarlyStopping(**early_stopping)
        chosen.append(early)
    if callback is not None:
        chosen.append(EventCallback(callback))
    elif verbose:
        chosen.append(EpochLines())
    validated = any(key.startswith("val_") for key in logs_keys)
    for i, cb in enumerate(chosen):
        monitor = cb.monitored()
        if monitor is not None and monitor not in logs_keys:
            where = "train.early_stopping.monitor" if cb is early else f"fit(callbacks[{i}])"
            keys = ", ".join(logs_keys)
            if monitor.startswith("val_") and not validated:
                message = (
                    f"monitor {monitor!r} needs validation data (validation_split or "
                    f"validation_data); the epochs will have {keys}"
                )
            else:  # a typo ('val_acc'), or a metric that was not compiled
                message = (
                    f"the epochs will not have {monitor!r}{did_you_mean(monitor, logs_keys)}; "
                    f"they will have {keys} (compile(metrics=...) adds a metric, and its val_ "
                    "twin with validation data)"
                )
            raise ConfigError(message, where=where)
    return CallbackList(chosen, model, params), early


def _last_activation(model: Sequential) -> str | None:
    return getattr(model.layers[-1], "activation", None)


def _fuses_activation(model: Sequential, loss: losses.Loss) -> bool:
    """Whether training hands the loss the logits of the last layer's activation: when that
    activation is the softmax or sigmoid the cross-entropy expects (with or without
    ``from_logits``, as Keras's TensorFlow backend uses the logits an output carries)."""
    return loss.activation is not None and _last_activation(model) == loss.activation


def loss_and_grad(model: Sequential, out: np.ndarray, y: np.ndarray, loss: Any = None):
    """``(loss value, gradient w.r.t. out, probabilities)`` of a training forward's ``out``.

    out : (N, *output_shape) float32, the logits when the last layer's activation is fused
    (``layers[-1].fused_activation``, set by fit); y : targets as :func:`_labels` returns them;
    loss : a :class:`nbcnn.losses.Loss` or its spec, else the compiled (or config's) loss.
    The gradient has out's shape; probabilities are (N, K) float32 (see losses.compute).
    """
    loss, _ = _loss_and_metrics(model, loss, [])
    out2 = out.reshape(out.shape[0], -1)
    logits = model.layers[-1].fused_activation or loss.from_logits
    value, grad, probs = losses.compute(loss, out2, y, logits=logits)
    return value, grad.reshape(out.shape), probs


def evaluate_arrays(
    model: Sequential,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 256,
    loss: Any = None,
    metrics: Any = None,
    checked: bool = False,
    sharded: bool = False,
) -> dict[str, Any]:
    """The loss, metrics and per-class report of ``model`` on ``(x, y)`` in inference mode.

    x : (N, *input_shape) float32; y : targets as :func:`_labels` returns them. loss and
    metrics : specs as in a config (``"mse"``, ``["accuracy", {"type": "top_k_accuracy",
    "k": 3}]``) or resolved objects; None takes the compiled ones, else the config's.
    Returns ``{"loss", <metric name>..., "samples"}`` plus, for a classification loss,
    ``confusion_matrix``, ``precision``, ``recall`` (and ``per_class_accuracy`` for
    single-label losses) from :func:`nbcnn.metrics.classification_report`. ``checked``:
    the caller passed x through ``model.check_input`` already (fit's validation set, checked
    once rather than every epoch; ``Sequential.evaluate``). ``sharded``: in data-parallel
    training, every rank calls this together, predicts its slice of x and gets everyone's
    outputs (nbcnn.distributed).
    """
    loss, metrics = _loss_and_metrics(model, loss, metrics)
    batch_size = check_int(batch_size, "evaluate(batch_size)", 1)
    if len(x) == 0:
        raise DataError("no samples to evaluate (the test split is empty)")
    if not checked:
        x = model.check_input(x)
    group = active() if sharded else None
    if group is None:
        out = model._predict(x, batch_size).reshape(len(x), -1)
    else:
        lo, hi = group.shard(len(x))
        if hi > lo:
            part = model._predict(x[lo:hi], batch_size).reshape(hi - lo, -1)
        else:  # fewer samples than ranks: this one has none, and still gathers
            part = np.zeros((0, math.prod(model.output_shape)), np.float32)
        out = group.gather_rows(part)
    # predict applies the last activation; logits remain only where the loss is told so and
    # the layer does not end in the activation the loss expects.
    logits = loss.from_logits and _last_activation(model) != loss.activation
    value, _, probs = losses.compute(loss, out, y, logits=logits)
    tally = Tally(loss, metrics)
    tally.add(value, probs, y)
    return {**tally.values(), "samples": int(len(x)), **classification_report(loss, probs, y)}


def warn_about_output(model: Sequential, loss: losses.Loss) -> None:
    """Print on stderr, once, why the last layer does not fit ``loss`` (see
    :func:`nbcnn.losses.output_warning`): a model that would silently train to chance."""
    message = losses.output_warning(loss, model.layers[-1].name, _last_activation(model))
    if message and speaks():
        print(f"nbcnn: warning: {message}", file=sys.stderr)


class StopRequested(Exception):
    """Raised by fit when Ctrl-C (SIGINT) stopped training before its last epoch.

    ``epoch`` is the epoch that was interrupted (its batches are lost) or, when the interrupt
    came after an epoch's last batch, the next one; ``completed`` is the number of epochs
    committed to the run folder."""

    def __init__(self, epoch: int, completed: int):
        super().__init__(f"interrupted in epoch {epoch}")
        self.epoch = epoch
        self.completed = completed


class _SigintFlag:
    """Turn SIGINT into a flag checked between batches, so no write is cut in half."""

    def __init__(self):
        self.set = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def _set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state


def fit(
    model: Sequential,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    verbose: int = 1,
    seed: int = 0,
    output: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    early_stopping: dict[str, Any] | None = None,
    callback: Callable[[str, dict[str, Any]], None] | None = None,
    augment: Mapping[str, Any] | None = None,
    callbacks: list[Callback] | None = None,
    validation_split: float = 0.0,
    shuffle: bool = True,
) -> History:
    """Train ``model`` on ``x : (N, *input_shape)`` (integers are 0..255 pixels, divided by
    255; floats as they are: :meth:`Sequential.check_input`) and targets ``y``.

    As Keras's ``fit``: ``validation_split`` holds out the last fraction of ``x`` and ``y``,
    taken before shuffling (ignored when ``validation_data`` is given); ``shuffle=False``
    keeps the order; ``callbacks`` are :class:`nbcnn.callbacks.Callback` objects
    (EarlyStopping, ModelCheckpoint or your own). ``early_stopping`` (a config's
    ``train.early_stopping`` mapping) adds an EarlyStopping whose state the run folder keeps.

    With ``output`` (a path or a held :class:`~nbcnn.runs.RunFolder`), each epoch is
    committed there and ``resume=True`` continues from the last committed one: the final
    weights equal those of an uninterrupted run. An output that already holds a run is
    refused unless ``resume`` or ``overwrite``; the folder is locked while ``fit`` writes.
    Ctrl-C stops between batches with :class:`StopRequested` after the last commit; one that
    comes after the last epoch's last batch lets the run finish (``history.interrupted``).
    ``callback(event, info)``: the older progress interface, see
    :class:`nbcnn.callbacks.EventCallback`.
    After :func:`nbcnn.distributed.start` in a program started by ``mpiexec -n K``, every
    rank calls ``fit`` alike and they train one model in step (nbcnn/distributed.py); rank 0
    alone writes ``output``.
    ``augment`` (an ``augment:`` mapping, see nbcnn/augment.py) transforms each training batch
    with a random stream of its own, seeded from ``seed`` and kept in the checkpoint.
    Normalization layers not adapted yet are adapted from ``x`` before the first epoch.
    """
    epochs, batch_size, verbose, seed, early_stopping = _check_fit_arguments(
        x,
        epochs,
        batch_size,
        validation_data,
        verbose,
        seed,
        output,
        resume,
        overwrite,
        early_stopping,
    )
    if active() is not None and not active().root:
        output = None  # data-parallel: rank 0 alone writes the run folder
    split = _validation_split(validation_split, validation_data)
    if not isinstance(shuffle, bool):
        raise ConfigError(f"expected True or False, got {show(shuffle)}", where="fit(shuffle)")
    from nbcnn import optim

    given = x, y
    x = model.check_input(x)  # first: a model without an input shape takes it from x
    _check_output_vector(model)
    if model.compiled is None:
        compile(model)
    y = _labels(y, len(x), model)
    # A run that fit records (not the CLI's, recorded in its config.yaml): what it trained on.
    records = output is not None and not (isinstance(output, RunFolder) and output.held)
    data = _data_record(x, y, *given) if records else None
    if split:
        x, y, x_val, y_val = _split_off(x, y, split)
    elif validation_data is not None:
        x_val = model.check_input(validation_data[0], "validation x")
        y_val = _labels(validation_data[1], len(x_val), model)
        if records:
            data["validation_data"] = _data_record(x_val, y_val, *validation_data)
    else:
        x_val, y_val = None, None
    compiled = model.compiled
    names = ["loss", *(m.name for m in compiled.metrics)]
    logs_keys = [*names, *(f"val_{n}" for n in names if x_val is not None), "learning_rate"]
    params = {
        "epochs": epochs,
        "steps": math.ceil(len(x) / batch_size),
        "batch_size": batch_size,
        "samples": len(x),
        "verbose": verbose,
    }
    callback_list, early = _callback_list(
        model, callbacks, early_stopping, callback, verbose, params, logs_keys
    )
    check_training_memory(model, min(batch_size, max(len(x), 1)), compiled.optimizer_spec)
    if not model.built:
        model.initialize(seed)
    schedule = optim.make_schedule(
        compiled.lr_schedule, compiled.optimizer.learning_rate, max(epochs, 1)
    )
    shuffle_rng = np.random.default_rng([seed, 1])
    folder = _run_folder(output, resume, overwrite)
    history = History()
    # The run folder's best.npz follows the config's early-stopping monitor, else val_loss
    # (loss without validation data).
    monitor = early.monitor if early else ("val_loss" if x_val is not None else "loss")
    loop = _Loop(
        model,
        x,
        y,
        x_val,
        y_val,
        epochs,
        batch_size,
        schedule,
        shuffle_rng,
        folder,
        history,
        callback_list,
        Monitor(monitor, min_delta=early.min_delta if early else 0.0),
        shuffle,
        augment=_augmenter(augment, model),
        augment_rng=augment_rng(seed),
    )
    resuming = folder is not None and resume and folder.has_checkpoint()
    if records:
        record = {
            "fit": {
                "epochs": epochs,
                "batch_size": batch_size,
                "seed": seed,
                "shuffle": shuffle,
                "validation_split": split,
                "augment": loop.augment.config if loop.augment else None,
                "early_stopping": early_stopping,
                "callbacks": [  # those that decide when training stops
                    cb.config()
                    for cb in callback_list.callbacks
                    if isinstance(cb, EarlyStopping) and cb is not early
                ],
            },
            "compile": {
                "optimizer": compiled.optimizer.config(),
                "lr_schedule": compiled.lr_schedule,
                "loss": compiled.loss.config(),
                "metrics": [m.config() for m in compiled.metrics],
            },
            "data": {"validation_data": None, **data},  # x, y and validation_data
        }
    if resuming and not folder.held:
        from nbcnn.resume import check_fit_record

        folder.load_checkpoint(model)  # refuse a checkpoint that does not fit before the lock
        check_fit_record(folder, record, model.get_config())  # and a run that differs
    if folder is not None:
        folder.acquire(resume=resume, overwrite=overwrite)
    model.stop_training = False
    callback_list.call("on_train_begin", None)
    try:
        if records:
            from nbcnn.resume import write_fit_record

            write_fit_record(folder, record, model.get_config())
        if resuming:
            state = folder.load_checkpoint(model)  # under the lock: what this run continues
            _set_rng_state(shuffle_rng, state["shuffle_rng"])
            _set_rng_state(model.rng, state["model_rng"])
            for layer, layer_state in zip(own_rng_layers(model), state["layer_rngs"]):
                _set_rng_state(layer.rng, layer_state)
            loop.best_value, loop.wait, loop.start_epoch = (
                state["best"],
                state["wait"],
                state["epoch"],
            )
            for record in state["history"]:
                history.add(record)
            if early is not None:
                best_weights = _best_weights(model, early, folder)
                early.resume(state["best"], state["wait"], state["epoch"], best_weights)
            _restore_augment_rng(loop, state, str(folder.file("checkpoint.npz")))
        if active() is not None:
            _check_shards(loop)
            _sync_ranks(loop, early)
        adapt_model(model, x)  # Normalization's statistics, on a fresh run (count still 0)
        _train_epochs(loop)
    finally:
        if folder is not None:
            folder.release()
    callback_list.call("on_train_end", None)
    if active() is not None:
        # EarlyStopping restores its best weights in on_train_end; after a resume only rank 0
        # holds them (best.npz), so every rank ends with rank 0's.
        model.set_weights(active().bcast(model.get_weights()))
    model.history = history
    steps = len(history.epochs) * math.ceil(len(x) / batch_size)
    warning = moving_statistics_warning(model, steps)  # the run's steps, resumed ones too
    if warning and speaks():
        print(f"nbcnn: warning: {warning}", file=sys.stderr)
    return history


def _check_shards(loop: _Loop) -> None:
    """Data-parallel training: refuse batches that would leave a rank without samples where
    that matters (before any work, alike on every rank)."""
    model, group = loop.model, active()
    last = len(loop.x) % loop.batch_size
    # A rank with no sample in a batch skips its forward: exact for most layers (it adds zero
    # gradients), but synchronized BatchNormalization would miss its collectives, and a layer
    # drawing random numbers (Dropout) would fall behind the other ranks' stream.
    needs_rows = [
        layer
        for layer in model.layers
        if isinstance(layer, BatchNormalization) or getattr(layer, "rng", None) is not None
    ]
    if (loop.batch_size < group.size or 0 < last < group.size) and needs_rows:
        raise ConfigError(
            f"{group.size} workers need at least one sample each in every batch for "
            f"{needs_rows[0].name!r} ({type(needs_rows[0]).__name__}), but batches "
            f"of {loop.batch_size} over {len(loop.x)} samples leave a last batch of "
            f"{last or loop.batch_size}: change train.batch_size or the number of workers",
            where="train.batch_size",
        )


def _sync_ranks(loop: _Loop, early: EarlyStopping | None) -> None:
    """Data-parallel training: every rank continues from rank 0's state (its checkpoint's on
    a resume; on a new run the same seeded one): weights, optimizer slots, random streams,
    the epoch to start at, the best value so far and the history."""
    model = loop.model
    rngs = [loop.shuffle_rng, model.rng, *(layer.rng for layer in own_rng_layers(model))]
    if loop.augment_rng is not None:
        rngs.append(loop.augment_rng)
    state = {
        "start_epoch": loop.start_epoch,
        "best": loop.best_value,
        "wait": loop.wait,
        "history": loop.history.epochs,
    }
    state = sync_from_root(model, rngs, state)
    if active().root:
        return
    loop.start_epoch, loop.best_value, loop.wait = (
        state["start_epoch"],
        state["best"],
        state["wait"],
    )
    for record in state["history"]:
        loop.history.add(record)
    if early is not None and state["start_epoch"]:
        early.resume(state["best"], state["wait"], state["start_epoch"], None)


def _data_record(x: np.ndarray, y: np.ndarray, x_given: Any, y_given: Any) -> dict[str, Any]:
    """``{"x", "y"}``: :func:`nbcnn.resume.fingerprint` of the samples and labels as fit
    trains on them, with the dtypes the caller gave them in; labels are hashed whole."""
    from nbcnn.resume import fingerprint

    def dtype(given: Any) -> Any:
        return given.dtype if hasattr(given, "dtype") else np.asarray(given).dtype

    return {
        "x": fingerprint(x, dtype(x_given)),
        "y": fingerprint(y, dtype(y_given), rows=None),
    }


def _best_weights(model: Sequential, early: EarlyStopping, folder: RunFolder) -> list | None:
    """For a resumed run whose EarlyStopping restores the best weights: those of best.npz,
    the best epoch committed before the interruption (the model's own weights are kept)."""
    if not (early.restore_best_weights and folder.file("best.npz").exists()):
        return None
    current = model.get_weights()
    model.load_weights(folder.file("best.npz"))
    best = model.get_weights()
    model.set_weights(current)
    return best


@dataclass
class _Loop:
    """What the epoch loop of :func:`fit` reads, and the best-epoch state it updates."""

    model: Sequential
    x: np.ndarray
    y: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    epochs: int
    batch_size: int
    schedule: Callable[[int], float]
    shuffle_rng: np.random.Generator
    folder: RunFolder | None
    history: History
    callbacks: CallbackList
    #: Decides which epoch is the run folder's best.npz; its state is the checkpoint's.
    tracker: Monitor
    shuffle: bool = True
    best_value: float | None = None
    wait: int = 0
    start_epoch: int = 0
    augment: Augmenter | None = None
    augment_rng: np.random.Generator | None = None
    reducer: GradientReducer | None = None  # data-parallel training's all-reduce buffer


def _check_output_vector(model: Sequential) -> None:
    if len(model.output_shape) != 1:
        raise ConfigError(
            f"training needs a last layer that outputs a vector of class scores, but the "
            f"model outputs {tuple(model.output_shape)} per sample (add Flatten or global "
            "pooling before the last Dense)",
            where=f"layers[{len(model.layers) - 1}]",
        )


def _augmenter(
    augment: Mapping[str, Any] | None, model: Sequential, where: str = "fit(augment)"
) -> Augmenter | None:
    """The Augmenter of ``fit(augment=...)``: a train.augment mapping, checked here (the
    CLI's was checked with the config, and parses to itself)."""
    config = parse_augment(augment, where=where)
    if config is None:
        return None
    augmenter = Augmenter(config)
    augmenter.check_input_shape(model.input_shape, where)
    return augmenter


def check_trainable(model: Sequential, augment: Mapping[str, Any] | None, where: str) -> None:
    """What ``fit`` refuses about the model itself, for a caller that must refuse it before
    creating anything (nbcnn.prepare): a last layer that outputs no vector, an augment
    section (located at ``where``) that the input shape cannot take."""
    _check_output_vector(model)
    _augmenter(augment, model, where)


def _restore_augment_rng(loop: _Loop, state: dict[str, Any], file: str) -> None:
    """Continue the augmentation stream where the checkpoint left it; a checkpoint made with
    augmentation on resumed with it off (or the reverse) would silently change the run."""
    saved = state.get("augment_rng")
    if (saved is None) != (loop.augment is None):
        then, now = ("with", "without") if saved is not None else ("without", "with")
        raise DataError(
            f"the run was trained {then} augmentation and would continue {now} it: give the "
            "same train.augment (fit(augment=...)) as when it started",
            file=file,
        )
    if saved is not None:
        _set_rng_state(loop.augment_rng, saved)


def _run_folder(output, resume: bool, overwrite: bool) -> RunFolder | None:
    """The run folder of ``fit(output=...)``, checked before anything is written (a folder
    the CLI already holds was checked there)."""
    if output is None:
        return None
    if resume and overwrite:
        raise ConfigError(
            "resume and overwrite contradict each other: resume continues the run in the "
            "output folder, overwrite replaces it",
            where="fit(resume, overwrite)",
        )
    folder = output if isinstance(output, RunFolder) else RunFolder(output, API_OPTIONS)
    if not folder.held:  # a CLI run: checked, and the note printed, by nbcnn.prepare
        folder.check_can_start(resume=resume, overwrite=overwrite)
        if resume and not folder.has_checkpoint():
            warnings.warn(
                f"nothing to resume in {folder.path}: starting a new run", UserWarning, stacklevel=4
            )
    return folder


def _train_epochs(loop: _Loop) -> None:
    """The epoch loop of :func:`fit`: train, validate, track the best, commit each epoch."""
    model, folder, history, callbacks = loop.model, loop.folder, loop.history, loop.callbacks
    val_batch = inference_batch_size(model)  # 256, or less where that would not fit
    loss = model.compiled.loss
    if loop.start_epoch < loop.epochs:
        warn_about_output(model, loss)
    _set_fused(model, _fuses_activation(model, loss))
    if loop.start_epoch < loop.epochs and len(loop.x):
        # Outside the Ctrl-C flag: an interrupt while kernels compile acts at once.
        callbacks.call("on_prepare_begin", None)
        start = time.perf_counter()
        warm_up(model, loop.x)
        callbacks.call("on_prepare_end", {"seconds": time.perf_counter() - start})
    # Overflow is detected (non-finite loss or weights) and reported as one TrainingError;
    # numpy's RuntimeWarnings about it would only add noise lines before that message.
    try:
        with _SigintFlag() as sigint, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for epoch in range(loop.start_epoch, loop.epochs):
                if model.stop_training:  # a resumed run whose patience was already spent
                    history.stopped_early = True
                    break
                callbacks.call("on_epoch_begin", epoch, None)
                lr = loop.schedule(epoch)
                record = _run_epoch(loop, epoch, lr, sigint)
                record["learning_rate"] = lr
                if loop.x_val is not None and len(loop.x_val):
                    result = evaluate_arrays(
                        model, loop.x_val, loop.y_val, val_batch, checked=True, sharded=True
                    )
                    names = ["loss", *(m.name for m in model.compiled.metrics)]
                    record.update({f"val_{name}": result[name] for name in names})
                improved = loop.tracker.improved(record[loop.tracker.monitor], loop.best_value)
                if improved:
                    loop.best_value, loop.wait = record[loop.tracker.monitor], 0
                else:
                    loop.wait += 1
                history.add(record)
                if folder is not None or active() is not None:  # every rank refuses alike
                    _check_finite_weights(model, epoch, math.ceil(len(loop.x) / loop.batch_size))
                if folder is not None:
                    state = {
                        "epoch": epoch + 1,
                        "history": history.epochs,
                        "best": loop.best_value,
                        "wait": loop.wait,
                        "shuffle_rng": _rng_state(loop.shuffle_rng),
                        "model_rng": _rng_state(model.rng),
                        "layer_rngs": [_rng_state(la.rng) for la in own_rng_layers(model)],
                        "layers": layer_signature(model),
                    }
                    if loop.augment is not None:
                        state["augment_rng"] = _rng_state(loop.augment_rng)
                    folder.commit_epoch(model, state, best=improved)
                callbacks.call("on_epoch_end", epoch, record)
                if model.stop_training:
                    history.stopped_early = epoch + 1 < loop.epochs
                    break
                stop = sigint.set
                if active() is not None:
                    # A Ctrl-C since the last step may have reached one rank only: every rank
                    # decides on the agreed value, never on its own flag, which a SIGINT
                    # landing after the agreement would change on one rank alone (it then
                    # stops the next step, through the all-reduce).
                    stop = active().any(stop)
                if stop:  # Ctrl-C after this epoch's last batch: it is kept, then stop
                    if epoch + 1 < loop.epochs:
                        raise StopRequested(epoch + 2, completed=epoch + 1)
                    history.interrupted = True
    finally:
        _set_fused(model, False)


def warm_up(model: Sequential, x: np.ndarray) -> None:
    """Compile (on the first run) or load from numba's cache every kernel that a training
    step and a validation pass use, on two samples of ``x``, so that the first epoch's time
    and samples/s measure training, not compilation. Weights (BatchNormalization's moving
    statistics included) and random streams are restored: the run is the same with or
    without it."""
    weights = model.get_weights()  # copies
    layers = own_rng_layers(model)
    states = [_rng_state(model.rng), *(_rng_state(layer.rng) for layer in layers)]
    xb = x[:2]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = model.forward(xb, training=True)
        # Any gradient of out's shape runs the same backward kernels: no targets needed.
        model.backward(np.full_like(out, 1.0 / out.size), input_grad=False)
        model._predict(xb, len(xb))
    model.set_weights(weights)
    for rng, state in zip([model.rng, *(layer.rng for layer in layers)], states):
        _set_rng_state(rng, state)


def _check_finite_weights(model: Sequential, epoch: int, batches: int) -> None:
    """The last step of an epoch can overflow the weights after its loss was computed: refuse
    to checkpoint them, so the last checkpoint on disk stays a good one."""
    arrays, owners = model.trainable_weights()
    for (layer, name), w in zip(owners, arrays):
        if not np.isfinite(w).all():
            raise TrainingError(
                f"weights of {layer.name!r} {name} became NaN or inf in epoch {epoch + 1}, "
                f"batch {batches}; the last good checkpoint is kept. Try a lower learning_rate."
            )


def _set_fused(model: Sequential, fused: bool) -> None:
    model.layers[-1].fused_activation = fused


def _labels(y, n: int, model: Sequential, loss: Any = None) -> np.ndarray:
    """Targets ``y`` checked for the loss (``loss``, else the compiled or config's) and the
    model's outputs: int64 (N,) class labels, or float32 (N, K) one-hot, multi-hot or
    regression targets (see :func:`nbcnn.losses.check_targets`)."""
    loss, _ = _loss_and_metrics(model, loss, [])
    return losses.check_targets(loss, y, n, int(np.prod(model.output_shape)))


def _run_epoch(loop: _Loop, epoch: int, lr: float, sigint: _SigintFlag) -> dict[str, Any]:
    """One pass over the shuffled training data: a record of its loss, metrics and speed."""
    if active() is not None:
        return _run_epoch_sharded(loop, epoch, lr, sigint)
    model, x, y, batch_size, callbacks = loop.model, loop.x, loop.y, loop.batch_size, loop.callbacks
    rng = loop.shuffle_rng if loop.shuffle else None
    params, owners = model.trainable_weights()
    optimizer = model.compiled.optimizer
    tally = Tally(model.compiled.loss, model.compiled.metrics)
    start = time.perf_counter()
    n_batches = math.ceil(len(x) / batch_size)
    for index, (xb, yb) in enumerate(batches(x, y, batch_size, rng)):
        callbacks.call("on_train_batch_begin", index, None)
        if loop.augment is not None:
            xb = loop.augment(xb, loop.augment_rng)
        out = model.forward(xb, training=True)
        loss, grad, probs = loss_and_grad(model, out, yb)
        if not math.isfinite(loss):
            raise TrainingError(
                f"loss became {loss} in epoch {epoch + 1}, batch {index + 1}; the last "
                "good checkpoint is kept. Try a lower learning_rate."
            )
        model.backward(grad, input_grad=False)
        grads = [layer.grads[name] for layer, name in owners]
        optimizer.step(params, grads, lr)
        tally.add(loss, probs, yb)
        callbacks.call(
            "on_train_batch_end",
            index,
            {**tally.values(), "samples": tally.samples, "seconds": time.perf_counter() - start},
        )
        if sigint.set and index + 1 < n_batches:  # after the last batch the epoch completes
            raise StopRequested(epoch + 1, completed=epoch)
    seconds = time.perf_counter() - start
    return {
        "epoch": epoch + 1,
        **tally.values(),
        "seconds": seconds,
        "samples_per_second": tally.samples / seconds if seconds > 0 else None,
    }


def _run_epoch_sharded(loop: _Loop, epoch: int, lr: float, sigint: _SigintFlag) -> dict[str, Any]:
    """:func:`_run_epoch` of one rank in data-parallel training (nbcnn/distributed.py): this
    rank's shard of each global batch, the gradient of the global batch's mean loss by one
    all-reduce that also carries the loss (so a non-finite one stops every rank at the same
    batch) and Ctrl-C (so every rank stops after the same step); the epoch's record from the
    sums of every rank."""
    group = active()
    model, x, y, batch_size, callbacks = loop.model, loop.x, loop.y, loop.batch_size, loop.callbacks
    rng = loop.shuffle_rng if loop.shuffle else None
    params, owners = model.trainable_weights()
    optimizer = model.compiled.optimizer
    if loop.reducer is None:
        loop.reducer = GradientReducer(group, params, extras=2)
    tally = Tally(model.compiled.loss, model.compiled.metrics)
    start = time.perf_counter()
    n_batches = math.ceil(len(x) / batch_size)
    whole = loop.augment is not None
    seen = 0  # samples of every rank so far (the progress bar's speed is the job's)
    for index, (xb, yb, first, total) in enumerate(
        sharded_batches(x, y, batch_size, rng, group, whole=whole)
    ):
        callbacks.call("on_train_batch_begin", index, None)
        if whole:  # the global batch's transforms, then this rank's rows of it
            lo, hi = group.shard(total)
            xb, yb, first = loop.augment(xb, loop.augment_rng)[lo:hi], yb[lo:hi], lo
        share = len(xb) / total  # of the global mean loss
        if len(xb):
            with sharding(first, total):
                out = model.forward(xb, training=True)
            loss, grad, probs = loss_and_grad(model, out, yb)
            model.backward(grad * np.float32(share), input_grad=False)
            grads = [layer.grads[name] for layer, name in owners]
        else:  # a last batch smaller than the ranks (refused where it matters: _sync_ranks)
            loss, grads = 0.0, [np.zeros_like(p) for p in params]
        grads, (global_loss, stops) = loop.reducer.reduce(grads, [loss * share, sigint.set])
        if not math.isfinite(global_loss):
            raise TrainingError(
                f"loss became {global_loss} in epoch {epoch + 1}, batch {index + 1}; the last "
                "good checkpoint is kept. Try a lower learning_rate."
            )
        optimizer.step(params, grads, lr)
        if len(xb):
            tally.add(loss, probs, yb)
        seen += total
        # Running values are this rank's shard's; the epoch's record merges every rank's.
        callbacks.call(
            "on_train_batch_end",
            index,
            {**tally.values(), "samples": seen, "seconds": time.perf_counter() - start},
        )
        if stops:  # Ctrl-C reached some rank: every rank stops after this same step
            sigint.set = True
            if index + 1 < n_batches:
                raise StopRequested(epoch + 1, completed=epoch)
    group.merge_tally(tally)
    seconds = time.perf_counter() - start
    return {
        "epoch": epoch + 1,
        **tally.values(),
        "seconds": seconds,
        "samples_per_second": tally.samples / seconds if seconds > 0 else None,
    }
