"""Choosing and starting the scheduler that runs the engine's graphs.

``processes`` is the default because the compiled drizzle holds the GIL: a pool of worker
processes (started once per run from a fork server that has already imported the engine) runs
every stage. ``threads`` and ``synchronous`` run in this process; ``local-cluster`` starts a
``distributed.LocalCluster``; an address connects to a running scheduler; a ``Client`` passed
from Python is used as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.pool
import os
import signal
import ssl
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask
import dask.local
import dask.multiprocessing
import dask.threaded
import numpy as np

from outlier_dask.parameters import OutlierParameters, parse_memory_size

__all__ = [
    "LOCAL_SCHEDULERS",
    "Runner",
    "client_ssl_context",
    "default_workers",
    "resolve_security",
    "start_runner",
]

log = logging.getLogger(__name__)

#: Schedulers whose workers are this process or forked from it, so they share its memory.
LOCAL_SCHEDULERS = ("processes", "threads", "synchronous")


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
    params: OutlierParameters,
    client: Any = None,
    spill_dir: str | None = None,
    security: Any = None,
) -> Iterator[Runner]:
    """Start the scheduler named by ``params.scheduler`` (or use ``client``) for one run.

    ``security`` (a ``distributed.Security``) is used to connect to a scheduler address;
    without it, the ``tls_*`` parameters build one (see :func:`resolve_security`).
    """
    n = params.n_workers or default_workers()
    if client is not None:
        yield Runner("distributed", n, {"scheduler": client}, client)
        return
    kind = params.scheduler
    # The local schedulers are given as functions, not names: for a name, dask imports
    # ``distributed`` to look for a default client (0.08 s before the first task starts).
    if kind == "synchronous":
        yield Runner(kind, 1, {"scheduler": dask.local.get_sync})
    elif kind == "threads":
        with _started_thread_pool(n) as pool:
            yield Runner(kind, n, {"scheduler": dask.threaded.get, "pool": pool})
    elif kind == "processes":
        with _started_process_pool(n) as pool:
            # One task per submission: dask's default batches up to six ready tasks into one
            # worker, which left one of two workers with six of eight drizzle groups.
            options = {"scheduler": dask.multiprocessing.get, "pool": pool, "chunksize": 1}
            yield Runner(kind, n, options)
    else:
        yield from _distributed_runner(params, n, spill_dir, security)


@contextlib.contextmanager
def _started_thread_pool(n: int) -> Iterator[multiprocessing.pool.ThreadPool]:
    """A pool of ``n`` daemon threads for one run.

    Threads cannot be stopped; dask's own pool holds the process's exit until every running
    task ends, whereas after an error or interrupt daemon threads let it exit at once.
    """
    pool = multiprocessing.pool.ThreadPool(n)
    try:
        yield pool
    except BaseException:
        pool.close()  # no new task; running ones end with the process
        raise
    pool.close()
    pool.join()


def _worker_ready() -> int:
    return os.getpid()


#: Linux ``prctl`` option: the signal a process gets when its parent ends.
_PR_SET_PDEATHSIG = 1


#: glibc ``mallopt`` options (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
#: Heap kept beyond the top allocation, so a task's arrays reuse the previous task's pages.
_WORKER_TOP_PAD_BYTES = 256 * 2**20


def _keep_freed_memory() -> None:
    """Let a worker's large arrays reuse freed heap pages instead of fresh mappings.

    glibc serves every array above 32 MiB from a new ``mmap`` and returns it on ``free``, so
    each task pays page faults and zeroing for every pixel map, mosaic and product array
    (a third of a run's CPU time was system time). Workers live for one run, so they keep
    what they freed; their peak memory is unchanged.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        libc.mallopt(_M_TOP_PAD, _WORKER_TOP_PAD_BYTES)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _init_worker(parent: int) -> None:
    """Pool-worker initializer: see :func:`_die_with_parent` and :func:`_keep_freed_memory`."""
    _keep_freed_memory()
    # numpy asks for transparent huge pages for large arrays; faulting in a worker's first
    # few hundred MB that way cost 0.4 s of system time per worker (0.15 s with normal
    # pages), and the streaming kernels here gain nothing from them.
    set_hugepage = getattr(np._core.multiarray, "_set_madvise_hugepage", None)
    if set_hugepage is not None:
        set_hugepage(False)
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """Pool-worker initializer: end with the run's process, even if that is killed outright.

    A killed parent (SIGKILL, the out-of-memory killer) cannot stop its pool, whose workers
    would wait for work forever. On Linux the kernel sends them SIGKILL instead.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(1)


@contextlib.contextmanager
def _started_process_pool(n: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``n`` forked workers, all started before this process starts any thread.

    Forking (rather than spawning) keeps the engine's imports, and does not re-run the caller's
    script in the workers, so a script calling ``detect_outliers`` with this scheduler needs no
    ``__main__`` guard (``local-cluster`` starts processes the usual way and does need one).
    Workers are started at once, while this process has no helper threads (Zarr's event loop,
    dask's thread pools) that a fork could copy in a locked state.
    """
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(
        max_workers=n,
        mp_context=context,
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )
    try:
        futures = [pool.submit(_worker_ready) for _ in range(n)]
        for future in futures:
            future.result()
        yield pool
    except BaseException:
        _terminate_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


#: Seconds a terminated worker process gets to exit before it is killed.
_WORKER_EXIT_TIMEOUT_S = 5.0


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    """Stop a pool at once after an error or interrupt: drop queued tasks, end the workers.

    ``shutdown(wait=True)`` alone would wait for every running task (a drizzle can take
    minutes); terminating the workers makes Ctrl-C and SIGTERM prompt.
    """
    # ``_processes`` is the executor's map of worker processes (no public API before 3.14);
    # ``shutdown`` forgets it, so it is read first.
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        if process.is_alive():
            process.terminate()
    for process in workers:
        process.join(_WORKER_EXIT_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join(_WORKER_EXIT_TIMEOUT_S)


def resolve_security(params: OutlierParameters, security: Any = None) -> Any:
    """The ``distributed.Security`` to reach ``params.scheduler`` with, or None.

    ``security`` if given; else one built from the ``tls_*`` parameters; else, for a
    ``tls://`` address, dask's configuration (``distributed.comm.tls.*``).
    """
    if security is not None:
        return security
    tls_files = params.tls_ca_file or params.tls_cert or params.tls_key
    if not tls_files and not str(params.scheduler).startswith("tls://"):
        return None
    from distributed import Security

    if not tls_files:
        return Security()
    return Security(
        tls_ca_file=params.tls_ca_file,
        tls_client_cert=params.tls_cert,
        tls_client_key=params.tls_key,
        require_encryption=True,
    )


def client_ssl_context(security: Any) -> ssl.SSLContext | None:
    """The TLS context a client connects with under ``security`` (None: no TLS)."""
    if security is None:
        return None
    return security.get_connection_args("client").get("ssl_context")


def _distributed_runner(
    params: OutlierParameters, n: int, spill_dir: str | None, security: Any = None
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
                # The laptop mode listens on loopback only, the dashboard on a free port.
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                local_directory=spill_dir,
            ) as cluster,
            Client(cluster) as client,
        ):
            log.info("dask dashboard: %s", client.dashboard_link)
            yield Runner("distributed", n, {"scheduler": client}, client)
        return
    security = resolve_security(params, security)
    with Client(params.scheduler, timeout="10s", security=security) as client:
        log.info("connected to %s; dashboard: %s", params.scheduler, client.dashboard_link)
        yield Runner("distributed", n, {"scheduler": client}, client)
