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
            TextColumn("{task.fields[values]}  {task.fields[speed]}"),
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
                values="loss -",
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
                values="loss -",
                speed="",
            )
        elif event == "batch_end":
            speed = info["samples"] / info["seconds"] if info["seconds"] > 0 else 0
            self.progress.update(
                self.task,
                completed=info["batch"],
                values=values_text(info),
                speed=f"{speed:,.0f} samples/s",
            )
        elif event == "epoch_end":
            self.lines.print(epoch_line(info, self.epochs), soft_wrap=True, highlight=False)


#: Keys of progress events and epoch records that are not loss or metric values.
_NOT_VALUES = ("epoch", "batch", "samples", "seconds", "samples_per_second", "learning_rate")


def values_text(values: dict[str, Any]) -> str:
    """``loss 0.1234  accuracy 0.9600  val_loss ...``: the loss and every metric (the train
    metrics nbcnn.metrics records, and their val_ twins), in the record's order."""
    return "  ".join(
        f"{k} {_fmt(v)}"
        for k, v in values.items()
        if k not in _NOT_VALUES and (v is None or isinstance(v, float))  # not the report lists
    )


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """``epoch 3/10  loss 0.1234  accuracy 0.9600  val_loss ...  2.1s (1,234 samples/s)``."""
    speed = record.get("samples_per_second") or 0
    return (
        f"epoch {record['epoch']}/{epochs}  {values_text(record)}  "
        f"lr {record['learning_rate']:.3g}  {record['seconds']:.1f}s ({speed:,.0f} samples/s)"
    )


class DecodeProgress:
    """A ``progress(done, total)`` for decoding image folders (:mod:`nbcnn.streaming`): a bar
    on stderr while the images are decoded, then one line saying how fast it went. Nothing
    is drawn when the images come from the cache. Use it as a context manager."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = None
        self.task = None
        self.started = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.progress is not None:  # decoding failed: take the bar away before the error
            self.progress.stop()
            self.progress = None
        return False

    def __call__(self, done: int, total: int) -> None:
        import time

        if not self.started:
            self.started = time.perf_counter()
        if self.progress is None and done < total and self.console.is_terminal:
            # Only on a terminal: elsewhere rich's bar draws nothing but leaves a blank line.
            self.progress = Progress(
                TextColumn("decoding images into the cache (once)"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("decode", total=total)
        if self.progress is not None:
            self.progress.update(self.task, completed=done)
        if done == total:
            if self.progress is not None:
                self.progress.stop()
                self.progress = None
            seconds = time.perf_counter() - self.started
            self.started = 0.0  # a second decode (test_path) times itself
            self.console.print(
                f"decoded {total:,} images in {seconds:.1f}s ({total / max(seconds, 1e-9):,.0f} "
                "images/s); later runs read them from the cache",
                highlight=False,
                soft_wrap=True,
            )
