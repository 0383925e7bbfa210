"""Member metadata: read from the ASDF tree when the file is unedited, else via the datamodel."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy.io import fits
from stdatamodels.jwst import datamodels

from outlier_dask.io import members as members_module
from outlier_dask.io.association import AssociationMember
from outlier_dask.io.members import members_from_files
from outlier_dask.synthetic import make_models

FIELDS = (
    "name",
    "group_id",
    "shape",
    "wcsinfo",
    "exposure_time",
    "measurement_time",
    "background_level",
    "has_var_rnoise",
)


@pytest.fixture(scope="module")
def cal_file(tmp_path_factory):
    models, _ = make_models(n_exposures=1, n_detectors=1, detector_shape=(40, 50), seed=4)
    model = models[0]
    model.meta.background.level = 0.25
    model.meta.background.subtracted = False
    path = tmp_path_factory.mktemp("members") / "one_cal.fits"
    model.save(path)
    return path


def _read(path, monkeypatch=None, force_datamodel=False):
    if force_datamodel:
        monkeypatch.setattr(members_module, "_unedited_tree", lambda hdul: None)
    (member,) = members_from_files([AssociationMember(path=path, group_id=None)])
    return member


def _pixel_positions(member):
    return np.array(member.wcs(np.array([3.0, 41.5]), np.array([7.0, 22.25])))


def test_tree_and_datamodel_readers_agree(cal_file, monkeypatch):
    fast = _read(cal_file)
    with datamodels.open(cal_file) as model:
        assert model.meta.exposure.exposure_time == fast.exposure_time
    slow = _read(cal_file, monkeypatch, force_datamodel=True)
    for name in FIELDS:
        assert getattr(fast, name) == getattr(slow, name), name
    assert fast.background_level == 0.25
    np.testing.assert_array_equal(_pixel_positions(fast), _pixel_positions(slow))
    for name in ("SCI", "DQ", "ERR", "VAR_RNOISE", "ASDF"):
        assert fast.source.shape_of(name) == slow.source.shape_of(name), name
    assert fast.source.shape_of("SCI") == (40, 50)
    assert fast.source.shape_of("ASDF") is None


def test_edited_headers_are_read_through_the_datamodel(cal_file, tmp_path):
    """A keyword changed after the file was written wins, as stdatamodels documents."""
    edited = tmp_path / "edited_cal.fits"
    with fits.open(cal_file) as hdul:
        original = hdul[0].header["EFFEXPTM"]
        hdul[0].header["EFFEXPTM"] = original * 2
        hdul.writeto(edited)
    member = _read(edited)
    assert member.exposure_time == original * 2
    with datamodels.open(edited) as model:
        assert model.meta.exposure.exposure_time == original * 2


def test_a_datamodel_read_failure_names_the_file(cal_file, tmp_path, monkeypatch):
    """Whatever path reads the metadata, a reader failure is an AssociationError naming it."""
    from outlier_dask.io.association import AssociationError

    def broken(hdul):
        raise ValueError("corrupt tree")

    monkeypatch.setattr(members_module, "_unedited_tree", broken)
    with pytest.raises(AssociationError, match=r"one_cal\.fits: cannot be read.*corrupt tree"):
        _read(cal_file)


def test_shapes_recorded_with_the_metadata_equal_the_files(cal_file):
    member = _read(cal_file)
    unrecorded = dataclasses.replace(member.source, shapes=None)
    for name in ("SCI", "DQ", "ERR", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "MISSING"):
        assert member.source.shape_of(name) == unrecorded.shape_of(name), name


def test_reading_several_arrays_at_once_equals_reading_each(cal_file):
    source = _read(cal_file).source
    names = ("SCI", "DQ", "VAR_RNOISE", "MISSING")
    for window in (None, ((3, 17), (5, 41))):
        together = source.read_all(names, window)
        for name, array in zip(names, together, strict=True):
            alone = source.read(name, window)
            if alone is None:
                assert array is None, name
            else:
                assert array.dtype == alone.dtype, name
                np.testing.assert_array_equal(array, alone)
    assert together[0].shape == (14, 36)
    assert together[1].dtype == np.uint32


def test_a_tree_asdf_cannot_read_is_left_to_the_datamodel(cal_file, monkeypatch):
    """The shortcut failing is not an error: the datamodel reads the file as before."""

    def unreadable(*args, **kwargs):
        raise ValueError("not today")

    expected = _read(cal_file)
    monkeypatch.setattr(members_module, "fits_hash", unreadable)
    member = _read(cal_file)
    for name in FIELDS:
        assert getattr(member, name) == getattr(expected, name), name
