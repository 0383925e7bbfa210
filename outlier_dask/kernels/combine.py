"""Combining few groups: the median after rejecting the highest value (opt-in, not jwst's).

With two groups the NaN-median is their mean, so a cosmic ray in one group lifts the median
seen by both: the clean exposure is then flagged and the hit one diluted. Rejecting the
highest value first (AstroDrizzle's ``nhigh``; with two values this is the minimum, as in
its ``minmed``) keeps a single positive outlier out of the median. It is applied only where
few groups cover a pixel, because with three or more the median already ignores one outlier
and rejection would bias the median low for nothing::

    n = count of non-NaN values at the pixel
    combined = nanmedian(values without the single highest)   if 2 <= n <= max_groups
             = nanmedian(values)                              otherwise (§1.6)

Pure numpy: arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

from outlier_dask.kernels.median import nanmedian_stack, planes_with_values

__all__ = ["count_finite", "nanmedian_reject_highest"]


def count_finite(stack: np.ndarray) -> np.ndarray:
    """Number of non-NaN values along the first axis.

    Parameters
    ----------
    stack : ndarray, shape (n, ny, nx), float
        Frames (masked group mosaics); NaN marks missing values.

    Returns
    -------
    ndarray, shape (ny, nx), int16
        How many frames hold a value at each pixel (the groups covering it).
    """
    return np.count_nonzero(~np.isnan(stack), axis=0).astype(np.int16)


def nanmedian_reject_highest(stack: np.ndarray, max_groups: int) -> np.ndarray:
    """NaN-median over the first axis, the highest value dropped where few values exist.

    Parameters
    ----------
    stack : ndarray, shape (n, ny, nx), float (normally float32)
        Frames to combine (masked group mosaics, SCI units); NaN marks missing values. Not
        modified.
    max_groups : int
        The highest value is dropped at pixels with ``2 <= count <= max_groups`` non-NaN
        values; values below 2 drop nothing, so the result is :func:`nanmedian_stack`.

    Returns
    -------
    ndarray, shape (ny, nx), dtype of ``stack``
        At a pixel with two values, the lower one; with ``3 <= count <= max_groups``, the
        median of all but the highest (the mean of the two middle values of what is left for
        an even remainder); elsewhere :func:`nanmedian_stack` (NaN where all values are NaN).

    Raises
    ------
    ValueError
        If ``stack`` is not 3-D.
    """
    median = nanmedian_stack(stack)
    if max_groups < 2:
        return median
    stack = planes_with_values(stack)  # all-NaN planes count nothing and sort last
    count = count_finite(stack)
    few = (count >= 2) & (count <= max_groups)
    if not few.any():
        return median
    values = np.sort(stack[:, few], axis=0)  # NaN sort last: the highest is at count - 1
    values[count[few] - 1, np.arange(values.shape[1])] = np.nan
    median[few] = nanmedian_stack(values[:, :, None])[:, 0]
    return median
