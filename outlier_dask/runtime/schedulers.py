"""Choosing and starting the scheduler that runs the engine's graphs.

``processes`` is the default because the compiled drizzle holds the GIL: a pool of worker
processes (forked once per run from this process, which has already imported the engine) runs
every stage. ``threads`` and ``synchronous`` run in this process; ``local-cluster`` starts a
``distributed.LocalCluster``; an address connects to a running scheduler; a ``Client`` passed
from Python is used as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import itertools
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
from outlier_dask.runtime.nanny_deaths import NannyDeaths, death_description, watching_nanny_deaths
from outlier_dask.runtime.signals import signals_held, without_ctrl_c_in_what_starts

__all__ = [
    "WORKER_RESTARTS",
    "Runner",
    "WorkerDiedError",
    "WorkerPool",
    "client_ssl_context",
    "resolve_security",
    "start_runner",
    "started_process_pool",
]

log = logging.getLogger(__name__)


class WorkerDiedError(RuntimeError):
    """A worker process ended while it ran a task (killed, e.g. for memory)."""


#: Times the ``processes`` scheduler replaces its pool within one stage after a worker died,
#: before the run ends with :class:`WorkerDiedError`.
WORKER_RESTARTS = 2


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
    #: The ``processes`` scheduler's pool, replaced when one of its workers dies
    pool: WorkerPool | None = None
    #: How the workers of a ``local-cluster`` this run started died, as their nannies saw it
    nanny_deaths: NannyDeaths | None = None

    def persist(self, *collections: Any, stage: str = "compute") -> tuple:
        """Compute dask collections and keep their values where they were computed (a
        cluster's workers; this process for local schedulers).

        Raises
        ------
        WorkerDiedError
            As :meth:`compute`.
        """
        return self._run(dask.persist, collections, stage)

    def compute(self, *collections: Any, stage: str = "compute") -> tuple:
        """Compute dask collections (delayed objects, arrays) and return their values.

        ``stage`` names the step for progress displays (drizzle, median, blot+flag, write).
        When a worker process of the ``processes`` scheduler dies (the out-of-memory killer),
        the stage runs again on a fresh pool, up to :data:`WORKER_RESTARTS` times: every task
        of the engine writes the same bytes to the same place when it runs again. A
        ``distributed`` scheduler runs the lost tasks again itself (up to its
        ``distributed.scheduler.allowed-failures``).

        Raises
        ------
        WorkerDiedError
            If workers kept dying: the pool's restarts were used up, or ``distributed`` gave
            up on a task (``KilledWorker``).
        """
        return self._run(dask.compute, collections, stage)

    def _run(self, function: Callable[..., tuple], collections: tuple, stage: str) -> tuple:
        for restarts in itertools.count():
            try:
                if self.progress is None:
                    return function(*collections, **self._options)
                with self.progress(stage, self):
                    return function(*collections, **self._options)
            except BrokenProcessPool:
                death = self.pool.death() if self.pool else "ended by a signal"
                if self.pool is None or restarts >= WORKER_RESTARTS:
                    raise WorkerDiedError(_worker_died_message(stage, death, restarts)) from None
                log.warning(
                    "a worker process died during the %s stage (%s); running the stage again "
                    "on a fresh pool (restart %d of %d)",
                    stage,
                    death,
                    restarts + 1,
                    WORKER_RESTARTS,
                )
                self._options["pool"] = self.pool.replace()
            except Exception as exc:
                if self.kind == "distributed" and _is_killed_worker(exc):
                    how = self.nanny_deaths.last(_DEATH_LOG_WAIT_S) if self.nanny_deaths else None
                    raise WorkerDiedError(_killed_worker_message(stage, exc, how)) from None
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def dashboard_link(self) -> str | None:
        """The distributed dashboard's address, when there is one."""
        return getattr(self.client, "dashboard_link", None) if self.client else None


#: What to try when workers die, in both schedulers' messages.
_WHAT_TO_TRY = "try a lower --memory-limit or fewer --n-workers"


def _worker_died_message(stage: str, death: str, restarts: int) -> str:
    again = f", also on {restarts} fresh pool(s)" if restarts else ""
    return (
        f"a worker process died during the {stage} stage ({death}){again}; {_WHAT_TO_TRY} "
        "(SIGKILL is often the out-of-memory killer's)"
    )


def _is_killed_worker(exc: Exception) -> bool:
    """Whether ``distributed`` gave up on a task whose workers kept dying."""
    from distributed import KilledWorker

    return isinstance(exc, KilledWorker)


#: Seconds to wait for a dead worker's nanny to log how it died (see ``NannyDeaths.last``).
_DEATH_LOG_WAIT_S = 2.0


def _killed_worker_message(stage: str, exc: Any, how: str | None = None) -> str:
    """The one line for distributed's ``KilledWorker``; ``how`` the last death of a worker
    of this run's own cluster (``worker 1234 killed by SIGKILL``), None for a cluster at an
    address (whose workers' logs say how)."""
    worker = getattr(exc.last_worker, "address", exc.last_worker)
    died = how or "how it ended is in the cluster's worker logs"
    return (
        f"worker processes died during the {stage} stage: distributed gave up on task "
        f"{exc.task!r} after {exc.allowed_failures + 1} workers died running it (the last "
        f"{worker}; {died}); {_WHAT_TO_TRY} (SIGKILL is often the out-of-memory killer's)"
    )


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
        with started_process_pool(n) as pool:
            # One task per submission: dask's default batches up to six ready tasks into one
            # worker, which left one of two workers with six of eight drizzle groups.
            options = {
                "scheduler": dask.multiprocessing.get,
                "pool": pool.executor,
                "chunksize": 1,
            }
            yield Runner(kind, n, options, pool=pool)
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


def _collect_before_fork() -> None:
    """One full collection in this process just before it forks workers (if the collector is on).

    A forked worker shares this process's heap until it writes to a page. Python runs a full
    collection once the objects moved to the oldest generation since the last one reach a
    quarter of those that survived it, and the objects made since this process's last one
    (asdf's extensions, the members' metadata) counted towards that in every worker: each ran
    a full collection within its first task. A collection writes to the header of every
    object it traverses, so each worker traversed the whole heap it inherited once more and
    copied every page of it. Collected here, the inherited objects are settled, and a worker
    collects them only after it has made a quarter as many long-lived objects of its own.
    This is the collection each worker would have run, run once; no setting of the collector
    changes, and a caller who switched the collector off gets none.
    """
    if gc.isenabled():
        gc.collect()


class WorkerPool:
    """The ``processes`` scheduler's pool of ``n`` forked workers, replaceable when one dies.

    Forking (rather than spawning) keeps the engine's imports, and does not re-run the caller's
    script in the workers, so a script calling ``detect_outliers`` with this scheduler needs no
    ``__main__`` guard (``local-cluster`` starts processes the usual way and does need one).
    The first workers are started at once, while this process has no helper threads (Zarr's
    event loop, dask's thread pools) that a fork could copy in a locked state; a replacement
    pool is forked later, from a process whose libraries reset their state in a forked child
    (Zarr's loop, logging's locks). A worker that dies (the out-of-memory killer) breaks the
    pool (``BrokenProcessPool``) rather than hanging it.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.executor: ProcessPoolExecutor | None = None
        self.workers: list[multiprocessing.process.BaseProcess] = []

    def start(self) -> ProcessPoolExecutor:
        """Fork the workers; return the executor dask runs tasks on.

        They are forked with SIGINT blocked, which they keep: a worker ignores Ctrl-C
        (:func:`_init_worker`), and before its initializer runs it would raise the run's
        ``KeyboardInterrupt`` with a traceback of its own.
        """
        before = set(multiprocessing.active_children())
        _collect_before_fork()
        self.executor = ProcessPoolExecutor(
            max_workers=self.n,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_init_worker,
            initargs=(os.getpid(),),
        )
        # The workers are the children this process gained while the pool started.
        try:
            # The executor forks all of its workers on the first submission.
            with without_ctrl_c_in_what_starts():
                ready = [self.executor.submit(_worker_ready) for _ in range(self.n)]
            for future in ready:
                future.result()
        finally:
            self.workers = [p for p in multiprocessing.active_children() if p not in before]
        return self.executor

    def death(self) -> str:
        """Which worker ended and how (``worker 1234 killed by SIGKILL``), after one died.

        The broken pool terminates (SIGTERM) the workers still alive; those are not named.
        """
        for process in self.workers:
            process.join(_WORKER_EXIT_TIMEOUT_S)
        ended = [p for p in self.workers if p.exitcode is not None]
        died = [p for p in ended if p.exitcode != -signal.SIGTERM] or ended
        if not died:
            return "ended abruptly"
        return ", ".join(f"worker {p.pid} {death_description(p.exitcode)}" for p in died)

    def replace(self) -> ProcessPoolExecutor:
        """Stop every worker of the broken pool and fork a fresh one."""
        self.stop_now()
        return self.start()

    def stop_now(self) -> None:
        """Drop queued tasks and terminate the workers, without waiting for running tasks (a
        drizzle can take minutes: Ctrl-C and SIGTERM must not wait for it)."""
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        _terminate(self.workers)

    def close(self) -> None:
        """Let the workers finish and end (after a successful run)."""
        if self.executor is not None:
            self.executor.shutdown(wait=True)


@contextlib.contextmanager
def started_process_pool(n: int) -> Iterator[WorkerPool]:
    """A :class:`WorkerPool` for one run; its workers are terminated at once after an error or
    interrupt."""
    pool = WorkerPool(n)
    try:
        pool.start()
        yield pool
        pool.close()  # inside: an interrupt while the workers end stops them at once
    except BaseException:
        pool.stop_now()
        raise


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


async def _close_nannies_killing_workers(nannies: list[Any]) -> None:
    """Close ``nannies`` (distributed ``Nanny`` objects), their worker processes killed at once.

    A worker running a task (the compiled drizzle holds the GIL) does not answer its nanny's
    request to close, and the nanny waits 4 s before it kills the process. Each nanny is
    closing (so it will not start a new worker) before its worker is killed here. A nanny
    whose worker died of the same signal may already be starting a new one (a SIGTERM to the
    whole process group kills the workers before this process stops the cluster): that worker
    is killed as soon as it has a process, until every nanny has closed. Told to close instead,
    it would take up a task and cancel it, and log a warning for it.
    """
    closing = [asyncio.ensure_future(nanny.close()) for nanny in nannies]
    await asyncio.sleep(0)  # every close has begun: the nannies are in their closing state
    while True:
        for nanny in nannies:
            with contextlib.suppress(TypeError, ProcessLookupError):  # pid None: no process
                os.kill(nanny.pid, signal.SIGKILL)
        done, _ = await asyncio.wait(closing, timeout=_NEW_WORKER_CHECK_S)
        if len(done) == len(closing):
            break
    await asyncio.gather(*closing, return_exceptions=True)


#: Seconds between looks for a worker a closing nanny started (see above).
_NEW_WORKER_CHECK_S = 0.02


def _stop_cluster_now(cluster: Any, client: Any) -> None:
    """Stop this run's ``LocalCluster`` at once after an error or interrupt: its tasks
    cancelled, its worker processes killed (waiting for a running task could take minutes)."""
    # Workers first: a worker told that its tasks were cancelled logs a warning for each.
    with contextlib.suppress(Exception):
        cluster.sync(_close_nannies_killing_workers, list(cluster.workers.values()))
    with contextlib.suppress(Exception):
        client.close()


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
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                dask.config.set({"temporary-directory": spill_dir} if spill_dir else {})
            )
            # A signal while the cluster starts waits until it is on the stack, which then
            # closes it: cut short inside its start, the cluster was left to distributed's
            # exit hook, which printed a traceback. Its worker processes, started meanwhile by
            # its threads, never see a Ctrl-C.
            with signals_held(), without_ctrl_c_in_what_starts(spawning=True):
                cluster = stack.enter_context(
                    LocalCluster(
                        n_workers=n,
                        threads_per_worker=params.threads_per_worker,
                        memory_limit=memory,
                        processes=True,
                        # The laptop mode listens on loopback only, the dashboard on a free
                        # port.
                        host="127.0.0.1",
                        dashboard_address="127.0.0.1:0",
                        local_directory=spill_dir,
                    )
                )
            client = stack.enter_context(Client(cluster))
            deaths = stack.enter_context(watching_nanny_deaths())
            log.info("dask dashboard: %s", client.dashboard_link)
            try:
                yield Runner("distributed", n, {"scheduler": client}, client, nanny_deaths=deaths)
            except BaseException:
                _stop_cluster_now(cluster, client)
                raise
            # The run's work is done: a signal now waits for the close (a close cut short
            # left the nannies waiting out their timeouts, ~10 s, or the next close hung).
            with signals_held():
                client.close()
                cluster.close()
        return
    security = resolve_security(params, security)
    with Client(params.scheduler, timeout="10s", security=security) as client:
        log.info("connected to %s; dashboard: %s", params.scheduler, client.dashboard_link)
        yield Runner("distributed", n, {"scheduler": client}, client)
