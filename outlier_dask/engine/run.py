"""Build and run the graphs of a plan: mosaics, median, blot and compare.

Stages, each a dask graph run on the chosen scheduler:

1. mosaics — a task per exposure group drizzles its members onto the group's region and finds
   the group's weight threshold;
2. median — a NaN-median over groups per tile of the grid, of the masked stack;
3. blot and compare — a task per input block (with its halo) blots the median onto the block
   and returns its outlier mask; a task per input assembles the mask and writes the product.

Where the stages hand over depends on the scheduler. On a local one (``shared``), the masked
stack (in memory) and the median live in memory shared with forked workers: group tasks write
their plane, median tasks their tile, and blot tasks read the whole median. Otherwise the
stack travels through the scheduler as ``(1, ty, tx)`` tiles (tiles no member touches are
constants, never computed) and blot tasks receive median cut-outs. With ``in_memory=False``
mosaics and weights go through Zarr arrays in the scratch folder instead (and the median too,
when not shared). The arithmetic is the same on every path, so the results are identical.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
from dask.base import tokenize

from outlier_dask.engine.plan import BlockPlan, Plan, tile_ranges, tiles_covering
from outlier_dask.engine.shared import SharedArray
from outlier_dask.engine.stores import ScratchStore, read_window
from outlier_dask.engine.tasks import (
    GroupMosaic,
    GroupTiles,
    MemberOutcome,
    MemberTaskInfo,
    blot_and_flag_block,
    fill_of,
    finish_member,
    flag_member,
    masked_group_tiles,
    median_into,
    median_of_tile,
    mosaic_into_stack,
    mosaic_into_store,
    outside_value,
    store_stack_block,
)
from outlier_dask.parameters import OutlierParameters
from outlier_dask.runtime.schedulers import Runner

__all__ = ["EngineResult", "run_plan", "shared_array_specs"]

if TYPE_CHECKING:
    import dask.array as da

log = logging.getLogger(__name__)


@dataclass
class EngineResult:
    """What the engine computed.

    Attributes
    ----------
    masks : list of (ndarray, (ny, nx) bool, or None)
        Outlier mask per member, in member order (None where a writer consumed it).
    median : ndarray, (ny, nx) float32, or None
        The median (kept only when intermediate results are wanted).
    mosaics : list of GroupMosaic or None
        Grouped mosaics (kept only when intermediate results are wanted).
    blots : list of ndarray or None
        Blotted median per member (kept only when intermediate results are wanted).
    thresholds : list of float
        Weight threshold per group.
    timings : dict of str to float
        Wall seconds per stage.
    valid_pixels : list of int
        Per member, pixels with a finite SCI.
    covered_pixels : list of int
        Per member, pixels where the blotted median is finite (the median reaches them).
    flagged : list of int
        Per member, pixels flagged as outliers.
    """

    masks: list[np.ndarray | None]
    median: np.ndarray | None
    mosaics: list[GroupMosaic] | None
    blots: list[np.ndarray] | None
    thresholds: list[float]
    timings: dict[str, float] = field(default_factory=dict)
    valid_pixels: list[int] = field(default_factory=list)
    covered_pixels: list[int] = field(default_factory=list)
    flagged: list[int] = field(default_factory=list)


def _task_info(plan: Plan, index: int, source=None) -> MemberTaskInfo:
    member = plan.members[index]
    return MemberTaskInfo(
        source=source if source is not None else member.source,
        shape=member.shape,
        pixel_map=plan.pixel_maps[index] if plan.pixel_maps else None,
        exposure_time=member.exposure_time,
        weight_time=member.weight_time,
        background_level=member.background_level,
    )


def _stack_from_group_tiles(plan: Plan, groups: list[GroupTiles]) -> da.Array:
    """The masked stack as a dask array, chunks (1, ty, tx).

    Tiles a group touches arrive as arrays from its task; the others are made where they are
    needed, filled with the value the reference's full-grid mosaic has there.
    """
    import dask.array as da  # the shared-memory runs of local schedulers do without it

    ny, nx = plan.grid_shape
    rows, cols = tile_ranges(ny, plan.tile_shape[0]), tile_ranges(nx, plan.tile_shape[1])
    name = "masked-stack-" + tokenize(plan.product_name, len(groups), plan.grid_shape)
    graph = {}
    for g, group in enumerate(groups):
        for i, (r0, r1) in enumerate(rows):
            for j, (c0, c1) in enumerate(cols):
                tile = group.tiles.get((i, j))
                if tile is None:
                    shape = (1, r1 - r0, c1 - c0)
                    graph[(name, g, i, j)] = (
                        functools.partial(np.full, shape, group.outside, dtype=np.float32),
                    )
                else:
                    graph[(name, g, i, j)] = tile[np.newaxis]
    chunks = ((1,) * len(groups), tuple(b - a for a, b in rows), tuple(b - a for a, b in cols))
    return da.Array(graph, name, chunks, dtype=np.float32)


def _stack_from_store(plan: Plan, store: ScratchStore, outside: tuple) -> da.Array:
    """The masked stack stored out of core, as a dask array of (groups, ty, tx) blocks."""
    import dask.array as da

    data = da.from_zarr(store.array("data"), chunks=(plan.n_groups, *plan.tile_shape))
    return da.map_blocks(_store_block, data, outside=outside, dtype=np.float32)


def _store_block(block: np.ndarray, outside: tuple, block_info=None) -> np.ndarray:
    (_, _), rows, cols = block_info[0]["array-location"]
    return store_stack_block(block.copy(), (rows, cols), outside)


def _median_graph(plan: Plan, stack: da.Array) -> da.Array:
    blocks = stack.rechunk((plan.n_groups, *plan.tile_shape))
    return blocks.map_blocks(median_of_tile, drop_axis=0, dtype=np.float32)


def shared_array_specs(plan: Plan, params: OutlierParameters) -> dict[str, tuple]:
    """The shared arrays a run on a local scheduler uses: the median, and in memory the stack.

    Returns
    -------
    dict of str to (shape, dtype name)
        For :func:`outlier_dask.engine.shared.shared_arrays`.
    """
    specs: dict[str, tuple] = {"median": (plan.grid_shape, "float32")}
    if params.in_memory:
        specs["stack"] = ((plan.n_groups, *plan.grid_shape), "float32")
    return specs


def run_plan(
    plan: Plan,
    params: OutlierParameters,
    runner: Runner,
    store: ScratchStore | None = None,
    *,
    shared: dict[str, SharedArray] | None = None,
    writers: list[Callable[[np.ndarray], Any]] | None = None,
    keep_median: bool = False,
    keep_masks: bool = False,
) -> EngineResult:
    """Run all stages of ``plan``; ``store`` is required when ``params.in_memory`` is False.

    Parameters
    ----------
    shared : dict of str to SharedArray, optional
        The arrays of :func:`shared_array_specs`, mapped before the runner's workers were
        forked (local schedulers only). With them, stages hand over in shared memory and blot
        reads the whole median; without them, through the scheduler or the store.
    writers : list of callables, optional
        Per member, ``writer(mask)`` run in a worker once the member's mask is complete (it
        writes the product). Without writers the masks are returned.
    keep_median : bool
        Return the median even without ``save_intermediate_results`` (for plots).
    keep_masks : bool
        Return the masks even when writers consume them.
    """
    timings: dict[str, float] = {}
    keep = params.save_intermediate_results
    infos = [_task_info(plan, m.index) for m in plan.members]

    start = time.perf_counter()
    thresholds, mosaics, stack = _mosaic_stage(plan, params, runner, store, shared, infos)
    timings["drizzle"] = time.perf_counter() - start
    log.info("stage drizzle: %d grouped mosaics in %.1f s", plan.n_groups, timings["drizzle"])

    start = time.perf_counter()
    median, median_for_blot = _median_stage(plan, params, runner, store, shared, stack, thresholds)
    timings["median"] = time.perf_counter() - start
    log.info("stage median: %d x %d in %.1f s", *plan.grid_shape, timings["median"])

    start = time.perf_counter()
    if median_for_blot is not None:
        outcomes = _flag_members_shared(
            plan, params, runner, infos, median_for_blot, writers, keep_masks
        )
    else:
        outcomes = _flag_members(plan, params, runner, infos, median, store, writers, keep_masks)
    timings["blot_flag"] = time.perf_counter() - start
    # Products are written inside the per-input tasks: report the task-seconds spent writing.
    timings["write"] = sum(o.write_seconds for o in outcomes)
    log.info(
        "stage blot+flag+write: %d blocks in %.1f s (%.1f task-seconds writing)",
        len(plan.blocks),
        timings["blot_flag"],
        timings["write"],
    )

    keep_median = keep or keep_median
    if keep_median and median is None:
        # A copy: the shared mapping is released when the run ends.
        median = (
            np.array(median_for_blot.view())
            if median_for_blot is not None
            else np.asarray(store.array("median")[...])
        )
    if keep and mosaics is None:
        mosaics = _mosaics_from_store(plan, store, thresholds)
    return EngineResult(
        masks=[o.mask for o in outcomes],
        median=median if keep_median else None,
        mosaics=mosaics,
        blots=[o.blot for o in outcomes] if keep else None,
        thresholds=thresholds,
        timings=timings,
        valid_pixels=[o.valid for o in outcomes],
        covered_pixels=[o.covered for o in outcomes],
        flagged=[o.flagged for o in outcomes],
    )


def _flag_members_shared(
    plan: Plan,
    params: OutlierParameters,
    runner: Runner,
    infos: list[MemberTaskInfo],
    median: SharedArray,
    writers: list[Callable[[np.ndarray], Any]] | None,
    keep_masks: bool,
) -> list[MemberOutcome]:
    """Stage 3 on a local scheduler: one task per input, blotting the shared median."""
    keep = params.save_intermediate_results
    blocks_by_member: list[list[BlockPlan]] = [[] for _ in plan.members]
    for block in plan.blocks:
        blocks_by_member[block.member].append(block)
    tasks = [
        dask.delayed(flag_member)(
            member.shape,
            blocks_by_member[i],
            infos[i],
            median,
            plan.grid_shape,
            params,
            writers[i] if writers else None,
            keep_masks or not writers,
            keep,
        )
        for i, member in enumerate(plan.members)
    ]
    return list(runner.compute(*tasks, stage="blot+flag"))


def _flag_members(
    plan: Plan,
    params: OutlierParameters,
    runner: Runner,
    infos: list[MemberTaskInfo],
    median: np.ndarray | None,
    store: ScratchStore | None,
    writers: list[Callable[[np.ndarray], Any]] | None,
    keep_masks: bool,
) -> list[MemberOutcome]:
    """Stage 3 elsewhere: a task per block with its median cut-out, a task per input after."""
    keep = params.save_intermediate_results
    blocks_by_member: list[list] = [[] for _ in plan.members]
    for block in plan.blocks:
        if block.cutout is None:
            source = None
        elif median is not None:
            (y0, y1), (x0, x1) = block.cutout
            source = median[y0:y1, x0:x1].copy()
        else:
            source = dask.delayed(read_window)(store, "median", block.cutout)
        blocks_by_member[block.member].append(
            dask.delayed(blot_and_flag_block)(
                block, infos[block.member], source, plan.grid_shape, params, keep
            )
        )
    # Each input's blocks feed one task that assembles its mask and, for file inputs, writes
    # its product, so masks never gather in this process (only what callers ask to keep).
    finish = [
        dask.delayed(finish_member)(
            plan.members[i].shape,
            blocks,
            writers[i] if writers else None,
            keep_masks or not writers,
            keep,
        )
        for i, blocks in enumerate(blocks_by_member)
    ]
    return list(runner.compute(*finish, stage="blot+flag"))


def _mosaic_stage(
    plan: Plan,
    params: OutlierParameters,
    runner: Runner,
    store: ScratchStore | None,
    shared: dict[str, SharedArray] | None,
    infos: list[MemberTaskInfo],
) -> tuple[list[float], list[GroupMosaic] | None, da.Array | None]:
    """Stage 1: every group's mosaic, where the median stage will read it.

    Returns the groups' thresholds, their unmasked mosaics (kept only for intermediate
    results), and the masked stack as a dask array when it travels through the scheduler.
    """
    keep = params.save_intermediate_results
    members_of = [[infos[i] for i in group.members] for group in plan.groups]
    if not params.in_memory:
        store.create(
            plan.n_groups,
            plan.grid_shape,
            plan.tile_shape,
            mosaic_fill=fill_of(params) if keep else None,
        )
        tasks = [
            dask.delayed(mosaic_into_store)(group, members_of[g], params, store, g, keep)
            for g, group in enumerate(plan.groups)
        ]
        thresholds = list(runner.compute(*tasks, stage="drizzle"))
        if shared:
            return thresholds, None, None
        outside = _outside_of_groups(plan, params, thresholds)
        return thresholds, None, _stack_from_store(plan, store, outside)
    if shared:
        tasks = [
            dask.delayed(mosaic_into_stack)(
                group, members_of[g], params, shared["stack"], g, _tiles_of(plan, group), keep
            )
            for g, group in enumerate(plan.groups)
        ]
        done = runner.compute(*tasks, stage="drizzle")
        mosaics = [mosaic for _, mosaic in done] if keep else None
        return [threshold for threshold, _ in done], mosaics, None
    tasks = [
        dask.delayed(masked_group_tiles)(
            group, members_of[g], params, plan.grid_shape, plan.tile_shape, keep
        )
        for g, group in enumerate(plan.groups)
    ]
    groups = list(runner.compute(*tasks, stage="drizzle"))
    mosaics = [g.mosaic for g in groups] if keep else None
    return [g.threshold for g in groups], mosaics, _stack_from_group_tiles(plan, groups)


def _median_stage(
    plan: Plan,
    params: OutlierParameters,
    runner: Runner,
    store: ScratchStore | None,
    shared: dict[str, SharedArray] | None,
    stack: da.Array | None,
    thresholds: list[float],
) -> tuple[np.ndarray | None, SharedArray | None]:
    """Stage 2: the median, in this process, in the store, or shared.

    Returns the median when it is an array in this process, and the shared median blot tasks
    read (None when not shared).
    """
    if shared:
        outside = _outside_of_groups(plan, params, thresholds)
        if params.in_memory:
            source = {
                "stack": shared["stack"],
                "outside": tuple(
                    (_tiles_of(plan, group), value)
                    for group, (_, value) in zip(plan.groups, outside, strict=True)
                ),
            }
        else:
            source = {"store": store, "outside": outside}
        # A tile no group's region meets holds every group's outside value: its median is
        # that of those values, found here once instead of by a task per tile.
        empty_tile = median_of_tile(
            np.array([v for _, v in outside], dtype=np.float32)[:, None, None]
        )
        ny, nx = plan.grid_shape
        median = shared["median"].view()
        tasks = []
        for rows in tile_ranges(ny, plan.tile_shape[0]):
            for cols in tile_ranges(nx, plan.tile_shape[1]):
                if any(_meets(g.region, (rows, cols)) for g in plan.groups):
                    tasks.append(
                        dask.delayed(median_into)(shared["median"], (rows, cols), **source)
                    )
                else:
                    median[slice(*rows), slice(*cols)] = empty_tile[0, 0]
        del median
        runner.compute(*tasks, stage="median")
        return None, shared["median"]
    median_lazy = _median_graph(plan, stack)
    if params.in_memory:
        (median,) = runner.compute(median_lazy, stage="median")
        return median, None
    import dask.array as da

    # Median blocks coincide with the Zarr chunks, so blocks are written without a lock.
    target = store.array("median", "r+")
    runner.compute(da.store(median_lazy, target, lock=False, compute=False), stage="median")
    return None, None


def _tiles_of(plan: Plan, group) -> tuple | None:
    """The whole grid tiles holding ``group``'s region."""
    return tiles_covering(group.region, plan.tile_shape, plan.grid_shape)


def _meets(region: tuple, window: tuple) -> bool:
    """Whether two half-open rectangles ``((y0, y1), (x0, x1))`` share a pixel."""
    (a0, a1), (b0, b1) = region
    (c0, c1), (d0, d1) = window
    return max(a0, c0) < min(a1, c1) and max(b0, d0) < min(b1, d1)


def _outside_of_groups(
    plan: Plan, params: OutlierParameters, thresholds: list[float]
) -> tuple[tuple[tuple, float], ...]:
    """Per group, its region and what its masked mosaic holds beyond it."""
    return tuple(
        (group.region, outside_value(t, params))
        for group, t in zip(plan.groups, thresholds, strict=True)
    )


def _mosaics_from_store(
    plan: Plan, store: ScratchStore, thresholds: list[float]
) -> list[GroupMosaic]:
    data, weight = store.array("mosaic"), store.array("weight")
    mosaics = []
    for g, group in enumerate(plan.groups):
        (y0, y1), (x0, x1) = group.region
        mosaics.append(
            GroupMosaic(
                group.region,
                np.asarray(data[g, y0:y1, x0:x1]),
                np.asarray(weight[g, y0:y1, x0:x1]),
                thresholds[g],
            )
        )
    return mosaics
