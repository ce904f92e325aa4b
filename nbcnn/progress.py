"""Rich progress for training: a bar per epoch (loss, accuracy, samples/s, ETA) and one
summary line per finished epoch. Used by the CLI; the library itself prints nothing."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class TrainingProgress:
    """A ``callback(event, info)`` for :func:`nbcnn.train.fit` that draws on the console."""

    def __init__(self, console: Console | None = None):
        # The live bar goes to stderr. On a terminal the epoch lines print through the bar's
        # console, above the bar; otherwise (logs, pipes) to stdout, unwrapped.
        self.console = console or Console(stderr=True)
        self.lines = (
            self.console if self.console.is_terminal else Console(soft_wrap=True, highlight=False)
        )
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[speed]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task = None
        self.epochs = 0

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "prepare_begin":
            self.task = self.progress.add_task(
                "prepare",
                total=None,
                epoch="0",
                loss="-",
                acc="-",
                speed="preparing kernels (compiled on the first run, then loaded from cache)",
            )
        elif event == "prepare_end":
            if self.task is not None:
                self.progress.remove_task(self.task)
                self.task = None
            if info["seconds"] >= 2:
                self.lines.print(
                    f"kernels ready in {info['seconds']:.1f}s (compiled once; later runs load "
                    "them from numba's cache)",
                    soft_wrap=True,
                    highlight=False,
                )
        elif event == "epoch_begin":
            self.epochs = info["epochs"]
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(
                "train",
                total=info["batches"],
                epoch=f"{info['epoch']}/{info['epochs']}",
                loss="-",
                acc="-",
                speed="",
            )
        elif event == "batch_end":
            speed = info["samples"] / info["seconds"] if info["seconds"] > 0 else 0
            self.progress.update(
                self.task,
                completed=info["batch"],
                loss=_fmt(info["loss"]),
                acc=_fmt(info["accuracy"]),
                speed=f"{speed:,.0f} samples/s",
            )
        elif event == "epoch_end":
            self.lines.print(epoch_line(info, self.epochs), soft_wrap=True, highlight=False)


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """``epoch 3/10  loss 0.1234  accuracy 0.9600  val_loss ...  2.1s (1,234 samples/s)``."""
    speed = record.get("samples_per_second") or 0
    return (
        f"epoch {record['epoch']}/{epochs}  loss {_fmt(record['loss'])}  "
        f"accuracy {_fmt(record['accuracy'])}  val_loss {_fmt(record['val_loss'])}  "
        f"val_accuracy {_fmt(record['val_accuracy'])}  lr {record['learning_rate']:.3g}  "
        f"{record['seconds']:.1f}s ({speed:,.0f} samples/s)"
    )
