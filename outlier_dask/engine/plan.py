"""The plan of a run: output grid, exposure groups and their regions, input blocks.

Everything here is decided from metadata and pixel maps before any task runs, so the graph
has a fixed shape and every bad input is reported before heavy work starts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import gwcs

from outlier_dask.geometry.output_grid import (
    footprints_from_s_region,
    grid_for_mapping,
    output_wcs_from_footprints,
)
from outlier_dask.geometry.pixel_map import (
    PixelMap,
    build_pixel_map,
    checked_spline_from_samples,
)
from outlier_dask.geometry.windows import Window, contains, tile_ranges, union
from outlier_dask.io.members import Member
from outlier_dask.kernels.flags import FLAG_HALO_PX
from outlier_dask.parameters import OutlierParameters

__all__ = ["BlockPlan", "GroupPlan", "Plan", "make_plan"]

log = logging.getLogger(__name__)

# Drizzle maps pixel corners by extrapolating the map half a pixel beyond the centres; two
# pixels of margin keep every member's outline inside its group's region.
REGION_MARGIN_PX = 2
# A blot cut-out reaches one pixel past the largest mapped position (the bilinear cell) plus
# a pixel for the border-bound approximation.
CUTOUT_MARGIN_PX = 2


@dataclass(frozen=True)
class GroupPlan:
    """One exposure group and the rectangle of the output grid its members cover.

    Attributes
    ----------
    group_id : str
        The group's id.
    members : tuple of int
        Member indices in group order.
    region : Window
        ``((y0, y1), (x0, x1))`` half-open, in output-grid pixels.
    outlines_inside : tuple of bool
        Per member, whether its outline lies inside the grid, so that drizzle clips nothing
        of it (:attr:`~outlier_dask.kernels.resample.DrizzleInput.outline_inside`).
    """

    group_id: str
    members: tuple[int, ...]
    region: Window
    outlines_inside: tuple[bool, ...] = ()


@dataclass(frozen=True)
class BlockPlan:
    """One block of one input frame for blot and compare.

    Attributes
    ----------
    member : int
        Member index.
    inner : Window
        The pixels this block decides, ``((r0, r1), (c0, c1))`` half-open.
    outer : Window
        ``inner`` plus the halo the flag rule needs, clipped to the frame.
    cutout : Window or None
        Rectangle of the median grid the block's pixels map into (None: maps nowhere).
    """

    member: int
    inner: Window
    outer: Window
    cutout: Window | None


@dataclass
class Plan:
    """All decisions of a run.

    Attributes
    ----------
    members : list of Member
        Inputs in association order.
    product_name : str
        Association product name (names the median and the report).
    grid_wcs : gwcs.WCS or None
        The output grid (None with ``resample_data=False``: the median is in the inputs' frame).
    grid_shape : (int, int)
        ``(ny, nx)`` of the median.
    pixel_maps : list of PixelMap or None
        Per member, input pixel -> output grid.
    groups : list of GroupPlan
        Mosaics to build, in median order (with ``resample_data=False``: one per input).
    tile_shape : (int, int)
        Chunk shape ``(ty, tx)`` of mosaics and median.
    blocks : list of BlockPlan
        Blot-and-compare blocks of every input.
    """

    members: list[Member]
    product_name: str
    grid_wcs: gwcs.WCS | None
    grid_shape: tuple[int, int]
    pixel_maps: list[PixelMap] | None
    groups: list[GroupPlan]
    tile_shape: tuple[int, int]
    blocks: list[BlockPlan]

    @property
    def n_groups(self) -> int:
        """Number of mosaics in the median stack."""
        return len(self.groups)


def _groups_in_order(members: list[Member]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for member in members:
        groups.setdefault(member.group_id, []).append(member.index)
    return groups


Bounds = tuple[float, float, float, float]
"""``(xmin, xmax, ymin, ymax)`` output positions of a window's border
(:meth:`~outlier_dask.geometry.pixel_map.PixelMap.border_bounds`)."""


def _outset(bounds: Bounds | None, margin: int) -> Window | None:
    """The rectangle of whole grid pixels holding ``bounds``, plus ``margin`` pixels, not
    clipped (None if the window maps nowhere)."""
    if bounds is None:
        return None
    xmin, xmax, ymin, ymax = bounds
    return (
        (math.floor(ymin) - margin, math.ceil(ymax) + margin + 1),
        (math.floor(xmin) - margin, math.ceil(xmax) + margin + 1),
    )


def _clipped(bounds: Window | None, grid_shape: tuple[int, int]) -> Window | None:
    """``bounds`` cut to the grid (None if nothing of it is on the grid)."""
    if bounds is None:
        return None
    (y0, y1), (x0, x1) = bounds
    gy, gx = grid_shape
    y0, y1, x0, x1 = max(0, y0), min(gy, y1), max(0, x0), min(gx, x1)
    if y0 >= y1 or x0 >= x1:
        return None
    return (y0, y1), (x0, x1)


def _blocks_of(
    member: Member,
    pixel_map: PixelMap | None,
    grid_shape: tuple[int, int],
    block_size: int,
    halo: int,
    frame_bounds: Bounds | None,
) -> list[BlockPlan]:
    """The blocks of one member; ``frame_bounds`` are its whole frame's border bounds (None:
    it maps nowhere, or there is no pixel map), which a block covering the frame reuses (a
    survey's frames are often one block each)."""
    ny, nx = member.shape
    frame = ((0, ny), (0, nx))
    blocks = []
    for r0, r1 in tile_ranges(ny, block_size):
        for c0, c1 in tile_ranges(nx, block_size):
            outer = (
                (max(0, r0 - halo), min(ny, r1 + halo)),
                (max(0, c0 - halo), min(nx, c1 + halo)),
            )
            if pixel_map is None:
                cutout: Window | None = outer
            else:
                bounds = frame_bounds if outer == frame else pixel_map.border_bounds(*outer)
                cutout = _clipped(_outset(bounds, CUTOUT_MARGIN_PX), grid_shape)
            blocks.append(BlockPlan(member.index, ((r0, r1), (c0, c1)), outer, cutout))
    return blocks


def make_plan(members: list[Member], product_name: str, params: OutlierParameters) -> Plan:
    """Decide the output grid, groups, regions and blocks of a run.

    Raises
    ------
    ValueError
        If inputs must share a shape (``resample_data=False``) and do not, or if the output
        grid cannot be built from the inputs' footprints (``GridTooLargeError`` when it would
        exceed ``max_grid_pixels``; this comes before any pixel map is built).
    """
    halo = FLAG_HALO_PX if params.resample_data else 0
    tile = (params.tile_size, params.tile_size)
    if not params.resample_data:
        return _plan_without_resampling(members, product_name, params, tile)
    footprints = [p for m in members for p in footprints_from_s_region(m.wcsinfo["s_region"])]
    grid = output_wcs_from_footprints(
        footprints, members[0].wcs, members[0].wcsinfo, max_pixels=int(params.max_grid_pixels)
    )
    grid_shape = (int(grid.array_shape[0]), int(grid.array_shape[1]))
    mapping_grid = grid_for_mapping(grid)
    pixel_maps = [_pixel_map(m, mapping_grid, params) for m in members]
    for m, pm in zip(members, pixel_maps, strict=True):
        log.debug("%s: pixel map by %s, max error %.2g px", m.name, pm.method, pm.max_error_px)
    frame_bounds = [
        pm.border_bounds((0, m.shape[0]), (0, m.shape[1]))
        for m, pm in zip(members, pixel_maps, strict=True)
    ]
    groups = []
    for group_id, indices in _groups_in_order(members).items():
        regions, inside = [], []
        for i in indices:
            outline = _outset(frame_bounds[i], REGION_MARGIN_PX)
            # With the margin inside the grid, drizzle clips nothing of the member's outline.
            inside.append(
                outline is not None and contains(((0, grid_shape[0]), (0, grid_shape[1])), outline)
            )
            region = _clipped(outline, grid_shape)
            if region is not None:
                regions.append(region)
        region = union(regions) if regions else ((0, 0), (0, 0))
        groups.append(GroupPlan(group_id, tuple(indices), region, tuple(inside)))
    blocks = [
        b
        for m in members
        for b in _blocks_of(
            m, pixel_maps[m.index], grid_shape, params.block_size, halo, frame_bounds[m.index]
        )
    ]
    return Plan(members, product_name, grid, grid_shape, pixel_maps, groups, tile, blocks)


def _pixel_map(member: Member, grid: gwcs.WCS, params: OutlierParameters) -> PixelMap:
    """The member's pixel map onto ``grid``: from its sky samples where they give it (its
    WCS is then not needed here), else from its WCS; the same map either way."""
    from_samples = checked_spline_from_samples(
        member.sky_samples,
        grid,
        member.shape,
        tolerance_px=params.pixmap_tolerance,
        stepsize=params.pixmap_stepsize,
    )
    if from_samples is not None:
        return from_samples
    return build_pixel_map(
        member.wcs,
        grid,
        member.shape,
        tolerance_px=params.pixmap_tolerance,
        stepsize=params.pixmap_stepsize,
        order=params.pixmap_order,
    )


def _plan_without_resampling(
    members: list[Member], product_name: str, params: OutlierParameters, tile: tuple[int, int]
) -> Plan:
    shapes = {m.shape for m in members}
    if len(shapes) > 1:
        listing = ", ".join(f"{m.name} {m.shape[0]}x{m.shape[1]}" for m in members)
        raise ValueError(f"resample_data=False needs inputs of one shape; got {listing}")
    shape = members[0].shape
    full = ((0, shape[0]), (0, shape[1]))
    groups = [GroupPlan(m.name, (m.index,), full) for m in members]
    blocks = [b for m in members for b in _blocks_of(m, None, shape, params.block_size, 0, None)]
    return Plan(members, product_name, None, shape, None, groups, tile, blocks)
