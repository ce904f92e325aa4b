"""Preparing and running a training run from a config: one path for the CLI and the Python API.

``nbcnn train config.yaml --epochs 3`` and ``nbcnn.fit_config("config.yaml", epochs=3)`` go
through the same three steps, so the two cannot drift apart:

1. :func:`prepare_run` reads the config, applies the overrides, checks everything that can
   refuse the run (the train section, the data path, early stopping's monitor, layers without
   compute, the run folder, a resume's recorded settings, the memory a step needs) and
   creates nothing;
2. :func:`load_data` loads the data the resolved settings name, shaped for the model;
3. :func:`run_training` writes the resolved config into the locked run folder and trains.

The CLI adds only what is printed: the progress bar, the test line, the resume hint.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nbcnn.errors import ConfigError, printable
from nbcnn.model import Sequential
from nbcnn.runs import RunFolder
from nbcnn.spec import IMAGE_DATASETS, IMAGE_KEYS, ModelSpec, TrainSpec

#: The overrides ``prepare_run`` takes, as ``TrainSpec`` fields (the CLI's flags).
OVERRIDES = ("epochs", "batch_size", "output", "seed", "threads")


@dataclass
class PreparedRun:
    """A run checked and ready to train: nothing has been written yet.

    ``train`` is the resolved train section (the config, the overrides and, on a resume,
    what the run folder recorded); ``resuming`` is True when ``resume`` finds a checkpoint.
    """

    config: Path
    spec: ModelSpec
    model: Sequential
    train: TrainSpec
    folder: RunFolder
    resume: bool = False
    overwrite: bool = False

    @property
    def resuming(self) -> bool:
        return self.resume and self.folder.has_checkpoint()

    def resolved_config(self) -> dict[str, Any]:
        """The config document with every default and override of the train section written
        in: what the run folder's config.yaml records."""
        from nbcnn.spec import train_to_dict

        return {**self.spec.raw, "train": train_to_dict(self.train)}


def dataset_for_path(path: str, current: str) -> str:
    """``--data PATH`` picks the loader from the path: a .csv file is ``csv``; a folder of
    class subfolders (and no IDX files) is ``folder``, any other folder ``idx``; another file
    is ``npz`` (or ``idx`` for an idx config, whose loader then names it). For a config of
    your own images (``folder``, ``csv``), a folder is ``folder`` and a file ``csv``."""
    from nbcnn.imagefolder import holds_class_folders, kind_of_path

    if current in IMAGE_DATASETS:
        return kind_of_path(path, "csv")
    if path.lower().endswith(".csv"):
        return "csv"
    if os.path.isdir(path):  # False for paths the OS refuses too: the loader names them
        return "folder" if holds_class_folders(path) else "idx"
    if current in ("npz", "idx"):
        return current
    return "npz"


def prepare(
    config: str | os.PathLike, data: str | None = None, overrides: dict[str, Any] | None = None
) -> tuple[ModelSpec, Sequential, TrainSpec]:
    """Config, model and train settings with the overrides applied (``None`` values are
    ignored); every check that needs no data and no run folder, errors naming the file."""
    from nbcnn.spec import check_output_path, load_spec, parse_train

    config = Path(config)
    spec = load_spec(config)
    try:
        model = Sequential.from_spec(spec)
        train = parse_train(spec.train, default_output=f"runs/{spec.name}")
    except ConfigError as err:
        raise err.located(file=str(config)) from None
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(changes) - set(OVERRIDES))
    if unknown:
        raise ConfigError(
            f"unknown override {unknown[0]!r}; choose from {', '.join(OVERRIDES)}",
            where=unknown[0],
        )
    if "output" in changes:
        changes["output"] = check_output_path(changes["output"], "--output")
    if data is not None:
        changes["path"] = data
        changes["dataset"] = dataset_for_path(data, train.dataset)
    train = replace(train, **changes)
    early = train.early_stopping
    if early and early["monitor"].startswith("val_") and train.validation_split == 0:
        raise ConfigError(
            f"monitor {early['monitor']!r} needs validation data: set "
            "train.data.validation_split above 0 or monitor 'loss'",
            file=str(config),
            where="train.early_stopping.monitor",
        )
    try:
        model.require_compute()
    except ConfigError as err:
        raise err.located(file=str(config)) from None
    return spec, model, train


def prepare_run(
    config: str | os.PathLike,
    *,
    data: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    **overrides: Any,
) -> PreparedRun:
    """Check a training run of ``config`` before anything is created or changed.

    overrides : ``epochs``, ``batch_size``, ``output``, ``seed``, ``threads`` (None = the
    config's). With ``resume`` and a checkpoint in the output folder, the run continues as its
    config.yaml recorded it (:func:`nbcnn.resume.resumed_train`: a differing override is
    refused by name, ``epochs`` may extend the run).
    """
    from nbcnn.resources import check_training_memory

    if resume and overwrite:
        raise ConfigError(
            "--resume continues the run in the output folder and --overwrite replaces it: "
            "pass one of them",
            where="--resume --overwrite",
        )
    from nbcnn.train import check_trainable

    config = Path(config)
    spec, model, train = prepare(config, data, overrides)
    try:  # what fit would refuse, before the run folder is touched
        check_trainable(model, train.augment, "train.augment")
    except ConfigError as err:
        raise err.located(file=str(config)) from None
    folder = RunFolder(train.output)
    folder.check_can_start(resume=resume, overwrite=overwrite, config_file=config)
    if resume and folder.has_checkpoint():
        from nbcnn.resume import resumed_train

        flags = {k: v for k, v in overrides.items() if v is not None and k != "output"}
        if data is not None:
            flags.update(path=train.path, dataset=train.dataset)
        train = resumed_train(str(folder.file("config.yaml")), spec.raw, train, flags)
    check_training_memory(model, train.batch_size, train.optimizer)  # before any allocation
    return PreparedRun(config, spec, model, train, folder, resume, overwrite)


def prepare_run_in_group(
    group,
    config: str | os.PathLike,
    *,
    data: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    **overrides: Any,
) -> PreparedRun:
    """:func:`prepare_run` in data-parallel training (a :class:`nbcnn.distributed.Group`):
    rank 0 makes every check, run folder included, and sends the resolved train settings (a
    resume's are its config.yaml's); the other ranks build the model and take them, and touch
    no file. A run rank 0 refuses raises its error there and :class:`~nbcnn.errors.PeerFailed`
    (same message and exit code) on the others, so that no rank waits for the others."""
    from nbcnn.errors import NbcnnError, PeerFailed

    if group.root:
        try:
            run = prepare_run(config, data=data, resume=resume, overwrite=overwrite, **overrides)
        except NbcnnError as err:
            group.bcast(("error", (str(err), err.exit_code)))
            raise
        group.bcast(("ok", run.train))
        return run
    status, value = group.bcast(None)
    if status == "error":
        raise PeerFailed(*value)
    spec, model, _ = prepare(config, data, {k: v for k, v in overrides.items() if k != "threads"})
    return PreparedRun(Path(config), spec, model, value, RunFolder(value.output), resume, overwrite)


def apply_threads(run: PreparedRun) -> int | None:
    """Run numba (and BLAS) on the run's ``threads`` (None: leave them); the count really used
    (at most the cores numba sees) is written back into the run, as its config.yaml records
    it. Returns what was asked for, so that a caller can say when it was lowered."""
    asked = run.train.threads
    if asked is not None:
        from nbcnn.kernels._jit import set_threads

        run.train = replace(run.train, threads=set_threads(asked))
    return asked


def apply_rank_threads(run: PreparedRun) -> None:
    """A data-parallel rank's threads: the run's ``threads``, else the machine's cores shared
    by the ranks on it (not written back: the run folder's config.yaml records the run as one
    process would, so that it resumes with any number of workers)."""
    import numba

    from nbcnn.distributed import default_threads
    from nbcnn.kernels._jit import set_threads

    set_threads(run.train.threads or default_threads(numba.config.NUMBA_NUM_THREADS))


def load_data(
    model: Sequential,
    train: TrainSpec,
    config: str | os.PathLike,
    progress: Callable[[int, int], None] | None = None,
):
    """The :class:`~nbcnn.data.Dataset` that ``train`` names, shaped for ``model``; a data
    shape that does not fit names the config's ``input_shape`` as well as the data, and labels
    that do not fit the loss name ``train.loss`` and the data (before any run folder is
    touched). ``progress(done, total)`` follows the decoding of image folders (when not
    cached)."""
    from nbcnn.data import ShapeMismatch, load_dataset

    try:
        dataset = load_dataset(
            train.dataset,
            path=train.path,
            label_mode=train.label_mode,
            input_shape=model.input_shape,
            validation_split=train.validation_split,
            seed=train.seed,
            num_classes=model.output_shape[-1],
            progress=progress,
            **{key: getattr(train, key) for key in IMAGE_KEYS},
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
    _check_labels(dataset, model, train, config)
    return dataset


def _check_labels(dataset, model: Sequential, train: TrainSpec, config) -> None:
    """ConfigError at ``train.loss`` naming the data when the training, validation or test
    labels are not what the loss takes (one-hot labels for sparse_categorical_crossentropy):
    ``fit`` would refuse them too, but only once the run folder is created."""
    from nbcnn.errors import DataError
    from nbcnn.losses import check_targets, make_loss

    loss = make_loss(train.loss)
    outputs = math.prod(model.output_shape)
    parts = (
        ("training", dataset.y_train, train.path),
        ("validation", dataset.y_val, train.path),
        ("test", dataset.y_test, train.test_path or train.path),
    )
    for part, y, path in parts:
        try:
            check_targets(loss, y, len(y), outputs)
        except DataError as err:
            raise ConfigError(
                f"the {part} labels of {path or train.dataset} do not fit this loss: {err.message}",
                file=str(config),
                where="train.loss",
            ) from None


def run_training(
    run: PreparedRun,
    dataset,
    *,
    callback: Callable[[str, dict[str, Any]], None] | None = None,
    verbose: int = 0,
    on_start: Callable[[], None] | None = None,
    writes: bool = True,
):
    """Train ``run`` on ``dataset`` in its run folder, locked while it writes; returns the
    :class:`~nbcnn.train.History`. ``writes=False``: a data-parallel rank other than 0,
    which trains in step with rank 0 and touches no file (nbcnn/distributed.py).

    The model is compiled and initialised from the resolved settings; on a resume the
    checkpoint is loaded (and refused if it does not fit) before the folder is touched. The
    resolved config is written first, so that a run interrupted in its first epoch still
    records how it was started. ``on_start`` runs once the folder is held.
    """
    import yaml

    from nbcnn.io import write_text_atomic

    model, train, folder = run.model, run.train, run.folder
    # The resolved settings (a resume's are the record's), not the config file's train section.
    model.compile(optimizer=train.optimizer, loss=train.loss, metrics=train.metrics)
    model.initialize(train.seed)
    validation = (dataset.x_val, dataset.y_val) if len(dataset.x_val) else None
    settings = dict(
        epochs=train.epochs,
        batch_size=train.batch_size,
        validation_data=validation,
        seed=train.seed,
        early_stopping=train.early_stopping,
        augment=train.augment,
    )
    if not writes:  # rank 0 sends its state (a resumed checkpoint's) when training starts
        return model.fit(dataset.x_train, dataset.y_train, verbose=0, **settings)
    if run.resuming:
        folder.load_checkpoint(model)  # refused here if it does not fit: nothing written yet
    elif run.resume:  # a typo in --output would otherwise start over without a word
        where = printable(str(folder.path))
        print(f"nbcnn: note: nothing to resume in {where}: starting a new run", file=sys.stderr)
    folder.acquire(resume=run.resume, overwrite=run.overwrite)
    try:
        text = yaml.safe_dump(run.resolved_config(), sort_keys=False)
        write_text_atomic(folder.file("config.yaml"), text)
        if on_start is not None:
            on_start()
        return model.fit(
            dataset.x_train,
            dataset.y_train,
            output=folder,
            resume=run.resume,
            callback=callback,
            verbose=verbose,
            **settings,
        )
    finally:
        folder.release()


def model_with_weights(
    config: str | os.PathLike, weights: str | os.PathLike | None = None
) -> tuple[ModelSpec, Sequential, TrainSpec]:
    """The model of ``config``, initialised from its seed, with ``weights`` (a .npz saved by
    nbcnn) loaded when given."""
    spec, model, train = prepare(config)
    model.initialize(train.seed)
    if weights is not None:
        model.load_weights(weights)
    return spec, model, train


def fit_config(
    config: str | os.PathLike,
    *,
    data: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    verbose: int = 1,
    **overrides: Any,
):
    """Train ``config`` as ``nbcnn train`` does, from Python: returns ``(model, history)``.

    The run folder (``train.output`` or ``output=``) gets the same files as from the CLI;
    ``epochs``, ``batch_size``, ``output``, ``seed`` and ``threads`` override the config;
    ``resume``/``overwrite`` as the CLI's flags. ``verbose=1`` prints a line per epoch.
    """
    from nbcnn import distributed

    group = distributed.start()  # launched by mpiexec -n K: data-parallel, as nbcnn train
    if group is None:
        run = prepare_run(config, data=data, resume=resume, overwrite=overwrite, **overrides)
        apply_threads(run)
    else:
        run = prepare_run_in_group(
            group, config, data=data, resume=resume, overwrite=overwrite, **overrides
        )
        apply_rank_threads(run)
    dataset = load_data(run.model, run.train, run.config)
    writes = group is None or group.root
    history = run_training(run, dataset, verbose=verbose if writes else 0, writes=writes)
    return run.model, history
