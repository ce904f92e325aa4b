"""The one place where numba's decorator options and threading layer are chosen.

Threading layer: chosen by the convolution backend (``NBCNN_CONV``, see ``engine.backend``).

- The engine (the default) runs on numba's ``omp`` layer (GNU OpenMP), falling back to
  ``workqueue`` where OpenMP cannot load. ``workqueue`` splits a ``prange`` into one static
  chunk per thread and wakes its workers by polling with naps, so on two cores a convolution
  often ran as if on one: conv2's engine forward took 5.3-5.7 ms in some runs of 200 calls and
  8-10.9 ms in others (median 6.7-7.0, p90 10.3-10.7), against 5.5-5.7 (p90 6.0-6.2) on
  ``omp``; a seed convnet training step took 38.4-42.9 ms on ``workqueue`` and 27.5-30.7 ms on
  ``omp`` (``benchmarks/profile_step.py``, 2 threads, AMD EPYC AVX-512).
- ``NBCNN_CONV=blas`` (im2col + OpenBLAS) keeps ``workqueue``: there OpenMP's spinning workers
  took the cores from OpenBLAS and OpenBLAS's spinning threads slowed the numba loops run
  right after each GEMM (the same step: 40-41 ms on ``workqueue``, 53-58 ms on ``omp``).
  ``workqueue`` plus a short ``OPENBLAS_THREAD_TIMEOUT`` (read once, when OpenBLAS loads, so
  set before numpy is first imported) took that design from 0.78x to 1.9x PyTorch's speed
  (measurements in ``STYLE.md``).

The layer is fixed when the first parallel kernel runs, so it is chosen here, at import,
before any kernel module defines one; switching ``NBCNN_CONV`` later in the same process keeps
it. An explicit ``NUMBA_THREADING_LAYER`` (or ``NUMBA_THREADING_LAYER_PRIORITY``) in the
environment still wins, so the choice can be re-measured without editing code. The price of
each: ``workqueue`` is not thread-safe (parallel kernels launched from two Python threads at
once abort the process); GNU OpenMP is not fork-safe (a process forked after kernels ran must
not run kernels itself: start workers with ``spawn`` or ``forkserver``).

Decorator options: ``cache=True`` (compiled kernels are stored next to the source, so only
the first run pays the compile), ``nogil=True`` (kernels release the GIL), ``fastmath`` off
(measured to give nothing, and it would make results depend on reassociation).
"""

from __future__ import annotations

import os

import numba

#: The layers tried, in order, for the engine backend: OpenMP, else numba's own pool.
ENGINE_LAYERS = ["omp", "workqueue", "tbb"]

#: Spins of an idle GNU OpenMP worker before it sleeps (see ``_choose_threading_layer``).
GOMP_SPINCOUNT = 20000


def _choose_threading_layer() -> None:
    """Set numba's threading layer for the backend NBCNN_CONV names (module docstring)."""
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    if os.environ.get("NBCNN_CONV", "").strip().lower() == "blas":
        numba.config.THREADING_LAYER = "workqueue"
        return
    numba.config.THREADING_LAYER = "default"  # the first of the priority list that loads
    if "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
        numba.config.THREADING_LAYER_PRIORITY = list(ENGINE_LAYERS)
    # GNU OpenMP's idle workers spin GOMP_SPINCOUNT times (300,000 by default: milliseconds
    # of spinning) before sleeping, on the cores that OpenBLAS's threads want for the Dense
    # layers' GEMMs right after a convolution: the seed convnet's dense backward took
    # 3.1-3.6 ms with the default, 1.6-1.9 ms with 20,000 (2,000 or 0 measured no better
    # for it, and 0 slowed the convolutions, whose workers then sleep between kernels).
    # Read when libgomp loads, at the first parallel kernel; an explicit GOMP_SPINCOUNT (or
    # OMP_WAIT_POLICY) wins.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", str(GOMP_SPINCOUNT))


_choose_threading_layer()


def _keep_freed_memory_for_reuse() -> bool:
    """Ask glibc to serve large arrays from its heap and keep freed memory for reuse.

    A training step allocates ~180 MB of short-lived arrays (im2col columns, activations,
    gradients). By default glibc maps every block over 128 KiB fresh from the kernel and
    unmaps it on free, so each step page-faults all of it in again: measured 62 -> 48 ms per
    step of the seed convnet at batch 128 once blocks up to 32 MiB (glibc's largest allowed
    threshold) stay in the heap. Peak memory is unchanged; memory freed is kept by the
    process instead of returned at once. Process-wide, so it runs when kernels first load
    (never for ``nbcnn summary``); set NBCNN_MALLOC_TUNING=0 to leave glibc as it is.
    Returns whether the settings took effect (False off glibc).
    """
    if os.environ.get("NBCNN_MALLOC_TUNING", "1") == "0":
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    ok = mallopt(m_mmap_threshold, 32 << 20) == 1
    return ok and mallopt(m_trim_threshold, 512 << 20) == 1


MALLOC_TUNED = _keep_freed_memory_for_reuse()

#: nbcnn's numba options, set in this one place: the module docstring says why each.
KERNEL_OPTIONS = {"cache": True, "parallel": True, "nogil": True, "fastmath": False}


def kernel(function=None, **options):
    """``numba.njit`` with nbcnn's options (``KERNEL_OPTIONS``): the decorator of every kernel
    with a ``numba.prange`` loop, nbcnn's and its plugins'.

    Use it bare (``@kernel``) or with numba options that replace nbcnn's for one kernel
    (``@kernel(parallel=False)``). Compiled kernels are cached next to their source file, so
    only the first run pays the compile. Importing this module has already chosen numba's
    threading layer (OpenMP for the engine, ``workqueue`` for ``NBCNN_CONV=blas``; see the
    module docstring), unless ``NUMBA_THREADING_LAYER`` says otherwise.
    """
    return numba.njit(function, **{**KERNEL_OPTIONS, **options})


def threading_info() -> dict[str, object]:
    """Which threading layer numba runs and with how many threads, and the BLAS thread pools.

    Returns a dict with ``layer`` (the layer actually loaded, e.g. ``'omp'``, or
    ``None`` before any parallel kernel has run), ``requested_layer`` (the configured
    choice; ``'default'`` takes the first of ``layer_priority`` that loads),
    ``num_threads`` (``numba.get_num_threads()``) and ``blas`` (threadpoolctl's
    description of the loaded BLAS pools, or ``None`` if threadpoolctl is not installed),
    ``malloc_tuned``, ``gomp_spincount`` (GNU OpenMP's idle spins, as set for it) and
    ``openblas_thread_timeout``: the value OpenBLAS read when numpy loaded
    it, or ``None`` when numpy was imported before nbcnn without the variable set (OpenBLAS then
    spins its idle threads for its long default; import nbcnn first, or set it yourself).
    """
    import nbcnn

    try:
        layer = numba.threading_layer()
    except ValueError:  # raised until the first parallel kernel has launched the pool
        layer = None
    try:
        import threadpoolctl
    except ImportError:
        blas = None
    else:
        blas = [
            {k: info.get(k) for k in ("internal_api", "num_threads", "version")}
            for info in threadpoolctl.threadpool_info()
        ]
    return {
        "layer": layer,
        "requested_layer": numba.config.THREADING_LAYER,
        "layer_priority": list(numba.config.THREADING_LAYER_PRIORITY),
        "num_threads": numba.get_num_threads(),
        "blas": blas,
        "malloc_tuned": MALLOC_TUNED,
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "openblas_thread_timeout": (
            os.environ.get("OPENBLAS_THREAD_TIMEOUT") if nbcnn._OPENBLAS_TIMEOUT_APPLIED else None
        ),
    }


def set_threads(threads: int) -> int:
    """Run numba's parallel loops on ``threads`` threads (at most the cores numba found) and
    cap the BLAS pools to the same number, so the two never ask for more than that; returns
    the number used."""
    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return threads
    threadpool_limits(threads, user_api="blas")
    return threads
