"""Parity with the reference: jwst 3.0.0's OutlierDetectionStep and this engine, same inputs.

Both run in this test session on the same synthetic association; the bar is identical OUTLIER
masks (at most 0.01% of flagged pixels may differ, and the difference is printed) and, where
they are identical, the arrays the step writes (DQ with all its bits, SCI, ERR and the three
variances) equal to the reference's bit for bit, NaN where it has NaN.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "True")
os.environ.setdefault("CRDS_MODE", "local")

jwst = pytest.importorskip("jwst", reason="parity tests need jwst 3.0.0")

from stdatamodels.jwst import datamodels  # noqa: E402

from outlier_dask import detect_outliers  # noqa: E402
from outlier_dask.kernels.dq import OUTLIER  # noqa: E402
from outlier_dask.synthetic import write_association  # noqa: E402

pytestmark = pytest.mark.jwst

CONFIGURATIONS = {
    "default": {},
    "on_disk": {"in_memory": False},
    "no_resample": {"resample_data": False},
    "exptime": {"weight_type": "exptime"},
    "point": {"kernel": "point"},
    "pixfrac": {"pixfrac": 0.5},
    "turbo": {"kernel": "turbo", "pixfrac": 0.8},
    "thresholds": {"snr": "3.0 2.5", "scale": "0.8 0.5"},
    "good_bits": {"good_bits": "~DO_NOT_USE+NON_SCIENCE", "maskpt": 0.5},
    "background_level": {},
    "fill_zero_without_mask": {"fillval": "0", "maskpt": 0.0},
    "fill_zero_without_mask_on_disk": {"fillval": "0", "maskpt": 0.0, "in_memory": False},
}
MAX_DIFFERING_FRACTION = 1e-4
#: The arrays of a product the step changes (DQ) or may set to NaN (the others).
PRODUCT_ARRAYS = ("dq", "data", "err", "var_rnoise", "var_poisson", "var_flat")


@pytest.fixture(scope="module")
def association(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity")
    return write_association(
        folder / "data", n_exposures=4, n_detectors=2, detector_shape=(256, 256), seed=7
    )


@pytest.fixture(scope="module")
def association_with_background(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity_bkg")
    return write_association(
        folder / "data",
        n_exposures=3,
        n_detectors=2,
        detector_shape=(200, 240),
        seed=11,
        background_level_in_meta=True,
    )


def _product_arrays(model) -> dict[str, np.ndarray]:
    return {name: getattr(model, name).copy() for name in PRODUCT_ARRAYS}


def _reference_products(asn_path: Path, workdir: Path, params: dict) -> dict[str, dict]:
    """Run jwst's step; return {input name: {array name: array}} (:data:`PRODUCT_ARRAYS`)."""
    from jwst.outlier_detection import OutlierDetectionStep

    # jwst's on-disk median writes its temporary folder in the current directory.
    cwd = Path.cwd()
    os.chdir(workdir)
    products = {}
    try:
        library = OutlierDetectionStep.call(str(asn_path), save_results=False, **params)
        # An on-disk library keeps its models under a relative path: read them from here.
        with library:
            for index in range(len(library)):
                model = library.borrow(index)
                products[model.meta.filename] = _product_arrays(model)
                library.shelve(model, index, modify=False)
    finally:
        os.chdir(cwd)
    return products


def _engine_products(asn_path: Path, out_dir: Path, params: dict) -> dict[str, dict]:
    result = detect_outliers(
        asn_path, output_dir=str(out_dir), scheduler="synchronous", overwrite=True, **params
    )
    products = {}
    for path in result.outputs:
        with datamodels.ImageModel(str(path)) as model:
            name = Path(path).name.replace("_crf.fits", "_cal.fits")
            products[name] = _product_arrays(model)
    return products


def _compare(reference: dict, ours: dict, label: str) -> None:
    assert sorted(reference) == sorted(ours)
    flagged = differing = 0
    unequal = []
    for name, ref_arrays in reference.items():
        ref_out = (ref_arrays["dq"] & OUTLIER) != 0
        our_out = (ours[name]["dq"] & OUTLIER) != 0
        flagged += int(ref_out.sum())
        differing += int((ref_out != our_out).sum())
        unequal += [
            f"{name} {array}"
            for array in PRODUCT_ARRAYS
            if not np.array_equal(ref_arrays[array], ours[name][array], equal_nan=True)
        ]
    print(
        f"[{label}] reference flagged {flagged} pixels; {differing} OUTLIER pixels differ; "
        f"arrays not equal: {unequal or 'none'}"
    )
    assert flagged > 0, "the reference flagged nothing: the comparison would be empty"
    assert differing <= MAX_DIFFERING_FRACTION * flagged
    if differing == 0:
        assert unequal == []


@pytest.mark.parametrize("label", list(CONFIGURATIONS))
def test_flags_match_jwst(label, association, association_with_background, tmp_path):
    params = CONFIGURATIONS[label]
    asn = association_with_background if label == "background_level" else association
    reference = _reference_products(asn.asn_path, tmp_path, params)
    ours = _engine_products(asn.asn_path, tmp_path / "ours", params)
    _compare(reference, ours, label)


def test_exptime_without_resampling_runs_where_the_reference_crashes(association, tmp_path):
    """jwst 3.0.0 raises KeyError here (jwst #10649); the engine flags with exptime weights."""
    ours = _engine_products(
        association.asn_path, tmp_path, {"resample_data": False, "weight_type": "exptime"}
    )
    ivm = _engine_products(association.asn_path, tmp_path / "ivm", {"resample_data": False})
    flagged = sum(int(((arrays["dq"] & OUTLIER) != 0).sum()) for arrays in ours.values())
    assert flagged > 0
    assert sorted(ours) == sorted(ivm)


def test_survey_tiling_flags_match_jwst(tmp_path):
    """A 2 x 2 grid of overlapping pointings: 8 groups over a mosaic wider than one pointing."""
    asn = write_association(
        tmp_path / "data",
        n_exposures=2,
        n_detectors=1,
        detector_shape=(128, 128),
        pointings=(2, 2),
        seed=17,
    )
    reference = _reference_products(asn.asn_path, tmp_path, {})
    ours = _engine_products(asn.asn_path, tmp_path / "ours", {})
    assert len(ours) == 8
    _compare(reference, ours, "survey_tiling")
