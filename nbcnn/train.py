"""Training, evaluation and checkpoints: the Keras-like ``compile``/``fit``/``evaluate``.

One epoch: shuffle with the run's Generator, forward in training mode, fused softmax +
cross-entropy (when the last layer's activation is softmax), backward, one optimizer step per
batch; then validation in inference mode. :class:`RunFolder` writes every file atomically, and
a checkpoint holds everything a resumed run needs to continue bit for bit: weights, optimizer
slots, both random streams, early-stopping state and the metrics so far.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nbcnn import losses
from nbcnn.data import batches
from nbcnn.errors import ConfigError, DataError, TrainingError
from nbcnn.io import load_npz, save_npz_atomic, write_text_atomic
from nbcnn.model import Sequential
from nbcnn.resources import check_training_memory

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass
class History:
    """What ``fit`` returns: ``history.history["loss"]`` etc., one value per epoch, as Keras."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False

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
    spec = {"type": spec} if isinstance(spec, str) else dict(spec)
    loss = loss or train.loss
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}", where="loss")
    model.compiled = Compiled(optim.make_optimizer(spec), spec, train.lr_schedule, loss)
    return model.compiled


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
    """Raised inside fit when Ctrl-C (SIGINT) arrived; carries the epoch it interrupted."""

    def __init__(self, epoch: int):
        super().__init__(f"interrupted during epoch {epoch}")
        self.epoch = epoch


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


RUN_FILES = ("model.npz", "best.npz", "checkpoint.npz", "config.yaml", "metrics.jsonl")


class RunFolder:
    """The output folder of a run: model.npz, best.npz, checkpoint.npz, config.yaml,
    metrics.jsonl, each written atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def check_writable(self) -> None:
        """Fail before any work if the folder cannot be created or written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".nbcnn-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise TrainingError(
                f"{self.path}: output folder is not writable: {err.strerror or err}"
            ) from None

    def remove_stale_temporaries(self) -> None:
        """Delete the temporary files a killed writer left (``.model.npz.x1y2.tmp``): they are
        never read, and removing them at the start of a run keeps the folder clean."""
        for name in RUN_FILES:
            for tmp in self.path.glob(f".{name}.*.tmp"):
                try:
                    tmp.unlink()
                except OSError:
                    pass

    #: The files of a run, removed by ``remove_run`` before ``--overwrite`` starts a new one.
    RUN_FILES = ("checkpoint.npz", "model.npz", "best.npz", "metrics.jsonl", "curves.png")

    def remove_run(self) -> None:
        """Delete an earlier run's files, so a new run never mixes with them."""
        for name in self.RUN_FILES:
            try:
                self.file(name).unlink()
            except FileNotFoundError:
                pass
            except OSError as err:
                raise TrainingError(f"{self.file(name)}: cannot remove: {err.strerror}") from None

    def save_checkpoint(self, model: Sequential, state: dict[str, Any], best: bool) -> None:
        weights = dict(zip(model.weight_names(), model.get_weights()))
        optimizer = {f"optimizer/{k}": v for k, v in model.compiled.optimizer.state_dict().items()}
        meta = {"meta": np.array(json.dumps(state))}
        # Checkpoint first, then the files people read; each replace is atomic.
        save_npz_atomic(self.file("checkpoint.npz"), {**weights, **optimizer, **meta})
        save_npz_atomic(self.file("model.npz"), weights)
        if best:
            save_npz_atomic(self.file("best.npz"), weights)
        lines = "".join(json.dumps(r) + "\n" for r in state["history"])
        write_text_atomic(self.file("metrics.jsonl"), lines)

    def load_checkpoint(self, model: Sequential) -> dict[str, Any]:
        path = self.file("checkpoint.npz")
        arrays = load_npz(path)
        if "meta" not in arrays:
            raise DataError("not an nbcnn checkpoint (no 'meta')", file=str(path))
        try:
            state = json.loads(str(arrays.pop("meta")))
        except ValueError:
            raise DataError("checkpoint metadata is not valid JSON", file=str(path)) from None
        names = model.weight_names()
        missing = [n for n in names if n not in arrays]
        if missing:
            raise DataError(
                f"checkpoint is for another model: no array {missing[0]!r}", file=str(path)
            )
        model.set_weights([arrays[n] for n in names], source=str(path))
        prefix = "optimizer/"
        opt_state = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        try:
            model.compiled.optimizer.load_state_dict(opt_state)
        except DataError as err:
            raise DataError(err.message, file=str(path)) from None
        return state


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
    early_stopping: dict[str, Any] | None = None,
    callback: Callable[[str, dict[str, Any]], None] | None = None,
) -> History:
    """Train ``model`` on ``x : (N, *input_shape) float32`` and integer labels ``y : (N,)``.

    With ``output``, each epoch writes a checkpoint there and ``resume=True`` continues from
    the last completed one: the final weights equal those of an uninterrupted run. Ctrl-C stops
    between batches with :class:`StopRequested` after the last checkpoint is on disk.
    ``callback(event, info)`` receives "epoch_begin", "batch_end" and "epoch_end" events.
    """
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
    folder = RunFolder(output) if output is not None else None
    history = History()
    monitor = (early_stopping or {}).get("monitor", "val_loss")
    if monitor.startswith("val_") and x_val is None and early_stopping:
        raise ConfigError(
            f"monitor {monitor!r} needs validation data", where="train.early_stopping.monitor"
        )
    best_value, wait, start_epoch = None, 0, 0
    restore_best = bool(early_stopping and early_stopping.get("restore_best_weights"))
    best_weights = None
    if folder is not None:
        folder.check_writable()
        folder.remove_stale_temporaries()
        if resume and folder.file("checkpoint.npz").exists():
            state = folder.load_checkpoint(model)
            _set_rng_state(shuffle_rng, state["shuffle_rng"])
            _set_rng_state(model.rng, state["model_rng"])
            for layer, layer_state in zip(_own_rng_layers(model), state.get("layer_rngs", [])):
                _set_rng_state(layer.rng, layer_state)
            best_value, wait, start_epoch = state["best"], state["wait"], state["epoch"]
            for record in state["history"]:
                history.add(record)
    _set_fused(model, _fuses_softmax(model))
    # Overflow is detected (non-finite loss or weights) and reported as one TrainingError;
    # numpy's RuntimeWarnings about it would only add noise lines before that message.
    try:
        with _SigintFlag() as sigint, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for epoch in range(start_epoch, epochs):
                if early_stopping and _patience_spent(early_stopping, wait, epoch):
                    history.stopped_early = True
                    break
                lr = schedule(epoch)
                record = _run_epoch(
                    model, x, y, batch_size, shuffle_rng, lr, epoch, epochs, sigint, callback
                )
                record["learning_rate"] = lr
                if x_val is not None and len(x_val):
                    result = evaluate_arrays(model, x_val, y_val)
                    record["val_loss"], record["val_accuracy"] = result["loss"], result["accuracy"]
                else:
                    record["val_loss"] = record["val_accuracy"] = None
                value = record.get(monitor)
                if value is None:
                    value = record["loss"]
                improved = _improved(monitor, value, best_value, _min_delta(early_stopping))
                if improved:
                    best_value, wait = value, 0
                    best_weights = model.get_weights() if restore_best else None
                else:
                    wait += 1
                history.add(record)
                if folder is not None:
                    _check_finite_weights(model, epoch, math.ceil(len(x) / batch_size))
                    state = {
                        "epoch": epoch + 1,
                        "history": history.epochs,
                        "best": best_value,
                        "wait": wait,
                        "shuffle_rng": _rng_state(shuffle_rng),
                        "model_rng": _rng_state(model.rng),
                        "layer_rngs": [_rng_state(la.rng) for la in _own_rng_layers(model)],
                    }
                    folder.save_checkpoint(model, state, best=improved)
                if callback:
                    callback("epoch_end", record)
                elif verbose:
                    from nbcnn.progress import epoch_line

                    print(epoch_line(record, epochs))
                if early_stopping and _patience_spent(early_stopping, wait, epoch + 1):
                    history.stopped_early = epoch + 1 < epochs
                    break
    finally:
        _set_fused(model, False)
    if restore_best:
        # In memory when this run saw the best epoch; from best.npz when a resumed run did not.
        if best_weights is not None:
            model.set_weights(best_weights)
        elif folder is not None and folder.file("best.npz").exists():
            model.load_weights(folder.file("best.npz"))
    return history


def _patience_spent(early_stopping: dict, wait: int, epochs_done: int) -> bool:
    """Keras's rule: stop after an epoch that did not improve (``wait > 0``) once ``wait``
    reaches ``patience``, never before the second epoch."""
    return epochs_done > 1 and wait > 0 and wait >= early_stopping["patience"]


def _own_rng_layers(model: Sequential) -> list:
    """Layers with a random stream of their own (Dropout with ``seed``), in model order: the
    checkpoint saves each one's state so that a resumed run draws the same masks."""
    return [
        layer
        for layer in model.layers
        if getattr(layer, "rng", None) is not None and layer.rng is not model.rng
    ]


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


def _run_epoch(model, x, y, batch_size, rng, lr, epoch, epochs, sigint, callback):
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
        if sigint.set:
            raise StopRequested(epoch + 1)
    seconds = time.perf_counter() - start
    return {
        "epoch": epoch + 1,
        "loss": total_loss / max(seen, 1),
        "accuracy": correct / max(seen, 1),
        "seconds": seconds,
        "samples_per_second": seen / seconds if seconds > 0 else None,
    }
