"""The output grid follows the reference recipe (algorithm.md §1.3)."""

from __future__ import annotations

import numpy as np
import pytest

from outlier_dask.geometry.output_grid import (
    GridTooLargeError,
    footprints_from_s_region,
    grid_for_mapping,
    output_wcs_from_footprints,
)
from outlier_dask.synthetic import make_models


@pytest.fixture(scope="module")
def models():
    models, _ = make_models(n_exposures=3, n_detectors=2, detector_shape=(64, 96), seed=5)
    return models


def _grid(models, **kwargs):
    footprints = [p for m in models for p in footprints_from_s_region(m.meta.wcsinfo.s_region)]
    return output_wcs_from_footprints(
        footprints, models[0].meta.wcs, models[0].meta.wcsinfo.instance, **kwargs
    )


def test_s_region_parsing_single_and_multiple_polygons():
    one = footprints_from_s_region("POLYGON ICRS 1 2 3 4 5 6 7 8")
    np.testing.assert_array_equal(one[0], [[1, 2], [3, 4], [5, 6], [7, 8]])
    two = footprints_from_s_region("POLYGON ICRS 1 2 3 4 5 6 POLYGON ICRS 7 8 9 10 11 12")
    assert [p.shape for p in two] == [(3, 2), (3, 2)]


@pytest.mark.parametrize("text", ["", "POLYGON ICRS 1 2 3", "CIRCLE"])
def test_bad_s_region_is_refused(text):
    with pytest.raises(ValueError, match="S_REGION"):
        footprints_from_s_region(text)


def test_grid_equals_the_reference_recipe(models):
    stcal_util = pytest.importorskip("stcal.alignment.util")
    ours = _grid(models)
    sregions = [m.meta.wcsinfo.s_region for m in models]
    reference = stcal_util.wcs_from_sregions(
        sregions,
        ref_wcs=models[0].meta.wcs,
        ref_wcsinfo=models[0].meta.wcsinfo.instance,
        pscale_ratio=1.0,
    )
    assert ours.array_shape == reference.array_shape
    assert ours.bounding_box.bounding_box() == reference.bounding_box.bounding_box()
    ny, nx = ours.array_shape
    y, x = np.mgrid[0:ny:7, 0:nx:5].astype(float)
    ra_o, dec_o = ours(x, y)
    ra_r, dec_r = reference(x, y)
    np.testing.assert_allclose(ra_o, ra_r, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dec_o, dec_r, rtol=0, atol=1e-12)


def test_grid_covers_every_footprint_at_non_negative_pixels(models):
    grid = _grid(models)
    ny, nx = grid.array_shape
    for model in models:
        for poly in footprints_from_s_region(model.meta.wcsinfo.s_region):
            x, y = grid.invert(poly[:, 0], poly[:, 1], with_bounding_box=False)
            assert np.all(x >= -1e-6)
            assert np.all(y >= -1e-6)
            # shape = int(max + 0.5): vertices reach at most half a pixel past the last centre
            assert np.all(x < nx + 0.5)
            assert np.all(y < ny + 0.5)


def test_absurd_grid_is_refused_with_its_size(models):
    with pytest.raises(GridTooLargeError, match=r"output grid would be \d+ x \d+ pixels"):
        _grid(models, max_pixels=1000)


def test_the_grid_for_mapping_inverts_as_the_grid_does_with_its_inverse_built_once(models):
    grid = _grid(models)
    mapped = grid_for_mapping(grid)
    # Built once: every world_to_pixel call reuses the same backward transform.
    assert mapped.backward_transform is mapped.backward_transform
    assert grid.backward_transform is not grid.backward_transform
    assert not grid.forward_transform.has_user_inverse  # the run's grid is left as it was
    for model in models:
        y, x = np.mgrid[-3:70:4, -5:100:6].astype(float)
        world = model.meta.wcs.pixel_to_world_values(x, y)
        for wcs in (grid, mapped):
            wcs.bounding_box = None  # as the pixel maps evaluate it
        expected = np.array(grid.world_to_pixel_values(*world))
        np.testing.assert_array_equal(np.array(mapped.world_to_pixel_values(*world)), expected)
    np.testing.assert_array_equal(
        np.array(mapped.pixel_to_world_values(x, y)), np.array(grid.pixel_to_world_values(x, y))
    )
