"""Rectangles of pixel grids: the one module for window arithmetic.

A window is ``((y0, y1), (x0, x1))``: half-open row and column ranges in the pixels of some
grid (an input frame or the output grid). Plans, tasks and estimates all count, clip, cover and
cut with these functions, so a rule such as "whole tiles holding a region" exists once.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "Range",
    "Window",
    "area",
    "contains",
    "crop_or_fill",
    "meets",
    "outside_of",
    "tile_ranges",
    "tiled_area",
    "tiles_covering",
    "tiles_met",
    "union",
]

Range = tuple[int, int]
Window = tuple[Range, Range]


def tile_ranges(n: int, size: int) -> list[Range]:
    """Half-open ranges of length ``size`` (the last one shorter) covering ``[0, n)``."""
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def area(window: Window | None) -> int:
    """Pixels in ``window`` (0 for None or an empty window)."""
    if window is None:
        return 0
    (y0, y1), (x0, x1) = window
    return max(0, y1 - y0) * max(0, x1 - x0)


def meets(first: Window, second: Window) -> bool:
    """Whether two windows share a pixel."""
    (a0, a1), (b0, b1) = first
    (c0, c1), (d0, d1) = second
    return max(a0, c0) < min(a1, c1) and max(b0, d0) < min(b1, d1)


def contains(outer: Window, inner: Window) -> bool:
    """Whether every pixel of ``inner`` lies in ``outer``."""
    (a0, a1), (b0, b1) = outer
    (c0, c1), (d0, d1) = inner
    return a0 <= c0 and c1 <= a1 and b0 <= d0 and d1 <= b1


def union(windows: list[Window]) -> Window:
    """The smallest window holding every one of ``windows`` (a non-empty list)."""
    return (
        (min(w[0][0] for w in windows), max(w[0][1] for w in windows)),
        (min(w[1][0] for w in windows), max(w[1][1] for w in windows)),
    )


def tiles_covering(
    region: Window, tile_shape: tuple[int, int], grid_shape: tuple[int, int]
) -> Window | None:
    """The smallest window of whole grid tiles holding ``region`` (None if it is empty).

    Every tile of the grid then lies either inside this window or wholly outside it.
    """
    met = tiles_met(region, tile_shape)
    if met is None:
        return None
    ((r0, r1), (c0, c1)), (ty, tx) = met, tile_shape
    return ((r0 * ty, min(r1 * ty, grid_shape[0])), (c0 * tx, min(c1 * tx, grid_shape[1])))


def tiles_met(region: Window, tile_shape: tuple[int, int]) -> Window | None:
    """The grid tiles ``region`` meets, as ``((row0, row1), (col0, col1))`` tile indices (end
    excluded); None if it is empty."""
    (y0, y1), (x0, x1) = region
    if y0 >= y1 or x0 >= x1:
        return None
    ty, tx = tile_shape
    return (y0 // ty, -(-y1 // ty)), (x0 // tx, -(-x1 // tx))


def tiled_area(region: Window, tile_shape: tuple[int, int], grid_shape: tuple[int, int]) -> int:
    """Pixels of the whole tiles ``region`` touches, counting edge tiles at full size (what a
    chunked store holds for it)."""
    box = tiles_covering(region, tile_shape, grid_shape)
    if box is None:
        return 0
    (y0, y1), (x0, x1) = box
    ty, tx = tile_shape
    return -(-(y1 - y0) // ty) * ty * -(-(x1 - x0) // tx) * tx


def outside_of(region: Window, window: Window) -> np.ndarray:
    """Bool array, shape of ``window``: True at its pixels outside ``region``."""
    (y0, y1), (x0, x1) = region
    rows = np.arange(*window[0])
    cols = np.arange(*window[1])
    inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    return ~inside


def crop_or_fill(values: np.ndarray, region: Window, window: Window, fill: float) -> np.ndarray:
    """The part of a region's array that falls in ``window``, ``fill`` elsewhere.

    Parameters
    ----------
    values : ndarray, shape of ``region``
        Values over ``region``.
    region, window : Window
        Both in the same grid's pixels.
    fill : float
        Value of the pixels of ``window`` outside ``region``.

    Returns
    -------
    ndarray, shape of ``window``, dtype of ``values``
    """
    (wy0, wy1), (wx0, wx1) = window
    (ry0, _), (rx0, _) = region
    out = np.full((wy1 - wy0, wx1 - wx0), fill, dtype=values.dtype)
    (y0, y1), (x0, x1) = (
        (max(wy0, region[0][0]), min(wy1, region[0][1])),
        (max(wx0, region[1][0]), min(wx1, region[1][1])),
    )
    if y0 < y1 and x0 < x1:
        out[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0] = values[
            y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0
        ]
    return out
