"""Choosing and starting the scheduler that runs the engine's graphs.

``processes`` is the default because the compiled drizzle holds the GIL: a pool of worker
processes (started once per run from a fork server that has already imported the engine) runs
every stage. ``threads`` and ``synchronous`` run in this process; ``local-cluster`` starts a
``distributed.LocalCluster``; an address connects to a running scheduler; a ``Client`` passed
from Python is used as it is.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask

from outlier_dask.parameters import OutlierParameters, parse_memory_size

__all__ = ["Runner", "default_workers", "start_runner"]

log = logging.getLogger(__name__)


def default_workers() -> int:
    """Workers to use when the user does not say: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Runner:
    """Runs dask collections on the chosen scheduler.

    Attributes
    ----------
    kind : str
        ``processes``, ``threads``, ``synchronous``, ``distributed``.
    n_workers : int
        Parallel workers.
    """

    kind: str
    n_workers: int
    _options: dict[str, Any]
    client: Any = None
    #: ``progress(stage, runner) -> context manager`` shown around each stage's computation
    progress: Callable[[str, Runner], contextlib.AbstractContextManager] | None = None

    def compute(self, *collections: Any, stage: str = "compute") -> tuple:
        """Compute dask collections (delayed objects, arrays) and return their values.

        ``stage`` names the step for progress displays (drizzle, median, blot+flag, write).
        """
        if self.progress is None:
            return dask.compute(*collections, **self._options)
        with self.progress(stage, self):
            return dask.compute(*collections, **self._options)

    @property
    def dashboard_link(self) -> str | None:
        """The distributed dashboard's address, when there is one."""
        return getattr(self.client, "dashboard_link", None) if self.client else None


@contextlib.contextmanager
def start_runner(
    params: OutlierParameters, client: Any = None, spill_dir: str | None = None
) -> Iterator[Runner]:
    """Start the scheduler named by ``params.scheduler`` (or use ``client``) for one run."""
    n = params.n_workers or default_workers()
    if client is not None:
        yield Runner("distributed", n, {"scheduler": client}, client)
        return
    kind = params.scheduler
    if kind == "synchronous":
        yield Runner(kind, 1, {"scheduler": "synchronous"})
    elif kind == "threads":
        yield Runner(kind, n, {"scheduler": "threads", "num_workers": n})
    elif kind == "processes":
        with _started_process_pool(n) as pool:
            yield Runner(kind, n, {"scheduler": "processes", "pool": pool})
    else:
        yield from _distributed_runner(params, n, spill_dir)


def _worker_ready() -> int:
    return os.getpid()


@contextlib.contextmanager
def _started_process_pool(n: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``n`` forked workers, all started before this process starts any thread.

    Forking (rather than spawning) keeps the engine's imports, and does not re-run the caller's
    script in the workers, so a script calling ``detect_outliers`` needs no ``__main__`` guard.
    Workers are started at once, while this process has no helper threads (Zarr's event loop,
    dask's thread pools) that a fork could copy in a locked state.
    """
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(max_workers=n, mp_context=context)
    try:
        futures = [pool.submit(_worker_ready) for _ in range(n)]
        for future in futures:
            future.result()
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _distributed_runner(
    params: OutlierParameters, n: int, spill_dir: str | None
) -> Iterator[Runner]:
    from distributed import Client, LocalCluster

    if params.scheduler == "local-cluster":
        memory = parse_memory_size(params.memory_limit) // n if params.memory_limit else "auto"
        with (
            dask.config.set({"temporary-directory": spill_dir} if spill_dir else {}),
            LocalCluster(
                n_workers=n,
                threads_per_worker=params.threads_per_worker,
                memory_limit=memory,
                processes=True,
                dashboard_address=":0",
                local_directory=spill_dir,
            ) as cluster,
            Client(cluster) as client,
        ):
            log.info("dask dashboard: %s", client.dashboard_link)
            yield Runner("distributed", n, {"scheduler": client}, client)
        return
    with Client(params.scheduler, timeout="10s") as client:
        log.info("connected to %s; dashboard: %s", params.scheduler, client.dashboard_link)
        yield Runner("distributed", n, {"scheduler": client}, client)
