"""Tests of outlier_dask.kernels.median.nanmedian_stack."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from outlier_dask.kernels.median import nanmedian_stack, planes_with_values

NAN = np.nan


def _bits_equal(a, b):
    """Bitwise equality, NaN payloads aside."""
    assert a.dtype == b.dtype
    assert a.shape == b.shape
    both_nan = np.isnan(a) & np.isnan(b)
    uint = np.dtype(f"u{a.dtype.itemsize}")
    differ = (a.view(uint) != b.view(uint)) & ~both_nan
    return not differ.any()


def _numpy_median(stack):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(stack, axis=0)


def test_hand_computed():
    stack = np.array(
        [
            [[3, 1, NAN], [5, NAN, 0]],
            [[2, 4, NAN], [7, NAN, -1]],
            [[NAN, 9, NAN], [6, NAN, 1]],
        ],
        dtype=np.float32,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        median = nanmedian_stack(stack)
    assert median.dtype == np.float32
    # {3, 2, NaN} -> 2.5; {1, 4, 9} -> 4; all NaN -> NaN; {5, 7, 6} -> 6; {0, -1, 1} -> 0
    np.testing.assert_array_equal(median, np.array([[2.5, 4, NAN], [6, NAN, 0]], dtype=np.float32))


def test_even_count_mean_of_middle_values_float32():
    # Middle values 1 and 1 + 3 * 2**-23: their float32 sum 2 + 3 * 2**-23 rounds (tie, to
    # even) to 2 + 2**-21, so the float32 mean is 1 + 2**-22, not the exact 1 + 1.5 * 2**-23.
    high = 1 + 3 * 2**-23
    stack = np.array([1, high, 0.5, 7], dtype=np.float32).reshape(4, 1, 1)
    assert nanmedian_stack(stack)[0, 0] == np.float32(1 + 2**-22)


def test_single_frame_is_returned():
    frame = np.array([[1.5, NAN], [-2, 0]], dtype=np.float32)
    median = nanmedian_stack(frame[None])
    np.testing.assert_array_equal(median, frame)
    assert median is not frame


def test_empty_stack_gives_nan():
    median = nanmedian_stack(np.empty((0, 2, 3), dtype=np.float32))
    assert median.shape == (2, 3)
    assert median.dtype == np.float32
    assert np.isnan(median).all()


def test_input_not_modified():
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(5, 6, 7)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.3] = NAN
    before = stack.copy()
    nanmedian_stack(stack)
    np.testing.assert_array_equal(stack, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 13])
def test_equals_numpy_on_random_data(n, dtype):
    rng = np.random.default_rng(n)
    stack = (rng.normal(size=(n, 40, 50)) * 1000).astype(dtype)
    stack[rng.random(stack.shape) < 0.3] = NAN
    stack[:, 0, 0] = NAN
    median = nanmedian_stack(stack)
    assert median.dtype == dtype
    assert _bits_equal(median, _numpy_median(stack))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 9])
def test_equals_numpy_on_edge_values(n):
    # Signed zeros, subnormals, values beyond max/2 and infinities: the cases where bottleneck
    # alone differs from numpy.
    values = np.array(
        [-0.0, 0.0, 1.0, -1.0, NAN, np.inf, -np.inf, 1e-45, -1e-45, 3e38, -3e38],
        dtype=np.float32,
    )
    rng = np.random.default_rng(100 + n)
    stack = values[rng.integers(0, len(values), size=(n, 60, 60))]
    assert _bits_equal(nanmedian_stack(stack), _numpy_median(stack))


def test_single_frame_follows_numpy_quirks():
    # numpy computes (x + x) / 2 for an odd count: -0.0 -> +0.0, 3e38 -> inf.
    stack = np.array([[[-0.0, 3e38, 1e-45]]], dtype=np.float32)
    median = nanmedian_stack(stack)
    assert not np.signbit(median[0, 0])
    assert median[0, 1] == np.inf
    assert median[0, 2] == np.float32(1e-45)


@pytest.mark.parametrize("dtype", [">f4", np.float16])
def test_non_native_dtypes_fall_back_to_numpy(dtype):
    rng = np.random.default_rng(4)
    stack = rng.normal(size=(4, 5, 6)).astype(dtype)
    stack[rng.random(stack.shape) < 0.3] = NAN
    median = nanmedian_stack(stack)
    assert median.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(median, _numpy_median(stack))


def test_rejects_wrong_ndim():
    with pytest.raises(ValueError, match=r"stack must be 3-D \(n, ny, nx\), got shape \(3, 4\)"):
        nanmedian_stack(np.zeros((3, 4), np.float32))


def test_rejects_integer_dtype():
    with pytest.raises(TypeError, match="floating-point dtype, got int32"):
        nanmedian_stack(np.zeros((3, 4, 5), np.int32))


@pytest.mark.jwst
def test_equals_stcal_nanmedian3d():
    median_module = pytest.importorskip("stcal.outlier_detection.median")
    rng = np.random.default_rng(21)
    stack = rng.normal(size=(7, 64, 48)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.25] = NAN
    stack[:, 3, :] = NAN
    stack[:4, 5, 5] = 0.0
    stack[4:, 5, 5] = -0.0
    expected = median_module.nanmedian3D(stack.copy())
    assert _bits_equal(nanmedian_stack(stack), expected)


float32_stacks = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 7), st.integers(1, 4), st.integers(1, 4)),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
)


@settings(max_examples=200, deadline=None)
@given(stack=float32_stacks, data=st.data())
def test_permutation_invariant(stack, data):
    order = data.draw(st.permutations(range(stack.shape[0])))
    assert _bits_equal(nanmedian_stack(stack), nanmedian_stack(stack[list(order)]))


@settings(max_examples=300, deadline=None)
@given(stack=float32_stacks)
def test_equals_numpy_property(stack):
    assert _bits_equal(nanmedian_stack(stack), _numpy_median(stack))


@pytest.mark.parametrize("n", [16, 33, 64, 128, 129, 300])
def test_equals_numpy_for_many_frames(n):
    """Large odd and even stacks, with all-NaN pixels and pixels with a few values left."""
    rng = np.random.default_rng(n)
    shape = (n, 37, 211) if n <= 64 else (n, 9, 130)
    stack = rng.normal(size=shape).astype(np.float32)
    stack[rng.random(stack.shape) < 0.4] = NAN
    stack[:, 0, :5] = NAN
    stack[1:, 1, :4] = NAN  # one value left
    stack[2:, 2, :4] = NAN  # two values left
    assert _bits_equal(nanmedian_stack(stack), _numpy_median(stack))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [2, 3, 6, 7])
def test_equals_numpy_for_odd_and_even_counts_of_values(n, dtype):
    """Every count of non-NaN values from 0 to n, each in its own column."""
    rng = np.random.default_rng(40 + n)
    stack = rng.normal(size=(n, 5, n + 1)).astype(dtype)
    for count in range(n + 1):
        stack[count:, :, count] = NAN
    median = nanmedian_stack(stack)
    assert np.isnan(median[:, 0]).all()
    assert _bits_equal(median, _numpy_median(stack))


def test_all_nan_stack_gives_nan_without_a_warning():
    stack = np.full((4, 3, 5), NAN, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        median = nanmedian_stack(stack)
    assert median.dtype == np.float32
    assert np.isnan(median).all()


def test_non_contiguous_stack():
    rng = np.random.default_rng(9)
    stack = rng.normal(size=(6, 20, 30)).astype(np.float32)[:, ::2, ::3]
    stack[rng.random(stack.shape) < 0.3] = NAN
    assert not stack.flags.c_contiguous
    assert _bits_equal(nanmedian_stack(stack), _numpy_median(stack))


def test_planes_without_values_are_left_out_and_change_nothing():
    """Most planes NaN throughout (groups missing the tile), one holding a single value off
    the sampled pixels: the median equals numpy's, computed on the planes with values."""
    rng = np.random.default_rng(7)
    stack = np.full((40, 70, 90), np.nan, dtype=np.float32)
    stack[[3, 17, 29]] = rng.normal(size=(3, 70, 90)).astype(np.float32)
    stack[[3, 17, 29], 5:9] = np.nan  # some pixels covered by fewer planes
    stack[33, 37, 41] = 100.0  # not on the sample grid of every 16th row and column
    stack[17, 0, 0] = -0.0
    kept = planes_with_values(stack)
    np.testing.assert_array_equal(kept, stack[[3, 17, 29, 33]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(stack, axis=0)
    got = nanmedian_stack(stack)
    np.testing.assert_array_equal(got, expected)
    assert np.signbit(got[0, 0]) == np.signbit(expected[0, 0])


def test_planes_with_values_are_the_stack_itself_when_all_have_one():
    stack = np.random.default_rng(8).normal(size=(5, 33, 40)).astype(np.float32)
    stack[2, 1:, :] = np.nan  # one value left in the plane, on the sample grid
    assert planes_with_values(stack) is stack
    empty = np.full((6, 20, 20), np.nan, dtype=np.float32)
    assert planes_with_values(empty).shape == (1, 20, 20)
    assert np.isnan(nanmedian_stack(empty)).all()
