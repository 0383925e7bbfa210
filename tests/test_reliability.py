"""Faults lose nothing: inputs stay byte-identical, failed or interrupted runs leave no partial
product and no scratch, and a re-run gives the result of an uninterrupted run."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from process_hooks import python_path_with_hook

from outlier_dask import detect_outliers
from outlier_dask.engine.stores import SCRATCH_PREFIX
from outlier_dask.io.validation import DiskFullError, OutputError
from outlier_dask.runtime.signals import (
    interrupt_received,
    interrupted_by_signals,
    interrupts_not_lost,
    stop_if_interrupted,
)
from outlier_dask.synthetic import write_association

#: Longest time a run may take to stop after SIGINT or SIGTERM.
PROMPT_EXIT_S = 10.0


@pytest.fixture(scope="module")
def association(tmp_path_factory):
    return write_association(
        tmp_path_factory.mktemp("reliability") / "data",
        n_exposures=3,
        n_detectors=1,
        detector_shape=(96, 96),
        seed=2,
    )


@pytest.fixture(scope="module")
def reference_dq(association, tmp_path_factory):
    """DQ of every product of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    result = detect_outliers(association.asn_path, output_dir=out, scheduler="synchronous")
    return {path.name: fits.getdata(path, "DQ") for path in result.outputs}


def _checksums(paths):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _pixel_checksums(paths):
    """Checksums of the image extensions' data (the headers record when a product was made)."""
    sums = {}
    for path in paths:
        digest = hashlib.sha256()
        with fits.open(path) as hdul:
            for hdu in hdul:
                if isinstance(hdu, fits.ImageHDU):
                    digest.update(hdu.data.tobytes())
        sums[path.name] = digest.hexdigest()
    return sums


def _leftovers(out_dir: Path, work_dir: Path) -> list[str]:
    """Products, temporary files and scratch folders a failed run must not leave."""
    left = [p.name for p in out_dir.iterdir()] if out_dir.exists() else []
    if work_dir.exists():
        left += [p.name for p in work_dir.iterdir() if p.name.startswith(SCRATCH_PREFIX)]
    return left


def _assert_same_as_reference(association, out_dir, reference_dq):
    result = detect_outliers(
        association.asn_path, output_dir=out_dir, overwrite=True, scheduler="synchronous"
    )
    for path in result.outputs:
        np.testing.assert_array_equal(fits.getdata(path, "DQ"), reference_dq[path.name])


# --------------------------------------------------------------------------- failures


def _fail_on_third_input(original):
    def task(block, info, *args, **kwargs):
        if block.member == 2:
            raise RuntimeError("simulated failure on the third input")
        return original(block, info, *args, **kwargs)

    return task


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_failure_mid_run_leaves_nothing(association, tmp_path, monkeypatch, in_memory):
    import outlier_dask.engine.tasks as tasks

    monkeypatch.setattr(
        tasks, "blot_and_flag_block", _fail_on_third_input(tasks.blot_and_flag_block)
    )
    before = _checksums(association.cal_paths)
    out, work = tmp_path / "out", tmp_path / "work"
    with pytest.raises(RuntimeError, match="simulated failure on the third input"):
        detect_outliers(
            association.asn_path,
            output_dir=out,
            work_dir=work,
            in_memory=in_memory,
            scheduler="synchronous",
            save_intermediate_results=True,
        )
    assert _checksums(association.cal_paths) == before
    # The first two inputs' products were written (inside the same stage) and then removed.
    assert _leftovers(out, work) == []


def test_a_failure_while_writing_removes_the_run_s_products(association, tmp_path, monkeypatch):
    import outlier_dask.io.flagged_fits as flagged_fits

    calls = []
    original = flagged_fits.write_flagged_fits

    def fail_third(source, mask, final, **keywords):
        calls.append(final)
        if len(calls) == 3:
            # Die mid-write: a temporary file is on disk, as when a worker is killed.
            (final.parent / f".{final.name}.deadbeef.partial").write_bytes(b"half a file")
            raise OSError(errno.EIO, "simulated I/O error")
        return original(source, mask, final, **keywords)

    monkeypatch.setattr("outlier_dask.api.write_flagged_fits", fail_third)
    out, work = tmp_path / "out", tmp_path / "work"
    with pytest.raises(OSError, match="simulated I/O error"):
        detect_outliers(
            association.asn_path, output_dir=out, work_dir=work, scheduler="synchronous"
        )
    assert len(calls) == 3
    assert _leftovers(out, work) == []


def test_existing_products_survive_a_failed_overwrite(
    association, tmp_path, monkeypatch, reference_dq
):
    out = tmp_path / "out"
    first = detect_outliers(association.asn_path, output_dir=out, scheduler="synchronous")
    before = _pixel_checksums(first.outputs)
    import outlier_dask.engine.tasks as tasks

    monkeypatch.setattr(
        tasks, "blot_and_flag_block", _fail_on_third_input(tasks.blot_and_flag_block)
    )
    with pytest.raises(RuntimeError):
        detect_outliers(
            association.asn_path, output_dir=out, overwrite=True, scheduler="synchronous"
        )
    # Products replaced before the failure are complete products of the new run (here equal
    # to the old ones); none was removed, none is partial.
    assert _pixel_checksums(first.outputs) == before
    assert sorted(out.glob("*_crf.fits")) == sorted(first.outputs)
    assert not list(out.glob(".*.partial"))


def test_disk_full_while_writing_scratch(association, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("outlier_dask.engine.handover.StorePlanes.write", full)
    out, work = tmp_path / "out", tmp_path / "work"
    before = _checksums(association.cal_paths)
    with pytest.raises(DiskFullError, match=r"disk full \(output_dir .* free, work_dir .* free\)"):
        detect_outliers(
            association.asn_path,
            output_dir=out,
            work_dir=work,
            in_memory=False,
            scheduler="synchronous",
        )
    assert _leftovers(out, work) == []
    assert _checksums(association.cal_paths) == before


@pytest.fixture
def small_disk(tmp_path):
    """A 64 kB tmpfs, if this machine lets the tests mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_disk_is_refused_then_reported(association, tmp_path, small_disk, monkeypatch):
    out = tmp_path / "out"
    # The scratch estimate (~340 kB) does not fit: refused before any graph runs.
    with pytest.raises(OutputError, match=f"not enough free disk space in {small_disk}"):
        detect_outliers(
            association.asn_path,
            output_dir=out,
            work_dir=small_disk,
            in_memory=False,
            scheduler="synchronous",
        )
    # Were the estimate wrong, the disk fills during the run: a clear error, nothing left.
    monkeypatch.setattr("outlier_dask.api.check_free_space", lambda needs: None)
    with pytest.raises(DiskFullError, match="disk full"):
        detect_outliers(
            association.asn_path,
            output_dir=out,
            work_dir=small_disk,
            in_memory=False,
            scheduler="synchronous",
        )
    assert _leftovers(out, small_disk) == []


# --------------------------------------------------------------------------- interrupts

#: Installed as ``sitecustomize`` in the interrupted runs: makes one stage's tasks announce
#: themselves on stderr and then sleep, so a signal can be sent while the stage runs.
SLOW_STAGE_HOOK = """
import os

_stage = os.environ.get("OD_TEST_SLOW_STAGE")
if _stage:
    import functools
    import importlib
    import sys
    import time

    _module_name, _name = {
        "drizzle": ("outlier_dask.engine.tasks", "build_group_mosaic"),
        "median": ("outlier_dask.kernels.median", "nanmedian_stack"),
        "blot": ("outlier_dask.engine.tasks", "blot_and_flag_block"),
        "write": ("outlier_dask.io.flagged_fits", "write_flagged_fits"),
    }[_stage]
    importlib.import_module("outlier_dask.api")
    _original = getattr(importlib.import_module(_module_name), _name)

    @functools.wraps(_original)
    def _slow(*args, **kwargs):
        print(f"OD-TEST-HOOK {_stage} pid={os.getpid()}", file=sys.stderr, flush=True)
        time.sleep(300)
        return _original(*args, **kwargs)

    # Every module that imported the function by name gets the slow one.
    for _module in list(sys.modules.values()):
        if getattr(_module, "__name__", "").startswith("outlier_dask"):
            if getattr(_module, _name, None) is _original:
                setattr(_module, _name, _slow)
"""


def _process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state == "Z"  # a zombie has ended; only its exit status is left to collect


def _interrupt_run(association, tmp_path, stage, signum, extra):
    """Start ``outlier-dask run``, wait for ``stage`` to start, send ``signum``.

    Returns the exit status, seconds from the signal to the exit, stderr, and the pids of the
    processes that ran the stage.
    """
    path = python_path_with_hook(tmp_path / "hooks", SLOW_STAGE_HOOK)
    env = dict(os.environ, PYTHONPATH=path, OD_TEST_SLOW_STAGE=stage)
    command = [
        sys.executable,
        "-m",
        "outlier_dask.cli",
        "run",
        str(association.asn_path),
        "--output-dir",
        str(tmp_path / "out"),
        "--work-dir",
        str(tmp_path / "work"),
        "--n-workers",
        "2",
        *extra,
    ]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job may start with Ctrl-C ignored; the test needs the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if "OD-TEST-HOOK" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(120), "the stage never started:\n" + "".join(lines)
        time.sleep(0.3)  # let the other workers pick up their tasks
        sent = time.perf_counter()
        process.send_signal(signum)
        status = process.wait(60)
        elapsed = time.perf_counter() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(5)
    text = "".join(lines)
    # Workers may write their markers at the same moment, interleaved on one line.
    pids = [int(pid) for pid in re.findall(r"pid=(\d+)", text)]
    return status, elapsed, text, pids


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "signum", "extra"),
    [
        ("drizzle", signal.SIGINT, ["--in-memory=False"]),
        ("median", signal.SIGTERM, ["--in-memory=False"]),
        ("blot", signal.SIGTERM, []),
        ("write", signal.SIGINT, ["--in-memory=False"]),
        ("drizzle", signal.SIGTERM, ["--scheduler", "threads", "--in-memory=False"]),
        ("median", signal.SIGINT, ["--scheduler", "local-cluster", "--in-memory=False"]),
    ],
    ids=["drizzle-int", "median-term", "blot-term", "write-int", "threads", "local-cluster"],
)
def test_interrupt_exits_promptly_and_cleanly(
    association, tmp_path, reference_dq, stage, signum, extra
):
    before = _checksums(association.cal_paths)
    status, elapsed, stderr, pids = _interrupt_run(association, tmp_path, stage, signum, extra)
    assert status == 128 + signum, stderr
    assert elapsed < PROMPT_EXIT_S, stderr
    assert "Traceback" not in stderr.split("received: stopping")[-1]
    assert "interrupted" in stderr
    out, work = tmp_path / "out", tmp_path / "work"
    assert _leftovers(out, work) == [], stderr
    assert _checksums(association.cal_paths) == before
    deadline = time.monotonic() + 5
    while not all(_process_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_process_gone(pid) for pid in pids), f"workers {pids} outlived the run"
    _assert_same_as_reference(association, out, reference_dq)


@pytest.mark.slow
def test_workers_end_when_the_run_is_killed_outright(association, tmp_path):
    """SIGKILL (or the out-of-memory killer) allows no clean-up, but leaves no worker behind."""
    status, _, stderr, pids = _interrupt_run(
        association, tmp_path, "drizzle", signal.SIGKILL, ["--in-memory=False"]
    )
    assert status == -signal.SIGKILL
    assert pids, stderr
    deadline = time.monotonic() + 10
    while not all(_process_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_process_gone(pid) for pid in pids), f"workers {pids} outlived a killed run"


@pytest.mark.slow
def test_rerun_from_the_command_line_after_an_interrupt(association, tmp_path, reference_dq):
    status, _, stderr, _ = _interrupt_run(association, tmp_path, "blot", signal.SIGTERM, [])
    assert status != 0, stderr
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "outlier_dask.cli",
            "run",
            str(association.asn_path),
            "--output-dir",
            str(out),
            "--overwrite",
            "--scheduler",
            "synchronous",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for name, dq in reference_dq.items():
        np.testing.assert_array_equal(fits.getdata(out / name, "DQ"), dq)


# --------------------------------------------------------------------------- signal handler


@pytest.fixture
def sigint_as_python_sets_it():
    """SIGINT with Python's own handler for the test, then as it was.

    A shell starts a background job with SIGINT ignored, and the handlers leave an ignored
    signal ignored (as under ``nohup``): a suite launched that way would see no SIGINT.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _interrupted_then_signalled_again() -> None:
    with interrupted_by_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            pytest.fail("SIGTERM did not interrupt")
        except KeyboardInterrupt:
            # While cleaning up, further signals are ignored.
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            raise


def test_sigterm_raises_keyboard_interrupt_once_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        _interrupted_then_signalled_again()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_signal_during_a_held_step_is_raised_when_the_step_is_done():
    """``signals_held`` (the close of a finished run's cluster) is not cut short: the signal
    comes out as its KeyboardInterrupt once the block has ended, and only once."""
    from outlier_dask.runtime.signals import signals_held

    steps = []

    def held_step() -> None:
        with interrupted_by_signals():
            with signals_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.1)  # the handler runs here, and holds the signal back
                steps.append("rest of the step")
            steps.append("after the step")

    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        held_step()
    assert steps == ["rest of the step"]
    with interrupted_by_signals(), signals_held():  # nothing is left held from before
        steps.append("a later step")
    assert steps[-1] == "a later step"


@pytest.mark.usefixtures("sigint_as_python_sets_it")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("kept", [True, False], ids=["kept", "python-drops-it"])
def test_an_interrupt_raised_inside_a_weakref_callback_is_raised_again(kept):
    """The signal's handler runs inside a weakref callback (as it can inside an import's
    module lock): Python drops the ``KeyboardInterrupt`` raised there. The command's process
    (``interrupts_not_lost``) raises it again at the next line; without it the run went on,
    deaf to later signals."""

    class Thing:
        pass

    def callback(_ref: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, inside the callback

    def go_on() -> list[weakref.ref]:
        thing = Thing()
        ref = weakref.ref(thing, callback)
        del thing
        for _ in range(20):
            time.sleep(0.005)
        return [ref]

    guard = interrupts_not_lost() if kept else contextlib.nullcontext()
    # Announced: without announcing, the first signal turns all logging off, for good (the
    # command's process ends after it), which would silence this process's later tests.
    with interrupted_by_signals(), guard:
        if kept:
            with pytest.raises(KeyboardInterrupt, match="SIGINT"):
                go_on()
        else:
            assert go_on(), "Python dropped the interrupt and the code went on"


def test_an_interrupt_a_library_swallowed_is_raised_again_at_the_next_step():
    """A bare ``except`` (or C code clearing the error) drops the signal's interrupt: the
    signal is still known for the block, ``stop_if_interrupted`` raises it again, an error
    after it is the signal's, and a later block starts with none."""
    from outlier_dask.command import interrupt_behind

    steps = []
    with interrupted_by_signals():
        stop_if_interrupted()  # no signal yet: goes on
        assert interrupt_received() is None
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
            steps.append("not reached")
        except BaseException:  # noqa: BLE001 - the library's swallowing, on purpose
            steps.append("swallowed")
        assert str(interrupt_received()) == "SIGTERM"
        assert str(interrupt_behind(TypeError("data type 'i4' not understood"))) == "SIGTERM"
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            stop_if_interrupted()
    assert steps == ["swallowed"]
    assert interrupt_received() is None
    assert interrupt_behind(TypeError("an error of its own")) is None
    with interrupted_by_signals():
        stop_if_interrupted()


@pytest.mark.usefixtures("sigint_as_python_sets_it")
def test_a_held_step_that_fails_after_a_signal_raises_the_interrupt_from_its_error():
    """A signal came first: the run stops as interrupted, the step's error kept as the cause;
    without a signal the error goes on as it is."""
    from outlier_dask.runtime.signals import signals_held

    def failing_step(signalled: bool) -> None:
        with interrupted_by_signals(), signals_held():
            if signalled:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
            raise RuntimeError("the cluster's start failed")

    with pytest.raises(KeyboardInterrupt, match="SIGINT") as interrupted:
        failing_step(signalled=True)
    assert isinstance(interrupted.value.__cause__, RuntimeError)
    with pytest.raises(RuntimeError, match="start failed"):
        failing_step(signalled=False)


def test_signal_handlers_chosen_by_the_caller_are_kept():
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with interrupted_by_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        assert calls == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_nothing_is_installed():
    seen = []

    def body():
        with interrupted_by_signals():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGTERM)]


_KILL_A_WORKER = """
import os, signal, sys
import outlier_dask.engine.tasks as tasks

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does

tasks.build_group_mosaic = killed
from outlier_dask.cli import main
sys.exit(main(["run", sys.argv[1], "--output-dir", sys.argv[2], "--work-dir", sys.argv[3]]))
"""


def test_a_killed_worker_ends_the_run_with_one_line_saying_what_to_try(association, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run(
        [sys.executable, "-c", _KILL_A_WORKER, str(association.asn_path), str(out), str(work)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        # Each worker that ran a group task killed itself: one or both are named.
        r"outlier-dask: error: a worker process died during the drizzle stage \(worker \d+ "
        r"killed by SIGKILL(, worker \d+ killed by SIGKILL)?\), also on 2 fresh pool\(s\); "
        r"try a lower --memory-limit or "
        r"fewer --n-workers \(SIGKILL is often the out-of-memory killer's\)",
        last,
    ), last
    assert "Traceback" not in done.stderr
    assert _leftovers(out, work) == []
