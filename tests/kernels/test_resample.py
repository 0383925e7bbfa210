"""Drizzle onto a region and bilinear blot from cut-outs equal the whole-grid reference."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
from drizzle.resample import Drizzle, blot_image

from outlier_dask.kernels.resample import (
    MIN_STRIP_ROWS,
    STRIP_PIXMAP_BYTES,
    DrizzleInput,
    blot_bilinear,
    drizzle_onto_region,
    fill_value_number,
    strip_rows,
    strips_of,
)

NY, NX = 120, 110


def _pixmap(offset=(30.37, 20.61), angle=0.3, curvature=2e-4):
    y, x = np.indices((NY, NX), dtype=float)
    u = offset[0] + np.cos(angle) * x - np.sin(angle) * y + curvature * x * y
    v = offset[1] + np.sin(angle) * x + np.cos(angle) * y + curvature * x**2
    return np.dstack([u, v])


def test_blot_equals_compiled_blot_bit_for_bit():
    rng = np.random.default_rng(0)
    pixmap = _pixmap(offset=(-15.3, -8.2))
    pixmap[5:8, 5:9] = np.nan
    shape = (int(np.nanmax(pixmap[..., 1])) - 10, int(np.nanmax(pixmap[..., 0])) - 12)
    median = rng.normal(size=shape).astype(np.float32)
    median[rng.random(shape) < 0.02] = np.nan
    # Positions exactly on the last row and column exercise the one-axis interpolation.
    pixmap[0, 0] = [shape[1] - 1, 3.5]
    pixmap[0, 1] = [2.25, shape[0] - 1]
    pixmap[0, 2] = [shape[1] - 1, shape[0] - 1]
    reference = np.full((NY, NX), np.nan, dtype=np.float32)
    compiled_map = np.where(np.isnan(pixmap), -1.0, pixmap)
    blot_image(median, compiled_map, out_img=reference, fillval=np.nan, iscale=1.0, interp="linear")
    ours = blot_bilinear(median, (0, 0), shape, pixmap)
    np.testing.assert_array_equal(ours, reference)
    assert np.isfinite(ours).sum() > NY * NX // 3
    assert np.isnan(ours).sum() > 100


@pytest.mark.parametrize("block", [1, 7, 33])
def test_blot_from_cutouts_equals_whole(block):
    rng = np.random.default_rng(1)
    pixmap = _pixmap(offset=(-10.0, -5.0))
    shape = (int(np.nanmax(pixmap[..., 1])) - 5, int(np.nanmax(pixmap[..., 0])) - 5)
    median = rng.normal(size=shape).astype(np.float32)
    whole = blot_bilinear(median, (0, 0), shape, pixmap)
    for r in range(0, NY, block):
        for c in range(0, NX, block):
            part = pixmap[r : r + block, c : c + block]
            y0 = max(int(np.floor(part[..., 1].min())) - 1, 0)
            x0 = max(int(np.floor(part[..., 0].min())) - 1, 0)
            y1 = min(int(np.floor(part[..., 1].max())) + 2, shape[0])
            x1 = min(int(np.floor(part[..., 0].max())) + 2, shape[1])
            if y0 >= y1 or x0 >= x1:
                y0, y1, x0, x1 = 0, 1, 0, 1
            got = blot_bilinear(median[y0:y1, x0:x1], (y0, x0), shape, part)
            np.testing.assert_array_equal(got, whole[r : r + block, c : c + block])


def test_blot_refuses_a_cutout_that_misses_positions():
    pixmap = _pixmap()
    median = np.zeros((400, 400), dtype=np.float32)
    with pytest.raises(ValueError, match="cut-out does not cover"):
        blot_bilinear(median[10:20, 10:20], (10, 10), median.shape, pixmap)


@pytest.mark.parametrize(
    ("kernel", "pixfrac"), [("square", 1.0), ("square", 0.5), ("point", 1.0), ("turbo", 0.8)]
)
def test_region_drizzle_equals_whole_grid(kernel, pixfrac):
    rng = np.random.default_rng(2)
    data = rng.normal(size=(NY, NX)).astype(np.float32)
    weight = rng.uniform(0.5, 1, size=(NY, NX)).astype(np.float32)
    weight[rng.random((NY, NX)) < 0.05] = 0
    maps = [_pixmap(offset=(45.37, 20.61)), _pixmap(offset=(48.1, 24.9))]
    grid = (300, 260)
    whole = Drizzle(kernel=kernel, fillval="NAN", out_shape=grid, disable_ctx=True)
    for pixmap in maps:
        whole.add_image(
            data, exptime=1.0, pixmap=pixmap, weight_map=weight, pixfrac=pixfrac, in_units="cps"
        )
    low = np.floor(np.min([m.min(axis=(0, 1)) for m in maps], axis=0)).astype(int) - 2
    high = np.ceil(np.max([m.max(axis=(0, 1)) for m in maps], axis=0)).astype(int) + 3
    (x0, y0), (x1, y1) = low, high
    inputs = [DrizzleInput.with_pixmap(data, weight, m - [x0, y0], 1.0) for m in maps]
    out, wht = drizzle_onto_region(inputs, (y1 - y0, x1 - x0), kernel=kernel, pixfrac=pixfrac)
    np.testing.assert_array_equal(out, whole.out_img[y0:y1, x0:x1])
    np.testing.assert_array_equal(wht, whole.out_wht[y0:y1, x0:x1])
    assert x0 > 0
    assert y0 > 0
    assert x1 < grid[1]
    assert y1 < grid[0]
    assert np.isnan(whole.out_img[:y0]).all()
    assert np.isnan(whole.out_img[y1:]).all()


def test_region_drizzle_holds_one_input_at_a_time():
    """Each input is released before the next one is loaded (bounding a group task's memory)."""
    rng = np.random.default_rng(3)
    alive = []

    def load(k: int) -> DrizzleInput:
        assert [ref() for ref in alive] == [None] * k, f"an input before #{k} is still held"
        data = rng.normal(size=(NY, NX)).astype(np.float32)
        item = DrizzleInput(data, np.ones_like(data), _pixmap_rows_of(k), 1.0)
        alive.append(weakref.ref(item.data))
        return item

    out, wht = drizzle_onto_region((load(k) for k in range(3)), (NY + 12, NX + 12))
    assert len(alive) == 3
    assert np.isfinite(out).any()
    assert wht.max() > 0


def _pixmap_rows_of(k: int):
    pixmap = _pixmap(offset=(3.0 + k, 4.0))
    return lambda r0, r1: pixmap[r0:r1]


@pytest.mark.parametrize(
    ("kernel", "pixfrac"),
    [("square", 1.0), ("square", 0.6), ("point", 1.0), ("turbo", 0.8), ("gaussian", 1.0)],
)
@pytest.mark.parametrize("rows", [MIN_STRIP_ROWS, 23, NY // 2])
@pytest.mark.parametrize("valid_rows", [(0, NY), (5, NY - 9)], ids=["all-rows", "bounded"])
def test_strips_equal_one_whole_call(kernel, pixfrac, rows, valid_rows):
    """Strip by strip (each with a row of neighbours either side) equals one call bit for bit
    when the input's outline is inside the output."""
    data, weight, pixmap = _strip_case(valid_rows)
    shape = (200, 190)
    whole = Drizzle(kernel=kernel, fillval="NAN", out_shape=shape, disable_ctx=True)
    whole.add_image(
        data, exptime=1.0, pixmap=pixmap, weight_map=weight, pixfrac=pixfrac, in_units="cps"
    )
    calls = []

    def pixmap_rows(r0, r1):
        calls.append((r0, r1))
        return pixmap[r0:r1]

    item = DrizzleInput(data, weight, pixmap_rows, 1.0, valid_rows, outline_inside=True)
    out, wht = drizzle_onto_region(
        [item], shape, kernel=kernel, pixfrac=pixfrac, pixmap_bytes=16 * NX * rows
    )
    v0, v1 = valid_rows
    assert len(calls) == len(strips_of(valid_rows, rows)) >= 2
    assert calls[0][0] == max(v0 - 1, 0)
    assert calls[-1][1] == min(v1 + 1, NY)
    assert np.isfinite(whole.out_img).sum() > NY * NX // 4
    np.testing.assert_array_equal(out, whole.out_img)
    np.testing.assert_array_equal(wht, whole.out_wht)


def test_an_outline_the_output_clips_is_drizzled_in_one_call():
    """Where the output clips the outline, strips would scan other pixels: one call."""
    data, weight, pixmap = _strip_case((0, NY), offset=(-20.3, -15.8))
    shape = (200, 190)
    whole = Drizzle(kernel="square", fillval="NAN", out_shape=shape, disable_ctx=True)
    whole.add_image(data, exptime=1.0, pixmap=pixmap, weight_map=weight, in_units="cps")
    calls = []

    def pixmap_rows(r0, r1):
        calls.append((r0, r1))
        return pixmap[r0:r1]

    item = DrizzleInput(data, weight, pixmap_rows, 1.0, (0, NY), outline_inside=False)
    out, wht = drizzle_onto_region([item], shape, pixmap_bytes=16 * NX * MIN_STRIP_ROWS)
    assert calls == [(0, NY)]
    np.testing.assert_array_equal(out, whole.out_img)
    assert np.isnan(whole.out_img[-1]).all()
    assert np.isfinite(whole.out_img[0]).any()


def _strip_case(valid_rows, offset=(45.37, 20.61)):
    rng = np.random.default_rng(4)
    data = rng.normal(size=(NY, NX)).astype(np.float32)
    weight = rng.uniform(0.5, 1, size=(NY, NX)).astype(np.float32)
    weight[rng.random((NY, NX)) < 0.05] = 0
    pixmap = _pixmap(offset=offset)
    pixmap[40:44, 10:13] = np.nan
    pixmap[: valid_rows[0]] = np.nan
    pixmap[valid_rows[1] :] = np.nan
    return data, weight, pixmap


def test_strip_rows_bound_the_pixel_map_bytes():
    assert strip_rows(2048) == STRIP_PIXMAP_BYTES // (16 * 2048)
    assert strip_rows(2048, 16 * 2048 * 50 + 100) == 50
    assert strip_rows(10**9) == MIN_STRIP_ROWS


def test_strips_cover_the_rows_once_and_none_is_too_thin():
    m = MIN_STRIP_ROWS
    assert strips_of((0, 3 * m), m) == [(0, m), (m, 2 * m), (2 * m, 3 * m)]
    assert strips_of((0, 3 * m + 1), m) == [(0, m), (m, 2 * m), (2 * m, 3 * m + 1)]
    assert strips_of((5, 5 + m), 2 * m) == [(5, 5 + m)]
    assert strips_of((0, 5 * m - 1), 2 * m) == [(0, 2 * m), (2 * m, 5 * m - 1)]
    assert strips_of((0, 5 * m), 2 * m) == [(0, 2 * m), (2 * m, 4 * m), (4 * m, 5 * m)]


def test_empty_region_is_fill_and_zero_weight():
    out, wht = drizzle_onto_region([], (3, 4), fillval="0")
    np.testing.assert_array_equal(out, np.zeros((3, 4), np.float32))
    np.testing.assert_array_equal(wht, np.zeros((3, 4), np.float32))


def test_blot_wholly_inside_with_last_row_and_column_positions():
    rng = np.random.default_rng(3)
    shape = (40, 50)
    median = rng.normal(size=shape).astype(np.float32)
    pixmap = np.dstack(
        [rng.uniform(0, shape[1] - 1, (20, 30)), rng.uniform(0, shape[0] - 1, (20, 30))]
    )
    pixmap[0, :5, 0] = shape[1] - 1
    pixmap[1, :5, 1] = shape[0] - 1
    pixmap[2, 0] = [shape[1] - 1, shape[0] - 1]
    reference = np.empty((20, 30), dtype=np.float32)
    blot_image(median, pixmap, out_img=reference, fillval=np.nan, iscale=1.0, interp="linear")
    np.testing.assert_array_equal(blot_bilinear(median, (0, 0), shape, pixmap), reference)


@pytest.mark.parametrize("fillval", ["NAN", "INDEF", "0", "-7.5"])
def test_fill_value_lands_where_no_weight_landed_as_in_whole_calls(fillval):
    """The fill is applied once, after every strip of every input: equal, bit for bit, to
    drizzle filling after each call, also for pixels inside the footprint that only zero
    weights reached."""
    data, weight, pixmap = _strip_case((0, NY))
    weight[60:70, 30:40] = 0
    second = _pixmap(offset=(47.9, 23.2))
    shape = (200, 190)
    whole = Drizzle(kernel="square", fillval=fillval, out_shape=shape, disable_ctx=True)
    for m in (pixmap, second):
        whole.add_image(data, exptime=1.0, pixmap=m, weight_map=weight, in_units="cps")
    items = [
        DrizzleInput(data, weight, lambda r0, r1, m=m: m[r0:r1], 1.0, (0, NY), True)
        for m in (pixmap, second)
    ]
    out, wht = drizzle_onto_region(
        items, shape, fillval=fillval, pixmap_bytes=16 * NX * MIN_STRIP_ROWS
    )
    empty = whole.out_wht == 0
    inside = empty[50:150, 60:150]
    assert inside.any()  # the zero-weight block, inside the footprint
    np.testing.assert_array_equal(out, whole.out_img)
    np.testing.assert_array_equal(wht, whole.out_wht)
    assert np.array_equal(out[empty], np.full(empty.sum(), fill_value_number(fillval)), True)
