"""Per-input weight maps and the ``maskpt`` low-weight threshold.

This module owns two formulas of ``docs/algorithm.md``:

* §1.1, the drizzle weight map of one input (:func:`drizzle_weight_map`, with the
  ``var_rnoise`` usability rule in :func:`var_rnoise_usable`);
* §1.5, the ``maskpt`` threshold, a fraction of the sigma-clipped mean of the finite, non-zero
  weights (:func:`valid_weight_values`, :func:`weight_threshold_from_values`,
  :func:`weight_threshold`), and the masking it implies (:func:`mask_low_weight`).

All functions are pure numpy: arrays and scalars in, arrays out.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from astropy.stats import sigma_clip

from outlier_dask.kernels.dq import GoodBits, good_pixel_mask

__all__ = [
    "WEIGHT_TYPES",
    "drizzle_weight_map",
    "mask_low_weight",
    "valid_weight_values",
    "var_rnoise_usable",
    "weight_threshold",
    "weight_threshold_from_values",
]

#: Weight types accepted by :func:`drizzle_weight_map` (those the reference step allows).
WEIGHT_TYPES: tuple[str, ...] = ("ivm", "exptime")

# Sigma clipping of the weights (§1.5): astropy ``sigma_clip`` with these settings.
_CLIP_SIGMA = 3.0
_CLIP_MAXITERS = 5

#: Values per piece in the passes over the weights (256 KiB of float32): a piece and the
#: temporaries made from it stay in the CPU cache through the several operations on them,
#: where whole-array operations would each go through memory (measured on the performance
#: page).
_PIECE = 1 << 16


def var_rnoise_usable(var_rnoise_shape: Sequence[int] | None, data_shape: Sequence[int]) -> bool:
    """Whether ``var_rnoise`` can give ``ivm`` weights (§1.1): present and of the data's shape.

    When it is not usable the reference warns and weights every usable pixel by 1; this
    function lets the caller decide on the *whole* arrays (before tiling) and log the warning.

    Parameters
    ----------
    var_rnoise_shape : sequence of int or None
        Shape of the model's VAR_RNOISE array, or None if the model has none.
    data_shape : sequence of int
        Shape of the model's SCI array.

    Returns
    -------
    bool
        True if ``var_rnoise_shape`` equals ``data_shape``.
    """
    return var_rnoise_shape is not None and tuple(var_rnoise_shape) == tuple(data_shape)


def drizzle_weight_map(
    dq: np.ndarray,
    var_rnoise: np.ndarray | None = None,
    *,
    weight_type: Literal["ivm", "exptime"],
    good_bits: GoodBits,
    exposure_time: float | None = None,
    measurement_time: float | None = None,
) -> np.ndarray:
    """Drizzle weight of each input pixel (§1.1).

    * ``"ivm"``: ``(1 / var_rnoise) * good``, with non-finite ``1 / var_rnoise`` (variance 0,
      NaN or inf) set to 0. If ``var_rnoise`` is None or its shape differs from ``dq.shape``
      (see :func:`var_rnoise_usable`), ``1 / var_rnoise`` is taken as 1 everywhere; the caller
      is expected to check :func:`var_rnoise_usable` beforehand and log the warning.
    * ``"exptime"``: ``float32(t) * good`` with ``t = measurement_time`` if it is not None,
      else ``exposure_time``.

    ``good`` is :func:`~outlier_dask.kernels.dq.good_pixel_mask` of ``dq`` and ``good_bits``.

    Parameters
    ----------
    dq : ndarray, shape (ny, nx), integer (normally uint32)
        DQ bit field of the input (or of a block of it).
    var_rnoise : ndarray, shape (ny, nx), float, or None, optional
        Read-noise variance VAR_RNOISE, in units of SCI squared. Used for ``"ivm"`` only.
        When weights are computed block by block, pass the matching block, or None for
        every block if the whole array is not usable.
    weight_type : {"ivm", "exptime"}
        Weighting scheme.
    good_bits : int, str, list of int, tuple of int or None
        DQ bits to ignore; see :func:`~outlier_dask.kernels.dq.interpret_good_bits`.
    exposure_time : float or None, optional
        ``meta.exposure.exposure_time`` in seconds. Used for ``"exptime"`` when
        ``measurement_time`` is None.
    measurement_time : float or None, optional
        ``meta.exposure.measurement_time`` in seconds. Takes precedence for ``"exptime"``.

    Returns
    -------
    ndarray, shape (ny, nx), float32
        Weights (inverse variance, units of 1/SCI², or seconds); 0 at unusable pixels.

    Raises
    ------
    ValueError
        If ``weight_type`` is unknown, ``good_bits`` cannot be read, or ``"exptime"`` is
        requested with both times None.
    """
    good = good_pixel_mask(dq, good_bits)
    if weight_type == "ivm":
        if var_rnoise is None or not var_rnoise_usable(var_rnoise.shape, dq.shape):
            inverse_variance = np.ones(dq.shape, dtype=np.float32)
        else:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                inverse_variance = 1.0 / var_rnoise
            unusable = np.isfinite(inverse_variance)
            np.logical_not(unusable, out=unusable)
            inverse_variance[unusable] = 0
        # Either way the array is this function's own: the product can go into it.
        weights = np.multiply(inverse_variance, good, out=inverse_variance)
    elif weight_type == "exptime":
        time = measurement_time if measurement_time is not None else exposure_time
        if time is None:
            raise ValueError(
                "weight_type='exptime' needs measurement_time or exposure_time, both are None"
            )
        weights = np.float32(time) * good
    else:
        raise ValueError(f"weight_type must be one of {WEIGHT_TYPES}, got {weight_type!r}")
    return weights.astype(np.float32, copy=False)


def valid_weight_values(weights: np.ndarray, piece: int = _PIECE) -> np.ndarray:
    """The weights that enter the ``maskpt`` statistic: finite and non-zero (§1.5).

    Parameters
    ----------
    weights : ndarray, any shape, float
        Weights of a mosaic (drizzled ``wht``) or of an input weight map, or of a block of it.
    piece : int
        Values tested at a time.

    Returns
    -------
    ndarray, shape (m,), dtype of ``weights``
        The finite, non-zero values in C (row-major) order.
    """
    flat = np.asarray(weights).reshape(-1)
    valid = np.empty(flat.size, dtype=flat.dtype)
    usable = np.empty(min(piece, flat.size), dtype=bool)
    nonzero = np.empty_like(usable)
    count = 0
    for start in range(0, flat.size, piece):
        part = flat[start : start + piece]
        mask = np.isfinite(part, out=usable[: part.size])
        np.logical_and(mask, np.not_equal(part, 0, out=nonzero[: part.size]), out=mask)
        selected = part[mask]
        valid[count : count + selected.size] = selected
        count += selected.size
    return valid[:count]


class _SortedRanks:
    """Values of chosen ranks in the sorted order of a fixed float32 array, found lazily.

    Each requested rank is put in its sorted place by partitioning only the stretch between
    the nearest ranks already placed, so the medians of successive clipping iterations cost
    one full selection and then selections over at most half the values. (One rank per
    partition: numpy's fast selection takes a single ``kth``; with two it is ten times slower.)

    Parameters
    ----------
    values : ndarray, shape (m,), float32
        Copied; the copy is reordered in place.
    """

    def __init__(self, values: np.ndarray) -> None:
        self._work = np.array(values, copy=True)
        self._placed: list[int] = []

    def value(self, rank: int) -> np.float32:
        """The value of sorted rank ``rank`` (0-based, within the array)."""
        index = bisect.bisect_left(self._placed, rank)
        if index == len(self._placed) or self._placed[index] != rank:
            start, stop = self._stretch(index)
            self._work[start:stop].partition(rank - start)
            self._placed.insert(index, rank)
        return self._work[rank]

    def value_below(self, rank: int) -> np.float32:
        """The value of sorted rank ``rank - 1``, once ``rank`` (>= 1) is placed."""
        start, _ = self._stretch(bisect.bisect_left(self._placed, rank))
        return self._work[rank - 1] if start == rank else self._work[start:rank].max()

    def _stretch(self, index: int) -> tuple[int, int]:
        """The positions between placed ranks ``index - 1`` and ``index`` (exclusive)."""
        start = self._placed[index - 1] + 1 if index else 0
        stop = self._placed[index] if index < len(self._placed) else self._work.size
        return start, stop


def _median_of_rank_range(ranks: _SortedRanks, first: int, size: int) -> np.float32:
    """``np.median`` of the ``size`` values of sorted ranks ``first`` onwards, bit for bit.

    That is the middle value, or the float32 mean of the two middle values (numpy's own
    arithmetic for float32 input).
    """
    middle = first + size // 2
    high = ranks.value(middle)
    if size % 2:
        return high
    low = ranks.value_below(middle)
    return np.mean(np.array([low, high], dtype=np.float32))


def _pairwise_sum_by_pieces(
    values: np.ndarray, piece_sum: Callable[[np.ndarray], np.float32], piece: int
) -> np.float32:
    """``np.sum(f(values))`` for float32 ``f`` elementwise, bit for bit, ``f`` taken by pieces.

    numpy sums a float32 array pairwise: an array of more than 128 values is split after its
    first ``n // 2`` values rounded down to a multiple of 8, each part summed the same way, and
    the two sums added in float32; that split depends only on the part's length, so the sum of
    any part the recursion reaches is ``np.sum`` of that part alone. This recursion follows
    numpy's down to parts of at most ``piece`` values, and sums each with
    ``piece_sum(part) = np.sum(f(part))``. (``piece`` must be at least 128, numpy's largest
    part summed without splitting.)
    """
    if values.size <= piece:
        return piece_sum(values)
    # A module-level recursion: a nested function calling itself would be a reference cycle
    # holding ``values`` until the garbage collector runs.
    half = values.size // 2
    half -= half % 8
    return _pairwise_sum_by_pieces(values[:half], piece_sum, piece) + _pairwise_sum_by_pieces(
        values[half:], piece_sum, piece
    )


def _nanstd_of_finite(values: np.ndarray, piece: int = _PIECE) -> np.float32:
    """``np.nanstd`` of finite float32 values, bit for bit, without its NaN bookkeeping.

    ``np.nanstd`` builds a NaN mask, copies the values, counts the non-NaN ones and masks
    twice more, which is most of its cost on millions of finite weights. The arithmetic kept
    here is its own: the float32 pairwise sum divided by the count in float64 and rounded to
    float32, deviations squared in float32, their float32 pairwise sum (taken by pieces,
    :func:`_pairwise_sum_by_pieces`) divided in float64, and a float32 square root.
    ``tests/kernels/test_weights.py`` checks equality with numpy.

    Parameters
    ----------
    values : ndarray, shape (m,), float32, all finite, m >= 1
    piece : int
        Values per piece of the deviations' pass.
    """
    n = np.intp(values.size)
    mean = np.divide(np.sum(values, keepdims=True), n, casting="unsafe", dtype=np.float64)
    centre = mean.astype(np.float32)
    scratch = np.empty(min(piece, values.size), dtype=np.float32)

    def squared_deviations_sum(part: np.ndarray) -> np.float32:
        deviations = np.subtract(part, centre, out=scratch[: part.size])
        np.multiply(deviations, deviations, out=deviations)
        return np.sum(deviations)

    variance = _pairwise_sum_by_pieces(values, squared_deviations_sum, piece)
    return np.float32(np.sqrt(np.float32(variance / n)))


def _keep_between(
    values: np.ndarray, low: np.float32, high: np.float32, out: np.ndarray, piece: int
) -> tuple[int, int]:
    """Copy the values within ``[low, high]``, in order, to the start of ``out``.

    ``out`` may be ``values`` itself (each piece is selected before it is written, never
    past its own start). Returns how many values were kept and how many were below ``low``.
    """
    keep = np.empty(min(piece, values.size), dtype=bool)
    not_above = np.empty_like(keep)
    kept = below = 0
    for start in range(0, values.size, piece):
        part = values[start : start + piece]
        mask = np.greater_equal(part, low, out=keep[: part.size])
        below += part.size - int(np.count_nonzero(mask))
        np.logical_and(mask, np.less_equal(part, high, out=not_above[: part.size]), out=mask)
        selected = part[mask]
        out[kept : kept + selected.size] = selected
        kept += selected.size
    return kept, below


def _sigma_clipped_float32(
    values: np.ndarray, piece: int = _PIECE, *, overwrite: bool = False
) -> np.ndarray:
    """The values astropy ``sigma_clip(sigma=3, maxiters=5)`` keeps, for finite float32 input.

    The same iteration as astropy's (median centre, ``np.nanstd`` spread, bounds in float32,
    inclusive), with a faster exact median: the kept values are always those of the input
    between two bounds, a run of consecutive ranks in its sorted order, so each iteration's
    median is a rank of the input (:class:`_SortedRanks`). The spread and the selection go
    through the values by pieces of ``piece``. ``tests/kernels/test_weights.py`` checks
    equality with astropy.

    With ``overwrite`` the kept values are compacted in ``values`` itself, which saves an
    array as large as it (in a worker, whose heap is not returned to the system, a large
    array less per group also means a smaller heap).

    Returns
    -------
    ndarray, shape (k,), float32
        The kept values in input order: the start of ``values`` with ``overwrite``, else of a
        new array (``values`` is then not modified).
    """
    ranks = _SortedRanks(values)
    first = 0  # sorted rank, in ``values``, of the smallest value kept
    kept = values
    survivors = values if overwrite else np.empty_like(values)  # kept values, at its start
    for _ in range(_CLIP_MAXITERS):
        size = kept.size
        if size == 0:
            break
        centre = _median_of_rank_range(ranks, first, size)
        spread = _nanstd_of_finite(kept, piece)
        low = centre - spread * _CLIP_SIGMA
        high = centre + spread * _CLIP_SIGMA
        count, below = _keep_between(kept, low, high, survivors, piece)
        first += below
        kept = survivors[:count]
        if count == size:
            break
    return kept


def weight_threshold_from_values(values: np.ndarray, maskpt: float) -> float:
    """``maskpt`` times the sigma-clipped mean of already selected weights (§1.5).

    Clipping is astropy ``sigma_clip(sigma=3, maxiters=5)`` (centre = median, spread = std);
    the mean of the kept values is taken in float64.

    Parameters
    ----------
    values : ndarray, shape (m,), float
        Output of :func:`valid_weight_values`, possibly concatenated over the blocks of one
        mosaic or weight map.
    maskpt : float
        Fraction (0-1) of the clipped mean weight.

    Returns
    -------
    float
        The threshold, in units of the weights; NaN if ``values`` is empty.

    Notes
    -----
    Clipping selects the same values whatever their order, but the mean (numpy pairwise
    summation) and the standard deviation inside the clipping depend on the order of the
    values at the level of floating-point rounding (~1e-16 relative). Concatenating blocks in
    the C order of the whole array (e.g. full-width row bands, top to bottom) reproduces the
    whole-array result bit for bit; any other order may differ by that rounding.
    """
    return _threshold_of_values(np.asarray(values).ravel(), maskpt, finite=False, scratch=False)


def _threshold_of_values(
    values: np.ndarray, maskpt: float, *, finite: bool, scratch: bool
) -> float:
    """:func:`weight_threshold_from_values` of a 1-D array; ``finite``: known to hold no NaN
    or inf; ``scratch``: the array may be overwritten."""
    if values.size == 0:
        return float("nan")
    if values.dtype == np.float32 and (finite or np.isfinite(values).all()):
        kept = _sigma_clipped_float32(values, overwrite=scratch)
    else:
        kept = sigma_clip(
            values, sigma=_CLIP_SIGMA, maxiters=_CLIP_MAXITERS, masked=False, copy=True
        )
    if kept.size == 0:
        return float("nan")
    return float(np.mean(kept, dtype=np.float64) * maskpt)


def weight_threshold(weights: np.ndarray, maskpt: float) -> float:
    """``maskpt`` times the sigma-clipped mean of the finite, non-zero weights (§1.5).

    Parameters
    ----------
    weights : ndarray, any shape, float
        Weights of one group mosaic (drizzled ``wht``) or of one input's weight map.
    maskpt : float
        Fraction (0-1) of the clipped mean weight.

    Returns
    -------
    float
        The threshold, in units of the weights; NaN if no weight is finite and non-zero.
    """
    # The valid values are finite, and a new array the clipping may overwrite.
    return _threshold_of_values(valid_weight_values(weights), maskpt, finite=True, scratch=True)


def mask_low_weight(
    data: np.ndarray, weights: np.ndarray, threshold: float, out: np.ndarray | None = None
) -> np.ndarray:
    """Set to NaN the pixels whose weight is below the ``maskpt`` threshold (§1.5).

    The comparison ``weights < threshold`` is strict and done in float64 (the threshold is a
    float64, as in the reference); a NaN threshold masks nothing, and NaN weights are never
    below it.

    Parameters
    ----------
    data : ndarray, shape (ny, nx), float (normally float32)
        Values to mask (e.g. a drizzled mosaic, MJy/sr). Not modified.
    weights : ndarray, shape (ny, nx), float
        Weights of the same pixels.
    threshold : float
        Output of :func:`weight_threshold`, in units of the weights.
    out : ndarray, shape (ny, nx), optional
        Where to write the result (e.g. a plane of a shared stack) instead of a new array.

    Returns
    -------
    ndarray, shape (ny, nx), dtype of ``data`` (or ``out``)
        Copy of ``data`` with NaN where ``weights < threshold``.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if data.shape != weights.shape:
        raise ValueError(f"shape mismatch: data {data.shape} vs weights {weights.shape}")
    low = np.less(weights, np.float64(threshold))
    if out is None:
        return np.where(low, np.nan, data).astype(data.dtype, copy=False)
    np.copyto(out, data)
    np.copyto(out, np.nan, where=low)
    return out
