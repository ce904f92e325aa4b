"""``nbcnn evaluate`` and ``nbcnn predict``: a trained model on test data or new inputs."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from nbcnn.cli.common import (
    ConfigArg,
    JsonOpt,
    WeightsOpt,
    console,
    handles_errors,
    loading_data,
    plugin_output_to_stderr,
    say,
)
from nbcnn.errors import DataError, printable
from nbcnn.jsonout import print_json
from nbcnn.resources import inference_batch_size


@handles_errors
def evaluate(
    config: ConfigArg,
    weights: WeightsOpt,
    data: Annotated[
        str | None,
        typer.Option(
            help="What train --data takes, instead of train.data; for a folder or csv "
            "dataset, an image folder or CSV file whose images are all tested."
        ),
    ] = None,
    json_output: JsonOpt = False,
):
    """Loss and metrics on the test split; for classification also the confusion matrix and
    per-class precision and recall (per label for multi-label binary_crossentropy)."""
    import numpy as np

    from nbcnn.prepare import dataset_for_path, load_data, model_with_weights
    from nbcnn.spec import IMAGE_DATASETS

    with plugin_output_to_stderr(json_output):
        _, model, tr = model_with_weights(config, weights)
        if data is not None and tr.dataset in IMAGE_DATASETS:
            # Every image of DATA is tested, its classes mapped to the training folder's.
            tr = replace(tr, test_path=data, test_split=0.0)
        elif data is not None:
            tr = replace(tr, path=data, dataset=dataset_for_path(data, tr.dataset))
        with loading_data(tr.dataset) as decoding:
            dataset = load_data(model, tr, config, progress=decoding)
        # Weights that overflow show as a non-finite loss (null in --json, with a note), not
        # as NumPy warnings from inside the layers.
        with np.errstate(over="ignore", invalid="ignore"):
            result = model.evaluate(dataset.x_test, dataset.y_test, inference_batch_size(model))
    if json_output:
        print_json(result)
        return
    from nbcnn.progress import values_text

    out = console()
    out.print(
        f"test: {values_text(result)}  ({result['samples']} samples, {printable(dataset.source)})",
        highlight=False,
        markup=False,
    )
    if "confusion_matrix" in result:
        out.print(_report_table(result))


def _report_table(result: dict):
    """The confusion matrix with per-class precision and recall (one row per true class), or
    for multi-label results one row per label: tn, fp, fn, tp, precision, recall."""
    from rich.table import Table

    def ratio(value):
        return "-" if value is None else f"{value:.3f}"

    matrix, precision, recall = (result[k] for k in ("confusion_matrix", "precision", "recall"))
    multi_label = "per_class_accuracy" not in result
    title = (
        "Per label at threshold 0.5"
        if multi_label
        else "Confusion matrix (rows: true class, columns: predicted)"
    )
    table = Table(title=title)
    table.add_column("label" if multi_label else "class")
    heads = ["tn", "fp", "fn", "tp"] if multi_label else [str(c) for c in range(len(matrix))]
    for head in [*heads, "precision", "recall"]:
        table.add_column(head, justify="right")
    for c, row in enumerate(matrix):
        counts = [n for pair in row for n in pair] if multi_label else row
        table.add_row(str(c), *map(str, counts), ratio(precision[c]), ratio(recall[c]))
    return table


#: Images from folders and lists that ``predict`` without ``--out`` prints; more is refused
#: with a hint to write them to a file (a terminal is no place for a million lines).
PRINT_LIMIT = 1000


@handles_errors
def predict(
    config: ConfigArg,
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Images (PNG/JPEG...), .npz files of arrays, folders (searched recursively "
            "for images) or .txt files listing one image path per line."
        ),
    ],
    weights: WeightsOpt,
    json_output: JsonOpt = False,
    top: Annotated[int, typer.Option(min=1, help="How many classes to show per input.")] = 3,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the predictions to this .csv file or .parquet folder, on Dask, "
            "resumable (docs/batch-prediction.md).",
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="With --out: a running Dask scheduler's address (tcp://host:8786)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="With --out: worker processes of the local Dask cluster (default: one per "
            "core); 0 predicts in this process.",
        ),
    ] = None,
    partition_size: Annotated[
        int | None,
        typer.Option(min=1, help="With --out: images per task [default: 1000]."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="With --out: start again instead of resuming.")
    ] = False,
):
    """Classes and probabilities for images, folders and lists of images, or the arrays in
    .npz files; printed, or with --out written to a CSV or Parquet file."""
    import numpy as np

    if scheduler is not None and workers is not None:
        raise DataError("--workers sizes the local cluster; --scheduler uses another: not both")
    if out is not None:
        _predict_to_file(
            config,
            weights,
            inputs,
            out,
            top,
            scheduler,
            workers,
            partition_size,
            overwrite,
            json_output,
        )
        return
    given = {
        "--scheduler": scheduler,
        "--workers": workers,
        "--partition-size": partition_size,
        "--overwrite": overwrite or None,
    }
    for flag, value in given.items():
        if value is not None:
            raise DataError(f"{flag} goes with --out (predictions written to a file)")
    from nbcnn.batchpredict.inputs import classify, expand

    inputs = [Path(p) for p in expand(classify(inputs), PRINT_LIMIT)]
    with plugin_output_to_stderr(json_output):
        labels, probs = _predict(config, weights, inputs)
    probs = probs.reshape(len(labels), -1)
    results = []
    for label, p in zip(labels, probs):
        order = np.argsort(-p)[:top]
        results.append(
            {
                "input": label,
                "class": int(order[0]),
                "top": [{"class": int(c), "probability": float(p[c])} for c in order],
            }
        )
    if json_output:
        print_json(results)
        return
    for r in results:
        others = ", ".join(f"{t['class']}: {t['probability']:.3f}" for t in r["top"])
        print(f"{printable(r['input'])}: class {r['class']}  ({others})")


def _predict_to_file(
    config, weights, inputs, out, top, scheduler, workers, partition_size, overwrite, json_output
):
    """``predict --out``: the batch job of :mod:`nbcnn.batchpredict`, its progress on stderr
    and one line (or --json) at the end. Ctrl-C keeps the partitions written."""
    from nbcnn.batchpredict import predict_to_file

    report = _BatchProgress()
    try:
        with plugin_output_to_stderr(json_output), report:
            summary = predict_to_file(
                config,
                weights,
                inputs,
                out,
                top=top,
                partition_size=partition_size or 1000,
                workers=workers,
                scheduler=scheduler,
                overwrite=overwrite,
                progress=report,
            )
    except KeyboardInterrupt:
        done = report.last
        written = f"{done.images:,} images written this run" if done else "nothing written yet"
        print(
            f"nbcnn: interrupted: {written}; run the same command again to resume",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None
    if json_output:
        print_json(summary.as_dict())
        return
    resumed = (
        f"; {summary.resumed_images:,} written before, resumed"
        if summary.resumed_partitions
        else ""
    )
    say(
        f"{printable(summary.out)}: {summary.images:,} images in {summary.seconds:.1f} s, "
        f"{summary.images_per_second:,.0f} images/s ({summary.workers}){resumed}"
    )
    if summary.failed:
        print(
            f"nbcnn: warning: {summary.failed:,} image(s) could not be read: their rows hold "
            "the reason in the error column",
            file=sys.stderr,
        )


class _BatchProgress:
    """Progress of a batch job on stderr: a live count and rate on a terminal, else a line
    every :attr:`EVERY` seconds (logs of long jobs show they advance)."""

    EVERY = 30.0

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.bar = None
        self.last = None
        self.printed = 0.0

    def __enter__(self):
        if self.console.is_terminal:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                SpinnerColumn(),
                TextColumn("predicting: {task.fields[text]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("predict", total=None, text="starting workers")
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False

    def __call__(self, summary) -> None:
        self.last = summary
        text = f"{summary.images:,} images, {summary.images_per_second:,.0f}/s" + (
            f", {summary.failed:,} unreadable" if summary.failed else ""
        )
        if self.bar is not None:
            self.bar.update(self.task, text=text)
        elif summary.seconds - self.printed >= self.EVERY:
            self.printed = summary.seconds
            print(f"nbcnn: predicting: {text}", file=sys.stderr, flush=True)


def _predict(config: Path, weights: Path, inputs: list[Path]):
    """``(labels, probabilities)`` for the images and the arrays of .npz files in ``inputs``."""
    import numpy as np

    from nbcnn.data import load_images, load_prediction_arrays
    from nbcnn.prepare import model_with_weights

    _, model, _ = model_with_weights(config, weights)
    labels, batches = [], []
    images = [p for p in inputs if p.suffix.lower() != ".npz"]
    for path in inputs:
        if path.suffix.lower() == ".npz":
            x = load_prediction_arrays(str(path), model.input_shape)
            batches.append(x)
            labels += [f"{path}[{i}]" for i in range(len(x))]
    if images:
        batches.append(load_images([str(p) for p in images], model.input_shape))
        labels += [str(p) for p in images]
    if not labels:
        raise DataError("no images to predict: the inputs hold no arrays")
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite results are reported
        probs = model.predict(np.concatenate(batches), inference_batch_size(model))
    return labels, probs
