"""Drizzle onto one output tile and blot one input block: thin wrappers of the compiled drizzle.

This module owns the resampling formulas of algorithm.md §1.4 (drizzle), delegated to the
compiled ``drizzle`` package exactly as the reference does, and §1.7 (bilinear blot), written
here in numpy with the C code's single-precision arithmetic so that a block of an input can be
blotted from a cut-out of the median and still equal the whole-frame result bit for bit. Where
the whole median is at hand (local schedulers share it), the compiled blot itself is used: it
reads only the median pixels a block maps into, and is faster than the numpy one.

Drizzle clips each input's outline against the output array before it scans input rows, and
keeps only input pixels wholly inside the clipped outline; the outline's corners are found by an
approximate inversion. Drizzling onto an output *tile* therefore drops pixels at the tile's
edges. Each group is instead drizzled onto a region that holds every member's whole outline,
as the reference's full grid does, which gives the reference's values exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from drizzle.resample import Drizzle, blot_image

__all__ = [
    "MIN_STRIP_ROWS",
    "STRIP_PIXMAP_BYTES",
    "DrizzleInput",
    "blot_bilinear",
    "blot_from_whole_median",
    "drizzle_onto_region",
    "strip_rows",
    "strips_of",
]


PixmapRows = Callable[[int, int], np.ndarray]
"""``pixmap_rows(r0, r1)``: output positions of input rows ``[r0, r1)``, shape
(r1 - r0, wx, 2), float64 (x, y), as :attr:`DrizzleInput.pixmap_rows` gives them."""

STRIP_PIXMAP_BYTES = 8 * 2**20
"""Largest pixel map a strip of an input is drizzled with (float64 x, y per pixel).

A whole 2048 x 2048 map is 64 MiB; strips bound a group task's pixel-map memory whatever the
detector size. Each strip's array is still a new allocation, which the allocator often serves
with fresh pages that the kernel zeroes (measured on the performance page, fifth handover
round).
"""


@dataclass(frozen=True)
class DrizzleInput:
    """One input window ready to be drizzled.

    Attributes
    ----------
    data : ndarray, shape (wy, wx), float32
        Science values of the window (background already subtracted), in the units of SCI.
    weight : ndarray, shape (wy, wx), float32
        Drizzle weight per input pixel (0 where unusable).
    pixmap_rows : callable
        ``pixmap_rows(r0, r1)`` is the position (x, y) of each input pixel centre of rows
        ``[r0, r1)`` on the region :func:`drizzle_onto_region` fills, 0-based (its output-grid
        position minus the region's origin): shape (r1 - r0, wx, 2), float64, NaN where unknown.
        Evaluated strip by strip, so that the whole map never needs to exist.
    exposure_time : float
        Exposure time in seconds (> 0); bookkeeping only, as data are in rate units.
    valid_rows : (int, int) or None
        ``[r0, r1)``: the rows outside which the pixel map is NaN (the WCS's bounding box);
        None: unknown, every row.
    outline_inside : bool
        The input's outline (its border's positions, half a pixel out) lies inside the
        region, so drizzle clips nothing of it: only then is it drizzled in strips.
    """

    data: np.ndarray
    weight: np.ndarray
    pixmap_rows: PixmapRows
    exposure_time: float
    valid_rows: tuple[int, int] | None = None
    outline_inside: bool = False

    @classmethod
    def with_pixmap(
        cls,
        data: np.ndarray,
        weight: np.ndarray,
        pixmap: np.ndarray,
        exposure_time: float,
        outline_inside: bool = False,
    ) -> DrizzleInput:
        """An input whose whole pixel map, shape (wy, wx, 2) float64, is already computed."""
        return cls(data, weight, lambda r0, r1: pixmap[r0:r1], exposure_time, None, outline_inside)


MIN_STRIP_ROWS = 16
"""Fewest rows of a strip: the compiled drizzle scans rows between the edges of an outline it
maps out and back by an approximate inversion, whose errors tilt the edges of very thin strips."""


def strip_rows(n_columns: int, pixmap_bytes: int = STRIP_PIXMAP_BYTES) -> int:
    """Rows per strip such that a strip's pixel map holds at most ``pixmap_bytes`` (at least
    :data:`MIN_STRIP_ROWS`)."""
    return max(MIN_STRIP_ROWS, pixmap_bytes // (16 * max(n_columns, 1)))


def strips_of(rows: tuple[int, int], per_strip: int) -> list[tuple[int, int]]:
    """``[r0, r1)`` strips of ``per_strip`` rows covering ``rows``; a last strip shorter than
    :data:`MIN_STRIP_ROWS` joins the one before it."""
    start, stop = rows
    bounds = list(range(start, stop, max(per_strip, MIN_STRIP_ROWS))) + [stop]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < MIN_STRIP_ROWS:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _add_in_strips(driz: Drizzle, item: DrizzleInput, per_strip: int, pixfrac: float) -> None:
    """Drizzle ``item`` in strips of its valid rows, in input order (one call where it is not
    :attr:`~DrizzleInput.outline_inside`).

    Each strip passes one row more on either side, outside the rows it drizzles (``ymin`` and
    ``ymax``): the compiled kernel finds a pixel's corners from its neighbours' positions, so
    every pixel sees the same neighbours as in one whole call. With the outline inside the
    output nothing is clipped, every row is scanned whole in both cases, and input pixels
    reach the output in the same order: the weighted means are the same bit for bit. Where
    the output clips the outline, the scan limits follow chords of the clipped outline, which
    differ between a strip and the whole input. Rows outside ``valid_rows`` have no position
    and give nothing in one call either.
    """
    n_rows = item.data.shape[0]
    v0, v1 = item.valid_rows if item.valid_rows is not None else (0, n_rows)
    split = item.outline_inside and v1 - v0 >= 2 * MIN_STRIP_ROWS
    strips = strips_of((v0, v1), per_strip) if split else [(0, n_rows)]
    for r0, r1 in strips:
        lo, hi = max(r0 - split, 0), min(r1 + split, n_rows)
        driz.add_image(
            item.data[lo:hi],
            exptime=item.exposure_time,
            pixmap=item.pixmap_rows(lo, hi),
            weight_map=item.weight[lo:hi],
            pixfrac=pixfrac,
            in_units="cps",
            ymin=r0 - lo,
            ymax=r1 - 1 - lo,
        )


def drizzle_onto_region(
    inputs: Iterable[DrizzleInput],
    region_shape: tuple[int, int],
    *,
    kernel: str = "square",
    pixfrac: float = 1.0,
    fillval: str = "NAN",
    pixmap_bytes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Drizzle the members of one exposure group, in order, onto a region of the output grid.

    Parameters
    ----------
    inputs : iterable of DrizzleInput
        The members of one exposure group, in group order (an iterator lets the caller load
        them one at a time); each member's whole outline must lie inside the region, except
        where the region ends at the output grid's edge.
    region_shape : (int, int)
        ``(ry, rx)`` of the region.
    kernel, pixfrac, fillval
        Drizzle kernel, drop fraction and fill value (see ``OutlierParameters``).
    pixmap_bytes : int, optional
        Largest pixel map of one strip (:func:`strip_rows`; default
        :data:`STRIP_PIXMAP_BYTES`); the result does not depend on it.

    Returns
    -------
    data : ndarray, shape (ry, rx), float32
        Weighted mean of the inputs per output pixel; ``fillval`` where no weight landed.
    weight : ndarray, shape (ry, rx), float32
        Summed drizzle weight per output pixel.
    """
    # Drizzle fills every output pixel without weight after each call: a pass over the whole
    # region per strip, as long as the strip's own drizzling. Its "INDEF" skips that pass only
    # when the caller passes the output array (drizzle turns "INDEF" into "NaN" for arrays it
    # allocates), so the array starts at the fill value here and is filled once at the end. A
    # pixel's value only depends on its weights, never on what it held before (a pixel's first
    # weight overwrites it), so the result is the same bit for bit.
    fill = np.float32(fill_value_number(fillval))
    driz = Drizzle(
        kernel=kernel,
        fillval="INDEF",
        out_img=np.full(region_shape, fill, dtype=np.float32),
        disable_ctx=True,
    )
    remaining = iter(inputs)
    # Each input is dropped before the next is loaded (a loop variable would keep it alive
    # while the iterator builds the next one): one input's arrays at a time.
    while (item := next(remaining, None)) is not None:
        per_strip = strip_rows(item.data.shape[1], pixmap_bytes or STRIP_PIXMAP_BYTES)
        _add_in_strips(driz, item, per_strip, pixfrac)
        del item
    data, weight = driz.out_img, driz.out_wht
    # As drizzle's fill: every pixel whose summed weight is 0, even one a weight reached.
    np.copyto(data, fill, where=weight == 0)
    return data, weight


def fill_value_number(fillval: str) -> float:
    """The number a drizzle ``fillval`` string stands for (NaN for ``"NAN"``/``"INDEF"``)."""
    text = str(fillval).strip().upper()
    return np.nan if text in ("NAN", "INDEF", "") else float(text)


def blot_bilinear(
    median_cutout: np.ndarray,
    cutout_origin: tuple[int, int],
    median_shape: tuple[int, int],
    pixmap: np.ndarray,
) -> np.ndarray:
    """Bilinear blot of the median back onto input pixels (algorithm.md §1.7).

    The arithmetic is the compiled blot's: positions are rounded to float32, a pixel is used if
    ``0 <= x < nx`` and ``0 <= y < ny`` of the *whole* median, the last column (row) of the
    median interpolates along y (x) only, and all products are single precision.

    Parameters
    ----------
    median_cutout : ndarray, shape (cy, cx), float32
        A rectangle of the median image, in the units of SCI. It must hold every 2x2 cell the
        pixel map touches (the caller adds one pixel beyond the largest mapped position).
    cutout_origin : (int, int)
        ``(y0, x0)`` of the cut-out in the median grid.
    median_shape : (int, int)
        ``(ny, nx)`` of the whole median grid.
    pixmap : ndarray, shape (by, bx, 2), float64
        Median-grid position (x, y) of each input pixel; NaN where the input has no mapping.

    Returns
    -------
    ndarray, shape (by, bx), float32
        The blotted median; NaN off the median and wherever a used median value is NaN.

    Raises
    ------
    ValueError
        If a mapped position needs median pixels outside the cut-out.
    """
    ny, nx = median_shape
    y0, x0 = cutout_origin
    cy, cx = median_cutout.shape
    xo = pixmap[..., 0].astype(np.float32)
    yo = pixmap[..., 1].astype(np.float32)
    with np.errstate(invalid="ignore"):
        inside = (xo >= 0) & (xo < np.float32(nx)) & (yo >= 0) & (yo < np.float32(ny))
    everywhere = bool(inside.all())
    if not everywhere and not inside.any():
        return np.full(pixmap.shape[:2], np.nan, dtype=np.float32)
    # Most blocks lie wholly on the median: then work on the full arrays, no compress/scatter.
    x = xo if everywhere else xo[inside]
    y = yo if everywhere else yo[inside]
    i = x.astype(np.intp)
    j = y.astype(np.intp)
    last_col = i == nx - 1
    last_row = j == ny - 1
    edge = bool(last_col.any() or last_row.any())
    li, lj = i - x0, j - y0
    reach_x = (li + ~last_col).max() if edge else li.max() + 1
    reach_y = (lj + ~last_row).max() if edge else lj.max() + 1
    if li.min() < 0 or lj.min() < 0 or reach_x >= cx or reach_y >= cy:
        raise ValueError("blot: the median cut-out does not cover the mapped positions")
    # Gathers on the flattened cut-out are several times faster than 2-D fancy indexing;
    # the step to the right (down) neighbour is 0 on the median's last column (row).
    flat = np.ascontiguousarray(median_cutout, dtype=np.float32).ravel()
    k00 = lj * cx
    k00 += li
    if edge:
        step_x = (~last_col).astype(np.intp)
        step_y = (~last_row).astype(np.intp) * cx
        f10 = flat[k00 + step_x]
        f01 = flat[k00 + step_y]
        f11 = flat[k00 + step_x + step_y]
    else:
        f10 = flat[k00 + 1]
        f01 = flat[k00 + cx]
        f11 = flat[k00 + (cx + 1)]
    f00 = flat[k00]
    sx = x - i.astype(np.float32)
    sy = y - j.astype(np.float32)
    tx = np.float32(1) - sx
    ty = np.float32(1) - sy
    value = tx * ty * f00 + sx * ty * f10 + sy * tx * f01 + sx * sy * f11
    if edge:
        along_y = ty * f00 + sy * f01
        along_x = tx * f00 + sx * f10
        value = np.where(last_col & ~last_row, along_y, value)
        value = np.where(last_row & ~last_col, along_x, value)
        value = np.where(last_col & last_row, f00, value)
    if everywhere:
        return value
    out = np.full(pixmap.shape[:2], np.nan, dtype=np.float32)
    out[inside] = value
    return out


def blot_from_whole_median(median: np.ndarray, pixmap: np.ndarray) -> np.ndarray:
    """Bilinear blot of the whole median onto input pixels, by the compiled drizzle.

    This is the reference's call (algorithm.md §1.7), including its replacement of unmapped
    (NaN) positions by -1, which lie off the median. The result equals
    :func:`blot_bilinear` bit for bit; each output pixel depends only on its own position, so a
    block of an input may be blotted on its own.

    Parameters
    ----------
    median : ndarray, shape (ny, nx), float32
        The whole median image, C-contiguous (it may be read-only).
    pixmap : ndarray, shape (by, bx, 2), float64
        Median-grid position (x, y) of each input pixel; NaN where the input has no mapping.
        Consumed: its NaNs are replaced in place.

    Returns
    -------
    ndarray, shape (by, bx), float32
        The blotted median; NaN off the median and wherever a used median value is NaN.
    """
    pixmap[np.isnan(pixmap)] = -1.0
    out = np.full(pixmap.shape[:2], np.nan, dtype=np.float32)
    blot_image(median, pixmap, out_img=out, fillval=np.nan, iscale=1.0, interp="linear")
    return out
