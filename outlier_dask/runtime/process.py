"""Set-up of a process that outlier_dask owns: the ``outlier-dask`` command's.

A library must leave its caller's process as it found it (:func:`detect_outliers` only sets
the collector aside during the call, :mod:`outlier_dask.runtime.collector`). The command owns
its process from start to exit, and sets it up for the run:

- **BLAS with one thread.** numpy and scipy each load an OpenBLAS that starts a thread per
  core, and each thread spins for a while before it sleeps. Nothing in a run calls BLAS on
  large arrays, and the workers fill the cores; the spinning threads only took CPU from the
  one-core start of the run (0.07 s of the imports on the 2-core benchmark machine). The
  thread counts are set before numpy is imported, unless the user set them; they are what
  ``dask.distributed`` sets for its workers.
- **Imported objects set aside.** The imports run without collections (they make long-lived
  objects only), then everything they made is frozen out of the collector
  (:func:`gc.freeze`): later collections skip it.
- **Exit without a final collection.** Before the command returns, every object is frozen,
  so the interpreter's shutdown does not walk all of them again: the process ended 0.2 s
  sooner on the benchmark machine. Files, pools and scratch folders are closed by then.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator

__all__ = ["BLAS_THREAD_VARIABLES", "command_process", "imports_set_aside"]

#: Environment variables that size the BLAS and OpenMP thread pools, read when they load.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def _single_threaded_blas() -> None:
    """Default the BLAS thread counts to 1, if numpy is not loaded yet and the user set none."""
    if "numpy" in sys.modules:
        return  # its BLAS already read the environment: setting it now would change nothing
    for name in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")


@contextlib.contextmanager
def imports_set_aside() -> Iterator[None]:
    """Import inside the block without collections, then freeze what the imports made."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


@contextlib.contextmanager
def command_process() -> Iterator[None]:
    """The whole life of the command's process: set up on entry, ready to exit at the end."""
    _single_threaded_blas()
    try:
        yield
    finally:
        gc.freeze()
