"""Tests of outlier_dask.kernels.weights: drizzle weight maps and the maskpt threshold."""

import warnings

import numpy as np
import pytest

from outlier_dask.kernels.dq import JWST_PIXEL_FLAGS
from outlier_dask.kernels.weights import (
    drizzle_weight_map,
    mask_low_weight,
    valid_weight_values,
    var_rnoise_usable,
    weight_threshold,
    weight_threshold_from_values,
)

NAN = np.nan
INF = np.inf

DQ = np.array([[0, 0, 0], [0, 0, 1]], dtype=np.uint32)  # (1, 2) is DO_NOT_USE


def test_ivm_weights_hand_computed():
    var = np.array([[4, 0, NAN], [INF, 0.5, 2]], dtype=np.float32)
    weights = drizzle_weight_map(DQ, var, weight_type="ivm", good_bits="~DO_NOT_USE")
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights, np.array([[0.25, 0, 0], [0, 2, 0]], dtype=np.float32))


def test_ivm_weights_good_bits_none_ignores_dq():
    var = np.full((2, 3), 0.5, dtype=np.float32)
    weights = drizzle_weight_map(DQ, var, weight_type="ivm", good_bits=None)
    np.testing.assert_array_equal(weights, np.full((2, 3), 2, dtype=np.float32))


@pytest.mark.parametrize("var", [None, np.ones((3, 2), dtype=np.float32)], ids=["none", "shape"])
def test_ivm_without_usable_variance_is_dq_mask(var):
    weights = drizzle_weight_map(DQ, var, weight_type="ivm", good_bits="~DO_NOT_USE")
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights, np.array([[1, 1, 1], [1, 1, 0]], dtype=np.float32))


def test_ivm_float64_variance_gives_float32():
    var = np.array([[3.0, 7.0]], dtype=np.float64)
    weights = drizzle_weight_map(np.zeros((1, 2), np.uint32), var, weight_type="ivm", good_bits=0)
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights, np.array([[1 / 3, 1 / 7]], dtype=np.float32))


@pytest.mark.parametrize(
    ("measurement_time", "exposure_time", "expected"),
    [(100.5, 200.0, 100.5), (None, 200.0, 200.0), (0.1, None, np.float32(0.1))],
)
def test_exptime_weights(measurement_time, exposure_time, expected):
    weights = drizzle_weight_map(
        DQ,
        None,
        weight_type="exptime",
        good_bits="~DO_NOT_USE",
        exposure_time=exposure_time,
        measurement_time=measurement_time,
    )
    assert weights.dtype == np.float32
    value = np.float32(expected)
    np.testing.assert_array_equal(
        weights, np.array([[value, value, value], [value, value, 0]], dtype=np.float32)
    )


def test_exptime_needs_a_time():
    with pytest.raises(ValueError, match="needs measurement_time or exposure_time"):
        drizzle_weight_map(DQ, None, weight_type="exptime", good_bits=None)


def test_unknown_weight_type():
    with pytest.raises(ValueError, match="weight_type must be one of .* got 'ivm-sky'"):
        drizzle_weight_map(DQ, None, weight_type="ivm-sky", good_bits=None)


@pytest.mark.parametrize(
    ("var_shape", "data_shape", "expected"),
    [
        ((2, 3), (2, 3), True),
        ((3, 2), (2, 3), False),
        (None, (2, 3), False),
        ([2, 3], (2, 3), True),
    ],
)
def test_var_rnoise_usable(var_shape, data_shape, expected):
    assert var_rnoise_usable(var_shape, data_shape) is expected


@pytest.mark.jwst
@pytest.mark.parametrize(
    ("weight_type", "good_bits", "with_var", "measurement_time"),
    [
        ("ivm", "~DO_NOT_USE", True, None),
        ("ivm", "4,8", True, None),
        ("ivm", 0, False, None),
        ("exptime", "~DO_NOT_USE", True, 33.3),
        ("exptime", None, True, None),
    ],
)
def test_weight_map_equals_stcal(weight_type, good_bits, with_var, measurement_time):
    resample_utils = pytest.importorskip("stcal.resample.utils")
    rng = np.random.default_rng(5)
    shape = (25, 30)
    var = rng.uniform(0, 3, size=shape).astype(np.float32)
    var[rng.random(shape) < 0.05] = 0
    var[rng.random(shape) < 0.05] = NAN
    var[rng.random(shape) < 0.05] = -1
    dq = rng.integers(0, 16, size=shape).astype(np.uint32)
    model = {
        "data": np.zeros(shape, np.float32),
        "dq": dq,
        "exposure_time": 51.7,
        "measurement_time": measurement_time,
    }
    if with_var:
        model["var_rnoise"] = var
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = resample_utils.build_driz_weight(
            model, weight_type=weight_type, good_bits=good_bits, flag_name_map=JWST_PIXEL_FLAGS
        )
    weights = drizzle_weight_map(
        dq,
        var if with_var else None,
        weight_type=weight_type,
        good_bits=good_bits,
        exposure_time=51.7,
        measurement_time=measurement_time,
    )
    assert weights.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(weights.view(np.uint32), expected.view(np.uint32))


def test_valid_weight_values_excludes_zero_nan_inf():
    weights = np.array([[0, 2, NAN], [INF, 3, -0.0]], dtype=np.float32)
    np.testing.assert_array_equal(valid_weight_values(weights), np.array([2, 3], np.float32))


@pytest.mark.parametrize("piece", [1, 7, 64, 1 << 16])
def test_valid_weight_values_in_order_whatever_the_piece(piece):
    rng = np.random.default_rng(piece)
    weights = rng.gamma(2, 1.0, (37, 53)).astype(np.float32)
    weights[rng.random(weights.shape) < 0.2] = 0
    weights[rng.random(weights.shape) < 0.1] = NAN
    weights[rng.random(weights.shape) < 0.05] = -INF
    expected = weights[np.isfinite(weights) & (weights != 0)]
    np.testing.assert_array_equal(valid_weight_values(weights, piece), expected)


def test_weight_threshold_clips_iteratively():
    # First iteration clips 1000, the second clips 60; mean of 1..10 is 5.5.
    values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 60, 1000]
    weights = np.zeros((4, 5), dtype=np.float32)
    weights.flat[: len(values)] = values
    weights[3, 2] = NAN
    weights[3, 3] = INF
    assert weight_threshold(weights, 0.7) == 5.5 * 0.7
    assert weight_threshold(weights, 1.0) == 5.5


def test_weight_threshold_without_clipping():
    weights = np.array([[0, 2, 4], [NAN, 6, 0]], dtype=np.float32)
    assert weight_threshold(weights, 0.5) == 2.0


@pytest.mark.parametrize(
    "weights",
    [np.zeros((3, 3), np.float32), np.full((2, 2), NAN, np.float32), np.array([], np.float32)],
    ids=["zeros", "nan", "empty"],
)
def test_weight_threshold_nan_without_valid_weights(weights):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(weight_threshold(weights, 0.7))


def test_threshold_from_row_bands_equals_whole_array():
    rng = np.random.default_rng(8)
    weights = rng.gamma(5, 2, size=(60, 70)).astype(np.float32)
    weights[rng.random(weights.shape) < 0.2] = 0
    weights[:5, :5] = 500  # outliers to clip
    bands = [valid_weight_values(weights[start : start + 13]) for start in range(0, 60, 13)]
    from_bands = weight_threshold_from_values(np.concatenate(bands), 0.7)
    assert from_bands == weight_threshold(weights, 0.7)


@pytest.mark.jwst
def test_weight_threshold_equals_stcal():
    od_utils = pytest.importorskip("stcal.outlier_detection.utils")
    rng = np.random.default_rng(9)
    for maskpt in (0.0, 0.5, 0.7, 1.0):
        weights = rng.normal(10, 2, size=(80, 90)).astype(np.float32)
        weights[rng.random(weights.shape) < 0.1] = 0
        weights[rng.random(weights.shape) < 0.05] = NAN
        weights[rng.random(weights.shape) < 0.01] = 1000
        assert weight_threshold(weights, maskpt) == od_utils.compute_weight_threshold(
            weights, maskpt
        )


def test_mask_low_weight_strict():
    data = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    weights = np.array([[0.5, 1.0, 1.5], [NAN, 0.0, 2.0]], dtype=np.float32)
    before = data.copy()
    masked = mask_low_weight(data, weights, 1.0)
    assert masked.dtype == np.float32
    np.testing.assert_array_equal(masked, np.array([[NAN, 2, 3], [4, NAN, 6]], np.float32))
    np.testing.assert_array_equal(data, before)


def test_mask_low_weight_nan_threshold_masks_nothing():
    data = np.array([[1, 2]], dtype=np.float32)
    masked = mask_low_weight(data, np.array([[0, 1]], np.float32), NAN)
    np.testing.assert_array_equal(masked, data)


def test_mask_low_weight_compares_in_float64():
    # float32(threshold) == 0.5 would keep the pixel; the float64 threshold masks it.
    data = np.array([[1.0]], dtype=np.float32)
    weights = np.array([[0.5]], dtype=np.float32)
    assert np.isnan(mask_low_weight(data, weights, 0.5 + 1e-12)[0, 0])
    assert mask_low_weight(data, weights, 0.5)[0, 0] == 1.0


def test_mask_low_weight_shape_mismatch():
    with pytest.raises(ValueError, match=r"shape mismatch: data \(1, 2\) vs weights \(2, 1\)"):
        mask_low_weight(np.zeros((1, 2)), np.zeros((2, 1)), 1.0)


@pytest.mark.parametrize("piece", [136, 1 << 16])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("size", [1, 2, 3, 10, 1001, 20_000])
def test_fast_float32_clipping_equals_astropy(seed, size, piece):
    """The float32 fast path keeps exactly the values astropy's sigma_clip keeps, whether its
    passes take the values in one piece or in many."""
    from astropy.stats import sigma_clip

    from outlier_dask.kernels.weights import _sigma_clipped_float32

    rng = np.random.default_rng(seed)
    values = {
        0: rng.gamma(5, 1e3, size),
        1: np.round(rng.normal(100, 10, size)),
        2: np.where(rng.random(size) < 0.1, 1e-3, rng.uniform(0.5, 1, size)),
        3: np.where(np.arange(size) % 7 == 0, 8.0, 7.0),
        4: rng.lognormal(0, 2, size),
        5: rng.uniform(0, 1, size),
    }[seed].astype(np.float32)
    before = values.copy()
    expected = sigma_clip(values, sigma=3, maxiters=5, masked=False, copy=True)
    np.testing.assert_array_equal(_sigma_clipped_float32(values, piece), expected)
    np.testing.assert_array_equal(values, before)


@pytest.mark.parametrize("piece", [136, 1024, 1 << 16])
@pytest.mark.parametrize("size", [1, 2, 7, 8, 9, 127, 128, 129, 4097, 100_003])
def test_std_of_finite_values_equals_numpy_nanstd(size, piece):
    """The clipping's spread is numpy's nanstd bit for bit, over pairwise-summation sizes and
    however many pieces its pass takes."""
    from outlier_dask.kernels.weights import _nanstd_of_finite

    for seed in range(8):
        rng = np.random.default_rng(seed)
        scale = (1e-3, 1.0, 1e3, 1e6)[seed % 4]
        values = (rng.gamma(2, 1e3, size) * scale).astype(np.float32)
        expected = np.nanstd(values)
        got = _nanstd_of_finite(values, piece)
        assert type(got) is type(expected)
        assert got == expected, (seed, got, expected)


@pytest.mark.parametrize("size", [129, 136, 1000, 65_537, 1_000_003])
def test_sum_by_pieces_equals_numpy_sum(size):
    """Following numpy's pairwise recursion down to pieces gives np.sum bit for bit."""
    from outlier_dask.kernels.weights import _pairwise_sum_by_pieces

    rng = np.random.default_rng(size)
    values = (rng.standard_normal(size) * 1e4 + 3e5).astype(np.float32)
    for piece in (128, 136, 4096, 1 << 16):
        assert _pairwise_sum_by_pieces(values, np.sum, piece) == np.sum(values), piece


@pytest.mark.parametrize("seed", range(4))
def test_sorted_ranks_equal_a_full_sort(seed):
    """Ranks placed one after another, in any order, read the fully sorted values."""
    from outlier_dask.kernels.weights import _SortedRanks

    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(0, 30, 5_001)).astype(np.float32)  # many ties
    ordered = np.sort(values)
    ranks = _SortedRanks(values)
    for rank in rng.integers(1, values.size, 40):
        assert ranks.value(int(rank)) == ordered[rank]
        assert ranks.value_below(int(rank)) == ordered[rank - 1]
    assert ranks.value(0) == ordered[0]
    assert ranks.value(values.size - 1) == ordered[-1]


def test_threshold_leaves_no_garbage_cycles():
    """The clipping's arrays are freed when it returns, not when the collector next runs (a
    worker's heap keeps its high-water mark: arrays held by a reference cycle grew it)."""
    import gc

    rng = np.random.default_rng(3)
    weights = rng.gamma(5, 1e3, (300, 700)).astype(np.float32)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        weight_threshold(weights, 0.7)
        assert gc.collect() == 0
    finally:
        if enabled:
            gc.enable()
