"""Data-quality (DQ) bits: which pixels are usable, outlier flags, and NaN/DO_NOT_USE agreement.

This module owns three rules of ``docs/algorithm.md``:

* §1.2, the ``good_bits`` interpretation (:func:`interpret_good_bits`, :func:`good_pixel_mask`),
  with the semantics of astropy's ``bitfield_to_boolean_mask``;
* the outlier update of §1.11, ``dq |= DO_NOT_USE | OUTLIER`` (:func:`flag_outliers_in_dq`);
* the NaN/DQ normalisation of §1.11 (:func:`match_nans_and_flags`).

All functions are pure numpy: arrays and scalars in, arrays out.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from astropy.nddata.bitmask import bitfield_to_boolean_mask, interpret_bit_flags
from stdatamodels.jwst.datamodels.dqflags import pixel as _jwst_pixel

__all__ = [
    "DO_NOT_USE",
    "JWST_PIXEL_FLAGS",
    "OUTLIER",
    "OUTLIER_DQ_BITS",
    "GoodBits",
    "flag_outliers_in_dq",
    "good_pixel_mask",
    "interpret_good_bits",
    "match_nans_and_flags",
]

#: JWST DQ mnemonic -> bit value (``"DO_NOT_USE": 1``, ``"JUMP_DET": 4``, ...), from stdatamodels.
JWST_PIXEL_FLAGS: dict[str, int] = dict(_jwst_pixel)

#: Bit 0: the pixel must not be used.
DO_NOT_USE: int = 1
#: Bit 4: the pixel was flagged by outlier detection.
OUTLIER: int = 16
#: Bits set on every detected outlier (``DO_NOT_USE | OUTLIER`` = 17).
OUTLIER_DQ_BITS: int = DO_NOT_USE | OUTLIER

#: Accepted forms of ``good_bits``: an integer bit mask, ``None``, a string such as
#: ``"~DO_NOT_USE"``, ``"4,8"`` or ``"JUMP_DET+DROPOUT"``, or a sequence of bit values.
GoodBits = int | str | list[int] | tuple[int, ...] | None


def interpret_good_bits(good_bits: GoodBits) -> int | None:
    """Turn ``good_bits`` into the integer mask of DQ bits to ignore (§1.2).

    Parameters
    ----------
    good_bits : int, str, list of int, tuple of int or None
        Bits that do *not* make a pixel bad. Strings may list integers or JWST mnemonics
        separated by ``,``, ``+`` or ``|``; a leading ``~`` flips the meaning (the listed bits
        are then the only bad ones). ``None`` (or an empty string, or ``"None"``) ignores DQ.

    Returns
    -------
    int or None
        Integer mask of ignored bits (negative when flipped, e.g. ``-2`` for
        ``"~DO_NOT_USE"``), or ``None`` when DQ is to be ignored altogether.

    Raises
    ------
    ValueError
        If ``good_bits`` cannot be read (unknown mnemonic, bad syntax, unsupported type).
    """
    try:
        return interpret_bit_flags(good_bits, flag_name_map=JWST_PIXEL_FLAGS)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"good_bits: cannot interpret {good_bits!r} as DQ bit flags ({exc!s})"
        ) from None


def good_pixel_mask(dq: np.ndarray, good_bits: GoodBits) -> np.ndarray:
    """Mask of usable pixels: True where no *bad* DQ bit is set (§1.2).

    Same result as astropy ``bitfield_to_boolean_mask(dq, good_bits, good_mask_value=True,
    flag_name_map=JWST_PIXEL_FLAGS)``: ``None`` makes every pixel usable, ``0`` makes every
    pixel with a non-zero DQ unusable, ``"~DO_NOT_USE"`` makes a pixel unusable iff bit 0 is set.

    Parameters
    ----------
    dq : ndarray, any shape, unsigned or signed integer (normally uint32)
        DQ bit field of the pixels.
    good_bits : int, str, list of int, tuple of int or None
        DQ bits to ignore; see :func:`interpret_good_bits`.

    Returns
    -------
    ndarray, same shape as ``dq``, bool
        True where the pixel is usable.

    Raises
    ------
    ValueError
        If ``good_bits`` cannot be read.
    TypeError
        If ``dq`` is not of an integer dtype.
    """
    dq = np.asarray(dq)
    if not np.issubdtype(dq.dtype, np.integer):
        raise TypeError(f"dq must be an integer array, got dtype {dq.dtype}")
    ignored_bits = interpret_good_bits(good_bits)
    return bitfield_to_boolean_mask(dq, ignored_bits, good_mask_value=True, dtype=bool)


def flag_outliers_in_dq(dq: np.ndarray, outliers: np.ndarray) -> np.ndarray:
    """Set ``DO_NOT_USE | OUTLIER`` (17) on the outlier pixels (§1.11).

    Parameters
    ----------
    dq : ndarray, shape (ny, nx), integer (normally uint32)
        DQ bit field of the input. Not modified.
    outliers : ndarray, shape (ny, nx), bool
        True where an outlier was detected.

    Returns
    -------
    ndarray, shape (ny, nx), dtype of ``dq``
        New array: ``dq | 17`` where ``outliers``, ``dq`` elsewhere.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if dq.shape != outliers.shape:
        raise ValueError(f"shape mismatch: dq {dq.shape} vs outliers {outliers.shape}")
    return np.where(outliers, dq | OUTLIER_DQ_BITS, dq).astype(dq.dtype, copy=False)


def match_nans_and_flags(
    data: np.ndarray,
    err: np.ndarray | None,
    dq: np.ndarray | None,
    variances: Mapping[str, np.ndarray | None],
    *,
    inplace: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, np.ndarray | None]]:
    """Make NaNs and the DO_NOT_USE flag agree across the arrays of one model (§1.11).

    A pixel is invalid if it is NaN in ``data``, ``err`` or any variance array, or if ``dq``
    has ``DO_NOT_USE`` set. At every invalid pixel, ``DO_NOT_USE`` is set in ``dq`` and all
    the float arrays are set to NaN. Pre-existing inconsistencies (e.g. DO_NOT_USE with a
    finite value) are normalised as well. Only NaN counts, not ±inf, as in the reference.

    An array (``err``, ``dq`` or a variance) whose shape differs from ``data.shape`` neither
    contributes to the invalid mask nor is changed; it is returned as given (the reference
    logs a warning and skips it). ``None`` entries are skipped and returned as ``None``.

    Parameters
    ----------
    data : ndarray, shape (ny, nx), float (normally float32)
        Science values (e.g. MJy/sr).
    err : ndarray, shape (ny, nx), float, or None
        Uncertainty of ``data``, same units.
    dq : ndarray, shape (ny, nx), integer (normally uint32), or None
        DQ bit field.
    variances : mapping of str to (ndarray, shape (ny, nx), float) or None
        Variance arrays by name, normally ``var_rnoise``, ``var_poisson``, ``var_flat``
        (units of ``data`` squared).
    inplace : bool, optional
        If False (default), no input is modified and the arrays that need updating are
        returned as new arrays. If True, ``data``, ``err``, ``dq`` and the variances of
        matching shape are updated in place (they must be writeable) and returned.

    Returns
    -------
    data : ndarray, shape (ny, nx)
        ``data`` with NaN at invalid pixels.
    err : ndarray, shape (ny, nx), or None
        ``err`` with NaN at invalid pixels.
    dq : ndarray, shape (ny, nx), or None
        ``dq`` with ``DO_NOT_USE`` set at invalid pixels.
    variances : dict of str to ndarray or None
        Same keys, in the same order, each with NaN at invalid pixels.
    """
    shape = data.shape
    invalid = np.isnan(data)
    for array in (err, *variances.values()):
        if array is not None and array.shape == shape:
            invalid |= np.isnan(array)
    dq_matches = dq is not None and dq.shape == shape
    if dq_matches:
        invalid |= (dq & DO_NOT_USE) != 0

    def with_nans(array: np.ndarray | None) -> np.ndarray | None:
        if array is None or array.shape != shape:
            return array
        if inplace:
            array[invalid] = np.nan
            return array
        return np.where(invalid, np.nan, array).astype(array.dtype, copy=False)

    new_dq = dq
    if dq_matches:
        if inplace:
            dq[invalid] |= DO_NOT_USE
        else:
            new_dq = np.where(invalid, dq | DO_NOT_USE, dq).astype(dq.dtype, copy=False)
    new_variances = {name: with_nans(array) for name, array in variances.items()}
    return with_nans(data), with_nans(err), new_dq, new_variances
