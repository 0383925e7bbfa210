"""Rough memory and scratch-disk needs of a plan, before anything runs (``outlier-dask info``).

The numbers follow what the engine holds at each stage (``engine/run.py``); they are estimates
for choosing ``in_memory`` and ``n_workers``, good to a factor of about two, not limits the
engine enforces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from outlier_dask.engine.plan import Plan, Window, tiles_covering

__all__ = ["ResourceEstimate", "estimate_resources", "python_processes", "worker_task_sizes"]

FLOAT32 = 4
#: Memory of one Python process with the engine's libraries imported and a FITS file read
#: (measured: about 140 MiB after imports).
PROCESS_BASELINE = 200 * 2**20
#: Bytes per pixel of the member a drizzle task holds: SCI and weight (float32), the pixel map
#: (2 x float64) and its shifted copy, plus DQ/VAR_RNOISE read to build the weight.
DRIZZLE_BYTES_PER_INPUT_PX = 40
#: Without resampling a "mosaic" task reads SCI and builds the weight from DQ and VAR_RNOISE.
COPY_BYTES_PER_INPUT_PX = 16
#: Bytes per block pixel of a blot+flag task: SCI, ERR, pixel map (2 x float64), blot,
#: derivative, residual and the two threshold masks.
BLOT_BYTES_PER_PX = 40
#: Bytes per input pixel while writing a product: the block masks and the mask assembled from
#: them (the writer streams the arrays through in blocks of rows, a few MB).
WRITE_BYTES_PER_PX = 2
#: The store's own files (one small JSON document per array and group).
STORE_METADATA_BYTES = 16 * 2**10
#: A median task holds the masked stack of its tile for every group, the copy the NaN-median
#: partitions, and its result.
MEDIAN_BYTES_PER_STACK_PX = 3 * FLOAT32


def _area(window: Window | None) -> int:
    if window is None:
        return 0
    (y0, y1), (x0, x1) = window
    return max(0, y1 - y0) * max(0, x1 - x0)


def _tiled_area(region: Window, grid_shape: tuple[int, int], tile: tuple[int, int]) -> int:
    """Pixels Zarr stores for the grid tiles a region touches (whole chunks, even at the
    grid's edges)."""
    box = tiles_covering(region, tile, grid_shape)
    if box is None:
        return 0
    (y0, y1), (x0, x1) = box
    return -(-(y1 - y0) // tile[0]) * tile[0] * -(-(x1 - x0) // tile[1]) * tile[1]


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


def worker_task_sizes(plan: Plan, tile_area: int) -> dict[str, int]:
    """Bytes one worker holds in the largest task of each stage."""
    per_px = DRIZZLE_BYTES_PER_INPUT_PX if plan.pixel_maps else COPY_BYTES_PER_INPUT_PX
    pixels = [m.shape[0] * m.shape[1] for m in plan.members]
    # A group task reads its members one at a time into its region's data and weight.
    drizzle = max(
        (per_px * max(pixels[i] for i in g.members) + 2 * FLOAT32 * _area(g.region))
        for g in plan.groups
    )
    blot = max(
        (BLOT_BYTES_PER_PX * _area(b.outer) + FLOAT32 * _area(b.cutout) for b in plan.blocks),
        default=0,
    )
    return {
        "drizzle task": drizzle,
        "blot+flag task": blot,
        "median task": MEDIAN_BYTES_PER_STACK_PX * plan.n_groups * tile_area,
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
    in_memory: bool,
    n_workers: int,
    processes: int | None = None,
    keep_intermediate: bool = False,
    shared: bool = False,
) -> ResourceEstimate:
    """Estimate the peak memory and scratch disk a plan needs.

    With ``G`` groups, ``A_g`` the area of group ``g``'s region, ``N`` the median grid's
    pixels, ``T`` a tile's pixels, ``P_i`` input ``i``'s pixels, ``W`` workers and ``Q``
    Python processes (:func:`python_processes`), in bytes::

        worker set  = max(drizzle: 40 * max(P_i in g) + 8 * A_g        (largest group)
                          blot+flag: 40 * block with halo + 4 * its median cut-out,
                          median: 12 * G * T,
                          write: 2 * max(P_i))
        in memory   = 8 * sum(A_g)        grouped mosaics (data + weight, float32)
                    + 4 * G * N           the masked stack's tiles (one per group and tile)
                    + 4 * N               the median
                    + 4 * sum(cut-outs)   median cut-outs sent to blot tasks
                    + 1 * sum(P_i)        outlier masks (bool)
                    + W * worker set
                    + Q * 200 MiB         interpreter and libraries per process
        on disk     = 1 * sum(P_i) + W * worker set + Q * 200 MiB (memory)
        scratch     = 4 * sum(tiles touched by A_g) + 4 * N       (disk, whole chunks)

    With ``shared`` (a local scheduler, stages handing over in shared memory) the mosaics stay
    in their tasks and blot reads the shared median, so in memory the grouped mosaics and
    cut-outs drop out and the stack is ``4 * sum(tiles touched by A_g)`` (each group's plane
    is written only on the tiles its region meets), and on disk the median (``4 * N``) is
    added.

    ``keep_intermediate`` (``save_intermediate_results``, or a plot) adds the kept median
    (``4 * N``) and blots (``4 * sum(P_i)``), and on disk the mosaics and weights, stored
    (``8 * sum(tiles touched by A_g)`` of scratch) and read back (``8 * sum(A_g)``). Zarr skips
    chunks left empty, so the scratch figure is an upper bound.

    Parameters
    ----------
    plan : Plan
        The run's plan (``make_plan``).
    in_memory : bool
        Estimate ``in_memory=True`` (everything in memory) or False (Zarr scratch store).
    n_workers : int
        Parallel workers (each may run the largest task at once).
    processes : int, optional
        Python processes (default ``n_workers + 1``: the ``processes`` scheduler).
    keep_intermediate : bool
        Whether the median and blots are kept for products or a plot.
    shared : bool
        Whether the stack (in memory) and the median are shared with local workers.

    Returns
    -------
    ResourceEstimate
    """
    ny, nx = plan.grid_shape
    grid = ny * nx
    tile_area = min(plan.tile_shape[0], ny) * min(plan.tile_shape[1], nx)
    member_px = sum(m.shape[0] * m.shape[1] for m in plan.members)
    workers = max(1, n_workers)
    worker = worker_task_sizes(plan, tile_area)
    largest = max(worker, key=worker.get)
    n_processes = workers + 1 if processes is None else max(1, processes)
    parts: dict[str, int] = {
        f"{n_processes} Python process(es)": n_processes * PROCESS_BASELINE,
        f"{workers} x {largest}": workers * worker[largest],
        "outlier masks": member_px,
    }
    regions = sum(_area(g.region) for g in plan.groups)
    tiled = sum(_tiled_area(g.region, plan.grid_shape, plan.tile_shape) for g in plan.groups)
    if in_memory:
        # Shared planes are written only on the tiles their group meets.
        parts["masked stack"] = FLOAT32 * (tiled if shared else plan.n_groups * grid)
        parts["median"] = FLOAT32 * grid
        if not shared:
            parts["grouped mosaics"] = 2 * FLOAT32 * regions
            parts["median cut-outs"] = FLOAT32 * sum(_area(b.cutout) for b in plan.blocks)
        scratch = 0
    else:
        whole = ((0, ny), (0, nx))
        median = FLOAT32 * _tiled_area(whole, plan.grid_shape, plan.tile_shape)
        scratch = (3 if keep_intermediate else 1) * FLOAT32 * tiled + median + STORE_METADATA_BYTES
        if keep_intermediate or shared:
            parts["median"] = FLOAT32 * grid
        if keep_intermediate:
            parts["grouped mosaics"] = 2 * FLOAT32 * regions
    if keep_intermediate:
        parts["blots"] = FLOAT32 * member_px
    parts = {k: v for k, v in parts.items() if v}
    return ResourceEstimate(in_memory, workers, sum(parts.values()), scratch, parts)
