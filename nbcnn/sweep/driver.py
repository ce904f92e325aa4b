"""Running a sweep: trials asked from its Optuna study, run on Dask, told back.

The driver asks Optuna for a trial's values, writes the trial's config, checks it as ``nbcnn
train`` would (a config that does not build fails that trial alone), submits
:func:`nbcnn.sweep.trials.run_trial` to Dask, reads each running trial's metrics.jsonl as its
epochs land (reporting them to Optuna, whose pruner may stop it), and tells Optuna how each
trial ended. :mod:`nbcnn.sweep.study` holds the study and what a re-run does.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbcnn import localcluster
from nbcnn.errors import ConfigError
from nbcnn.sweep import trials as trial_files
from nbcnn.sweep.spec import Sweep
from nbcnn.sweep.study import (
    DASK_HINT,
    ExtraMissing,
    Plan,
    abandon_stale,
    locked,
    open_study,
    optuna_module,
    plan,
    trial_folder,
)


def distributed_module():
    try:
        import distributed
    except ImportError:
        raise ExtraMissing(f"nbcnn sweep needs Dask distributed: {DASK_HINT}") from None
    return distributed


# ---------------------------------------------------------------------- running trials


@dataclass
class Running:
    """A trial submitted to Dask: its Optuna trial, folder and the epochs reported so far."""

    trial: Any
    folder: Path
    started: float
    reported: int = 0
    stopping: bool = False


#: ``on_trial(frozen_trial)``: called as each trial ends (the CLI prints a line).
OnTrial = Callable[[Any], None]


def run_sweep(
    sweep: Sweep,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    on_start: Callable[[Plan, int, str], None] | None = None,
    on_trial: OnTrial | None = None,
):
    """Run (or continue) ``sweep``; returns its Optuna study.

    scheduler : the address of a running Dask scheduler (``tcp://host:8786``); None starts a
        local cluster of ``workers`` processes (default: the cores / threads_per_trial).
    workers : trials run at once (default: the local cluster's workers, or the threads of
        the scheduler's workers).
    on_start(plan, slots, where) : before the first trial starts (not called when nothing
        is left to run).
    """
    with locked(sweep.output):
        study = open_study(sweep)
        for number in abandon_stale(study, sweep):
            if on_trial is not None:
                on_trial(study.trials[number])
        todo = plan(study, sweep)
        if todo.asks:
            if scheduler is None:  # a local worker per trial at once, no more than it runs
                workers = min(todo.asks, workers or max(1, cores() // sweep.threads_per_trial))
            with cluster(scheduler, workers) as (client, slots, where):
                if on_start is not None:
                    on_start(todo, slots, where)
                _run(study, sweep, client, slots, todo.asks, on_trial)
    return study


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def cluster(scheduler: str | None, workers: int | None):
    """``(client, slots, description)``: a Dask client of the scheduler at ``scheduler``, or
    of a local cluster of ``workers`` single-threaded worker processes on 127.0.0.1
    (nbcnn.localcluster); ``slots`` is how many trials run at once: ``workers``,
    or the scheduler's worker threads."""
    distributed = distributed_module()
    local = None
    try:
        if scheduler is not None:
            try:
                client = distributed.Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as err:
                raise ConfigError(
                    f"cannot reach the Dask scheduler: {' '.join(str(err).split())[:200]}",
                    where=f"--scheduler {scheduler}",
                ) from None
            try:
                client.wait_for_workers(1, timeout=60)
            except TimeoutError:
                client.close()
                raise ConfigError(
                    "no Dask worker joined the scheduler within 60 s: start some "
                    f"(dask worker {scheduler})",
                    where=f"--scheduler {scheduler}",
                ) from None
            slots = workers or sum(client.nthreads().values())
            where = f"the Dask scheduler {scheduler}"
        else:
            slots = workers or 1
            local = localcluster.start(slots)
            client = distributed.Client(local)
            where = f"a local Dask cluster of {slots} worker(s)"
        try:
            yield client, slots, where
        finally:
            client.close()
    finally:
        if local is not None:
            local.close()


def _run(study, sweep: Sweep, client, slots: int, asks: int, on_trial: OnTrial | None) -> None:
    optuna = optuna_module()
    distributions = {s.key: s.distribution() for s in sweep.space}
    running: dict[Any, Running] = {}
    cwd = os.getcwd()
    try:
        while asks or running:
            while asks and len(running) < slots:
                asks -= 1
                trial = study.ask(distributions)
                item = _launch(study, sweep, trial, client, cwd, on_trial)
                if item is not None:
                    running[item[0]] = item[1]
            time.sleep(trial_files.POLL_SECONDS)
            for future, item in list(running.items()):
                _report(sweep, item)
                if future.done():
                    del running[future]
                    _finish(study, sweep, future, item)
                    if on_trial is not None:
                        on_trial(study.trials[item.trial.number])
    except BaseException:
        # Ctrl-C or an error of the driver's: the trials in flight are stopped and recorded
        # as to be run again (their subprocesses stop on the stop file, or die with a local
        # cluster's workers).
        for item in running.values():
            item.folder.mkdir(parents=True, exist_ok=True)  # its task may not have started
            (item.folder / trial_files.STOP).write_text("abandoned\n")
            item.trial.set_user_attr("error", "the sweep stopped while it ran")
            item.trial.set_user_attr("retry", True)
            study.tell(item.trial, state=optuna.trial.TrialState.FAIL)
        raise


def _launch(study, sweep: Sweep, trial, client, cwd: str, on_trial: OnTrial | None):
    """Write trial's config, check it, submit it: ``(future, Running)``, or None when its
    config is refused (the trial is told FAIL with the config's error)."""
    import yaml

    from nbcnn.io import write_text_atomic
    from nbcnn.prepare import prepare

    optuna = optuna_module()
    folder = trial_folder(sweep, trial.number)
    config = folder.with_suffix(".yaml")
    values = {s.key: s.value(trial.params[s.key]) for s in sweep.space}
    trial.set_user_attr("folder", str(folder))
    try:
        doc = sweep.trial_config(values, output=folder)
        write_text_atomic(config, yaml.safe_dump(doc, sort_keys=False))
        prepare(config)
    except ConfigError as err:  # named by its key: the trial's config is the file
        trial.set_user_attr("error", f"{err.where}: {err.message}" if err.where else err.message)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if on_trial is not None:
            on_trial(study.trials[trial.number])
        return None
    future = client.submit(
        trial_files.run_trial,
        str(config),
        str(folder),
        cwd,
        sweep.threads_per_trial,
        trial.number,
        pure=False,
        key=f"nbcnn-trial-{trial.number}-{uuid.uuid4().hex}",  # never a cached result
    )
    return future, Running(trial, folder, time.monotonic())


def _report(sweep: Sweep, item: Running, prune: bool = True) -> None:
    """Report the trial's new epochs to Optuna; with ``prune``, ask it to stop when the
    pruner says so."""
    values = trial_files.epoch_values(item.folder, sweep.metric)
    for epoch, value in values[item.reported :]:
        if value is not None:
            item.trial.report(value, step=epoch)
    item.reported = max(item.reported, len(values))
    if prune and item.reported and not item.stopping and item.trial.should_prune():
        (item.folder / trial_files.STOP).write_text("prune\n")
        item.stopping = True


def _finish(study, sweep: Sweep, future, item: Running) -> None:
    optuna = optuna_module()
    states = optuna.trial.TrialState
    trial = item.trial
    try:
        result = future.result()
    except Exception as err:  # the task raised, or Dask lost it (KilledWorker)
        lost = type(err).__name__ in ("KilledWorker", "CommClosedError", "FutureCancelledError")
        what = "its Dask worker died" if lost else f"{type(err).__name__}: {err}"
        trial.set_user_attr("error", " ".join(what.split())[:300])
        trial.set_user_attr("retry", lost)
        trial.set_user_attr("seconds", time.monotonic() - item.started)
        study.tell(trial, state=states.FAIL)
        return
    _report(sweep, item, prune=False)  # the epochs that landed since the last poll
    end = trial_files.outcome(result, item.folder, sweep.metric)
    trial.set_user_attr("seconds", result["seconds"])
    trial.set_user_attr("epochs", item.reported)
    trial.set_user_attr("pid", result["pid"])
    trial.set_user_attr("host", result["host"])
    if end.state == "complete":
        study.tell(trial, end.value)
    elif end.state == "pruned":
        study.tell(trial, state=states.PRUNED)
    else:
        trial.set_user_attr("error", end.error)
        trial.set_user_attr("retry", end.retry)
        study.tell(trial, state=states.FAIL)
