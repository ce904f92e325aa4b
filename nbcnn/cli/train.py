"""``nbcnn train``: a run prepared by :mod:`nbcnn.prepare`, with a progress bar, the test
evaluation and what to do after a Ctrl-C."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from nbcnn.cli.common import (
    ConfigArg,
    console,
    handles_errors,
    load_compiler,
    loading_data,
)
from nbcnn.errors import ConfigError, printable
from nbcnn.resources import inference_batch_size


@handles_errors
def train(
    config: ConfigArg,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override train.epochs.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Override train.batch_size.")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="An .npz (Keras mnist.npz layout), a folder of MNIST IDX files, a folder of "
            "class subfolders of images, or a CSV file of image paths and labels."
        ),
    ] = None,
    output: Annotated[str | None, typer.Option(help="Override train.output.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Override train.seed.")] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1024,
            help="Numba threads (default: all cores; with --workers, per worker: the "
            "cores shared out).",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last completed epoch in output.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier run in the output folder.")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1024,
            help="Train on this many local processes in step (data-parallel over MPI, "
            "as mpiexec -n K nbcnn train; needs nbcnn[mpi]). Default: one process.",
        ),
    ] = None,
):
    """Train the model of CONFIG on its train.data (scikit-learn's digits by default) into a
    run folder of its own: model.npz, best.npz, checkpoint.npz and metrics.jsonl of the last
    completed epoch (committed together), config.yaml and curves.png."""
    from nbcnn import distributed
    from nbcnn.pictures import write_curves
    from nbcnn.prepare import apply_threads, load_data, prepare_run, run_training
    from nbcnn.progress import TrainingProgress
    from nbcnn.train import StopRequested

    options = dict(
        data=data,
        resume=resume,
        overwrite=overwrite,
        epochs=epochs,
        batch_size=batch_size,
        output=output,
        seed=seed,
        threads=threads,
    )
    try:
        group = distributed.start()  # a rank of `mpiexec -n K nbcnn train`
    except distributed.MPIMissing as err:
        raise ConfigError(str(err), where="mpiexec") from None
    if group is None and workers is not None and workers > 1:
        from nbcnn.cli.workers import launch

        launch(workers, config, options)
    if group is not None:
        _train_rank(group, config, options)
        return
    # Every check that can refuse the run comes before the folder is created or changed.
    run = prepare_run(config, **options)
    load_compiler()
    asked = apply_threads(run)
    if asked != run.train.threads:
        used = run.train.threads
        print(
            f"nbcnn: warning: {asked} threads asked for, but numba sees {used} core(s); "
            f"using {used}",
            file=sys.stderr,
        )
    with loading_data(run.train.dataset) as decoding:
        dataset = load_data(run.model, run.train, config, progress=decoding)
    folder, out = run.folder, run.train.output
    resume_command = _resume_command(config, out)

    def show_data() -> None:
        console().print(f"data: {printable(dataset.source)}", highlight=False, markup=False)

    try:
        with TrainingProgress() as progress:
            history = run_training(run, dataset, callback=progress, on_start=show_data)
        _after_training(folder, run.model, dataset, history.interrupted)
    except StopRequested as stop:
        _report_stop(stop, out, resume_command)
        write_curves(out, missing_ok=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        # A second Ctrl-C, or one after training: say what the run folder holds.
        done = _epochs_committed(folder)
        if done >= run.train.epochs:
            print(
                f"nbcnn: Ctrl-C after training completed ({done} epochs, weights "
                f"{printable(str(folder.file('model.npz')))}); the test evaluation or "
                "curves.png was skipped",
                file=sys.stderr,
            )
            return
        print(
            f"nbcnn: interrupted; {done} epoch(s) completed and kept in "
            f"{printable(str(out))}. Resume with: {printable(resume_command)}",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None


def _train_rank(group, config, options) -> None:
    """``nbcnn train`` as one rank of an MPI job (nbcnn/cli/workers.py): the same run folder,
    messages and exit codes as one process, printed by rank 0."""
    from nbcnn.cli.workers import train_rank
    from nbcnn.pictures import write_curves
    from nbcnn.train import StopRequested

    def after(run, dataset, history) -> None:
        _after_training(run.folder, run.model, dataset, history.interrupted, group)

    try:
        train_rank(group, config, options, after)
    except StopRequested as stop:  # every rank stopped after the same step
        if group.root:
            out = stop.output  # the resolved train.output (nbcnn.cli.workers.train_rank)
            _report_stop(stop, out, _resume_command(config, out))
            write_curves(out, missing_ok=True)
        raise typer.Exit(130) from None


def _report_stop(stop, out, resume_command: str) -> None:
    if stop.completed:
        print(
            f"nbcnn: interrupted in epoch {stop.epoch}; epoch {stop.completed} is the last "
            f"completed one, kept in {printable(str(out))}. Resume with: "
            + printable(resume_command),
            file=sys.stderr,
        )
    else:
        print(
            f"nbcnn: interrupted in epoch {stop.epoch}, before any epoch completed: "
            "nothing to resume",
            file=sys.stderr,
        )


def _epochs_committed(folder) -> int:
    try:
        return len(folder.file("metrics.jsonl").read_text().splitlines())
    except (OSError, UnicodeDecodeError):
        return 0


def _after_training(folder, model, dataset, interrupted: bool, group=None) -> None:
    """The test evaluation and curves.png of a completed run (skipped after a Ctrl-C in the
    last epoch: the run is complete, the user wants to stop). In an MPI job (``group``) every
    rank evaluates its share of the test set and rank 0 prints and draws."""
    from nbcnn.pictures import write_curves
    from nbcnn.progress import values_text

    if group is not None and not group.root:
        if not interrupted and len(dataset.x_test):
            _evaluate_sharded(model, dataset)
        return

    weights = printable(str(folder.file("model.npz")))
    if interrupted:
        print(
            f"nbcnn: Ctrl-C during the last epoch: training is complete (weights {weights}); "
            "the test evaluation was skipped",
            file=sys.stderr,
        )
    elif not len(dataset.x_test):
        console().print(
            f"no test images ({dataset.test_missing or 'the data holds none'}): the test "
            f"evaluation was skipped; weights: {weights}",
            highlight=False,
            markup=False,
        )
    else:
        if group is None:
            result = model.evaluate(dataset.x_test, dataset.y_test, inference_batch_size(model))
        else:
            result = _evaluate_sharded(model, dataset)
        console().print(
            f"test: {values_text(result)}  ({result['samples']} samples)  weights: {weights}",
            highlight=False,
            markup=False,
        )
    write_curves(folder.path, missing_ok=True)


def _evaluate_sharded(model, dataset) -> dict:
    """``model.evaluate`` of the test set with every rank of an MPI job predicting a share."""
    from nbcnn.train import _labels, evaluate_arrays

    x = model.check_input(dataset.x_test)
    y = _labels(dataset.y_test, len(x), model)
    return evaluate_arrays(model, x, y, inference_batch_size(model), checked=True, sharded=True)


def _resume_command(config, output) -> str:
    """The command that continues this run (its flags are in the run's config.yaml)."""
    import shlex

    words = ["nbcnn", "train", str(config), "--output", str(output), "--resume"]
    return " ".join(shlex.quote(w) for w in words)
