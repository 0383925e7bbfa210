"""The command's process set-up and the collector during a call (outlier_dask.runtime)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import pytest

from outlier_dask.runtime.collector import existing_objects_set_aside
from outlier_dask.runtime.process import BLAS_THREAD_VARIABLES, imports_set_aside

_COMMAND_AND_REPORT = """
import gc, json, os, sys
from outlier_dask.cli import command
from outlier_dask.runtime.process import BLAS_THREAD_VARIABLES
status = command(sys.argv[1:])
print(json.dumps({
    "status": status,
    "blas": {name: os.environ.get(name) for name in BLAS_THREAD_VARIABLES},
    "frozen": gc.get_freeze_count(),
    "enabled": gc.isenabled(),
}))
"""


def _run_command(args: list[str], **env: str) -> tuple[dict, str]:
    """Run the command in a fresh process whose environment sets no BLAS thread count
    besides ``env``; the report printed after it, and its stderr."""
    environment = {k: v for k, v in os.environ.items() if k not in BLAS_THREAD_VARIABLES}
    completed = subprocess.run(
        [sys.executable, "-c", _COMMAND_AND_REPORT, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**environment, **env},
    )
    assert completed.stdout, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1]), completed.stderr


def test_importing_the_command_loads_no_numpy():
    """The command sets BLAS thread counts before numpy loads: its module must not load it."""
    completed = subprocess.run(
        [sys.executable, "-c", "import sys, outlier_dask.cli; print('numpy' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert completed.stdout.strip() == "False"


def test_command_process_single_threaded_blas_and_frozen_at_exit(tmp_path):
    report, stderr = _run_command(["info", str(tmp_path / "missing_asn.json")])
    assert report["status"] == 1  # the association does not exist: a one-line error
    assert "missing_asn.json" in stderr
    assert report["blas"] == {name: "1" for name in BLAS_THREAD_VARIABLES}
    assert report["frozen"] > 0  # everything set aside before the interpreter's shutdown
    assert report["enabled"]


def test_command_keeps_the_users_blas_threads(tmp_path):
    report, _ = _run_command(["info", str(tmp_path / "x_asn.json")], OPENBLAS_NUM_THREADS="3")
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


def test_imports_set_aside_freezes_and_restores_the_collector():
    gc.collect()
    before = gc.get_freeze_count()
    enabled = gc.isenabled()
    try:
        with imports_set_aside():
            assert not gc.isenabled()
            made = [[i] for i in range(100)]
        assert gc.isenabled() == enabled
        assert gc.get_freeze_count() >= before + len(made)
    finally:
        gc.unfreeze()


def test_existing_objects_set_aside_during_the_block_only():
    gc.unfreeze()
    with existing_objects_set_aside():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_existing_objects_set_aside_leaves_a_callers_freeze_alone():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with existing_objects_set_aside():
            pass
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("enabled", [True, False])
def test_detect_outliers_restores_the_collector(enabled):
    """A call sets the collector aside only while it runs (a bad input fails fast here)."""
    from outlier_dask import detect_outliers

    gc.unfreeze()
    if not enabled:
        gc.disable()
    try:
        with pytest.raises(ValueError, match="no_such_asn.json"):
            detect_outliers("no_such_asn.json")
        assert gc.get_freeze_count() == 0
        assert gc.isenabled() == enabled
    finally:
        gc.enable()
