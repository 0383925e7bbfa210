"""Set-up of each worker process of a ``local-cluster`` run (a ``distributed`` preload).

Ctrl-C reaches every process of the terminal's foreground group, a cluster's worker processes
too: each would stop its task and log about it, while the run's process is stopping the
cluster anyway (``runtime/schedulers.py`` kills its workers at once). A worker therefore
ignores SIGINT once it has started; one started by the installed ``outlier-dask`` command
already ignores it from the moment it runs the command's script as its main module, before it
imports distributed (:mod:`outlier_dask.command`). SIGTERM keeps its default action:
distributed ends a worker over its memory limit with it, and a batch system's SIGTERM ends
the worker at once.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["dask_setup"]


def dask_setup(worker: Any) -> None:
    """Called by distributed as the worker starts, in the worker process's event loop."""
    # Python sets handlers in the main thread only; distributed runs the loop there.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
