"""Pictures: ``convolve``, ``featuremaps``, ``filters``, ``augment-preview`` and ``plot`` (the
library side is :mod:`nbcnn.pictures` and :mod:`nbcnn.augment`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nbcnn.cli.common import ConfigArg, OutOpt, WeightsOpt, handles_errors, say


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
    say(
        f"{out}: {wd}x{h}, {'grey' if c == 1 else 'RGB'}, kernel {kernel} {w.shape[0]}x{w.shape[1]}"
    )


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
    from nbcnn.prepare import model_with_weights

    _, model, _ = model_with_weights(config, weights)
    with pictures.refuse_image_bombs(image):
        x = load_images([str(image)], model.input_shape)[0]
    grid = pictures.featuremap_grid(model, x, layer, source=Path(image).name)
    pictures.write_image(out, grid.pixels)
    say(f"{out}: {len(grid.boxes)} feature maps of {grid.tile_shape[0]}x{grid.tile_shape[1]}")


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
    from nbcnn.prepare import model_with_weights

    _, model, _ = model_with_weights(config, weights)
    grid = pictures.filter_grid(model, layer)
    pictures.write_image(out, grid.pixels)
    say(f"{out}: {len(grid.boxes)} tiles of {grid.tile_shape[0]}x{grid.tile_shape[1]}")


@handles_errors
def augment_preview(
    config: ConfigArg,
    out: OutOpt,
    samples: Annotated[
        int, typer.Option(min=1, max=1024, help="How many training images to show.")
    ] = 16,
):
    """Draw training images of CONFIG's train.data beside their augmented versions (its
    train.augment, drawn from the run's seed): what training will see."""
    from nbcnn import augment, pictures
    from nbcnn.errors import ConfigError
    from nbcnn.prepare import load_data, prepare

    _, model, train = prepare(config)
    try:
        if train.augment is None:
            raise ConfigError(
                "the config has no augment section under train: nothing to preview",
                where="train.augment",
            )
        augmenter = augment.Augmenter(train.augment)
        augmenter.check_input_shape(model.input_shape, "train.augment")
        x = load_data(model, train, config).x_train[:samples]
        title = f"{model.name}: {', '.join(augmenter.config)} (seed {train.seed})"
        grid = augment.preview_grid(x, augmenter, augment.augment_rng(train.seed), title)
    except ConfigError as err:
        raise err.located(file=str(config)) from None
    pictures.write_image(out, grid.pixels)
    say(f"{out}: {len(x)} training images, each beside its augmented version")


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

    say(f"{write_curves(run_dir, out)}")
