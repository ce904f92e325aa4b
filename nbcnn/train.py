"""Training, evaluation and checkpoints: the Keras-like ``compile``/``fit``/``evaluate``.

One epoch: shuffle with the run's Generator, forward in training mode, fused softmax +
cross-entropy (when the last layer's activation is softmax), backward, one optimizer step per
batch; then validation in inference mode. :class:`RunFolder` writes every file atomically, and
a checkpoint holds everything a resumed run needs to continue bit for bit: weights, optimizer
slots, both random streams, early-stopping state and the metrics so far.
"""

from __future__ import annotations

import math
import numbers
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nbcnn import losses
from nbcnn.data import batches
from nbcnn.errors import ConfigError, DataError, TrainingError
from nbcnn.layers.args import show
from nbcnn.model import Sequential, check_int
from nbcnn.resources import check_training_memory, inference_batch_size
from nbcnn.runs import RunFolder, layer_signature, own_rng_layers

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass
class History:
    """What ``fit`` returns: ``history.history["loss"]`` etc., one value per epoch, as Keras."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    interrupted: bool = False  # Ctrl-C came during the last epoch, which still completed

    def add(self, record: dict[str, Any]) -> None:
        self.epochs.append(record)
        for key in (*METRICS, "learning_rate"):
            self.history.setdefault(key, []).append(record.get(key))


@dataclass
class Compiled:
    """The result of ``compile``: optimizer, schedule spec and loss."""

    optimizer: Any
    optimizer_spec: dict[str, Any]
    lr_schedule: dict[str, Any] | None
    loss: str


def compile(model: Sequential, optimizer: str | dict | None = None, loss: str | None = None):
    """Choose the optimizer (``"adam"`` or ``{"type": "adam", "learning_rate": 1e-3}``) and the
    loss; defaults come from the config's ``train:`` section."""
    from nbcnn import optim
    from nbcnn.spec import LOSSES, parse_train

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
    if loss is None:
        loss = train.loss
    elif not isinstance(loss, str) or loss not in LOSSES:
        raise ConfigError(
            f"expected one of {', '.join(LOSSES)}, got {show(loss)}", where="compile(loss)"
        )
    model.compiled = Compiled(optimizer, spec, train.lr_schedule, loss)
    return model.compiled


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
    callback,
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
    if callback is not None and not callable(callback):
        raise ConfigError(
            f"expected a function callback(event, info) or None, got {show(callback)}",
            where="fit(callback)",
        )
    return epochs, batch_size, int(verbose), seed, early_stopping


def _fuses_softmax(model: Sequential) -> bool:
    return getattr(model.layers[-1], "activation", None) == "softmax"


def loss_and_grad(model: Sequential, out: np.ndarray, y: np.ndarray):
    """``(loss, gradient w.r.t. out, probabilities)`` for a training forward's output ``out``:
    logits when the softmax is fused, probabilities otherwise."""
    out2 = out.reshape(out.shape[0], -1)
    if model.layers[-1].fused_softmax:
        loss, grad, probs = losses.softmax_cross_entropy(out2, y)
    else:
        loss, grad = losses.crossentropy_from_probs(out2, y)
        probs = out2
    return loss, grad.reshape(out.shape), probs


def evaluate_arrays(model: Sequential, x: np.ndarray, y: np.ndarray, batch_size: int = 256):
    """Loss, accuracy and per-class results of ``model`` on ``(x, y)`` in inference mode."""
    batch_size = check_int(batch_size, "evaluate(batch_size)", 1)
    if len(x) == 0:
        raise DataError("no samples to evaluate (the test split is empty)")
    probs = model.predict(x, batch_size=batch_size).reshape(len(x), -1)
    loss, _ = losses.crossentropy_from_probs(probs, y)
    predicted = probs.argmax(axis=1)
    k = probs.shape[1]
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (y, predicted), 1)
    per_class = [
        float(confusion[c, c] / confusion[c].sum()) if confusion[c].sum() else None
        for c in range(k)
    ]
    return {
        "loss": float(loss),
        "accuracy": float((predicted == y).mean()),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
        "samples": int(len(x)),
    }


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


def _improved(monitor: str, value: float, best: float | None, min_delta: float) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    if "accuracy" in monitor:
        return value > best + min_delta
    return value < best - min_delta


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
) -> History:
    """Train ``model`` on ``x : (N, *input_shape) float32`` and integer labels ``y : (N,)``.

    With ``output`` (a path or a held :class:`~nbcnn.runs.RunFolder`), each epoch is
    committed there and ``resume=True`` continues from the last committed one: the final
    weights equal those of an uninterrupted run. An output that already holds a run is
    refused unless ``resume`` or ``overwrite``; the folder is locked while ``fit`` writes.
    Ctrl-C stops between batches with :class:`StopRequested` after the last commit; one that
    comes after the last epoch's last batch lets the run finish (``history.interrupted``).
    ``callback(event, info)`` receives "epoch_begin", "batch_end" and "epoch_end" events.
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
        callback,
    )
    from nbcnn import optim

    if len(model.output_shape) != 1:
        raise ConfigError(
            f"training needs a last layer that outputs a vector of class scores, but the "
            f"model outputs {tuple(model.output_shape)} per sample (add Flatten or global "
            "pooling before the last Dense)",
            where=f"layers[{len(model.layers) - 1}]",
        )
    if model.compiled is None:
        compile(model)
    x = model.check_input(x)
    y = _labels(y, len(x), model)
    if validation_data is not None:
        x_val = model.check_input(validation_data[0], "validation x")
        y_val = _labels(validation_data[1], len(x_val), model)
    else:
        x_val, y_val = None, None
    compiled = model.compiled
    check_training_memory(model, min(batch_size, max(len(x), 1)), compiled.optimizer_spec)
    if not model.built:
        model.initialize(seed)
    schedule = optim.make_schedule(
        compiled.lr_schedule, compiled.optimizer.learning_rate, max(epochs, 1)
    )
    shuffle_rng = np.random.default_rng([seed, 1])
    folder = _run_folder(output, resume, overwrite)
    history = History()
    monitor = (early_stopping or {}).get("monitor", "val_loss")
    if monitor.startswith("val_") and x_val is None and early_stopping:
        raise ConfigError(
            f"monitor {monitor!r} needs validation data", where="train.early_stopping.monitor"
        )
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
        early_stopping,
        monitor,
        verbose,
        callback,
        restore_best=bool(early_stopping and early_stopping.get("restore_best_weights")),
    )
    resuming = folder is not None and resume and folder.has_checkpoint()
    if resuming and not folder.held:
        folder.load_checkpoint(model)  # refuse a checkpoint that does not fit before the lock
    if folder is not None:
        folder.acquire(resume=resume, overwrite=overwrite)
    try:
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
        _train_epochs(loop)
    finally:
        if folder is not None:
            folder.release()
    if loop.restore_best:
        # In memory when this run saw the best epoch; from best.npz when a resumed run did not.
        if loop.best_weights is not None:
            model.set_weights(loop.best_weights)
        elif folder is not None and folder.file("best.npz").exists():
            model.load_weights(folder.file("best.npz"))
    return history


@dataclass
class _Loop:
    """What the epoch loop of :func:`fit` reads, and the early-stopping state it updates."""

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
    early_stopping: dict[str, Any] | None
    monitor: str
    verbose: int
    callback: Callable[[str, dict[str, Any]], None] | None
    restore_best: bool = False
    best_value: float | None = None
    wait: int = 0
    start_epoch: int = 0
    best_weights: list[np.ndarray] | None = None


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
    folder = output if isinstance(output, RunFolder) else RunFolder(output)
    if not folder.held:
        folder.check_can_start(resume=resume, overwrite=overwrite)
    return folder


def _train_epochs(loop: _Loop) -> None:
    """The epoch loop of :func:`fit`: train, validate, track the best, commit each epoch."""
    model, folder, history, early = loop.model, loop.folder, loop.history, loop.early_stopping
    val_batch = inference_batch_size(model)  # 256, or less where that would not fit
    _set_fused(model, _fuses_softmax(model))
    if loop.start_epoch < loop.epochs and len(loop.x):
        # Outside the Ctrl-C flag: an interrupt while kernels compile acts at once.
        if loop.callback:
            loop.callback("prepare_begin", {})
        start = time.perf_counter()
        warm_up(model, loop.x)
        if loop.callback:
            loop.callback("prepare_end", {"seconds": time.perf_counter() - start})
    # Overflow is detected (non-finite loss or weights) and reported as one TrainingError;
    # numpy's RuntimeWarnings about it would only add noise lines before that message.
    try:
        with _SigintFlag() as sigint, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for epoch in range(loop.start_epoch, loop.epochs):
                if early and _patience_spent(early, loop.wait, epoch):
                    history.stopped_early = True
                    break
                lr = loop.schedule(epoch)
                record = _run_epoch(loop, epoch, lr, sigint)
                record["learning_rate"] = lr
                if loop.x_val is not None and len(loop.x_val):
                    result = evaluate_arrays(model, loop.x_val, loop.y_val, val_batch)
                    record["val_loss"], record["val_accuracy"] = result["loss"], result["accuracy"]
                else:
                    record["val_loss"] = record["val_accuracy"] = None
                value = record.get(loop.monitor)
                if value is None:
                    value = record["loss"]
                improved = _improved(loop.monitor, value, loop.best_value, _min_delta(early))
                if improved:
                    loop.best_value, loop.wait = value, 0
                    loop.best_weights = model.get_weights() if loop.restore_best else None
                else:
                    loop.wait += 1
                history.add(record)
                if folder is not None:
                    _check_finite_weights(model, epoch, math.ceil(len(loop.x) / loop.batch_size))
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
                    folder.commit_epoch(model, state, best=improved)
                if loop.callback:
                    loop.callback("epoch_end", record)
                elif loop.verbose:
                    from nbcnn.progress import epoch_line

                    print(epoch_line(record, loop.epochs))
                if early and _patience_spent(early, loop.wait, epoch + 1):
                    history.stopped_early = epoch + 1 < loop.epochs
                    break
                if sigint.set:  # Ctrl-C after this epoch's last batch: it is kept, then stop
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
    yb = np.zeros(len(xb), np.int64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = model.forward(xb, training=True)
        _, grad, _ = loss_and_grad(model, out, yb)
        model.backward(grad, input_grad=False)
        model.predict(xb)
    model.set_weights(weights)
    for rng, state in zip([model.rng, *(layer.rng for layer in layers)], states):
        _set_rng_state(rng, state)


def _patience_spent(early_stopping: dict, wait: int, epochs_done: int) -> bool:
    """Keras's rule: stop after an epoch that did not improve (``wait > 0``) once ``wait``
    reaches ``patience``, never before the second epoch."""
    return epochs_done > 1 and wait > 0 and wait >= early_stopping["patience"]


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


def _min_delta(early_stopping):
    return (early_stopping or {}).get("min_delta", 0.0)


def _set_fused(model: Sequential, fused: bool) -> None:
    model.layers[-1].fused_softmax = fused


def _labels(y, n: int, model: Sequential) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be {n} integers (shape ({n},)), got {y.dtype} {y.shape}")
    classes = int(np.prod(model.output_shape))
    if n and (y.min() < 0 or y.max() >= classes):
        raise DataError(
            f"labels must be in [0, {classes}) for an output of {classes} classes, found "
            f"{int(y.min())}..{int(y.max())}"
        )
    return y.astype(np.int64)


def _run_epoch(loop: _Loop, epoch: int, lr: float, sigint: _SigintFlag) -> dict[str, Any]:
    """One pass over the shuffled training data: a record of its loss, accuracy and speed."""
    model, x, y, batch_size, callback = loop.model, loop.x, loop.y, loop.batch_size, loop.callback
    rng, epochs = loop.shuffle_rng, loop.epochs
    params, owners = model.trainable_weights()
    optimizer = model.compiled.optimizer
    total_loss = 0.0
    correct = 0
    seen = 0
    start = time.perf_counter()
    n_batches = math.ceil(len(x) / batch_size)
    if callback:
        callback("epoch_begin", {"epoch": epoch + 1, "epochs": epochs, "batches": n_batches})
    for index, (xb, yb) in enumerate(batches(x, y, batch_size, rng)):
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
        total_loss += loss * len(xb)
        correct += int((probs.argmax(axis=1) == yb).sum())
        seen += len(xb)
        if callback:
            callback(
                "batch_end",
                {
                    "batch": index + 1,
                    "loss": total_loss / seen,
                    "accuracy": correct / seen,
                    "samples": seen,
                    "seconds": time.perf_counter() - start,
                },
            )
        if sigint.set and index + 1 < n_batches:  # after the last batch the epoch completes
            raise StopRequested(epoch + 1, completed=epoch)
    seconds = time.perf_counter() - start
    return {
        "epoch": epoch + 1,
        "loss": total_loss / max(seen, 1),
        "accuracy": correct / max(seen, 1),
        "seconds": seconds,
        "samples_per_second": seen / seconds if seconds > 0 else None,
    }
