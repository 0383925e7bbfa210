"""Build and run the graphs of a plan: mosaics, median, blot and compare.

Stages, each a dask graph run on the chosen scheduler:

1. mosaics — a task per exposure group drizzles its members onto the group's region and finds
   the group's weight threshold; the result is a ``(groups, ny, nx)`` stack chunked
   ``(1, ty, tx)`` (tiles no member touches are constants, never computed);
2. median — the stack, read in ``(groups, ty, tx)`` blocks holding the whole groups axis, masked
   by each group's threshold and reduced by a NaN-median per block;
3. blot and compare — a task per input block (with its halo) takes the median cut-out its
   pixels map into and returns the block's outlier mask.

With ``in_memory=False`` stages hand over through Zarr arrays in the scratch folder instead of
memory; the arithmetic is the same, so the results are identical.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from outlier_dask.engine.plan import Plan, tile_ranges
from outlier_dask.engine.stores import ScratchStore, read_window, write_region
from outlier_dask.engine.tasks import (
    GroupMosaic,
    GroupTiles,
    MemberOutcome,
    MemberTaskInfo,
    blot_and_flag_block,
    build_group_mosaic,
    fill_of,
    finish_member,
    masked_group_tiles,
    median_of_tile,
)
from outlier_dask.kernels.weights import mask_low_weight
from outlier_dask.parameters import OutlierParameters
from outlier_dask.runtime.schedulers import Runner

__all__ = ["EngineResult", "run_plan"]

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


def _mosaic_to_store(group, infos, params, store: ScratchStore, index: int) -> float:
    mosaic = build_group_mosaic(group, infos, params)
    write_region(store, "data", index, mosaic.region, mosaic.data)
    write_region(store, "weight", index, mosaic.region, mosaic.weight)
    return mosaic.threshold


def _stack_from_group_tiles(plan: Plan, groups: list[GroupTiles]) -> da.Array:
    """The masked stack as a dask array, chunks (1, ty, tx).

    Tiles a group touches arrive as arrays from its task; the others are made where they are
    needed, filled with the value the reference's full-grid mosaic has there.
    """
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


def _stack_from_store(plan: Plan, store: ScratchStore, thresholds: list[float]) -> da.Array:
    g = plan.n_groups
    chunks = (g, *plan.tile_shape)
    data = da.from_zarr(store.array("data"), chunks=chunks)
    weight = da.from_zarr(store.array("weight"), chunks=chunks)
    return da.map_blocks(
        _mask_stack_block, data, weight, thresholds=tuple(thresholds), dtype=np.float32
    )


def _mask_stack_block(
    data: np.ndarray, weight: np.ndarray, thresholds: tuple[float, ...]
) -> np.ndarray:
    """Apply each group's weight threshold to a (n_groups, ty, tx) block."""
    return np.stack(
        [mask_low_weight(d, w, t) for d, w, t in zip(data, weight, thresholds, strict=True)]
    )


def _median_graph(plan: Plan, stack: da.Array) -> da.Array:
    blocks = stack.rechunk((plan.n_groups, *plan.tile_shape))
    return blocks.map_blocks(median_of_tile, drop_axis=0, dtype=np.float32)


def run_plan(
    plan: Plan,
    params: OutlierParameters,
    runner: Runner,
    store: ScratchStore | None = None,
    *,
    writers: list[Callable[[np.ndarray], Any]] | None = None,
    keep_median: bool = False,
    keep_masks: bool = False,
) -> EngineResult:
    """Run all stages of ``plan``; ``store`` is required when ``params.in_memory`` is False.

    Parameters
    ----------
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
    fill = fill_of(params)
    infos = [_task_info(plan, m.index) for m in plan.members]

    start = time.perf_counter()
    if params.in_memory:
        tasks = [
            dask.delayed(masked_group_tiles)(
                group,
                [infos[i] for i in group.members],
                params,
                plan.grid_shape,
                plan.tile_shape,
                keep,
            )
            for group in plan.groups
        ]
        groups = list(runner.compute(*tasks, stage="drizzle"))
        thresholds = [g.threshold for g in groups]
        mosaics = [g.mosaic for g in groups] if keep else None
        stack = _stack_from_group_tiles(plan, groups)
        del groups
    else:
        store.create(plan.n_groups, plan.grid_shape, plan.tile_shape, data_fill=fill)
        tasks = [
            dask.delayed(_mosaic_to_store)(
                group, [infos[i] for i in group.members], params, store, g
            )
            for g, group in enumerate(plan.groups)
        ]
        thresholds = list(runner.compute(*tasks, stage="drizzle"))
        mosaics = None
        stack = _stack_from_store(plan, store, thresholds)
    timings["drizzle"] = time.perf_counter() - start
    log.info("stage drizzle: %d grouped mosaics in %.1f s", plan.n_groups, timings["drizzle"])

    start = time.perf_counter()
    median_lazy = _median_graph(plan, stack)
    if params.in_memory:
        (median,) = runner.compute(median_lazy, stage="median")
    else:
        # Median blocks coincide with the Zarr chunks, so blocks are written without a lock.
        target = store.array("median", "r+")
        runner.compute(da.store(median_lazy, target, lock=False, compute=False), stage="median")
        median = None
    timings["median"] = time.perf_counter() - start
    log.info("stage median: %d x %d in %.1f s", *plan.grid_shape, timings["median"])

    start = time.perf_counter()
    blocks_by_member: list[list] = [[] for _ in plan.members]
    for block in plan.blocks:
        if block.cutout is None:
            cutout = None
        elif median is not None:
            (y0, y1), (x0, x1) = block.cutout
            cutout = median[y0:y1, x0:x1].copy()
        else:
            cutout = dask.delayed(read_window)(store, "median", block.cutout)
        blocks_by_member[block.member].append(
            dask.delayed(blot_and_flag_block)(
                block, infos[block.member], cutout, plan.grid_shape, params, keep
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
    outcomes: list[MemberOutcome] = list(runner.compute(*finish, stage="blot+flag"))
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
        median = np.asarray(store.array("median")[...])
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


def _mosaics_from_store(
    plan: Plan, store: ScratchStore, thresholds: list[float]
) -> list[GroupMosaic]:
    data, weight = store.array("data"), store.array("weight")
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
