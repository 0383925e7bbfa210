"""Input members: their metadata (read once, before any pixel) and their pixel arrays.

A member is one ``_cal.fits`` file or one in-memory ``ImageModel``. Tasks never receive a
datamodel: they receive a :class:`PixelSource`, which reads only the arrays and the window a
task needs (FITS files are memory-mapped), so process workers exchange file names, not images.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

import asdf
import asdf.schema
import gwcs
import numpy as np
from astropy.io import fits
from stdatamodels.jwst import datamodels

from outlier_dask.geometry.pixel_map import SkySamples, sky_samples
from outlier_dask.io.association import (
    AssociationError,
    AssociationMember,
    group_id_from_observation,
)
from outlier_dask.kernels.dq import good_pixel_mask
from outlier_dask.kernels.weights import var_rnoise_usable

__all__ = [
    "ARRAY_NAMES",
    "ArraySource",
    "FileSource",
    "Member",
    "PixelSource",
    "UsablePixels",
    "find_usable_pixels",
    "members_from_files",
    "members_from_models",
    "stem_of",
]

ARRAY_NAMES = ("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT")
_MODEL_ATTRS = {
    "SCI": "data",
    "ERR": "err",
    "DQ": "dq",
    "VAR_POISSON": "var_poisson",
    "VAR_RNOISE": "var_rnoise",
    "VAR_FLAT": "var_flat",
}

Window = tuple[tuple[int, int], tuple[int, int]]


class PixelSource:
    """Reads a member's arrays, whole or in a window ``((r0, r1), (c0, c1))``."""

    def read(self, name: str, window: Window | None = None) -> np.ndarray | None:
        """The array ``name`` (``SCI``, ``ERR``, ``DQ``, ``VAR_*``), or None if absent."""
        raise NotImplementedError

    def read_all(
        self, names: Sequence[str], window: Window | None = None
    ) -> list[np.ndarray | None]:
        """:meth:`read` of each of ``names``, in order (one file opening where that applies)."""
        return [self.read(name, window) for name in names]

    def shape_of(self, name: str) -> tuple[int, ...] | None:
        """Shape of the array ``name`` without reading its pixels, or None if absent."""
        raise NotImplementedError


@dataclass(frozen=True)
class FileSource(PixelSource):
    """Arrays of a FITS file on disk, memory-mapped and sliced.

    Attributes
    ----------
    path : str
        The file.
    shapes : dict of str to tuple of int, optional
        Shapes of its image extensions by name, as read with the member's metadata, so that
        checks do not open the file again; None reads them from the file when asked.
    """

    path: str
    shapes: Mapping[str, tuple[int, ...]] | None = field(default=None, compare=False)

    def read(self, name: str, window: Window | None = None) -> np.ndarray | None:
        """See :meth:`PixelSource.read`."""
        return self.read_all((name,), window)[0]

    def read_all(
        self, names: Sequence[str], window: Window | None = None
    ) -> list[np.ndarray | None]:
        """See :meth:`PixelSource.read_all`."""
        # Raw (unscaled) memory map: only the window's pages are read. JWST stores uint32 DQ
        # as int32 with BZERO = 2**31, which is undone below without a float round trip.
        with fits.open(self.path, memmap=True, do_not_scale_image_data=True) as hdul:
            return [_window_of(hdul, name, window) for name in names]

    def shape_of(self, name: str) -> tuple[int, ...] | None:
        """See :meth:`PixelSource.shape_of` (read from the extension's header)."""
        if self.shapes is not None:
            return self.shapes.get(name)
        with fits.open(self.path, memmap=True) as hdul:
            return _image_shapes(hdul).get(name)


def _window_of(hdul: fits.HDUList, name: str, window: Window | None) -> np.ndarray | None:
    """The array ``name`` of an open raw file, or its window, in memory; None if absent."""
    if name not in hdul:
        return None
    hdu = hdul[name]
    raw = hdu.data
    if raw is None:
        return None
    if window is not None:
        raw = raw[slice(*window[0]), slice(*window[1])]
    return _unscaled(raw, hdu.header, _dtype(name))


def _image_shapes(hdul: fits.HDUList) -> dict[str, tuple[int, ...]]:
    """Shapes of the named extensions holding an array (first of each name), from headers."""
    shapes: dict[str, tuple[int, ...]] = {}
    for hdu in hdul:
        if isinstance(hdu, fits.ImageHDU) and hdu.name not in shapes and hdu.shape:
            shapes[hdu.name] = tuple(hdu.shape)
    return shapes


@dataclass(frozen=True)
class ArraySource(PixelSource):
    """Arrays held in memory (from an ``ImageModel``)."""

    arrays: dict[str, np.ndarray] = field(repr=False)

    def read(self, name: str, window: Window | None = None) -> np.ndarray | None:
        """See :meth:`PixelSource.read`."""
        data = self.arrays.get(name)
        if data is None:
            return None
        if window is not None:
            (r0, r1), (c0, c1) = window
            data = data[r0:r1, c0:c1]
        return np.array(data, dtype=_dtype(name))

    def shape_of(self, name: str) -> tuple[int, ...] | None:
        """See :meth:`PixelSource.shape_of`."""
        data = self.arrays.get(name)
        return None if data is None else tuple(np.shape(data))


def _unscaled(raw: np.ndarray, header: fits.Header, dtype: type) -> np.ndarray:
    """Apply BSCALE/BZERO of a raw FITS array; the unsigned-integer offset exactly."""
    bscale = header.get("BSCALE", 1)
    bzero = header.get("BZERO", 0)
    if bscale == 1 and bzero == 0:
        return np.array(raw, dtype=dtype)
    if bscale == 1 and raw.dtype.kind == "i" and bzero == 2 ** (8 * raw.dtype.itemsize - 1):
        # Flipping the sign bit of the file's bytes seen as unsigned, into a native array:
        # one pass and one array, however the file orders its bytes.
        unsigned = raw.dtype.str.replace("i", "u")
        flipped = np.bitwise_xor(raw.view(unsigned), np.array(bzero, dtype=unsigned[1:]))
        return flipped.astype(dtype, copy=False)
    return (raw * bscale + bzero).astype(dtype)


def _dtype(name: str) -> type:
    return np.uint32 if name == "DQ" else np.float32


#: Rows read at a time while looking for a usable pixel; the search stops at the first band
#: holding one, so a normal input costs one band of each array.
USABLE_SEARCH_ROWS = 256


@dataclass(frozen=True)
class UsablePixels:
    """What a member's usable pixels hold, as the checks before a run need it.

    A pixel is usable when no DQ bit outside ``good_bits`` is set and SCI is finite there.

    Attributes
    ----------
    good_bits : str
        The ``good_bits`` this was found under.
    rnoise : bool
        Whether VAR_RNOISE was looked at (``weight_type="ivm"`` with a usable VAR_RNOISE).
    pixels : bool
        Some pixel is usable.
    err : bool
        ERR is finite and above 0 at a usable pixel.
    var_rnoise : bool
        VAR_RNOISE is finite and above 0 at a usable pixel (True when not looked at).
    """

    good_bits: str
    rnoise: bool
    pixels: bool
    err: bool
    var_rnoise: bool


def find_usable_pixels(
    source: PixelSource, shape: tuple[int, int], good_bits: str, rnoise: bool
) -> UsablePixels:
    """Look for a usable pixel of ``source`` (SCI of ``shape``), and for a real noise there.

    Bands of :data:`USABLE_SEARCH_ROWS` rows are read until every answer is yes, so a normal
    input costs one band of DQ, SCI, ERR (and, with ``rnoise``, VAR_RNOISE).
    """
    ny, nx = shape
    pixels = err = False
    var = not rnoise
    for r0 in range(0, ny, USABLE_SEARCH_ROWS):
        window = ((r0, min(ny, r0 + USABLE_SEARCH_ROWS)), (0, nx))
        dq, sci = source.read_all(("DQ", "SCI"), window)
        good = good_pixel_mask(dq, good_bits) & np.isfinite(sci)
        if not good.any():
            continue
        pixels = True
        names = ("ERR", "VAR_RNOISE") if not var else ("ERR",)
        for name, values in zip(names, source.read_all(names, window), strict=True):
            with np.errstate(invalid="ignore"):
                positive = bool((values[good] > 0).any())  # NaN compares False
            if name == "ERR":
                err = err or positive
            else:
                var = var or positive
        if err and var:
            break
    return UsablePixels(good_bits, rnoise, pixels, err, var)


@dataclass(frozen=True)
class _OpenFileSource(PixelSource):
    """The arrays of a FITS file already open raw (as :class:`FileSource` opens it)."""

    hdul: fits.HDUList

    def read(self, name: str, window: Window | None = None) -> np.ndarray | None:
        """See :meth:`PixelSource.read`."""
        return _window_of(self.hdul, name, window)


@dataclass
class Member:
    """Everything the plan needs to know about one input, read without its pixels.

    Attributes
    ----------
    index : int
        Position in the association.
    name : str
        File name (or the model's ``meta.filename``).
    group_id : str
        Exposure group; members sharing it are drizzled into one mosaic.
    shape : (int, int)
        ``(ny, nx)`` of SCI.
    wcs : gwcs.WCS
        Detector-to-sky WCS.
    wcsinfo : dict
        ``meta.wcsinfo`` (``ra_ref``, ``dec_ref``, ``roll_ref``, ``v3yangle``, ``vparity``,
        ``s_region``, ...).
    exposure_time : float
        ``meta.exposure.exposure_time`` in seconds.
    measurement_time : float or None
        ``meta.exposure.measurement_time`` in seconds.
    background_level : float or None
        Level to subtract before drizzling and to use as ``backg``: set only when
        ``meta.background.subtracted`` is False and a level is recorded.
    source : PixelSource
        Where the pixels are.
    path : Path or None
        The input file, when the member came from one.
    has_var_rnoise : bool
        Whether VAR_RNOISE exists with the shape of SCI.
    usable : UsablePixels or None
        What its pixels hold under the run's ``good_bits``, found while the file was open for
        its metadata; None where not looked at yet.
    sky_samples : SkySamples or None
        Where its pixels fall on the sky at its pixel map's first nodes and check points
        (:func:`~outlier_dask.geometry.pixel_map.sky_samples`), computed with its metadata;
        None where they could not be.

    A pickled member carries its WCS as bytes and a process rebuilds the WCS only when it
    reads ``wcs``: rebuilding a WCS's models costs milliseconds per member, and the command's
    process, which receives every member from the readers, needs none when every pixel map
    comes from the sky samples.
    """

    index: int
    name: str
    group_id: str
    shape: tuple[int, int]
    wcs: gwcs.WCS
    wcsinfo: dict[str, Any]
    exposure_time: float
    measurement_time: float | None
    background_level: float | None
    source: PixelSource
    path: Path | None = None
    has_var_rnoise: bool = True
    usable: UsablePixels | None = None
    model: datamodels.ImageModel | None = field(default=None, repr=False)
    sky_samples: SkySamples | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if "wcs" in state:
            wcs = state.pop("wcs")
            if "_pickled_wcs" not in state:
                state["_pickled_wcs"] = pickle.dumps(wcs, pickle.HIGHEST_PROTOCOL)
        return state

    def __getattr__(self, name: str) -> Any:
        # Called only when ``name`` is not found: ``wcs`` of a member that arrived pickled.
        pickled = self.__dict__.get("_pickled_wcs") if name == "wcs" else None
        if pickled is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        wcs = pickle.loads(pickled)
        self.__dict__["wcs"] = wcs
        return wcs

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "wcs":
            self.__dict__.pop("_pickled_wcs", None)  # a new WCS: the bytes are stale
        object.__setattr__(self, name, value)

    @property
    def stem(self) -> str:
        """The name without extension and last ``_suffix`` (``x_nrca1_cal`` -> ``x_nrca1``)."""
        return stem_of(self.name)

    @property
    def weight_time(self) -> float:
        """Seconds for ``weight_type='exptime'``: measurement time if known, else exposure time."""
        return self.exposure_time if self.measurement_time is None else self.measurement_time


def stem_of(name: str) -> str:
    """File name without extension and without its last ``_suffix``."""
    base = Path(name).name
    for ext in (".fits", ".fits.gz", ".asdf"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    head, sep, _ = base.rpartition("_")
    return head if sep else base


def _positive_number(value: Any) -> bool:
    """Whether ``value`` is a finite number above 0 (a usable time in seconds)."""
    try:
        return bool(np.isfinite(value) and value > 0)
    except TypeError:
        return False


@dataclass(frozen=True)
class _Fields:
    """What one input's datamodel says about it.

    Values are as stored (unchecked); :func:`_member_from_fields` checks them.
    """

    wcs: Any
    shape: tuple[int, ...]
    exposure_time: Any
    measurement_time: Any
    wcsinfo: dict[str, Any]
    group_id: Any
    observation: dict[str, Any]
    background_level: Any
    background_subtracted: Any
    filename: str | None
    rnoise_shape: tuple[int, ...] | None


def _fields_of_model(model: datamodels.ImageModel, label: str) -> _Fields:
    if not isinstance(model, datamodels.ImageModel):
        raise AssociationError(f"{label}: not a JWST image model ({type(model).__name__})")
    meta = model.meta
    rnoise = getattr(model, "var_rnoise", None) if model.hasattr("var_rnoise") else None
    return _Fields(
        wcs=meta.wcs,
        shape=tuple(np.shape(model.data)),
        exposure_time=meta.exposure.exposure_time,
        measurement_time=meta.exposure.measurement_time,
        wcsinfo=meta.wcsinfo.instance,
        group_id=getattr(meta, "group_id", None),
        observation=meta.observation.instance,
        background_level=meta.background.level,
        background_subtracted=meta.background.subtracted,
        filename=meta.filename,
        rnoise_shape=None if rnoise is None else tuple(np.shape(rnoise)),
    )


def _member_from_fields(
    fields: _Fields,
    index: int,
    label: str,
    source: PixelSource,
    asn_group_id: str | None,
    path: Path | None,
) -> Member:
    """The member, once the fields the step uses are checked (raises AssociationError)."""
    if fields.wcs is None:
        raise AssociationError(f"{label}: has no WCS (meta.wcs); run assign_wcs first")
    shape = fields.shape
    if len(shape) != 2 or min(shape) < 2:
        raise AssociationError(f"{label}: SCI must be a 2-D image, got shape {shape}")
    exptime = fields.exposure_time
    if not _positive_number(exptime):
        raise AssociationError(
            f"{label}: meta.exposure.exposure_time must be a positive number, got {exptime!r}"
        )
    measurement_time = fields.measurement_time
    if measurement_time is not None and not _positive_number(measurement_time):
        raise AssociationError(
            f"{label}: meta.exposure.measurement_time must be a positive number when given, "
            f"got {measurement_time!r}"
        )
    if not fields.wcsinfo.get("s_region"):
        raise AssociationError(f"{label}: meta.wcsinfo.s_region is missing")
    group_id = asn_group_id or fields.group_id
    if not group_id:
        group_id = group_id_from_observation(fields.observation)
    level = fields.background_level
    return Member(
        index=index,
        name=Path(fields.filename or label).name,
        group_id=str(group_id or f"exposure{index + 1:04d}"),
        shape=(int(shape[0]), int(shape[1])),
        wcs=fields.wcs,
        wcsinfo=dict(fields.wcsinfo),
        exposure_time=float(exptime),
        measurement_time=measurement_time,
        background_level=(None if fields.background_subtracted or level is None else float(level)),
        source=source,
        path=path,
        has_var_rnoise=var_rnoise_usable(fields.rnoise_shape, shape),
        sky_samples=_sky_samples_or_none(fields.wcs, (int(shape[0]), int(shape[1]))),
    )


def _sky_samples_or_none(wcs: gwcs.WCS, shape: tuple[int, int]) -> SkySamples | None:
    """The member's sky samples, or None if its WCS cannot give them here: the plan then
    builds the pixel map from the WCS, and reports what is wrong with it as it always has."""
    try:
        return sky_samples(wcs, shape)
    except Exception:  # noqa: BLE001 - a faulty WCS is the plan's to report
        return None


def load_asdf_extensions() -> int:
    """Load asdf's installed extensions and the image model's schema now; returns how many
    extensions there are.

    asdf finds and loads its extensions (entry points, manifests) on the first file it opens.
    Loaded before worker processes are forked (readers, the run's workers, which write the
    products' ASDF trees), they and the schema are loaded once, not once per worker.
    """
    image_model_schema()
    return len(asdf.get_config().extensions)


@cache
def image_model_schema() -> dict:
    """``ImageModel``'s schema with its references resolved, read once per process.

    stdatamodels reads it (a deep copy of asdf's cached tree) for every model it opens unless
    it is given one; it reads the schema and does not change it.
    """
    return asdf.schema.load_schema(datamodels.ImageModel.schema_url, resolve_references=True)


def members_from_files(
    entries: Sequence[AssociationMember],
    mapper: Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]] = map,
    *,
    usable_under: tuple[str, bool] | None = None,
) -> list[Member]:
    """Read the metadata of every member file (pixels stay on disk).

    Parameters
    ----------
    entries : sequence of AssociationMember
        The members, in association order.
    mapper : callable
        ``mapper(function, items)`` yielding ``function(item)`` in order: ``map``, or a pool's
        map to read files side by side (results and errors are picklable).
    usable_under : (str, bool), optional
        ``(good_bits, uses_var_rnoise)``: also find each member's :attr:`Member.usable` while
        its file is open (``uses_var_rnoise``: ``weight_type="ivm"``).

    Raises
    ------
    AssociationError
        Naming the file, if one is not FITS, not a JWST image model, or lacks what the step
        needs (WCS, S_REGION, a positive exposure time).
    """
    return list(mapper(partial(_member_of_entry, usable_under=usable_under), enumerate(entries)))


def _member_of_entry(
    numbered: tuple[int, AssociationMember], usable_under: tuple[str, bool] | None = None
) -> Member:
    """:func:`_member_from_file` of ``(index, entry)``, with asdf reading only what it needs.

    - No schema validation of the whole tree on read (the larger part of asdf's time):
      stdatamodels only warns on what it finds, and the fields this step uses are checked in
      ``_member_from_fields``.
    - A lazy tree (``lazy_tree``): a tagged node becomes its object (a gwcs, an astropy
      model) when it is read, so only the WCS and the nodes stdatamodels walks are built,
      not the rest of the tree the calibration steps left.

    ``asdf.config_context`` changes asdf's configuration for this thread and this call only.
    """
    index, entry = numbered
    with asdf.config_context() as config:
        config.validate_on_read = False
        config.lazy_tree = True
        return _member_from_file(entry, index, usable_under)


def _member_from_file(
    entry: AssociationMember, index: int, usable_under: tuple[str, bool] | None = None
) -> Member:
    """One member's metadata from its file (see :func:`members_from_files`)."""
    label = str(entry.path)
    hdul = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Metadata only: a raw memory map reads the headers, the ASDF tree and the array
            # shapes, not the ~100 MB of pixels (unscaled DQ is never used from this model).
            hdul = fits.open(entry.path, memmap=True, do_not_scale_image_data=True)
            _refuse_truncated(hdul, entry.path, label)
            if "ASDF" not in hdul:
                raise AssociationError(
                    f"{label}: not a JWST data product (a FITS file without the ASDF "
                    "extension the pipeline writes)"
                )
            kind = hdul[0].header.get("DATAMODL", "ImageModel")
            if kind != "ImageModel":
                raise AssociationError(f"{label}: not a JWST image model ({kind})")
            shapes = _image_shapes(hdul)
            if "DQ" in hdul and hdul["DQ"].header.get("BITPIX", 32) < 0:
                raise AssociationError(
                    f"{label}: DQ is stored as floats (BITPIX {hdul['DQ'].header['BITPIX']}), "
                    "not as integers; the step needs DQ bit flags (an integer image)"
                )
            # stdatamodels reads the tree and, where the headers were edited after it was
            # written, the edited keywords, as it documents.
            with datamodels.ImageModel(hdul, schema=image_model_schema()) as model:
                fields = _fields_of_model(model, label)
    except AssociationError:
        if hdul is not None:
            hdul.close()
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad member
        if hdul is not None:
            hdul.close()
        raise AssociationError(
            f"{label}: cannot be read as a JWST datamodel ({_first_line(exc)})"
        ) from None
    with hdul:
        source = FileSource(str(entry.path), shapes)
        member = _member_from_fields(fields, index, label, source, entry.group_id, entry.path)
        # Only where the checks of the arrays' shapes will pass; they refuse the others.
        arrays_fit = all(shapes.get(name) == member.shape for name in ("DQ", "ERR"))
        if usable_under is not None and arrays_fit:
            good_bits, uses_var_rnoise = usable_under
            rnoise = uses_var_rnoise and member.has_var_rnoise
            member.usable = find_usable_pixels(
                _OpenFileSource(hdul), member.shape, good_bits, rnoise
            )
        return member


def _refuse_truncated(hdul: fits.HDUList, path: Path, label: str) -> None:
    """Refuse a file shorter than its headers say (a copy or download cut off)."""
    size = os.path.getsize(path)
    # Extensions follow one another, and reading stops at the first header a cut removed: the
    # last extension read ends furthest. (The HDU's own fileinfo: the list's also compares
    # every header with the file, to report edits.)
    index = len(hdul) - 1
    info = hdul[index].fileinfo()
    end = info["datLoc"] + info["datSpan"]
    if end > size:
        raise AssociationError(
            f"{label}: truncated or damaged FITS file: extension {index} ({hdul[index].name}) "
            f"ends at byte {end}, the file has {size} bytes"
        )


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (reader errors can span many lines)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def members_from_models(models: Sequence[datamodels.ImageModel]) -> list[Member]:
    """Members from in-memory models (their arrays are shared, not copied)."""
    members = []
    for index, model in enumerate(models):
        label = f"model {index} ({getattr(model.meta, 'filename', None) or 'unnamed'})"
        arrays = {}
        for name, attr in _MODEL_ATTRS.items():
            if model.hasattr(attr):
                arrays[name] = getattr(model, attr)
        fields = _fields_of_model(model, label)
        member = _member_from_fields(fields, index, label, ArraySource(arrays), None, None)
        member.model = model
        members.append(member)
    return members
