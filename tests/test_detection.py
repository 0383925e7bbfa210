"""The detection parameter end to end: reference is the default, robust fixes two-group pixels."""

from __future__ import annotations

import numpy as np
import pytest

from outlier_dask import detect_outliers
from outlier_dask.synthetic import make_models

OUTLIER = 16


@pytest.fixture(scope="module")
def two_dithers():
    """Two exposures of one detector: nearly every pixel is seen by exactly two groups."""
    return make_models(
        n_exposures=2,
        n_detectors=1,
        detector_shape=(128, 128),
        seed=21,
        cr_fraction=4e-3,
        background_level_in_meta=True,
    )


def _masks(models, **values):
    result = detect_outliers(models, scheduler="synchronous", progress="off", **values)
    return [(m.dq & OUTLIER) != 0 for m in result.outputs]


def test_reference_is_the_default(two_dithers):
    models, _ = two_dithers
    for default, explicit in zip(
        _masks(models), _masks(models, detection="reference"), strict=True
    ):
        np.testing.assert_array_equal(default, explicit)


def test_robust_stops_flagging_the_clean_exposure_of_a_pair(two_dithers):
    """With two groups the reference median is their mean: a cosmic ray in one exposure
    lifts it for both, so the clean exposure is flagged where the other was hit. The
    rejection median is the clean value there."""
    models, truth = two_dithers
    reference = _masks(models)
    robust = _masks(models, detection="robust")
    false_reference = sum(int((m & ~t).sum()) for m, t in zip(reference, truth, strict=True))
    false_robust = sum(int((m & ~t).sum()) for m, t in zip(robust, truth, strict=True))
    found_reference = sum(int((m & t).sum()) for m, t in zip(reference, truth, strict=True))
    found_robust = sum(int((m & t).sum()) for m, t in zip(robust, truth, strict=True))
    assert false_reference > 40
    assert false_robust < false_reference / 4
    assert found_robust >= found_reference
