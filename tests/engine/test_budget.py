"""The memory budget decides workers, tiles and where the stack lives."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from outlier_dask.engine import handover
from outlier_dask.engine.budget import (
    MIN_TILE_PX,
    default_memory_limit,
    fit_to_budget,
    plan_run,
)
from outlier_dask.engine.estimate import estimate_resources
from outlier_dask.engine.handover import LOCAL_STORE, SHARED, STORE, WORKERS
from outlier_dask.engine.plan import make_plan
from outlier_dask.geometry.windows import tile_ranges
from outlier_dask.io.members import members_from_models
from outlier_dask.parameters import OutlierParameters
from outlier_dask.synthetic import make_models


@pytest.fixture(scope="module")
def members():
    models, _ = make_models(n_exposures=6, n_detectors=2, detector_shape=(256, 256), seed=8)
    return members_from_models(models)


def _decide(members, **values):
    params = OutlierParameters(**values)
    return fit_to_budget(make_plan(members, "budget", params), params)


def _peak(plan, kind, workers, keep_masks=False):
    """The estimated peak of ``plan`` on the ``processes`` scheduler (``workers`` + 1
    processes), the stack and median in ``kind``."""
    return estimate_resources(
        plan, kind=kind, n_workers=workers, processes=workers + 1, keep_masks=keep_masks
    ).peak_memory


def test_ample_budget_keeps_what_was_asked(members):
    decision = _decide(members, memory_limit="64GiB", n_workers=2)
    assert decision.in_memory is True
    assert decision.n_workers == 2
    assert decision.tile_size == 1024
    assert decision.notes == ()
    assert decision.estimate.peak_memory <= decision.memory_limit


def test_small_budget_moves_the_stack_to_disk_and_drops_workers(members, caplog):
    params = OutlierParameters(n_workers=2)
    plan = make_plan(members, "budget", params)

    # The default scheduler (processes) shares the stack and median with its workers.
    limit = _peak(plan, LOCAL_STORE, 1)
    assert limit < _peak(plan, SHARED, 1)
    assert limit < _peak(plan, LOCAL_STORE, 2)
    with caplog.at_level(logging.WARNING, logger="outlier_dask.engine.budget"):
        decision = _decide(members, memory_limit=limit, n_workers=2)
    assert decision.in_memory is False
    assert decision.n_workers == 1
    assert decision.estimate.peak_memory <= limit
    assert "kept on disk" in caplog.text
    assert "1 worker(s) instead of 2" in caplog.text


def test_budget_below_one_task_runs_with_one_worker_and_says_so(members):
    decision = _decide(members, memory_limit="1MB", n_workers=2)
    assert decision.n_workers == 1
    assert any("the largest task needs" in note for note in decision.notes)


def test_many_groups_shrink_median_tiles():
    models, _ = make_models(n_exposures=40, n_detectors=1, detector_shape=(64, 64), seed=1)
    members = members_from_models(models)
    params = OutlierParameters(tile_size=4096, memory_limit="64GiB")
    plan = make_plan(members, "many", params)
    # A grid of this many groups as large as NIRCam's makes 4096-pixel median tiles heavy.
    plan = dataclasses.replace(plan, grid_shape=(8192, 8192))
    decision = fit_to_budget(plan, params)
    assert MIN_TILE_PX <= decision.tile_size < 4096


def test_default_budget_is_half_the_machine():
    import psutil

    assert default_memory_limit() == int(psutil.virtual_memory().total * 0.5)


def test_decision_is_applied_to_plan_and_parameters(members):
    params = OutlierParameters(memory_limit="1MB", n_workers=2, tile_size=2048)
    plan = make_plan(members, "budget", params)
    decision = fit_to_budget(plan, params)
    plan2, params2 = decision.apply(plan, params)
    assert params2.n_workers == decision.n_workers == 1
    assert params2.in_memory is False
    assert plan2.tile_shape == (decision.tile_size, decision.tile_size)


def test_each_handover_counts_what_it_holds(members, monkeypatch):
    """Shared memory and a cluster's workers hold the planes on the whole tiles each group's
    region meets and the median (a cluster a small one whole on each worker, and once more
    while its blocks are joined); the store holds them on disk, in whole chunks."""
    plan = make_plan(members, "budget", OutlierParameters(tile_size=256))
    grid = plan.grid_shape[0] * plan.grid_shape[1]
    ty, tx = plan.tile_shape
    met = chunks = 0
    for group in plan.groups:
        (y0, y1), (x0, x1) = group.region
        rows = [r for r in tile_ranges(plan.grid_shape[0], ty) if r[0] < y1 and y0 < r[1]]
        cols = [c for c in tile_ranges(plan.grid_shape[1], tx) if c[0] < x1 and x0 < c[1]]
        met += sum(r1 - r0 for r0, r1 in rows) * sum(c1 - c0 for c0, c1 in cols)
        chunks += len(rows) * len(cols) * ty * tx
    for kind, where in ((SHARED, "shared memory"), (WORKERS, "worker memory")):
        estimate = estimate_resources(plan, kind=kind, n_workers=2)
        assert estimate.parts[f"masked stack ({where})"] == 4 * met
        assert estimate.scratch_disk == 0
    assert (
        estimate_resources(plan, kind=SHARED, n_workers=2).parts["median (shared memory)"]
        == 4 * grid
    )
    cluster = estimate_resources(plan, kind=WORKERS, n_workers=2).parts
    assert cluster["median (whole, on each worker)"] == 4 * grid * 3
    assert "median (worker memory)" not in cluster
    monkeypatch.setattr(handover, "WHOLE_MEDIAN_BYTES", 4 * grid - 1)
    cluster = estimate_resources(plan, kind=WORKERS, n_workers=2).parts
    assert cluster["median (worker memory)"] == 4 * grid
    assert "median (whole, on each worker)" not in cluster
    stored = estimate_resources(plan, kind=STORE, n_workers=2)
    assert not any(name.endswith("memory)") for name in stored.parts)
    whole_chunks = -(-plan.grid_shape[0] // ty) * ty * -(-plan.grid_shape[1] // tx) * tx
    assert stored.scratch_disk == 4 * (chunks + whole_chunks) + 16 * 2**10
    # On one machine out of core, the median (one plane) is shared: only the stack is on disk.
    local = estimate_resources(plan, kind=LOCAL_STORE, n_workers=2)
    assert local.parts["median (shared memory)"] == 4 * grid
    assert "masked stack (shared memory)" not in local.parts
    assert local.scratch_disk == 4 * chunks + 16 * 2**10


def test_a_caller_client_is_budgeted_as_a_cluster(members, monkeypatch):
    """With a distributed client the stack and median stay on its workers, whatever
    ``scheduler`` says: the run is planned with that handover."""
    from outlier_dask import api

    params = OutlierParameters(scheduler="processes", n_workers=2)
    assert plan_run(members, "budget", params).budget.handover == SHARED
    assert plan_run(members, "budget", params, client_given=True).budget.handover == WORKERS
    stored = params.replace(in_memory=False)
    assert plan_run(members, "budget", stored).budget.handover == LOCAL_STORE
    assert plan_run(members, "budget", stored, client_given=True).budget.handover == STORE

    seen = []

    class StopBeforeWorkError(Exception):
        pass

    def spy(members, product, params, *, client_given=False, keep_masks=False):
        seen.append((client_given, keep_masks))
        raise StopBeforeWorkError

    monkeypatch.setattr(api, "plan_run", spy)
    monkeypatch.setattr(api, "_check_before_work", lambda *args: None)
    models = [m.model for m in members]
    for client in (None, object()):
        with pytest.raises(StopBeforeWorkError):
            api.detect_outliers(models, client=client, scheduler="processes")
    # In-memory models: their masks come back to this process.
    assert seen == [(False, True), (True, True)]


def test_masks_count_only_when_they_come_back(members):
    """Products written by the workers leave the masks there; in-memory models and the figure
    bring every mask (one byte per input pixel) to this process, and the budget plans for it."""
    params = OutlierParameters(n_workers=2)
    plan = make_plan(members, "budget", params)
    pixels = sum(m.shape[0] * m.shape[1] for m in members)

    assert _peak(plan, SHARED, 2, keep_masks=True) - _peak(plan, SHARED, 2) == pixels
    # A budget that two workers fit only while the masks stay with them.
    limit = _peak(plan, SHARED, 2)
    assert _peak(plan, SHARED, 2, keep_masks=True) > limit
    left = fit_to_budget(plan, params.replace(memory_limit=str(limit)))
    returned = fit_to_budget(plan, params.replace(memory_limit=str(limit)), keep_masks=True)
    assert (left.n_workers, returned.n_workers) == (2, 1)
    assert (
        plan_run(members, "budget", params.replace(memory_limit=str(limit))).budget.n_workers == 2
    )


def test_out_of_core_the_median_goes_to_disk_when_that_keeps_the_workers(members):
    """Out of core on one machine the median stays in shared memory, unless a second worker
    fits only with the median in the store too: then both live on disk."""
    params = OutlierParameters(n_workers=2, in_memory=False)
    plan = make_plan(members, "budget", params)

    # Median in memory fits one worker only; both on disk fit two.
    limit = _peak(plan, STORE, 2)
    assert _peak(plan, LOCAL_STORE, 1) <= limit < _peak(plan, LOCAL_STORE, 2)
    decision = fit_to_budget(plan, params.replace(memory_limit=str(limit)))
    assert (decision.handover, decision.n_workers) == (STORE, 2)
    assert "the median kept on disk too, so that 2 worker(s) fit" in decision.notes
    # With room for the median beside both workers, it stays in memory.
    roomy = fit_to_budget(plan, params.replace(memory_limit=str(_peak(plan, LOCAL_STORE, 2))))
    assert (roomy.handover, roomy.n_workers, roomy.notes) == (LOCAL_STORE, 2, ())


def test_a_run_with_the_median_on_disk_flags_as_the_default_run(members, caplog):
    """The budget's choice of the store for both the stack and the median, with forked
    workers, gives the default run's flags."""
    from outlier_dask import detect_outliers

    models = [m.model for m in members]
    plan = make_plan(members, "budget", OutlierParameters(n_workers=2, in_memory=False))

    # In-memory models: their masks come back to this process.
    limit = _peak(plan, STORE, 2, keep_masks=True)
    assert _peak(plan, LOCAL_STORE, 1, True) <= limit < _peak(plan, LOCAL_STORE, 2, True)
    default = detect_outliers(models, scheduler="synchronous")
    with caplog.at_level(logging.WARNING, logger="outlier_dask.engine.budget"):
        on_disk = detect_outliers(
            models, scheduler="processes", n_workers=2, in_memory=False, memory_limit=limit
        )
    assert "the median kept on disk too, so that 2 worker(s) fit" in caplog.text
    assert on_disk.parameters.n_workers == 2
    flagged = [np.count_nonzero(m.dq & 16) for m in default.outputs]
    assert sum(flagged) > 0
    for want, got in zip(default.outputs, on_disk.outputs, strict=True):
        np.testing.assert_array_equal(got.dq, want.dq)


def _with_regions(plan, grid_shape, regions):
    """``plan`` on a grid of ``grid_shape`` whose groups cover ``regions``."""
    groups = [
        dataclasses.replace(plan.groups[g % plan.n_groups], group_id=f"g{g}", region=region)
        for g, region in enumerate(regions)
    ]
    return dataclasses.replace(plan, grid_shape=grid_shape, groups=groups)


def test_a_median_task_holds_the_groups_meeting_its_tile(members):
    """The most regions meeting one tile; every group when the fill value is a number."""
    plan = make_plan(members, "budget", OutlierParameters())
    regions = [
        ((0, 100), (0, 100)),  # tile (0, 0)
        ((50, 300), (50, 300)),  # tiles (0..1, 0..1)
        ((200, 260), (200, 260)),  # tile (1, 1)
        ((256, 512), (256, 512)),  # tile (1, 1) only: the end is excluded
        ((0, 0), (0, 50)),  # empty
        ((400, 420), (0, 20)),  # tile (1, 0)
    ]
    plan = _with_regions(plan, (512, 512), regions)
    assert handover.median_task_planes(plan, (256, 256), numeric_fill=False) == 3
    assert handover.median_task_planes(plan, (512, 512), numeric_fill=False) == 5
    # tile (2, 2) of 128: rows and columns 256-384 meet regions 1, 2 and 3
    assert handover.median_task_planes(plan, (128, 128), numeric_fill=False) == 3
    assert handover.median_task_planes(plan, (64, 64), numeric_fill=False) == 3
    assert handover.median_task_planes(plan, (256, 256), numeric_fill=True) == 6


def test_a_survey_keeps_its_median_tiles_where_a_deep_stack_shrinks_them(members):
    """Many groups side by side (a survey) keep full tiles; the same groups stacked on one
    field, or any groups with a numeric fill value, make median tasks heavy and tiles smaller."""
    params = OutlierParameters(tile_size=1024, memory_limit="64GiB")
    plan = make_plan(members, "survey", params)
    side = [((0, 1024), (1024 * k, 1024 * (k + 1))) for k in range(40)]
    survey = _with_regions(plan, (1024, 1024 * 40), side)
    deep = _with_regions(plan, (1024, 1024 * 40), [side[0]] * 40)
    assert fit_to_budget(survey, params).tile_size == 1024
    assert fit_to_budget(deep, params).tile_size < 1024
    numeric = params.replace(fillval="0")
    assert fit_to_budget(survey, numeric).tile_size < 1024
