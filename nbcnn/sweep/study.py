"""A sweep's Optuna study: its storage, sampler and pruner, and what a re-run does.

The study lives in ``<output>/study.journal`` (Optuna's JournalStorage, one file, appended
to), written by the sweep's driver alone: the sweep folder's lock (:func:`locked`) keeps a
second driver out. Re-running a sweep loads its study: completed and pruned trials are kept;
trials that failed for a reason outside their config (killed, interrupted, their worker lost,
or left running by a sweep that was itself killed) are queued to run again with the same
values, as new trials (:func:`plan`); trials whose config or training failed are not (they
would fail again).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbcnn.errors import NbcnnError
from nbcnn.sweep import trials as trial_files
from nbcnn.sweep.spec import Sweep

DASK_HINT = "pip install 'nbcnn[dask]'"
STUDY = "study.journal"
STUDY_NAME = "nbcnn-sweep"
LOCK = ".sweep-lock"
TRIALS = "trials"


class SweepBusy(NbcnnError):
    """The sweep folder cannot be used: another sweep holds it, or it cannot be created
    (exit 2)."""


class ExtraMissing(NbcnnError):
    """Optuna or Dask is not installed (exit 2); the message names the extra to install."""


def optuna_module():
    """Optuna, quiet (the sweep prints its own lines); one line naming the extra if absent."""
    try:
        import optuna
    except ImportError:
        raise ExtraMissing(f"nbcnn sweep needs Optuna and Dask: {DASK_HINT}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def trial_folder(sweep: Sweep, number: int) -> Path:
    """``<output>/trials/0007``: the run folder of trial 7 (its config is ``0007.yaml``)."""
    return sweep.output / TRIALS / f"{number:04d}"


# ---------------------------------------------------------------------- the study


@contextlib.contextmanager
def locked(output: Path) -> Iterator[None]:
    """Hold ``output/.sweep-lock`` (an OS lock, released when the process dies): one driver
    per sweep folder, so a trial the study says is running and this driver did not start
    was left by a sweep that is gone."""
    import fcntl

    try:
        output.mkdir(parents=True, exist_ok=True)
        fd = os.open(output / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise SweepBusy(f"{output}: cannot use it as the sweep's folder: {err.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise SweepBusy(
                f"{output}: another nbcnn sweep (pid {holder}) is running in this folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def open_study(sweep: Sweep):
    """The sweep's study: created in ``output/study.journal``, or loaded from it when the
    sweep ran before (refused, naming the key, when the sweep file has changed since)."""
    optuna = optuna_module()
    from optuna.storages import JournalStorage

    try:
        from optuna.storages.journal import JournalFileBackend
    except ImportError:  # Optuna 3.x
        from optuna.storages import JournalFileStorage as JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(sweep.output / STUDY)))
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        pruner=make_pruner(sweep),
        direction=sweep.direction,
        load_if_exists=True,
    )
    study.sampler = make_sampler(sweep, len(study.get_trials(deepcopy=False)))
    recorded = study.user_attrs.get("sweep")
    if recorded is None:
        study.set_user_attr("sweep", sweep.record())
    else:
        _check_same(sweep, recorded)
    return study


def _check_same(sweep: Sweep, recorded: dict[str, Any]) -> None:
    current = sweep.record()
    for key, value in current.items():
        if recorded.get(key) != value:
            name = "base (the config's content)" if key == "base" else key
            raise sweep.error(
                f"differs from the sweep that ran in {sweep.output} before ({name}); a sweep "
                "folder holds one sweep: choose another output, or remove that folder",
                where="base" if key == "base" else key,
            )


def make_sampler(sweep: Sweep, trials_so_far: int = 0):
    """Optuna's sampler for ``search``. Random and TPE are seeded with ``seed`` plus the
    trials the study already holds, so a resumed sweep draws new values rather than the
    first run's again; the grid keeps ``seed`` (it fixes the order of the grid's points,
    which trial numbers index)."""
    optuna = optuna_module()
    seed = sweep.seed + trials_so_far
    if sweep.search == "grid":
        grid = {s.key: s.grid() for s in sweep.space}
        return _grid_sampler(grid, seed=sweep.seed)
    if sweep.search == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials running in parallel count as bad guesses, so TPE spreads them.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _grid_sampler(grid: dict[str, list], seed: int):
    from optuna.samplers import GridSampler

    class AskTellGrid(GridSampler):
        """GridSampler for ask-and-tell: its ``after_trial`` calls ``study.stop()`` once the
        grid is covered, which Optuna refuses outside ``study.optimize`` (RuntimeError on
        the last ``tell``); the driver counts the trials itself."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return AskTellGrid(grid, seed=seed)


def make_pruner(sweep: Sweep):
    optuna = optuna_module()
    if sweep.pruning is None:
        return optuna.pruners.NopPruner()
    # Steps are epoch numbers (1, 2, ...) and Optuna may prune at step n_warmup_steps: +1 so
    # that every trial completes its first warmup_epochs epochs.
    return optuna.pruners.MedianPruner(
        n_startup_trials=sweep.pruning["startup_trials"],
        n_warmup_steps=sweep.pruning["warmup_epochs"] + 1,
    )


def abandon_stale(study, sweep: Sweep) -> list[int]:
    """Mark the trials still RUNNING in the study (their sweep died: this one holds the
    lock) as failed and to be run again; a stop file in their folder stops their
    ``nbcnn train`` if it still runs on some worker. Returns their numbers."""
    optuna = optuna_module()
    numbers = []
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial = optuna.trial.Trial(study, frozen._trial_id)
        trial.set_user_attr("error", "the sweep stopped while it ran")
        trial.set_user_attr("retry", True)
        folder = trial_folder(sweep, frozen.number)
        if folder.is_dir():
            (folder / trial_files.STOP).write_text("abandoned\n")
        study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
        numbers.append(frozen.number)
    return numbers


@dataclass
class Plan:
    """What this run of the sweep does: ``retries`` (failed trials run again, queued in the
    study) and ``new`` trials to sample; ``asks`` is how many trials it starts."""

    retries: list[int]
    new: int
    waiting: int

    @property
    def asks(self) -> int:
        return self.waiting + len(self.retries) + self.new


def plan(study, sweep: Sweep) -> Plan:
    """Queue the failed trials to run again (each once) and count the trials still to sample
    (``trials`` minus those sampled before; retries do not count)."""
    optuna = optuna_module()
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    waiting = [t for t in trials if t.state == states.WAITING]
    retries = [
        t.number
        for t in trials
        if t.state == states.FAIL and t.user_attrs.get("retry") and t.number not in retried
    ]
    for number in retries:
        study.enqueue_trial(study.trials[number].params, user_attrs={"retry_of": number})
    sampled = [t for t in trials if "retry_of" not in t.user_attrs and t.state != states.WAITING]
    return Plan(retries, max(0, sweep.trials - len(sampled)), len(waiting))
