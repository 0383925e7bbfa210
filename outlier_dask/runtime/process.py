"""Set-up of a process that outlier_dask owns: the ``outlier-dask`` command's.

A library must leave its caller's process as it found it. The command owns its process from
start to exit, and sets it up for the run:

- **BLAS with one thread.** numpy and scipy each load an OpenBLAS that starts a thread per
  core, and each thread spins for a while before it sleeps. Nothing in a run calls BLAS on
  large arrays, and the workers fill the cores; the spinning threads only took CPU from the
  one-core start of the run (measured on the performance page). The
  thread counts are set before numpy is imported, unless the user set them; they are what
  ``dask.distributed`` sets for its workers.

The thread counts are environment variables the libraries document, set before they are
imported, in a process the command owns (and inherited by the workers it forks). glibc's
allocator tunables, which glibc reads only when a program starts, are set by the command's
restart at its first line (:mod:`outlier_dask.runtime.allocator`). numpy's own
default for transparent huge pages (``NUMPY_MADVISE_HUGEPAGE``) is left alone: with huge pages
a task's fresh arrays take fewer page faults (measured on the performance page).

- **No collection of the whole heap at exit.** Once the command has its exit status, every
  object left (mostly the modules numpy, astropy, gwcs, stdatamodels and dask loaded) is set
  aside from the collector (:func:`gc.freeze`): the interpreter's exit otherwise traverses them
  all in its last collections (measured on the performance page). Nothing of the run is left
  to compute or write then; objects are still freed by their reference counts, and the exit
  handlers run. During the run the collector is as Python sets it (the runtime runs one
  collection before it forks workers, so that they do not each run it over what they inherit:
  :mod:`outlier_dask.runtime.schedulers`).

- **Ctrl-C and SIGTERM from the first moment.** The handlers of
  :mod:`outlier_dask.runtime.signals` are installed before anything heavy is imported and stay
  for the life of the process, so a signal during the imports, the planning or the start of
  the workers ends the command as one during the run does: one line, exit status 130 or 143.
  One that Python would drop (its ``KeyboardInterrupt`` raised inside a weakref callback or a
  ``__del__``) is raised again (:func:`~outlier_dask.runtime.signals.interrupts_not_lost`),
  and so is one a library swallowed, at the next step of the command
  (:func:`~outlier_dask.runtime.signals.stop_if_interrupted`).
  Only the interpreter's own start-up (before the entry point's first line) comes earlier.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
from collections.abc import Iterator

from outlier_dask.runtime.signals import interrupted_by_signals, interrupts_not_lost

__all__ = ["BLAS_THREAD_VARIABLES", "command_process"]

#: Environment variables that size the BLAS and OpenMP thread pools, read when they load.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def _set_library_defaults() -> None:
    """Default the BLAS thread counts to 1, unless numpy is loaded already (it has read the
    environment) or the user set them."""
    if "numpy" in sys.modules:
        return  # setting them now would change nothing
    for name in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")


@contextlib.contextmanager
def command_process() -> Iterator[None]:
    """The whole life of the command's process, set up on entry (see the module's docstring).

    Within it SIGINT and SIGTERM raise ``KeyboardInterrupt`` (once), which the command turns
    into its one-line report and exit status; after it (the command has returned its status)
    they are ignored while the interpreter exits, and the objects left are frozen
    (:func:`gc.freeze`) so that its last collections skip them.
    """
    with interrupted_by_signals(announce=False), interrupts_not_lost():
        _set_library_defaults()
        yield
    # Only the interpreter's exit is left: a signal now would turn a finished command's status
    # into the signal's, and its last collections would traverse every module's objects.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    gc.freeze()
