"""Hyper-parameter sweeps: ``nbcnn sweep sweep.yaml`` (docs/sweeps.md).

- :mod:`~nbcnn.sweep.space`: key paths (``layers[2].filters``) and their searches
  (``[32, 64]``, ``loguniform(1e-4, 1e-2)``); setting values into a config document;
- :mod:`~nbcnn.sweep.spec`: the sweep file -> a checked :class:`~nbcnn.sweep.spec.Sweep`;
- :mod:`~nbcnn.sweep.trials`: one trial, ``nbcnn train`` in a subprocess of a Dask task, and
  what its exit means;
- :mod:`~nbcnn.sweep.study`: the Optuna study (storage, sampler, pruner) and what a re-run
  of a sweep runs again;
- :mod:`~nbcnn.sweep.driver`: the Dask cluster and the loop that asks, reports, prunes and
  tells;
- :mod:`~nbcnn.sweep.results`: trials.jsonl, results.json, best.yaml, sweep.png.

Optuna and Dask are imported only when a sweep runs (the ``dask`` extra).
"""

from nbcnn.sweep.driver import run_sweep
from nbcnn.sweep.results import write_results
from nbcnn.sweep.spec import Sweep, load_sweep

__all__ = ["Sweep", "load_sweep", "run_sweep", "write_results"]
