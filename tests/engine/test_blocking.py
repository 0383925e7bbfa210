"""The engine's results do not depend on how work is cut: tiles, blocks, stores, schedulers."""

from __future__ import annotations

import os

import numpy as np
import pytest
from engine_runs import run_engine

from outlier_dask.engine.handover import LOCAL_STORE, SHARED, STORE, WORKERS, planes_in
from outlier_dask.engine.plan import make_plan
from outlier_dask.engine.shared import SharedArray, shared_arrays
from outlier_dask.engine.tasks import (
    FlagSettings,
    MedianCutout,
    MemberTaskInfo,
    blot_and_flag_block,
)
from outlier_dask.geometry.windows import contains, tile_ranges
from outlier_dask.io.members import members_from_models
from outlier_dask.parameters import OutlierParameters
from outlier_dask.synthetic import make_models


@pytest.fixture(scope="module")
def models():
    models, _ = make_models(n_exposures=3, n_detectors=2, detector_shape=(72, 80), seed=3)
    return models


def _run(models, tmp_path=None, kind=SHARED, **values):
    """Run the engine with the stack and median handed over in ``kind``."""
    params = OutlierParameters(scheduler=values.pop("scheduler", "synchronous"), **values)
    plan = make_plan(members_from_models(models), "test", params)
    return plan, run_engine(plan, params, tmp_path, kind)


@pytest.fixture(scope="module")
def reference(models):
    return _run(models, tile_size=4096, block_size=4096, save_intermediate_results=True)


def test_reference_flags_something(reference):
    _, result = reference
    assert sum(int(m.sum()) for m in result.masks) > 20


@pytest.mark.parametrize("kind", [SHARED, LOCAL_STORE, STORE, WORKERS])
@pytest.mark.parametrize(
    ("tile_size", "block_size"), [(16, 16), (37, 23), (64, 7), (1000, 3), (5, 50)]
)
def test_masks_do_not_depend_on_tiles_or_blocks(
    models, reference, tile_size, block_size, kind, tmp_path
):
    """Cut-outs blotted in numpy (store, workers) and the whole shared median blotted by the
    compiled drizzle give the same medians, blots and masks, whatever the tiles and blocks."""
    _, expected = reference
    _, result = _run(
        models,
        tmp_path,
        kind=kind,
        tile_size=tile_size,
        block_size=block_size,
        save_intermediate_results=True,
    )
    for want, got in zip(expected.masks, result.masks, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(result.median, expected.median)
    for want, got in zip(expected.blots, result.blots, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def robust_reference(models):
    return _run(
        models,
        tile_size=4096,
        block_size=4096,
        save_intermediate_results=True,
        detection="robust",
        backg=-0.1,  # the sky (0.15 MJy/sr) then counts as source: the tolerance is not 0
    )


def test_robust_changes_the_median_and_the_flags(models, reference, robust_reference):
    _, default = reference
    _, robust = robust_reference
    assert not np.array_equal(robust.median, default.median, equal_nan=True)
    assert any(not np.array_equal(r, d) for r, d in zip(robust.masks, default.masks, strict=True))


@pytest.mark.parametrize(
    ("kind", "tile_size", "block_size"),
    [(SHARED, 16, 16), (LOCAL_STORE, 37, 23), (STORE, 1000, 3), (WORKERS, 37, 23)],
)
def test_robust_masks_do_not_depend_on_tiles_blocks_or_kind(
    models, robust_reference, tile_size, block_size, kind, tmp_path
):
    """The rejection median and the source tolerance are exact on every cut and handover."""
    _, expected = robust_reference
    _, result = _run(
        models,
        tmp_path,
        kind=kind,
        tile_size=tile_size,
        block_size=block_size,
        save_intermediate_results=True,
        detection="robust",
        backg=-0.1,
    )
    for want, got in zip(expected.masks, result.masks, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(result.median, expected.median)


@pytest.mark.parametrize("block_size", [4096, 80, 23])
def test_a_blocks_cutout_is_its_own_borders_image_plus_the_margin(models, block_size):
    """Whole-frame blocks reuse the bounds the plan computed for the group regions; the
    cut-outs are still each block's own: its border's mapped extremes, 2 pixels out, clipped."""
    params = OutlierParameters(block_size=block_size)
    plan = make_plan(members_from_models(models), "test", params)
    gy, gx = plan.grid_shape
    assert len(plan.blocks) > (len(plan.members) if block_size < 72 else 0)
    for block in plan.blocks:
        xmin, xmax, ymin, ymax = plan.pixel_maps[block.member].border_bounds(*block.outer)
        want = (
            (max(0, int(np.floor(ymin)) - 2), min(gy, int(np.ceil(ymax)) + 3)),
            (max(0, int(np.floor(xmin)) - 2), min(gx, int(np.ceil(xmax)) + 3)),
        )
        assert block.cutout == want
    region_of = {i: group.region for group in plan.groups for i in group.members}
    assert all(contains(region_of[b.member], b.cutout) for b in plan.blocks)


@pytest.mark.parametrize("block_size", [1, 2])
def test_blocks_smaller_than_the_halo(models, reference, block_size):
    """Blocks of 1 and 2 pixels (the halo is 2) still give the whole-frame mask."""
    plan, expected = reference
    member = plan.members[0]
    params = OutlierParameters(block_size=block_size)
    settings = FlagSettings.from_parameters(params)
    small = make_plan(plan.members, "test", params)
    info = MemberTaskInfo(
        member.source,
        member.shape,
        small.pixel_maps[0],
        member.exposure_time,
        member.weight_time,
        member.background_level,
    )
    mask = np.zeros(member.shape, dtype=bool)
    for block in small.blocks:
        if block.member != 0:
            continue
        cutout = None
        if block.cutout is not None:
            (y0, y1), (x0, x1) = block.cutout
            cutout = MedianCutout(expected.median[y0:y1, x0:x1], block.cutout)
        result = blot_and_flag_block(block, info, cutout, small.grid_shape, settings)
        (r0, r1), (c0, c1) = block.inner
        mask[r0:r1, c0:c1] = result.mask
    np.testing.assert_array_equal(mask, expected.masks[0])


@pytest.mark.parametrize("kind", [LOCAL_STORE, STORE])
@pytest.mark.parametrize("scheduler", ["synchronous", "processes"])
def test_on_disk_equals_in_memory(models, reference, tmp_path, scheduler, kind):
    _, expected = reference
    _, result = _run(
        models,
        tmp_path,
        kind=kind,
        scheduler=scheduler,
        in_memory=False,
        tile_size=48,
        save_intermediate_results=True,
    )
    np.testing.assert_array_equal(result.median, expected.median)
    for want, got in zip(expected.masks, result.masks, strict=True):
        np.testing.assert_array_equal(got, want)
    for want, got in zip(expected.mosaics, result.mosaics, strict=True):
        np.testing.assert_array_equal(got.data, want.data)
        np.testing.assert_array_equal(got.weight, want.weight)
    assert list(tmp_path.iterdir()) == [], "scratch must be removed after the run"


@pytest.mark.parametrize("kind", [SHARED, LOCAL_STORE, STORE, WORKERS])
@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_schedulers_agree(models, reference, scheduler, kind, tmp_path):
    """Forked workers write their mosaics and median tiles into memory shared with the run,
    or into the store, or return them as results; every way gives the same masks."""
    _, expected = reference
    _, result = _run(
        models,
        tmp_path,
        kind=kind,
        scheduler=scheduler,
        n_workers=2,
        tile_size=48,
        block_size=40,
    )
    for want, got in zip(expected.masks, result.masks, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", [SHARED, LOCAL_STORE, STORE, WORKERS])
def test_without_resampling_blocks_agree(models, kind, tmp_path):
    _, whole = _run(models, resample_data=False, block_size=4096)
    _, blocked = _run(models, tmp_path, kind=kind, resample_data=False, block_size=9, tile_size=13)
    assert sum(int(m.sum()) for m in whole.masks) > 0
    for want, got in zip(whole.masks, blocked.masks, strict=True):
        np.testing.assert_array_equal(got, want)


def test_shared_array_outside_the_run_is_a_clear_error():
    """A process that did not fork from the run (a distributed worker) gets a clear error."""
    with shared_arrays({"median": ((3, 4), "float32")}) as arrays:
        handle = arrays["median"]
        child = os.fork()
        if child == 0:  # a forked worker writes; the run's process must see it
            handle.view()[1, 2] = 1.5
            os._exit(0)
        os.waitpid(child, 0)
        view = handle.view()
        assert view.dtype == np.float32
        np.testing.assert_array_equal(view, np.where(np.arange(12) == 6, 1.5, 0).reshape(3, 4))
        del view
    stale = SharedArray(handle.key, handle.shape, handle.dtype)
    with pytest.raises(RuntimeError, match="not mapped in process .* processes, threads"):
        stale.view()


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="Linux memory files")
def test_shared_stack_larger_than_memory_and_swap_maps_and_commits_only_what_is_written():
    """A survey's groups x grid stack may exceed memory and swap (the kernel's overcommit
    heuristic refuses such an anonymous mapping); only written pages are committed."""
    with open("/proc/meminfo") as info:
        kib = {k: int(v.split()[0]) for k, v in (line.split(":") for line in info)}
    size = 2 * (kib["MemTotal"] + kib["SwapTotal"]) * 1024
    shape = (8, size // (8 * 4 * 2**16), 2**16)
    with shared_arrays({"stack": (shape, "float32")}) as arrays:
        view = arrays["stack"].view()
        assert view.nbytes > size - 8 * 4 * 2**16
        view[3, 1000, :] = 2.5
        view[7, -1, -5:] = np.nan
        assert view[3, 1000].sum() == 2.5 * 2**16
        assert np.isnan(view[7, -1, -5:]).all()
        assert view[0, 0, 0] == 0
        del view


@pytest.fixture(scope="module")
def sparse_models():
    """Dithers of 90% of a detector: grid tiles met by 0, 1, 2 or all 3 groups."""
    models, _ = make_models(
        n_exposures=3, n_detectors=2, detector_shape=(72, 80), seed=3, dither_fraction=0.9
    )
    return models


@pytest.mark.parametrize("kind", [SHARED, LOCAL_STORE, STORE, WORKERS])
@pytest.mark.parametrize(
    "values", [{}, {"fillval": "0", "maskpt": 0.0}], ids=["defaults", "fill-0-maskpt-0"]
)
def test_tiles_a_group_does_not_meet_hold_its_outside_value(sparse_models, tmp_path, kind, values):
    """Planes hold a group's mosaic only on the tiles it meets, its outside value elsewhere;
    medians, blots and masks equal a run whose tiles hold the whole grid."""
    plan, expected = _run(
        sparse_models, tile_size=4096, block_size=32, save_intermediate_results=True, **values
    )
    _, result = _run(
        sparse_models,
        tmp_path,
        kind=kind,
        tile_size=16,
        block_size=32,
        save_intermediate_results=True,
        **values,
    )
    ny, nx = plan.grid_shape
    regions = [g.region for g in plan.groups]
    untouched = [
        (rows, cols)
        for rows in tile_ranges(ny, 16)
        for cols in tile_ranges(nx, 16)
        if not any(
            max(r[0][0], rows[0]) < min(r[0][1], rows[1])
            and max(r[1][0], cols[0]) < min(r[1][1], cols[1])
            for r in regions
        )
    ]
    assert len(untouched) > 5
    np.testing.assert_array_equal(result.median, expected.median)
    for want, got in zip(expected.blots, result.blots, strict=True):
        np.testing.assert_array_equal(got, want)
    for want, got in zip(expected.masks, result.masks, strict=True):
        np.testing.assert_array_equal(got, want)
    assert sum(int(m.sum()) for m in result.masks) > 10


def test_a_tiles_block_holds_the_planes_that_may_hold_a_value_there():
    """A group's plane is in a tile's block where it wrote, or where its outside value is one."""
    layout = (
        (((0, 16), (0, 16)), np.nan),  # wrote the tile
        (((16, 32), (0, 16)), np.nan),  # wrote the tile below only
        (None, np.nan),  # wrote nothing
        (None, 0.0),  # wrote nothing, holds its fill value everywhere (threshold 0)
        (((8, 24), (8, 24)), np.nan),  # wrote part of the tile
        (((40, 48), (0, 8)), 0.0),  # wrote elsewhere, holds its fill value around it
    )
    assert planes_in(layout, ((0, 16), (0, 16))) == [0, 3, 4, 5]
    assert planes_in(layout, ((16, 32), (0, 16))) == [1, 3, 4, 5]
    assert planes_in(layout, ((0, 16), (24, 40))) == [3, 5]
    assert planes_in(layout[:3], ((0, 16), (24, 40))) == []
