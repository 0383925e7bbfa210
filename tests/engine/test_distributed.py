"""Clusters: a real LocalCluster on loopback, a worker killed mid-run, a shared fsspec store."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from stdatamodels.jwst import datamodels

from outlier_dask import detect_outliers
from outlier_dask.engine import handover
from outlier_dask.kernels.dq import OUTLIER
from outlier_dask.synthetic import write_association

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def association(tmp_path_factory):
    return write_association(
        tmp_path_factory.mktemp("cluster") / "data",
        n_exposures=3,
        n_detectors=2,
        detector_shape=(128, 128),
        seed=21,
    )


@pytest.fixture(scope="module")
def reference_flags(association, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    result = detect_outliers(association.asn_path, output_dir=out, scheduler="synchronous")
    return _outliers(result.outputs)


def _outliers(paths):
    flags = {}
    for path in paths:
        with datamodels.open(path) as model:
            flags[path.name] = (model.dq & OUTLIER) != 0
    return flags


def _assert_same(flags, reference):
    assert sorted(flags) == sorted(reference)
    for name, mask in reference.items():
        np.testing.assert_array_equal(flags[name], mask)
    assert sum(int(m.sum()) for m in reference.values()) > 0


@pytest.fixture
def cluster():
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit="2GiB",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield cluster, client


def test_local_cluster_through_its_address(association, reference_flags, cluster, tmp_path):
    local_cluster, _ = cluster
    result = detect_outliers(
        association.asn_path,
        output_dir=tmp_path,
        scheduler=local_cluster.scheduler_address,
        in_memory=False,
        work_dir=str(tmp_path / "work"),
    )
    _assert_same(_outliers(result.outputs), reference_flags)
    assert not list((tmp_path / "work").iterdir())


def test_relative_folders_mean_the_callers_folders_on_a_cluster_at_an_address(
    association, reference_flags, cluster, tmp_path, monkeypatch
):
    """The workers started in another folder than the caller's: a relative ``output_dir`` and
    ``work_dir`` (out of core: the store is there) are the caller's, not each worker's."""
    local_cluster, _ = cluster
    caller = tmp_path / "caller"
    caller.mkdir()
    monkeypatch.chdir(caller)
    result = detect_outliers(
        association.asn_path,
        output_dir="out",
        scheduler=local_cluster.scheduler_address,
        in_memory=False,
        work_dir="work",
        report=False,
    )
    assert [p.parent for p in result.outputs] == [caller / "out"] * len(result.outputs)
    _assert_same(_outliers(result.outputs), reference_flags)
    assert sorted(p.name for p in (caller / "out").iterdir()) == sorted(
        p.name for p in result.outputs
    )
    assert not list((caller / "work").iterdir())


@pytest.mark.parametrize("whole_median", [True, False], ids=["median-whole", "median-cut-outs"])
def test_client_passed_from_python(
    association, reference_flags, cluster, tmp_path, monkeypatch, whole_median
):
    """In worker memory, the median whole on each worker (the compiled blot) or in blocks
    whose cut-outs each blot task gets (a grid above ``WHOLE_MEDIAN_BYTES``): the same flags."""
    if not whole_median:
        monkeypatch.setattr(handover, "WHOLE_MEDIAN_BYTES", 0)
    _, client = cluster
    result = detect_outliers(association.asn_path, output_dir=tmp_path, client=client)
    _assert_same(_outliers(result.outputs), reference_flags)


def test_a_killed_worker_does_not_change_the_result(
    association, reference_flags, cluster, tmp_path
):
    local_cluster, client = cluster
    pids = list(client.run(os.getpid).values())
    killed = threading.Event()

    def kill_one_worker_once_tasks_run():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed.is_set():
            processing = client.processing()
            if any(processing.values()):
                os.kill(pids[0], signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_worker_once_tasks_run, daemon=True)
    killer.start()
    result = detect_outliers(
        association.asn_path,
        output_dir=tmp_path,
        client=client,
        in_memory=False,
        work_dir=str(tmp_path / "work"),
    )
    killer.join()
    assert killed.is_set(), "no worker was killed: the test did not exercise the failure"
    _assert_same(_outliers(result.outputs), reference_flags)


def test_shared_fsspec_store_stands_in_for_object_storage(association, reference_flags, tmp_path):
    """``memory://`` is shared by threads of one process, as ``s3://`` is by cluster workers."""
    import fsspec

    result = detect_outliers(
        association.asn_path,
        output_dir=tmp_path,
        scheduler="threads",
        in_memory=False,
        work_dir="memory://outlier-dask-test",
    )
    _assert_same(_outliers(result.outputs), reference_flags)
    fs = fsspec.filesystem("memory")
    assert not fs.exists("/outlier-dask-test") or not fs.ls("/outlier-dask-test")


def test_file_url_work_dir(association, reference_flags, tmp_path):
    work = tmp_path / "shared"
    result = detect_outliers(
        association.asn_path,
        output_dir=tmp_path / "out",
        scheduler="processes",
        n_workers=2,
        in_memory=False,
        work_dir=f"file://{work}",
    )
    _assert_same(_outliers(result.outputs), reference_flags)
    assert not list(work.iterdir())


def test_local_cluster_scheduler_with_a_memory_limit(association, reference_flags, tmp_path):
    result = detect_outliers(
        association.asn_path,
        output_dir=tmp_path,
        scheduler="local-cluster",
        n_workers=2,
        memory_limit="3GiB",
        work_dir=str(tmp_path / "work"),
    )
    _assert_same(_outliers(result.outputs), reference_flags)
    assert result.parameters.n_workers == 2
    assert not list((tmp_path / "work").iterdir()), "spill folder and scratch are removed"
