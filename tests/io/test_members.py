"""Member metadata, read through the datamodel, and the pixel sources of member files."""

from __future__ import annotations

import dataclasses
import pickle

import asdf.schema
import numpy as np
import pytest
from astropy.io import fits
from stdatamodels.jwst import datamodels

from outlier_dask.io.association import AssociationMember
from outlier_dask.io.members import image_model_schema, members_from_files
from outlier_dask.synthetic import make_models


@pytest.fixture(scope="module")
def cal_file(tmp_path_factory):
    models, _ = make_models(n_exposures=1, n_detectors=1, detector_shape=(40, 50), seed=4)
    model = models[0]
    model.meta.background.level = 0.25
    model.meta.background.subtracted = False
    path = tmp_path_factory.mktemp("members") / "one_cal.fits"
    model.save(path)
    return path


def _read(path):
    (member,) = members_from_files([AssociationMember(path=path, group_id=None)])
    return member


def _pixel_positions(member):
    return np.array(member.wcs(np.array([3.0, 41.5]), np.array([7.0, 22.25])))


def test_metadata_is_what_the_datamodel_says(cal_file):
    member = _read(cal_file)
    with datamodels.open(cal_file) as model:
        meta = model.meta
        assert member.name == "one_cal.fits"
        assert member.shape == model.data.shape == (40, 50)
        assert member.exposure_time == meta.exposure.exposure_time
        assert member.measurement_time == meta.exposure.measurement_time
        assert member.wcsinfo == meta.wcsinfo.instance
        assert member.background_level == 0.25
        assert member.has_var_rnoise
        expected = np.array(meta.wcs(np.array([3.0, 41.5]), np.array([7.0, 22.25])))
    np.testing.assert_array_equal(_pixel_positions(member), expected)
    assert member.source.shape_of("SCI") == (40, 50)
    assert member.source.shape_of("VAR_RNOISE") == (40, 50)
    assert member.source.shape_of("ASDF") is None


def test_a_member_read_from_a_lazy_tree_is_whole_once_its_file_is_closed(cal_file):
    """The tree is read lazily (a node becomes its object when read): the member keeps
    nothing that needs the closed file, so it pickles (as it travels to a cluster's workers)
    with a WCS that maps as the datamodel's does; asdf's own settings are as before."""
    before = (asdf.get_config().lazy_tree, asdf.get_config().validate_on_read)
    member = _read(cal_file)
    assert (asdf.get_config().lazy_tree, asdf.get_config().validate_on_read) == before
    travelled = pickle.loads(pickle.dumps(member))
    assert type(travelled.wcsinfo) is dict
    np.testing.assert_array_equal(_pixel_positions(travelled), _pixel_positions(member))
    with datamodels.open(cal_file) as model:
        inverse = model.meta.wcs.invert(*_pixel_positions(member))
    np.testing.assert_allclose(travelled.wcs.invert(*_pixel_positions(member)), inverse)


def test_edited_headers_are_honoured(cal_file, tmp_path):
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


def test_the_schema_read_once_is_the_image_models_and_stays_unchanged(cal_file, tmp_path):
    """Every member's model is opened with one schema: stdatamodels' own, not altered by use."""
    fresh = asdf.schema.load_schema(datamodels.ImageModel.schema_url, resolve_references=True)
    assert image_model_schema() == fresh
    edited = tmp_path / "edited_cal.fits"
    with fits.open(cal_file) as hdul:
        hdul[0].header["EFFEXPTM"] = 7.5
        hdul.writeto(edited)
    assert [_read(p).exposure_time for p in (cal_file, edited, cal_file)][1] == 7.5
    assert image_model_schema() is image_model_schema()
    assert image_model_schema() == fresh


def test_a_datamodel_read_failure_names_the_file(cal_file, tmp_path):
    """A file whose ASDF tree is damaged is an AssociationError naming it, on one line."""
    from outlier_dask.io.association import AssociationError

    damaged = tmp_path / "damaged_cal.fits"
    with fits.open(cal_file) as hdul:
        junk = np.frombuffer(b"#ASDF 1.0.0\n%YAML 1.1\n--- [unclosed\n", np.uint8)
        hdul[hdul.index_of("ASDF")] = fits.ImageHDU(junk, name="ASDF")
        hdul.writeto(damaged)
    with pytest.raises(AssociationError, match=r"damaged_cal\.fits: cannot be read") as caught:
        _read(damaged)
    assert "\n" not in str(caught.value)


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


@pytest.fixture(scope="module")
def many_cal_files(tmp_path_factory):
    from outlier_dask.synthetic import write_association

    folder = tmp_path_factory.mktemp("many")
    association = write_association(
        folder, n_exposures=8, n_detectors=2, detector_shape=(32, 36), distortion_px=0.5
    )
    return [AssociationMember(path=p, group_id=None) for p in association.cal_paths]


def test_members_read_in_worker_processes_equal_those_read_here(many_cal_files):
    from outlier_dask.parameters import OutlierParameters
    from outlier_dask.runtime.reading import reading_map

    params = OutlierParameters(n_workers=2)
    with reading_map(params, len(many_cal_files)) as mapper:
        assert mapper is not map  # 16 members: two readers
        in_workers = members_from_files(many_cal_files, mapper)
    here = members_from_files(many_cal_files)
    assert [m.name for m in in_workers] == [e.path.name for e in many_cal_files]
    for a, b in zip(in_workers, here, strict=True):
        fields = ("index", "name", "group_id", "shape", "wcsinfo", "exposure_time", "source")
        assert all(getattr(a, f) == getattr(b, f) for f in fields)
        assert a.sky_samples.valid_range == b.sky_samples.valid_range
        for world_a, world_b in zip(a.sky_samples.world, b.sky_samples.world, strict=True):
            np.testing.assert_array_equal(world_a, world_b)
        np.testing.assert_array_equal(_pixel_positions(a), _pixel_positions(b))


def test_a_travelled_member_rebuilds_its_wcs_only_when_it_is_read(cal_file):
    """A member pickled (by a reader, for a cluster) carries its WCS as bytes: the WCS is
    rebuilt where ``wcs`` is read, travels on as the same bytes until then, and a WCS set
    anew replaces them."""
    member = _read(cal_file)
    travelled = pickle.loads(pickle.dumps(member))
    assert "wcs" not in vars(travelled)
    again = pickle.loads(pickle.dumps(travelled))
    assert "wcs" not in vars(travelled)
    assert "wcs" not in vars(again)
    assert vars(again)["_pickled_wcs"] == vars(travelled)["_pickled_wcs"]
    np.testing.assert_array_equal(_pixel_positions(again), _pixel_positions(member))
    assert "wcs" in vars(again)

    other = make_models(n_exposures=2, n_detectors=1, detector_shape=(40, 50), seed=9)[0][1]
    again.wcs = other.meta.wcs
    moved = pickle.loads(pickle.dumps(again))
    expected = np.array(other.meta.wcs(np.array([3.0, 41.5]), np.array([7.0, 22.25])))
    np.testing.assert_array_equal(_pixel_positions(moved), expected)
    assert not np.array_equal(expected, _pixel_positions(member))
    with pytest.raises(AttributeError, match="no attribute 'not_a_field'"):
        _ = moved.not_a_field


def test_a_plan_of_members_from_readers_rebuilds_one_wcs_and_equals_the_plan_here(
    many_cal_files,
):
    """The readers send each member's sky samples: the plan maps them onto the grid and
    rebuilds only the first member's WCS (for the grid's pixel scale), with the pixel maps,
    regions and blocks of a plan that evaluates every WCS itself."""
    from outlier_dask.engine.plan import make_plan
    from outlier_dask.parameters import OutlierParameters
    from outlier_dask.runtime.reading import reading_map

    params = OutlierParameters(n_workers=2)
    with reading_map(params, len(many_cal_files)) as mapper:
        in_workers = members_from_files(many_cal_files, mapper)
    plan = make_plan(in_workers, "p", params)
    assert ["wcs" in vars(m) for m in in_workers] == [True] + [False] * (len(in_workers) - 1)
    here = members_from_files(many_cal_files)
    for member in here:
        member.sky_samples = None  # every pixel map from the WCS
    reference = make_plan(here, "p", params)
    assert [pm.method for pm in plan.pixel_maps] == ["spline"] * len(in_workers)
    for a, b in zip(plan.pixel_maps, reference.pixel_maps, strict=True):
        assert (a.valid_range, a.max_error_px) == (b.valid_range, b.max_error_px)
        np.testing.assert_array_equal(a.spline.coefficients, b.spline.coefficients)
        np.testing.assert_array_equal(a.evaluate((0, 32), (0, 36)), b.evaluate((0, 32), (0, 36)))
    assert plan.grid_shape == reference.grid_shape
    assert [g.region for g in plan.groups] == [g.region for g in reference.groups]
    assert plan.blocks == reference.blocks


def test_a_bad_member_read_in_a_worker_is_named(many_cal_files, tmp_path):
    from outlier_dask.io.association import AssociationError
    from outlier_dask.parameters import OutlierParameters
    from outlier_dask.runtime.reading import reading_map

    bad = tmp_path / "jw01234001001_01101_00009_nrca1_cal.fits"
    bad.write_bytes(b"not a FITS file")
    entries = [*many_cal_files[:9], AssociationMember(path=bad, group_id=None)]
    entries += many_cal_files[9:]
    with (
        reading_map(OutlierParameters(n_workers=2), len(entries)) as mapper,
        pytest.raises(AssociationError, match=rf"{bad.name}: "),
    ):
        members_from_files(entries, mapper)


@pytest.mark.parametrize(("scheduler", "n_members"), [("processes", 15), ("threads", 64)])
def test_few_members_or_a_scheduler_without_processes_read_here(scheduler, n_members):
    from outlier_dask.parameters import OutlierParameters
    from outlier_dask.runtime.reading import reading_map

    with reading_map(OutlierParameters(scheduler=scheduler, n_workers=2), n_members) as mapper:
        assert mapper is map


def _tall_file(folder, err_value, good_row):
    """One 600 x 40 input: DQ bad (DO_NOT_USE) everywhere but row ``good_row``, ERR
    ``err_value`` everywhere but one pixel of that row (1.0)."""
    models, _ = make_models(n_exposures=1, n_detectors=1, detector_shape=(600, 40), seed=6)
    model = models[0]
    model.dq[...] = 1
    model.dq[good_row] = 0
    model.err[...] = err_value
    model.err[good_row, 17] = 1.0
    path = folder / "tall_cal.fits"
    model.save(path)
    return AssociationMember(path=path, group_id=None)


@pytest.mark.parametrize("good_row", [3, 300, 599])
def test_the_usable_pixel_search_reads_bands_until_it_finds_one(tmp_path, good_row):
    from outlier_dask.io.members import find_usable_pixels

    entry = _tall_file(tmp_path, 0.0, good_row)
    (member,) = members_from_files([entry], usable_under=("~DO_NOT_USE", True))
    found = member.usable
    assert (found.pixels, found.err, found.var_rnoise) == (True, True, True)
    assert found == find_usable_pixels(member.source, member.shape, "~DO_NOT_USE", True)
    # With DO_NOT_USE counted as good every pixel is usable; ERR is 0 at all but one of them,
    # which the search reaches band by band.
    anywhere = find_usable_pixels(member.source, member.shape, "1", False)
    assert (anywhere.pixels, anywhere.err) == (True, True)


def test_the_usable_pixel_search_sees_err_without_a_real_value(tmp_path):
    from outlier_dask.io.members import find_usable_pixels

    entry = _tall_file(tmp_path, np.nan, 300)
    with fits.open(entry.path, mode="update") as hdul:
        hdul["ERR"].data[300, 17] = 0.0
    (member,) = members_from_files([entry], usable_under=("~DO_NOT_USE", False))
    assert (member.usable.pixels, member.usable.err) == (True, False)
    assert member.usable == find_usable_pixels(member.source, member.shape, "~DO_NOT_USE", False)


def test_members_read_without_a_search_have_none(cal_file):
    assert _read(cal_file).usable is None


def test_readers_find_the_usable_pixels_a_search_here_finds(many_cal_files):
    from outlier_dask.io.members import find_usable_pixels
    from outlier_dask.parameters import OutlierParameters
    from outlier_dask.runtime.reading import reading_map

    under = ("~DO_NOT_USE+JUMP_DET", True)
    with reading_map(OutlierParameters(n_workers=2), len(many_cal_files)) as mapper:
        members = members_from_files(many_cal_files, mapper, usable_under=under)
    for member in members:
        assert member.usable == find_usable_pixels(member.source, member.shape, *under)
        assert member.usable.pixels
        assert member.usable.err


def test_dq_read_from_the_file_equals_the_datamodels_unsigned_values(tmp_path):
    """DQ is stored as int32 with BZERO 2**31: the raw read undoes it exactly, the top bit
    (REFERENCE_PIXEL) and all-bits values included, whole and in a window."""
    models, _ = make_models(n_exposures=1, n_detectors=1, detector_shape=(40, 50), seed=6)
    model = models[0]
    special = np.array([0, 1, 2**31, 2**31 + 5, 2**32 - 1, 2**31 - 1], dtype=np.uint32)
    model.dq[0, : special.size] = special
    model.dq[7, 3:9] = special
    path = tmp_path / "dq_cal.fits"
    model.save(path)
    with fits.open(path) as hdul:
        assert hdul["DQ"].header["BZERO"] == 2**31  # the stored form this test is about
    source = _read(path).source
    with datamodels.open(path) as reread:
        expected = np.array(reread.dq, dtype=np.uint32)
    dq = source.read("DQ")
    assert dq.dtype == np.uint32
    assert dq.dtype.isnative
    np.testing.assert_array_equal(dq, expected)
    np.testing.assert_array_equal(dq[0, : special.size], special)
    np.testing.assert_array_equal(source.read("DQ", ((5, 9), (2, 10))), expected[5:9, 2:10])
