"""Tests of outlier_dask.kernels.combine: the median with the highest value rejected."""

import numpy as np
import pytest

from outlier_dask.kernels.combine import count_finite, nanmedian_reject_highest
from outlier_dask.kernels.median import nanmedian_stack

NAN = np.nan


def _stack(*pixels):
    """A (n, 1, len(pixels)) float32 stack, one column per pixel's values."""
    return np.array(pixels, dtype=np.float32).T[:, None, :]


def test_count_finite():
    stack = _stack([1, NAN, 3], [NAN, NAN, NAN], [0, 0, 0])
    np.testing.assert_array_equal(count_finite(stack), [[2, 0, 3]])
    assert count_finite(stack).dtype == np.int16


def test_two_values_give_the_lower_one():
    # a cosmic ray in one of two groups: the median (their mean) is lifted, the rule is not
    stack = _stack([1.0, 101.0], [101.0, 1.0], [2.0, 2.0], [NAN, 5.0])
    np.testing.assert_array_equal(nanmedian_stack(stack), [[51.0, 51.0, 2.0, 5.0]])
    np.testing.assert_array_equal(nanmedian_reject_highest(stack, 2), [[1.0, 1.0, 2.0, 5.0]])


def test_rejection_stops_above_max_groups():
    stack = _stack([1, 2, 90, NAN], [1, 2, 90, 4], [1, 9, NAN, NAN], [NAN, NAN, NAN, NAN])
    # max_groups=2: three and four values keep the plain median
    np.testing.assert_array_equal(nanmedian_reject_highest(stack, 2), [[2.0, 3.0, 1.0, NAN]])
    # max_groups=3: three values -> median of the lower two; four still plain
    np.testing.assert_array_equal(nanmedian_reject_highest(stack, 3), [[1.5, 3.0, 1.0, NAN]])
    # max_groups=4: four values -> median of {1, 2, 4}
    np.testing.assert_array_equal(nanmedian_reject_highest(stack, 4), [[1.5, 2.0, 1.0, NAN]])


@pytest.mark.parametrize("max_groups", [0, 1])
def test_no_rejection_below_two_groups_is_the_plain_median(max_groups):
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(4, 6, 7)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.4] = NAN
    np.testing.assert_array_equal(
        nanmedian_reject_highest(stack, max_groups), nanmedian_stack(stack)
    )


def test_equals_sorted_rejection_on_random_stacks_and_keeps_input():
    rng = np.random.default_rng(2)
    stack = rng.normal(size=(5, 8, 9)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.5] = NAN
    before = stack.copy()
    result = nanmedian_reject_highest(stack, 3)
    np.testing.assert_array_equal(stack, before)
    assert result.dtype == np.float32
    for y in range(8):
        for x in range(9):
            values = np.sort(stack[:, y, x][~np.isnan(stack[:, y, x])])
            if 2 <= values.size <= 3:
                values = values[:-1]
            want = np.median(values) if values.size else NAN
            np.testing.assert_array_equal(result[y, x], np.float32(want))


def test_no_planes_give_nan():
    """A tile no group covers has a block of no planes; its median is NaN, as for all-NaN."""
    median = nanmedian_reject_highest(np.empty((0, 2, 3), dtype=np.float32), max_groups=3)
    assert median.shape == (2, 3)
    assert median.dtype == np.float32
    assert np.isnan(median).all()
