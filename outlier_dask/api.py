"""The Python interface: :func:`detect_outliers`."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
from stdatamodels.jwst import datamodels

from outlier_dask.engine.plan import Plan, make_plan
from outlier_dask.engine.run import EngineResult, run_plan
from outlier_dask.engine.stores import ScratchStore, scratch_directory
from outlier_dask.io.association import AssociationError, AssociationMember, read_association
from outlier_dask.io.members import Member, members_from_files, members_from_models, stem_of
from outlier_dask.io.outputs import (
    apply_outlier_mask,
    output_path_for,
    write_blot,
    write_flagged_file,
    write_image,
)
from outlier_dask.parameters import OutlierParameters
from outlier_dask.runtime.schedulers import start_runner

__all__ = ["OutlierResult", "detect_outliers"]

log = logging.getLogger("outlier_dask")


@dataclass
class OutlierResult:
    """What a run produced.

    Attributes
    ----------
    outputs : list of Path or list of ImageModel
        Flagged products in input order: paths of the written files (file inputs), or flagged
        copies of the models (model inputs).
    flagged : dict of str to int
        Pixels flagged per input name.
    status : str
        ``COMPLETE`` or ``SKIPPED``.
    timings : dict of str to float
        Wall seconds per stage.
    parameters : OutlierParameters
        The parameters used.
    """

    outputs: list[Any]
    flagged: dict[str, int]
    status: str
    timings: dict[str, float] = field(default_factory=dict)
    parameters: OutlierParameters | None = None


def _resolve_inputs(inputs: Any) -> tuple[str, list[Member], bool]:
    """Product name, members, and whether they came from files."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    items = list(inputs)
    if not items:
        raise AssociationError("no inputs given")
    if all(isinstance(i, datamodels.ImageModel) for i in items):
        return "outlier_dask", members_from_models(items), False
    if any(isinstance(i, datamodels.JwstDataModel) for i in items):
        raise AssociationError("inputs must be all file paths or all ImageModel objects")
    paths = [Path(i) for i in items]
    if len(paths) == 1 and paths[0].suffix.lower() == ".json":
        product, entries = read_association(paths[0])
    else:
        for p in paths:
            if p.suffix.lower() == ".json":
                raise AssociationError(f"{p}: give one association, or only _cal.fits files")
            if not p.is_file():
                raise AssociationError(f"{p}: input file not found")
        entries = [AssociationMember(p.resolve()) for p in paths]
        product = os.path.commonprefix([stem_of(p.name) for p in paths]).rstrip("_") or (
            "outlier_dask"
        )
    return product, members_from_files(entries), True


def _check_outputs(members: list[Member], params: OutlierParameters) -> list[Path]:
    out_dir = Path(params.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output_dir: {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise ValueError(f"output_dir: {out_dir} is not writable")
    outputs = [output_path_for(m.name, out_dir, params.suffix) for m in members]
    inputs = {m.path.resolve() for m in members if m.path}
    for member, path in zip(members, outputs, strict=True):
        if path.resolve() in inputs:
            raise ValueError(f"{member.name}: the output {path} would overwrite an input")
        if path.exists() and not params.overwrite:
            raise ValueError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if len(set(outputs)) != len(outputs):
        raise ValueError("two inputs would write the same output name; rename them")
    return outputs


def detect_outliers(
    inputs: Any,
    *,
    parameters: OutlierParameters | None = None,
    client: Any = None,
    **values: Any,
) -> OutlierResult:
    """Flag outliers in a Stage 3 imaging association, like the JWST pipeline's step.

    Parameters
    ----------
    inputs : str, Path, sequence of str/Path, or sequence of ImageModel
        An image3 association JSON, several ``_cal.fits`` files, or in-memory models.
    parameters : OutlierParameters, optional
        All parameters at once; ``values`` override single ones.
    client : distributed.Client, optional
        Run on this cluster instead of starting a scheduler.
    **values
        Any field of :class:`OutlierParameters` by name (strings are accepted, e.g.
        ``snr="5.0 4.0"``, ``in_memory="False"``).

    Returns
    -------
    OutlierResult

    Raises
    ------
    ValueError
        A bad parameter, input or output location, named in the message, before heavy work.
    """
    params = parameters or OutlierParameters()
    if values:
        merged = {k: v for k, v in params.__dict__.items() if k not in ("snr_pair", "scale_pair")}
        merged.update({k.replace("-", "_"): v for k, v in values.items()})
        params = OutlierParameters.from_mapping(merged)
    product, members, from_files = _resolve_inputs(inputs)
    outputs = _check_outputs(members, params) if from_files else []
    if len(members) < 2:
        log.warning(
            "outlier detection needs at least two inputs, got %d: step skipped", len(members)
        )
        return _skip(members, outputs, from_files, params)
    started = time.perf_counter()
    plan = make_plan(members, product, params)
    timings = {"plan": time.perf_counter() - started}
    log.info(
        "%d inputs in %d groups; median grid %d x %d",
        len(members),
        plan.n_groups,
        *plan.grid_shape,
    )
    with scratch_directory(params.work_dir) as scratch:
        store = None if params.in_memory else ScratchStore(str(scratch / "stack.zarr"))
        with start_runner(params, client, str(scratch)) as runner:
            result = run_plan(plan, params, runner, store)
            timings.update(result.timings)
            started = time.perf_counter()
            written = _write_products(plan, result, outputs, from_files, params, runner)
            timings["write"] = time.perf_counter() - started
    flagged = {m.name: n for m, n in zip(members, result_counts(result), strict=True)}
    for name, count in flagged.items():
        log.info("%s: %d pixels marked as outliers", name, count)
    return OutlierResult(written, flagged, "COMPLETE", timings, params)


def result_counts(result: EngineResult) -> list[int]:
    """Pixels flagged per member."""
    return [int(m.sum()) for m in result.masks]


def _skip(members, outputs, from_files, params) -> OutlierResult:
    written: list[Any] = []
    for k, member in enumerate(members):
        if from_files:
            write_flagged_file(member, None, outputs[k])
            written.append(outputs[k])
        else:
            model = member_model_copy(member)
            model.meta.cal_step.outlier_detection = "SKIPPED"
            written.append(model)
    return OutlierResult(written, {m.name: 0 for m in members}, "SKIPPED", {}, params)


def member_model_copy(member: Member) -> datamodels.ImageModel:
    """A flaggable copy of an in-memory member's model."""
    return member.model.copy()


def _write_products(
    plan: Plan,
    result: EngineResult,
    outputs: list[Path],
    from_files: bool,
    params: OutlierParameters,
    runner,
) -> list[Any]:
    if params.save_intermediate_results:
        _write_intermediates(plan, result, params)
    if from_files:
        tasks = [
            dask.delayed(write_flagged_file)(member, mask, path)
            for member, mask, path in zip(plan.members, result.masks, outputs, strict=True)
        ]
        runner.compute(*tasks, stage="write")
        return outputs
    flagged_models = []
    for member, mask in zip(plan.members, result.masks, strict=True):
        model = member_model_copy(member)
        apply_outlier_mask(model, mask, "COMPLETE")
        flagged_models.append(model)
    return flagged_models


def _write_intermediates(plan: Plan, result: EngineResult, params: OutlierParameters) -> None:
    out_dir = Path(params.output_dir)
    if params.resample_data and result.mosaics is not None:
        for group, mosaic in zip(plan.groups, result.mosaics, strict=True):
            first = plan.members[group.members[0]]
            data, weight = _full_grid(plan, mosaic)
            write_image(
                out_dir / f"{stem_of(first.name)}_outlier_i2d.fits",
                data,
                plan.grid_wcs,
                weight=weight,
            )
    if result.median is not None:
        wcs = plan.grid_wcs if plan.grid_wcs is not None else plan.members[0].wcs
        write_image(out_dir / f"{plan.product_name}_median.fits", result.median, wcs)
    if params.resample_data and result.blots is not None:
        for member, blot in zip(plan.members, result.blots, strict=True):
            if member.path is not None:
                write_blot(out_dir / f"{member.stem}_blot.fits", blot, member)


def _full_grid(plan: Plan, mosaic) -> tuple[np.ndarray, np.ndarray]:
    """A group's mosaic and weight on the whole grid (NaN and 0 outside its region)."""
    data = np.full(plan.grid_shape, np.nan, dtype=np.float32)
    weight = np.zeros(plan.grid_shape, dtype=np.float32)
    (y0, y1), (x0, x1) = mosaic.region
    data[y0:y1, x0:x1] = mosaic.data
    weight[y0:y1, x0:x1] = mosaic.weight
    return data, weight
