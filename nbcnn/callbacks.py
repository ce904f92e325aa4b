"""Callbacks for ``fit``, with Keras's names, hooks and semantics (keras/src/callbacks/).

``fit(callbacks=[...])`` calls each hook of every callback in order: ``on_train_begin``, then per
epoch ``on_epoch_begin(epoch)``, ``on_train_batch_begin/end(batch)`` and
``on_epoch_end(epoch, logs)``, then ``on_train_end``. ``epoch`` and ``batch`` count from 0, as
in Keras. ``logs`` of an epoch holds ``loss``, the compiled metrics (``accuracy``...), their
``val_`` twins when there is validation data, ``learning_rate``, and nbcnn's ``epoch`` (from 1),
``seconds`` and ``samples_per_second``. A callback stops training by setting
``self.model.stop_training = True``.

nbcnn adds two hooks of its own, ``on_prepare_begin`` and ``on_prepare_end(logs)`` (``logs``
holds ``seconds``), around the compilation of the kernels before the first batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from nbcnn.errors import ConfigError, DataError
from nbcnn.layers.args import boolean, choice, integer, number, show, string

#: ``mode`` of the monitoring callbacks: Keras's names.
MODES = ("auto", "min", "max")


class Callback:
    """Base class of fit's callbacks: override the hooks you need (Keras's ``Callback``).

    Attributes set by ``fit`` before ``on_train_begin``: ``model`` (the Sequential being
    trained) and ``params`` (``epochs``, ``steps`` per epoch, ``batch_size``, ``samples``,
    ``verbose``).
    """

    def __init__(self) -> None:
        self.model: Any = None
        self.params: dict[str, Any] = {}

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Called once before the first epoch (and before a resumed run's first one)."""

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """Called once after the last epoch (not after Ctrl-C or an error)."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Called at the start of epoch ``epoch`` (from 0)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Called after epoch ``epoch`` (from 0) was trained, validated and committed."""

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Called before training batch ``batch`` (from 0) of the epoch."""

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Called after batch ``batch``; ``logs`` holds the epoch's running ``loss`` and
        metrics, and nbcnn's ``samples`` and ``seconds`` so far in the epoch."""

    def on_prepare_begin(self, logs: dict[str, Any] | None = None) -> None:
        """nbcnn: the kernels start compiling (or loading from numba's cache)."""

    def monitored(self) -> str | None:
        """nbcnn: the key of the epoch's logs this callback needs, if any; ``fit`` refuses
        it before any work when the epochs will not have it (Keras warns every epoch)."""
        return None

    def on_prepare_end(self, logs: dict[str, Any] | None = None) -> None:
        """nbcnn: the kernels are ready; ``logs["seconds"]`` is how long that took."""


class CallbackList:
    """The callbacks of one ``fit``, each hook called on every one in order."""

    def __init__(self, callbacks: list[Callback], model: Any, params: dict[str, Any]):
        self.callbacks = callbacks
        for callback in callbacks:
            callback.set_model(model)
            callback.set_params(params)

    def call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)


def check_callbacks(callbacks: Any, where: str = "fit(callbacks)") -> list[Callback]:
    """``callbacks`` as a list of Callback objects, or ConfigError naming the first that is
    not one."""
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        raise ConfigError(
            f"expected a list of Callback objects, got {show(callbacks)}", where=where
        )
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise ConfigError(
                f"expected an nbcnn.callbacks.Callback, got {show(callback)}", where=f"{where}[{i}]"
            )
    return list(callbacks)


def _checked(parse: Callable[[Any], Any], value: Any, where: str) -> Any:
    try:
        return parse(value)
    except ValueError as err:
        raise ConfigError(f"{err}, got {show(value)}", where=where) from None


class Monitor:
    """Whether a monitored value improved on the best so far, as Keras's MonitorCallback
    decides it: ``mode`` "min" or "max", or "auto": larger is better for accuracies
    (``accuracy``, ``val_top_5_accuracy``), smaller for losses and errors (``loss``, ``mae``).
    An improvement beats the best by more than ``min_delta``; a missing or non-finite value
    never improves."""

    def __init__(self, monitor: str, mode: str = "auto", min_delta: float = 0.0, owner: str = ""):
        self.monitor = _checked(string, monitor, f"{owner}(monitor)")
        mode = _checked(choice(*MODES), mode, f"{owner}(mode)")
        self.min_delta = abs(_checked(number(), min_delta, f"{owner}(min_delta)"))
        self.higher_is_better = mode == "max" or (mode == "auto" and "accuracy" in monitor)

    def improved(self, value: float | None, best: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if best is None:
            return True
        if self.higher_is_better:
            return value - self.min_delta > best
        return value + self.min_delta < best


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs (Keras's
    ``EarlyStopping``, keras/src/callbacks/early_stopping.py, same arguments and rules).

    Each epoch that does not improve on the best by more than ``min_delta`` adds one to
    ``wait``; training stops once ``wait`` reaches ``patience``, never after the first epoch.
    ``baseline``: an epoch must also beat it to reset ``wait``. ``restore_best_weights``: end
    with the weights of the best epoch. ``start_from_epoch``: epochs ignored at the start.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ):
        super().__init__()
        self._monitor = Monitor(monitor, mode, min_delta, "EarlyStopping")
        self.monitor = self._monitor.monitor
        self.mode = mode
        self.min_delta = self._monitor.min_delta
        self.patience = _checked(integer(0), patience, "EarlyStopping(patience)")
        self.verbose = _checked(integer(0, 2), verbose, "EarlyStopping(verbose)")
        self.baseline = baseline
        if baseline is not None:
            self.baseline = _checked(number(), baseline, "EarlyStopping(baseline)")
        self.restore_best_weights = _checked(
            boolean, restore_best_weights, "EarlyStopping(restore_best_weights)"
        )
        self.start_from_epoch = _checked(
            integer(0), start_from_epoch, "EarlyStopping(start_from_epoch)"
        )
        self.on_train_begin()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Reset, so that one instance can serve several fits (as Keras allows).
        self.wait = 0
        self.stopped_epoch = 0
        self.best: float | None = None
        self.best_weights: list[Any] | None = None
        self.best_epoch = 0

    def monitored(self) -> str | None:
        return self.monitor

    def config(self) -> dict[str, Any]:
        """nbcnn: the arguments that decide when training stops (``verbose`` aside): what a
        ``fit(output=...)`` run records, so that its resume is refused with others."""
        return {
            "type": "EarlyStopping",
            "monitor": self.monitor,
            "min_delta": self.min_delta,
            "patience": self.patience,
            "mode": self.mode,
            "baseline": self.baseline,
            "restore_best_weights": self.restore_best_weights,
            "start_from_epoch": self.start_from_epoch,
        }

    def resume(self, best: float | None, wait: int, epochs_done: int, best_weights: Any) -> None:
        """nbcnn: continue the state of a run resumed from its checkpoint (``best`` and
        ``wait`` as committed after ``epochs_done`` epochs); a run whose patience was already
        spent stops before its next epoch."""
        self.best, self.wait, self.best_weights = best, wait, best_weights
        if self.wait >= self.patience and self.wait > 0 and epochs_done > 1:
            self.stopped_epoch = epochs_done - 1
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        current = (logs or {}).get(self.monitor)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch
        self.wait += 1
        if self._monitor.improved(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._monitor.improved(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(
                    f"Restoring model weights from the end of the best epoch: "
                    f"{self.best_epoch + 1}."
                )
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the weights after each epoch (Keras's ``ModelCheckpoint``,
    keras/src/callbacks/model_checkpoint.py), as ``model.save_weights`` writes them: an
    ``.npz`` (no pickle), written atomically, its folder created if needed.

    ``filepath`` may hold ``{epoch}`` (from 1) and any key of the epoch's logs
    (``"ckpt/{epoch:02d}-{val_loss:.3f}.npz"``). ``save_best_only``: save only when ``monitor``
    improves on the best so far (``mode`` as EarlyStopping's; ``initial_value_threshold`` is
    the best to beat at first); a run without the monitored value saves every epoch, as
    Keras does. nbcnn saves weights only (the model comes from ``model.to_yaml()``), so
    ``save_weights_only`` must stay True; ``save_freq`` is ``"epoch"``.
    """

    def __init__(
        self,
        filepath: str | os.PathLike,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = True,
        mode: str = "auto",
        save_freq: str = "epoch",
        initial_value_threshold: float | None = None,
    ):
        super().__init__()
        if isinstance(filepath, os.PathLike):
            filepath = os.fspath(filepath)
        where = "ModelCheckpoint(filepath)"
        self.filepath = _checked(string, filepath, where)
        if not self.filepath.endswith(".npz"):
            raise ConfigError(
                f"expected a path ending in .npz (nbcnn writes weights as .npz, read without "
                f"pickle; Keras's .keras and .weights.h5 are not written), got {show(filepath)}",
                where=where,
            )
        self._monitor = Monitor(monitor, mode, 0.0, "ModelCheckpoint")
        self.monitor = self._monitor.monitor
        self.verbose = _checked(integer(0, 2), verbose, "ModelCheckpoint(verbose)")
        self.save_best_only = _checked(boolean, save_best_only, "ModelCheckpoint(save_best_only)")
        if save_weights_only is not True:
            raise ConfigError(
                f"nbcnn saves weights only (rebuild the model with nbcnn.model_from_yaml("
                f"model.to_yaml())), got {show(save_weights_only)}",
                where="ModelCheckpoint(save_weights_only)",
            )
        if save_freq != "epoch":
            raise ConfigError(
                f"nbcnn saves once per epoch: expected 'epoch', got {show(save_freq)}",
                where="ModelCheckpoint(save_freq)",
            )
        self.initial_value_threshold = initial_value_threshold
        if initial_value_threshold is not None:
            self.initial_value_threshold = _checked(
                number(), initial_value_threshold, "ModelCheckpoint(initial_value_threshold)"
            )
        self.best = self.initial_value_threshold

    def monitored(self) -> str | None:
        return self.monitor if self.save_best_only else None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        path = self._file_path(epoch, logs)
        current = logs.get(self.monitor)
        if self.save_best_only and current is not None:
            if not self._monitor.improved(current, self.best):
                if self.verbose > 0:
                    print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            if self.verbose > 0:
                print(
                    f"Epoch {epoch + 1}: {self.monitor} improved from "
                    f"{'None' if self.best is None else format(self.best, '.5f')} to "
                    f"{current:.5f}, saving model to {path}"
                )
            self.best = current
        elif self.verbose > 0:
            print(f"Epoch {epoch + 1}: saving model to {path}")
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self.model.save_weights(path)

    def _file_path(self, epoch: int, logs: dict[str, Any]) -> str:
        """``filepath`` with ``{epoch}`` (from 1) and the logs' keys filled in."""
        try:
            return self.filepath.format(**{**logs, "epoch": epoch + 1})
        except (KeyError, IndexError, ValueError) as err:
            raise DataError(
                f"ModelCheckpoint(filepath): cannot fill in {show(self.filepath)}: "
                f"{type(err).__name__} {err} (the epoch's keys are epoch, "
                f"{', '.join(k for k in logs if k != 'epoch')})"
            ) from None


class EventCallback(Callback):
    """nbcnn's older interface as a Callback: a function ``callback(event, info)`` receiving
    "prepare_begin", "prepare_end" (``seconds``), "epoch_begin" (``epoch`` from 1, ``epochs``,
    ``batches``), "batch_end" (``batch`` from 1 and the batch's logs) and "epoch_end" (the
    epoch's record). The CLI's progress bar is
    one."""

    def __init__(self, function: Callable[[str, dict[str, Any]], None]):
        super().__init__()
        if not callable(function):
            raise ConfigError(
                f"expected a function callback(event, info) or None, got {show(function)}",
                where="fit(callback)",
            )
        self.function = function

    def on_prepare_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.function("prepare_begin", {})

    def on_prepare_end(self, logs: dict[str, Any] | None = None) -> None:
        self.function("prepare_end", dict(logs or {}))

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.function(
            "epoch_begin",
            {"epoch": epoch + 1, "epochs": self.params["epochs"], "batches": self.params["steps"]},
        )

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.function("batch_end", {"batch": batch + 1, **(logs or {})})

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.function("epoch_end", logs or {})


class EpochLines(Callback):
    """What ``fit(verbose=1 or 2)`` prints: one line per epoch."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        from nbcnn.progress import epoch_line

        print(epoch_line(logs or {}, self.params["epochs"]))
