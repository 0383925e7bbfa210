"""Fitting a run to the memory budget: workers, tile size and where the stack lives.

The user gives one number, ``memory_limit`` (default: half of this machine's memory). From the
plan's resource estimate (:mod:`outlier_dask.engine.estimate`), this module decides

* ``in_memory`` — kept as asked unless the stack would not fit, then switched to the Zarr
  store in ``work_dir`` (with a warning);
* the tile edge — halved until one median task (a tile of every group meeting it) is no
  larger than the other tasks, so many exposures do not make median tasks the peak;
* the number of workers — as many as asked (default: the CPUs) that fit the budget together
  with this process; out of core, the median goes to the store too when that lets more
  workers fit;
* each worker's memory limit (for ``local-cluster``) — its share of what is left.

Tasks whose size the geometry fixes (a group's region for drizzle) cannot shrink; when even
one worker does not fit, the run goes on with one worker and says how much it needs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass

import psutil

from outlier_dask.engine.estimate import (
    PROCESS_BASELINE,
    ResourceEstimate,
    estimate_resources,
    python_processes,
    worker_task_sizes,
)
from outlier_dask.engine.handover import handover_kind
from outlier_dask.engine.plan import Plan, make_plan
from outlier_dask.io.members import Member
from outlier_dask.kernels.resample import fill_value_number
from outlier_dask.parameters import OutlierParameters, parse_memory_size

__all__ = [
    "BudgetDecision",
    "PlannedRun",
    "default_memory_limit",
    "default_workers",
    "estimate_run",
    "fit_to_budget",
    "plan_run",
]

log = logging.getLogger(__name__)

#: Share of the machine's physical memory used when no budget is given.
DEFAULT_MEMORY_FRACTION = 0.5
#: Smallest tile edge the budget may choose, in pixels (smaller tiles only add overhead).
MIN_TILE_PX = 256
#: Median tasks below this many bytes are never worth smaller tiles.
MEDIAN_TASK_FLOOR = 64 * 2**20


def default_workers() -> int:
    """Workers to use when the user does not say: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_memory_limit() -> int:
    """Bytes: half of this machine's physical memory."""
    return int(psutil.virtual_memory().total * DEFAULT_MEMORY_FRACTION)


@dataclass(frozen=True)
class BudgetDecision:
    """What the budget decided, with the estimate it rests on.

    Attributes
    ----------
    memory_limit : int
        The budget, in bytes.
    n_workers : int
        Parallel workers.
    worker_memory_limit : int
        Bytes each worker may use (passed to ``LocalCluster`` workers).
    tile_size : int
        Tile edge of mosaics and median, pixels.
    in_memory : bool
        Whether mosaics and median stay in memory.
    handover : str
        Where the stack and the median live (:func:`~.handover.handover_kind`).
    estimate : ResourceEstimate
        Estimated peak memory and scratch disk of the chosen setting.
    notes : tuple of str
        Changes made to what was asked, in words (also logged).
    """

    memory_limit: int
    n_workers: int
    worker_memory_limit: int
    tile_size: int
    in_memory: bool
    handover: str
    estimate: ResourceEstimate
    notes: tuple[str, ...] = ()

    def apply(self, plan: Plan, params: OutlierParameters) -> tuple[Plan, OutlierParameters]:
        """The plan and parameters with these decisions in them."""
        params = params.replace(
            n_workers=self.n_workers,
            tile_size=self.tile_size,
            in_memory=self.in_memory,
            memory_limit=str(self.memory_limit),
        )
        plan = dataclasses.replace(plan, tile_shape=(self.tile_size, self.tile_size))
        return plan, params


def estimate_run(
    plan: Plan, params: OutlierParameters, kind: str, workers: int, keep_masks: bool = False
) -> ResourceEstimate:
    """The estimate of ``plan`` run with ``params``' scheduler, ``workers`` workers and the
    stack and median in ``kind`` (what the budget fits, and ``info`` shows)."""
    return estimate_resources(
        plan,
        kind=kind,
        n_workers=workers,
        processes=python_processes(params.scheduler, workers),
        keep_intermediate=params.save_intermediate_results,
        keep_masks=keep_masks,
        numeric_fill=_numeric_fill(params),
    )


def _numeric_fill(params: OutlierParameters) -> bool:
    """Whether the fill value of mosaic pixels without weight is a number, not NaN."""
    return not math.isnan(fill_value_number(params.fillval))


def _fitting_tile(plan: Plan, tile: int, numeric_fill: bool) -> int:
    """Halve the tile while a median task outweighs the other tasks (and matters at all)."""
    while tile > MIN_TILE_PX:
        sizes = worker_task_sizes(plan, (tile, tile), numeric_fill)
        median = sizes.pop("median task")
        if median <= max(max(sizes.values()), MEDIAN_TASK_FLOOR):
            break
        tile //= 2
    return tile


def _workers_fitting(
    plan: Plan, params: OutlierParameters, kind: str, wanted: int, budget: int, keep_masks: bool
) -> int:
    """The most workers, up to ``wanted`` (at least 1), whose run fits ``budget`` bytes."""
    workers = wanted
    while workers > 1:
        if estimate_run(plan, params, kind, workers, keep_masks).peak_memory <= budget:
            break
        workers -= 1
    return workers


def fit_to_budget(
    plan: Plan,
    params: OutlierParameters,
    *,
    client_given: bool = False,
    keep_masks: bool = False,
) -> BudgetDecision:
    """Choose workers, tile size and ``in_memory`` so the run fits ``params.memory_limit``.

    ``client_given``: a caller's ``distributed`` client runs the graphs (so the stack and
    median are kept on its workers, not in memory shared with this process). ``keep_masks``:
    every input's outlier mask comes back to this process (in-memory models, a plot).
    """
    budget = (
        parse_memory_size(params.memory_limit) if params.memory_limit else default_memory_limit()
    )
    notes: list[str] = []
    wanted = params.n_workers or default_workers()
    if params.scheduler == "synchronous":
        wanted = 1
    tile = _fitting_tile(plan, params.tile_size, _numeric_fill(params))
    if tile != params.tile_size:
        notes.append(f"tiles of {tile} pixels so a median task fits beside the others")
    plan = dataclasses.replace(plan, tile_shape=(tile, tile))
    in_memory = params.in_memory
    kind = handover_kind(params.scheduler, in_memory, client_given)
    needed = estimate_run(plan, params, kind, 1, keep_masks).peak_memory if in_memory else 0
    if needed > budget:
        in_memory = False
        kind = handover_kind(params.scheduler, in_memory, client_given)
        notes.append(
            f"mosaics and median kept on disk (in_memory=False): in memory they need "
            f"~{needed / 2**30:.1f} GiB, above the memory limit of {budget / 2**30:.1f} GiB"
        )
    workers = _workers_fitting(plan, params, kind, wanted, budget, keep_masks)
    if workers < wanted and not in_memory:
        # The median, in memory beside the workers, may be what crowds them out.
        on_disk = handover_kind(params.scheduler, in_memory, client_given, median_in_memory=False)
        more = _workers_fitting(plan, params, on_disk, wanted, budget, keep_masks)
        if on_disk != kind and more > workers:
            notes.append(f"the median kept on disk too, so that {more} worker(s) fit")
            kind, workers = on_disk, more
    estimate = estimate_run(plan, params, kind, workers, keep_masks)
    if workers < wanted:
        notes.append(f"{workers} worker(s) instead of {wanted} to stay within the memory limit")
    if estimate.peak_memory > budget:
        notes.append(
            f"the largest task needs ~{estimate.peak_memory / 2**30:.2f} GiB with one worker, "
            f"above the memory limit of {budget / 2**30:.2f} GiB; running with one worker"
        )
    worker_limit = max(1, (budget - PROCESS_BASELINE) // workers)
    for note in notes:
        log.warning("memory budget: %s", note)
    return BudgetDecision(
        budget, workers, worker_limit, tile, in_memory, kind, estimate, tuple(notes)
    )


@dataclass(frozen=True)
class PlannedRun:
    """A plan fitted to the budget: what ``run`` executes and ``info`` shows.

    Attributes
    ----------
    plan : Plan
        The plan, with the budget's tiles.
    params : OutlierParameters
        The parameters, with the budget's workers, tiles and ``in_memory``.
    budget : BudgetDecision
        What the budget decided, with its estimate.
    """

    plan: Plan
    params: OutlierParameters
    budget: BudgetDecision


def plan_run(
    members: list[Member],
    product_name: str,
    params: OutlierParameters,
    *,
    client_given: bool = False,
    keep_masks: bool = False,
) -> PlannedRun:
    """The plan of a run and the budget's decisions: the one planning function.

    ``client_given`` and ``keep_masks`` as for :func:`fit_to_budget`.

    Raises
    ------
    ValueError
        See :func:`~outlier_dask.engine.plan.make_plan`.
    """
    plan = make_plan(members, product_name, params)
    decision = fit_to_budget(plan, params, client_given=client_given, keep_masks=keep_masks)
    plan, params = decision.apply(plan, params)
    return PlannedRun(plan, params, decision)
