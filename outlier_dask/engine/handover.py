"""Where the masked stack ``(groups, ny, nx)`` and the median ``(ny, nx)`` live between stages.

This module owns that decision, made once per run from the scheduler and ``in_memory``
(:func:`handover_kind`), and the three places it can choose:

``shared``
    A local scheduler this process starts (``processes``, ``threads``, ``synchronous``) with
    ``in_memory=True``: anonymous memory mapped before the workers are forked, so every worker
    sees it. Group tasks write their planes in place (only on the whole tiles their region
    meets), median tasks read their tile's block from it and store their tile, and blot
    tasks read the whole median, which lets the compiled blot be used. Nothing large travels
    between processes.
``store``
    ``in_memory=False`` on a ``distributed`` cluster: Zarr arrays in the run's scratch folder
    (or a shared fsspec URL), chunked ``(1, ty, tx)``. Group tasks write their region, median
    tasks read their tile's block and store their tile, blot tasks read their cut-outs.
``local-store``
    ``in_memory=False`` on a local scheduler: the stack in the Zarr store as above, the median
    (a single plane) in shared memory as with ``shared``, so that blot tasks can use the
    compiled blot on the whole median.
``workers``
    A ``distributed`` cluster with ``in_memory=True``: each group task's result holds its
    plane's tiles, persisted in worker memory (spilled as distributed spills); the median is a
    persisted dask array. Up to :data:`WHOLE_MEDIAN_BYTES` it is one array, which each worker
    fetches once and blot tasks read whole with the compiled blot; a larger one is kept in
    blocks whose cut-outs are blot tasks' inputs. The client holds only keys.

Every stage is written once against a :class:`Handover` (``engine/run.py``): a task per
group writes its plane through :meth:`Handover.planes`; the median is one lazy dask array
(:meth:`Handover.median`), a task per tile over the stack's block there (the planes of the
groups that may hold a value there, :func:`planes_in`), and is kept by
:meth:`Handover.keep_median`; blot tasks get their median through
:meth:`Handover.median_sources`. The memory and disk each place costs
(:func:`handover_footprint`) is what the estimate and the budget count.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Imported with this module, before a local scheduler forks its workers, so that they inherit
# it: each worker had imported dask.array (and scipy.fftpack with it) on its first median task.
import dask
import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph

from outlier_dask.engine.plan import BlockPlan, Plan
from outlier_dask.engine.shared import SharedArray, shared_arrays
from outlier_dask.engine.stores import ScratchStore
from outlier_dask.engine.tasks import GroupMosaic, GroupOutcome, MedianCutout
from outlier_dask.geometry.windows import (
    Window,
    area,
    contains,
    crop_or_fill,
    meets,
    outside_of,
    tile_ranges,
    tiled_area,
    tiles_covering,
    tiles_met,
)
from outlier_dask.kernels.weights import mask_low_weight

__all__ = [
    "LOCAL_SCHEDULERS",
    "LOCAL_STORE",
    "SHARED",
    "STORE",
    "WORKERS",
    "Footprint",
    "Handover",
    "handover_footprint",
    "handover_kind",
    "median_task_planes",
    "open_handover",
    "uses_store",
]

log = logging.getLogger(__name__)

#: Schedulers whose workers are this process or forked from it, so they can share its memory.
LOCAL_SCHEDULERS = ("processes", "threads", "synchronous")
SHARED, STORE, LOCAL_STORE, WORKERS = "shared", "store", "local-store", "workers"
#: Kinds whose stack is in the Zarr store, and kinds whose median is in shared memory.
_STACK_IN_STORE = (STORE, LOCAL_STORE)
_MEDIAN_SHARED = (SHARED, LOCAL_STORE)
FLOAT32 = 4
#: Largest median a cluster keeps whole, one copy on each worker that blots (a 64 Mpix grid).
WHOLE_MEDIAN_BYTES = 256 * 2**20


def handover_kind(
    scheduler: str, in_memory: bool, client_given: bool = False, median_in_memory: bool = True
) -> str:
    """Where stack and median live: :data:`SHARED`, :data:`LOCAL_STORE`, :data:`STORE` or
    :data:`WORKERS`.

    Parameters
    ----------
    scheduler : str
        The ``scheduler`` parameter.
    in_memory : bool
        The ``in_memory`` parameter (after the budget).
    client_given : bool
        A caller's ``distributed.Client`` runs the graphs (whatever ``scheduler`` says).
    median_in_memory : bool
        Out of core on one machine, whether the median (one plane of the grid) may stay in
        memory shared with the workers; the budget says no when it would crowd them out.
    """
    local = not client_given and scheduler in LOCAL_SCHEDULERS
    if not in_memory:
        return LOCAL_STORE if local and median_in_memory else STORE
    return SHARED if local else WORKERS


def uses_store(kind: str) -> bool:
    """Whether the handover ``kind`` keeps the stack in a Zarr store."""
    return kind in _STACK_IN_STORE


def median_whole_on_workers(kind: str, plan: Plan) -> bool:
    """Whether a cluster's workers each get the whole median (:data:`WORKERS`, a median of at
    most :data:`WHOLE_MEDIAN_BYTES`): one transfer per worker, and the compiled blot, instead
    of a cut-out sent to every blot task and blotted in numpy."""
    ny, nx = plan.grid_shape
    return kind == WORKERS and FLOAT32 * ny * nx <= WHOLE_MEDIAN_BYTES


@dataclass(frozen=True)
class Footprint:
    """What a handover holds, in bytes: memory by part, and scratch written to disk."""

    memory: dict[str, int] = field(default_factory=dict)
    scratch: int = 0


#: The store's own files (one small JSON document per array and group).
STORE_METADATA_BYTES = 16 * 2**10


def handover_footprint(kind: str, plan: Plan, n_workers: int = 1) -> Footprint:
    """The memory and scratch disk the stack and median take in ``kind``.

    With ``T(A_g)`` the whole tiles group ``g``'s region meets (clipped to the grid in
    memory, full chunks on disk) and ``N`` the grid's pixels: the stack takes
    ``4 * sum T(A_g)`` and the median ``4 * N``, in memory or on disk as ``kind`` keeps them
    (Zarr skips chunks never written, so the disk figure is an upper bound). A median kept
    whole on a cluster (:func:`median_whole_on_workers`) takes ``4 * N`` on each of the
    ``n_workers`` workers, and once more while its blocks are joined.
    """
    grid, tile = plan.grid_shape, plan.tile_shape
    whole = ((0, grid[0]), (0, grid[1]))
    where = "worker memory" if kind == WORKERS else "shared memory"
    memory: dict[str, int] = {}
    scratch = 0
    if kind in _STACK_IN_STORE:
        planes = sum(tiled_area(g.region, tile, grid) for g in plan.groups)
        scratch += FLOAT32 * planes + STORE_METADATA_BYTES
    else:
        boxes = sum(area(tiles_covering(g.region, tile, grid)) for g in plan.groups)
        memory[f"masked stack ({where})"] = FLOAT32 * boxes
    if kind == STORE:
        scratch += FLOAT32 * tiled_area(whole, tile, grid)
    elif median_whole_on_workers(kind, plan):
        memory["median (whole, on each worker)"] = FLOAT32 * area(whole) * (max(1, n_workers) + 1)
    else:
        memory[f"median ({where})"] = FLOAT32 * area(whole)
    return Footprint(memory, scratch)


# -- the planes group tasks write and median tasks read -------------------------------------


def planes_in(layout: tuple, window: Window) -> list[int]:
    """The groups whose plane may hold a value in ``window``: the planes of its stack block.

    Beyond what its group wrote, a plane holds the group's outside value
    (:func:`~.tasks.outside_value`), which is NaN unless the group's weight threshold is 0.
    A plane that holds only NaN in ``window`` is left out of the window's block: the median
    leaves all-NaN planes out anyway (:func:`~outlier_dask.kernels.median.planes_with_values`),
    and in a survey most groups miss most tiles, so a block grows with the groups covering
    it, not with all the groups.

    Parameters
    ----------
    layout : tuple of (Window or None, float)
        Per group, the window its plane holds (None: nothing) and its outside value.
    window : Window
        The block's window of the grid.

    Returns
    -------
    list of int
        Group indices in increasing order (empty where no group holds a value).
    """
    return [
        g
        for g, (written, outside) in enumerate(layout)
        if wrote_in(written, window) or not np.isnan(outside)
    ]


def wrote_in(written: Window | None, window: Window) -> bool:
    """Whether a group that wrote ``written`` (None: nothing) wrote a pixel of ``window``."""
    return written is not None and meets(written, window)


def median_task_planes(plan: Plan, tile_shape: tuple[int, int], numeric_fill: bool) -> int:
    """The most planes a median task's block holds (:func:`planes_in`) with tiles of
    ``tile_shape``: the most groups whose regions meet one tile.

    A group writes nothing beyond its region, so its plane is in the blocks of the tiles its
    region meets; with a number as fill value (``numeric_fill``) a group whose weight threshold
    is not above 0 holds that number everywhere, and every group is counted.
    """
    if numeric_fill:
        return plan.n_groups
    (ny, nx), (ty, tx) = plan.grid_shape, tile_shape
    n_rows, n_cols = len(tile_ranges(ny, ty)), len(tile_ranges(nx, tx))
    # Per group +1 on the tiles its region meets, as corners of a 2-D running sum.
    corners = np.zeros((n_rows + 1, n_cols + 1), dtype=np.int64)
    for group in plan.groups:
        met = tiles_met(group.region, tile_shape)
        if met is None:
            continue
        (r0, r1), (c0, c1) = met
        corners[r0, c0] += 1
        corners[r0, c1] -= 1
        corners[r1, c0] -= 1
        corners[r1, c1] += 1
    return int(corners.cumsum(axis=0).cumsum(axis=1).max())


@dataclass(frozen=True)
class SharedPlanes:
    """The masked stack in shared memory; a plane is written on the whole tiles its group's
    region meets, the rest of the box with the group's outside value."""

    stack: SharedArray
    tile_shape: tuple[int, int]

    def write(self, index: int, mosaic: GroupMosaic, outside: float):
        """Mask ``mosaic`` straight into plane ``index``; returns ``(window written, None)``."""
        box = tiles_covering(mosaic.region, self.tile_shape, self.stack.shape[1:])
        if box is None:
            return None, None
        (b0, b1), (c0, c1) = box
        plane = self.stack.view()[index, b0:b1, c0:c1]
        (y0, y1), (x0, x1) = (
            (r - b0 for r in mosaic.region[0]),
            (c - c0 for c in mosaic.region[1]),
        )
        plane[:y0] = outside
        plane[y1:] = outside
        plane[y0:y1, :x0] = outside
        plane[y0:y1, x1:] = outside
        mask_low_weight(mosaic.data, mosaic.weight, mosaic.threshold, out=plane[y0:y1, x0:x1])
        return box, None

    def read(self, window: Window, layout: tuple) -> np.ndarray:
        """The ``(k, ty, tx)`` block of the stack over ``window`` (:func:`planes_in`)."""
        (y0, y1), (x0, x1) = window
        view = self.stack.view()
        groups = planes_in(layout, window)
        block = np.empty((len(groups), y1 - y0, x1 - x0), dtype=np.float32)
        for k, g in enumerate(groups):
            written, outside = layout[g]
            if written is not None and contains(written, window):
                block[k] = view[g, y0:y1, x0:x1]
            else:  # never read: pages of tiles no group wrote are never committed
                block[k] = outside
        return block


@dataclass(frozen=True)
class StorePlanes:
    """The masked stack in the Zarr store: a plane holds its region, NaN elsewhere."""

    store: ScratchStore

    def write(self, index: int, mosaic: GroupMosaic, outside: float):
        """Write plane ``index`` over the mosaic's region; returns ``(region, None)``."""
        region = mosaic.region
        (y0, y1), (x0, x1) = region
        if y0 >= y1 or x0 >= x1:
            return None, None
        self.store.array("data", "r+")[index, y0:y1, x0:x1] = mosaic.masked()
        return region, None

    def read(self, window: Window, layout: tuple) -> np.ndarray:
        """The ``(k, ty, tx)`` block over ``window`` (:func:`planes_in`), each plane completed
        beyond its region."""
        (y0, y1), (x0, x1) = window
        groups = planes_in(layout, window)
        block = np.empty((len(groups), y1 - y0, x1 - x0), dtype=np.float32)
        data = self.store.array("data")
        for plane, g in zip(block, groups, strict=True):
            written, outside = layout[g]
            if not wrote_in(written, window):
                plane[...] = outside
                continue
            plane[...] = data[g, y0:y1, x0:x1]
            if not contains(written, window) and not np.isnan(outside):
                plane[outside_of(written, window)] = outside
        return block


@dataclass(frozen=True)
class WorkerPlanes:
    """The masked stack as tiles held by the group tasks' results (a cluster's memory)."""

    tile_shape: tuple[int, int]
    grid_shape: tuple[int, int]

    def write(self, index: int, mosaic: GroupMosaic, outside: float):
        """Cut the masked plane into the tiles its region meets; returns ``(box, tiles)``."""
        region = mosaic.region
        box = tiles_covering(region, self.tile_shape, self.grid_shape)
        if box is None:
            return None, {}
        ty, tx = self.tile_shape
        (b0, b1), (c0, c1) = box
        masked = mosaic.masked()
        tiles = {}
        for rows in tile_ranges(b1 - b0, ty):
            for cols in tile_ranges(c1 - c0, tx):
                window = ((b0 + rows[0], b0 + rows[1]), (c0 + cols[0], c0 + cols[1]))
                key = (window[0][0] // ty, window[1][0] // tx)
                tiles[key] = crop_or_fill(masked, region, window, outside)
        return box, tiles


def tile_of(outcome: GroupOutcome, key: tuple[int, int]) -> np.ndarray:
    """One tile of a group task's result (run where the result is)."""
    return outcome.tiles[key]


def median_of_tiles(
    combine: Callable[[np.ndarray], np.ndarray], tiles: list, shape: tuple[int, int]
) -> np.ndarray:
    """``combine`` of the ``(k, ty, tx)`` block of ``tiles``: per plane, a group's tile or
    a constant (its outside value); ``shape`` is ``(ty, tx)``."""
    block = np.empty((len(tiles), *shape), dtype=np.float32)
    for k, tile in enumerate(tiles):
        block[k] = tile
    return combine(block)


def median_of_block(
    combine: Callable[[np.ndarray], np.ndarray],
    read: Callable[[Window, tuple], np.ndarray],
    window: Window,
    layout: tuple,
) -> np.ndarray:
    """``combine`` of the stack's block over ``window``, read by ``read(window, layout)``."""
    return combine(read(window, layout))


# -- the median's places ----------------------------------------------------------------------


@dataclass(frozen=True)
class SharedMedian:
    """The shared median: a ``da.store`` target, and every block's source (the whole of it)."""

    median: SharedArray

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        self.median.view()[key] = value

    def cutout(self, block: BlockPlan) -> MedianCutout | None:
        """The whole median, read in place by the block's task."""
        return WholeMedian(self.median.view()).cutout(block)


@dataclass(frozen=True)
class WholeMedian:
    """The whole median as one array (shared, or in a cluster's worker); every block's source."""

    values: np.ndarray

    def cutout(self, block: BlockPlan) -> MedianCutout | None:
        """The whole median, read by the compiled blot."""
        if block.cutout is None:
            return None
        return MedianCutout(self.values, block.cutout, whole=True)


@dataclass(frozen=True)
class StoreMedian:
    """The median in the Zarr store; each block reads its cut-out."""

    store: ScratchStore

    def cutout(self, block: BlockPlan) -> MedianCutout | None:
        """The median over the block's cut-out, read from the store."""
        if block.cutout is None:
            return None
        (y0, y1), (x0, x1) = block.cutout
        return MedianCutout(np.asarray(self.store.array("median")[y0:y1, x0:x1]), block.cutout)


# -- the handover -----------------------------------------------------------------------------


@dataclass
class Handover:
    """The places of one run's stack and median, and how each stage reaches them.

    Attributes
    ----------
    kind : str
        :data:`SHARED`, :data:`LOCAL_STORE`, :data:`STORE` or :data:`WORKERS`.
    plan : Plan
        The run's plan (grid, tiles, groups).
    shared : dict of str to SharedArray
        The arrays in shared memory (the stack with ``shared``, the median with ``shared``
        and ``local-store``).
    store : ScratchStore or None
        The Zarr store (``store`` and ``local-store``).
    """

    kind: str
    plan: Plan
    shared: dict[str, SharedArray] = field(default_factory=dict)
    store: ScratchStore | None = None
    #: Names this run's graph layers: a cluster keeps keys between runs, so two runs of one
    #: plan must not share them.
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    _median: Any = None
    _whole_median: Any = None

    @property
    def planes(self) -> SharedPlanes | StorePlanes | WorkerPlanes:
        """What group tasks write their plane into (:func:`~.tasks.drizzle_group`)."""
        if self.kind == SHARED:
            return SharedPlanes(self.shared["stack"], self.plan.tile_shape)
        if self.kind in _STACK_IN_STORE:
            return StorePlanes(self.store)
        return WorkerPlanes(self.plan.tile_shape, self.plan.grid_shape)

    def run_groups(self, tasks: list[Any], runner: Any) -> tuple[list, list, list, list]:
        """Run the group tasks, their results left where this handover keeps the stack.

        Returns
        -------
        outcomes : list
            Per group, its result (persisted delayed objects on a cluster, which keeps them).
        layout : list of (Window or None, float)
            Per group, the window its plane holds and its outside value.
        thresholds : list of float
            Per group, its weight threshold.
        mosaics : list of (GroupMosaic or None)
            Per group, its unmasked mosaic in this process (None unless the task kept it).
        """
        fields = operator.attrgetter("threshold", "written", "outside", "mosaic")
        if self.kind == WORKERS:
            outcomes = list(runner.persist(*tasks, stage="drizzle"))
            # Only these small fields come to this process; the tiles stay on the workers.
            summaries = runner.compute(
                *[dask.delayed(fields)(o) for o in outcomes], stage="drizzle"
            )
        else:
            outcomes = list(runner.compute(*tasks, stage="drizzle"))
            summaries = [fields(o) for o in outcomes]
        thresholds = [threshold for threshold, _, _, _ in summaries]
        layout = [(written, outside) for _, written, outside, _ in summaries]
        return outcomes, layout, thresholds, [mosaic for *_, mosaic in summaries]

    def median(
        self,
        outcomes: list[Any],
        written: list[tuple],
        combine: Callable[[np.ndarray], np.ndarray],
    ) -> da.Array:
        """The lazy median ``(ny, nx)``: ``combine`` of the stack's ``(k, ty, tx)`` block
        over each tile, one task per tile.

        Parameters
        ----------
        outcomes : list
            Per group, its task's result (persisted delayed objects on a cluster).
        written : list of (Window or None, float)
            Per group, the window its plane holds and its outside value.
        combine : callable
            ``combine(block)``: the per-pixel statistic over a block's first axis, shape
            ``(k, ty, tx)`` float32 to ``(ty, tx)`` float32 (``k = 0`` gives NaN).
        """
        plan = self.plan
        (ny, nx), (ty, tx) = plan.grid_shape, plan.tile_shape
        rows, cols = tile_ranges(ny, ty), tile_ranges(nx, tx)
        name = f"median-{self.run_id}"
        layout = tuple(written)
        layer: dict = {}
        reader = None if self.kind == WORKERS else self.planes.read
        # On a cluster a tile is its own task, run where its group's result is: a median task
        # fetches the tiles of its block, not the groups' whole results.
        tile_name = f"stack-tile-{self.run_id}"
        for i, (r0, r1) in enumerate(rows):
            for j, (c0, c1) in enumerate(cols):
                window = ((r0, r1), (c0, c1))
                if reader is not None:
                    layer[(name, i, j)] = (median_of_block, combine, reader, window, layout)
                    continue
                tiles = []
                for g in planes_in(layout, window):
                    box, outside = layout[g]
                    if not wrote_in(box, window):
                        tiles.append(outside)
                        continue
                    layer[(tile_name, g, i, j)] = (tile_of, outcomes[g].key, (i, j))
                    tiles.append((tile_name, g, i, j))
                layer[(name, i, j)] = (median_of_tiles, combine, tiles, (r1 - r0, c1 - c0))
        dependencies = list(outcomes) if reader is None else []
        graph = HighLevelGraph.from_collections(name, layer, dependencies=dependencies)
        chunks = (tuple(b - a for a, b in rows), tuple(b - a for a, b in cols))
        return da.Array(graph, name, chunks, dtype=np.float32)

    def keep_median(self, median: da.Array, runner: Any) -> None:
        """Compute the lazy median into its place (stored, or persisted on the workers)."""
        if self.kind == WORKERS:
            if median_whole_on_workers(self.kind, self.plan):
                median = median.rechunk(-1)
            (self._median,) = runner.persist(median, stage="median")
            return
        target = (
            self._shared_median if self.kind in _MEDIAN_SHARED else self.store.array("median", "r+")
        )
        # Median blocks coincide with the target's chunks: no lock is needed.
        runner.compute(da.store(median, target, lock=False, compute=False), stage="median")

    @property
    def _shared_median(self) -> SharedMedian:
        return SharedMedian(self.shared["median"])

    def median_sources(self, blocks: list[BlockPlan]) -> list[Any]:
        """Per block, what its blot task reads the median from (see ``tasks.flag_input``)."""
        if self.kind in _MEDIAN_SHARED:
            return [self._shared_median] * len(blocks)
        if self.kind == STORE:
            return [StoreMedian(self.store)] * len(blocks)
        if median_whole_on_workers(self.kind, self.plan):
            if self._whole_median is None:
                self._whole_median = dask.delayed(WholeMedian)(self._median)
            return [None if b.cutout is None else self._whole_median for b in blocks]
        return [
            None if b.cutout is None else self._median[slice(*b.cutout[0]), slice(*b.cutout[1])]
            for b in blocks
        ]

    def median_array(self, runner: Any) -> np.ndarray:
        """The whole median in this process (for intermediate products and plots)."""
        if self.kind in _MEDIAN_SHARED:
            return np.array(self.shared["median"].view())
        if self.kind == STORE:
            return np.asarray(self.store.array("median")[...])
        (median,) = runner.compute(self._median, stage="median")
        return median


@contextlib.contextmanager
def open_handover(kind: str, plan: Plan, store: ScratchStore | None) -> Iterator[Handover]:
    """Make the places of ``kind`` for one run (before a local scheduler forks its workers).

    ``store`` (made by the caller in the run's scratch folder) is needed where
    :func:`uses_store`; its arrays are created here. Shared arrays are unmapped when the
    context ends.
    """
    if kind in _STACK_IN_STORE:
        store.create(plan.n_groups, plan.grid_shape, plan.tile_shape)
    specs = {}
    if kind == SHARED:
        specs["stack"] = ((plan.n_groups, *plan.grid_shape), "float32")
    if kind in _MEDIAN_SHARED:
        specs["median"] = (plan.grid_shape, "float32")
    with shared_arrays(specs) as arrays:
        yield Handover(kind, plan, shared=arrays, store=store if uses_store(kind) else None)
