"""The local schedulers: a run on them does not pay for what it does not use."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from outlier_dask.runtime.schedulers import started_process_pool
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
