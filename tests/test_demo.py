"""The demo: where its synthetic inputs stay, and the score of its flags."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from outlier_dask import demo
from outlier_dask.parameters import OutlierParameters

TINY = {"n_exposures": 3, "n_detectors": 1, "detector_shape": (64, 64), "cr_fraction": 5e-3}


@pytest.fixture
def tiny_demo(monkeypatch):
    monkeypatch.setitem(demo.DEMO_SIZES, "tiny", TINY)
    return "tiny"


def _run(tmp_path: Path, size: str, keep_data: bool) -> demo.DemoOutcome:
    parameters = OutlierParameters(scheduler="synchronous")
    return demo.run_demo(
        tmp_path, size=size, parameters=parameters, progress=False, keep_data=keep_data
    )


def test_demo_removes_its_inputs_and_says_so(tmp_path, tiny_demo):
    outcome = _run(tmp_path, tiny_demo, keep_data=False)

    assert not list(tmp_path.glob("demo-data-*"))
    assert sorted(p.name for p in (tmp_path / "products").glob("*_crf.fits")) == [
        f"jw01234001001_01101_0000{e}_nrca1_crf.fits" for e in (1, 2, 3)
    ]
    assert re.search(
        r"synthetic inputs \(\d+ MB\) removed; keep them with --keep-data", str(outcome)
    )
    assert f"products in {tmp_path / 'products'}" in str(outcome)


def test_demo_keeps_its_inputs_on_request_and_prints_where(tmp_path, tiny_demo):
    outcome = _run(tmp_path, tiny_demo, keep_data=True)

    (data_dir,) = tmp_path.glob("demo-data-*")
    assert f"synthetic inputs kept in {data_dir} (" in str(outcome)
    assert len(list(data_dir.glob("*_cal.fits"))) == 3
    assert (data_dir / "synth_asn.json").is_file()


def test_demo_removes_its_inputs_when_the_run_fails(tmp_path, tiny_demo):
    not_a_folder = tmp_path / "products.txt"
    not_a_folder.write_text("a file where the products folder should be")
    parameters = OutlierParameters(output_dir=str(not_a_folder))
    with pytest.raises(Exception, match="products.txt"):
        demo.run_demo(tmp_path, size=tiny_demo, parameters=parameters, progress=False)
    assert not list(tmp_path.glob("demo-data-*"))


def test_score_flags_counts_hits_false_alarms_and_misses():
    truth = np.array([[True, True, False], [False, False, True]])
    flagged = np.array([[True, False, True], [False, False, True]])
    assert demo.score_flags(flagged, truth) == (2, 1, 1)
