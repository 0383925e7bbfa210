"""Task functions: what one dask task does, from a plan entry to arrays.

They are top-level functions of plain, picklable arguments, so process workers and
``distributed`` workers can run them. They only read pixels, slice, and call kernels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from outlier_dask.engine.plan import BlockPlan, GroupPlan, Window
from outlier_dask.engine.shared import SharedArray
from outlier_dask.engine.stores import ScratchStore, write_region
from outlier_dask.geometry.pixel_map import PixelMap
from outlier_dask.io.members import PixelSource
from outlier_dask.kernels.flags import flag_resampled_outliers, flag_unresampled_outliers
from outlier_dask.kernels.median import nanmedian_stack
from outlier_dask.kernels.resample import (
    DrizzleInput,
    blot_bilinear,
    blot_from_whole_median,
    drizzle_onto_region,
    fill_value_number,
)
from outlier_dask.kernels.weights import drizzle_weight_map, mask_low_weight, weight_threshold
from outlier_dask.parameters import OutlierParameters

__all__ = [
    "GroupMosaic",
    "GroupTiles",
    "MemberTaskInfo",
    "blot_and_flag_block",
    "MemberOutcome",
    "build_group_mosaic",
    "finish_member",
    "flag_member",
    "masked_group_tiles",
    "median_into",
    "median_of_tile",
    "mosaic_into_stack",
    "mosaic_into_store",
    "outside_value",
    "store_stack_block",
    "tile_of_region",
]


@dataclass(frozen=True)
class MemberTaskInfo:
    """What a task needs of one member: where its pixels are and how they map."""

    source: PixelSource
    shape: tuple[int, int]
    pixel_map: PixelMap | None
    exposure_time: float
    weight_time: float
    background_level: float | None


@dataclass
class GroupMosaic:
    """One grouped mosaic on its region of the grid.

    Attributes
    ----------
    region : Window
        ``((y0, y1), (x0, x1))`` in grid pixels.
    data : ndarray, shape (ry, rx), float32
        Drizzled values (fill value where no weight), before the weight mask.
    weight : ndarray, shape (ry, rx), float32
        Drizzle weight.
    threshold : float
        ``maskpt`` x sigma-clipped mean weight (NaN: nothing masked).
    """

    region: Window
    data: np.ndarray
    weight: np.ndarray
    threshold: float

    def masked(self) -> np.ndarray:
        """Data with NaN where the weight is below the threshold, shape (ry, rx), float32."""
        return mask_low_weight(self.data, self.weight, self.threshold)


def _weights(info: MemberTaskInfo, params: OutlierParameters, window: Window | None = None):
    if params.weight_type == "ivm":
        dq, rnoise = info.source.read_all(("DQ", "VAR_RNOISE"), window)
    else:
        dq, rnoise = info.source.read("DQ", window), None
    return drizzle_weight_map(
        dq,
        rnoise,
        weight_type=params.weight_type,
        exposure_time=info.weight_time,
        good_bits=params.good_bits,
    )


def _drizzle_input(
    info: MemberTaskInfo, params: OutlierParameters, origin: tuple[int, int]
) -> DrizzleInput:
    """One member's arrays and its pixel map counted from ``origin`` ``(y0, x0)``, the
    region's first pixel."""
    sci = info.source.read("SCI")
    if info.background_level is not None:
        sci -= np.float32(info.background_level)
    ny, nx = info.shape
    return DrizzleInput(
        data=sci,
        weight=_weights(info, params),
        pixmap=info.pixel_map.evaluate((0, ny), (0, nx), origin),
        exposure_time=info.exposure_time,
    )


def build_group_mosaic(
    group: GroupPlan, infos: list[MemberTaskInfo], params: OutlierParameters
) -> GroupMosaic:
    """Drizzle one exposure group onto its region and find its weight threshold.

    With ``resample_data=False`` the "group" is one input, its "mosaic" the input itself and
    its weight map the drizzle weight map, as in the reference.
    """
    (y0, y1), (x0, x1) = group.region
    if not params.resample_data:
        (info,) = infos
        data = info.source.read("SCI")
        weight = _weights(info, params)
    else:
        data, weight = drizzle_onto_region(
            # Members loaded one at a time: a group task holds one input's arrays at once.
            (_drizzle_input(info, params, (y0, x0)) for info in infos),
            (y1 - y0, x1 - x0),
            kernel=params.kernel,
            pixfrac=params.pixfrac,
            fillval=params.fillval,
        )
    threshold = weight_threshold(weight, params.maskpt)
    return GroupMosaic(group.region, data, weight, float(threshold))


@dataclass
class GroupTiles:
    """A group's masked mosaic cut into the grid's tiles (only the tiles it touches).

    Attributes
    ----------
    tiles : dict of (int, int) to ndarray, each (ty, tx) float32
        Masked mosaic values by tile index (row, column).
    outside : float
        Value of the masked mosaic where the group's region does not reach: the fill value,
        or NaN when the weight mask hides zero-weight pixels (threshold above 0).
    threshold : float
        The group's weight threshold.
    mosaic : GroupMosaic or None
        The unmasked mosaic and its weight, kept for intermediate products.
    """

    tiles: dict[tuple[int, int], np.ndarray]
    outside: float
    threshold: float
    mosaic: GroupMosaic | None


def masked_group_tiles(
    group: GroupPlan,
    infos: list[MemberTaskInfo],
    params: OutlierParameters,
    grid_shape: tuple[int, int],
    tile_shape: tuple[int, int],
    keep_mosaic: bool,
) -> GroupTiles:
    """Build a group's mosaic, mask it by weight and cut it into tiles, all in the worker.

    Only masked tiles travel back, half of what the mosaic and weight together would be.
    """
    mosaic = build_group_mosaic(group, infos, params)
    masked = mosaic.masked()
    (y0, y1), (x0, x1) = mosaic.region
    ty, tx = tile_shape
    tiles = {}
    for i in range(y0 // ty, -(-y1 // ty)):
        for j in range(x0 // tx, -(-x1 // tx)):
            window = (
                (i * ty, min((i + 1) * ty, grid_shape[0])),
                (j * tx, min((j + 1) * tx, grid_shape[1])),
            )
            tiles[(i, j)] = tile_of_region(mosaic.region, masked, window, np.nan)
    outside = outside_value(mosaic.threshold, params)
    if not np.isnan(outside):
        for (i, j), tile in tiles.items():
            window = ((i * ty, i * ty + tile.shape[0]), (j * tx, j * tx + tile.shape[1]))
            tile[_outside_region(mosaic.region, window)] = outside
    return GroupTiles(tiles, float(outside), mosaic.threshold, mosaic if keep_mosaic else None)


def outside_value(threshold: float, params: OutlierParameters) -> float:
    """What a group's masked mosaic holds beyond its region.

    There the weight is 0 and the reference's full-grid mosaic holds the fill value, which
    the weight mask hides (NaN) when the group's threshold is above 0.
    """
    return np.nan if threshold > 0 else fill_of(params)


def mosaic_into_stack(
    group: GroupPlan,
    infos: list[MemberTaskInfo],
    params: OutlierParameters,
    stack: SharedArray,
    index: int,
    box: Window | None,
    keep_mosaic: bool,
) -> tuple[float, GroupMosaic | None]:
    """Build a group's mosaic, mask it by weight, and write it into plane ``index`` of ``stack``.

    Parameters
    ----------
    stack : SharedArray, shape (n_groups, ny, nx), float32
        The masked stack, shared with the run's process.
    box : Window or None
        The whole tiles holding the group's region (see
        :func:`~outlier_dask.engine.plan.tiles_covering`). Only they are written: the region
        gets the masked mosaic, the rest of the box what the reference's full-grid mosaic
        holds beyond the region (:func:`outside_value`). Tiles outside the box are never
        touched, so they cost no memory; the median stage uses the outside value there.

    Returns
    -------
    threshold : float
        The group's weight threshold.
    mosaic : GroupMosaic or None
        The unmasked mosaic and its weight, if ``keep_mosaic``.
    """
    mosaic = build_group_mosaic(group, infos, params)
    if box is None:
        return mosaic.threshold, mosaic if keep_mosaic else None
    (b0, b1), (c0, c1) = box
    plane = stack.view()[index, b0:b1, c0:c1]
    (y0, y1), (x0, x1) = mosaic.region
    y0, y1, x0, x1 = y0 - b0, y1 - b0, x0 - c0, x1 - c0
    outside = outside_value(mosaic.threshold, params)
    plane[:y0] = outside
    plane[y1:] = outside
    plane[y0:y1, :x0] = outside
    plane[y0:y1, x1:] = outside
    mask_low_weight(mosaic.data, mosaic.weight, mosaic.threshold, out=plane[y0:y1, x0:x1])
    return mosaic.threshold, mosaic if keep_mosaic else None


def _stack_block(
    stack: SharedArray, window: Window, planes: tuple[tuple[Window | None, float], ...]
) -> np.ndarray:
    """A (n_groups, ty, tx) block of the shared stack; groups whose tiles do not include
    ``window`` hold their outside value there."""
    (y0, y1), (x0, x1) = window
    view = stack.view()
    block = np.empty((len(planes), y1 - y0, x1 - x0), dtype=np.float32)
    for g, (box, value) in enumerate(planes):
        if box is not None and _contains(box, window):
            block[g] = view[g, y0:y1, x0:x1]
        else:
            block[g] = value
    return block


def _contains(outer: Window, inner: Window) -> bool:
    (a0, a1), (b0, b1) = outer
    (c0, c1), (d0, d1) = inner
    return a0 <= c0 and c1 <= a1 and b0 <= d0 and d1 <= b1


def median_into(
    median: SharedArray,
    window: Window,
    stack: SharedArray | None = None,
    store: ScratchStore | None = None,
    outside: tuple[tuple[Window | None, float], ...] = (),
) -> None:
    """NaN-median over groups of one tile of the stack, written into the shared median.

    The masked stack is either shared (groups' planes written only on their tiles) or the
    ``data`` array of an out-of-core run's store, completed by :func:`store_stack_block`.

    Parameters
    ----------
    median : SharedArray, shape (ny, nx), float32
    window : Window
        ``((y0, y1), (x0, x1))``: one tile of the grid.
    stack : SharedArray, shape (n_groups, ny, nx), float32, optional
    store : ScratchStore, optional
    outside : tuple of (Window or None, float)
        Per group, :func:`outside_value` and where it does not apply: the whole tiles
        written (with ``stack``) or the region (with ``store``).
    """
    (y0, y1), (x0, x1) = window
    if stack is not None:
        block = _stack_block(stack, window, outside)
    else:
        block = store_stack_block(store.array("data")[:, y0:y1, x0:x1], window, outside)
    median.view()[y0:y1, x0:x1] = nanmedian_stack(block)


def mosaic_into_store(
    group: GroupPlan,
    infos: list[MemberTaskInfo],
    params: OutlierParameters,
    store: ScratchStore,
    index: int,
    keep_mosaic: bool,
) -> float:
    """Build a group's mosaic, mask it by weight and write its region into the store.

    Only the masked region is written (``data``, NaN elsewhere); the unmasked mosaic and its
    weight go to ``mosaic`` and ``weight`` only when kept for intermediate products. Returns
    the group's weight threshold.
    """
    mosaic = build_group_mosaic(group, infos, params)
    write_region(store, "data", index, mosaic.region, mosaic.masked())
    if keep_mosaic:
        write_region(store, "mosaic", index, mosaic.region, mosaic.data)
        write_region(store, "weight", index, mosaic.region, mosaic.weight)
    return mosaic.threshold


def store_stack_block(
    block: np.ndarray, window: Window, outside: tuple[tuple[Window, float], ...]
) -> np.ndarray:
    """Complete a block of the stored masked stack beyond each group's region.

    The store holds NaN wherever a group wrote nothing; a group whose :func:`outside_value`
    is a number (the fill value) gets that number there instead.

    Parameters
    ----------
    block : ndarray, shape (n_groups, ty, tx), float32
        The stored ``data`` over ``window`` (modified in place and returned).
    window : Window
        ``((y0, y1), (x0, x1))`` of the grid.
    outside : tuple of (Window, float)
        Per group, its region and outside value.
    """
    for plane, (region, value) in zip(block, outside, strict=True):
        if not np.isnan(value):
            plane[_outside_region(region, window)] = value
    return block


def _outside_region(region: Window, window: Window) -> np.ndarray:
    """Bool (rows, cols) of ``window``: its pixels outside ``region``."""
    (y0, y1), (x0, x1) = region
    rows = np.arange(*window[0])
    cols = np.arange(*window[1])
    inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    return ~inside


def tile_of_region(region: Window, values: np.ndarray, tile: Window, fill: float) -> np.ndarray:
    """The part of a region's array that falls in a grid tile, ``fill`` elsewhere.

    Returns
    -------
    ndarray, shape (tile rows, tile cols), same dtype as ``values``
    """
    (ty0, ty1), (tx0, tx1) = tile
    (ry0, ry1), (rx0, rx1) = region
    out = np.full((ty1 - ty0, tx1 - tx0), fill, dtype=values.dtype)
    y0, y1 = max(ty0, ry0), min(ty1, ry1)
    x0, x1 = max(tx0, rx0), min(tx1, rx1)
    if y0 < y1 and x0 < x1:
        out[y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0] = values[
            y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0
        ]
    return out


def median_of_tile(stack: np.ndarray) -> np.ndarray:
    """NaN-median over groups of one tile: (n_groups, ty, tx) float32 -> (ty, tx) float32."""
    return nanmedian_stack(stack)


@dataclass
class BlockResult:
    """Outcome of one block: the outlier mask of its inner pixels, and optionally the blot.

    ``n_valid`` and ``n_covered`` count the inner pixels with a finite SCI and with a finite
    blotted median (for the run report).
    """

    block: BlockPlan
    mask: np.ndarray
    blot: np.ndarray | None
    n_valid: int = 0
    n_covered: int = 0


def blot_and_flag_block(
    block: BlockPlan,
    info: MemberTaskInfo,
    median: np.ndarray | SharedArray | None,
    grid_shape: tuple[int, int],
    params: OutlierParameters,
    keep_blot: bool = False,
) -> BlockResult:
    """Blot the median onto one block of an input and flag its outliers.

    Parameters
    ----------
    block : BlockPlan
        The block, with its halo (``outer``) and median cut-out rectangle.
    info : MemberTaskInfo
        The input.
    median : ndarray, SharedArray or None
        The median over ``block.cutout`` (ndarray of that shape, float32), or the whole
        median shared with this process (SharedArray), or None (the block maps off the
        median).
    grid_shape : (int, int)
        Shape of the whole median.
    params : OutlierParameters
        Flag-rule parameters.
    keep_blot : bool
        Also return the blotted median of the inner pixels.

    Returns
    -------
    BlockResult
        ``mask`` has the shape of ``block.inner`` (bool).
    """
    (r0, r1), (c0, c1) = block.outer
    (i0, i1), (j0, j1) = block.inner
    inner = (slice(i0 - r0, i1 - r0), slice(j0 - c0, j1 - c0))
    sci, err = info.source.read_all(("SCI", "ERR"), block.outer)
    if err is None:
        err = np.zeros_like(sci)
    if median is None or block.cutout is None:
        reference = np.full(sci.shape, np.nan, dtype=np.float32)
    elif isinstance(median, SharedArray):
        whole = median.view()
        if params.resample_data:
            pixmap = info.pixel_map.evaluate((r0, r1), (c0, c1))
            reference = blot_from_whole_median(whole, pixmap)
        else:
            reference = whole[r0:r1, c0:c1]
    elif params.resample_data:
        pixmap = info.pixel_map.evaluate((r0, r1), (c0, c1))
        (my0, _), (mx0, _) = block.cutout
        reference = blot_bilinear(median, (my0, mx0), grid_shape, pixmap)
    else:
        reference = median
    if params.resample_data:
        backg = params.backg if info.background_level is None else info.background_level
        mask = flag_resampled_outliers(
            sci, err, reference, snr=params.snr_pair, scale=params.scale_pair, backg=backg
        )
    else:
        mask = flag_unresampled_outliers(sci, err, reference, snr1=params.snr_pair[0])
    blot = reference[inner].copy() if keep_blot else None
    n_valid = int(np.count_nonzero(np.isfinite(sci[inner])))
    n_covered = int(np.count_nonzero(np.isfinite(reference[inner])))
    return BlockResult(block, mask[inner].copy(), blot, n_valid, n_covered)


@dataclass
class MemberOutcome:
    """One input's result: counts for the report, and the mask and blot if kept.

    Attributes
    ----------
    flagged, valid, covered : int
        Pixels flagged; pixels with finite SCI; pixels where the blotted median is finite.
    mask : ndarray, (ny, nx) bool, or None
    blot : ndarray, (ny, nx) float32, or None
    write_seconds : float
        Time the writer took (0 without one).
    """

    flagged: int
    valid: int
    covered: int
    mask: np.ndarray | None
    blot: np.ndarray | None
    write_seconds: float = 0.0


def finish_member(
    shape: tuple[int, int],
    results: list[BlockResult],
    writer: Callable[[np.ndarray], Any] | None,
    keep_mask: bool,
    keep_blot: bool,
) -> MemberOutcome:
    """Assemble one input's blocks into its mask (and blot), hand the mask to ``writer``."""
    mask = np.zeros(shape, dtype=bool)
    blot = np.full(shape, np.nan, dtype=np.float32) if keep_blot else None
    for result in results:
        (r0, r1), (c0, c1) = result.block.inner
        mask[r0:r1, c0:c1] = result.mask
        if blot is not None:
            blot[r0:r1, c0:c1] = result.blot
    started = time.perf_counter()
    if writer is not None:
        writer(mask)
    return MemberOutcome(
        flagged=int(np.count_nonzero(mask)),
        valid=sum(r.n_valid for r in results),
        covered=sum(r.n_covered for r in results),
        mask=mask if keep_mask else None,
        blot=blot,
        write_seconds=time.perf_counter() - started if writer is not None else 0.0,
    )


def flag_member(
    shape: tuple[int, int],
    blocks: list[BlockPlan],
    info: MemberTaskInfo,
    median: SharedArray,
    grid_shape: tuple[int, int],
    params: OutlierParameters,
    writer: Callable[[np.ndarray], Any] | None,
    keep_mask: bool,
    keep_blot: bool,
) -> MemberOutcome:
    """Blot and flag every block of one input against the shared median, then finish it.

    One task per input on local schedulers: its blocks run one after the other (a block's
    memory at a time), and no block mask travels between processes.
    """
    results = [
        blot_and_flag_block(block, info, median, grid_shape, params, keep_blot) for block in blocks
    ]
    return finish_member(shape, results, writer, keep_mask, keep_blot)


def fill_of(params: OutlierParameters) -> float:
    """The number mosaic pixels without weight hold."""
    return fill_value_number(params.fillval)
