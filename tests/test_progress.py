"""Progress displays: a bar on terminals, log records otherwise (start, every interval, end)."""

from __future__ import annotations

import io
import logging
import re
import time

import dask
import pytest

from outlier_dask import detect_outliers
from outlier_dask.progress import StageProgress, make_progress
from outlier_dask.runtime.schedulers import Runner
from outlier_dask.synthetic import write_association


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _slow(i: int) -> int:
    time.sleep(0.05)
    return i


def _slower(i: int) -> int:
    time.sleep(0.25)
    return i


def _runner(progress, kind="threads", options=None, client=None) -> Runner:
    options = options or {"scheduler": "threads", "num_workers": 2}
    return Runner(kind, 2, options, client, progress)


def test_modes():
    assert make_progress(False) is None
    assert make_progress("off") is None
    assert make_progress("auto", _Terminal()).mode == "bar"
    assert make_progress(True, io.StringIO()).mode == "log"
    assert make_progress("log", _Terminal()).mode == "log"
    with pytest.raises(ValueError, match="progress: must be"):
        make_progress("fancy")


def test_bar_counts_the_tasks_of_each_stage():
    stream = _Terminal()
    runner = _runner(make_progress("bar", stream))
    tasks = [dask.delayed(_slow)(i) for i in range(12)]
    assert runner.compute(*tasks, stage="drizzle") == tuple(range(12))
    runner.compute(dask.delayed(_slow)(1), stage="median")
    text = stream.getvalue()
    finals = [line for line in text.split("\r") if "done in" in line]
    assert len(finals) == 2
    assert re.search(r"drizzle +\[#{30}\] 100% 12/12 tasks done in \d+\.\d s", finals[0])
    assert re.search(r"median +\[#{30}\] 100% 1/1 tasks done in", finals[1])
    # Redraws happen in place on the terminal: one line break per stage.
    assert text.count("\n") == 2


def test_log_mode_writes_two_records_per_stage_and_no_bar(caplog):
    stream = io.StringIO()
    runner = _runner(make_progress("auto", stream))
    with caplog.at_level(logging.INFO, logger="outlier_dask.progress"):
        runner.compute(*[dask.delayed(_slow)(i) for i in range(5)], stage="blot+flag")
    assert stream.getvalue() == ""
    messages = [r.getMessage() for r in caplog.records if r.name == "outlier_dask.progress"]
    assert messages[0] == "blot+flag: started"
    assert re.fullmatch(r"blot\+flag: 5/5 tasks done in \d+\.\d s", messages[1])
    assert len(messages) == 2


def test_log_mode_writes_a_record_every_interval_of_a_long_stage(caplog, monkeypatch):
    import outlier_dask.progress as progress

    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.3)
    runner = _runner(make_progress("log", io.StringIO()))
    with caplog.at_level(logging.INFO, logger="outlier_dask.progress"):
        # Four tasks of 0.25 s on two threads: about 0.5 s, one interval and a bit.
        started = time.perf_counter()
        runner.compute(*[dask.delayed(_slower)(i) for i in range(4)], stage="median")
        elapsed = time.perf_counter() - started
    messages = [r.getMessage() for r in caplog.records if r.name == "outlier_dask.progress"]
    running = [m for m in messages if "running for" in m]
    assert messages[0] == "median: started"
    assert re.fullmatch(r"median: 4/4 tasks done in \d+\.\d s", messages[-1])
    assert len(running) == int(elapsed / 0.3)  # one per whole interval, none after the end
    assert all(re.fullmatch(r"median: \d/4 tasks done, running for \d+ s", m) for m in running)


def test_each_stage_ends_with_one_line_whether_or_not_progress_is_shown(tmp_path, caplog):
    asn = write_association(
        tmp_path / "data", n_exposures=2, n_detectors=1, detector_shape=(48, 48), seed=3
    )
    for shown in ("log", "off"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="outlier_dask"):
            detect_outliers(
                asn.asn_path,
                output_dir=tmp_path / shown,
                scheduler="synchronous",
                progress=shown,
            )
        ends = [
            r.getMessage()
            for r in caplog.records
            if " done in " in r.getMessage() or r.getMessage().startswith("stage ")
        ]
        stages = [m.split(":")[0].removeprefix("stage ").removesuffix("+write") for m in ends]
        assert stages == ["drizzle", "median", "blot+flag"], ends


def test_failed_stage_is_shown_and_the_error_propagates():
    def boom():
        raise RuntimeError("task failed")

    stream = _Terminal()
    runner = _runner(make_progress("bar", stream), "synchronous", {"scheduler": "synchronous"})
    with pytest.raises(RuntimeError, match="task failed"):
        runner.compute(dask.delayed(boom)(), stage="write")
    assert "write" in stream.getvalue()
    assert "failed in" in stream.getvalue()


def test_process_scheduler_reports_every_stage_of_a_run(tmp_path, caplog):
    asn = write_association(
        tmp_path / "data", n_exposures=3, n_detectors=1, detector_shape=(64, 64), seed=2
    )
    with caplog.at_level(logging.INFO, logger="outlier_dask.progress"):
        detect_outliers(asn.asn_path, output_dir=tmp_path / "out", n_workers=2, progress="log")
    messages = [r.getMessage() for r in caplog.records if r.name == "outlier_dask.progress"]
    stages = [m.split(":")[0] for m in messages if m.endswith("started")]
    # Products may be written in their own stage or inside blot+flag's tasks.
    assert stages[:3] == ["drizzle", "median", "blot+flag"]
    assert stages[3:] in ([], ["write"])
    done = {m.split(":")[0]: m for m in messages if " done in " in m}
    assert list(done) == stages
    assert "3/3 tasks" in done["drizzle"]  # one task per exposure group


def test_progress_off_installs_nothing(tmp_path, caplog):
    asn = write_association(
        tmp_path / "data", n_exposures=2, n_detectors=1, detector_shape=(48, 48), seed=3
    )
    with caplog.at_level(logging.INFO, logger="outlier_dask.progress"):
        detect_outliers(
            asn.asn_path, output_dir=tmp_path / "out", scheduler="synchronous", progress=False
        )
    assert not [r for r in caplog.records if r.name == "outlier_dask.progress"]


@pytest.mark.slow
def test_distributed_cluster_shows_dashboard_and_counts_keys():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        stream = _Terminal()
        progress = make_progress("bar", stream)
        runner = _runner(progress, "distributed", {"scheduler": client}, client)
        # Slow enough (4 x 0.25 s on 2 threads) for several polls of the scheduler.
        tasks = [dask.delayed(_slower)(i, dask_key_name=f"slow-{i}") for i in range(8)]
        assert runner.compute(*tasks, stage="drizzle") == tuple(range(8))
        runner.compute(dask.delayed(_slow)(0, dask_key_name="other"), stage="median")
        text = stream.getvalue()
        # The dashboard is named once, before the first stage.
        assert text.count("dask dashboard: ") == 1
        assert client.dashboard_link in text
        final = [line for line in text.split("\r") if "drizzle" in line and "done in" in line]
        assert final
        assert "100%" in final[-1]
        assert "8/8 tasks" in final[-1]


def test_distributed_log_mode_tells_the_dashboard(caplog):
    class FakeClient:
        dashboard_link = "http://example:8787/status"
        id = "client-1"

        def run_on_scheduler(self, function, **kwargs):
            raise OSError("no scheduler here")

    client = FakeClient()
    runner = Runner("distributed", 1, {"scheduler": "synchronous"}, client, None)
    progress = StageProgress("log", io.StringIO())
    with caplog.at_level(logging.INFO, logger="outlier_dask.progress"), progress("median", runner):
        pass
    assert "dask dashboard: http://example:8787/status" in caplog.text
    assert "median: done in" in caplog.text
