"""Set-up of a process that outlier_dask owns: the ``outlier-dask`` command's.

A library must leave its caller's process as it found it. The command owns its process from
start to exit, and sets it up for the run:

- **BLAS with one thread.** numpy and scipy each load an OpenBLAS that starts a thread per
  core, and each thread spins for a while before it sleeps. Nothing in a run calls BLAS on
  large arrays, and the workers fill the cores; the spinning threads only took CPU from the
  one-core start of the run (measured on the performance page). The
  thread counts are set before numpy is imported, unless the user set them; they are what
  ``dask.distributed`` sets for its workers.
- **No transparent huge pages for numpy's arrays.** numpy asks the kernel for huge pages for
  every large array (its documented ``NUMPY_MADVISE_HUGEPAGE`` setting, read when numpy is
  imported); each task's arrays are then faulted in as huge pages, which costs more system
  time than the streaming kernels here gain. The command sets it to 0 unless the user set it.

Both are environment variables the libraries document, set before they are imported, in a
process the command owns (and inherited by the workers it forks).

- **Ctrl-C and SIGTERM from the first moment.** The handlers of
  :mod:`outlier_dask.runtime.signals` are installed before anything heavy is imported and stay
  for the life of the process, so a signal during the imports, the planning or the start of
  the workers ends the command as one during the run does: one line, exit status 130 or 143.
  Only the interpreter's own start-up (before the entry point's first line) comes earlier.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from outlier_dask.runtime.signals import interrupted_by_signals

__all__ = ["BLAS_THREAD_VARIABLES", "NUMPY_HUGEPAGE_VARIABLE", "command_process"]

#: Environment variables that size the BLAS and OpenMP thread pools, read when they load.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


#: numpy's setting for huge pages of large arrays, read when numpy is imported.
NUMPY_HUGEPAGE_VARIABLE = "NUMPY_MADVISE_HUGEPAGE"


def _set_library_defaults() -> None:
    """Default BLAS threads to 1 and numpy's huge pages off, unless numpy is loaded already
    (it has read the environment) or the user set them."""
    if "numpy" in sys.modules:
        return  # setting them now would change nothing
    for name in (*BLAS_THREAD_VARIABLES, NUMPY_HUGEPAGE_VARIABLE):
        os.environ.setdefault(name, "1" if name in BLAS_THREAD_VARIABLES else "0")


@contextlib.contextmanager
def command_process() -> Iterator[None]:
    """The whole life of the command's process, set up on entry (see the module's docstring).

    Within it SIGINT and SIGTERM raise ``KeyboardInterrupt`` (once), which the command turns
    into its one-line report and exit status.
    """
    with interrupted_by_signals(announce=False):
        _set_library_defaults()
        yield
