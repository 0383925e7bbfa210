"""The local schedulers: a run on them does not pay for what it does not use."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
