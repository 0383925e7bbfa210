"""The run report (JSON) and its figure (PNG): contents checked against independent counts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from engine_runs import run_engine
from stdatamodels.jwst import datamodels

from outlier_dask import OutlierParameters, detect_outliers
from outlier_dask.engine.plan import make_plan
from outlier_dask.io.members import members_from_models
from outlier_dask.kernels.dq import OUTLIER
from outlier_dask.plot import flagged_positions
from outlier_dask.report import REPORT_VERSION
from outlier_dask.synthetic import make_models, write_association


@pytest.fixture(scope="module")
def association(tmp_path_factory):
    return write_association(
        tmp_path_factory.mktemp("report") / "data",
        n_exposures=3,
        n_detectors=2,
        detector_shape=(80, 96),
        seed=11,
    )


@pytest.fixture(scope="module")
def run(association, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-out")
    result = detect_outliers(
        association.asn_path,
        output_dir=out,
        scheduler="synchronous",
        save_intermediate_results=True,
        progress=False,
    )
    return out, result


def test_report_is_written_beside_the_products_and_equals_the_result(run):
    out, result = run
    path = out / "synth_outlier_report.json"
    assert result.report_path == path
    assert json.loads(path.read_text()) == result.report
    assert not list(out.glob(".*partial"))
    report = result.report
    assert report["report_version"] == REPORT_VERSION
    assert report["status"] == "COMPLETE"
    assert report["product"] == "synth"
    params = result.parameters
    assert report["parameters"] == {
        f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.init
    }
    assert report["detection"] == {"rule": "reference", "nhigh_groups": 0, "source_fraction": 0.0}
    for package in ("outlier_dask", "stcal", "drizzle", "dask", "numpy", "gwcs", "python"):
        assert report["versions"][package], package
    assert set(report["timings"]) == {"plan", "drizzle", "median", "blot_flag", "write", "total"}
    assert report["timings"]["total"] >= sum(
        v for k, v in report["timings"].items() if k != "total"
    )
    assert report["scheduler"]["kind"] == "synchronous"
    assert report["grid"]["pixel_scale_arcsec"] == pytest.approx(0.031, rel=0.01)
    assert len(report["grid"]["groups"]) == 3


def test_per_input_counts_match_the_products(run, association):
    out, result = run
    entries = result.report["inputs"]
    assert [e["name"] for e in entries] == [p.name for p in association.cal_paths]
    for entry, cal in zip(entries, association.cal_paths, strict=True):
        stem = cal.name.removesuffix("_cal.fits")
        with datamodels.open(cal) as original:
            valid = int(np.isfinite(original.data).sum())
        with datamodels.open(out / f"{stem}_crf.fits") as product:
            flagged = int(np.count_nonzero(product.dq & OUTLIER))
        with datamodels.open(out / f"{stem}_o001_blot.fits") as blot:
            covered = int(np.isfinite(blot.data).sum()) / blot.data.size
        assert entry["output"] == f"{stem}_crf.fits"
        assert entry["flagged"] == flagged == result.flagged[cal.name]
        assert entry["valid_pixels"] == valid
        assert entry["flagged_fraction"] == pytest.approx(flagged / valid)
        assert entry["median_coverage"] == pytest.approx(covered)
        assert 0.5 < entry["median_coverage"] <= 1.0
    totals = result.report["totals"]
    assert totals["flagged"] == sum(result.flagged.values())
    assert totals["flagged_fraction"] == pytest.approx(
        totals["flagged"] / sum(e["valid_pixels"] for e in entries)
    )


@pytest.fixture(scope="module")
def models():
    models, _ = make_models(n_exposures=3, n_detectors=2, detector_shape=(64, 72), seed=5)
    return models


def _engine(models, tmp_path, **values):
    params = OutlierParameters(scheduler="synchronous", **values)
    plan = make_plan(members_from_models(models), "t", params)
    return plan, run_engine(plan, params, tmp_path, keep_median=True)


@pytest.mark.parametrize(("block_size", "in_memory"), [(7, True), (1024, False), (16, False)])
def test_block_counts_do_not_depend_on_blocks_or_stores(models, tmp_path, block_size, in_memory):
    _, whole = _engine(models, tmp_path, block_size=4096)
    _, cut = _engine(models, tmp_path, block_size=block_size, in_memory=in_memory)
    assert cut.valid_pixels == whole.valid_pixels
    assert cut.covered_pixels == whole.covered_pixels
    assert [int(np.isfinite(m.data).sum()) for m in models] == whole.valid_pixels
    # The median is kept for a figure without the intermediate products.
    assert cut.median is not None
    assert cut.blots is None
    np.testing.assert_array_equal(cut.median, whole.median)


def test_models_report_only_in_the_result_unless_asked(models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = detect_outliers(models, scheduler="synchronous", progress=False)
    assert result.report_path is None
    assert list(tmp_path.iterdir()) == []
    assert result.report["inputs"][0]["output"] is None
    assert sum(e["flagged"] for e in result.report["inputs"]) == sum(result.flagged.values())
    asked = detect_outliers(
        models, scheduler="synchronous", progress=False, report=True, output_dir=tmp_path / "o"
    )
    assert asked.report_path == tmp_path / "o" / "outlier_dask_outlier_report.json"
    assert json.loads(asked.report_path.read_text())["status"] == "COMPLETE"


def test_existing_report_is_refused_before_any_work(association, tmp_path):
    (tmp_path / "synth_outlier_report.json").write_text("{}")
    with pytest.raises(ValueError, match="synth_outlier_report.json exists; pass overwrite"):
        detect_outliers(association.asn_path, output_dir=tmp_path, scheduler="synchronous")
    assert not list(tmp_path.glob("*_crf.fits"))
    result = detect_outliers(
        association.asn_path,
        output_dir=tmp_path,
        scheduler="synchronous",
        overwrite=True,
        report=True,
        progress=False,
    )
    assert json.loads(result.report_path.read_text())["status"] == "COMPLETE"


def test_skipped_run_has_a_report(association, tmp_path):
    result = detect_outliers(
        association.cal_paths[0], output_dir=tmp_path, scheduler="synchronous", progress=False
    )
    assert result.status == "SKIPPED"
    report = json.loads(result.report_path.read_text())
    assert report["status"] == "SKIPPED"
    assert report["inputs"][0]["flagged"] == 0
    assert report["inputs"][0]["median_coverage"] is None
    assert report["grid"] is None


def test_plot_is_a_png_of_the_run(association, tmp_path):
    pytest.importorskip("matplotlib")
    result = detect_outliers(
        association.asn_path, output_dir=tmp_path, scheduler="synchronous", plot=True
    )
    assert result.plot_path == tmp_path / "synth_outlier_report.png"
    data = result.plot_path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 1000
    assert height > 600
    assert not list(tmp_path.glob(".*partial"))


def test_flagged_positions_follow_the_pixel_map(models):
    params = OutlierParameters()
    plan = make_plan(members_from_models(models), "t", params)
    pixel_map = plan.pixel_maps[1]
    ny, nx = models[1].data.shape
    mask = np.zeros((ny, nx), dtype=bool)
    rows = np.array([0, 3, 3, 40, ny - 1])
    cols = np.array([5, 0, nx - 1, 17, nx - 1])
    mask[rows, cols] = True
    x, y = flagged_positions(mask, pixel_map)
    whole = pixel_map.evaluate((0, ny), (0, nx))
    order = np.lexsort((cols, rows))  # np.nonzero's order: row-major
    np.testing.assert_array_equal(x, whole[rows[order], cols[order], 0])
    np.testing.assert_array_equal(y, whole[rows[order], cols[order], 1])
    x, y = flagged_positions(mask, None)
    np.testing.assert_array_equal(x, cols[order])
    np.testing.assert_array_equal(y, rows[order])
