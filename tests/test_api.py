"""detect_outliers: inputs of every kind, products the pipeline accepts, nothing lost."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
from stdatamodels.jwst import datamodels

from outlier_dask import OutlierParameters, ParameterError, detect_outliers
from outlier_dask.kernels.dq import DO_NOT_USE, OUTLIER
from outlier_dask.synthetic import make_models, write_association


@pytest.fixture(scope="module")
def association(tmp_path_factory):
    return write_association(
        tmp_path_factory.mktemp("api") / "data",
        n_exposures=3,
        n_detectors=2,
        detector_shape=(96, 112),
        seed=4,
    )


def _checksums(paths):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_products_are_flagged_jwst_models_and_inputs_untouched(association, tmp_path):
    before = _checksums(association.cal_paths)
    result = detect_outliers(association.asn_path, output_dir=tmp_path, scheduler="synchronous")
    assert _checksums(association.cal_paths) == before
    assert result.status == "COMPLETE"
    assert [p.name for p in result.outputs] == [
        p.name.replace("_cal.fits", "_crf.fits") for p in association.cal_paths
    ]
    assert sum(result.flagged.values()) > 0
    for path, cal in zip(result.outputs, association.cal_paths, strict=True):
        with datamodels.open(path) as model, datamodels.open(cal) as original:
            assert isinstance(model, datamodels.ImageModel)
            assert model.meta.cal_step.outlier_detection == "COMPLETE"
            assert model.meta.filename == path.name
            outliers = (model.dq & OUTLIER) != 0
            assert outliers.sum() == result.flagged[cal.name]
            # Flagged pixels are DO_NOT_USE and NaN in SCI, ERR and every variance.
            assert np.all(model.dq[outliers] & DO_NOT_USE)
            for name in ("data", "err", "var_rnoise", "var_poisson", "var_flat"):
                assert np.isnan(getattr(model, name)[outliers]).all()
            # Unflagged pixels keep their values.
            keep = ~outliers & np.isfinite(original.data)
            np.testing.assert_array_equal(model.data[keep], original.data[keep])
    assert not list(tmp_path.glob(".*partial")), "no temporary file may remain"


def test_models_and_files_give_the_same_flags(association, tmp_path):
    from_files = detect_outliers(association.asn_path, output_dir=tmp_path, scheduler="synchronous")
    models = [datamodels.ImageModel(str(p)) for p in association.cal_paths]
    originals = [m.dq.copy() for m in models]
    from_models = detect_outliers(models, scheduler="synchronous")
    for model, dq in zip(models, originals, strict=True):
        np.testing.assert_array_equal(model.dq, dq)  # the caller's models stay as they were
    for path, flagged in zip(from_files.outputs, from_models.outputs, strict=True):
        with datamodels.open(path) as written:
            np.testing.assert_array_equal(written.dq, flagged.dq)
        assert flagged.meta.cal_step.outlier_detection == "COMPLETE"


def test_files_listed_without_association(association, tmp_path):
    by_asn = detect_outliers(
        association.asn_path, output_dir=tmp_path / "a", scheduler="synchronous"
    )
    by_files = detect_outliers(
        [str(p) for p in association.cal_paths], output_dir=tmp_path / "b", scheduler="synchronous"
    )
    assert by_asn.flagged == by_files.flagged


def test_single_input_is_skipped_and_written_unchanged(association, tmp_path, caplog):
    cal = association.cal_paths[0]
    with caplog.at_level(logging.WARNING, logger="outlier_dask"):
        result = detect_outliers([cal], output_dir=tmp_path, scheduler="synchronous")
    assert result.status == "SKIPPED"
    assert "at least two inputs" in caplog.text
    (path,) = result.outputs
    with datamodels.open(path) as model, datamodels.open(cal) as original:
        assert model.meta.cal_step.outlier_detection == "SKIPPED"
        np.testing.assert_array_equal(model.dq, original.dq)


@pytest.mark.jwst
def test_intermediate_products_use_the_reference_names(association, tmp_path):
    """Run both with save_intermediate_results: the same intermediate file names."""
    from jwst.outlier_detection import OutlierDetectionStep

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    theirs.mkdir()
    detect_outliers(
        association.asn_path,
        output_dir=ours,
        scheduler="synchronous",
        save_intermediate_results=True,
        report=False,
    )
    OutlierDetectionStep.call(
        str(association.asn_path), save_intermediate_results=True, output_dir=str(theirs)
    )
    intermediate = ("_median.fits", "_blot.fits", "_outlier_i2d.fits")
    reference_names = {p.name for p in theirs.iterdir() if p.name.endswith(intermediate)}
    assert {p.name for p in ours.iterdir() if p.name.endswith(intermediate)} == reference_names
    first = association.cal_paths[0].name.removesuffix("_cal.fits")
    assert f"{first}_o001_median.fits" in reference_names  # asn_id o001 of the association
    with datamodels.open(ours / f"{first}_o001_median.fits") as median:
        assert np.isfinite(median.data).mean() > 0.5
        assert median.meta.wcs is not None


def test_intermediate_names_of_a_list_of_files_have_no_association_id(association, tmp_path):
    detect_outliers(
        association.cal_paths[:2],
        output_dir=tmp_path,
        scheduler="synchronous",
        save_intermediate_results=True,
        report=False,
    )
    stems = [p.name.removesuffix("_cal.fits") for p in association.cal_paths[:2]]
    names = {p.name for p in tmp_path.iterdir()}
    assert f"{stems[0]}_median.fits" in names
    assert {f"{s}_blot.fits" for s in stems} <= names


def test_an_interrupt_once_the_report_is_written_leaves_no_report(
    association, tmp_path, monkeypatch
):
    """A run interrupted after it wrote its report (the last step) keeps nothing: its products
    are removed, and so is the report that described them."""
    import outlier_dask.api as api

    def write_then_interrupt(report, path):
        written = real_write_report(report, path)
        assert written.exists()
        raise KeyboardInterrupt("SIGTERM")

    real_write_report = api.write_report
    monkeypatch.setattr(api, "write_report", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        detect_outliers(association.asn_path, output_dir=tmp_path, scheduler="synchronous")
    assert list(tmp_path.iterdir()) == []


def test_existing_products_are_refused_without_overwrite(association, tmp_path):
    detect_outliers(association.asn_path, output_dir=tmp_path, scheduler="synchronous")
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        detect_outliers(association.asn_path, output_dir=tmp_path, scheduler="synchronous")
    detect_outliers(
        association.asn_path, output_dir=tmp_path, scheduler="synchronous", overwrite=True
    )


def test_output_that_would_overwrite_an_input_is_refused(association):
    folder = association.cal_paths[0].parent
    with pytest.raises(ValueError, match="would overwrite an input"):
        detect_outliers(association.asn_path, output_dir=folder, suffix="cal", overwrite=True)


def test_bad_parameter_is_named_before_any_work(association, tmp_path):
    with pytest.raises(ParameterError, match="snr: expected two"):
        detect_outliers(association.asn_path, output_dir=tmp_path, snr="5")
    with pytest.raises(ParameterError, match="nonsense: not a parameter"):
        detect_outliers(association.asn_path, output_dir=tmp_path, nonsense=1)
    assert not any(tmp_path.iterdir())


def test_parameters_object_and_string_values(association, tmp_path):
    params = OutlierParameters(scheduler="synchronous", output_dir=str(tmp_path))
    strings = detect_outliers(
        association.asn_path, parameters=params, snr="5.0 4.0", in_memory="False", maskpt="0.7"
    )
    assert strings.parameters.in_memory is False
    assert strings.status == "COMPLETE"


def test_resample_false_refuses_mixed_shapes(tmp_path):
    models, _ = make_models(n_exposures=2, n_detectors=1, detector_shape=(64, 80), seed=1)
    other, _ = make_models(n_exposures=1, n_detectors=1, detector_shape=(64, 96), seed=2)
    with pytest.raises(ValueError, match="resample_data=False needs inputs of one shape"):
        detect_outliers([*models, *other], resample_data=False, scheduler="synchronous")


def test_association_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad_asn.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON association"):
        detect_outliers(bad, output_dir=tmp_path)
    missing = tmp_path / "missing_asn.json"
    missing.write_text(
        json.dumps(
            {
                "asn_type": "image3",
                "products": [
                    {"name": "p", "members": [{"expname": "nope_cal.fits", "exptype": "science"}]}
                ],
            }
        )
    )
    with pytest.raises(ValueError, match="member 'nope_cal.fits' not found"):
        detect_outliers(missing, output_dir=tmp_path)
