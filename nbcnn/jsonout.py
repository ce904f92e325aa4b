"""Strict JSON for ``--json``: what nbcnn prints parses with any JSON parser.

``json.dumps`` writes non-finite floats as ``NaN``, ``Infinity`` and ``-Infinity`` by default,
which RFC 8259 does not allow (``jq`` and JavaScript's ``JSON.parse`` reject them). Here they
become ``null``, a note on stderr names where, and ``allow_nan=False`` makes any that slipped
through an error rather than invalid output.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

#: How many replaced places the stderr note names before it says "and N more".
NAMED = 5


def nulled(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """A copy of ``value`` (mappings, lists and tuples walked) with every NaN or infinite float
    as None, and the key paths where that happened (``per_class_accuracy[3]``)."""
    if isinstance(value, float):
        return (value, []) if math.isfinite(value) else (None, [path or "the value"])
    if isinstance(value, dict):
        pairs = [
            (key, nulled(item, f"{path}.{key}" if path else str(key)))
            for key, item in value.items()
        ]
        return {key: clean for key, (clean, _) in pairs}, [p for _, (_, ps) in pairs for p in ps]
    if isinstance(value, (list, tuple)):
        items = [nulled(item, f"{path}[{i}]") for i, item in enumerate(value)]
        return [clean for clean, _ in items], [p for _, ps in items for p in ps]
    return value, []


def print_json(value: Any, *, indent: int | None = None) -> None:
    """Print ``value`` as strict JSON on stdout; NaN and infinities become null, with a note on
    stderr naming where."""
    clean, replaced = nulled(value)
    text = json.dumps(clean, indent=indent, allow_nan=False)
    if replaced:
        named = ", ".join(replaced[:NAMED])
        more = f" and {len(replaced) - NAMED} more" if len(replaced) > NAMED else ""
        print(
            f"nbcnn: warning: {named}{more} not finite (NaN or infinity): printed as null",
            file=sys.stderr,
        )
    print(text)
