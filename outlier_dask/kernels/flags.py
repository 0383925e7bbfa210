"""Outlier rules: the two-pass resampled rule and the single-threshold rule without resampling.

This module owns two formulas of ``docs/algorithm.md``:

* §1.9, the resampled rule (:func:`flag_resampled_outliers`)::

      E   = nan_to_num(err)
      Dv  = |sci - blot - backg|
      m1  = Dv > scale1 * D + snr1 * E          (D = abs_derivative(blot), §1.8)
      m2  = Dv > scale2 * D + snr2 * E
      out = dilate_3x3(m1) & m2

* §1.10, the rule without resampling (:func:`flag_unresampled_outliers`)::

      out = |sci - median| > snr1 * nan_to_num(err)

and the 3x3 dilation (:func:`dilate_3x3`) and block halo (:func:`flag_halo_px`) they imply.
All comparisons are strict, so a NaN in ``sci``, ``blot`` or ``median`` is never flagged.
Pure numpy: arrays and scalars in, arrays out.
"""

from __future__ import annotations

import numpy as np

from outlier_dask.kernels.derivative import DERIVATIVE_HALO_PX, abs_derivative

__all__ = [
    "DILATION_HALO_PX",
    "FLAG_HALO_PX",
    "dilate_3x3",
    "flag_halo_px",
    "flag_resampled_outliers",
    "flag_unresampled_outliers",
]

#: Reach of :func:`dilate_3x3` in pixels (a 3x3 square).
DILATION_HALO_PX: int = 1


def flag_halo_px(*, resample_data: bool = True) -> int:
    """Halo, in pixels, that a block needs for the flags of its inner pixels to be exact.

    For the resampled rule, the flag of pixel ``p`` needs ``m1`` on the 3x3 square around
    ``p`` (dilation, 1 pixel), and ``m1`` at a pixel needs the derivative there, which reads
    ``blot`` one pixel further (1 pixel): ``sci``, ``err`` and ``blot`` are needed up to 2
    pixels from ``p``. Values the kernels compute on the halo itself are wrong (they see the
    block edge as an image edge) and must be discarded. The rule without resampling is
    pixel-wise and needs no halo.

    Parameters
    ----------
    resample_data : bool, optional
        True for the resampled rule (§1.9), False for the rule without resampling (§1.10).

    Returns
    -------
    int
        2 for the resampled rule, 0 otherwise.
    """
    return DERIVATIVE_HALO_PX + DILATION_HALO_PX if resample_data else 0


#: :func:`flag_halo_px` of the resampled rule (2 pixels).
FLAG_HALO_PX: int = flag_halo_px(resample_data=True)


def dilate_3x3(mask: np.ndarray) -> np.ndarray:
    """True where any pixel of the 3x3 square around it (inside the array) is True.

    Equal to ``scipy.ndimage.binary_dilation(mask, np.ones((3, 3)))`` and to the reference's
    ``ndimage.convolve(mask, np.ones((3, 3), int), mode="nearest")`` on a bool mask: only
    in-array neighbours count.

    Parameters
    ----------
    mask : ndarray, shape (ny, nx), bool
        Pixels to grow.

    Returns
    -------
    ndarray, shape (ny, nx), bool
        The dilated mask (a new array).

    Raises
    ------
    ValueError
        If ``mask`` is not 2-D.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (ny, nx), got shape {mask.shape}")
    mask = np.asarray(mask, dtype=bool)
    # The square is separable: grow along rows, then along columns.
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    dilated = grown.copy()
    dilated[:, 1:] |= grown[:, :-1]
    dilated[:, :-1] |= grown[:, 1:]
    return dilated


def _check_same_shape(**arrays: np.ndarray) -> None:
    shapes = {name: array.shape for name, array in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")


def flag_resampled_outliers(
    sci: np.ndarray,
    err: np.ndarray,
    blot: np.ndarray,
    *,
    snr: tuple[float, float],
    scale: tuple[float, float],
    backg: float,
    source_fraction: float = 0.0,
) -> np.ndarray:
    """Outliers of one input against the blotted median, two-pass rule (§1.9).

    A pixel is flagged iff it exceeds the second-pass threshold *and* it or one of its 8
    neighbours exceeds the first-pass threshold. The second pass never adds pixels on its own,
    and a pixel that passes the first threshold but not the second is not flagged.

    Parameters
    ----------
    sci : ndarray, shape (ny, nx), float32
        Science values of the input (e.g. MJy/sr).
    err : ndarray, shape (ny, nx), float32
        Uncertainty of ``sci`` (ERR of the input, not of the median), same units; NaN is
        treated as 0 (``np.nan_to_num``, which also maps ±inf to ±max).
    blot : ndarray, shape (ny, nx), float32
        Median blotted onto the input's pixels, same units; NaN where unavailable.
    snr : tuple of (float, float)
        ``(snr1, snr2)``: multiples of ``err`` for the first and second pass.
    scale : tuple of (float, float)
        ``(scale1, scale2)``: multiples of the derivative of ``blot`` for the two passes.
    backg : float
        Background level in the units of ``sci``, subtracted from ``sci - blot`` (the caller
        passes ``meta.background.level`` instead of the step's ``backg`` when the background
        was not subtracted, §1.9).
    source_fraction : float, optional
        Opt-in, not in the reference: a tolerance proportional to the source, added to both
        thresholds as ``source_fraction * max(blot - backg, 0)``. Drizzling and blotting
        smooth an undersampled star's core, so its pixels differ from the blot by a fraction
        of the star's level, not of the noise; this term keeps such cores unflagged. 0 (the
        default) is the reference rule, with the reference's arithmetic.

    Returns
    -------
    ndarray, shape (ny, nx), bool
        True at outliers. NaN in ``sci`` or ``blot`` is never flagged. On a block, only the
        pixels at least :data:`FLAG_HALO_PX` from a block edge that is not an image edge are
        exact.

    Raises
    ------
    ValueError
        If the shapes differ.

    Notes
    -----
    The scalars are converted to Python floats, so all arithmetic is done in the dtype of the
    arrays (float32), in the reference's order: ``scale * D + snr * E`` and
    ``(sci - blot) - backg``.
    """
    _check_same_shape(sci=sci, err=err, blot=blot)
    snr1, snr2 = (float(value) for value in snr)
    scale1, scale2 = (float(value) for value in scale)
    error = np.nan_to_num(err)
    derivative = abs_derivative(blot)
    residual = np.abs(sci - blot - float(backg))
    first_limit = scale1 * derivative + snr1 * error
    second_limit = scale2 * derivative + snr2 * error
    if source_fraction != 0:
        # NaN blot stays NaN (never flagged), as without the term
        tolerance = float(source_fraction) * np.maximum(blot - float(backg), 0)
        first_limit += tolerance
        second_limit += tolerance
    first_pass = np.greater(residual, first_limit)
    second_pass = np.greater(residual, second_limit)
    return dilate_3x3(first_pass) & second_pass


def flag_unresampled_outliers(
    sci: np.ndarray,
    err: np.ndarray,
    median: np.ndarray,
    *,
    snr1: float,
) -> np.ndarray:
    """Outliers of one input against the median in its own frame, one threshold (§1.10).

    Parameters
    ----------
    sci : ndarray, shape (ny, nx), float32
        Science values of the input (e.g. MJy/sr).
    err : ndarray, shape (ny, nx), float32
        Uncertainty of ``sci``, same units; NaN is treated as 0 (``np.nan_to_num``).
    median : ndarray, shape (ny, nx), float32
        Median of the inputs (no resampling: same pixel grid as ``sci``), same units.
    snr1 : float
        Multiple of ``err`` above which ``|sci - median|`` is an outlier.

    Returns
    -------
    ndarray, shape (ny, nx), bool
        True where ``|sci - median| > snr1 * err``. NaN in ``sci`` or ``median`` is never
        flagged. Pixel-wise: blocks need no halo.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    _check_same_shape(sci=sci, err=err, median=median)
    return np.greater(np.abs(sci - median), float(snr1) * np.nan_to_num(err))
