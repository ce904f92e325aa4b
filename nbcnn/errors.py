"""The project's error types.

Every error a user can cause (a bad config, a bad data or weights file) is an ``NbcnnError``
whose message is one line naming the file and the key or layer. The CLI turns these into
exit code 2 without a traceback; a failure during work (:class:`TrainingError`) and a layer's
bug caught at its boundary (:class:`PluginError`) into exit code 1. Anything else escaping is
a bug of nbcnn's.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: characters that are not printable (ANSI escapes,
    NUL, CR, newlines, bidi overrides, lone surrogates) as their ``repr`` escapes (``\\x1b``),
    the rest unchanged. Names come from configs and plugins; JSON keeps them as they are."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class NbcnnError(Exception):
    """Base class for errors caused by user input; ``str(err)`` is the one-line message."""

    exit_code = 2


class ConfigError(NbcnnError):
    """A model or train config that cannot be used.

    Parameters
    ----------
    message : what is wrong, what was received and what is allowed.
    file : the config file, when there is one.
    where : the key path (``layers[2].kernel_size``) or layer (``layer 3 'conv2d_1' (Conv2D)``).
    """

    def __init__(self, message: str, *, file: str | None = None, where: str | None = None):
        self.message = message
        self.file = file
        self.where = where
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.where
        if where is not None and (not where or not where.isprintable()):
            where = repr(where)  # a key like "" or "a\nb" must stay visible and on one line
        parts = [p for p in (self.file, where) if p]
        return ": ".join([*parts, self.message])

    def located(self, *, file: str | None = None, where: str | None = None) -> ConfigError:
        """Return a copy with the file and/or an outer key path filled in."""
        if where and self.where:
            joined = where + ("" if self.where.startswith("[") else ".") + self.where
        else:
            joined = where or self.where
        return type(self)(self.message, file=file or self.file, where=joined)


class DataError(NbcnnError):
    """A data, weights or image file that cannot be used; the message names the file."""

    def __init__(self, message: str, *, file: str | None = None):
        self.message = message
        self.file = file
        super().__init__(f"{file}: {message}" if file else message)


class TrainingError(NbcnnError):
    """A failure during work (NaN loss, disk full): exit code 1."""

    exit_code = 1


class PluginError(TrainingError):
    """A layer's code broke the layer contract: a calculator other than a ShapeError, a build,
    forward or backward raised, or returned what the contract does not allow (a forward of
    the wrong shape, a backward without a weight's gradient). A bug in the layer, not bad
    input: exit code 1. The message names the layer, its type and its distribution and the
    rule that broke; ``__cause__`` keeps the exception the layer raised, if any, for
    ``nbcnn --traceback`` and the Python API.

    Attributes
    ----------
    distribution : the distribution that provides the layer's type (``nbcnn`` for built-ins).
    phase : where it failed: a calculator's name, ``build``, ``forward``, ``backward``...
    """

    def __init__(self, message: str, *, distribution: str, phase: str):
        self.distribution = distribution
        self.phase = phase
        super().__init__(message)


class PeerFailed(NbcnnError):
    """In data-parallel training, another rank (rank 0) refused the run or failed: this rank
    stops with the same exit code; rank 0 printed why (``str(err)`` repeats it)."""

    def __init__(self, message: str, exit_code: int):
        self.exit_code = exit_code
        super().__init__(message)
