"""Tests of outlier_dask.kernels.flags: dilation, the two outlier rules and the block halo."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage

from outlier_dask.kernels.flags import (
    DILATION_HALO_PX,
    FLAG_HALO_PX,
    dilate_3x3,
    flag_halo_px,
    flag_resampled_outliers,
    flag_unresampled_outliers,
)

NAN = np.nan
DEFAULTS = {"snr": (5.0, 4.0), "scale": (1.2, 0.7), "backg": 0.0}


def _flat(shape=(5, 7), value=0.0):
    return np.full(shape, value, dtype=np.float32)


def _mask(shape, *pixels):
    mask = np.zeros(shape, dtype=bool)
    for pixel in pixels:
        mask[pixel] = True
    return mask


# --- dilation ---------------------------------------------------------------------------------


def test_dilate_middle_and_corner():
    mask = _mask((5, 6), (2, 3), (0, 0))
    expected = np.zeros((5, 6), dtype=bool)
    expected[1:4, 2:5] = True
    expected[0:2, 0:2] = True
    np.testing.assert_array_equal(dilate_3x3(mask), expected)


def test_dilate_does_not_modify_input():
    mask = _mask((3, 3), (1, 1))
    dilate_3x3(mask)
    np.testing.assert_array_equal(mask, _mask((3, 3), (1, 1)))


def test_dilate_rejects_3d():
    with pytest.raises(ValueError, match=r"mask must be 2-D \(ny, nx\), got shape \(1, 2, 2\)"):
        dilate_3x3(np.zeros((1, 2, 2), dtype=bool))


@settings(max_examples=200, deadline=None)
@given(mask=hnp.arrays(bool, st.tuples(st.integers(1, 9), st.integers(1, 9))))
def test_dilate_equals_scipy(mask):
    expected = ndimage.binary_dilation(mask, structure=np.ones((3, 3), dtype=bool))
    np.testing.assert_array_equal(dilate_3x3(mask), expected)
    # The reference's formulation: a bool convolution with mode="nearest".
    convolved = ndimage.convolve(mask, np.ones((3, 3), dtype=int), mode="nearest")
    np.testing.assert_array_equal(dilate_3x3(mask), convolved)


# --- rule without resampling (1.10) -----------------------------------------------------------


def test_unresampled_single_cr():
    sci = _flat(value=1.0)
    sci[2, 3] = 7.0
    err = _flat(value=1.0)
    median = _flat(value=1.0)
    result = flag_unresampled_outliers(sci, err, median, snr1=5.0)
    np.testing.assert_array_equal(result, _mask(sci.shape, (2, 3)))


def test_unresampled_strict_nan_and_err_nan():
    sci = np.array([[5.0, 5.1, NAN, 0.5, 3.0]], dtype=np.float32)
    median = np.array([[0.0, 0.0, 0.0, 0.0, NAN]], dtype=np.float32)
    err = np.array([[1.0, 1.0, 1.0, NAN, 1.0]], dtype=np.float32)
    result = flag_unresampled_outliers(sci, err, median, snr1=5.0)
    # 5 > 5 is False (strict); 5.1 > 5; NaN sci and NaN median never; err NaN -> 0: 0.5 > 0.
    np.testing.assert_array_equal(result, [[False, True, False, True, False]])


def test_unresampled_shape_mismatch():
    with pytest.raises(ValueError, match="shape mismatch"):
        flag_unresampled_outliers(_flat((2, 2)), _flat((2, 2)), _flat((2, 3)), snr1=5.0)


# --- resampled two-pass rule (1.9) ------------------------------------------------------------


def test_resampled_single_cr():
    sci = _flat(value=2.0)
    sci[2, 3] = 100.0
    blot = _flat(value=2.0)
    err = _flat(value=1.0)
    result = flag_resampled_outliers(sci, err, blot, **DEFAULTS)
    np.testing.assert_array_equal(result, _mask(sci.shape, (2, 3)))


def test_pass2_pixel_next_to_pass1_pixel_is_flagged():
    # blot = 0 (derivative 0), err = 1: pass 1 needs > 5, pass 2 needs > 4.
    sci = _flat()
    sci[2, 2] = 6.0  # pass 1 (and pass 2)
    sci[2, 3] = 4.5  # pass 2 only, adjacent to (2, 2)
    sci[3, 3] = 4.5  # pass 2 only, diagonal neighbour of (2, 2)
    sci[0, 6] = 4.5  # pass 2 only, far from any pass-1 pixel
    result = flag_resampled_outliers(sci, _flat(value=1.0), _flat(), **DEFAULTS)
    np.testing.assert_array_equal(result, _mask(sci.shape, (2, 2), (2, 3), (3, 3)))


def test_pass1_pixel_failing_stricter_pass2_is_not_flagged():
    sci = _flat()
    sci[2, 2] = 4.5  # > 4 (pass 1) but not > 5 (pass 2)
    sci[2, 3] = 6.0  # passes both
    params = {**DEFAULTS, "snr": (4.0, 5.0)}
    result = flag_resampled_outliers(sci, _flat(value=1.0), _flat(), **params)
    np.testing.assert_array_equal(result, _mask(sci.shape, (2, 3)))


def test_derivative_term_raises_threshold():
    rows = np.indices((5, 7))[0]
    blot = (10.0 * rows).astype(np.float32)  # derivative 10 everywhere
    sci = blot.copy()
    sci[2, 3] += 8.0
    err = _flat(value=1.0)
    # 8 < 1.2 * 10 + 5 -> not flagged with the default scales ...
    assert not flag_resampled_outliers(sci, err, blot, **DEFAULTS).any()
    # ... but 8 > 0 * 10 + 5 and 8 > 0 * 10 + 4 without the derivative term.
    result = flag_resampled_outliers(sci, err, blot, **{**DEFAULTS, "scale": (0.0, 0.0)})
    np.testing.assert_array_equal(result, _mask(sci.shape, (2, 3)))


def test_background_is_subtracted_from_the_difference():
    sci = _flat(value=10.0)
    blot = _flat()
    err = _flat(value=1.0)
    assert not flag_resampled_outliers(sci, err, blot, **{**DEFAULTS, "backg": 10.0}).any()
    assert flag_resampled_outliers(sci, err, blot, **DEFAULTS).all()
    # |sci - blot - backg| is an absolute value: over-subtraction flags too.
    assert flag_resampled_outliers(sci, err, blot, **{**DEFAULTS, "backg": 20.0}).all()


def test_err_nan_is_zero():
    sci = _flat()
    sci[2, 3] = 0.5
    err = _flat(value=1.0)
    assert not flag_resampled_outliers(sci, err, _flat(), **DEFAULTS).any()
    err[1:4, 2:5] = NAN  # the CR and its neighbours have no error: 0.5 > 0
    result = flag_resampled_outliers(sci, err, _flat(), **DEFAULTS)
    np.testing.assert_array_equal(result, _mask(sci.shape, (2, 3)))


def test_nan_sci_or_blot_never_flagged():
    sci = _flat()
    sci[2, 2] = 100.0
    sci[2, 3] = NAN  # NaN next to a CR: the dilation must not flag it
    blot = _flat()
    blot[2, 1] = NAN  # NaN blot next to the CR
    sci[2, 1] = 100.0
    result = flag_resampled_outliers(sci, _flat(value=1.0), blot, **DEFAULTS)
    np.testing.assert_array_equal(result, _mask(sci.shape, (2, 2)))


def test_resampled_returns_bool_and_keeps_inputs():
    sci = _flat()
    sci[1, 1] = 9.0
    err = _flat(value=1.0)
    blot = _flat()
    copies = [a.copy() for a in (sci, err, blot)]
    result = flag_resampled_outliers(sci, err, blot, **DEFAULTS)
    assert result.dtype == bool
    for original, given_array in zip(copies, (sci, err, blot), strict=True):
        np.testing.assert_array_equal(given_array, original)


def test_resampled_shape_mismatch():
    with pytest.raises(ValueError, match="shape mismatch"):
        flag_resampled_outliers(_flat((2, 2)), _flat((2, 3)), _flat((2, 2)), **DEFAULTS)


# --- halo -------------------------------------------------------------------------------------


def test_halo_values():
    assert DILATION_HALO_PX == 1
    assert FLAG_HALO_PX == 2
    assert flag_halo_px(resample_data=True) == 2
    assert flag_halo_px(resample_data=False) == 0


def _random_inputs(shape, seed):
    rng = np.random.default_rng(seed)
    blot = rng.normal(0, 1, size=shape).astype(np.float32)
    sci = blot + rng.normal(0, 1, size=shape).astype(np.float32)
    sci[rng.random(shape) < 0.05] += 40
    sci[rng.random(shape) < 0.02] = NAN
    blot[rng.random(shape) < 0.02] = NAN
    err = np.abs(rng.normal(1, 0.3, size=shape)).astype(np.float32)
    err[rng.random(shape) < 0.02] = NAN
    return sci, err, blot


def _blocked(sci, err, blot, block, halo):
    """Flags computed block by block, each block padded by ``halo`` inside the image."""
    ny, nx = sci.shape
    out = np.zeros(sci.shape, dtype=bool)
    for y0 in range(0, ny, block[0]):
        for x0 in range(0, nx, block[1]):
            y1, x1 = min(y0 + block[0], ny), min(x0 + block[1], nx)
            ys, xs = max(y0 - halo, 0), max(x0 - halo, 0)
            ye, xe = min(y1 + halo, ny), min(x1 + halo, nx)
            window = (slice(ys, ye), slice(xs, xe))
            flags = flag_resampled_outliers(sci[window], err[window], blot[window], **DEFAULTS)
            out[y0:y1, x0:x1] = flags[y0 - ys : y1 - ys, x0 - xs : x1 - xs]
    return out


@pytest.mark.parametrize("block", [(1, 1), (2, 3), (5, 7), (11, 4)])
def test_blocks_with_flag_halo_equal_whole_array(block):
    sci, err, blot = _random_inputs((23, 29), seed=block[0] * 10 + block[1])
    whole = flag_resampled_outliers(sci, err, blot, **DEFAULTS)
    assert whole.any()
    np.testing.assert_array_equal(_blocked(sci, err, blot, block, FLAG_HALO_PX), whole)


def test_halo_of_one_pixel_is_not_enough():
    # Blocks of 4 columns; p = column 3 (last of block 0), q = column 4 (its neighbour in the
    # next block), column 5 holds a blot step that makes the derivative at q large.
    sci = _flat((3, 8))
    blot = _flat((3, 8))
    sci[:, 5] = blot[:, 5] = 100.0
    sci[:, 4] = 10.0  # q: 10 < 1.2 * 100 + 5, not a pass-1 pixel ... unless column 5 is unseen
    sci[:, 3] = 4.5  # p: a pass-2-only pixel, flagged iff a neighbour passes pass 1
    err = _flat((3, 8), value=1.0)
    whole = flag_resampled_outliers(sci, err, blot, **DEFAULTS)
    assert not whole.any()
    np.testing.assert_array_equal(_blocked(sci, err, blot, (3, 4), FLAG_HALO_PX), whole)
    # With a 1-pixel halo the block of p sees q but not column 5, so p is wrongly flagged.
    wrong = _blocked(sci, err, blot, (3, 4), 1)
    expected_wrong = np.zeros((3, 8), dtype=bool)
    expected_wrong[:, 3] = True
    np.testing.assert_array_equal(wrong, expected_wrong)


# --- parity with stcal ------------------------------------------------------------------------


@pytest.mark.jwst
@pytest.mark.parametrize(
    ("snr", "scale", "backg"),
    [((5.0, 4.0), (1.2, 0.7), 0.0), ((3.0, 4.0), (0.5, 1.5), 0.37), ((4.0, 4.0), (0.0, 0.0), -1)],
)
def test_resampled_equals_stcal(snr, scale, backg):
    od_utils = pytest.importorskip("stcal.outlier_detection.utils")
    sci, err, blot = _random_inputs((50, 60), seed=int(snr[0] * 10))
    expected = od_utils.flag_resampled_crs(sci, err, blot, *snr, *scale, backg)
    result = flag_resampled_outliers(sci, err, blot, snr=snr, scale=scale, backg=backg)
    assert expected.any()
    np.testing.assert_array_equal(result, expected)


@pytest.mark.jwst
@pytest.mark.parametrize("snr1", [1.0, 5.0])
def test_unresampled_equals_stcal(snr1):
    od_utils = pytest.importorskip("stcal.outlier_detection.utils")
    sci, err, median = _random_inputs((50, 60), seed=3)
    expected = od_utils.flag_crs(sci, err, median, snr1)
    result = flag_unresampled_outliers(sci, err, median, snr1=snr1)
    assert expected.any()
    np.testing.assert_array_equal(result, expected)


def test_source_fraction_adds_a_tolerance_proportional_to_the_source():
    blot = _flat()
    blot[2, 3] = 100.0  # a bright star core in the median
    sci = blot.copy()
    sci[2, 3] += 40.0  # 40 above the blot: far above 5 err, below 0.5 * 100 + 5
    sci[0, 0] += 10.0  # on the sky: the tolerance is 0 there
    err = _flat(value=1.0)
    params = {**DEFAULTS, "scale": (0.0, 0.0)}
    np.testing.assert_array_equal(
        flag_resampled_outliers(sci, err, blot, **params), _mask(sci.shape, (0, 0), (2, 3))
    )
    np.testing.assert_array_equal(
        flag_resampled_outliers(sci, err, blot, **params, source_fraction=0.5),
        _mask(sci.shape, (0, 0)),
    )
    # 0.3 * 100 + 5 = 35 < 40: flagged again
    np.testing.assert_array_equal(
        flag_resampled_outliers(sci, err, blot, **params, source_fraction=0.3),
        _mask(sci.shape, (0, 0), (2, 3)),
    )


def test_source_fraction_counts_the_source_above_the_background():
    blot = _flat(value=10.0)
    sci = blot + np.float32(8.0)
    err = _flat(value=1.0)
    # with backg = 10 the blot holds no source: no tolerance, and |8 - 10| = 2 < 5
    params = {**DEFAULTS, "scale": (0.0, 0.0), "source_fraction": 1.0}
    assert not flag_resampled_outliers(sci, err, blot, **{**params, "backg": 10.0}).any()
    # with backg = 0 all 10 count as source: 8 < 1.0 * 10 + 5
    assert not flag_resampled_outliers(sci, err, blot, **{**params, "backg": 0.0}).any()
    # and without the tolerance 8 > 5 everywhere
    assert flag_resampled_outliers(sci, err, blot, **{**DEFAULTS, "scale": (0.0, 0.0)}).all()


def test_source_fraction_zero_is_the_reference_rule_bit_for_bit():
    rng = np.random.default_rng(4)
    blot = rng.normal(10.0, 3.0, (20, 24)).astype(np.float32)
    sci = blot + rng.normal(0.0, 1.0, blot.shape).astype(np.float32)
    sci[rng.random(sci.shape) < 0.05] += 30.0
    err = np.ones_like(sci)
    np.testing.assert_array_equal(
        flag_resampled_outliers(sci, err, blot, **DEFAULTS, source_fraction=0.0),
        flag_resampled_outliers(sci, err, blot, **DEFAULTS),
    )
