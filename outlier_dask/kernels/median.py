"""NaN-ignoring median of a stack of frames.

This module owns the median statistic of ``docs/algorithm.md`` §1.6: ``np.nanmedian`` along
the stack axis, NaN ignored, all-NaN -> NaN without a warning, the mean of the two middle
values for an even count, the dtype of the input.

The median is bottleneck's ``nanmedian``; the few pixels where it may differ from
``np.nanmedian`` are recomputed with numpy, so the result equals ``np.nanmedian`` bit for bit
(see :func:`nanmedian_stack`, Notes).
"""

from __future__ import annotations

import warnings

import bottleneck as bn
import numpy as np

__all__ = ["nanmedian_stack", "planes_with_values"]

# dtypes reduced by bottleneck (others fall back to numpy entirely)
_NATIVE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Every this many rows and columns a plane is first looked at for a value.
_SAMPLE_STEP = 16


def planes_with_values(stack: np.ndarray) -> np.ndarray:
    """The planes of ``stack`` that hold at least one non-NaN value, in order.

    In a survey most groups miss a given tile of the grid, and their planes there are NaN
    throughout; the median's work would grow with the number of groups, not with the groups
    covering the tile. A plane with a value on a sparse sample of pixels is kept at once; the
    others are looked at whole. Leaving out all-NaN planes changes no pixel's values.

    Parameters
    ----------
    stack : ndarray, shape (n, ny, nx), float, n >= 1

    Returns
    -------
    ndarray, shape (k, ny, nx)
        ``stack`` itself when every plane has a value; a copy of the ``k`` planes that have
        one otherwise (``k = 1``, a NaN plane, when none has).
    """
    sample = stack[:, ::_SAMPLE_STEP, ::_SAMPLE_STEP]
    keep = ~np.isnan(sample).all(axis=(1, 2))
    if keep.all():
        return stack
    for k in np.flatnonzero(~keep):
        keep[k] = not np.isnan(stack[k]).all()
    if keep.all():
        return stack
    return stack[keep] if keep.any() else stack[:1]


def _numpy_nanmedian(stack: np.ndarray) -> np.ndarray:
    """``np.nanmedian(stack, axis=0)`` with its warnings (all-NaN, overflow) silenced."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        return np.nanmedian(stack, axis=0)


def _differs_from_numpy(median: np.ndarray) -> np.ndarray:
    """Where bottleneck's median may differ from numpy's: zero, subnormal, > max/2."""
    info = np.finfo(median.dtype)
    magnitude = np.abs(median)
    # NaN compares False on both sides, so all-NaN results are not selected.
    return (magnitude < info.smallest_normal) | (magnitude > info.max / 2)


def nanmedian_stack(stack: np.ndarray) -> np.ndarray:
    """Median over the first axis, ignoring NaN, equal to ``np.nanmedian(stack, axis=0)``.

    Parameters
    ----------
    stack : ndarray, shape (n, ny, nx), float (normally float32)
        Frames to combine (e.g. masked group mosaics, MJy/sr); NaN marks missing values.
        Not modified.

    Returns
    -------
    ndarray, shape (ny, nx), dtype of ``stack``
        Median of the non-NaN values of each pixel; the mean of the two middle values for an
        even count; NaN where every value is NaN, and everywhere if ``n == 0``. No warning is
        emitted for all-NaN pixels.

    Raises
    ------
    ValueError
        If ``stack`` is not 3-D.
    TypeError
        If ``stack`` is not of a floating-point dtype.

    Notes
    -----
    numpy computes ``(lo + hi) / 2`` in the input dtype from the two middle order statistics
    (``lo == hi`` for an odd count), where a sum of two zeros is +0. bottleneck computes the
    same expression for an even count and returns the middle value itself for an odd count.
    The two therefore differ only where ``lo + hi`` is ±0 or overflows, or in the sign of a
    zero result (which of two zeros bottleneck's selection keeps): with ``n == 1`` numpy turns
    -0.0 into +0.0 and any ``|x| > max/2`` (about 1.7e38 in float32) into ±inf. Pixels whose
    median is zero, subnormal or larger than ``max/2`` in magnitude are recomputed with
    ``np.nanmedian``, which makes the result equal to numpy's in every case (and to stcal's
    ``nanmedian3D``, which applies ``np.nanmedian`` row by row). Such pixels are rare in real
    data, so the cost is one extra pass over the ``(ny, nx)`` result. Non-native dtypes
    (float16, big-endian, long double) use ``np.nanmedian`` throughout. Planes that are NaN
    everywhere are left out first (:func:`planes_with_values`).
    """
    if stack.ndim != 3:
        raise ValueError(f"stack must be 3-D (n, ny, nx), got shape {stack.shape}")
    if not np.issubdtype(stack.dtype, np.floating):
        raise TypeError(f"stack must be of a floating-point dtype, got {stack.dtype}")
    if stack.shape[0] == 0:
        return np.full(stack.shape[1:], np.nan, dtype=stack.dtype)
    if stack.dtype not in _NATIVE_DTYPES:
        return _numpy_nanmedian(stack).astype(stack.dtype, copy=False)

    stack = planes_with_values(stack)
    median = bn.nanmedian(stack, axis=0)
    redo = _differs_from_numpy(median)
    if redo.any():
        median[redo] = _numpy_nanmedian(stack[:, redo])
    return median
