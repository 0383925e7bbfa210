"""A run at a memory budget completes inside a hard memory limit of 1.25 x that budget.

The limit is imposed as a laptop or a batch system does: the command runs in a cgroup whose
memory limit the kernel enforces (the out-of-memory killer ends any process of the group that
goes past it, however briefly), not by sampling RSS.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from outlier_dask.kernels.dq import OUTLIER
from outlier_dask.synthetic import write_association

# The helper the survey benchmark imposes its hard limits with.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from memory_cgroup import MemoryCgroup, cgroup_unavailable  # noqa: E402

BUDGET = 512 * 2**20
REASON = cgroup_unavailable()


def _run(asn: Path, out: Path, work: Path, extra: list[str], preexec=None):
    command = [sys.executable, "-m", "outlier_dask", "-q", "run", str(asn)]
    command += ["--output-dir", str(out), "--work-dir", str(work), *extra]
    env = dict(os.environ, STPIPE_DISABLE_CRDS_STEPPARS="True")
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, preexec_fn=preexec
    )


def _masks(folder: Path) -> dict[str, np.ndarray]:
    masks = {}
    for path in sorted(folder.glob("*_crf.fits")):
        with fits.open(path) as hdul:
            masks[path.name] = (hdul["DQ"].data & OUTLIER) != 0
    return masks


@pytest.mark.skipif(REASON is not None, reason=f"no hard memory limit here: {REASON}")
def test_run_at_a_budget_completes_inside_a_cgroup_of_one_and_a_quarter_times_it(tmp_path):
    asn = write_association(
        tmp_path / "data", n_exposures=4, n_detectors=1, detector_shape=(384, 384), seed=8
    ).asn_path

    with MemoryCgroup(int(1.25 * BUDGET), "od-test") as group:
        limited = _run(
            asn, tmp_path / "limited", tmp_path, ["--memory-limit", "512MiB"], group.enter
        )
        peak, kills = group.peak_bytes, group.oom_kills
    unlimited = _run(asn, tmp_path / "unlimited", tmp_path, [])

    assert limited.returncode == 0, limited.stderr
    assert unlimited.returncode == 0, unlimited.stderr
    assert kills == 0
    # the run's memory was charged to the group, so the limit applied to it
    assert 32 * 2**20 < peak <= 1.25 * BUDGET
    ours, reference = _masks(tmp_path / "limited"), _masks(tmp_path / "unlimited")
    assert len(ours) == 4
    assert ours.keys() == reference.keys()
    assert sum(int(m.sum()) for m in reference.values()) > 0
    for name, mask in reference.items():
        np.testing.assert_array_equal(ours[name], mask, err_msg=name)
    # the scratch store went with the run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "limited", "unlimited"]
