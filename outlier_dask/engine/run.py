"""Build and run the graphs of a plan: mosaics, median, blot and compare.

Stages, each written once against the run's :class:`~outlier_dask.engine.handover.Handover`
(which decides where the stack and the median live):

1. mosaics: a task per exposure group drizzles its members onto the group's region, finds
   the group's weight threshold, and writes its masked plane of the stack;
2. median: one lazy dask expression, a NaN-median over the groups axis of ``(G, ty, tx)``
   blocks of the stack, kept where the handover says (stored, or persisted on workers);
3. blot and compare: a task per input blots the median onto each of its blocks (with their
   halo), flags outliers, assembles the mask and writes the product.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import dask
import numpy as np

from outlier_dask.engine.handover import Handover
from outlier_dask.engine.plan import BlockPlan, Plan
from outlier_dask.engine.tasks import (
    DrizzleSettings,
    FlagSettings,
    GroupMosaic,
    InputOutcome,
    MemberTaskInfo,
    drizzle_group,
    flag_input,
)
from outlier_dask.kernels.combine import nanmedian_reject_highest
from outlier_dask.kernels.median import nanmedian_stack
from outlier_dask.parameters import OutlierParameters

__all__ = ["EngineResult", "Executor", "run_plan"]

log = logging.getLogger(__name__)


class Executor(Protocol):
    """What the engine needs of a scheduler (``runtime.schedulers.Runner`` is one)."""

    def compute(self, *collections: Any, stage: str = ...) -> tuple:
        """Compute collections and return their values in this process."""

    def persist(self, *collections: Any, stage: str = ...) -> tuple:
        """Compute collections and keep their values where they were computed."""


@dataclass
class EngineResult:
    """What the engine computed.

    Attributes
    ----------
    masks : list of (ndarray, (ny, nx) bool, or None)
        Outlier mask per member, in member order (None where a writer consumed it).
    median : ndarray, (ny, nx) float32, or None
        The median (kept only when intermediate results or a plot are wanted).
    mosaics : list of GroupMosaic or None
        Grouped mosaics (kept only when intermediate results are wanted).
    blots : list of ndarray or None
        Blotted median per member (kept only when intermediate results are wanted).
    thresholds : list of float
        Weight threshold per group.
    timings : dict of str to float
        Wall seconds per stage.
    valid_pixels, covered_pixels, flagged : list of int
        Per member: pixels with a finite SCI, where the blotted median is finite, flagged.
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


def _task_info(plan: Plan, index: int) -> MemberTaskInfo:
    member = plan.members[index]
    return MemberTaskInfo(
        source=member.source,
        shape=member.shape,
        pixel_map=plan.pixel_maps[index] if plan.pixel_maps else None,
        exposure_time=member.exposure_time,
        weight_time=member.weight_time,
        background_level=member.background_level,
    )


def run_plan(
    plan: Plan,
    params: OutlierParameters,
    runner: Executor,
    handover: Handover,
    *,
    writers: list[Callable[[np.ndarray], Any]] | None = None,
    keep_median: bool = False,
    keep_masks: bool = False,
) -> EngineResult:
    """Run all stages of ``plan`` through ``handover``.

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
    infos = [_task_info(plan, m.index) for m in plan.members]

    started = time.perf_counter()
    settings = DrizzleSettings.from_parameters(params)
    tasks = [
        dask.delayed(drizzle_group)(
            group, [infos[i] for i in group.members], settings, handover.planes, g, keep
        )
        for g, group in enumerate(plan.groups)
    ]
    outcomes, layout, thresholds, mosaics = handover.run_groups(tasks, runner)
    timings["drizzle"] = time.perf_counter() - started
    # With a progress display each stage ends with its line; this summary is then DEBUG.
    level = logging.INFO if getattr(runner, "progress", None) is None else logging.DEBUG
    log.log(level, "stage drizzle: %d grouped mosaics in %.1f s", plan.n_groups, timings["drizzle"])

    started = time.perf_counter()
    median = handover.median(outcomes, layout, _combine_of(params))
    handover.keep_median(median, runner)
    del outcomes  # a cluster may now forget the group results (the median holds what is left)
    timings["median"] = time.perf_counter() - started
    log.log(level, "stage median: %d x %d in %.1f s", *plan.grid_shape, timings["median"])

    started = time.perf_counter()
    outcomes_by_input = _flag_inputs(plan, params, runner, handover, infos, writers, keep_masks)
    timings["blot_flag"] = time.perf_counter() - started
    timings["write"] = sum(o.write_seconds for o in outcomes_by_input)
    log.log(
        level,
        "stage blot+flag+write: %d blocks in %.1f s (%.1f task-seconds writing)",
        len(plan.blocks),
        timings["blot_flag"],
        timings["write"],
    )
    return EngineResult(
        masks=[o.mask for o in outcomes_by_input],
        median=handover.median_array(runner) if keep or keep_median else None,
        mosaics=mosaics if keep else None,
        blots=[o.blot for o in outcomes_by_input] if keep else None,
        thresholds=thresholds,
        timings=timings,
        valid_pixels=[o.valid for o in outcomes_by_input],
        covered_pixels=[o.covered for o in outcomes_by_input],
        flagged=[o.flagged for o in outcomes_by_input],
    )


def _combine_of(params: OutlierParameters) -> Callable[[np.ndarray], np.ndarray]:
    """The per-block statistic of the median stage: jwst's NaN-median, or with rejection."""
    max_groups = params.detection_piece("nhigh_groups")
    if max_groups < 2:
        return nanmedian_stack
    return functools.partial(nanmedian_reject_highest, max_groups=max_groups)


def _flag_inputs(
    plan: Plan,
    params: OutlierParameters,
    runner: Executor,
    handover: Handover,
    infos: list[MemberTaskInfo],
    writers: list[Callable[[np.ndarray], Any]] | None,
    keep_masks: bool,
) -> list[InputOutcome]:
    """Stage 3: one task per input, its blocks' medians from the handover."""
    keep = params.save_intermediate_results
    settings = FlagSettings.from_parameters(params)
    blocks_of: list[list[BlockPlan]] = [[] for _ in plan.members]
    for block in plan.blocks:
        blocks_of[block.member].append(block)
    tasks = [
        dask.delayed(flag_input)(
            infos[i],
            blocks_of[i],
            handover.median_sources(blocks_of[i]),
            plan.grid_shape,
            settings,
            writers[i] if writers else None,
            keep_masks or not writers,
            keep,
        )
        for i in range(len(plan.members))
    ]
    return list(runner.compute(*tasks, stage="blot+flag"))
