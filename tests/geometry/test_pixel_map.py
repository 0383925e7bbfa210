"""Pixel maps: the checked spline stays within its bound; windows equal the whole frame."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.modeling import models as am

from outlier_dask.geometry.output_grid import footprints_from_s_region, output_wcs_from_footprints
from outlier_dask.geometry.pixel_map import build_pixel_map, valid_pixel_range
from outlier_dask.synthetic import make_models

SHAPE = (200, 240)


@pytest.fixture(scope="module")
def wcs_pair():
    models, _ = make_models(n_exposures=2, n_detectors=1, detector_shape=SHAPE, seed=2)
    footprints = [p for m in models for p in footprints_from_s_region(m.meta.wcsinfo.s_region)]
    grid = output_wcs_from_footprints(
        footprints, models[0].meta.wcs, models[0].meta.wcsinfo.instance
    )
    return models[1].meta.wcs, grid


def _exact(wcs_in, grid):
    pm = build_pixel_map(wcs_in, grid, SHAPE, tolerance_px=0)
    assert pm.method == "exact"
    return pm.evaluate((0, SHAPE[0]), (0, SHAPE[1]))


def test_spline_error_within_tolerance(wcs_pair):
    wcs_in, grid = wcs_pair
    pm = build_pixel_map(wcs_in, grid, SHAPE, tolerance_px=1e-4)
    assert pm.method == "spline"
    assert pm.max_error_px <= 1e-4
    approx = pm.evaluate((0, SHAPE[0]), (0, SHAPE[1]))
    error = np.hypot(*(approx - _exact(wcs_in, grid)).transpose(2, 0, 1))
    # The check samples cell centres, where a smooth map's error peaks.
    assert error.max() <= 2e-4


def test_exact_map_equals_the_wcs(wcs_pair):
    wcs_in, grid = wcs_pair
    exact = _exact(wcs_in, grid)
    x, y = grid.world_to_pixel_values(*wcs_in.pixel_to_world_values(17.0, 33.0))
    np.testing.assert_allclose(exact[33, 17], [x, y], rtol=0, atol=1e-9)


def test_impossible_tolerance_falls_back_to_exact(wcs_pair):
    wcs_in, grid = wcs_pair
    pm = build_pixel_map(wcs_in, grid, SHAPE, tolerance_px=1e-15)
    assert pm.method == "exact"


@pytest.mark.parametrize("tolerance", [1e-4, 0.0])
def test_window_equals_slice_of_whole_frame(wcs_pair, tolerance):
    wcs_in, grid = wcs_pair
    pm = build_pixel_map(wcs_in, grid, SHAPE, tolerance_px=tolerance)
    whole = pm.evaluate((0, SHAPE[0]), (0, SHAPE[1]))
    window = pm.evaluate((13, 101), (57, 240))
    np.testing.assert_array_equal(window, whole[13:101, 57:240])


def test_sparse_stepsize_matches_reference_calc_pixmap(wcs_pair):
    resample_utils = pytest.importorskip("stcal.resample.utils")
    wcs_in, grid = wcs_pair
    pm = build_pixel_map(wcs_in, grid, SHAPE, stepsize=10, order=3)
    ours = pm.evaluate((0, SHAPE[0]), (0, SHAPE[1]))
    theirs = resample_utils.calc_pixmap(wcs_in, grid, SHAPE, stepsize=10, order=3)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


def test_pixels_outside_the_bounding_box_map_to_nan(wcs_pair):
    wcs_in, grid = wcs_pair
    from copy import deepcopy

    clipped = deepcopy(wcs_in)
    clipped.bounding_box = ((9.5, 239.5), (-0.5, 150.2))
    assert valid_pixel_range(clipped, SHAPE) == (10, 239, 0, 150)
    for tolerance in (1e-4, 0.0):
        pm = build_pixel_map(clipped, grid, SHAPE, tolerance_px=tolerance)
        values = pm.evaluate((0, SHAPE[0]), (0, SHAPE[1]))
        assert np.isnan(values[:, :10]).all()
        assert np.isnan(values[151:]).all()
        assert np.isfinite(values[:151, 10:]).all()


def test_linear_map_is_interpolated_exactly():
    shift = am.Shift(3.25) & am.Shift(-1.5)
    from gwcs import WCS
    from gwcs import coordinate_frames as cf

    frame_in = cf.Frame2D(name="detector")
    frame_out = cf.Frame2D(name="out")
    wcs_in = WCS([(frame_in, shift), (frame_out, None)])
    wcs_out = WCS([(frame_in, am.Identity(2)), (frame_out, None)])
    pm = build_pixel_map(wcs_in, wcs_out, (40, 50), tolerance_px=1e-6)
    values = pm.evaluate((0, 40), (0, 50))
    y, x = np.mgrid[0:40, 0:50]
    np.testing.assert_allclose(values[..., 0], x + 3.25, atol=1e-9)
    np.testing.assert_allclose(values[..., 1], y - 1.5, atol=1e-9)


@pytest.mark.parametrize("tolerance", [1e-4, 0.0])
def test_positions_from_an_origin_equal_shifting_afterwards(wcs_pair, tolerance):
    """Counting positions from a region's origin equals shifting afterwards: bit for bit for
    exact evaluation, to rounding for the spline (which subtracts it between its passes), and
    a window still equals the whole frame's values bit for bit."""
    wcs_in, grid = wcs_pair
    pixel_map = build_pixel_map(wcs_in, grid, SHAPE, tolerance_px=tolerance)
    window = ((13, 101), (57, 240))
    origin = (1717, 2929)
    shifted = pixel_map.evaluate(*window, origin=origin)
    expected = pixel_map.evaluate(*window) - np.array([2929.0, 1717.0])
    assert np.isfinite(shifted).all()
    if pixel_map.method == "exact":
        np.testing.assert_array_equal(shifted, expected)
    else:
        assert pixel_map.method == "spline"
        np.testing.assert_allclose(shifted, expected, rtol=0, atol=1e-9)
        whole = pixel_map.evaluate((0, SHAPE[0]), (0, SHAPE[1]), origin=origin)
        np.testing.assert_array_equal(shifted, whole[13:101, 57:240])


def test_tensor_spline_equals_fitpack_evaluation():
    """Evaluating axis by axis gives fitpack's tensor-product values, to rounding."""
    from scipy.interpolate import RectBivariateSpline

    from outlier_dask.geometry.pixel_map import TensorSpline

    ys, xs = np.linspace(0.0, 199.0, 9), np.linspace(0.0, 239.0, 11)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    zx = 900.0 + 1.01 * gx - 0.02 * gy + 3e-6 * gx * gy + 1e-3 * np.sin(gx / 30.0)
    zy = 40.0 + 0.03 * gx + 0.99 * gy - 2e-6 * gy**2 + 1e-3 * np.cos(gy / 25.0)
    fx = RectBivariateSpline(ys, xs, zx, kx=3, ky=3)
    fy = RectBivariateSpline(ys, xs, zy, kx=3, ky=3)
    spline = TensorSpline.from_splines(fx, fy)
    rows, cols = np.arange(0.0, 200.0), np.arange(0.0, 240.0)
    values = spline.positions(rows, cols)
    assert values.shape == (200, 240, 2)
    np.testing.assert_allclose(values[..., 0], fx(rows, cols), rtol=0, atol=1e-9)
    np.testing.assert_allclose(values[..., 1], fy(rows, cols), rtol=0, atol=1e-9)
    # Any window of rows and columns is the same arithmetic as the whole frame.
    np.testing.assert_array_equal(spline.positions(rows[7:8], cols), values[7:8])
    np.testing.assert_array_equal(spline.positions(rows, cols[200:201]), values[:, 200:201])
    np.testing.assert_array_equal(spline.positions(rows[3:150], cols[9:31]), values[3:150, 9:31])


def _same_map(a, b) -> bool:
    """Whether two pixel maps are the same map bit for bit (method, range, error, spline)."""
    if (a.method, a.valid_range, a.shape) != (b.method, b.valid_range, b.shape):
        return False
    if a.max_error_px != b.max_error_px:
        return False
    sa, sb = a.spline, b.spline
    return all(
        np.array_equal(getattr(sa, name), getattr(sb, name))
        for name in ("row_knots", "col_knots", "coefficients")
    )


def test_a_map_from_sky_samples_is_the_map_from_the_wcs_bit_for_bit(wcs_pair):
    from outlier_dask.geometry.pixel_map import checked_spline_from_samples, sky_samples

    wcs_in, grid = wcs_pair
    samples = sky_samples(wcs_in, SHAPE)
    from_samples = checked_spline_from_samples(samples, grid, SHAPE, tolerance_px=1e-4)
    from_wcs = build_pixel_map(wcs_in, grid, SHAPE, tolerance_px=1e-4)
    assert from_samples is not None
    assert from_samples.method == "spline"
    assert _same_map(from_samples, from_wcs)
    np.testing.assert_array_equal(
        from_samples.evaluate((0, SHAPE[0]), (0, SHAPE[1])),
        from_wcs.evaluate((0, SHAPE[0]), (0, SHAPE[1])),
    )


def test_sky_samples_follow_the_bounding_box(wcs_pair):
    from copy import deepcopy

    from outlier_dask.geometry.pixel_map import checked_spline_from_samples, sky_samples

    wcs_in, grid = wcs_pair
    clipped = deepcopy(wcs_in)
    clipped.bounding_box = ((9.5, 239.5), (-0.5, 150.2))
    samples = sky_samples(clipped, SHAPE)
    assert samples.valid_range == (10, 239, 0, 150)
    from_samples = checked_spline_from_samples(samples, grid, SHAPE, tolerance_px=1e-4)
    assert _same_map(from_samples, build_pixel_map(clipped, grid, SHAPE, tolerance_px=1e-4))


@pytest.mark.parametrize(
    ("options", "method_from_the_wcs"),
    [
        ({"tolerance_px": 0.0}, "exact"),
        ({"tolerance_px": 1e-15}, "exact"),
        ({"tolerance_px": 1e-4, "stepsize": 10}, "sparse"),
    ],
)
def test_sky_samples_leave_every_other_map_to_the_wcs(wcs_pair, options, method_from_the_wcs):
    """Exact evaluation, a spline that misses its tolerance at the first step, and the
    reference's sparse map all need the WCS: the samples give no map for them."""
    from outlier_dask.geometry.pixel_map import checked_spline_from_samples, sky_samples

    wcs_in, grid = wcs_pair
    assert checked_spline_from_samples(sky_samples(wcs_in, SHAPE), grid, SHAPE, **options) is None
    assert build_pixel_map(wcs_in, grid, SHAPE, **options).method == method_from_the_wcs


def test_a_frame_too_small_for_a_spline_has_no_sky_samples(wcs_pair):
    from outlier_dask.geometry.pixel_map import sky_samples

    wcs_in, grid = wcs_pair
    assert sky_samples(wcs_in, (10, 10)) is None
    assert build_pixel_map(wcs_in, grid, (10, 10)).method == "exact"
