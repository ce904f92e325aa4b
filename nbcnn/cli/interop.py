"""Interop: ``export`` (ONNX) and ``import-keras-weights`` (the library side is
:mod:`nbcnn.export_onnx` and :mod:`nbcnn.keras_import`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nbcnn.cli.common import ConfigArg, WeightsOpt, handles_errors, say


@handles_errors
def export(
    config: ConfigArg,
    weights: WeightsOpt,
    onnx: Annotated[Path, typer.Option("--onnx", help="The .onnx file to write.")],
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset version.")] = 17,
    check: Annotated[
        bool,
        typer.Option("--check", help="Run it in ONNX Runtime and compare with nbcnn's output."),
    ] = False,
):
    """Export the model with its weights to ONNX (input channels-last, as in the config)."""
    from nbcnn.export_onnx import export_onnx, run_onnx
    from nbcnn.prepare import model_with_weights

    _, model, _ = model_with_weights(config, weights)
    proto = export_onnx(model, onnx, opset)
    say(
        f"{onnx}: opset {opset}, {len(proto.graph.node)} nodes, input (N, "
        f"{', '.join(map(str, model.input_shape))})"
    )
    if check:
        import numpy as np

        x = np.random.default_rng(0).random((8, *model.input_shape), dtype=np.float32)
        diff = float(np.abs(run_onnx(proto, x) - model.predict(x)).max())
        say(f"onnxruntime vs nbcnn on 8 random inputs: max abs difference {diff:.2e}")


@handles_errors
def import_keras_weights(
    config: ConfigArg,
    keras_file: Annotated[
        Path, typer.Argument(help="Keras weights: .weights.h5 (Keras 3), .h5 (Keras 2), .keras.")
    ],
    out: Annotated[Path, typer.Option("--out", help="The nbcnn weights (.npz) to write.")],
):
    """Convert weights saved by Keras's model.save_weights into nbcnn's .npz for CONFIG (the
    same layers as the Keras model), checking every shape."""
    from nbcnn.keras_import import convert
    from nbcnn.prepare import model_with_weights

    _, model, _ = model_with_weights(config)
    for m in convert(model, keras_file, out):
        shapes = ", ".join("x".join(map(str, s)) for s in m.shapes)
        say(f"{m.layer} ({m.type}) <- {m.source}: {shapes}")
    say(f"{out}: weights for model {model.name!r}")
