"""Run folders that own their files: a marker, a lock, and one atomic commit per epoch.

Layout of a run folder (``runs/NAME`` by default)::

    nbcnn-run.json     the marker, written first: identifies an nbcnn run, lists what it owns
    .nbcnn-lock        an OS lock (flock) held while a process writes; holds that process's pid
    config.yaml        the resolved config
    epochs/000007/     checkpoint.npz model.npz best.npz metrics.jsonl of the last committed epoch
    current            -> epochs/000007   (a symbolic link, replaced by one rename per epoch)
    checkpoint.npz     -> current/checkpoint.npz   (fixed links: what people and tools open)
    model.npz          -> current/model.npz
    best.npz           -> current/best.npz
    metrics.jsonl      -> current/metrics.jsonl
    curves.png         drawn from metrics.jsonl when training ends

Why this shape: four files renamed one after the other can be seen (and left, by kill -9)
out of step; an epoch's files are written into a fresh folder and become visible together
when ``current`` is renamed over, the only step that changes what the links show. The lock is
``flock`` on a file in the folder (like git's ``index.lock``, but the kernel releases it when
its process dies, so a killed run never leaves the folder locked). A folder holding files an
nbcnn run would write but no marker is somebody else's: refused, never overwritten, and
``--overwrite`` removes only the names the marker lists that nbcnn itself writes.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nbcnn.errors import DataError, NbcnnError, TrainingError
from nbcnn.io import load_npz, npz_bytes, write_text_atomic
from nbcnn.layers.args import is_int, is_number

MARKER = "nbcnn-run.json"
LOCK = ".nbcnn-lock"
CURRENT = "current"
#: What ``fit(output=...)`` records of its arguments and data (the CLI's record is config.yaml).
FIT_RECORD = "fit.json"
EPOCHS = "epochs"
#: The files of one epoch, committed together; each also has a fixed link at the top.
EPOCH_FILES = ("checkpoint.npz", "model.npz", "best.npz", "metrics.jsonl")
#: Everything an nbcnn run writes into its folder; only these are ever removed.
OWNED = (MARKER, LOCK, "config.yaml", FIT_RECORD, CURRENT, EPOCHS, *EPOCH_FILES, "curves.png")
_EPOCH_DIR = re.compile(r"^\d{6,}$")
_CURRENT_TARGET = re.compile(rf"^{EPOCHS}/\d{{6,}}$")
#: Temporary names nbcnn's writers use: write_text_atomic's mkstemp, commit's link swap.
_STALE = re.compile(
    r"^\.(config\.yaml|fit\.json|curves\.png|nbcnn-run\.json)\.[a-z0-9_]{8}\.tmp$"
    r"|^\.current\.\d+\.tmp$"
)
_RUN_FORMAT = 1


@dataclass(frozen=True)
class Options:
    """How the options of a run are spelled where it was asked for, so that a refusal names
    what the user can type: the CLI's flags or ``fit``'s arguments."""

    resume: str
    overwrite: str
    #: ``or {output_dir} to write elsewhere``
    output_dir: str
    #: ``choose {other_output}``
    other_output: str
    #: ``a run needs a folder of its own, e.g. {example}``
    example: str


CLI_OPTIONS = Options(
    "--resume", "--overwrite", "--output DIR", "another --output", "--output runs/NAME"
)
API_OPTIONS = Options(
    "resume=True", "overwrite=True", "another output=", "another output=", "output='runs/NAME'"
)


class RunFolderError(NbcnnError):
    """The output folder cannot be used for this run (not ours, busy, already a run): exit 2,
    nothing in it changed."""


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (the folder's entry list is data too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes) -> None:
    """Write a file that does not exist yet and flush it to disk."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _is_within(inner: Path, outer: Path) -> bool:
    """True when ``inner`` is ``outer`` or lies inside it (paths resolved)."""
    try:
        inner, outer = inner.resolve(), outer.resolve()
    except OSError:
        return False
    return inner == outer or outer in inner.parents


class RunFolder:
    """The output folder of one run.

    Inspecting (``check_can_start``, ``has_checkpoint``, ``load_checkpoint``) never writes.
    ``acquire`` takes the lock and makes the folder a run; ``commit_epoch`` publishes one
    epoch's files at once; ``release`` lets the lock go (process exit does too).
    """

    def __init__(self, path: str | os.PathLike, options: Options = CLI_OPTIONS):
        self.path = Path(path)
        self.options = options
        self._lock_fd: int | None = None
        self._holds = 0

    def file(self, name: str) -> Path:
        """The path people use for ``name`` (``model.npz`` is a link into the last epoch)."""
        return self.path / name

    # ------------------------------------------------------------------ inspecting

    def is_run(self) -> bool:
        marker = self.file(MARKER)
        return marker.is_file() and not marker.is_symlink()

    def has_checkpoint(self) -> bool:
        """True when an epoch has been committed (``current`` leads to a checkpoint)."""
        return (self.path / CURRENT / "checkpoint.npz").is_file()

    def foreign_files(self) -> list[str]:
        """Names nbcnn would write that are here although no marker says this is a run."""
        if not self.path.is_dir() or self.is_run():
            return []
        return sorted(
            n for n in OWNED if os.path.lexists(self.path / n) and n not in (LOCK, MARKER)
        )

    def check_can_start(
        self,
        *,
        resume: bool = False,
        overwrite: bool = False,
        config_file: str | os.PathLike | None = None,
    ) -> None:
        """Refuse, before anything is written, an output that is not this run's to write.

        Refused: the current folder or one that holds it, the config's own folder, a regular
        file, files nbcnn would write without a marker (named), a run with completed epochs
        unless ``resume`` or ``overwrite``; a folder that cannot be created or written.
        """
        where = str(self.path)
        if _is_within(Path.cwd(), self.path):
            raise RunFolderError(
                f"{where}: output is the current folder (or holds it); a run needs a folder of "
                f"its own, e.g. {self.options.example}"
            )
        own_config = config_file is not None and self.is_run()
        own_config = own_config and _same_path(Path(config_file), self.file("config.yaml"))
        if (
            config_file is not None
            and not own_config  # `nbcnn train runs/x/config.yaml --resume` continues runs/x
            and _is_within(Path(config_file).parent, self.path)
        ):
            raise RunFolderError(
                f"{where}: output is the folder of the config {config_file}; a run needs a "
                f"folder of its own, e.g. {self.options.example}"
            )
        self._check_writable()
        self._check_not_busy()
        self._check_contents(resume, overwrite)

    def _check_not_busy(self) -> None:
        """Refuse at once a folder whose lock another process holds (looked at, not kept)."""
        if not os.path.lexists(self.file(LOCK)):
            return  # no lock file yet: nobody writes here
        fd = self._open_lock(os.O_RDONLY)
        try:
            self._flock(fd)
        finally:
            os.close(fd)  # closing releases the lock if it was free and so taken

    def _flock(self, fd: int) -> None:
        """Take the lock on ``fd`` without waiting; RunFolderError naming the holder's pid when
        another process has it."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise self._busy(fd) from None
            raise TrainingError(f"{self.file(LOCK)}: cannot lock: {err.strerror}") from None

    def _open_lock(self, flags: int) -> int:
        """Open the lock file itself: never through a link, never a FIFO or a device (a link
        to a user's file would get a pid written into it)."""
        path = self.file(LOCK)
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise RunFolderError(
                    f"{path}: not the lock file nbcnn makes ({err.strerror})"
                ) from None
            raise TrainingError(f"{path}: cannot open the lock: {err.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunFolderError(f"{path}: not the lock file nbcnn makes (not a regular file)")
        return fd

    def _busy(self, fd: int) -> RunFolderError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        return RunFolderError(
            f"{self.path}: another nbcnn process (pid {holder}) is writing this run folder; "
            f"wait for it, stop it, or choose {self.options.other_output}"
        )

    def _check_contents(self, resume: bool, overwrite: bool) -> dict | None:
        """The checks on what the folder holds; returns its run marker (None: not a run)."""
        where = str(self.path)
        marker = self.file(MARKER)
        if os.path.lexists(marker) and not self.is_run():
            raise RunFolderError(
                f"{marker}: not the run marker nbcnn writes (a link, a folder or a device); "
                f"move it away or choose {self.options.other_output}"
            )
        foreign = self.foreign_files()
        if foreign:
            raise RunFolderError(
                f"{where}: holds {', '.join(foreign)} but no {MARKER}, so it is not a run "
                f"folder made by nbcnn; nbcnn will not overwrite these files (even with "
                f"{self.options.overwrite}): choose {self.options.other_output} or move them away"
            )
        marker = self._read_marker() if self.is_run() else None
        if marker is not None:
            problem = None if overwrite else self._layout_problem()
            if problem:
                raise RunFolderError(
                    f"{self.path / problem[0]}: {problem[1]}; nbcnn will not resume or write "
                    f"into a run folder changed by hand ({self.options.overwrite} replaces the "
                    "run; copy run folders with `cp -a`, which keeps their links)"
                )
        if self.has_checkpoint() and not (resume or overwrite):
            raise RunFolderError(
                f"{where} already holds a run; pass {self.options.resume} to continue it, "
                f"{self.options.overwrite} to replace it, or {self.options.output_dir} to write "
                "elsewhere"
            )
        if resume and not overwrite and self._has_weights_without_checkpoint():
            raise RunFolderError(
                f"{where} holds weights but no checkpoint.npz to resume from; pass "
                f"{self.options.overwrite} to start that run again"
            )
        return marker

    def _layout_problem(self) -> tuple[str, str] | None:
        """``(name, what is wrong)`` when the folder is not laid out as nbcnn lays it out:
        ``epochs`` a real folder, ``current`` a link to ``epochs/NNNNNN``, the top-level
        files links to ``current/<name>``, the committed epoch's files regular files."""
        epochs, current = self.path / EPOCHS, self.path / CURRENT
        if os.path.lexists(epochs) and (epochs.is_symlink() or not epochs.is_dir()):
            return EPOCHS, "is not the folder nbcnn makes (a link or a file)"
        if os.path.lexists(current):
            if not current.is_symlink():
                return CURRENT, "is not a link to epochs/NNNNNN as nbcnn makes it"
            if not _CURRENT_TARGET.match(os.readlink(current)):
                return CURRENT, f"points at {os.readlink(current)!r}, not into epochs/"
            target = self.path / os.readlink(current)
            if target.is_symlink() or not target.is_dir():
                return CURRENT, f"points at {os.readlink(current)!r}, which is not a folder"
            for name in EPOCH_FILES:
                path = target / name
                if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
                    return f"{os.readlink(current)}/{name}", "is not a regular file"
        for name in EPOCH_FILES:
            link = self.path / name
            if os.path.lexists(link) and not (
                link.is_symlink() and os.readlink(link) == f"{CURRENT}/{name}"
            ):
                return name, f"is not the link to {CURRENT}/{name} that nbcnn makes"
        return None

    def _has_weights_without_checkpoint(self) -> bool:
        return os.path.lexists(self.path / CURRENT) and not self.has_checkpoint()

    def _check_writable(self) -> None:
        """Without creating anything: the folder, or its nearest existing parent, must be a
        folder this process can write (a read-only mount counts too)."""
        probe = self.path
        while not os.path.lexists(probe) and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            problem = f"{probe} is not a folder"
        elif os.statvfs(probe).f_flag & os.ST_RDONLY:
            problem = os.strerror(errno.EROFS)
        elif not os.access(probe, os.W_OK | os.X_OK):
            problem = os.strerror(errno.EACCES)
        else:
            return
        raise TrainingError(f"{self.path}: output folder is not writable: {problem}")

    def _read_marker(self) -> dict:
        path = self.file(MARKER)
        try:
            if not stat.S_ISREG(path.stat().st_mode):
                raise ValueError("not a regular file")
            with open(path, "rb") as handle:
                text = handle.read(1 << 16)  # a marker is a few hundred bytes
            marker = json.loads(text.decode("utf-8"), parse_constant=_refuse_constant)
            if not isinstance(marker, dict) or marker.get("nbcnn_run") != _RUN_FORMAT:
                raise ValueError("not an nbcnn run marker")
        except (OSError, ValueError, RecursionError) as err:
            raise RunFolderError(
                f"{path}: not a valid run marker ({err}); move the folder away or choose "
                f"{self.options.other_output}"
            ) from None
        return marker

    # ------------------------------------------------------------------ owning

    def acquire(self, *, resume: bool = False, overwrite: bool = False) -> None:
        """Create the folder, take its lock (fail at once, naming the holder's pid), check
        again what it holds (another process may have written a run since
        :meth:`check_can_start`), and make it a run: with ``overwrite`` an earlier run's files
        are removed first. Temporary and uncommitted epoch folders a killed writer left are
        removed. Re-entrant: ``fit`` inside a CLI command that holds the folder."""
        if self._holds:
            self._holds += 1
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrainingError(
                f"{self.path}: output folder is not writable: {err.strerror or err}"
            ) from None
        self._lock()
        try:
            marker = self._check_contents(resume, overwrite)
            if marker is not None and overwrite:
                self._remove_run(marker)
            if marker is not None:  # a folder nbcnn did not make is never cleaned
                self.remove_stale()
            else:
                marker = {
                    "nbcnn_run": _RUN_FORMAT,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "files": list(OWNED),
                }
                write_text_atomic(self.file(MARKER), json.dumps(marker, indent=1) + "\n")
        except BaseException:
            self._unlock()
            raise
        self._holds = 1

    def release(self) -> None:
        if self._holds:
            self._holds -= 1
            if not self._holds:
                self._unlock()

    @property
    def held(self) -> bool:
        return bool(self._holds)

    def _lock(self) -> None:
        fd = self._open_lock(os.O_RDWR | os.O_CREAT)
        try:
            self._flock(fd)
        except NbcnnError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _remove_run(self, marker: dict) -> None:
        """Remove the earlier run's files: only names the marker lists *and* nbcnn writes
        (a hand-edited marker cannot make nbcnn delete anything else). The marker and the lock
        stay, so an interrupted removal still leaves a run folder."""
        listed = marker.get("files")
        names = [n for n in OWNED if isinstance(listed, list) and n in listed]
        for name in names:
            if name in (MARKER, LOCK):
                continue
            path = self.path / name
            try:
                if path.is_symlink() or path.is_file():
                    path.unlink()  # a link itself, never what it points at
                elif name == EPOCHS and path.is_dir():
                    self._remove_epoch_folders(keep=None)
                    if not any(path.iterdir()):
                        path.rmdir()
                elif name == CURRENT and path.is_dir():  # a run copied without its links
                    if {p.name for p in path.iterdir()} - set(EPOCH_FILES):
                        raise RunFolderError(f"{path}: a folder holding other files; not removed")
                    shutil.rmtree(path)
            except OSError as err:
                raise TrainingError(f"{path}: cannot remove: {err.strerror}") from None

    def _current_target(self) -> str | None:
        try:
            target = os.readlink(self.path / CURRENT)
        except OSError:
            return None
        return Path(target).name

    def _remove_epoch_folders(self, keep: str | None) -> None:
        """Remove epoch folders (committed or half-written) other than ``keep``; entries that
        nbcnn does not name that way are left alone."""
        epochs = self.path / EPOCHS
        if epochs.is_symlink() or not epochs.is_dir():
            return  # never follow a link: nbcnn made a folder here
        for entry in epochs.iterdir():
            ours = _EPOCH_DIR.match(entry.name) or entry.name.startswith(".tmp-")
            if ours and entry.name != keep and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)

    def remove_stale(self) -> None:
        """Delete what a killed writer left: temporary files (``.model.npz.x1y2.tmp``), epoch
        folders not yet committed, superseded epochs, a half-made ``current`` link. Never
        read, so removing them only keeps the folder clean. Call with the lock held."""
        for entry in self.path.glob(".*.tmp"):
            if _STALE.match(entry.name) and not entry.is_dir():
                try:
                    entry.unlink()
                except OSError:
                    pass
        self._remove_epoch_folders(keep=self._current_target())

    # ------------------------------------------------------------------ epochs

    def commit_epoch(self, model: Any, state: dict[str, Any], best: bool) -> None:
        """Publish one epoch: checkpoint (weights, optimizer slots, ``state`` as JSON), model,
        best (new weights when ``best``, else the previous epoch's file, hard-linked) and the
        metrics so far, written into a new epoch folder, then made visible with one rename.
        On failure the previous epoch stays what every link shows."""
        epoch = int(state["epoch"])
        weights = dict(zip(model.weight_names(), model.get_weights()))
        optimizer = {f"optimizer/{k}": v for k, v in model.compiled.optimizer.state_dict().items()}
        meta = {"meta": np.array(json.dumps(state))}
        epochs = self.path / EPOCHS
        name = f"{epoch:06d}"
        staging = epochs / f".tmp-{name}-{os.getpid()}"
        previous = self._current_target()
        writing = "checkpoint.npz"
        try:
            epochs.mkdir(exist_ok=True)
            if os.path.lexists(staging):
                shutil.rmtree(staging)
            staging.mkdir()
            _write_new(staging / "checkpoint.npz", npz_bytes({**weights, **optimizer, **meta}))
            writing = "model.npz"
            model_bytes = npz_bytes(weights)
            _write_new(staging / "model.npz", model_bytes)
            writing = "best.npz"
            old_best = epochs / previous / "best.npz" if previous else None
            if best:
                _write_new(staging / "best.npz", model_bytes)
            elif old_best is not None and old_best.is_file():
                try:
                    os.link(old_best, staging / "best.npz")
                except OSError:  # a file system without hard links: copy
                    _write_new(staging / "best.npz", old_best.read_bytes())
            writing = "metrics.jsonl"
            lines = "".join(json.dumps(r, allow_nan=False) + "\n" for r in state["history"])
            _write_new(staging / "metrics.jsonl", lines.encode("utf-8"))
            _fsync_dir(staging)
            writing = CURRENT
            final = epochs / name
            if os.path.lexists(final):
                shutil.rmtree(final)
            os.rename(staging, final)
            _fsync_dir(epochs)
            for link in EPOCH_FILES:  # the fixed links, made once
                if not os.path.lexists(self.path / link):
                    os.symlink(f"{CURRENT}/{link}", self.path / link)
            swap = self.path / f".{CURRENT}.{os.getpid()}.tmp"
            if os.path.lexists(swap):
                os.unlink(swap)
            os.symlink(f"{EPOCHS}/{name}", swap)
            os.replace(swap, self.path / CURRENT)  # the commit
            _fsync_dir(self.path)
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            kept = f"the files of epoch {epoch - 1} are intact" if previous else "nothing kept"
            raise TrainingError(
                f"{self.path / writing}: cannot write epoch {epoch}: {err.strerror or err} ({kept})"
            ) from None
        if previous and previous != name:
            shutil.rmtree(epochs / previous, ignore_errors=True)

    def load_checkpoint(self, model: Any) -> dict[str, Any]:
        """Load the last committed epoch's weights and optimizer slots into ``model`` and
        return its validated state; DataError naming the file when anything does not fit."""
        path = self.file("checkpoint.npz")
        from nbcnn.model import max_file_members

        members = max_file_members(len(model.weight_names()))
        arrays = load_npz(self.path / CURRENT / "checkpoint.npz", max_members=members)
        if "meta" not in arrays:
            raise DataError("not an nbcnn checkpoint (no 'meta')", file=str(path))
        try:
            state = json.loads(str(arrays.pop("meta")), parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            raise DataError(
                "checkpoint metadata is not valid JSON (or holds NaN, Infinity or deep nesting)",
                file=str(path),
            ) from None
        check_state(state, model, str(path))
        names = model.weight_names()
        missing = [n for n in names if n not in arrays]
        if missing:
            raise DataError(
                f"checkpoint is for another model: no array {missing[0]!r}", file=str(path)
            )
        model.set_weights([arrays[n] for n in names], source=str(path))
        prefix = "optimizer/"
        opt_state = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        try:
            model.compiled.optimizer.load_state_dict(opt_state)
            model.compiled.optimizer.check_fits(model.trainable_weights()[0])
        except DataError as err:
            raise DataError(err.message, file=str(path)) from None
        return state


# ---------------------------------------------------------------------- checkpoint state


def _refuse_constant(name: str) -> None:
    """``json.loads`` hook: nbcnn never writes NaN or Infinity (``allow_nan=False``)."""
    raise ValueError(f"{name} is not JSON")


def layer_signature(model: Any) -> list[list[str]]:
    """``[[name, type], ...]`` of the model's layers: a checkpoint made by another stack
    (a Dropout added, a layer renamed) is refused on resume even when no weight changed."""
    return [[layer.name, type(layer).__name__] for layer in model.layers]


def _check_rng_state(value: Any, what: str, file: str) -> None:
    """A numpy bit-generator state that can be set on a fresh PCG64 generator."""
    try:
        if not isinstance(value, dict):
            raise TypeError("not a mapping")
        np.random.default_rng(0).bit_generator.state = value
    except (TypeError, ValueError, KeyError, OverflowError) as err:
        raise DataError(
            f"checkpoint meta {what} is not a random-generator state ({err})", file=file
        ) from None


def check_state(state: Any, model: Any, file: str) -> None:
    """Refuse a checkpoint ``meta`` that nbcnn did not write or that belongs to another model:
    every key a resume reads is checked for type and range before anything is used."""

    def bad(key: str, what: str) -> DataError:
        return DataError(
            f"checkpoint meta {key!r} {what}; not a checkpoint nbcnn wrote (or it was edited)",
            file=file,
        )

    if not isinstance(state, dict):
        raise bad("meta", "is not a mapping")
    for key in (
        "epoch",
        "history",
        "best",
        "wait",
        "shuffle_rng",
        "model_rng",
        "layer_rngs",
        "layers",
    ):
        if key not in state:
            raise bad(key, "is missing")
    epoch, history = state["epoch"], state["history"]
    if not is_int(epoch) or epoch < 1:
        raise bad("epoch", "must be an integer >= 1")
    if not isinstance(history, list) or len(history) != epoch:
        raise bad("history", f"must list one record per completed epoch ({epoch})")
    for i, record in enumerate(history):
        if not isinstance(record, dict) or record.get("epoch") != i + 1:
            raise bad("history", f"record {i} must be a mapping with 'epoch': {i + 1}")
        for key, value in record.items():
            if value is not None and not (is_number(value) and math.isfinite(value)):
                raise bad("history", f"record {i} {key!r} must be a finite number or null")
    best = state["best"]
    if best is not None and not (is_number(best) and math.isfinite(best)):
        raise bad("best", "must be a finite number or null")
    if not is_int(state["wait"]) or not 0 <= state["wait"] <= epoch:
        raise bad("wait", f"must be an integer in [0, {epoch}]")
    _check_rng_state(state["shuffle_rng"], "'shuffle_rng'", file)
    _check_rng_state(state["model_rng"], "'model_rng'", file)
    if "augment_rng" in state:  # only runs with train.augment have it (nbcnn/augment.py)
        _check_rng_state(state["augment_rng"], "'augment_rng'", file)
    ours, theirs = layer_signature(model), state["layers"]
    if theirs != ours:
        theirs = theirs if isinstance(theirs, list) else []
        first = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), None)
        first = min(len(theirs), len(ours)) if first is None else first
        raise DataError(
            f"checkpoint is for another model: at layers[{first}] it has "
            f"{_layer_text(theirs, first)}, the config has {_layer_text(ours, first)}",
            file=file,
        )
    rngs = state["layer_rngs"]
    if not isinstance(rngs, list):
        raise bad("layer_rngs", "must be a list")
    expected = len(own_rng_layers(model))
    if len(rngs) != expected:
        raise DataError(
            f"checkpoint is for another model: it holds {len(rngs)} layer random stream(s), "
            f"the config's layers need {expected} (a Dropout 'seed' added or removed?)",
            file=file,
        )
    for i, value in enumerate(rngs):
        _check_rng_state(value, f"'layer_rngs'[{i}]", file)


def _layer_text(layers: list, i: int) -> str:
    if i >= len(layers):
        return "no layer"
    entry = layers[i]
    if isinstance(entry, list) and len(entry) == 2:
        return f"{entry[0]!r} ({entry[1]})"
    return "an unreadable entry"


def own_rng_layers(model: Any) -> list:
    """Layers with a random stream of their own (Dropout with ``seed``), in model order: the
    checkpoint saves each one's state so that a resumed run draws the same masks."""
    return [
        layer
        for layer in model.layers
        if getattr(layer, "rng", None) is not None and layer.rng is not model.rng
    ]
