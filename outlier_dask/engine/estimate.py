"""Rough memory and scratch-disk needs of a plan, before anything runs.

What the stack and the median cost comes from the handover that holds them
(:func:`~outlier_dask.engine.handover.handover_footprint`); this module adds the tasks, the
processes and what the run keeps. The figures are estimates for choosing ``in_memory`` and
``n_workers``, good to a factor of about two, not limits the engine enforces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from outlier_dask.engine.handover import handover_footprint, median_task_planes, uses_store
from outlier_dask.engine.plan import Plan
from outlier_dask.geometry.windows import area

__all__ = ["ResourceEstimate", "estimate_resources", "python_processes", "worker_task_sizes"]

FLOAT32 = 4
#: Memory of one Python process with the engine's libraries imported and a FITS file read
#: (measured: about 140 MiB after imports).
PROCESS_BASELINE = 200 * 2**20
#: Bytes per pixel of the member a drizzle task holds: SCI and weight (float32), the pixel map
#: (2 x float64), plus DQ/VAR_RNOISE read to build the weight.
DRIZZLE_BYTES_PER_INPUT_PX = 32
#: Without resampling a "mosaic" task reads SCI and builds the weight from DQ and VAR_RNOISE.
COPY_BYTES_PER_INPUT_PX = 16
#: Bytes per block pixel of a blot+flag task: SCI, ERR, pixel map (2 x float64), blot,
#: derivative, residual and the two threshold masks.
BLOT_BYTES_PER_PX = 40
#: Bytes per input pixel while writing a product: the block masks and the mask assembled from
#: them (the writer streams the arrays through in blocks of rows, a few MB).
WRITE_BYTES_PER_PX = 2
#: A median task holds its tile's block of the masked stack (the planes of the groups meeting
#: the tile), the copy the NaN-median partitions, and its result.
MEDIAN_BYTES_PER_STACK_PX = 3 * FLOAT32


@dataclass(frozen=True)
class ResourceEstimate:
    """Estimated peak memory and scratch disk of one run.

    Attributes
    ----------
    in_memory : bool
        The ``in_memory`` setting estimated.
    n_workers : int
        Parallel workers assumed.
    peak_memory : int
        Bytes of memory, main process and all workers together.
    scratch_disk : int
        Bytes written under ``work_dir`` (uncompressed; 0 with ``in_memory=True``).
    parts : dict of str to int
        The terms of ``peak_memory`` and ``scratch_disk``, in bytes, by name.
    """

    in_memory: bool
    n_workers: int
    peak_memory: int
    scratch_disk: int
    parts: dict[str, int] = field(default_factory=dict)


def worker_task_sizes(
    plan: Plan, tile_shape: tuple[int, int], numeric_fill: bool = False
) -> dict[str, int]:
    """Bytes one worker holds in the largest task of each stage, with tiles of ``tile_shape``
    (``numeric_fill``: the fill value is a number, see
    :func:`~outlier_dask.engine.handover.median_task_planes`)."""
    ny, nx = plan.grid_shape
    tile_area = min(tile_shape[0], ny) * min(tile_shape[1], nx)
    per_px = DRIZZLE_BYTES_PER_INPUT_PX if plan.pixel_maps else COPY_BYTES_PER_INPUT_PX
    pixels = [m.shape[0] * m.shape[1] for m in plan.members]
    # A group task reads its members one at a time into its region's data and weight.
    drizzle = max(
        (per_px * max(pixels[i] for i in g.members) + 2 * FLOAT32 * area(g.region))
        for g in plan.groups
    )
    blot = max(
        (BLOT_BYTES_PER_PX * area(b.outer) + FLOAT32 * area(b.cutout) for b in plan.blocks),
        default=0,
    )
    return {
        "drizzle task": drizzle,
        "blot+flag task": blot,
        "median task": MEDIAN_BYTES_PER_STACK_PX
        * median_task_planes(plan, tile_shape, numeric_fill)
        * tile_area,
        "write task": WRITE_BYTES_PER_PX * max(pixels),
    }


def python_processes(scheduler: str, n_workers: int) -> int:
    """Python processes a run starts or uses with a scheduler (each holds the libraries).

    ``synchronous`` and ``threads`` run in this process; ``processes`` adds one process per
    worker; ``local-cluster`` also a scheduler process; an address counts this process and
    the workers (the scheduler runs elsewhere).
    """
    if scheduler in ("synchronous", "threads"):
        return 1
    if scheduler == "local-cluster":
        return n_workers + 2
    return n_workers + 1


def estimate_resources(
    plan: Plan,
    *,
    kind: str,
    n_workers: int,
    processes: int | None = None,
    keep_intermediate: bool = False,
    keep_masks: bool = False,
    numeric_fill: bool = False,
) -> ResourceEstimate:
    """Estimate the peak memory and scratch disk a plan needs.

    With ``G`` groups, ``G_T`` the most groups whose regions meet one tile (``G`` with
    ``numeric_fill``), ``A_g`` the area of group ``g``'s region, ``N`` the median grid's
    pixels, ``T`` a tile's pixels, ``P_i`` input ``i``'s pixels, ``W`` workers and ``Q``
    Python processes (:func:`python_processes`), in bytes::

        worker set  = max(drizzle: 32 * max(P_i in g) + 8 * A_g        (largest group)
                          blot+flag: 40 * block with halo + 4 * its median cut-out,
                          median: 12 * G_T * T,
                          write: 2 * max(P_i))
        memory      = handover (stack and median, in memory: see handover_footprint)
                    + 1 * sum(P_i)        outlier masks (bool), if returned
                    + W * worker set
                    + Q * 200 MiB         interpreter and libraries per process
        scratch     = handover (stack and median in the store)

    ``keep_intermediate`` (``save_intermediate_results``, or a plot) adds the grouped mosaics
    and weights (``8 * sum(A_g)``), the median (``4 * N``) and the blots (``4 * sum(P_i)``),
    brought to this process for the products.

    Parameters
    ----------
    plan : Plan
        The run's plan (``make_plan``).
    kind : str
        Where stack and median live (:func:`~outlier_dask.engine.handover.handover_kind`).
    n_workers : int
        Parallel workers (each may run the largest task at once).
    processes : int, optional
        Python processes (default ``n_workers + 1``: the ``processes`` scheduler).
    keep_intermediate : bool
        Whether the mosaics, median and blots are kept for products or a plot.
    keep_masks : bool
        Whether every input's outlier mask comes back to this process (in-memory models, a
        plot); products written by the workers leave them there.
    numeric_fill : bool
        Whether the fill value (``fillval``) is a number rather than NaN.

    Returns
    -------
    ResourceEstimate
    """
    ny, nx = plan.grid_shape
    member_px = sum(m.shape[0] * m.shape[1] for m in plan.members)
    workers = max(1, n_workers)
    worker = worker_task_sizes(plan, plan.tile_shape, numeric_fill)
    largest = max(worker, key=worker.get)
    n_processes = workers + 1 if processes is None else max(1, processes)
    handover = handover_footprint(kind, plan, workers)
    parts: dict[str, int] = {
        f"{n_processes} Python process(es)": n_processes * PROCESS_BASELINE,
        f"{workers} x {largest}": workers * worker[largest],
        "outlier masks (returned)": member_px if keep_masks else 0,
        **handover.memory,
    }
    if keep_intermediate:
        parts["grouped mosaics (kept)"] = 2 * FLOAT32 * sum(area(g.region) for g in plan.groups)
        parts["median (kept)"] = FLOAT32 * ny * nx
        parts["blots (kept)"] = FLOAT32 * member_px
    parts = {k: v for k, v in parts.items() if v}
    return ResourceEstimate(
        not uses_store(kind), workers, sum(parts.values()), handover.scratch, parts
    )
