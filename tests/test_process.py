"""The command's process set-up (outlier_dask.runtime.process); a call leaves the collector."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys

import pytest

from outlier_dask.runtime.allocator import ALLOCATOR_TUNABLES, ALLOCATOR_VARIABLES, on_glibc
from outlier_dask.runtime.process import BLAS_THREAD_VARIABLES

_NUMPY_HUGEPAGE_VARIABLE = "NUMPY_MADVISE_HUGEPAGE"
_SET_BY_THE_COMMAND = (*BLAS_THREAD_VARIABLES, _NUMPY_HUGEPAGE_VARIABLE, *ALLOCATOR_VARIABLES)
_ON_GLIBC = on_glibc()

_COMMAND_AND_REPORT = """
import gc, json, os, resource, signal, sys
import outlier_dask.cli
from outlier_dask.command import command
from outlier_dask.runtime.process import BLAS_THREAD_VARIABLES
main, during = outlier_dask.cli.main, []
def probed_main(argv):
    try:
        return main(argv)
    finally:
        during.append(gc.get_freeze_count())
outlier_dask.cli.main = probed_main
status = command(sys.argv[1:])
import numpy as np
faults = []
for _ in range(2):  # the second array of a size just freed: fresh pages, or the kept ones
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    np.ones(40 * 2**20 // 8)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
with open("/proc/self/environ", "rb") as started_with:
    environ_at_start = started_with.read().decode().split("\\0")
print(json.dumps({
    "started with": sorted(v for v in environ_at_start if v.startswith(("GLIBC_", "OUTLIER_"))),
    "allocator variable": os.environ.get("GLIBC_TUNABLES"),
    "restart marker": [k for k in os.environ if k.startswith("OUTLIER_DASK_RESTART")],
    "faults of a second 40 MiB array": faults[1],
    "held after": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])
                         if s in (signal.SIGINT, signal.SIGTERM)),
    "status": status,
    "blas": {name: os.environ.get(name) for name in BLAS_THREAD_VARIABLES},
    "hugepage": os.environ.get("NUMPY_MADVISE_HUGEPAGE"),
    "ignored after": [
        signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM)
    ],
    "frozen": gc.get_freeze_count(),
    "enabled": gc.isenabled(),
    "frozen during main": during[0],
}))
"""


def _run_command(args: list[str], held: tuple[int, ...] = (), **env: str) -> tuple[dict, str]:
    """Run the command in a fresh process whose environment sets no BLAS thread count or
    allocator variable besides ``env``, started with the signals ``held`` blocked; the report
    printed after it, and its stderr."""
    environment = {k: v for k, v in os.environ.items() if k not in _SET_BY_THE_COMMAND}
    completed = subprocess.run(
        [sys.executable, "-c", _COMMAND_AND_REPORT, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**environment, **env},
        preexec_fn=(lambda: signal.pthread_sigmask(signal.SIG_BLOCK, held)) if held else None,
    )
    assert completed.stdout, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1]), completed.stderr


def _modules_loaded_by(module: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` a fresh interpreter has loaded once it has imported ``module``."""
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, {module}; print(','.join(m for m in {names!r} if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [name for name in completed.stdout.strip().split(",") if name]


def test_importing_the_command_loads_no_numpy():
    """The command sets BLAS thread counts before numpy loads: its module must not load it."""
    assert _modules_loaded_by("outlier_dask.cli", ("numpy",)) == []


def test_the_entry_module_loads_only_what_the_signal_handlers_need():
    """The installed command's module installs the handlers before argparse, numpy or the
    engine load, so that a signal while they import ends the command with its one line."""
    loaded = _modules_loaded_by("outlier_dask.command", ("argparse", "numpy", "outlier_dask.cli"))
    assert loaded == []


def test_workers_forked_for_a_run_inherit_dask_array():
    """The engine loads ``dask.array`` with the API, before a local scheduler forks its
    workers: each worker had imported it (with scipy.fftpack) on its first median task."""
    assert _modules_loaded_by("outlier_dask.api", ("dask.array",)) == ["dask.array"]


def test_command_process_single_threaded_blas_and_objects_frozen_only_once_it_returned(
    tmp_path,
):
    report, stderr = _run_command(["info", str(tmp_path / "missing_asn.json")])
    assert report["status"] == 1  # the association does not exist: a one-line error
    assert "missing_asn.json" in stderr
    assert report["blas"] == {name: "1" for name in BLAS_THREAD_VARIABLES}
    assert report["hugepage"] is None  # numpy's own default is left alone
    # The command has returned: only the interpreter's exit is left, which signals do not cut.
    assert report["ignored after"] == [True, True]
    # ... nor does the collector traverse the modules' objects there; it stays enabled.
    assert report["frozen"] > 0
    assert report["enabled"]
    assert report["frozen during main"] == 0


@pytest.mark.skipif(not _ON_GLIBC, reason="the allocator's settings are glibc's")
def test_the_command_keeps_freed_memory_and_hands_the_user_s_environment_on(tmp_path):
    """The command starts again with glibc's tunables (they are read only when a program
    starts): an array of a size just freed reuses its pages. The variable and the restart's
    marker are then gone from its environment, so what it starts runs with the user's."""
    report, _ = _run_command(["info", str(tmp_path / "missing_asn.json")])
    assert report["status"] == 1
    # glibc cuts the variable after its first tunable as it parses them (in place).
    first_tunable = ALLOCATOR_TUNABLES.split(":")[0]
    assert report["started with"] == [
        f"GLIBC_TUNABLES={first_tunable}",
        "OUTLIER_DASK_RESTARTED_HOLDING=",
    ]
    assert report["allocator variable"] is None
    assert report["restart marker"] == []
    assert report["faults of a second 40 MiB array"] < 20  # fresh: ~500 on this machine
    assert report["held after"] == []


@pytest.mark.skipif(not _ON_GLIBC, reason="the allocator's settings are glibc's")
def test_the_command_leaves_an_allocator_the_user_set(tmp_path):
    report, _ = _run_command(["info", str(tmp_path / "missing_asn.json")], GLIBC_TUNABLES="")
    assert report["status"] == 1
    assert report["started with"] == ["GLIBC_TUNABLES="]  # not started again
    assert report["allocator variable"] == ""
    assert report["faults of a second 40 MiB array"] > 100  # glibc's defaults: fresh pages


def test_signals_the_caller_held_stay_held_through_the_restart(tmp_path):
    """The command holds SIGINT and SIGTERM through its restart; once it returns, the caller's
    held signals are as they were: SIGTERM held, SIGINT not."""
    report, _ = _run_command(["info", str(tmp_path / "missing_asn.json")], held=(signal.SIGTERM,))
    assert report["status"] == 1
    assert report["held after"] == [int(signal.SIGTERM)]


def test_command_keeps_the_users_blas_threads(tmp_path):
    report, _ = _run_command(
        ["info", str(tmp_path / "x_asn.json")],
        OPENBLAS_NUM_THREADS="3",
    )
    assert report["blas"]["OPENBLAS_NUM_THREADS"] == "3"
    assert report["blas"]["MKL_NUM_THREADS"] == "1"


def test_python_dash_m_runs_the_command():
    completed = subprocess.run(
        [sys.executable, "-m", "outlier_dask", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("usage: outlier-dask")


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("frozen", [False, True])
def test_detect_outliers_leaves_the_collector_as_it_was(enabled, frozen):
    """A call neither freezes objects nor switches the collector (a bad input fails fast)."""
    from outlier_dask import detect_outliers

    gc.unfreeze()
    if frozen:
        gc.freeze()
    if not enabled:
        gc.disable()
    try:
        before = gc.get_freeze_count()
        with pytest.raises(ValueError, match="no_such_asn.json"):
            detect_outliers("no_such_asn.json")
        after = gc.get_freeze_count()
        if frozen:
            # Only gc.freeze adds objects to the permanent generation; frozen objects that
            # are freed leave it, so the count may drop, but not to nothing.
            assert 0 < after <= before
        else:
            assert after == 0
        assert gc.isenabled() == enabled
    finally:
        gc.unfreeze()
        gc.enable()


def test_the_restarted_command_takes_back_what_the_restart_set(monkeypatch):
    """In the restarted command the variable and the marker leave the environment, and the
    signals to hold again are those the first start's caller held (SIGTERM here), not the
    command's own."""
    from outlier_dask.runtime.allocator import restart_with_allocator_settings

    monkeypatch.setenv("GLIBC_TUNABLES", ALLOCATOR_TUNABLES.split(":")[0])  # as glibc left it
    monkeypatch.setenv("OUTLIER_DASK_RESTARTED_HOLDING", str(int(signal.SIGTERM)))
    stop = frozenset({signal.SIGINT, signal.SIGTERM})
    held = restart_with_allocator_settings({signal.SIGINT, signal.SIGTERM, signal.SIGUSR1}, stop)
    assert held == {signal.SIGTERM, signal.SIGUSR1}
    assert "GLIBC_TUNABLES" not in os.environ
    assert "OUTLIER_DASK_RESTARTED_HOLDING" not in os.environ


def _exec_refused(calls: list) -> object:
    """Stands in for ``os.execve`` in this process: records the call, then fails as exec
    may (the command then goes on without the settings)."""

    def execve(path, args, environment):
        calls.append(environment)
        raise OSError("exec refused by the test")

    return execve


@pytest.mark.parametrize("variable", ALLOCATOR_VARIABLES)
def test_an_allocator_variable_the_user_set_means_no_restart(monkeypatch, variable):
    from outlier_dask.runtime import allocator

    calls: list = []
    monkeypatch.setattr(allocator.os, "execve", _exec_refused(calls))
    for name in ALLOCATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "0")
    held = {signal.SIGUSR1}
    assert allocator.restart_with_allocator_settings(held, frozenset({signal.SIGINT})) is held
    assert calls == []
    assert os.environ[variable] == "0"


@pytest.mark.skipif(not _ON_GLIBC, reason="the allocator's settings are glibc's")
def test_a_refused_restart_goes_on_with_glibcs_defaults(monkeypatch):
    """Without allocator variables the command asks to start again with the settings and a
    marker naming the signals its caller held; where exec fails it goes on as it was."""
    from outlier_dask.runtime import allocator

    calls: list = []
    monkeypatch.setattr(allocator.os, "execve", _exec_refused(calls))
    for name in ALLOCATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    held = {signal.SIGTERM, signal.SIGUSR1}
    stop = frozenset({signal.SIGINT, signal.SIGTERM})
    assert allocator.restart_with_allocator_settings(held, stop) is held
    (environment,) = calls
    assert environment["GLIBC_TUNABLES"] == ALLOCATOR_TUNABLES
    assert environment["OUTLIER_DASK_RESTARTED_HOLDING"] == str(int(signal.SIGTERM))
    assert "GLIBC_TUNABLES" not in os.environ
