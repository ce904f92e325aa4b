"""The ``nbcnn`` command: a thin Typer layer that parses, calls the library, prints.

Known errors (:class:`~nbcnn.errors.NbcnnError`) become one line on stderr and exit code 2
(bad input) or 1 (failure during work); a traceback means a bug. The library never imports
typer.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from nbcnn.errors import ConfigError, DataError, NbcnnError, printable
from nbcnn.jsonout import print_json
from nbcnn.resources import inference_batch_size

app = typer.Typer(
    name="nbcnn",
    help="Small, fast CNNs on the CPU: YAML models, Keras-exact summaries, Numba kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from nbcnn import __version__

        print(f"nbcnn {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
):
    """Small, fast CNNs on the CPU: YAML models, Keras-exact summaries, Numba kernels."""


def _fail(message: str, code: int) -> None:
    # One line, whatever the message holds: scripts grep it, people read it.
    print(f"nbcnn: error: {printable(' '.join(message.split()))}", file=sys.stderr)
    raise typer.Exit(code)


def handles_errors(command):
    """Map the project's errors to one line and an exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except NbcnnError as err:
            _fail(str(err), err.exit_code)
        except (MemoryError, ImportError, OSError) as err:
            if not _out_of_memory(err):
                raise
            _fail(
                "ran out of memory (the machine's, `ulimit -v` or a cgroup limit) "
                f"{'loading a library' if isinstance(err, (ImportError, OSError)) else ''}: "
                f"{type(err).__name__}: {' '.join(str(err).split())[:160]}",
                2,
            )

    return wrapper


def _out_of_memory(err: BaseException) -> bool:
    """True for the ways a process under a memory limit fails: a MemoryError, or a shared
    library (numpy's, scipy's, llvmlite's) the loader could not map."""
    if isinstance(err, MemoryError) or getattr(err, "errno", None) == errno.ENOMEM:
        return True
    text = str(err)
    return any(
        sign in text for sign in ("failed to map segment", "Cannot allocate memory", "libllvmlite")
    )


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    from nbcnn.layers.args import show

    try:
        shape = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1 or len(shape) > 4:
        raise ConfigError(
            f"expected 1 to 4 positive ints separated by commas, e.g. 32,32,3; got {show(text)}",
            where="--input-shape",
        )
    return shape


def console():
    """A rich Console; when output is not a terminal, wide enough that tables don't wrap."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=max(out.width, 120))


ConfigArg = Annotated[Path, typer.Argument(help="The model's YAML config.", show_default=False)]


@app.command()
@handles_errors
def summary(
    config: ConfigArg,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for tools.")] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Show the arithmetic behind each parameter count.")
    ] = False,
    plain: Annotated[
        bool, typer.Option("--plain", help="Only Keras's columns (no MACs, memory, RF).")
    ] = False,
    input_shape: Annotated[
        str | None,
        typer.Option("--input-shape", help="Override input_shape, e.g. 32,32,3.", metavar="H,W,C"),
    ] = None,
):
    """Print the Keras-style summary of CONFIG: output shapes, parameters, MACs, memory and
    receptive field, computed instantly without compiling anything."""
    from nbcnn.model import load_model
    from nbcnn.registry import stdout_to_stderr
    from nbcnn.summary import render_table, summarize, to_json

    shape = _parse_shape(input_shape)
    with stdout_to_stderr():  # what plugins print while they build and calculate
        model = load_model(config, input_shape=shape)
        try:
            result = summarize(model)
        except ConfigError as err:
            raise err.located(file=str(config)) from None
    if json_output:
        print_json(to_json(result), indent=2)
        return
    print(render_table(result, extras=not plain, explain=explain))


@app.command()
@handles_errors
def layers(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for tools.")] = False,
):
    """List the registered layer types: distribution, version, whether each can train, status.
    Imports every plugin (other commands import only the types a config uses), reporting broken
    ones and imports slower than a second."""
    from nbcnn.registry import registry

    entries = registry().load_all()  # every module imported, slow and broken ones reported
    if json_output:
        print_json([e.as_dict() for e in entries], indent=2)
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Layer types (entry-point group nbcnn.layers)", title_justify="left")
    for column in ("Type", "Distribution", "Version", "Trains", "Status"):
        table.add_column(column)
    for e in entries:
        status = e.status
        if e.error:
            status = f"broken: {e.error}"
        elif e.clashes_with:
            status = f"clash with {', '.join(e.clashes_with)}: use {e.distribution}:{e.name}"
        if e.slow:
            status += f" (slow import: {e.import_seconds:.1f} s)"
        cells = (e.name, e.distribution, e.version, "yes" if e.trainable else "no", status)
        # Text, not str: no rich markup in a plugin's name, and non-printables escaped.
        table.add_row(*(Text(printable(cell)) for cell in cells))
    console().print(table)


def _dataset_for_path(path: str, current: str) -> str:
    """``--data PATH`` picks the loader from the path: a folder is IDX, a file is npz."""
    if os.path.isdir(path):  # False for paths the OS refuses too: the loader names them
        return "idx"
    if current in ("npz", "idx"):
        return current
    return "npz"


def _prepare(config: Path, data: str | None, overrides: dict):
    """Load config, model and train spec with CLI overrides; all checks before heavy work."""
    from dataclasses import replace

    from nbcnn.model import Sequential
    from nbcnn.spec import check_output_path, load_spec, parse_train

    spec = load_spec(config)
    try:
        model = Sequential.from_spec(spec)
        train = parse_train(spec.train, default_output=f"runs/{spec.name}")
    except ConfigError as err:
        raise err.located(file=str(config)) from None
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "output" in changes:
        changes["output"] = check_output_path(changes["output"], "--output")
    if data is not None:
        changes["path"] = data
        changes["dataset"] = _dataset_for_path(data, train.dataset)
    train = replace(train, **changes)
    early = train.early_stopping
    if early and early["monitor"].startswith("val_") and train.validation_split == 0:
        raise ConfigError(
            f"monitor {early['monitor']!r} needs validation data: set "
            "train.data.validation_split above 0 or monitor 'loss'",
            file=str(config),
            where="train.early_stopping.monitor",
        )
    missing = model.without_compute()
    if missing:
        i, layer, dist = missing[0]
        raise ConfigError(
            f"layer type {type(layer).__name__} from distribution {dist!r} brings no compute "
            "(calculator only), so this model cannot be trained or run",
            file=str(config),
            where=f"layers[{i}] {layer.name!r}",
        )
    return spec, model, train


def _load_data(model, train, config: Path):
    from nbcnn.data import ShapeMismatch, load_dataset

    classes = model.output_shape[-1]
    try:
        return load_dataset(
            train.dataset,
            path=train.path,
            input_shape=model.input_shape,
            validation_split=train.validation_split,
            seed=train.seed,
            num_classes=classes,
        )
    except ConfigError as err:
        raise err.located(file=str(config)) from None
    except ShapeMismatch as err:
        raise ConfigError(
            f"{list(model.input_shape)} does not fit the data: {err.file or 'the data'} has "
            f"samples of shape {err.samples} (change input_shape, or give other data)",
            file=str(config),
            where="input_shape",
        ) from None


def _set_threads(threads: int | None) -> int | None:
    """Apply ``threads``; when it is more than numba's cores, say so and return what is used."""
    if threads is None:
        return None
    from nbcnn.kernels._jit import set_threads

    used = set_threads(threads)
    if used != threads:
        print(
            f"nbcnn: warning: {threads} threads asked for, but numba sees {used} core(s); "
            f"using {used}",
            file=sys.stderr,
        )
    return used


@app.command()
@handles_errors
def train(
    config: ConfigArg,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override train.epochs.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Override train.batch_size.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="An .npz (Keras mnist.npz layout) or a folder of MNIST IDX files."),
    ] = None,
    output: Annotated[str | None, typer.Option(help="Override train.output.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Override train.seed.")] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, max=1024, help="Numba threads (default: all cores).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last completed epoch in output.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier run in the output folder.")
    ] = False,
):
    """Train the model of CONFIG on its train.data (scikit-learn's digits by default) into a
    run folder of its own: model.npz, best.npz, checkpoint.npz and metrics.jsonl of the last
    completed epoch (committed together), config.yaml and curves.png."""

    from dataclasses import replace

    from nbcnn.pictures import write_curves
    from nbcnn.resources import check_training_memory
    from nbcnn.runs import RunFolder
    from nbcnn.train import StopRequested

    if resume and overwrite:
        raise ConfigError(
            "--resume continues the run in the output folder and --overwrite replaces it: "
            "pass one of them",
            where="--resume --overwrite",
        )
    spec, model, tr = _prepare(
        config,
        data,
        {
            "epochs": epochs,
            "batch_size": batch_size,
            "output": output,
            "seed": seed,
            "threads": threads,
        },
    )
    folder = RunFolder(tr.output)
    # Every check that can refuse the run comes before the folder is created or changed.
    folder.check_can_start(resume=resume, overwrite=overwrite, config_file=config)
    if resume and folder.has_checkpoint():  # continue the run as recorded, flags checked
        from nbcnn.resume import resumed_train

        flags = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "threads": threads}
        flags = {k: v for k, v in flags.items() if v is not None}
        if data is not None:
            flags.update(path=tr.path, dataset=tr.dataset)
        tr = resumed_train(str(folder.file("config.yaml")), spec.raw, tr, flags)
    check_training_memory(model, tr.batch_size, tr.optimizer)  # before anything is allocated
    _load_compiler()
    used = _set_threads(tr.threads)
    if used is not None:
        tr = replace(tr, threads=used)
    dataset = _load_data(model, tr, config)
    model.compile(optimizer=tr.optimizer)
    model.initialize(tr.seed)
    if resume and folder.has_checkpoint():
        folder.load_checkpoint(model)  # refused here if it does not fit: nothing written yet
    folder.acquire(resume=resume, overwrite=overwrite)
    resume_command = _resume_command(config, tr.output)
    try:
        try:
            history = _train_in(folder, config, spec, model, tr, dataset, resume)
        finally:
            folder.release()
        _after_training(folder, model, dataset, history.interrupted)
    except StopRequested as stop:
        if stop.completed:
            print(
                f"nbcnn: interrupted in epoch {stop.epoch}; epoch {stop.completed} is the last "
                f"completed one, kept in {printable(str(tr.output))}. Resume with: "
                + printable(resume_command),
                file=sys.stderr,
            )
        else:
            print(
                f"nbcnn: interrupted in epoch {stop.epoch}, before any epoch completed: "
                "nothing to resume",
                file=sys.stderr,
            )
        write_curves(tr.output, missing_ok=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        # A second Ctrl-C, or one after training: say what the run folder holds.
        done = _epochs_committed(folder)
        if done >= tr.epochs:
            print(
                f"nbcnn: Ctrl-C after training completed ({done} epochs, weights "
                f"{printable(str(folder.file('model.npz')))}); the test evaluation or "
                "curves.png was skipped",
                file=sys.stderr,
            )
            return
        print(
            f"nbcnn: interrupted; {done} epoch(s) completed and kept in "
            f"{printable(str(tr.output))}. Resume with: {printable(resume_command)}",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None


def _load_compiler() -> None:
    """Load numba's LLVM (llvmlite's shared library, ~100 MB of address space) before the data
    and the run folder: under a tight `ulimit -v` the command fails here, as one line (see
    ``handles_errors``), with nothing created, instead of in the first batch."""
    from llvmlite.binding import ffi

    ffi.lib._lib  # noqa: B018 - the property loads the library


def _epochs_committed(folder) -> int:
    try:
        return len(folder.file("metrics.jsonl").read_text().splitlines())
    except (OSError, UnicodeDecodeError):
        return 0


def _after_training(folder, model, dataset, interrupted: bool) -> None:
    """The test evaluation and curves.png of a completed run (skipped after a Ctrl-C in the
    last epoch: the run is complete, the user wants to stop)."""
    from nbcnn.pictures import write_curves

    weights = printable(str(folder.file("model.npz")))
    if interrupted:
        print(
            f"nbcnn: Ctrl-C during the last epoch: training is complete (weights {weights}); "
            "the test evaluation was skipped",
            file=sys.stderr,
        )
    else:
        result = model.evaluate(dataset.x_test, dataset.y_test, inference_batch_size(model))
        console().print(
            f"test: loss {result['loss']:.4f}  accuracy {result['accuracy']:.4f}  "
            f"({result['samples']} samples)  weights: {weights}",
            highlight=False,
            markup=False,
        )
    write_curves(folder.path, missing_ok=True)


def _resume_command(config, output) -> str:
    """The command that continues this run (its flags are in the run's config.yaml)."""
    import shlex

    words = ["nbcnn", "train", str(config), "--output", str(output), "--resume"]
    return " ".join(shlex.quote(w) for w in words)


def _train_in(folder, config: Path, spec, model, tr, dataset, resume: bool):
    """Write the resolved config into the held run folder, then train with a progress bar."""
    import yaml

    from nbcnn.io import write_text_atomic
    from nbcnn.progress import TrainingProgress
    from nbcnn.spec import train_to_dict

    resolved = {**spec.raw, "train": train_to_dict(tr)}
    write_text_atomic(folder.file("config.yaml"), yaml.safe_dump(resolved, sort_keys=False))
    console().print(f"data: {printable(dataset.source)}", highlight=False, markup=False)
    validation = (dataset.x_val, dataset.y_val) if len(dataset.x_val) else None
    with TrainingProgress() as progress:
        return model.fit(
            dataset.x_train,
            dataset.y_train,
            epochs=tr.epochs,
            batch_size=tr.batch_size,
            validation_data=validation,
            seed=tr.seed,
            output=folder,
            resume=resume,
            early_stopping=tr.early_stopping,
            callback=progress,
        )


def _model_with_weights(config: Path, weights: Path):
    spec, model, tr = _prepare(config, None, {})
    model.initialize(tr.seed)
    model.load_weights(weights)
    return spec, model, tr


@app.command()
@handles_errors
def evaluate(
    config: ConfigArg,
    weights: Annotated[Path, typer.Option(help="Weights (.npz) saved by nbcnn train.")],
    data: Annotated[
        str | None, typer.Option(help="An .npz or IDX folder instead of train.data.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for tools.")] = False,
):
    """Loss, accuracy, per-class accuracy and confusion matrix on the test split."""
    import numpy as np

    with _plugin_output_to_stderr(json_output):
        spec, model, tr = _model_with_weights(config, weights)
        if data is not None:
            from dataclasses import replace

            tr = replace(tr, path=data, dataset=_dataset_for_path(data, tr.dataset))
        dataset = _load_data(model, tr, config)
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


@app.command()
@handles_errors
def predict(
    config: ConfigArg,
    inputs: Annotated[
        list[Path], typer.Argument(help="Images (PNG/JPEG...) or .npz files of arrays.")
    ],
    weights: Annotated[Path, typer.Option(help="Weights (.npz) saved by nbcnn train.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for tools.")] = False,
    top: Annotated[int, typer.Option(min=1, help="How many classes to show per input.")] = 3,
):
    """Classes and probabilities for images or for the arrays in .npz files."""
    import numpy as np

    with _plugin_output_to_stderr(json_output):
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

    _, model, _ = _model_with_weights(config, weights)
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


def _plugin_output_to_stderr(json_output: bool):
    """With ``--json``, whatever plugins print while the model is built and run goes to
    stderr, so that stdout holds the JSON alone."""
    from contextlib import nullcontext

    from nbcnn.registry import stdout_to_stderr

    return stdout_to_stderr() if json_output else nullcontext()


from nbcnn import cli_extra  # noqa: E402,F401  (registers convolve, featuremaps, ...)


def _click_exceptions():
    """Click's exception types: vendored inside typer since 0.22, the click package before."""
    try:
        from typer._click import exceptions
    except ImportError:  # an older typer on top of click
        from click import exceptions
    return exceptions


def main() -> None:
    """Console-script entry point. Usage errors (an unknown option, a value out of range) are
    one line like every other error, instead of click's three-line "Usage:" block."""
    exceptions = _click_exceptions()
    try:
        code = app(standalone_mode=False)
    except exceptions.UsageError as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `nbcnn`: the help text
            err.show()
            sys.exit(err.exit_code)
        command = err.ctx.command_path if err.ctx is not None else "nbcnn"
        print(
            f"nbcnn: error: {' '.join(err.format_message().split())} (see '{command} --help')",
            file=sys.stderr,
        )
        sys.exit(2)
    except exceptions.ClickException as err:
        print(f"nbcnn: error: {' '.join(err.format_message().split())}", file=sys.stderr)
        sys.exit(err.exit_code)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
