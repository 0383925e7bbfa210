"""Properties: flags do not depend on tiling, blocking, storage or the order of inputs; the
median ignores the order of its stack; empty (all-NaN, zero-weight) regions are harmless."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from outlier_dask import detect_outliers
from outlier_dask.kernels.dq import DO_NOT_USE, OUTLIER
from outlier_dask.kernels.flags import flag_resampled_outliers, flag_unresampled_outliers
from outlier_dask.kernels.median import nanmedian_stack
from outlier_dask.kernels.resample import blot_bilinear
from outlier_dask.kernels.weights import mask_low_weight, weight_threshold
from outlier_dask.synthetic import make_models

#: Settings of the end-to-end properties: each example is a whole run (about a second).
RUN_SETTINGS = settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SHAPE = (64, 80)


@functools.cache
def _models(n_exposures: int, n_detectors: int, seed: int) -> tuple:
    return tuple(
        make_models(
            n_exposures=n_exposures, n_detectors=n_detectors, detector_shape=SHAPE, seed=seed
        )[0]
    )


def _outliers(models, **values) -> dict[str, np.ndarray]:
    """Outlier mask per input name after a synchronous run on copies of ``models``."""
    result = detect_outliers([m.copy() for m in models], scheduler="synchronous", **values)
    return {m.meta.filename: (m.dq & OUTLIER) != 0 for m in result.outputs}


@functools.cache
def _baseline(n_exposures: int, n_detectors: int, seed: int) -> dict[str, np.ndarray]:
    return _outliers(_models(n_exposures, n_detectors, seed))


# --------------------------------------------------------------------------- kernels

_values = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
    st.just(float("nan")),
)


@settings(max_examples=200, deadline=None)
@given(
    stack=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 7), st.integers(1, 5), st.integers(1, 5)),
        elements=_values,
    ),
    data=st.data(),
)
def test_median_of_a_permuted_stack_is_unchanged(stack, data):
    order = data.draw(st.permutations(range(stack.shape[0])))
    median = nanmedian_stack(stack)
    np.testing.assert_array_equal(nanmedian_stack(stack[list(order)]), median)
    all_nan = np.isnan(stack).all(axis=0)
    assert np.isnan(median[all_nan]).all()
    assert np.isfinite(median[~all_nan]).all()


@settings(max_examples=50, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    fill=st.sampled_from([0.0, float("nan")]),
)
def test_zero_or_nan_weights_mask_nothing_and_give_no_threshold(shape, fill):
    weights = np.full(shape, fill, np.float32)
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    threshold = weight_threshold(weights, maskpt=0.7)
    assert np.isnan(threshold)
    np.testing.assert_array_equal(mask_low_weight(data, weights, threshold), data)


@settings(max_examples=50, deadline=None)
@given(
    sci=hnp.arrays(np.float32, st.tuples(st.integers(3, 8), st.integers(3, 8)), elements=_values)
)
def test_an_all_nan_reference_flags_nothing(sci):
    err = np.ones_like(sci)
    nan = np.full_like(sci, np.nan)
    flags = flag_resampled_outliers(sci, err, nan, snr=(5.0, 4.0), scale=(1.2, 0.7), backg=0.0)
    assert not flags.any()
    assert not flag_unresampled_outliers(sci, err, nan, snr1=5.0).any()


@settings(max_examples=30, deadline=None)
@given(shape=st.tuples(st.integers(2, 6), st.integers(2, 6)))
def test_blot_of_an_all_nan_median_is_nan(shape):
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    pixmap = np.stack([x + 0.25, y + 0.5], axis=-1)
    median = np.full((ny + 2, nx + 2), np.nan, np.float32)
    assert np.isnan(blot_bilinear(median, (0, 0), median.shape, pixmap)).all()


# --------------------------------------------------------------------------- whole runs


@RUN_SETTINGS
@given(
    tile_size=st.integers(8, 160),
    block_size=st.integers(5, 100),
    in_memory=st.booleans(),
)
def test_flags_do_not_depend_on_tiles_blocks_or_storage(tile_size, block_size, in_memory):
    models = _models(3, 1, 11)
    flags = _outliers(models, tile_size=tile_size, block_size=block_size, in_memory=in_memory)
    baseline = _baseline(3, 1, 11)
    assert flags.keys() == baseline.keys()
    for name, mask in flags.items():
        np.testing.assert_array_equal(mask, baseline[name], err_msg=name)


@RUN_SETTINGS
@given(data=st.data())
def test_flags_do_not_depend_on_the_order_of_inputs(data):
    """Members within a group, and groups, in any order (the first input, which orients the
    output grid, stays first). Drizzle adds a group's members in order, so only rounding may
    differ: at most a couple of pixels per input."""
    models = _models(3, 2, 12)
    groups: dict[str, list[int]] = {}
    for k, model in enumerate(models):
        groups.setdefault(model.meta.observation.exposure_number, []).append(k)
    first, *rest = groups.values()
    order = [first[0]] + data.draw(st.permutations(first[1:]))
    for group in data.draw(st.permutations(rest)):
        order += data.draw(st.permutations(group))
    flags = _outliers([models[k] for k in order])
    baseline = _baseline(3, 2, 12)
    for name, mask in flags.items():
        assert np.count_nonzero(mask != baseline[name]) <= 2, name


@RUN_SETTINGS
@given(
    rows=st.tuples(st.integers(0, SHAPE[0] - 1), st.integers(1, SHAPE[0])),
    cols=st.tuples(st.integers(0, SHAPE[1] - 1), st.integers(1, SHAPE[1])),
    block_size=st.sampled_from([8, 16, 1024]),
)
def test_all_nan_regions_are_never_flagged(rows, cols, block_size):
    (r0, r1), (c0, c1) = sorted(rows), sorted(cols)
    models = [m.copy() for m in _models(3, 1, 13)]
    hole = (slice(r0, max(r1, r0 + 1)), slice(c0, max(c1, c0 + 1)))
    models[1].data[hole] = np.nan
    models[1].dq[hole] |= DO_NOT_USE
    flags = _outliers(models, block_size=block_size, tile_size=32)
    assert not flags[models[1].meta.filename][hole].any()


@pytest.mark.parametrize("in_memory", [True, False])
def test_an_input_with_no_usable_pixel_changes_no_other_flag(in_memory):
    """A fully unusable input adds zero weight: the others' flags are as without it."""
    models = [m.copy() for m in _models(3, 1, 14)]
    # Another exposure on the footprint of the second (so the output grid stays the same).
    dead = models[1].copy()
    dead.meta.observation.exposure_number = "9"
    dead.meta.filename = "dead_cal.fits"
    dead.data[:] = np.nan
    dead.dq[:] |= DO_NOT_USE
    with_dead = _outliers([*models, dead], in_memory=in_memory)
    without = _outliers(models, in_memory=in_memory)
    assert not with_dead[dead.meta.filename].any()
    for name, mask in without.items():
        np.testing.assert_array_equal(with_dead[name], mask, err_msg=name)
