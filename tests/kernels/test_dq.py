"""Tests of outlier_dask.kernels.dq: good_bits masks, outlier flags, NaN/DO_NOT_USE agreement."""

import numpy as np
import pytest
from astropy.nddata.bitmask import bitfield_to_boolean_mask

from outlier_dask.kernels.dq import (
    DO_NOT_USE,
    JWST_PIXEL_FLAGS,
    OUTLIER,
    OUTLIER_DQ_BITS,
    flag_outliers_in_dq,
    good_pixel_mask,
    interpret_good_bits,
    match_nans_and_flags,
)

NAN = np.nan

# DQ values covering DO_NOT_USE (1), SATURATED (2), JUMP_DET (4), DROPOUT (8), OUTLIER (16)
# and REFERENCE_PIXEL (2**31).
DQ = np.array(
    [
        [0, 1, 2, 3],
        [4, 5, 8, 12],
        [16, 17, 2**31, 2**31 + 1],
    ],
    dtype=np.uint32,
)


def test_constants():
    assert DO_NOT_USE == 1
    assert OUTLIER == 16
    assert OUTLIER_DQ_BITS == 17
    assert JWST_PIXEL_FLAGS["DO_NOT_USE"] == 1
    assert JWST_PIXEL_FLAGS["JUMP_DET"] == 4
    assert JWST_PIXEL_FLAGS["OUTLIER"] == 16
    assert JWST_PIXEL_FLAGS["REFERENCE_PIXEL"] == 2**31


@pytest.mark.parametrize(
    ("good_bits", "expected"),
    [
        pytest.param(None, [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]], id="None-all-good"),
        pytest.param("None", [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]], id="str-None"),
        pytest.param(0, [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], id="0-any-bit-bad"),
        pytest.param("~DO_NOT_USE", [[1, 0, 1, 0], [1, 0, 1, 1], [1, 0, 1, 0]], id="step-default"),
        pytest.param("~1", [[1, 0, 1, 0], [1, 0, 1, 1], [1, 0, 1, 0]], id="~1"),
        pytest.param("4,8", [[1, 0, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0]], id="4,8"),
        pytest.param("4+8", [[1, 0, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0]], id="4+8"),
        pytest.param(12, [[1, 0, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0]], id="int-12"),
        pytest.param(
            "JUMP_DET+DROPOUT", [[1, 0, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0]], id="mnemonics"
        ),
        pytest.param(
            "JUMP_DET, DROPOUT", [[1, 0, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0]], id="mnemonics-comma"
        ),
        pytest.param([4, 8], [[1, 0, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0]], id="list"),
        pytest.param("~4,8", [[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], id="~4,8-only-bad"),
        pytest.param("~REFERENCE_PIXEL", [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], id="~bit31"),
        pytest.param(
            "DO_NOT_USE,OUTLIER", [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]], id="17-ignored"
        ),
    ],
)
def test_good_pixel_mask_cases(good_bits, expected):
    mask = good_pixel_mask(DQ, good_bits)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, np.array(expected, dtype=bool))


@pytest.mark.parametrize(
    ("good_bits", "expected"),
    [("~DO_NOT_USE", -2), ("4,8", 12), ("JUMP_DET+DROPOUT", 12), (None, None), (0, 0)],
)
def test_interpret_good_bits(good_bits, expected):
    assert interpret_good_bits(good_bits) == expected


@pytest.mark.parametrize("good_bits", ["NOT_A_FLAG", "~", 3.5, "4,,8"])
def test_bad_good_bits_raise(good_bits):
    with pytest.raises(ValueError, match="good_bits: cannot interpret"):
        good_pixel_mask(DQ, good_bits)


def test_good_pixel_mask_rejects_float_dq():
    with pytest.raises(TypeError, match="dq must be an integer array"):
        good_pixel_mask(DQ.astype(np.float32), "~DO_NOT_USE")


@pytest.mark.parametrize("good_bits", [None, 0, "~DO_NOT_USE", "4,8", "~JUMP_DET+SATURATED", 7])
def test_good_pixel_mask_equals_astropy(good_bits):
    rng = np.random.default_rng(3)
    dq = rng.integers(0, 2**32, size=(40, 50), dtype=np.uint32) & rng.integers(
        0, 2**32, size=(40, 50), dtype=np.uint32
    )
    expected = bitfield_to_boolean_mask(
        dq, good_bits, good_mask_value=1, dtype=np.uint8, flag_name_map=JWST_PIXEL_FLAGS
    )
    np.testing.assert_array_equal(good_pixel_mask(dq, good_bits), expected.astype(bool))


def test_flag_outliers_in_dq():
    dq = np.array([[0, 4], [1, 16]], dtype=np.uint32)
    before = dq.copy()
    outliers = np.array([[True, False], [True, True]])
    result = flag_outliers_in_dq(dq, outliers)
    np.testing.assert_array_equal(result, np.array([[17, 4], [17, 17]], dtype=np.uint32))
    assert result.dtype == np.uint32
    np.testing.assert_array_equal(dq, before)  # input untouched


def test_flag_outliers_in_dq_shape_mismatch():
    with pytest.raises(ValueError, match=r"shape mismatch: dq \(2, 2\) vs outliers \(2, 3\)"):
        flag_outliers_in_dq(np.zeros((2, 2), np.uint32), np.zeros((2, 3), bool))


def _model_arrays():
    """3x3 arrays: one invalid pixel per source, row 2 fully valid."""
    data = np.array([[NAN, 1, 2], [3, 4, 5], [6, 7, 8]], dtype=np.float32)
    err = np.array([[1, NAN, 1], [1, 1, 1], [1, 1, 1]], dtype=np.float32)
    var_rnoise = np.array([[1, 1, 1], [NAN, 1, 1], [1, 1, 1]], dtype=np.float32)
    var_poisson = np.array([[1, 1, NAN], [1, 1, 1], [1, 1, 1]], dtype=np.float32)
    # (1, 1): DO_NOT_USE with finite values everywhere; (1, 2): other bits only.
    dq = np.array([[0, 4, 0], [0, 1, 2], [0, 0, 16]], dtype=np.uint32)
    return data, err, dq, {"var_rnoise": var_rnoise, "var_poisson": var_poisson}


INVALID = np.array([[1, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=bool)


def _check_normalised(data, err, dq, variances):
    for array in (data, err, *variances.values()):
        np.testing.assert_array_equal(np.isnan(array), INVALID)
    np.testing.assert_array_equal(dq, np.array([[1, 5, 1], [1, 1, 2], [0, 0, 16]], dtype=np.uint32))
    assert data[2, 1] == 7
    assert data[1, 2] == 5


def test_match_nans_and_flags_copy():
    data, err, dq, variances = _model_arrays()
    originals = [a.copy() for a in (data, err, dq, *variances.values())]
    new_data, new_err, new_dq, new_vars = match_nans_and_flags(data, err, dq, variances)
    _check_normalised(new_data, new_err, new_dq, new_vars)
    assert list(new_vars) == ["var_rnoise", "var_poisson"]
    assert new_data.dtype == np.float32
    assert new_dq.dtype == np.uint32
    for original, given in zip(originals, (data, err, dq, *variances.values()), strict=True):
        np.testing.assert_array_equal(given, original)  # inputs untouched


def test_match_nans_and_flags_inplace():
    data, err, dq, variances = _model_arrays()
    new_data, new_err, new_dq, new_vars = match_nans_and_flags(
        data, err, dq, variances, inplace=True
    )
    assert new_data is data
    assert new_err is err
    assert new_dq is dq
    assert new_vars["var_rnoise"] is variances["var_rnoise"]
    _check_normalised(data, err, dq, variances)


def test_match_nans_and_flags_skips_none_and_mismatched_shapes():
    data = np.array([[1, 2], [3, NAN]], dtype=np.float32)
    dq = np.array([[0, 1], [0, 0]], dtype=np.uint32)
    wrong = np.array([[NAN, 1, 1]], dtype=np.float32)  # NaN must not propagate
    new_data, new_err, new_dq, new_vars = match_nans_and_flags(
        data, None, dq, {"var_rnoise": None, "var_flat": wrong}
    )
    np.testing.assert_array_equal(new_data, np.array([[1, NAN], [3, NAN]], dtype=np.float32))
    np.testing.assert_array_equal(new_dq, np.array([[0, 1], [0, 1]], dtype=np.uint32))
    assert new_err is None
    assert new_vars["var_rnoise"] is None
    assert new_vars["var_flat"] is wrong
    np.testing.assert_array_equal(np.isnan(wrong), [[True, False, False]])


def test_match_nans_and_flags_ignores_dq_of_other_shape():
    data = np.array([[1, 2], [3, 4]], dtype=np.float32)
    dq = np.ones((3, 3), dtype=np.uint32)  # all DO_NOT_USE, but mismatched: ignored
    new_data, _, new_dq, _ = match_nans_and_flags(data, None, dq, {})
    np.testing.assert_array_equal(new_data, data)
    assert new_dq is dq


def test_match_nans_and_flags_inf_is_not_invalid():
    data = np.array([[np.inf, 1]], dtype=np.float32)
    dq = np.zeros((1, 2), dtype=np.uint32)
    new_data, _, new_dq, _ = match_nans_and_flags(data, None, dq, {})
    np.testing.assert_array_equal(new_data, data)
    np.testing.assert_array_equal(new_dq, dq)


@pytest.mark.jwst
def test_match_nans_and_flags_equals_jwst():
    pipe_utils = pytest.importorskip("jwst.lib.pipe_utils")
    datamodels = pytest.importorskip("stdatamodels.jwst.datamodels")
    rng = np.random.default_rng(11)
    shape = (30, 40)

    def noisy(fraction):
        array = rng.normal(size=shape).astype(np.float32)
        array[rng.random(shape) < fraction] = NAN
        return array

    arrays = {
        "data": noisy(0.05),
        "err": noisy(0.05),
        "var_rnoise": noisy(0.05),
        "var_poisson": noisy(0.05),
        "var_flat": noisy(0.05),
        "dq": rng.integers(0, 8, size=shape).astype(np.uint32),
    }
    model = datamodels.ImageModel(**{name: a.copy() for name, a in arrays.items()})
    pipe_utils.match_nans_and_flags(model)
    variances = {name: arrays[name] for name in ("var_rnoise", "var_poisson", "var_flat")}
    data, err, dq, new_vars = match_nans_and_flags(
        arrays["data"], arrays["err"], arrays["dq"], variances
    )
    np.testing.assert_array_equal(data, model.data)
    np.testing.assert_array_equal(err, model.err)
    np.testing.assert_array_equal(dq, model.dq)
    for name, array in new_vars.items():
        np.testing.assert_array_equal(array, getattr(model, name))
    model.close()
