"""Writing a flagged ``_crf`` file straight from its ``_cal`` file, at FITS level.

Opening a product with stdatamodels and saving it again reads every array, validates the
schema twice and rebuilds every header. Here the input's bytes are reused, the six arrays get
the outlier update (the kernels of algorithm.md §1.11), and what the product says about itself
(its name, date, ``meta.cal_step.outlier_detection``, the tool, version and parameters that
made it) is written by :mod:`outlier_dask.io.provenance` into the
primary header and into the embedded ASDF tree alike, so every reader (asdf, stdatamodels,
archives) sees the same product.

How the file is written
-----------------------
The output is the input with a new primary header and a new ``ASDF`` extension (stdatamodels
always writes it last); every other HDU keeps its header bytes and its place relative to the
end of the primary header (the new header may be a few 2880-byte blocks longer than the old
one, for the cards added). So the writer:

1. reads the input's layout with astropy, headers only (no data is loaded), and the bytes of
   its embedded ASDF file;
2. writes the new primary header, built by astropy from the input's one;
3. copies every byte range that does not change (extension headers, arrays of another shape,
   padding) with ``os.copy_file_range``, so the kernel copies it;
4. streams the arrays of the shape of SCI through the DQ kernels in blocks of rows: each block
   is read raw (big-endian, unscaled) into a small buffer, updated in place by
   :func:`~outlier_dask.kernels.dq.flag_outliers_in_dq` and
   :func:`~outlier_dask.kernels.dq.match_nans_and_flags`, and written at its place in the
   output. The kernels act pixel by pixel, so a block gives the same values as the whole array.
   Blocks of ~512 KiB per array keep the six of them in the CPU cache from read to write, which
   is why this is faster than copying everything and patching a memory map of the output (that
   costs a page fault for nearly every page of every array, since outliers are everywhere);
5. writes the new ``ASDF`` extension (the input's header with the new length, the new tree).

DQ is read as its raw integers. For the usual pseudo-unsigned DQ (BITPIX 32, BZERO 2**31) the
stored value is the unsigned one with its top bit flipped, so setting or testing the low bits
(``DO_NOT_USE``, ``OUTLIER``) of the raw integer is the same as doing it to the unsigned value;
DQ without BZERO is the value itself.

Everything else is as with the astropy writer this replaces (kept as
:func:`_write_flagged_fits_astropy`): same arrays bit for bit once read back (NaN written where
the kernels write it, so NaN payloads match too), same DQ, same HDUs, same primary header; the
file appears under its final name only when complete; the input is never opened for writing.
Extension headers are the input's bytes, where astropy would re-serialise them: the same cards
with the same values.

CHECKSUM and DATASUM
--------------------
The astropy writer copies these cards with the headers and does not recompute them (it writes
with ``checksum=False``), so a product of an input that carried them has stale sums in every
HDU whose header or data changed, and ``fits.open(..., checksum=True)`` warns. This writer
does the same — it keeps the cards as they are — so the two writers' products read back alike.
Recomputing them would cost one more pass over every changed array, and stdatamodels (which
writes the ``_cal`` products) neither writes nor checks them.

Fallback
--------
Inputs this writer cannot reproduce by copying bytes go to :func:`_write_flagged_fits_astropy`,
which also raises the errors the old writer raised: an ``ASDF`` extension that is not the
last HDU or not the one-cell byte table stdatamodels writes, a primary HDU with data or without
``EXTEND = T``, a header astropy's verification refuses, a missing SCI or DQ, an extension
named twice, one of the six arrays that is not a plain image (compressed, a table), a float
array with BSCALE/BZERO scaling or an integer one, a DQ with scaling other than
pseudo-unsigned or with BLANK, an SCI or DQ of another shape than the mask, or a file shorter
than its headers say.

Durability is unchanged: like the astropy writer, nothing is ``fsync``-ed; the data are in the
page cache when the file is renamed.
"""

from __future__ import annotations

import errno
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyError

from outlier_dask.io.outputs import atomic_path
from outlier_dask.io.provenance import (
    ProductRecord,
    product_record,
    record_in_header,
    record_in_tree,
)
from outlier_dask.kernels.dq import flag_outliers_in_dq, match_nans_and_flags

__all__ = ["write_flagged_fits"]

VARIANCE_EXTENSIONS = {
    "VAR_POISSON": "var_poisson",
    "VAR_RNOISE": "var_rnoise",
    "VAR_FLAT": "var_flat",
}
#: Extensions the outlier update may change.
ARRAY_EXTENSIONS = ("SCI", "ERR", "DQ", *VARIANCE_EXTENSIONS)

#: Stored dtype of each FITS BITPIX (big-endian, before any BZERO/BSCALE scaling).
_BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
#: Bytes per array in one block of rows: six such blocks fit in L2/L3 together.
_BLOCK_BYTES = 512 * 1024
#: Buffer of the read/write copy used when the kernel cannot copy between the two files.
_COPY_BYTES = 1024 * 1024
#: ``copy_file_range`` errors meaning "not between these files", not "the copy failed".
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}
#: Name of the extension holding the embedded ASDF file, and of its one column.
_ASDF_EXTENSION = "ASDF"
_ASDF_COLUMN = "ASDF_METADATA"
_FITS_BLOCK = 2880


@dataclass(frozen=True)
class _Array:
    """One array updated by the kernels: where it is in the input and how it is stored."""

    name: str
    #: Byte offset of the first pixel in the input file.
    offset: int
    #: Stored (big-endian, unscaled) dtype.
    dtype: np.dtype
    #: Array shape, C order (``(ny, nx)`` for an image).
    shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        """Bytes of one index along the first axis (one image row)."""
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of the whole array, without the FITS padding."""
        return self.shape[0] * self.row_bytes


@dataclass(frozen=True)
class _Layout:
    """What the byte-level writer needs to know about the input and the output."""

    #: The output's primary header, padded to a whole number of 2880-byte blocks.
    primary_header: bytes
    #: Byte offset of the end of the input's primary header (start of the first extension).
    body_start: int
    #: Byte offset of the end of the input's HDUs copied (the start of its ASDF extension, or
    #: the end of its last HDU, padding included).
    body_end: int
    #: Arrays the kernels update, in file order; empty when the mask is None.
    arrays: tuple[_Array, ...]
    #: The output's new ASDF extension (header and padded data), or empty without one.
    asdf_hdu: bytes


def write_flagged_fits(
    source: Path,
    mask: np.ndarray | None,
    final: Path,
    *,
    history: tuple[str, ...] = (),
    date: str | None = None,
) -> int:
    """Write ``final`` as ``source`` with outliers flagged; returns the pixels flagged.

    Parameters
    ----------
    source : Path
        The input ``_cal.fits`` file (never opened for writing).
    mask : ndarray, shape of SCI, bool, or None
        Outliers (True); None writes the input unchanged with status ``SKIPPED``.
    final : Path
        The product's path; written under a temporary name and renamed when complete.
    history : tuple of str
        History entries to add (:func:`~outlier_dask.io.provenance.provenance_history`), each
        at most 72 characters (one FITS ``HISTORY`` card).
    date : str, optional
        The product's ``DATE`` (UTC, ISO 8601); by default the time of writing.

    Returns
    -------
    int
        Number of True pixels of ``mask`` (0 when ``mask`` is None).
    """
    if mask is not None:
        mask = np.asarray(mask)
    status = "SKIPPED" if mask is None else "COMPLETE"
    record = product_record(Path(final).name, status, history, date)
    layout = _byte_layout(Path(source), mask, record)
    if layout is None:
        return _write_flagged_fits_astropy(source, mask, Path(final), record)
    shift = len(layout.primary_header) - layout.body_start
    with (
        atomic_path(Path(final)) as tmp,
        open(source, "rb", buffering=0) as src,
        open(tmp, "wb", buffering=0) as dst,
    ):
        _write_all(dst, memoryview(layout.primary_header), 0)
        position = layout.body_start
        for array in layout.arrays:
            _copy_range(src, dst, position, array.offset, shift)
            position = array.offset + array.nbytes
        _copy_range(src, dst, position, layout.body_end, shift)
        _write_all(dst, memoryview(layout.asdf_hdu), layout.body_end + shift)
        if mask is not None:
            _flag_arrays(src, dst, layout.arrays, mask, shift)
    return 0 if mask is None else int(np.count_nonzero(mask))


def _byte_layout(source: Path, mask: np.ndarray | None, record: ProductRecord) -> _Layout | None:
    """The input's layout and the output's new headers, or None to use the astropy writer.

    Parameters
    ----------
    source : Path
        The input FITS file; its headers and its embedded ASDF file are read.
    mask : ndarray, any shape, or None
        The outlier mask (only its shape is used here); None for a skipped run.
    record : ProductRecord
        What the product records about itself.
    """
    with fits.open(source, memmap=True, do_not_scale_image_data=True) as hdul:
        n_hdus = len(hdul)  # reads every header, so fileinfo() is known for all
        try:
            hdul.verify("exception")
        except VerifyError:
            return None  # the astropy writer refuses it the same way, or repairs it
        primary = hdul[0]
        if type(primary) is not fits.PrimaryHDU or hdul.fileinfo(0)["datSpan"] != 0:
            return None
        if n_hdus > 1 and primary.header.get("EXTEND") is not True:
            return None  # astropy would add or correct EXTEND; leave that to it
        last = hdul.fileinfo(n_hdus - 1)
        body_start = hdul.fileinfo(0)["datLoc"]
        body_end = last["datLoc"] + last["datSpan"]
        if os.path.getsize(source) < body_end:
            return None
        arrays: tuple[_Array, ...] = ()
        if mask is not None:
            found = _update_arrays(hdul, mask.shape)
            if found is None:
                return None
            arrays = found
        header = primary.header.copy()
        record_in_header(header, record)
        asdf_hdu = b""
        if _ASDF_EXTENSION in hdul:
            if hdul.index_of(_ASDF_EXTENSION) != n_hdus - 1:
                return None
            asdf_bytes = _embedded_asdf_bytes(hdul[_ASDF_EXTENSION], hdul.fileinfo(n_hdus - 1))
            if asdf_bytes is None:
                return None
            with open(source, "rb") as raw:
                raw.seek(asdf_bytes[0])
                content = raw.read(asdf_bytes[1])
            extension = _asdf_extension(record_in_tree(content, record))
            asdf_hdu = extension.header.tostring().encode("ascii") + _padded(extension.data)
            body_end = hdul.fileinfo(n_hdus - 1)["hdrLoc"]
    return _Layout(header.tostring().encode("ascii"), body_start, body_end, arrays, asdf_hdu)


def _embedded_asdf_bytes(hdu: Any, info: dict[str, int]) -> tuple[int, int] | None:
    """``(offset, length)`` of the embedded ASDF file in the input, or None if not as expected.

    stdatamodels writes it as a binary table of one row and one column of ``nB`` (n bytes).
    """
    header = hdu.header
    if type(hdu) is not fits.BinTableHDU or header.get("TFIELDS") != 1:
        return None
    if header.get("NAXIS2") != 1 or header.get("PCOUNT", 0) != 0:
        return None
    length = header.get("NAXIS1")
    if header.get("TFORM1") != f"{length}B" or not isinstance(length, int):
        return None
    if length > info["datSpan"]:
        return None
    return info["datLoc"], length


def _asdf_extension(content: bytes) -> fits.BinTableHDU:
    """The ``ASDF`` extension holding ``content``, made as stdatamodels makes it.

    Made anew rather than from the input's header, whose CHECKSUM/DATASUM (if any) would be
    stale.
    """
    data = np.frombuffer(content, dtype=np.uint8)[np.newaxis, :]
    column = fits.Column(name=_ASDF_COLUMN, format=f"{data.shape[1]}B", array=data)
    return fits.BinTableHDU.from_columns([column], name=_ASDF_EXTENSION)


def _padded(table: fits.FITS_rec) -> bytes:
    """The bytes of a one-row byte table's data, padded to whole FITS blocks."""
    content = table[_ASDF_COLUMN][0].tobytes()
    return content + bytes(-len(content) % _FITS_BLOCK)


def _update_arrays(hdul: fits.HDUList, shape: tuple[int, ...]) -> tuple[_Array, ...] | None:
    """The arrays the kernels update (those of the shape of SCI), or None if not patchable.

    Parameters
    ----------
    hdul : HDUList
        The input, opened with ``do_not_scale_image_data=True`` (headers as stored).
    shape : tuple of int
        Shape of the outlier mask; SCI and DQ must have it.
    """
    found: dict[str, _Array] = {}
    for index, hdu in enumerate(hdul):
        if hdu.name not in ARRAY_EXTENSIONS:
            continue
        if hdu.name in found or type(hdu) is not fits.ImageHDU:
            return None
        header = hdu.header
        bitpix = header["BITPIX"]
        if bitpix not in _BITPIX_DTYPES or header.get("BSCALE", 1) != 1:
            return None
        bzero = header.get("BZERO", 0)
        if hdu.name == "DQ":
            # Pseudo-unsigned storage only flips the top bit; any other offset or BLANK
            # makes astropy turn DQ into something the raw bits do not give.
            unsigned = {1 << (bitpix - 1)} if bitpix in (16, 32, 64) else set()
            if bitpix < 0 or bzero not in {0, *unsigned} or "BLANK" in header:
                return None
        elif bitpix > 0 or bzero != 0:
            return None
        dtype = np.dtype(_BITPIX_DTYPES[bitpix])
        array = _Array(hdu.name, hdul.fileinfo(index)["datLoc"], dtype, tuple(hdu.shape))
        if array.nbytes > hdul.fileinfo(index)["datSpan"]:
            return None
        found[array.name] = array
    if "SCI" not in found or "DQ" not in found or not shape or 0 in shape:
        return None
    if found["SCI"].shape != shape or found["DQ"].shape != shape:
        return None
    # Arrays of another shape are left as they are by the kernels: copied like the headers.
    updated = [array for array in found.values() if array.shape == shape]
    return tuple(sorted(updated, key=lambda array: array.offset))


def _flag_arrays(
    src: io.FileIO, dst: io.FileIO, arrays: tuple[_Array, ...], mask: np.ndarray, shift: int
) -> None:
    """Read, update and write ``arrays`` block of rows by block of rows.

    Parameters
    ----------
    src, dst : FileIO
        The input (read) and the output (written at the input's offsets plus ``shift``).
    arrays : tuple of _Array
        SCI, DQ and any of ERR, VAR_* of the same shape, as stored in ``src``.
    mask : ndarray, shape of the arrays, bool
        Outliers (True).
    shift : int
        Bytes the output's extensions are moved by relative to the input's (0 or 2880·k).
    """
    n_rows = mask.shape[0]
    block_rows = max(1, _BLOCK_BYTES // max(array.row_bytes for array in arrays))
    buffers = {a.name: np.empty((block_rows, *a.shape[1:]), dtype=a.dtype) for a in arrays}
    for start in range(0, n_rows, block_rows):
        stop = min(n_rows, start + block_rows)
        blocks = {name: buffer[: stop - start] for name, buffer in buffers.items()}
        for array in arrays:
            _read_exact(src, blocks[array.name], array.offset + start * array.row_bytes)
        _flag_block(blocks, mask[start:stop])
        for array in arrays:
            offset = array.offset + shift + start * array.row_bytes
            _write_all(dst, memoryview(blocks[array.name]).cast("B"), offset)


def _flag_block(blocks: dict[str, np.ndarray], outliers: np.ndarray) -> None:
    """Apply the outlier update of §1.11 in place to one block of rows of every array.

    Parameters
    ----------
    blocks : dict of str to ndarray, shape (rows, nx), stored dtypes
        By extension name: ``SCI`` and ``DQ`` always, ``ERR`` and ``VAR_*`` when present.
        Float arrays big-endian float (values in MJy/sr or its square); ``DQ`` the raw stored
        integers (low bits equal to the DQ value's).
    outliers : ndarray, shape (rows, nx), bool
        True where an outlier was detected.
    """
    dq = blocks["DQ"].reshape(-1)  # a view: the block is C-contiguous
    flat = outliers.reshape(-1)
    hits = np.flatnonzero(flat)
    # The kernel is pixel-wise, so running it on the outlier pixels alone gives their new
    # values without a pass over the whole block.
    dq[hits] = flag_outliers_in_dq(dq[hits], flat[hits])
    variances = {attr: blocks.get(ext) for ext, attr in VARIANCE_EXTENSIONS.items()}
    match_nans_and_flags(blocks["SCI"], blocks.get("ERR"), blocks["DQ"], variances, inplace=True)


def _read_exact(file: io.FileIO, buffer: np.ndarray | memoryview, offset: int) -> None:
    """Fill ``buffer`` (C-contiguous) with the bytes of ``file`` from ``offset``."""
    view = memoryview(buffer).cast("B")
    file.seek(offset)
    done = 0
    while done < len(view):
        count = file.readinto(view[done:])
        if not count:
            raise EOFError(f"{file.name}: ends at byte {offset + done}, expected more data")
        done += count


def _write_all(file: io.FileIO, view: memoryview, offset: int) -> None:
    """Write all of ``view`` (bytes) to ``file`` at ``offset``."""
    file.seek(offset)
    done = 0
    while done < len(view):
        done += file.write(view[done:])


def _copy_range(src: io.FileIO, dst: io.FileIO, start: int, stop: int, shift: int) -> None:
    """Copy bytes ``[start, stop)`` of ``src`` to ``[start + shift, stop + shift)`` of ``dst``.

    ``os.copy_file_range`` lets the kernel copy (no pass through Python buffers); where it
    cannot copy between these two files (another file system, old kernel, no such call), a
    read/write loop copies the rest.
    """
    position = start
    kernel_copy = getattr(os, "copy_file_range", None)
    src_fd, dst_fd = src.fileno(), dst.fileno()
    while kernel_copy is not None and position < stop:
        try:
            count = kernel_copy(src_fd, dst_fd, stop - position, position, position + shift)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            break
        if count == 0:
            raise EOFError(f"{src.name}: ends at byte {position}, expected {stop}")
        position += count
    buffer = memoryview(bytearray(min(_COPY_BYTES, max(0, stop - position))))
    while position < stop:
        chunk = buffer[: min(len(buffer), stop - position)]
        _read_exact(src, chunk, position)
        _write_all(dst, chunk, position + shift)
        position += len(chunk)


def _native(array: np.ndarray | None) -> np.ndarray | None:
    """A native-byte-order copy (FITS stores big-endian arrays)."""
    if array is None:
        return None
    return np.array(array, dtype=array.dtype.newbyteorder("="))


def _write_flagged_fits_astropy(
    source: Path, mask: np.ndarray | None, final: Path, record: ProductRecord | None = None
) -> int:
    """:func:`write_flagged_fits` through astropy: every array read, updated and re-serialised.

    The general path, for the inputs the byte-level writer does not handle (see the module
    docstring); same parameters and result, with the product's ``record`` (by default that of
    a run without history entries, written now).
    """
    with fits.open(source, memmap=False) as hdul:
        names = [hdu.name for hdu in hdul]
        arrays = {name: _native(hdul[name].data) for name in ("SCI", "ERR", "DQ") if name in names}
        variances = {
            attr: _native(hdul[ext].data)
            for ext, attr in VARIANCE_EXTENSIONS.items()
            if ext in names
        }
        status = "SKIPPED" if mask is None else "COMPLETE"
        if record is None:
            record = product_record(Path(final).name, status, ())
        count = 0
        if mask is not None:
            count = int(np.count_nonzero(mask))
            dq = flag_outliers_in_dq(arrays["DQ"], mask)
            data, err, dq, variances = match_nans_and_flags(
                arrays["SCI"], arrays.get("ERR"), dq, variances, inplace=True
            )
            arrays.update(SCI=data, ERR=err, DQ=dq)
        by_extension = {
            **arrays,
            **{ext: variances.get(a) for ext, a in VARIANCE_EXTENSIONS.items()},
        }
        out = fits.HDUList()
        asdf_content = None
        for hdu in hdul:
            if hdu.name in by_extension and by_extension[hdu.name] is not None:
                header = hdu.header.copy()
                for key in ("BZERO", "BSCALE"):
                    header.remove(key, ignore_missing=True)
                out.append(fits.ImageHDU(data=by_extension[hdu.name], header=header))
            elif hdu.name == _ASDF_EXTENSION and asdf_content is None:
                asdf_content = hdu.data[_ASDF_COLUMN][0].tobytes()
            else:
                out.append(hdu.copy())
        record_in_header(out[0].header, record)
        with atomic_path(final) as tmp:
            out.writeto(tmp)
            if asdf_content is not None:
                _append_asdf_extension(tmp, asdf_content, record)
    return count


def _append_asdf_extension(path: Path, content: bytes, record: ProductRecord) -> None:
    """Append the ASDF extension, its tree updated with ``record``."""
    with fits.open(path, mode="append") as hdul:
        hdul.append(_asdf_extension(record_in_tree(content, record)))
