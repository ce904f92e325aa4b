"""``nbcnn evaluate`` and ``nbcnn predict``: a trained model on test data or new inputs."""

from __future__ import annotations

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
    plugin_output_to_stderr,
)
from nbcnn.errors import DataError, printable
from nbcnn.jsonout import print_json
from nbcnn.resources import inference_batch_size


@handles_errors
def evaluate(
    config: ConfigArg,
    weights: WeightsOpt,
    data: Annotated[
        str | None, typer.Option(help="An .npz or IDX folder instead of train.data.")
    ] = None,
    json_output: JsonOpt = False,
):
    """Loss, accuracy, per-class accuracy and confusion matrix on the test split."""
    import numpy as np

    from nbcnn.prepare import dataset_for_path, load_data, model_with_weights

    with plugin_output_to_stderr(json_output):
        _, model, tr = model_with_weights(config, weights)
        if data is not None:
            tr = replace(tr, path=data, dataset=dataset_for_path(data, tr.dataset))
        dataset = load_data(model, tr, config)
        # Weights that overflow show as a non-finite loss (null in --json, with a note), not
        # as NumPy warnings from inside the layers.
        with np.errstate(over="ignore", invalid="ignore"):
            result = model.evaluate(dataset.x_test, dataset.y_test, inference_batch_size(model))
    if json_output:
        print_json(result)
        return
    from rich.table import Table

    out = console()
    out.print(
        f"test: loss {result['loss']:.4f}  accuracy {result['accuracy']:.4f}  "
        f"({result['samples']} samples, {printable(dataset.source)})",
        highlight=False,
        markup=False,
    )
    table = Table(title="Confusion matrix (rows: true class, columns: predicted)")
    k = len(result["confusion_matrix"])
    table.add_column("class")
    for c in range(k):
        table.add_column(str(c), justify="right")
    table.add_column("accuracy", justify="right")
    for c, row in enumerate(result["confusion_matrix"]):
        acc = result["per_class_accuracy"][c]
        table.add_row(str(c), *map(str, row), "-" if acc is None else f"{acc:.3f}")
    out.print(table)


@handles_errors
def predict(
    config: ConfigArg,
    inputs: Annotated[
        list[Path], typer.Argument(help="Images (PNG/JPEG...) or .npz files of arrays.")
    ],
    weights: WeightsOpt,
    json_output: JsonOpt = False,
    top: Annotated[int, typer.Option(min=1, help="How many classes to show per input.")] = 3,
):
    """Classes and probabilities for images or for the arrays in .npz files."""
    import numpy as np

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
