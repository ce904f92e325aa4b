"""Commands for pictures and interop: ``convolve``, ``featuremaps``, ``filters``, ``plot``,
``export`` and ``import-keras-weights``.

They register on the ``nbcnn`` Typer app of :mod:`nbcnn.cli` (which imports this module) and
follow its rules: parse, call the library (:mod:`nbcnn.pictures`, :mod:`nbcnn.export_onnx`,
:mod:`nbcnn.keras_import`), print; errors are one line with exit code 2.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer


def _cli_module():
    # Under `python -m nbcnn.cli` the running app is __main__'s, not a second import of
    # nbcnn.cli: register there, or the commands would land on an app nobody runs.
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) == "nbcnn.cli":
        return main
    return importlib.import_module("nbcnn.cli")


_cli = _cli_module()
app, handles_errors, console = _cli.app, _cli.handles_errors, _cli.console
ConfigArg, _model_with_weights = _cli.ConfigArg, _cli._model_with_weights

WeightsOpt = Annotated[Path, typer.Option(help="Weights (.npz) saved by nbcnn train.")]
OutOpt = Annotated[Path, typer.Option("--out", help="The picture to write (.png).")]


def _say(text: str) -> None:
    console().print(text, highlight=False, soft_wrap=True)


@app.command()
@handles_errors
def convolve(
    image: Annotated[Path, typer.Argument(help="An image file (PNG, JPEG...).")],
    out: OutOpt,
    kernel: Annotated[
        str,
        typer.Option(help="edge, sobel-x, sobel-y, sharpen, blur, or a 2-D kernel in a .npy."),
    ] = "edge",
    stride: Annotated[int, typer.Option(help="Step of the window.")] = 1,
    padding: Annotated[str, typer.Option(help="valid (no padding) or same (Keras's).")] = "valid",
    grey: Annotated[
        bool, typer.Option("--grey", help="Convert a colour image to grey first.")
    ] = False,
    rescale: Annotated[
        str,
        typer.Option(
            help="How the response becomes pixels: auto, clip, abs, signed (0 = mid grey), minmax."
        ),
    ] = "auto",
):
    """Apply a filter to an image with nbcnn's own convolution kernel, each colour channel on
    its own (or in grey), and write the response rescaled for viewing."""
    from nbcnn import pictures

    w = pictures.load_kernel(kernel)
    pictures.check_rescale(rescale)  # before any work
    x = pictures.read_image(image, grey=grey)
    kernel_file = None if kernel in pictures.FILTERS else kernel
    y = pictures.convolve_image(x, w, stride=stride, padding=padding, kernel_file=kernel_file)
    pictures.write_image(out, pictures.to_uint8(pictures.rescale(y, rescale, w)))
    h, wd, c = y.shape
    _say(
        f"{out}: {wd}x{h}, {'grey' if c == 1 else 'RGB'}, kernel {kernel} {w.shape[0]}x{w.shape[1]}"
    )


@app.command()
@handles_errors
def featuremaps(
    config: ConfigArg,
    image: Annotated[Path, typer.Argument(help="An image, resized to the model's input.")],
    weights: WeightsOpt,
    out: OutOpt,
    layer: Annotated[
        str | None, typer.Option(help="The layer whose output to draw (default: the first).")
    ] = None,
):
    """Draw each output channel of a layer for one image as a labelled tile: what each filter
    answers to."""
    from nbcnn import pictures
    from nbcnn.data import load_images

    _, model, _ = _model_with_weights(config, weights)
    with pictures.refuse_image_bombs(image):
        x = load_images([str(image)], model.input_shape)[0]
    grid = pictures.featuremap_grid(model, x, layer, source=Path(image).name)
    pictures.write_image(out, grid.pixels)
    _say(f"{out}: {len(grid.boxes)} feature maps of {grid.tile_shape[0]}x{grid.tile_shape[1]}")


@app.command()
@handles_errors
def filters(
    config: ConfigArg,
    weights: WeightsOpt,
    out: Annotated[Path, typer.Option("--out", help="The picture to write (.png).")] = Path(
        "filters.png"
    ),
    layer: Annotated[
        str | None,
        typer.Option(help="A Conv2D/Conv1D layer (default: the first convolution)."),
    ] = None,
):
    """Draw a convolution layer's learned filters, one tile per filter (per filter and input
    channel when there are neither 1 nor 3 input channels)."""
    from nbcnn import pictures

    _, model, _ = _model_with_weights(config, weights)
    grid = pictures.filter_grid(model, layer)
    pictures.write_image(out, grid.pixels)
    _say(f"{out}: {len(grid.boxes)} tiles of {grid.tile_shape[0]}x{grid.tile_shape[1]}")


@app.command()
@handles_errors
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by nbcnn train.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write (default: RUN_DIR/curves.png).")
    ] = None,
):
    """Draw the training curves of a run (loss and accuracy per epoch, training and
    validation) from its metrics.jsonl."""
    from nbcnn.pictures import write_curves

    _say(f"{write_curves(run_dir, out)}")


@app.command()
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

    _, model, _ = _model_with_weights(config, weights)
    proto = export_onnx(model, onnx, opset)
    _say(
        f"{onnx}: opset {opset}, {len(proto.graph.node)} nodes, input (N, "
        f"{', '.join(map(str, model.input_shape))})"
    )
    if check:
        import numpy as np

        x = np.random.default_rng(0).random((8, *model.input_shape), dtype=np.float32)
        diff = float(np.abs(run_onnx(proto, x) - model.predict(x)).max())
        _say(f"onnxruntime vs nbcnn on 8 random inputs: max abs difference {diff:.2e}")


@app.command("import-keras-weights")
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

    _, model, _ = _fresh_model(config)
    for m in convert(model, keras_file, out):
        shapes = ", ".join("x".join(map(str, s)) for s in m.shapes)
        _say(f"{m.layer} ({m.type}) <- {m.source}: {shapes}")
    _say(f"{out}: weights for model {model.name!r}")


def _fresh_model(config: Path):
    spec, model, tr = _cli._prepare(config, None, {})
    model.initialize(tr.seed)
    return spec, model, tr
