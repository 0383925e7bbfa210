"""A worker that dies mid-run (SIGKILL, as the out-of-memory killer sends) does not lose the run:
its tasks run again on a fresh worker and the flags equal a clean run's; when workers keep dying
the run ends with one line naming the signal and what to try."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from process_hooks import python_path_with_hook

from outlier_dask import detect_outliers
from outlier_dask.runtime.schedulers import WORKER_RESTARTS, WorkerDiedError
from outlier_dask.synthetic import write_association


@pytest.fixture(scope="module")
def association(tmp_path_factory):
    return write_association(
        tmp_path_factory.mktemp("worker-loss") / "data",
        n_exposures=3,
        n_detectors=1,
        detector_shape=(96, 96),
        seed=5,
    )


@pytest.fixture(scope="module")
def reference_dq(association, tmp_path_factory):
    """DQ of every product of a clean run."""
    out = tmp_path_factory.mktemp("reference")
    result = detect_outliers(association.asn_path, output_dir=out, scheduler="synchronous")
    dq = {path.name: fits.getdata(path, "DQ") for path in result.outputs}
    assert any(np.any(d & 16) for d in dq.values()), "the clean run flags nothing"
    return dq


def _first_call(marker) -> bool:
    """True in exactly one process, whichever calls first (the file is created atomically)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _killed_once(original, marker, partial_of=None):
    """``original``, except that its first call SIGKILLs the worker process running it (after
    leaving a half-written temporary product beside ``partial_of(args)`` when given)."""

    def task(*args, **kwargs):
        if _first_call(marker):
            if partial_of is not None:
                final = partial_of(*args, **kwargs)
                (final.parent / f".{final.name}.0badf00d.partial").write_bytes(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    return task


def _killed_always(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def _assert_flags_equal(outputs, reference_dq):
    assert sorted(p.name for p in outputs) == sorted(reference_dq)
    for path in outputs:
        np.testing.assert_array_equal(fits.getdata(path, "DQ"), reference_dq[path.name])


@pytest.mark.parametrize("stage", ["drizzle", "write"])
def test_a_worker_killed_mid_stage_is_replaced_and_the_flags_equal_a_clean_run(
    association, reference_dq, tmp_path, monkeypatch, caplog, stage
):
    import outlier_dask.api as api
    import outlier_dask.engine.tasks as tasks

    marker = tmp_path / "killed"
    if stage == "drizzle":
        patched = _killed_once(tasks.build_group_mosaic, marker)
        monkeypatch.setattr(tasks, "build_group_mosaic", patched)
    else:  # killed mid-write: its temporary file stays behind, the product is not written
        patched = _killed_once(
            api.write_flagged_fits, marker, partial_of=lambda source, mask, final, **_: final
        )
        monkeypatch.setattr(api, "write_flagged_fits", patched)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="outlier_dask"):
        result = detect_outliers(
            association.asn_path,
            output_dir=out,
            work_dir=tmp_path / "work",
            scheduler="processes",
            n_workers=2,
        )
    assert marker.exists(), "no worker was killed: the test did not exercise the failure"
    stage_name = "blot+flag" if stage == "write" else "drizzle"
    died = [r.getMessage() for r in caplog.records if "worker process died" in r.getMessage()]
    assert len(died) == 1, died
    assert died[0].startswith(f"a worker process died during the {stage_name} stage (worker ")
    assert "killed by SIGKILL); running the stage again on a fresh pool (restart 1 of" in died[0]
    _assert_flags_equal(result.outputs, reference_dq)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert list((tmp_path / "work").iterdir()) == []


def test_workers_that_keep_dying_end_the_run_after_the_restarts(association, tmp_path, monkeypatch):
    import outlier_dask.engine.tasks as tasks

    monkeypatch.setattr(tasks, "build_group_mosaic", _killed_always)
    out, work = tmp_path / "out", tmp_path / "work"
    with pytest.raises(WorkerDiedError) as raised:
        detect_outliers(
            association.asn_path,
            output_dir=out,
            work_dir=work,
            scheduler="processes",
            n_workers=2,
        )
    message = str(raised.value)
    assert message.startswith("a worker process died during the drizzle stage (worker ")
    assert message.endswith(
        f"killed by SIGKILL), also on {WORKER_RESTARTS} fresh pool(s); "
        "try a lower --memory-limit or fewer --n-workers (SIGKILL is often the "
        "out-of-memory killer's)"
    )
    assert not out.exists() or list(out.iterdir()) == []
    assert list(work.iterdir()) == []


# --------------------------------------------------------------------------- LocalCluster

distributed = pytest.importorskip("distributed")


@pytest.fixture
def cluster():
    """A two-worker LocalCluster's client."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _kill_a_worker_running(client, prefix: str, held: list) -> threading.Thread:
    """Start a thread that SIGKILLs the first worker seen running a task whose key starts
    with ``prefix``, after noting in ``held`` the keys that worker kept in memory."""
    pids = client.run(os.getpid)

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for address, keys in client.processing().items():
                if any(str(key).startswith(prefix) for key in keys):
                    held.extend(client.has_what().get(address, ()))
                    os.kill(pids[address], signal.SIGKILL)
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=watch, daemon=True)
    killer.start()
    return killer


@pytest.mark.slow
def test_a_killed_cluster_worker_s_results_are_computed_again(
    association, reference_dq, tmp_path, cluster
):
    """With ``in_memory`` the group results and the median stay on the workers (the
    ``workers`` handover): those of the killed worker are computed again from their graph."""
    held: list = []
    killer = _kill_a_worker_running(cluster, "flag_input", held)
    result = detect_outliers(association.asn_path, output_dir=tmp_path / "out", client=cluster)
    killer.join()
    assert held, "no worker holding results was killed: the test did not exercise the loss"
    _assert_flags_equal(result.outputs, reference_dq)


def test_a_cluster_that_gives_up_on_a_task_ends_the_run_with_one_line():
    """distributed's ``KilledWorker`` (a task's workers died more than ``allowed-failures``
    times) becomes the one-line error, naming the stage and what to try."""
    from outlier_dask.runtime.schedulers import Runner

    def gave_up(graph, keys, **kwargs):
        worker = SimpleNamespace(address="tcp://127.0.0.1:40000")  # a WorkerState
        raise distributed.KilledWorker("flag_input-0", worker, 3)

    runner = Runner("distributed", 2, {"scheduler": gave_up})
    import dask

    with pytest.raises(WorkerDiedError) as raised:
        runner.compute(dask.delayed(sum)([1, 2]), stage="blot+flag")
    assert str(raised.value) == (
        "worker processes died during the blot+flag stage: distributed gave up on task "
        "'flag_input-0' after 4 workers died running it (the last tcp://127.0.0.1:40000; how "
        "it ended is in the cluster's worker logs); try a lower --memory-limit or fewer "
        "--n-workers (SIGKILL is often the out-of-memory killer's)"
    )


#: Installed as ``sitecustomize`` of a LocalCluster's worker processes: with
#: ``OD_TEST_KILL_DRIZZLE`` set, every group task SIGKILLs the worker running it.
KILLING_DRIZZLE_HOOK = """
import os

if os.environ.get("OD_TEST_KILL_DRIZZLE"):
    import importlib
    import signal

    importlib.import_module("outlier_dask.api")
    _tasks = importlib.import_module("outlier_dask.engine.tasks")

    def _killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    _tasks.build_group_mosaic = _killed
"""


@pytest.mark.slow
def test_a_local_cluster_whose_workers_keep_dying_names_the_signal(
    association, tmp_path, monkeypatch
):
    """The run's own LocalCluster: after ``allowed-failures`` + 1 workers died running a task,
    the one line says which worker died last and of which signal (its nanny's record)."""
    import dask

    path = python_path_with_hook(tmp_path / "hooks", KILLING_DRIZZLE_HOOK)
    monkeypatch.setenv("PYTHONPATH", path)  # the cluster's spawned workers inherit it
    monkeypatch.setenv("OD_TEST_KILL_DRIZZLE", "1")
    nanny_logger = logging.getLogger("distributed.nanny")
    level = nanny_logger.level
    out = tmp_path / "out"
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        pytest.raises(WorkerDiedError) as raised,
    ):
        detect_outliers(
            association.asn_path,
            output_dir=out,
            work_dir=tmp_path / "work",
            scheduler="local-cluster",
            n_workers=2,
        )
    message = str(raised.value)
    assert message.startswith(
        "worker processes died during the drizzle stage: distributed gave up on task "
    )
    died = (
        r"after 2 workers died running it \(the last tcp://127\.0\.0\.1:\d+; "
        r"worker \d+ killed by SIGKILL\); try a lower --memory-limit"
    )
    assert re.search(died, message), message
    assert not out.exists() or list(out.iterdir()) == []
    assert list((tmp_path / "work").iterdir()) == []
    # The nanny's logger is as it was: its level, and no filter of the run left on it.
    assert nanny_logger.level == level
    assert nanny_logger.filters == []


def test_nanny_deaths_are_noted_without_showing_records_the_logger_hid(caplog):
    """The watcher notes each death the nannies log at INFO; records below the level the logger
    had are not passed on, those at or above it are, and the logger is restored after."""
    from outlier_dask.runtime.nanny_deaths import watching_nanny_deaths

    logger = logging.getLogger("distributed.nanny")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with caplog.at_level(logging.DEBUG), watching_nanny_deaths() as deaths:
            assert deaths.last() is None
            logger.info("Worker process %d was killed by signal %d", 4321, 9)
            logger.info("Start Nanny at: 'tcp://127.0.0.1:1'")
            logger.info("Worker process 4322 exited with status 3")
            logger.warning("Restarting worker")
            assert deaths.deaths == [
                "worker 4321 killed by SIGKILL",
                "worker 4322 exited with status 3",
            ]
            assert deaths.last() == "worker 4322 exited with status 3"
        assert [r.getMessage() for r in caplog.records if r.name == logger.name] == [
            "Restarting worker"
        ]
        assert logger.level == logging.WARNING
        assert logger.filters == []
    finally:
        logger.setLevel(previous)
