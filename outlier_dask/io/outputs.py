"""Writing products: flagged ``_crf`` files and the intermediate mosaics, median and blots.

Every file is written under a temporary name in its final folder and renamed when complete, so
an interrupted run leaves no partial product; inputs are never opened for writing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import gwcs
import numpy as np
from stdatamodels.jwst import datamodels

from outlier_dask.io.members import Member, stem_of
from outlier_dask.kernels.dq import flag_outliers_in_dq, match_nans_and_flags

__all__ = [
    "apply_outlier_mask",
    "atomic_path",
    "blot_path_for",
    "intermediate_path_for",
    "intermediate_paths",
    "median_path_for",
    "mosaic_path_for",
    "output_path_for",
    "removed_on_failure",
    "write_blot",
    "write_image",
]

VARIANCE_ATTRS = ("var_poisson", "var_rnoise", "var_flat")


def output_path_for(name: str, output_dir: Path, suffix: str) -> Path:
    """``<output_dir>/<stem>_<suffix>.fits`` for an input named ``name``.

    Only the base name of ``name`` counts (see :func:`~outlier_dask.io.members.stem_of`), so
    a member listed as ``../x/a_cal.fits`` or ``/abs/a_cal.fits`` still writes in
    ``output_dir``.
    """
    return output_dir / f"{stem_of(name)}_{suffix}.fits"


def intermediate_path_for(
    name: str, output_dir: Path, suffix: str, asn_id: str | None = None
) -> Path:
    """An intermediate product named as jwst's ``make_output_path`` names it.

    ``<output_dir>/<stem>_<asn_id>_<suffix>.fits``, or ``<stem>_<suffix>.fits`` without an
    association id: the names ``OutlierDetectionStep`` gives its ``_median``, ``_blot`` and
    ``_outlier_i2d`` files for the same inputs (``stem`` as in :func:`output_path_for`). The one
    rule for every interface's intermediate files.
    """
    components = f"_{asn_id}" if asn_id else ""
    return output_dir / f"{stem_of(name)}{components}_{suffix}.fits"


def mosaic_path_for(first_member_name: str, output_dir: Path, asn_id: str | None = None) -> Path:
    """The ``_outlier_i2d`` product of a group, named after its first member (as jwst does)."""
    return intermediate_path_for(first_member_name, output_dir, "outlier_i2d", asn_id)


def median_path_for(first_member_name: str, output_dir: Path, asn_id: str | None = None) -> Path:
    """The ``_median`` product, named after the first input (as jwst does)."""
    return intermediate_path_for(first_member_name, output_dir, "median", asn_id)


def blot_path_for(member_name: str, output_dir: Path, asn_id: str | None = None) -> Path:
    """The ``_blot`` product of one input."""
    return intermediate_path_for(member_name, output_dir, "blot", asn_id)


def intermediate_paths(
    members: Sequence[Member], output_dir: Path, resample_data: bool, asn_id: str | None = None
) -> list[Path]:
    """Every file ``save_intermediate_results`` writes: mosaics, median, blots.

    Mosaics are named after the first member of each group (groups in order of first
    appearance, as the plan orders them), the median after the first input.
    """
    paths = [median_path_for(members[0].name, output_dir, asn_id)]
    if resample_data:
        firsts: dict[str, str] = {}
        for member in members:
            firsts.setdefault(member.group_id, member.name)
        paths += [mosaic_path_for(name, output_dir, asn_id) for name in firsts.values()]
        paths += [blot_path_for(m.name, output_dir, asn_id) for m in members]
    return paths


def _partial_name(final: Path) -> Path:
    """A fresh temporary name beside ``final`` (hidden, ends in ``.partial``)."""
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")


def _partial_names_of(final: Path) -> list[Path]:
    """Every temporary file :func:`_partial_name` may have made for ``final``."""
    return [p for p in final.parent.glob(f".{glob.escape(final.name)}.*.partial") if p.is_file()]


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary file name beside ``final``, renamed to ``final`` on success, removed on error."""
    tmp = _partial_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def removed_on_failure(products: Sequence[Path]) -> Iterator[None]:
    """On an error or interrupt, remove the products this run made and any temporary file.

    A product that existed before (being overwritten) is left as it is: once replaced it is a
    complete product of this run. Temporary files are removed too, since a worker process that
    was terminated mid-write cannot remove its own; after a successful run as well (a worker
    killed mid-write whose task then ran again on a fresh worker).
    """
    existed = {p for p in products if p.exists()}
    try:
        yield
        for path in products:
            for partial in _partial_names_of(path):
                partial.unlink(missing_ok=True)
    except BaseException:
        for path in products:
            for partial in _partial_names_of(path):
                partial.unlink(missing_ok=True)
            if path not in existed:
                path.unlink(missing_ok=True)
        raise


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
    if member.path is None:
        write_image(final, blot, member.wcs, member.model)
        return
    like = datamodels.ImageModel(str(member.path))
    try:
        write_image(final, blot, member.wcs, like)
    finally:
        like.close()
