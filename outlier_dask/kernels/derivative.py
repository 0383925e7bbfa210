"""Absolute derivative of a blotted median (the "interpolation noise" term of the flag rule).

This module owns formula §1.8 of ``docs/algorithm.md``::

    D[p] = NaN                                                 if B[p] is NaN
    D[p] = max(0, max |B[p] - B[q]| over the up/down/left/right
                  neighbours q inside the array with B[q] finite)   otherwise

It is pure numpy: an array in, an array out.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DERIVATIVE_HALO_PX", "abs_derivative"]

#: Reach of :func:`abs_derivative` in pixels: ``D[p]`` depends on ``B`` at most 1 pixel away,
#: so a block padded by this many pixels gives exact values on its inner part.
DERIVATIVE_HALO_PX: int = 1


def abs_derivative(blot: np.ndarray) -> np.ndarray:
    """Largest absolute difference between each pixel and its 4 in-array neighbours (§1.8).

    Parameters
    ----------
    blot : ndarray, shape (ny, nx), float (normally float32)
        Blotted median, in the units of SCI (e.g. MJy/sr). NaN marks missing values.

    Returns
    -------
    ndarray, shape (ny, nx), dtype of ``blot``
        ``D``, same units as ``blot``: NaN where ``blot`` is NaN; otherwise the maximum of
        ``|B[p] - B[q]|`` over the up, down, left and right neighbours ``q`` that lie inside
        the array and are finite, or 0 if there is none. Differences are computed in the
        dtype of ``blot``. Array edges are edges of the image: a block must carry a halo of
        :data:`DERIVATIVE_HALO_PX` pixels for its inner values to be exact.

    Notes
    -----
    Equal bit for bit to stcal's ``_abs_deriv`` (stcal 1.20) for every input without an
    infinite difference. When ``|B[p] - B[q]|`` is infinite (±inf in ``blot``, or float32
    overflow near ±3.4e38), stcal is not symmetric: it ignores the difference with the
    neighbour *above* but keeps it for the other three. This function follows the formula of
    §1.8 instead: infinite neighbours are ignored, an infinite pixel with a finite neighbour
    gets inf, and an overflowing difference between finite pixels counts (as inf).
    """
    finite = np.isfinite(blot)
    derivative = np.zeros_like(blot)

    def take_max(target: np.ndarray, difference: np.ndarray, neighbour_finite: np.ndarray) -> None:
        # fmax ignores the NaN differences that come from a NaN target pixel (reset below).
        # Where the neighbour is not finite the target keeps its value, which is what taking
        # the max with 0 would give: targets start at +0 and only grow.
        np.fmax(target, difference, out=target, where=neighbour_finite)

    rows = np.abs(np.diff(blot, axis=0))  # |B[i+1, j] - B[i, j]|
    take_max(derivative[1:], rows, finite[:-1])  # neighbour above
    take_max(derivative[:-1], rows, finite[1:])  # neighbour below
    del rows
    cols = np.abs(np.diff(blot, axis=1))  # |B[i, j+1] - B[i, j]|
    take_max(derivative[:, 1:], cols, finite[:, :-1])  # neighbour to the left
    take_max(derivative[:, :-1], cols, finite[:, 1:])  # neighbour to the right
    del cols
    derivative[np.isnan(blot)] = np.nan
    return derivative
