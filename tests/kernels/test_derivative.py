"""Tests of outlier_dask.kernels.derivative.abs_derivative."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from outlier_dask.kernels.derivative import DERIVATIVE_HALO_PX, abs_derivative

NAN = np.nan


def test_single_spike_gives_a_cross():
    blot = np.zeros((5, 5), dtype=np.float32)
    blot[2, 2] = 3
    expected = np.zeros((5, 5), dtype=np.float32)
    expected[2, 2] = 3
    expected[1, 2] = expected[3, 2] = expected[2, 1] = expected[2, 3] = 3
    result = abs_derivative(blot)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, expected)


def test_linear_ramp_gives_row_stride():
    rows, cols = np.indices((4, 6))
    blot = (7 * rows + cols).astype(np.float32)
    np.testing.assert_array_equal(abs_derivative(blot), np.full((4, 6), 7, dtype=np.float32))


def test_nan_pixels_and_neighbours():
    blot = np.array(
        [
            [1, NAN, 4],
            [2, 10, NAN],
            [NAN, NAN, NAN],
        ],
        dtype=np.float32,
    )
    # (0,0): only the pixel below counts; (0,2): no finite neighbour -> 0;
    # (1,0): max(|2-1|, |2-10|); (1,1): only the pixel to the left counts.
    expected = np.array(
        [
            [1, NAN, 0],
            [8, 8, NAN],
            [NAN, NAN, NAN],
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(abs_derivative(blot), expected)


def test_isolated_pixel_and_tiny_shapes():
    np.testing.assert_array_equal(abs_derivative(np.array([[5.0]], np.float32)), [[0.0]])
    np.testing.assert_array_equal(
        abs_derivative(np.array([[1, 4, 2]], np.float32)), np.array([[3, 3, 2]], np.float32)
    )
    np.testing.assert_array_equal(
        abs_derivative(np.array([[1], [4], [2]], np.float32)),
        np.array([[3], [3], [2]], np.float32),
    )


def test_infinite_values_follow_the_formula():
    # Infinite neighbours are ignored; an infinite pixel with a finite neighbour gets inf.
    blot = np.array([[0, np.inf, 5], [1, 2, 3]], dtype=np.float32)
    expected = np.array([[1, np.inf, 2], [1, 1, 2]], dtype=np.float32)
    np.testing.assert_array_equal(abs_derivative(blot), expected)


def test_float64_kept():
    blot = np.array([[0.1, 0.3]], dtype=np.float64)
    result = abs_derivative(blot)
    assert result.dtype == np.float64
    assert result[0, 0] == abs(0.1 - 0.3)


def test_halo_of_one_pixel_is_exact():
    assert DERIVATIVE_HALO_PX == 1
    rng = np.random.default_rng(2)
    blot = rng.normal(size=(20, 24)).astype(np.float32)
    blot[rng.random(blot.shape) < 0.2] = NAN
    whole = abs_derivative(blot)
    halo = DERIVATIVE_HALO_PX
    for y0, y1, x0, x1 in [(0, 7, 0, 9), (7, 14, 9, 18), (14, 20, 18, 24), (3, 4, 5, 6)]:
        ys, xs = max(y0 - halo, 0), max(x0 - halo, 0)
        block = abs_derivative(blot[ys : y1 + halo, xs : x1 + halo])
        inner = block[y0 - ys : y0 - ys + (y1 - y0), x0 - xs : x0 - xs + (x1 - x0)]
        np.testing.assert_array_equal(inner, whole[y0:y1, x0:x1])


def _stcal_abs_deriv():
    return pytest.importorskip("stcal.outlier_detection.utils")._abs_deriv


@pytest.mark.jwst
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (31, 47)])
def test_equals_stcal(shape):
    reference = _stcal_abs_deriv()
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    blot = (rng.normal(size=shape) * 100).astype(np.float32)
    blot[rng.random(shape) < 0.25] = NAN
    expected = reference(blot)
    np.testing.assert_array_equal(abs_derivative(blot).view(np.uint32), expected.view(np.uint32))


@pytest.mark.jwst
@settings(max_examples=200, deadline=None)
@given(
    blot=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.integers(1, 6)),
        elements=st.floats(-(2.0**120), 2.0**120, width=32) | st.just(np.float32(NAN)),
    )
)
def test_equals_stcal_property(blot):
    # Finite or NaN values whose differences do not overflow (with +-inf, stcal is
    # asymmetric; see the abs_derivative Notes).
    reference = _stcal_abs_deriv()
    result = abs_derivative(blot)
    expected = reference(blot)
    same = (result.view(np.uint32) == expected.view(np.uint32)) | (
        np.isnan(result) & np.isnan(expected)
    )
    assert same.all()
