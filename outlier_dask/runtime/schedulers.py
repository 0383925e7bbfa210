"""Choosing and starting the scheduler that runs the engine's graphs.

``processes`` is the default because the compiled drizzle holds the GIL: a pool of worker
processes (forked once per run from this process, which has already imported the engine) runs
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
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import dask
import dask.local
import dask.multiprocessing
import dask.threaded

from outlier_dask.engine.budget import default_workers
from outlier_dask.parameters import OutlierParameters, parse_memory_size

__all__ = [
    "Runner",
    "WorkerDiedError",
    "client_ssl_context",
    "resolve_security",
    "start_runner",
]

log = logging.getLogger(__name__)


class WorkerDiedError(RuntimeError):
    """A worker process ended while it ran a task (killed, e.g. for memory)."""


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

    def persist(self, *collections: Any, stage: str = "compute") -> tuple:
        """Compute dask collections and keep their values where they were computed (a
        cluster's workers; this process for local schedulers)."""
        if self.progress is None:
            return dask.persist(*collections, **self._options)
        with self.progress(stage, self):
            return dask.persist(*collections, **self._options)

    def compute(self, *collections: Any, stage: str = "compute") -> tuple:
        """Compute dask collections (delayed objects, arrays) and return their values.

        ``stage`` names the step for progress displays (drizzle, median, blot+flag, write).

        Raises
        ------
        WorkerDiedError
            If a worker process of the ``processes`` scheduler died during the stage.
        """
        try:
            if self.progress is None:
                return dask.compute(*collections, **self._options)
            with self.progress(stage, self):
                return dask.compute(*collections, **self._options)
        except BrokenProcessPool:
            raise WorkerDiedError(
                f"a worker process died during the {stage} stage (ended by a signal, often the "
                "out-of-memory killer); try a lower --memory-limit or fewer --n-workers"
            ) from None

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
    # ``distributed`` to look for a default client before the first task starts.
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


#: Linux ``prctl`` option: the signal a process gets when its parent ends.
_PR_SET_PDEATHSIG = 1


def _init_worker(parent: int) -> None:
    """Pool-worker initializer: signals as a worker needs them, and :func:`_die_with_parent`.

    A worker inherits the run's signal handlers (``runtime/signals.py``), which Python runs
    only between bytecodes, not while a compiled kernel runs. The pool is stopped by the run's
    process, so a worker ignores Ctrl-C (sent to the whole foreground process group) and ends
    at once on SIGTERM, as :func:`_terminate` expects.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """End this worker with the run's process, even if that is killed outright.

    A killed parent (SIGKILL, the out-of-memory killer) cannot stop its pool, whose workers
    would wait for work forever. On Linux the kernel sends them SIGKILL instead.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(1)


def _worker_ready() -> int:
    return os.getpid()


@contextlib.contextmanager
def _started_process_pool(n: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``n`` forked workers, all started before this process starts any thread.

    Forking (rather than spawning) keeps the engine's imports, and does not re-run the caller's
    script in the workers, so a script calling ``detect_outliers`` with this scheduler needs no
    ``__main__`` guard (``local-cluster`` starts processes the usual way and does need one).
    Workers are started at once, while this process has no helper threads (Zarr's event loop,
    dask's thread pools) that a fork could copy in a locked state. A worker that dies (the
    out-of-memory killer) ends the run with ``BrokenProcessPool`` rather than a hang.

    After an error or interrupt the workers are terminated at once: waiting for the running
    tasks (a drizzle can take minutes) would make Ctrl-C and SIGTERM slow. They are the
    children this process gained while the pool started (:func:`multiprocessing.active_children`).
    """
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(
        max_workers=n,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )
    try:
        for future in [pool.submit(_worker_ready) for _ in range(n)]:
            future.result()
        workers = [p for p in multiprocessing.active_children() if p not in before]
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        _terminate(workers if "workers" in locals() else [])
        raise
    pool.shutdown(wait=True)


#: Seconds a terminated worker process gets to exit before it is killed.
_WORKER_EXIT_TIMEOUT_S = 5.0


def _terminate(workers: list[multiprocessing.process.BaseProcess]) -> None:
    """Stop worker processes now: SIGTERM, then SIGKILL for any still alive after a while."""
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
