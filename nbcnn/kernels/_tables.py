"""The cache of the engine's address tables (engine's pixel and window offsets, borders' classes).

The tables depend only on shapes, which repeat every batch: each is built with NumPy (broadcast
sums, 0.1-0.3 ms for the seed convnet's) and the small ones are kept, read-only, at most
``TABLES`` of a kind and none over ``CACHED_ENTRIES`` entries (8 MB of int64; a 224x224 batch
of 128 would be 51 MB a table), instead of a numba kernel building them on every call (0.05-0.14
ms each, several a step) that numba also had to compile on a first run.
"""

from __future__ import annotations

import functools

TABLES, CACHED_ENTRIES = 16, 1 << 20


def cached_table(per_sample):
    """Cache a table builder's small results (see above): ``builder(n_samples, *rest)``,
    ``per_sample(*rest)`` the table's entries per sample, known before building it."""

    def wrap(builder):
        cached = functools.lru_cache(maxsize=TABLES)(builder)

        @functools.wraps(builder)
        def table(n_samples, *rest):
            if n_samples * per_sample(*rest) > CACHED_ENTRIES:
                return builder(n_samples, *rest)
            return cached(n_samples, *rest)

        table.cache_clear = cached.cache_clear
        return table

    return wrap
