"""Layer discovery through the ``nbcnn.layers`` entry-point group.

Built-in layers are declared in nbcnn's own pyproject.toml and come through the same door as a
third party's. Discovery (``registry()``, once per process; ``refresh()`` for tests) reads only
the installed distributions' metadata: name, distribution, version and ``module:attribute`` of
every entry point. A layer's module is imported when a config or command first needs its type
(``Registry.entry``), so a slow or hostile plugin costs nothing to configs that do not use it;
``nbcnn layers`` imports them all (``Registry.load_all``) and reports slow imports with their time.

A plugin whose import raises anything but KeyboardInterrupt (``SystemExit`` included), names a
missing attribute or fails the registration checks (:func:`contract_problem`: a ``Layer``
subclass, an int ``api_version`` this nbcnn supports, ``arguments`` of ``Arg``s) becomes a
*broken* entry with the reason and a warning naming its distribution; every other layer keeps
working. What a plugin prints while it is imported goes to stderr, never into stdout's JSON.
Two distributions registering one name are both kept. A built-in name stays nbcnn's: a bare
``Dense`` is always nbcnn's Dense, so installing a plugin that also registers ``Dense`` cannot
change what existing configs mean; the plugin *shadows* the built-in (a warning at discovery,
status ``shadows``) and is used as ``type: its-distribution:Dense``. Two third-party
distributions registering one name are *ambiguous*: the bare name is an error naming both, and
``type: distribution:Name`` picks one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from nbcnn.errors import ConfigError, printable
from nbcnn.layers.args import Arg, did_you_mean, is_int, show
from nbcnn.layers.base import SUPPORTED_API_VERSIONS, Layer

GROUP = "nbcnn.layers"
#: The distribution of the built-in layers: its names win over a plugin's (module docstring).
BUILTIN = "nbcnn"
#: Keras's activation layers and the `Activation` argument that does the same here.
ACTIVATION_LAYERS = {"ReLU": "relu", "Softmax": "softmax", "ELU": "elu"}
CONTRACT_METHODS = ("output_shape", "param_shapes", "macs")
#: A layer module that takes longer than this to import is reported as slow (with its time):
#: calculators are pure Python and kernels load inside forward/backward, so a light module
#: imports in milliseconds.
SLOW_IMPORT_SECONDS = 1.0
#: An import still running after this long is reported while it runs, naming the plugin, so a
#: hanging one is identified. The import itself is never interrupted: Python cannot stop it
#: safely, and running it in another thread would leave a half-imported module holding its
#: import lock and break plugins that install signal handlers (main thread only).
HUNG_IMPORT_SECONDS = 10.0
#: Longest quote of a plugin's exception message.
MESSAGE_LIMIT = 200


@dataclass
class LayerEntry:
    """One registered layer type; its class is imported on first use of :attr:`cls`."""

    name: str
    distribution: str
    version: str
    value: str  # "module:attribute" as declared
    clashes_with: list[str] = field(default_factory=list)
    #: True for a third party's entry whose name is also a built-in one: the bare name means
    #: nbcnn's, this one is reached as ``distribution:Name``.
    shadows: bool = False
    #: How long the import took (None until imported).
    import_seconds: float | None = None
    _point: Any = field(default=None, repr=False, compare=False)
    _loaded: bool = field(default=False, repr=False, compare=False)
    _cls: type | None = field(default=None, repr=False, compare=False)
    _error: str | None = field(default=None, repr=False, compare=False)

    def load(self) -> LayerEntry:
        """Import the class once (stdout sent to stderr meanwhile) and check the contract."""
        if not self._loaded:
            self._cls, self._error, self.import_seconds = _import(self)
            self._loaded = True  # not before: a Ctrl-C during the import leaves it to retry
        return self

    @property
    def cls(self) -> type | None:
        """The layer class; None when the plugin is broken (see :attr:`error`)."""
        return self.load()._cls

    @property
    def error(self) -> str | None:
        """Why the plugin is broken, if it is (imports it)."""
        return self.load()._error

    @property
    def slow(self) -> bool:
        return self.import_seconds is not None and self.import_seconds > SLOW_IMPORT_SECONDS

    @property
    def builtin(self) -> bool:
        return _same_dist(self.distribution, BUILTIN)

    @property
    def qualified(self) -> str:
        """``distribution:Name``, the ``type:`` that picks this entry whatever else is installed."""
        return f"{self.distribution}:{self.name}"

    @property
    def status(self) -> str:
        """``broken``, ``shadows`` (a plugin's entry named like a built-in), ``clash`` (two
        third parties' entries of one name) or ``ok`` (a built-in stays ok beside a plugin that
        shadows it)."""
        if self.error:
            return "broken"
        if self.shadows:
            return "shadows"
        if self.clashes_with and not self.builtin:
            return "clash"
        return "ok"

    @property
    def trainable(self) -> bool:
        """True when the layer brings compute (forward and backward)."""
        return bool(self.cls is not None and getattr(self.cls, "has_compute", False))

    def as_dict(self) -> dict:
        seconds = self.import_seconds
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "trainable": self.trainable,
            "status": self.status,
            "error": self.error,
            "clashes_with": self.clashes_with,
            "value": self.value,
            "import_seconds": None if seconds is None else round(seconds, 3),
            "slow_import": self.slow,
        }


class Registry:
    """The registered layer types of this process."""

    def __init__(self, entry_points: list | None = None):
        points = entry_points if entry_points is not None else metadata.entry_points(group=GROUP)
        about: dict[int, tuple[str, str]] = {}  # metadata parsed once per distribution: 1 ms each
        self._entries: list[LayerEntry] = []
        for ep in points:
            dist = getattr(ep, "dist", None)
            if id(dist) not in about:
                about[id(dist)] = _name_and_version(dist)
            self._entries.append(LayerEntry(ep.name, *about[id(dist)], value=ep.value, _point=ep))
        by_name: dict[str, list[LayerEntry]] = {}
        for entry in self._entries:
            by_name.setdefault(entry.name, []).append(entry)
        for same in by_name.values():
            if len(same) > 1:
                builtin = any(e.builtin for e in same)
                for entry in same:
                    entry.clashes_with = [e.distribution for e in same if e is not entry]
                    entry.shadows = builtin and not entry.builtin
        self._by_name = by_name
        for entry in self.entries():
            if entry.shadows:
                _warn_once(
                    f"layer plugin {entry.name!r} from distribution {entry.distribution!r} "
                    f"shadows nbcnn's built-in {entry.name}: a bare 'type: {entry.name}' still "
                    f"means '{BUILTIN}:{entry.name}'; write 'type: {entry.qualified}' for the "
                    "plugin's"
                )

    def entries(self) -> list[LayerEntry]:
        """Every registered entry, broken and clashing ones included, sorted by name; nothing
        is imported (``cls``, ``error`` and ``status`` import on first use)."""
        return sorted(self._entries, key=lambda e: (e.name, e.distribution))

    def load_all(self) -> list[LayerEntry]:
        """:meth:`entries`, each imported, with a warning on stderr for each broken one."""
        entries = self.entries()
        for entry in entries:
            if entry.error:
                _warn(
                    f"layer plugin {entry.name!r} from distribution {entry.distribution!r} is "
                    f"broken and was skipped: {entry.error}"
                )
        return entries

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def entry(self, type_name: str) -> LayerEntry:
        """The entry for a config's ``type`` (``Name`` or ``distribution:Name``), imported.

        A bare name that a built-in and plugins share means the built-in. Raises ConfigError
        for unknown types (with did-you-mean, or the ``distribution:Name`` spellings when only
        the distribution is wrong), names registered by several third parties (naming each
        ``distribution:Name``) and broken plugins (naming the distribution and the reason).
        Only the chosen entry is imported: the others' metadata is enough for these checks.
        """
        dist, _, name = type_name.rpartition(":")
        registered = self._by_name.get(name, [])
        if dist:
            candidates = [e for e in registered if _same_dist(e.distribution, dist)]
        else:
            candidates = [e for e in registered if e.builtin] or registered
        if not candidates and registered:
            raise ConfigError(
                f"unknown layer type {quote(type_name)}: no distribution {dist!r} registers "
                f"{name!r}; write {_spellings(registered)}"
            )
        if not candidates:
            hint = did_you_mean(name, self.names())
            if name in ACTIVATION_LAYERS and "Activation" in self._by_name:
                hint = (
                    f" (Keras's {name} layer is written here as "
                    f"'{{type: Activation, activation: {ACTIVATION_LAYERS[name]}}}')"
                )
            known = f" from distribution {dist!r}" if dist else ""
            raise ConfigError(
                f"unknown layer type {quote(type_name)}{known}{hint}; `nbcnn layers` lists the "
                "registered types (a plugin's types appear once its package is installed)"
            )
        if len(candidates) > 1:
            dists = " and ".join(
                repr(e.distribution) for e in sorted(candidates, key=_builtin_first)
            )
            raise ConfigError(
                f"layer type {name!r} is registered by {dists}; choose one with "
                f"{_spellings(candidates)}"
            )
        entry = candidates[0]
        if entry.error:
            raise ConfigError(
                f"layer type {type_name!r} from distribution {entry.distribution!r} "
                f"is broken: {entry.error}"
            )
        return entry

    def get(self, type_name: str) -> type:
        """The layer class for a config's ``type``."""
        return self.entry(type_name).cls


def _spellings(entries: list[LayerEntry]) -> str:
    """``'type: nbcnn:Dense' or 'type: nbcnn-x:Dense'``: the ``type:`` picking each entry."""
    return " or ".join(f"'type: {e.qualified}'" for e in sorted(entries, key=_builtin_first))


def _builtin_first(entry: LayerEntry) -> tuple[bool, str]:
    return not entry.builtin, entry.distribution


def _same_dist(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return s.lower().replace("_", "-").replace(".", "-")

    return norm(a) == norm(b)


def _name_and_version(dist: Any) -> tuple[str, str]:
    """A distribution's name and version from its metadata; ``unknown`` when it has none."""
    try:
        return dist.metadata["Name"] or "unknown", dist.version or ""
    except Exception:  # no distribution, or no METADATA file in it
        return "unknown", ""


def describe(err: BaseException) -> str:
    """``SystemExit: 'message'``: a third party's exception as a bounded, escaped quote."""
    try:
        message = str(err)
    except KeyboardInterrupt:
        raise
    except BaseException:  # an exception whose __str__ raises still gets named
        message = "(its message could not be read)"
    if not message:
        return type(err).__name__
    return f"{type(err).__name__}: {show(message, MESSAGE_LIMIT)}"


def quote(value: object) -> str:
    """:func:`~nbcnn.layers.args.show` of a value a plugin returned, or its type's name when
    its ``repr`` raises."""
    try:
        return show(value)
    except KeyboardInterrupt:
        raise
    except BaseException:
        return f"a {type(value).__name__} whose repr raised"


def _import(entry: LayerEntry) -> tuple[type | None, str | None, float]:
    """``(class, None, seconds)``, or ``(None, why it is broken, seconds)``."""
    watchdog = threading.Timer(HUNG_IMPORT_SECONDS, _still_importing, (entry,))
    watchdog.daemon = True
    watchdog.start()
    start = time.perf_counter()
    try:
        with stdout_to_stderr():
            cls = entry._point.load()
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # a third party's import can raise anything, SystemExit too
        return None, f"import of {entry.value} failed: {describe(err)}", _since(start)
    finally:
        watchdog.cancel()
    seconds = _since(start)
    if seconds > SLOW_IMPORT_SECONDS and entry.distribution != "nbcnn":
        _warn(
            f"layer plugin {entry.name!r} from distribution {entry.distribution!r} took "
            f"{seconds:.1f} s to import; a layer module should be light (docs/plugins.md)"
        )
    try:
        problem = contract_problem(cls)
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # e.g. a metaclass whose attribute lookup raises
        problem = f"checking {entry.value} against the layer contract raised {describe(err)}"
    return (None, problem, seconds) if problem else (cls, None, seconds)


def _since(start: float) -> float:
    return time.perf_counter() - start


def _still_importing(entry: LayerEntry) -> None:
    _warn(
        f"still importing layer plugin {entry.name!r} from distribution "
        f"{entry.distribution!r} after {HUNG_IMPORT_SECONDS:.0f} s (Ctrl-C stops)"
    )


#: Warnings already printed by :func:`_warn_once` (``refresh()`` discovers again, quietly).
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        _warn(message)


def _warn(message: str) -> None:
    if sys.stderr is not None:  # closed: print(file=None) would write to stdout
        print(f"warning: {printable(message)}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what is written to stdout meanwhile to stderr: ``print`` (sys.stdout) and, where
    the descriptors allow it, file descriptor 1 (a subprocess, a C extension's ``write``), so
    the JSON that nbcnn prints afterwards stays the only thing on stdout."""
    _flush_stdout()
    saved = _fd1_to_stderr()
    try:
        with contextlib.ExitStack() as stack:
            # stderr closed (None): a plugin's sys.stdout.write must still work, into nothing.
            sink = sys.stderr or stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stdout(sink))
            yield
    finally:
        if saved is not None:
            _flush_stdout()  # what was written to sys.__stdout__ itself meanwhile: fd 2
            os.dup2(saved, 1)
            os.close(saved)


def _fd1_to_stderr() -> int | None:
    """Point file descriptor 1 where stderr points (at /dev/null when stderr is closed) and
    return a copy of the old one; None when stdout is closed (nothing to keep apart)."""
    try:
        os.fstat(2)
        sink = None
    except OSError:  # checked first: os.dup(1) below would take the free number 2
        sink = os.open(os.devnull, os.O_WRONLY)
    try:
        saved = os.dup(1)
    except OSError:
        saved = None
    else:
        os.dup2(2 if sink is None else sink, 1)
    if sink is not None:
        os.close(sink)
    return saved


def _flush_stdout() -> None:
    # sys.stdout is None when nbcnn starts with stdout closed, and a closed pipe refuses the
    # flush: nothing to keep apart then.
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stdout.flush()


def contract_problem(cls: object) -> str | None:
    """Why ``cls`` cannot serve as a layer, or None if it fits the contract: a class deriving
    from :class:`~nbcnn.layers.base.Layer`, with callable contract methods, an int
    ``api_version`` that this nbcnn supports and ``arguments`` mapping names to ``Arg``s.

    Checked when the class is registered (imported), so a mistake is reported by ``nbcnn
    layers`` and where the type is used, not as an AttributeError deep inside a constructor.
    """
    if not isinstance(cls, type):
        return f"{show(cls)} is not a class"
    name = cls.__name__
    if not issubclass(cls, Layer):
        # Checked first: a class of its own lacks more than methods, and saying which methods
        # it lacks would hide the fix (derive from Layer, which also parses the arguments).
        return f"{name} does not derive from nbcnn.layers.base.Layer (write 'class {name}(Layer)')"
    missing = [m for m in CONTRACT_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        return f"{name} lacks the contract method(s) {', '.join(missing)}"
    return _api_version_problem(cls) or _arguments_problem(cls)


def _api_version_problem(cls: type) -> str | None:
    version = getattr(cls, "api_version", None)
    fits = ", ".join(map(str, SUPPORTED_API_VERSIONS))
    if not is_int(version):
        # "1" would otherwise read "declares api_version '1'; this nbcnn supports 1".
        return (
            f"{cls.__name__}.api_version is {show(version)} (a {type(version).__name__}); it must "
            f"be an int (this nbcnn supports api_version {fits})"
        )
    if version not in SUPPORTED_API_VERSIONS:
        return (
            f"{cls.__name__} declares plugin api_version {show(version)}; this nbcnn supports "
            f"api_version {fits}"
        )
    return None


def _arguments_problem(cls: type) -> str | None:
    arguments = getattr(cls, "arguments", None)
    where = f"{cls.__name__}.arguments"
    if not isinstance(arguments, Mapping):
        return (
            f"{where} is {show(arguments)} (a {type(arguments).__name__}); it must be a dict of "
            "keyword name -> Arg (nbcnn.layers.args)"
        )
    for key, arg in arguments.items():
        if not isinstance(key, str):
            return f"{where} has the key {show(key)}; its keys must be keyword names (str)"
        if not isinstance(arg, Arg):
            return (
                f"{where}[{show(key)}] is {show(arg)} (a {type(arg).__name__}), not an Arg: "
                f"write {show(key)}: Arg(parser, default, doc) with Arg from nbcnn.layers.args"
            )
        if not callable(arg.parse):
            return (
                f"{where}[{show(key)}] has parser {show(arg.parse)}, which is not callable: "
                "Arg's first field is a function (nbcnn.layers.args has positive_int, ...)"
            )
    return None


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, discovered on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def refresh() -> Registry:
    """Discover again (after installing a plugin in the same process, e.g. in tests)."""
    global _REGISTRY
    _REGISTRY = None
    return registry()
