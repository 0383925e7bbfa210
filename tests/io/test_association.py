"""Associations and member files: every way they can be unusable is named in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from stdatamodels.jwst import datamodels

from outlier_dask import detect_outliers
from outlier_dask.io.association import (
    AssociationError,
    product_name_for_files,
    read_association,
)
from outlier_dask.synthetic import make_models


@pytest.fixture(scope="module")
def good_model():
    (model, *_), _ = make_models(n_exposures=1, n_detectors=1, detector_shape=(64, 72), seed=3)
    return model


def _asn(folder, members, **top):
    """Write an association with one product holding ``members`` (a list, or a raw value)."""
    body = {"asn_type": "image3", "products": [{"name": "p", "members": members}], **top}
    path = folder / "p_asn.json"
    path.write_text(json.dumps(body))
    return path


def _science(*names):
    return [{"expname": n, "exptype": "science"} for n in names]


def _one_line(message: str) -> None:
    assert "\n" not in message
    assert len(message) < 300


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "association file not found"),
        ("{not json", "not a JSON association"),
        (b"\xff\xfe\x00", "not a JSON association"),
        ("[1, 2]", "not an association"),
        ('{"asn_type": "spec3", "products": []}', "needs an 'image3' association"),
        ('{"asn_type": "image3"}', "has no products"),
        ('{"asn_type": "image3", "products": []}', "has no products"),
        ('{"asn_type": "image3", "products": ["p"]}', "product is not a JSON object"),
        ('{"products": [{"name": "p"}]}', "the product has no member list"),
        ('{"products": [{"name": "p", "members": []}]}', "has no science members"),
        ('{"products": [{"name": "p", "members": [{"x": 1}]}]}', "member 0 has no 'expname'"),
        ('{"products": [{"name": "p", "members": [{"expname": 5}]}]}', "expected a file name"),
        (
            '{"products": [{"name": "p", "members": [{"expname": "a.fits", "exptype": "bg"}]}]}',
            "has no science members",
        ),
    ],
)
def test_association_file_problems_are_named(tmp_path, content, match):
    path = tmp_path / "x_asn.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(AssociationError, match=match) as info:
        read_association(path)
    assert str(path) in str(info.value)
    _one_line(str(info.value))


def test_duplicate_and_missing_members_are_named(tmp_path, good_model):
    good_model.save(tmp_path / "a_cal.fits")
    with pytest.raises(AssociationError, match="member './a_cal.fits' is listed twice"):
        read_association(_asn(tmp_path, _science("a_cal.fits", "./a_cal.fits")))
    with pytest.raises(AssociationError, match="member 'b_cal.fits' not found at"):
        read_association(_asn(tmp_path, _science("a_cal.fits", "b_cal.fits")))


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "/abs/x", "c\\d"])
def test_product_names_with_folders_are_refused(tmp_path, good_model, name):
    good_model.save(tmp_path / "a_cal.fits")
    path = _asn(tmp_path, _science("a_cal.fits"))
    body = json.loads(path.read_text())
    body["products"][0]["name"] = name
    path.write_text(json.dumps(body))
    with pytest.raises(AssociationError, match="must be a plain file name"):
        read_association(path)


def _member_variants(model):
    """(file name, how to make it, expected message) for each kind of unusable member."""

    def text(path):
        path.write_text("not a FITS file")

    def plain_fits(path):
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((64, 64)), name="SCI")]).writeto(
            path
        )

    def cube(path):
        datamodels.CubeModel(data=np.zeros((2, 64, 64), np.float32)).save(path)

    def changed(change):
        def write(path):
            copy = model.copy()
            change(copy)
            copy.save(path)

        return write

    def no_wcs(m):
        m.meta.wcs = None

    def zero_exposure(m):
        m.meta.exposure.exposure_time = 0.0

    def no_exposure(m):
        del m.meta.exposure.exposure_time

    def negative_measurement(m):
        m.meta.exposure.measurement_time = -1.0

    def no_s_region(m):
        del m.meta.wcsinfo.s_region

    return [
        ("text", text, "cannot be read as a JWST datamodel"),
        ("plain", plain_fits, "not a JWST data product"),
        ("cube", cube, r"not a JWST image model \(CubeModel\)"),
        ("nowcs", changed(no_wcs), r"has no WCS \(meta.wcs\)"),
        ("zeroexp", changed(zero_exposure), "exposure_time must be a positive number, got 0"),
        ("noexp", changed(no_exposure), "exposure_time must be a positive number, got None"),
        ("meas", changed(negative_measurement), "measurement_time must be a positive number"),
        ("nosregion", changed(no_s_region), "s_region is missing"),
    ]


@pytest.mark.parametrize("variant", range(8))
def test_unusable_member_files_are_named_before_work(tmp_path, good_model, variant):
    name, make, match = _member_variants(good_model)[variant]
    good_model.save(tmp_path / "good_cal.fits")
    make(tmp_path / f"{name}_cal.fits")
    asn = _asn(tmp_path, _science("good_cal.fits", f"{name}_cal.fits"))
    out = tmp_path / "out"
    with pytest.raises(AssociationError, match=match) as info:
        detect_outliers(asn, output_dir=out, scheduler="synchronous")
    assert f"{name}_cal.fits" in str(info.value)
    _one_line(str(info.value))
    assert not out.exists(), "nothing may be created before the inputs are known to be good"


def test_inputs_of_the_wrong_kind_are_named(tmp_path, good_model):
    with pytest.raises(AssociationError, match="no inputs given"):
        detect_outliers([])
    with pytest.raises(AssociationError, match="input 1: expected a file path or an ImageModel"):
        detect_outliers(["a_cal.fits", 3])
    with pytest.raises(AssociationError, match="expected a path or a list"):
        detect_outliers(3)
    with pytest.raises(AssociationError, match="all file paths or all ImageModel"):
        detect_outliers([good_model, "a_cal.fits"])
    with pytest.raises(AssociationError, match="input file not found"):
        detect_outliers([tmp_path / "missing_cal.fits", tmp_path / "other_cal.fits"])
    with pytest.raises(AssociationError, match="give one association, or only _cal.fits"):
        detect_outliers([tmp_path / "a_asn.json", tmp_path / "b_cal.fits"])


@pytest.mark.parametrize(
    ("stems", "name"),
    [
        (["jw01_02_00001_nrca1", "jw01_02_00002_nrca1"], "jw01_02"),
        (["jw01_02_00010_nrca1", "jw01_02_00011_nrca1"], "jw01_02"),
        (["a_x_1", "a_x_1"], "a_x_1"),
        (["one_cal_thing"], "one_cal_thing"),
        (["first_a", "second_a"], "first_a"),
    ],
)
def test_product_name_for_files_keeps_whole_fields(stems, name):
    assert product_name_for_files(stems) == name
