"""A group's mosaic does not depend on how its members are fed to drizzle."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from outlier_dask.engine.plan import make_plan
from outlier_dask.engine.run import _task_info
from outlier_dask.engine.tasks import DrizzleSettings, build_group_mosaic
from outlier_dask.io.members import members_from_models
from outlier_dask.kernels import resample
from outlier_dask.kernels.resample import MIN_STRIP_ROWS
from outlier_dask.parameters import OutlierParameters
from outlier_dask.synthetic import make_models


@pytest.fixture(scope="module")
def plan_and_settings():
    models, _ = make_models(n_exposures=3, n_detectors=2, detector_shape=(96, 88), seed=5)
    params = OutlierParameters()
    return make_plan(members_from_models(models), "test", params), DrizzleSettings.from_parameters(
        params
    )


def test_members_inside_the_grid_are_found_and_edge_members_are_not(plan_and_settings):
    plan, _ = plan_and_settings
    flags = [f for g in plan.groups for f in g.outlines_inside]
    assert len(flags) == len(plan.members)
    assert any(flags)
    assert not all(flags)  # the grid is the inputs' bounding box: some touch its edges


def test_strips_give_the_mosaic_of_whole_members(plan_and_settings, monkeypatch):
    """Members inside the grid drizzled in strips (here of the fewest rows allowed) give the
    mosaic, weight and threshold of members drizzled in one call each."""
    plan, settings = plan_and_settings
    monkeypatch.setattr(resample, "STRIP_PIXMAP_BYTES", 16 * 88 * MIN_STRIP_ROWS)
    cut = []
    strips_of = resample.strips_of
    monkeypatch.setattr(resample, "strips_of", lambda *a: cut.append(strips_of(*a)) or cut[-1])
    compared = 0
    for group in plan.groups:
        if not any(group.outlines_inside):
            continue
        infos = [_task_info(plan, i) for i in group.members]
        strips = build_group_mosaic(group, infos, settings)
        whole = build_group_mosaic(
            replace(group, outlines_inside=(False,) * len(group.members)), infos, settings
        )
        np.testing.assert_array_equal(strips.data, whole.data)
        np.testing.assert_array_equal(strips.weight, whole.weight)
        assert strips.threshold == whole.threshold
        assert np.isfinite(strips.data).sum() > 88 * 96
        compared += 1
    assert compared
    assert len(cut) >= compared
    assert all(len(strips) == 96 // MIN_STRIP_ROWS for strips in cut)
