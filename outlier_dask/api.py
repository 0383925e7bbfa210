"""The Python interface: :func:`detect_outliers`."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from stdatamodels.jwst import datamodels

from outlier_dask.engine.budget import PlannedRun, plan_run
from outlier_dask.engine.handover import open_handover, uses_store
from outlier_dask.engine.plan import Plan
from outlier_dask.engine.run import EngineResult, run_plan
from outlier_dask.engine.scratch import local_work_dir, scratch_store
from outlier_dask.engine.stores import scratch_directory, scratch_parent
from outlier_dask.io.association import (
    AssociationError,
    AssociationMember,
    association_id,
    product_name_for_files,
    read_association,
)
from outlier_dask.io.flagged_fits import write_flagged_fits
from outlier_dask.io.members import (
    Member,
    load_asdf_extensions,
    members_from_files,
    members_from_models,
    stem_of,
)
from outlier_dask.io.outputs import (
    apply_outlier_mask,
    blot_path_for,
    intermediate_paths,
    median_path_for,
    mosaic_path_for,
    output_path_for,
    removed_on_failure,
    write_blot,
    write_image,
)
from outlier_dask.io.provenance import provenance_history
from outlier_dask.io.validation import (
    check_free_space,
    check_inputs,
    check_output_paths,
    check_scheduler_reachable,
    check_tls_files,
    check_work_dir,
    disk_full_explained,
    prepare_output_dir,
    product_bytes,
)
from outlier_dask.parameters import OutlierParameters
from outlier_dask.plot import plot_path, write_plot
from outlier_dask.progress import make_progress
from outlier_dask.report import build_report, input_entry, report_path, write_report
from outlier_dask.runtime.reading import reading_map
from outlier_dask.runtime.schedulers import (
    client_ssl_context,
    resolve_security,
    start_runner,
)
from outlier_dask.runtime.signals import interrupted_by_signals, stop_if_interrupted

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
        Wall seconds of ``plan``, ``drizzle``, ``median``, ``blot_flag`` (blot, compare and
        writing the products) and ``total`` (the whole call); ``write`` is different: the
        task-seconds spent writing products inside ``blot_flag``, summed over workers.
    parameters : OutlierParameters
        The parameters used.
    report : dict
        The run report (see :func:`outlier_dask.report.build_report`): parameters, versions,
        timings, and per input the pixels flagged, the flagged fraction of its valid pixels and
        the fraction of its pixels the median covers.
    report_path : Path or None
        Where the report was written as JSON (None: not written).
    plot_path : Path or None
        Where the report's figure was written as PNG (None: not requested).
    """

    outputs: list[Any]
    flagged: dict[str, int]
    status: str
    timings: dict[str, float] = field(default_factory=dict)
    parameters: OutlierParameters | None = None
    report: dict[str, Any] = field(default_factory=dict)
    report_path: Path | None = None
    plot_path: Path | None = None


def _resolve_inputs(
    inputs: Any, params: OutlierParameters | None = None
) -> tuple[str, list[Member], bool]:
    """Product name, members, and whether they came from files (read as
    :func:`~outlier_dask.runtime.reading.reading_map` decides).

    Raises
    ------
    AssociationError
        Naming the input, association or member that cannot be used (see
        :func:`~outlier_dask.io.association.read_association` and
        :func:`~outlier_dask.io.members.members_from_files`).
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    try:
        items = list(inputs)
    except TypeError:
        raise AssociationError(
            f"inputs: expected a path or a list of paths or models, got {type(inputs).__name__}"
        ) from None
    if not items:
        raise AssociationError("no inputs given")
    if all(isinstance(i, datamodels.ImageModel) for i in items):
        return "outlier_dask", members_from_models(items), False
    for k, item in enumerate(items):
        if isinstance(item, datamodels.JwstDataModel):
            raise AssociationError("inputs must be all file paths or all ImageModel objects")
        if not isinstance(item, str | os.PathLike):
            raise AssociationError(
                f"input {k}: expected a file path or an ImageModel, got {type(item).__name__}"
            )
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
        product = product_name_for_files([stem_of(p.name) for p in paths])
    load_asdf_extensions()  # before any worker forks
    params = params or OutlierParameters()
    # The search for usable pixels (a check before the run) is made by the readers, side by
    # side, while each file is open: in this process it would grow with the association.
    usable_under = (params.good_bits, params.weight_type == "ivm")
    with reading_map(params, len(entries)) as mapper:
        return product, members_from_files(entries, mapper, usable_under=usable_under), True


def _is_association_path(inputs: Any) -> bool:
    """Whether ``inputs`` is one association file (a path, or a list of one path)."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    if not isinstance(inputs, list | tuple) or len(inputs) != 1:
        return False
    return isinstance(inputs[0], str | os.PathLike) and str(inputs[0]).lower().endswith(".json")


def _planned_products(
    members: list[Member], asn_id: str | None, params: OutlierParameters, from_files: bool
) -> tuple[list[Path], list[Path]]:
    """The ``_crf`` products (file inputs only) and the intermediate products of a run, as
    absolute paths: the workers of a cluster at an address, which write them, run in folders
    of their own."""
    out_dir = Path(params.output_dir).absolute()
    flagged = (
        [output_path_for(m.name, out_dir, params.suffix) for m in members] if from_files else []
    )
    keep = params.save_intermediate_results and len(members) >= 2
    extra = intermediate_paths(members, out_dir, params.resample_data, asn_id) if keep else []
    return flagged, extra


def _check_outputs(
    members: list[Member], params: OutlierParameters, asn_id: str | None, from_files: bool
) -> list[Path]:
    """Check every product's path before any work; return the ``_crf`` paths in input order.

    Raises
    ------
    OutputError
        If the output folder cannot be written, or a product would leave it, replace an
        input, collide with another, or replace an existing file without ``overwrite``.
    """
    flagged, extra = _planned_products(members, asn_id, params, from_files)
    if not flagged and not extra:
        return []
    out_dir = Path(params.output_dir)
    prepare_output_dir(out_dir)
    named = [(m.name, p) for m, p in zip(members, flagged, strict=False)]
    named += [(p.name, p) for p in extra]
    inputs = [m.path for m in members if m.path is not None]
    check_output_paths(named, inputs, out_dir, params.overwrite)
    return flagged


#: Clean-up of the current :func:`detect_outliers` call, run if it fails or is interrupted.
_run_cleanup: ContextVar[contextlib.ExitStack] = ContextVar("_run_cleanup")


def _guarded_run(function: Callable[..., OutlierResult]) -> Callable[..., OutlierResult]:
    """Run ``detect_outliers`` with SIGTERM acting as Ctrl-C and clean-up on any failure.

    The checks made once the products are known register their clean-up (remove this run's
    partial products, explain a full disk) in :data:`_run_cleanup`.
    """

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> OutlierResult:
        with interrupted_by_signals(), contextlib.ExitStack() as cleanup:
            token = _run_cleanup.set(cleanup)
            try:
                return function(*args, **kwargs)
            finally:
                _run_cleanup.reset(token)

    return run


def _check_before_work(
    members: list[Member],
    asn_id: str | None,
    from_files: bool,
    params: OutlierParameters,
    client: Any,
    security: Any,
) -> None:
    """The checks of ``io/validation.py`` that need no plan, and this run's failure clean-up."""
    check_tls_files(params)
    if client is None:
        ssl_context = client_ssl_context(resolve_security(params, security))
        check_scheduler_reachable(params.scheduler, ssl_context)
    if len(members) >= 2:
        check_inputs(members, params)
    flagged, extra = _planned_products(members, asn_id, params, from_files)
    cleanup = _run_cleanup.get()
    cleanup.enter_context(removed_on_failure([*flagged, *extra]))
    work_dir = scratch_parent(local_work_dir(params.work_dir))
    check_work_dir(work_dir)
    folders = [("output_dir", Path(params.output_dir)), ("work_dir", work_dir)]
    cleanup.enter_context(disk_full_explained(folders))
    if len(members) < 2 and flagged:
        check_free_space(
            [("products", Path(params.output_dir), product_bytes(members, params, 0, 0))]
        )


def _check_free_space(planned: PlannedRun) -> None:
    """Refuse a run whose products and scratch data would not fit (needs the plan's regions)."""
    plan, params = planned.plan, planned.params
    ny, nx = plan.grid_shape
    products = product_bytes(plan.members, params, ny * nx, plan.n_groups)
    scratch = 0
    # A remote work_dir (fsspec URL) has no free-space query; its store is checked by writing.
    if local_work_dir(params.work_dir) == params.work_dir:
        scratch = planned.budget.estimate.scratch_disk
    check_free_space(
        [
            ("products", Path(params.output_dir), products),
            ("scratch", scratch_parent(local_work_dir(params.work_dir)), scratch),
        ]
    )


@_guarded_run
def detect_outliers(
    inputs: Any,
    *,
    parameters: OutlierParameters | None = None,
    client: Any = None,
    security: Any = None,
    progress: bool | str = "auto",
    report: bool | None = None,
    plot: bool = False,
    asn_id: str | None = None,
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
    security : distributed.Security, optional
        How to connect to a ``tls://`` scheduler address (``parameters.scheduler``); by
        default built from the ``tls_ca_file``, ``tls_cert`` and ``tls_key`` parameters.
    progress : bool or {"auto", "bar", "log", "off"}
        Show each stage's progress: a bar on a terminal (stderr), else log records of logger
        ``outlier_dask.progress`` (see :func:`outlier_dask.progress.make_progress`).
    report : bool, optional
        Write ``<product>_outlier_report.json`` in ``output_dir``. By default (None) it is
        written for file inputs, beside the products, and not for in-memory models (whose
        products are not written either); ``OutlierResult.report`` always holds it.
    plot : bool
        Also write ``<product>_outlier_report.png`` in ``output_dir`` (needs matplotlib): the
        median with all inputs' outliers on it and the flagged fraction per input.
    asn_id : str, optional
        Association id put in the names of the intermediate files
        (``<first input>_<asn_id>_median.fits``), as jwst names them; by default the
        association file's ``asn_id``, none for a list of files or models.
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
    called = time.perf_counter()
    params = parameters or OutlierParameters()
    if values:
        merged = {k: v for k, v in params.__dict__.items() if k not in ("snr_pair", "scale_pair")}
        merged.update({k.replace("-", "_"): v for k, v in values.items()})
        params = OutlierParameters.from_mapping(merged)
    product, members, from_files = _resolve_inputs(inputs, params)
    if asn_id is None and _is_association_path(inputs):
        asn_id = association_id(inputs if isinstance(inputs, str | os.PathLike) else inputs[0])
    outputs = _check_outputs(members, params, asn_id, from_files)
    _check_before_work(members, asn_id, from_files, params, client, security)
    extras = _check_extras(product, params, from_files if report is None else report, plot)
    # A report or figure written just before an interrupt would describe products that the
    # clean-up removes: they go with them.
    _run_cleanup.get().enter_context(
        removed_on_failure([p for p in (extras.report, extras.plot) if p is not None])
    )
    display = make_progress(progress)
    if len(members) < 2:
        log.warning(
            "outlier detection needs at least two inputs, got %d: step skipped", len(members)
        )
        skipped = _skip(members, outputs, from_files, params)
        skipped.timings["total"] = time.perf_counter() - called
        return _finish(skipped, product, members, None, None, None, extras)
    # Masks come back to this process for in-memory models and the figure; otherwise each
    # input's product is written where its mask was computed.
    keep_masks = extras.plot is not None or not from_files
    started = time.perf_counter()
    planned = plan_run(
        members, product, params, client_given=client is not None, keep_masks=keep_masks
    )
    plan, params = planned.plan, planned.params
    timings = {"plan": time.perf_counter() - started}
    _check_free_space(planned)
    stop_if_interrupted()  # a signal swallowed by a library while planning: no work starts
    log.info(
        "%d inputs in %d groups; median grid %d x %d",
        len(members),
        plan.n_groups,
        *plan.grid_shape,
    )
    kind = planned.budget.handover
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(scratch_directory(local_work_dir(params.work_dir)))
        store = (
            stack.enter_context(scratch_store(params.work_dir, scratch))
            if uses_store(kind)
            else None
        )
        # Shared arrays are mapped before a local scheduler forks its workers, which share them.
        handover = stack.enter_context(open_handover(kind, plan, store))
        with start_runner(params, client, str(scratch), security) as runner:
            runner.progress = display
            result = run_plan(
                plan,
                params,
                runner,
                handover,
                writers=_product_writers(plan, outputs, params) if from_files else None,
                keep_median=extras.plot is not None,
                keep_masks=keep_masks,
            )
            timings.update(result.timings)
            stop_if_interrupted()  # a run that went on after one keeps no products
            written = _write_products(plan, result, outputs, from_files, params, asn_id)
    flagged = {m.name: n for m, n in zip(members, result_counts(result), strict=True)}
    for name, count in flagged.items():
        log.info("%s: %d pixels marked as outliers", name, count)
    timings["total"] = time.perf_counter() - called
    done = OutlierResult(written, flagged, "COMPLETE", timings, params)
    return _finish(done, product, members, plan, result, runner, extras)


@dataclass(frozen=True)
class _Extras:
    """Where the report and the figure go (None: not written)."""

    report: Path | None
    plot: Path | None


def _check_extras(product: str, params: OutlierParameters, report: bool, plot: bool) -> _Extras:
    """Paths of the report and figure, checked before any heavy work."""
    out_dir = Path(params.output_dir)
    paths = _Extras(
        report_path(out_dir, product) if report else None,
        plot_path(out_dir, product) if plot else None,
    )
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError(
                "plot: needs matplotlib; install it with: pip install 'outlier-dask[plot]'"
            ) from None
    for path in (paths.report, paths.plot):
        if path is None:
            continue
        if path.exists() and not params.overwrite:
            raise ValueError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
    return paths


def _finish(
    done: OutlierResult,
    product: str,
    members: list[Member],
    plan: Plan | None,
    result: EngineResult | None,
    runner: Any,
    extras: _Extras,
) -> OutlierResult:
    """Add the report to a result, and write the report and figure where asked."""
    outputs = done.outputs if done.outputs and isinstance(done.outputs[0], Path) else None
    entries = [
        input_entry(
            member,
            flagged=done.flagged[member.name],
            valid_pixels=result.valid_pixels[k] if result else None,
            covered_pixels=result.covered_pixels[k] if result else None,
            output=outputs[k] if outputs else None,
        )
        for k, member in enumerate(members)
    ]
    done.report = build_report(
        product=product,
        status=done.status,
        params=done.parameters,
        timings=done.timings,
        inputs=entries,
        plan=plan,
        runner=runner,
    )
    if extras.report is not None:
        done.report_path = write_report(done.report, extras.report)
        log.info("report: %s", done.report_path)
    if extras.plot is not None and result is not None and result.median is not None:
        done.plot_path = write_plot(
            extras.plot,
            median=result.median,
            masks=result.masks,
            pixel_maps=plan.pixel_maps,
            names=[m.name for m in members],
            groups=[m.group_id for m in members],
            fractions=[e["flagged_fraction"] for e in entries],
            title=product,
        )
        log.info("figure: %s", done.plot_path)
    elif extras.plot is not None:
        log.warning("plot: no figure for a skipped run")
    return done


def result_counts(result: EngineResult) -> list[int]:
    """Pixels flagged per member."""
    return list(result.flagged)


def _product_writers(
    plan: Plan, outputs: list[Path], params: OutlierParameters
) -> list[Callable[[np.ndarray], int]]:
    """Per member, the call that writes its ``_crf`` product from its mask (run in a worker)."""
    history = provenance_history(params)
    return [
        functools.partial(write_flagged_fits, member.path, final=path, history=history)
        for member, path in zip(plan.members, outputs, strict=True)
    ]


def _skip(members, outputs, from_files, params) -> OutlierResult:
    written: list[Any] = []
    for k, member in enumerate(members):
        if from_files:
            write_flagged_fits(member.path, None, outputs[k], history=provenance_history(params))
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
    asn_id: str | None,
) -> list[Any]:
    """Intermediate files, and the flagged models of in-memory inputs.

    File inputs' products were written by the engine's per-input tasks (``writers``).
    """
    if params.save_intermediate_results:
        _write_intermediates(plan, result, params, asn_id)
    if from_files:
        return outputs
    flagged_models = []
    for member, mask in zip(plan.members, result.masks, strict=True):
        model = member_model_copy(member)
        apply_outlier_mask(model, mask, "COMPLETE")
        flagged_models.append(model)
    return flagged_models


def _write_intermediates(
    plan: Plan, result: EngineResult, params: OutlierParameters, asn_id: str | None
) -> None:
    """The ``save_intermediate_results`` files, named by :func:`intermediate_paths`' rule."""
    out_dir = Path(params.output_dir)
    if params.resample_data and result.mosaics is not None:
        for group, mosaic in zip(plan.groups, result.mosaics, strict=True):
            first = plan.members[group.members[0]]
            data, weight = _full_grid(plan, mosaic)
            write_image(
                mosaic_path_for(first.name, out_dir, asn_id),
                data,
                plan.grid_wcs,
                weight=weight,
            )
    if result.median is not None:
        wcs = plan.grid_wcs if plan.grid_wcs is not None else plan.members[0].wcs
        write_image(median_path_for(plan.members[0].name, out_dir, asn_id), result.median, wcs)
    if params.resample_data and result.blots is not None:
        for member, blot in zip(plan.members, result.blots, strict=True):
            write_blot(blot_path_for(member.name, out_dir, asn_id), blot, member)


def _full_grid(plan: Plan, mosaic) -> tuple[np.ndarray, np.ndarray]:
    """A group's mosaic and weight on the whole grid (NaN and 0 outside its region)."""
    data = np.full(plan.grid_shape, np.nan, dtype=np.float32)
    weight = np.zeros(plan.grid_shape, dtype=np.float32)
    (y0, y1), (x0, x1) = mosaic.region
    data[y0:y1, x0:x1] = mosaic.data
    weight[y0:y1, x0:x1] = mosaic.weight
    return data, weight
