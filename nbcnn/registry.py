"""Layer discovery through the ``nbcnn.layers`` entry-point group.

Built-in layers are declared in nbcnn's own pyproject.toml and come through the same door as a
third party's. Discovery runs once per process (``registry()``; ``refresh()`` for tests). A
plugin that fails to import, names a missing attribute, breaks the contract or declares an
unsupported ``api_version`` is kept as a *broken* entry with the reason and a warning naming its
distribution; every other layer keeps working. Two distributions registering one name are both
kept: using the bare name is an error naming both, ``type: distribution:Name`` picks one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import metadata

from nbcnn.errors import ConfigError
from nbcnn.layers.args import did_you_mean
from nbcnn.layers.base import SUPPORTED_API_VERSIONS, Layer

GROUP = "nbcnn.layers"
CONTRACT_METHODS = ("output_shape", "param_shapes", "macs")


@dataclass
class LayerEntry:
    """One registered layer type and what became of loading it."""

    name: str
    distribution: str
    version: str
    value: str  # "module:attribute" as declared
    cls: type | None = None
    error: str | None = None  # why it is broken, if it is
    clashes_with: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.error:
            return "broken"
        if self.clashes_with:
            return "clash"
        return "ok"

    @property
    def trainable(self) -> bool:
        """True when the layer brings compute (forward and backward)."""
        return bool(self.cls is not None and getattr(self.cls, "has_compute", False))

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "trainable": self.trainable,
            "status": self.status,
            "error": self.error,
            "clashes_with": self.clashes_with,
            "value": self.value,
        }


class Registry:
    """The registered layer types of this process."""

    def __init__(self, entry_points: list | None = None):
        points = entry_points if entry_points is not None else metadata.entry_points(group=GROUP)
        self._entries: list[LayerEntry] = [_load(ep) for ep in points]
        by_name: dict[str, list[LayerEntry]] = {}
        for entry in self._entries:
            by_name.setdefault(entry.name, []).append(entry)
        for same in by_name.values():
            if len(same) > 1:
                for entry in same:
                    entry.clashes_with = [e.distribution for e in same if e is not entry]
        self._by_name = by_name
        for entry in self._entries:
            if entry.error:
                print(
                    f"warning: layer plugin {entry.name!r} from distribution "
                    f"{entry.distribution!r} is broken and was skipped: {entry.error}",
                    file=sys.stderr,
                )

    def entries(self) -> list[LayerEntry]:
        """Every registered entry, broken and clashing ones included, sorted by name."""
        return sorted(self._entries, key=lambda e: (e.name, e.distribution))

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def entry(self, type_name: str) -> LayerEntry:
        """The entry for a config's ``type`` (``Name`` or ``distribution:Name``).

        Raises ConfigError for unknown types (with did-you-mean), ambiguous names (naming
        both distributions) and broken plugins (naming the distribution and the reason).
        """
        dist, _, name = type_name.rpartition(":")
        candidates = self._by_name.get(name, [])
        if dist:
            candidates = [e for e in candidates if _same_dist(e.distribution, dist)]
        if not candidates:
            hint = did_you_mean(name, self.names())
            known = f" from distribution {dist!r}" if dist else ""
            raise ConfigError(
                f"unknown layer type {type_name!r}{known}{hint}; "
                "`nbcnn layers` lists the registered types"
            )
        if len(candidates) > 1:
            dists = " and ".join(repr(e.distribution) for e in candidates)
            raise ConfigError(
                f"layer type {name!r} is registered by {dists}; choose one with "
                f"'type: {candidates[0].distribution}:{name}'"
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


def _same_dist(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return s.lower().replace("_", "-").replace(".", "-")

    return norm(a) == norm(b)


def _load(ep) -> LayerEntry:
    dist = getattr(ep, "dist", None)
    entry = LayerEntry(
        name=ep.name,
        distribution=dist.metadata["Name"] if dist is not None else "unknown",
        version=dist.version if dist is not None else "",
        value=ep.value,
    )
    try:
        cls = ep.load()
    except Exception as err:  # a third party's import can raise anything
        entry.error = f"import of {ep.value} failed: {type(err).__name__}: {err}"
        return entry
    entry.error = contract_problem(cls)
    if entry.error is None:
        entry.cls = cls
    return entry


def contract_problem(cls: object) -> str | None:
    """Why ``cls`` cannot serve as a layer, or None if it fits the contract."""
    if not isinstance(cls, type):
        return f"{cls!r} is not a class"
    missing = [m for m in CONTRACT_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        return f"{cls.__name__} lacks the contract method(s) {', '.join(missing)}"
    version = getattr(cls, "api_version", None)
    if version not in SUPPORTED_API_VERSIONS:
        fits = ", ".join(map(str, SUPPORTED_API_VERSIONS))
        return (
            f"{cls.__name__} declares plugin api_version {version!r}; this nbcnn supports "
            f"api_version {fits}"
        )
    if not issubclass(cls, Layer):
        return f"{cls.__name__} does not subclass nbcnn.layers.base.Layer"
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
