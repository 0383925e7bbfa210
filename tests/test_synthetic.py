"""Tests of the synthetic association generator (``outlier_dask.synthetic``)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from astropy.modeling import models as am
from scipy import ndimage, optimize

from outlier_dask.synthetic import (
    PIXEL_SCALE_ARCSEC,
    SyntheticConfig,
    exposure_coverage,
    load_truth,
    make_models,
    write_association,
)
from outlier_dask.synthetic.geometry import _world_to_pixel_checked

ARRAYS = ("data", "err", "var_poisson", "var_rnoise", "var_flat")
SMALL = {"n_exposures": 3, "n_detectors": 2, "detector_shape": (128, 128)}


@pytest.fixture(scope="module")
def frames():
    """3 exposures x 2 detectors x 128^2 with the default scene and defects."""
    return make_models(**SMALL, seed=5)


def _tangent_plane_arcsec(wcs, x, y, ra0, dec0):
    """Gnomonic offsets [arcsec] around (ra0, dec0) of pixel positions through ``wcs``."""
    ra, dec = wcs(x, y, with_bounding_box=False)
    to_plane = am.RotateCelestial2Native(ra0, dec0, 180.0) | am.Sky2Pix_TAN()
    xi, eta = to_plane(ra, dec)
    return 3600.0 * np.asarray(xi), 3600.0 * np.asarray(eta)


def _affine_fit(x, y, values):
    design = np.column_stack([np.ones(x.size), x.ravel(), y.ravel()])
    coef = np.linalg.lstsq(design, values.ravel(), rcond=None)[0]
    return coef, (design @ coef).reshape(values.shape)


def _fit_star_centre(data, x0, y0, half=3):
    """Least-squares elliptical Gaussian centre (x, y) in a (2 half + 1)^2 stamp."""
    ix, iy = int(round(x0)), int(round(y0))
    stamp = data[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(float)
    gy, gx = np.mgrid[iy - half : iy + half + 1, ix - half : ix + half + 1]

    def residual(p):
        amp, xc, yc, sx, sy, bg = p
        model = amp * np.exp(-0.5 * (((gx - xc) / sx) ** 2 + ((gy - yc) / sy) ** 2)) + bg
        return (model - stamp).ravel()

    start = [stamp.max() - np.median(stamp), x0, y0, 0.85, 0.85, np.median(stamp)]
    return optimize.least_squares(residual, start).x[1:3]


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_frames():
    kwargs = {"n_exposures": 2, "n_detectors": 1, "detector_shape": (64, 64), "seed": 3}
    models_a, truth_a = make_models(**kwargs)
    models_b, truth_b = make_models(**kwargs)
    for a, b, ta, tb in zip(models_a, models_b, truth_a, truth_b, strict=True):
        for name in (*ARRAYS, "dq"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        np.testing.assert_array_equal(ta, tb)
        assert a.meta.wcsinfo.s_region == b.meta.wcsinfo.s_region


def test_different_seed_gives_different_frames():
    kwargs = {"n_exposures": 1, "n_detectors": 1, "detector_shape": (64, 64)}
    (a,), (ta,) = make_models(**kwargs, seed=3)
    (b,), (tb,) = make_models(**kwargs, seed=4)
    both = np.isfinite(a.data) & np.isfinite(b.data)
    assert np.mean(a.data[both] != b.data[both]) > 0.99
    assert not np.array_equal(ta, tb)
    assert a.meta.wcsinfo.s_region != b.meta.wcsinfo.s_region


# --------------------------------------------------------------------------- pixels


def test_cosmic_rays_are_the_only_difference_from_a_clean_run():
    kwargs = {**SMALL, "n_exposures": 2, "seed": 8}
    with_crs, truth = make_models(**kwargs, cr_fraction=5e-3)
    clean, clean_truth = make_models(**kwargs, cr_fraction=0.0)
    n_cr = 0
    for model, reference, mask, clean_mask in zip(with_crs, clean, truth, clean_truth, strict=True):
        assert not clean_mask.any()
        excess = np.nan_to_num(model.data - reference.data)
        np.testing.assert_array_equal(excess != 0, mask)
        # every CR pixel is far above the noise, some a few hundred sigma
        n_sigma = excess[mask] / model.err[mask]
        assert n_sigma.min() >= 7.99
        assert n_sigma.max() > 100.0
        # single pixels and tracks of several pixels
        labels, n_events = ndimage.label(mask, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel())[1:]
        assert (sizes == 1).any()
        assert (sizes >= 3).any()
        n_cr += mask.sum()
    assert 0.4 * 5e-3 < n_cr / (len(truth) * 128 * 128) < 2.0 * 5e-3


def test_dead_pixels_are_nan_in_every_array_and_free_of_cosmic_rays(frames):
    models, truth = frames
    for model, mask in zip(models, truth, strict=True):
        assert model.dq.dtype == np.uint32
        dead = (model.dq & 1) != 0
        assert dead.all(axis=0).any(), "a dead column"
        assert 0 < dead.mean() < 0.05
        for name in ARRAYS:
            values = getattr(model, name)
            assert values.dtype == np.float32
            np.testing.assert_array_equal(np.isnan(values), dead, err_msg=name)
        assert not (mask & dead).any()
        # JUMP_DET marks usable pixels only
        jump = (model.dq & 4) != 0
        assert jump.any()
        assert not (jump & dead).any()


def test_error_is_the_root_sum_of_the_variances(frames):
    models, truth = frames
    for model, mask in zip(models, truth, strict=True):
        usable = np.isfinite(model.data)
        total = model.var_poisson + model.var_rnoise + model.var_flat
        np.testing.assert_allclose(model.err[usable] ** 2, total[usable], rtol=1e-5)
        rnoise = model.var_rnoise[usable]
        assert 0.05 < rnoise.std() / rnoise.mean() < 0.4  # mild pixel-to-pixel scatter
        # Poisson variance is proportional to the (CR-free) signal: sky plus sources
        no_cr = usable & ~mask
        assert np.corrcoef(model.data[no_cr], model.var_poisson[no_cr])[0, 1] > 0.95
        assert model.var_poisson[usable].max() > 3 * np.median(model.var_poisson[usable])


def test_scene_has_many_significant_sources(frames):
    models, truth = frames
    for model, mask in zip(models, truth, strict=True):
        significance = np.nan_to_num((model.data - np.nanmedian(model.data)) / model.err)
        detected = (significance > 5) & ~ndimage.binary_dilation(mask, iterations=2)
        labels, _ = ndimage.label(detected)
        sizes = np.bincount(labels.ravel())[1:]
        assert (sizes >= 3).sum() >= 5  # per 128 x 128 detector


def test_blank_sky_noise_matches_err():
    config = SyntheticConfig()
    models, _ = make_models(
        **SMALL, seed=2, n_stars=0, n_galaxies=0, cr_fraction=0.0, dead_fraction=0.0
    )
    pulls = np.concatenate(
        [((m.data - config.sky_level) / m.err)[np.isfinite(m.data)] for m in models]
    )
    assert abs(pulls.mean()) < 0.02
    assert abs(pulls.std() - 1.0) < 0.02


# --------------------------------------------------------------------------- geometry


def test_wcs_inverse_round_trips_at_corners_and_centre(frames):
    models, _ = frames
    x = np.array([-0.5, 127.5, -0.5, 127.5, 0.0, 127.0, 63.5])
    y = np.array([-0.5, -0.5, 127.5, 127.5, 127.0, 0.0, 63.5])
    for model in models:
        wcs = model.meta.wcs
        assert wcs.bounding_box.bounding_box() == ((-0.5, 127.5), (-0.5, 127.5))
        assert wcs.array_shape == (128, 128)
        x_back, y_back = wcs.invert(*wcs(x, y, with_bounding_box=False), with_bounding_box=False)
        assert np.hypot(x_back - x, y_back - y).max() < 1e-3
        interior = slice(4, None)
        x_w2p, y_w2p = wcs.world_to_pixel_values(*wcs(x[interior], y[interior]))
        assert np.hypot(x_w2p - x[interior], y_w2p - y[interior]).max() < 1e-3


def test_pixels_map_consistently_between_exposures(frames):
    models, _ = frames
    first, second = models[0], models[2]  # NRCA1 in exposures 1 and 2
    gy, gx = np.mgrid[0:128:7, 0:128:7].astype(float)
    ra, dec = first.meta.wcs(gx, gy)
    x2, y2 = second.meta.wcs.world_to_pixel_values(ra, dec)
    on_second = np.isfinite(x2) & np.isfinite(y2)
    assert on_second.mean() > 0.5
    ra2, dec2 = second.meta.wcs(x2[on_second], y2[on_second])
    x_back, y_back = first.meta.wcs.world_to_pixel_values(ra2, dec2)
    assert np.hypot(x_back - gx[on_second], y_back - gy[on_second]).max() < 1e-3
    # a dither moves the scene by a non-integer number of pixels
    shift = np.hypot(x2 - gx, y2 - gy)[on_second]
    assert 1.0 < np.median(shift) < 20.0
    assert abs(np.median(shift) - round(np.median(shift))) > 1e-3


def test_a_star_sits_at_one_sky_position_in_every_exposure():
    """Stars are fixed on the sky: their fitted centres agree through the two WCSs."""
    (first, second), _ = make_models(
        n_exposures=2,
        n_detectors=1,
        detector_shape=(128, 128),
        seed=6,
        n_stars=40,
        n_galaxies=0,
        cr_fraction=0.0,
    )
    image = np.nan_to_num(first.data)
    peaks = np.flatnonzero(image == ndimage.maximum_filter(image, size=9))
    checked = 0
    for flat in peaks[np.argsort(image.ravel()[peaks])[::-1][:8]]:
        y1, x1 = np.unravel_index(flat, image.shape)
        x2, y2 = second.meta.wcs.world_to_pixel_values(*first.meta.wcs(x1, y1))
        stamps = [first.data[y1 - 3 : y1 + 4, x1 - 3 : x1 + 4]]
        if 4 <= x2 < 123 and 4 <= y2 < 123:
            y2i, x2i = round(float(y2)), round(float(x2))
            stamps.append(second.data[y2i - 3 : y2i + 4, x2i - 3 : x2i + 4])
        if len(stamps) < 2 or not all(s.shape == (7, 7) and np.isfinite(s).all() for s in stamps):
            continue
        centre_1 = _fit_star_centre(first.data, x1, y1)
        centre_2 = _fit_star_centre(second.data, float(x2), float(y2))
        predicted = second.meta.wcs.world_to_pixel_values(*first.meta.wcs(*centre_1))
        assert np.hypot(*(np.array(predicted) - centre_2)) < 0.05
        checked += 1
    assert checked >= 3


def test_distortion_deviates_from_affine_by_a_few_pixels_at_corners(frames):
    models, _ = frames
    gy, gx = np.mgrid[-0.5:128:8.0, -0.5:128:8.0]
    gx[:, -1], gy[-1, :] = 127.5, 127.5  # end exactly on the outer pixel edges
    for model in models[:2]:
        info = model.meta.wcsinfo
        xi, eta = _tangent_plane_arcsec(model.meta.wcs, gx, gy, info.ra_ref, info.dec_ref)
        deviation = []
        for values in (xi, eta):
            _, affine = _affine_fit(gx, gy, values)
            deviation.append((values - affine) / PIXEL_SCALE_ARCSEC)
        corners = (np.array([0, 0, -1, -1]), np.array([0, -1, 0, -1]))
        at_corners = np.hypot(deviation[0][corners], deviation[1][corners])
        assert 0.5 < at_corners.max() < 10.0


def test_wcsinfo_orientation_matches_the_wcs(frames):
    """jwst builds the output grid's PC matrix from roll_ref, v3yangle and vparity."""
    calc_rotation_matrix = pytest.importorskip("stcal.alignment.util").calc_rotation_matrix
    models, _ = frames
    for model in models:
        info = model.meta.wcsinfo
        assert info.vparity == -1
        pc = np.reshape(
            calc_rotation_matrix(
                np.deg2rad(info.roll_ref), np.deg2rad(info.v3yangle), info.vparity
            ),
            (2, 2),
        )
        # Jacobian of pixel -> tangent plane at the reference pixel
        x = np.array([63.5, 64.5, 63.5])
        y = np.array([63.5, 63.5, 64.5])
        xi, eta = _tangent_plane_arcsec(model.meta.wcs, x, y, info.ra_ref, info.dec_ref)
        jacobian = np.array([[xi[1] - xi[0], xi[2] - xi[0]], [eta[1] - eta[0], eta[2] - eta[0]]])
        np.testing.assert_allclose(jacobian / PIXEL_SCALE_ARCSEC, pc, atol=0.01)
        ra_ref, dec_ref = model.meta.wcs(63.5, 63.5)
        assert np.hypot(ra_ref - info.ra_ref, dec_ref - info.dec_ref) < 1e-9


def test_s_region_traces_the_outer_pixel_corners(frames):
    models, _ = frames
    for model in models:
        assert model.meta.wcsinfo.s_region.startswith("POLYGON ICRS  ")
        values = np.array(model.meta.wcsinfo.s_region.split()[2:], float).reshape(4, 2)
        corners = model.meta.wcs(
            np.array([-0.5, 127.5, 127.5, -0.5]),
            np.array([-0.5, -0.5, 127.5, 127.5]),
            with_bounding_box=False,
        )
        np.testing.assert_allclose(values, np.column_stack(corners), atol=1e-8)


def test_detectors_of_an_exposure_tile_the_sky_with_a_small_gap(frames):
    models, _ = frames
    a1, a2 = models[0], models[1]
    info = a1.meta.wcsinfo
    gy, gx = np.mgrid[0:128:16, 0:128:16].astype(float)
    xi, eta = _tangent_plane_arcsec(a1.meta.wcs, gx, gy, info.ra_ref, info.dec_ref)
    (cx, _), _ = _affine_fit(gx, gy, xi), None
    (cy, _), _ = _affine_fit(gx, gy, eta), None
    to_pixel = np.linalg.inv([[cx[1], cx[2]], [cy[1], cy[2]]])
    corner_x = np.array([-0.5, 127.5, 127.5, -0.5])
    corner_y = np.array([-0.5, -0.5, 127.5, 127.5])
    xi2, eta2 = _tangent_plane_arcsec(a2.meta.wcs, corner_x, corner_y, info.ra_ref, info.dec_ref)
    x2, y2 = to_pixel @ np.vstack([xi2 - cx[0], eta2 - cy[0]])
    # NRCA2 is above NRCA1, separated by a gap of a few percent of a detector
    assert 127.5 + 2 < y2.min() < 127.5 + 25
    assert np.abs(x2 - corner_x).max() < 10


def test_exposure_coverage_counts_dithered_exposures(frames):
    models, _ = frames
    coverage = exposure_coverage(models)
    for counts in coverage:
        assert counts.min() >= 1
        assert counts.max() == 3
        assert (counts >= 2).mean() > 0.7


def test_background_level_is_recorded_only_on_request():
    (default,), _ = make_models(n_exposures=1, n_detectors=1, detector_shape=(64, 64))
    assert default.meta.background.level is None
    assert not default.meta.background.subtracted
    models, _ = make_models(
        **SMALL, background_level_in_meta=True, sky_level_scatter=0.2, n_galaxies=0
    )
    levels = [m.meta.background.level for m in models]
    assert levels[0] == levels[1] != levels[2]  # per exposure
    for model, level in zip(models, levels, strict=True):
        assert model.meta.background.subtracted is False
        assert abs(np.nanmedian(model.data) - level) < 0.2 * np.nanmedian(model.err)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"n_detectors": 9}, ValueError, "n_detectors"),
        ({"detector_shape": (8, 64)}, ValueError, "detector_shape"),
        ({"cr_fraction": 1.5}, ValueError, "cr_fraction"),
        ({"exposure_time": 0.0}, ValueError, "exposure_time"),
        ({"no_such_option": 1}, TypeError, "no_such_option"),
        ({"detector_shape": (32, 32), "distortion_px": 12.0}, ValueError, "distortion_px"),
        ({"pointings": (0, 2)}, ValueError, "pointings"),
        ({"pointings": (2, 2, 2)}, ValueError, "pointings"),
        ({"pointings": (40, 25)}, ValueError, "999 visits"),
        ({"pointing_step": 0.0}, ValueError, "pointing_step"),
    ],
)
def test_invalid_options_are_rejected(options, error, match):
    with pytest.raises(error, match=match):
        make_models(**options)


# --------------------------------------------------------------------------- files


def test_written_association_matches_make_models_and_groups_by_exposure(tmp_path):
    datamodels = pytest.importorskip("jwst.datamodels")
    kwargs = {"n_exposures": 3, "n_detectors": 2, "detector_shape": (64, 64), "seed": 7}
    written = write_association(tmp_path / "asn", product_name="mosaic", **kwargs)
    models, truth = make_models(**kwargs)

    assert written.asn_path == tmp_path / "asn" / "mosaic_asn.json"
    asn = json.loads(written.asn_path.read_text())
    assert asn["asn_type"] == "image3"
    assert [p["name"] for p in asn["products"]] == ["mosaic"]
    members = asn["products"][0]["members"]
    assert [m["expname"] for m in members] == [p.name for p in written.cal_paths]
    assert {m["exptype"] for m in members} == {"science"}
    assert re.fullmatch(r"jw01234001001_01101_00002_nrca2_cal\.fits", written.cal_paths[3].name)

    library = datamodels.ModelLibrary(str(written.asn_path))
    assert list(library.group_indices.values()) == [[0, 1], [2, 3], [4, 5]]
    with library:
        for index, (model, mask) in enumerate(zip(models, truth, strict=True)):
            loaded = library.borrow(index)
            assert loaded.meta.filename == written.cal_paths[index].name
            np.testing.assert_array_equal(written.truth[loaded.meta.filename], mask)
            for name in (*ARRAYS, "dq"):
                np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
            np.testing.assert_allclose(
                loaded.meta.wcs(10.0, 20.0), model.meta.wcs(10.0, 20.0), rtol=0, atol=1e-12
            )
            library.shelve(loaded, index, modify=False)


@pytest.mark.jwst
def test_jwst_outlier_detection_flags_the_injected_cosmic_rays(tmp_path, monkeypatch):
    """jwst 3.0.0 accepts the files and finds the injected cosmic rays."""
    monkeypatch.setenv("STPIPE_DISABLE_CRDS_STEPPARS", "True")
    monkeypatch.setenv("CRDS_SERVER_URL", "https://crds.invalid")  # must never be contacted
    monkeypatch.setenv("CRDS_PATH", str(tmp_path / "crds"))
    monkeypatch.chdir(tmp_path)  # jwst puts temporary files in the working directory
    step = pytest.importorskip("jwst.outlier_detection").OutlierDetectionStep
    written = write_association(tmp_path / "asn", **SMALL, seed=11, cr_fraction=3e-3)

    result = step.call(str(written.asn_path), save_results=False)

    models = []
    with result:
        for index in range(len(result)):
            model = result.borrow(index)
            models.append(model)
            result.shelve(model, index, modify=False)
    hits = misses = false_alarms = region_pixels = 0
    for model, coverage in zip(models, exposure_coverage(models), strict=True):
        assert model.meta.cal_step.outlier_detection == "COMPLETE"
        truth = written.truth[model.meta.filename]
        flagged = (model.dq & 16) != 0
        region = coverage >= 2
        hits += (flagged & truth & region).sum()
        misses += (~flagged & truth & region).sum()
        false_alarms += (flagged & ~truth & region).sum()
        region_pixels += region.sum()
    assert hits + misses > 200
    assert hits / (hits + misses) >= 0.8
    assert false_alarms / region_pixels < 2e-3


# --------------------------------------------------------------------------- survey tiling

GRID = {"n_exposures": 2, "n_detectors": 2, "detector_shape": (48, 48), "pointings": (2, 2)}


def test_survey_grid_has_one_visit_per_pointing_and_unique_jwst_names(tmp_path):
    datamodels = pytest.importorskip("jwst.datamodels")
    written = write_association(tmp_path / "asn", **GRID, seed=4)

    names = [p.name for p in written.cal_paths]
    assert len(names) == len(set(names)) == 2 * 2 * 2 * 2
    pattern = r"jw01234001(\d{3})_01101_(\d{5})_nrca([12])_cal\.fits"
    parsed = [tuple(int(g) for g in re.fullmatch(pattern, n).groups()) for n in names]
    expected = [(v, e, d) for v in range(1, 5) for e in (1, 2) for d in (1, 2)]
    assert parsed == expected  # pointing-major, then dither, then detector
    assert set(written.truth) == set(names)

    library = datamodels.ModelLibrary(str(written.asn_path))
    assert list(library.group_indices.values()) == [[k, k + 1] for k in range(0, 16, 2)]
    with library:
        model = library.borrow(8)  # visit 3, dither 1, detector 1
        assert model.meta.observation.visit_number == "003"
        assert model.meta.observation.exposure_number == "1"
        library.shelve(model, 8, modify=False)


def test_default_pointing_keeps_the_single_pointing_association():
    kwargs = {"n_exposures": 2, "n_detectors": 1, "detector_shape": (48, 48), "seed": 9}
    plain, plain_truth = make_models(**kwargs)
    tiled, tiled_truth = make_models(**kwargs, pointings=(1, 1), pointing_step=0.5)
    for a, b, ta, tb in zip(plain, tiled, plain_truth, tiled_truth, strict=True):
        assert a.meta.filename == b.meta.filename
        for name in (*ARRAYS, "dq"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        np.testing.assert_array_equal(ta, tb)


def test_neighbouring_pointings_share_exactly_the_overlap_strip():
    """Without dithers or distortion, 2 x 2 pointings 0.875 detectors apart share 5 pixels."""
    n = 40
    models, _ = make_models(
        n_exposures=1,
        n_detectors=1,
        detector_shape=(n, n),
        pointings=(2, 2),
        pointing_step=0.875,
        dither_fraction=0.0,
        distortion_px=0.0,
    )
    y, x = np.mgrid[0:n, 0:n]
    low, high = x < 5, x >= n - 5  # overlap strip along x (columns)
    bottom, top = y < 5, y >= n - 5  # and along y (rows)
    expected = [  # pointings row-major: (row 0, col 0), (0, 1), (1, 0), (1, 1)
        (high, top),
        (low, top),
        (high, bottom),
        (low, bottom),
    ]
    for counts, (side, edge) in zip(exposure_coverage(models), expected, strict=True):
        np.testing.assert_array_equal(counts, 1 + side + edge + (side & edge))


def test_default_step_overlaps_every_dither_of_the_neighbouring_pointing():
    """With the default dithers and distortion, each frame shares sky with both other dithers."""
    models, _ = make_models(
        n_exposures=2, n_detectors=1, detector_shape=(48, 48), pointings=(1, 2), seed=3
    )
    for k, model in enumerate(models):
        ny, nx = model.data.shape
        ra, dec = model.meta.wcs(*np.meshgrid(np.arange(nx), np.arange(ny)))
        for other in models[2:] if k < 2 else models[:2]:
            x, y = _world_to_pixel_checked(other.meta.wcs, ra, dec)
            inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
            # the shared strip is a few columns at the edge facing the neighbour
            columns = np.flatnonzero(inside.any(axis=0))
            assert 2 <= len(columns) <= 0.3 * nx
            assert columns.min() == 0 or columns.max() == nx - 1


# --------------------------------------------------------------------------- truth


def test_hot_pixels_are_fixed_per_detector_unflagged_and_off_by_default(tmp_path):
    kwargs = {"n_exposures": 2, "n_detectors": 1, "detector_shape": (64, 64), "seed": 2}
    hot = write_association(
        tmp_path / "hot", hot_fraction=5e-3, cr_fraction=0.0, truth_files=True, **kwargs
    )
    clean, _ = make_models(**kwargs, cr_fraction=0.0)
    truth = load_truth(hot.asn_path)
    models = [datamodels_open(p) for p in hot.cal_paths]
    first, second = (truth[p.name] for p in hot.cal_paths)
    np.testing.assert_array_equal(first.hot_pixel, second.hot_pixel)  # detector defect
    assert 0.2 * 5e-3 * 64**2 < np.count_nonzero(first.hot_pixel) < 2.0 * 5e-3 * 64**2
    for model, reference, frame in zip(models, clean, (first, second), strict=True):
        excess = np.nan_to_num(model.data - reference.data)
        np.testing.assert_allclose(excess, frame.hot_pixel, rtol=1e-6, atol=1e-6)
        assert not (model.dq[frame.hot_pixel > 0] & 1).any()
        n_sigma = frame.hot_pixel[frame.hot_pixel > 0] / frame.sky_sigma
        assert n_sigma.min() >= 10.0
        assert n_sigma.max() <= 300.0


def datamodels_open(path):
    from stdatamodels.jwst.datamodels import ImageModel

    return ImageModel(str(path))


def test_truth_files_hold_what_was_injected(tmp_path):
    kwargs = {"n_exposures": 2, "n_detectors": 2, "detector_shape": (64, 64), "seed": 4}
    written = write_association(tmp_path, cr_fraction=5e-3, truth_files=True, **kwargs)
    without_crs, _ = make_models(**kwargs, cr_fraction=0.0)
    no_sources, _ = make_models(**kwargs, cr_fraction=0.0, n_stars=0, n_galaxies=0)
    truth = load_truth(written.asn_path)
    assert list(truth) == [p.name for p in written.cal_paths]
    coverage = exposure_coverage(without_crs)
    for path, clean, blank, counts in zip(
        written.cal_paths, without_crs, no_sources, coverage, strict=True
    ):
        frame = truth[path.name]
        model = datamodels_open(path)
        np.testing.assert_array_equal(frame.cosmic_ray_mask, written.truth[path.name])
        np.testing.assert_allclose(
            np.nan_to_num(model.data - clean.data), frame.cosmic_ray, rtol=1e-5, atol=1e-6
        )
        hit = frame.cosmic_ray > 0
        np.testing.assert_allclose(frame.cosmic_ray_snr[hit], (frame.cosmic_ray / model.err)[hit])
        assert (frame.cosmic_ray_snr[~hit] == 0).all()
        # events number the hit pixels; a track's pixels share one number
        assert ((frame.cosmic_ray_event > 0) == hit).all()
        assert len(np.unique(frame.cosmic_ray_event[hit])) < hit.sum()
        # the Poisson variance follows the noiseless signal, so the scene's share of it is
        # the source level times (MJy/sr per e-/s) / exposure time
        usable = np.isfinite(model.data)
        assert (frame.source >= 0).all()
        assert frame.source.max() > 20 * frame.sky_sigma
        np.testing.assert_allclose(
            (clean.var_poisson - blank.var_poisson)[usable],
            frame.source[usable] * (0.1 / SyntheticConfig().exposure_time),
            rtol=1e-3,
            atol=1e-10,
        )
        np.testing.assert_array_equal(frame.coverage, counts)
        assert frame.sky_sigma == SyntheticConfig().sky_sigma


def test_a_two_dither_mosaic_has_regions_seen_by_one_to_four_exposures():
    models, _ = make_models(
        n_exposures=2, n_detectors=4, detector_shape=(64, 64), seed=1, dither_fraction=0.3
    )
    counts = np.concatenate([c.ravel() for c in exposure_coverage(models)])
    assert set(np.unique(counts)) == {1, 2}


def test_load_truth_names_the_missing_file(tmp_path):
    written = write_association(tmp_path, n_exposures=2, n_detectors=1, detector_shape=(64, 64))
    with pytest.raises(FileNotFoundError, match=r"_nrca1_truth\.npz.*truth_files=True"):
        load_truth(written.asn_path)


def test_undersampled_stars_keep_their_flux_at_every_pixel_phase(tmp_path):
    """At FWHM 1.2 px (NIRCam SW-like) a star's light stays on a few pixels, its peak pixel
    changes with the sub-pixel position between dithers, and its summed light hardly does:
    the profile is sampled at pixel centres (not integrated over pixels), which at this width
    moves the sum by ~2 % with the sub-pixel phase, and the distortion changes the pixels'
    area on the sky (the sum is of surface brightness) by about as much across a detector."""
    written = write_association(
        tmp_path,
        n_exposures=3,
        n_detectors=1,
        detector_shape=(96, 96),
        seed=9,
        psf_fwhm_px=1.2,
        n_stars=6,
        n_galaxies=0,
        cr_fraction=0.0,
        truth_files=True,
    )
    sources = [frame.source for frame in load_truth(written.asn_path).values()]
    labels, n = ndimage.label(sources[0] > 1e-3)
    centres = ndimage.maximum_position(sources[0], labels, range(1, n + 1))
    peak_fractions = []
    for y, x in centres:
        if not (16 <= y < 80 and 16 <= x < 80):
            continue
        # the same star in the other exposures: brightest pixel within the dither offsets
        sums, peaks = [], []
        for source in sources:
            near = source[y - 9 : y + 10, x - 9 : x + 10]
            py, px = np.unravel_index(np.argmax(near), near.shape)
            stamp = near[max(py - 3, 0) : py + 4, max(px - 3, 0) : px + 4]
            sums.append(stamp.sum())
            peaks.append(stamp.max() / stamp.sum())
        np.testing.assert_allclose(sums, sums[0], rtol=0.05)
        peak_fractions.extend(peaks)
    assert peak_fractions
    # most of the light in the brightest pixel: undersampled
    assert min(peak_fractions) > 0.25
    assert max(peak_fractions) - min(peak_fractions) > 0.05
