"""The local schedulers: a run on them does not pay for what it does not use; a stopped
local cluster leaves no worker process."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys

import pytest

from outlier_dask.runtime.schedulers import _close_nannies_killing_workers, started_process_pool
from outlier_dask.synthetic import write_association

_RUN_AND_LIST_MODULES = """
import sys
from outlier_dask import detect_outliers
result = detect_outliers(sys.argv[1], output_dir=sys.argv[2], scheduler=sys.argv[3])
assert result.status == "COMPLETE", result.status
unused = ("distributed", "zarr")
print(sorted(m for m in sys.modules if m.startswith(unused)))
"""


@pytest.fixture(scope="module")
def association(tmp_path_factory):
    return write_association(
        tmp_path_factory.mktemp("schedulers") / "data",
        n_exposures=3,
        n_detectors=1,
        detector_shape=(96, 96),
        seed=5,
    )


@pytest.mark.parametrize("scheduler", ["processes", "threads", "synchronous"])
def test_local_schedulers_do_not_import_what_they_do_not_use(association, tmp_path, scheduler):
    """dask imports ``distributed`` to resolve a scheduler given by name: the runner gives
    dask the scheduler's function instead. Stages in shared memory need no Zarr."""
    run = subprocess.run(
        [sys.executable, "-c", _RUN_AND_LIST_MODULES]
        + [str(association.asn_path), str(tmp_path / "out"), scheduler],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]"


def _full_collections_while_keeping(n: int) -> int:
    """In a pool worker: the full collections run while it makes ``n`` containers it keeps."""
    before = gc.get_stats()[2]["collections"]
    kept = [{} for _ in range(n)]
    after = gc.get_stats()[2]["collections"]
    del kept
    return after - before


@pytest.mark.parametrize("enabled", [True, False])
def test_pool_workers_do_not_collect_what_they_inherit(enabled):
    """Objects made before the pool forks (as a run makes the members' metadata) are settled
    by one collection in this process, not by a full collection in every worker, which would
    copy every page of the heap it inherited; a caller's switched-off collector stays off."""
    gc.collect()
    gc.disable()  # the objects below stay waiting for a full collection until the pool starts
    inherited = [[] for _ in range(400_000)]
    if enabled:
        gc.enable()
    try:
        collections = gc.get_stats()[2]["collections"]
        with started_process_pool(1) as pool:
            in_worker = pool.executor.submit(_full_collections_while_keeping, 100_000).result()
        in_this_process = gc.get_stats()[2]["collections"] - collections
        assert in_worker == 0
        assert gc.isenabled() == enabled
        assert in_this_process == (1 if enabled else 0)
    finally:
        gc.enable()
        del inherited


class _NannyRestartingItsWorker:
    """Stands in for a distributed ``Nanny`` whose worker died just before the cluster is
    stopped: as its close begins it has no process (``pid`` None), then it starts a new worker
    (the race of a SIGTERM to the whole process group), then its close takes a while."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.workers: list[subprocess.Popen] = []

    async def close(self) -> str:
        await asyncio.sleep(0.1)
        self.workers.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        self.pid = self.workers[-1].pid
        await asyncio.sleep(0.5)
        return "OK"


class _NannyWithItsWorker(_NannyRestartingItsWorker):
    """A nanny whose worker is alive (busy in a task) when the cluster is stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.workers.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        self.pid = self.workers[-1].pid

    async def close(self) -> str:
        await asyncio.sleep(0.3)
        return "OK"


def _status_within(process: subprocess.Popen, seconds: float) -> int | None:
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def test_closing_nannies_have_every_worker_killed_even_one_started_meanwhile():
    """Each worker a nanny has while the nannies close is killed (SIGKILL), also one a nanny
    starts after the close began: told to close, it would take up a task, cancel it and log
    a warning, after the command had printed its one line."""
    nannies = [_NannyWithItsWorker(), _NannyRestartingItsWorker()]
    try:
        asyncio.run(_close_nannies_killing_workers(nannies))
        statuses = [_status_within(worker, 5) for nanny in nannies for worker in nanny.workers]
        assert statuses == [-9, -9]  # None: still running
    finally:
        for nanny in nannies:
            for worker in nanny.workers:
                worker.kill()
                worker.wait()
