"""Writing products: flagged ``_crf`` files and the intermediate mosaics, median and blots.

Every file is written under a temporary name in its final folder and renamed when complete, so
an interrupted run leaves no partial product; inputs are never opened for writing.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import gwcs
import numpy as np
from stdatamodels.jwst import datamodels

from outlier_dask.io.members import Member, stem_of
from outlier_dask.kernels.dq import flag_outliers_in_dq, match_nans_and_flags

__all__ = [
    "apply_outlier_mask",
    "atomic_path",
    "output_path_for",
    "write_blot",
    "write_flagged_file",
    "write_image",
]

VARIANCE_ATTRS = ("var_poisson", "var_rnoise", "var_flat")


def output_path_for(name: str, output_dir: Path, suffix: str) -> Path:
    """``<output_dir>/<stem>_<suffix>.fits`` for an input named ``name``."""
    return output_dir / f"{stem_of(name)}_{suffix}.fits"


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary file name beside ``final``, renamed to ``final`` on success, removed on error."""
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _save(model: datamodels.JwstDataModel, final: Path) -> None:
    model.meta.filename = final.name
    with atomic_path(final) as tmp, open(tmp, "wb") as handle:
        # A file object (not a path) keeps meta.filename as the final name.
        model.to_fits(handle, overwrite=True)


def apply_outlier_mask(model: datamodels.ImageModel, mask: np.ndarray, status: str) -> int:
    """Flag outliers in a model in place: DQ, then NaN in SCI/ERR/VAR (algorithm.md §1.11).

    Returns
    -------
    int
        Number of pixels flagged as outliers.
    """
    variances = {name: getattr(model, name) for name in VARIANCE_ATTRS if model.hasattr(name)}
    dq = flag_outliers_in_dq(model.dq, mask)
    data, err, dq, variances = match_nans_and_flags(model.data, model.err, dq, variances)
    model.data, model.err, model.dq = data, err, dq
    for name, value in variances.items():
        if value is not None:
            setattr(model, name, value)
    model.meta.cal_step.outlier_detection = status
    return int(np.count_nonzero(mask))


def write_flagged_file(member: Member, mask: np.ndarray | None, final: Path) -> int:
    """Read an input file, flag it and write it as ``final``; returns pixels flagged.

    ``mask`` None writes the input unchanged with status ``SKIPPED``.
    """
    with datamodels.ImageModel(str(member.path)) as model:
        if mask is None:
            model.meta.cal_step.outlier_detection = "SKIPPED"
            count = 0
        else:
            count = apply_outlier_mask(model, mask, "COMPLETE")
        _save(model, final)
    return count


def write_image(
    final: Path,
    data: np.ndarray,
    wcs: gwcs.WCS | None,
    like: datamodels.ImageModel | None = None,
    weight: np.ndarray | None = None,
) -> None:
    """Write an intermediate image (mosaic, median or blot) as a JWST ImageModel."""
    model = datamodels.ImageModel(data=np.asarray(data, dtype=np.float32))
    if like is not None:
        model.update(like)
    if weight is not None:
        model.wht = np.asarray(weight, dtype=np.float32)
    if wcs is not None:
        model.meta.wcs = wcs
    _save(model, final)


def write_blot(final: Path, blot: np.ndarray, member: Member) -> None:
    """Write the median blotted onto one input's frame, with that input's metadata."""
    like = datamodels.ImageModel(str(member.path)) if member.path else None
    try:
        write_image(final, blot, member.wcs, like)
    finally:
        if like is not None:
            like.close()
