"""What a ``_crf`` product records about how it was made, in its headers and its ASDF tree.

A JWST FITS product carries its metadata twice: as primary-header keywords and in the embedded
ASDF tree (the ``ASDF`` extension). stdatamodels reads the headers over the tree (it skips them
only when the tree holds a hash of these very headers, which this writer does not compute), but
any other reader (``asdf``, archives, provenance checks) sees only the tree. This module is the
one place that decides what a product says about itself, and it says it in both places:

- ``meta.filename`` / ``FILENAME``: the product's own name;
- ``meta.date`` / ``DATE``: when the product was written (UTC, ISO 8601, as stdatamodels writes
  it);
- ``meta.cal_step.outlier_detection`` / ``S_OUTLIR``: ``COMPLETE`` or ``SKIPPED``;
- ``history.entries`` / ``HISTORY`` cards: the tool, its version and the parameters that made
  the flags (:func:`provenance_history`), one entry per card, each short enough for one card
  (stdatamodels turns every ``HISTORY`` card into one entry when it reads the file);
- ``_fits_hash``: removed. The input's hash no longer matches the new headers, and computing
  the new one needs stdatamodels' non-public hash function; without it stdatamodels reads the
  headers, which say the same as the tree.

The tree is rewritten without building any of its objects: it is read as tagged YAML
(:func:`asdf.util.load_yaml`), the few values above are set, and it is dumped again by PyYAML
with representers for asdf's tagged types (:mod:`asdf.tagged`). The binary blocks that follow
the tree (arrays of the WCS) are copied unchanged; they are referred to by their order, not by
their place, so the longer tree does not move them in any way a reader notices. The block
index at the very end (optional in the ASDF standard) is dropped, because its offsets would no
longer be right.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import asdf.tagged
import asdf.util
import numpy as np
import yaml
from astropy.io import fits
from astropy.time import Time

from outlier_dask.parameters import OutlierParameters

__all__ = [
    "ProductRecord",
    "product_record",
    "provenance_history",
    "record_in_header",
    "record_in_tree",
]

#: The tool's name as the products record it.
SOFTWARE_NAME = "outlier_dask"
#: Longest text of one FITS HISTORY card (80 columns less the keyword's 8).
HISTORY_CARD_CHARS = 72

_STATUS_KEYWORD = "S_OUTLIR"
_ASDF_TAG = "tag:stsci.edu:asdf/"
_HISTORY_ENTRY_TAG = _ASDF_TAG + "core/history_entry-1.0.0"
_SOFTWARE_TAG = _ASDF_TAG + "core/software-1.0.0"
_BLOCK_MAGIC = b"\xd3BLK"
_BLOCK_INDEX = b"#ASDF BLOCK INDEX"


@dataclass(frozen=True)
class ProductRecord:
    """What one product says about itself (see the module docstring)."""

    #: Base name of the product (``meta.filename``).
    filename: str
    #: UTC time the product was written, ISO 8601 (``meta.date``).
    date: str
    #: ``COMPLETE`` or ``SKIPPED`` (``meta.cal_step.outlier_detection``).
    status: str
    #: History entries added by this run, each at most :data:`HISTORY_CARD_CHARS` long.
    history: tuple[str, ...]


def provenance_history(params: OutlierParameters) -> tuple[str, ...]:
    """History entries naming the tool, its version and the parameters of the flags.

    Parameters
    ----------
    params : OutlierParameters
        The run's parameters; its :attr:`~OutlierParameters.flag_values` are recorded.

    Returns
    -------
    tuple of str
        ``"outlier_dask 0.1.0: outlier_detection (imaging)"``, then ``name=value`` pairs
        (values as the reference step's parameter files spell them), packed into entries of at
        most :data:`HISTORY_CARD_CHARS` characters.
    """
    lines = [f"{SOFTWARE_NAME} {_version()}: outlier_detection (imaging)"]
    prefix = f"{SOFTWARE_NAME} parameters:"
    line = prefix
    for name, value in params.flag_values.items():
        pair = f"{name}={_history_value(value)}"
        if len(line) + 1 + len(pair) > HISTORY_CARD_CHARS:
            lines.append(line)
            line = prefix
        line = f"{line} {pair}"
    lines.append(line)
    return tuple(lines)


def _history_value(value: Any) -> str:
    """A parameter value in a history entry: strings with spaces quoted, others as written."""
    text = str(value)
    return f"'{text}'" if " " in text else text


def product_record(
    filename: str, status: str, history: Iterable[str], date: str | None = None
) -> ProductRecord:
    """The record of a product; ``date`` (UTC, ISO 8601) defaults to now, as stdatamodels'."""
    return ProductRecord(filename, date or Time.now().isot, status, tuple(history))


def record_in_header(header: fits.Header, record: ProductRecord) -> None:
    """Set the record's keywords in a primary header, in place.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The product's primary header (a copy of the input's).
    record : ProductRecord
        What to write: ``FILENAME``, ``DATE``, ``S_OUTLIR`` and one ``HISTORY`` card per entry.
    """
    header["DATE"] = record.date
    header["FILENAME"] = record.filename
    header[_STATUS_KEYWORD] = record.status
    for entry in record.history:
        header.add_history(entry)


def record_in_tree(asdf_bytes: bytes, record: ProductRecord) -> bytes:
    """The embedded ASDF file ``asdf_bytes`` with the record written into its tree.

    Parameters
    ----------
    asdf_bytes : bytes
        The content of the input's ``ASDF`` extension: a whole ASDF file (header, YAML tree,
        binary blocks, optional block index).
    record : ProductRecord
        Values to set: ``meta.filename``, ``meta.date``, ``meta.cal_step.outlier_detection``,
        and history entries appended to ``history.entries``. The input's ``_fits_hash``
        (stale once the headers change) is removed.

    Returns
    -------
    bytes
        The new ASDF file: the same header lines, the updated tree, the same blocks.

    Raises
    ------
    ValueError
        The bytes are not an ASDF file with a YAML mapping as its tree.
    """
    tree_end = _tree_end(asdf_bytes)
    tree = asdf.util.load_yaml(io.BytesIO(asdf_bytes[:tree_end]), tagged=True)
    if not isinstance(tree, Mapping) or not isinstance(tree.get("meta", {}), Mapping):
        raise ValueError("the embedded ASDF tree is not a mapping with a 'meta' mapping")
    meta = tree.setdefault("meta", {})
    meta["filename"] = record.filename
    meta["date"] = record.date
    cal_step = meta.setdefault("cal_step", {})
    cal_step["outlier_detection"] = record.status
    _append_history(tree, record.history, Time(record.date).datetime)
    tree.pop("_fits_hash", None)
    header_end = asdf_bytes.index(b"%YAML")
    dumped = yaml.dump_all(
        [tree],
        Dumper=_TaggedTreeDumper,
        explicit_start=True,
        explicit_end=True,
        version=(1, 1),
        allow_unicode=True,
        encoding="utf-8",
        tags={"!": _ASDF_TAG},
    )
    blocks = asdf_bytes[tree_end:]
    index_at = blocks.rfind(_BLOCK_INDEX)
    if index_at >= 0:
        blocks = blocks[:index_at]
    return asdf_bytes[:header_end] + dumped + blocks


class _TaggedTreeDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """PyYAML's safe dumper that writes asdf's tagged values with their tags.

    A tree read with ``asdf.util.load_yaml(..., tagged=True)`` holds plain YAML values and
    :mod:`asdf.tagged` wrappers around mappings, sequences and strings; each is written as the
    plain value with its tag. Collections of two or fewer levels go in flow style, as asdf
    writes them (``default_flow_style=None``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["default_flow_style"] = None
        super().__init__(*args, **kwargs)


def _represent_tagged_mapping(dumper: yaml.SafeDumper, value: asdf.tagged.TaggedDict) -> Any:
    return dumper.represent_mapping(asdf.tagged.get_tag(value), dict(value))


def _represent_tagged_sequence(dumper: yaml.SafeDumper, value: asdf.tagged.TaggedList) -> Any:
    return dumper.represent_sequence(asdf.tagged.get_tag(value), list(value))


def _represent_tagged_string(dumper: yaml.SafeDumper, value: asdf.tagged.TaggedString) -> Any:
    return dumper.represent_scalar(asdf.tagged.get_tag(value), str(value))


_TaggedTreeDumper.add_representer(asdf.tagged.TaggedDict, _represent_tagged_mapping)
_TaggedTreeDumper.add_representer(asdf.tagged.TaggedList, _represent_tagged_sequence)
_TaggedTreeDumper.add_representer(asdf.tagged.TaggedString, _represent_tagged_string)
# Values set from numpy (a history time, a count) are written as the Python numbers they hold.
_TaggedTreeDumper.add_multi_representer(
    np.floating, lambda dumper, value: dumper.represent_float(float(value))
)
_TaggedTreeDumper.add_multi_representer(
    np.integer, lambda dumper, value: dumper.represent_int(int(value))
)


def _tree_end(asdf_bytes: bytes) -> int:
    """Offset of the first binary block (or of the end) of an ASDF file: where its tree ends."""
    if not asdf_bytes.startswith(b"#ASDF ") or b"%YAML" not in asdf_bytes[:256]:
        raise ValueError("the embedded ASDF extension does not hold an ASDF file")
    # The tree is UTF-8 text, in which the block magic's first byte cannot occur.
    first_block = asdf_bytes.find(_BLOCK_MAGIC)
    if first_block >= 0:
        return first_block
    index_at = asdf_bytes.rfind(_BLOCK_INDEX)
    return index_at if index_at >= 0 else len(asdf_bytes)


def _append_history(tree: dict[str, Any], entries: tuple[str, ...], when: dt.datetime) -> None:
    """Append ``entries`` to the tree's ``history.entries``, as asdf's history entries.

    ``when`` (UTC, naive) is the entries' time: the product's date.
    """
    if not entries:
        return
    history = tree.get("history")
    if not isinstance(history, Mapping):
        # Old files keep a bare list of entries; asdf reads either form.
        history = {"entries": list(history or [])}
        tree["history"] = history
    listed = history.setdefault("entries", [])
    for entry in entries:
        # A new software mapping per entry: a shared one would be dumped as a YAML alias.
        software = asdf.tagged.TaggedDict(
            {"name": SOFTWARE_NAME, "version": _version()}, _SOFTWARE_TAG
        )
        listed.append(
            asdf.tagged.TaggedDict(
                {"description": entry, "time": when, "software": software}, _HISTORY_ENTRY_TAG
            )
        )


def _version() -> str:
    """This package's version (imported late: the package imports this module)."""
    from outlier_dask import __version__

    return __version__
