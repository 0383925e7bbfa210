"""``_crf`` products say the same about themselves in their headers and their ASDF tree.

Read as the JWST tool chain reads them: the embedded ASDF file with asdf alone, the product
with stdatamodels, an association of products through jwst's ``ModelLibrary``, and jwst's
resample step run on that association.
"""

from __future__ import annotations

import io
from pathlib import Path

import asdf
import numpy as np
import pytest
from astropy.io import fits
from stdatamodels.jwst import datamodels

from outlier_dask import __version__, detect_outliers
from outlier_dask.io.flagged_fits import _write_flagged_fits_astropy, write_flagged_fits
from outlier_dask.io.provenance import (
    HISTORY_CARD_CHARS,
    product_record,
    provenance_history,
    record_in_tree,
)
from outlier_dask.parameters import OutlierParameters
from outlier_dask.synthetic import write_association

SHAPE = (64, 64)
PARAMS = OutlierParameters(snr="4.5 3.5", pixfrac=0.8)


@pytest.fixture(scope="module")
def association(tmp_path_factory):
    """Two exposures of one small detector, and the products of ``detect_outliers`` on them."""
    folder = tmp_path_factory.mktemp("provenance")
    data = write_association(
        folder / "data", n_exposures=2, n_detectors=1, detector_shape=SHAPE, seed=4
    )
    result = detect_outliers(
        data.asn_path,
        parameters=PARAMS.replace(output_dir=str(folder / "out"), scheduler="synchronous"),
        progress="off",
    )
    return data, [Path(p) for p in result.outputs]


def _tree_and_header(path: Path) -> tuple[dict, fits.Header]:
    """The embedded tree read by asdf alone (validated) and the primary header."""
    with fits.open(path) as hdul:
        content = hdul["ASDF"].data["ASDF_METADATA"][0].tobytes()
        header = hdul[0].header.copy()
    with asdf.open(io.BytesIO(content)) as af:
        return af.tree, header


def _assert_tree_matches_headers(path: Path, status: str, history: tuple[str, ...]) -> None:
    tree, header = _tree_and_header(path)
    meta = tree["meta"]
    assert meta["filename"] == header["FILENAME"] == path.name
    assert meta["date"] == header["DATE"]
    assert meta["cal_step"]["outlier_detection"] == header["S_OUTLIR"] == status
    entries = [entry["description"] for entry in tree["history"]["entries"]]
    assert entries == list(header["HISTORY"]) == list(history)
    assert all(
        e["software"] == {"name": "outlier_dask", "version": __version__}
        for e in tree["history"]["entries"]
    )
    # No stale hash of the input's headers: stdatamodels reads the headers, equal to the tree.
    assert "_fits_hash" not in tree


def test_history_records_tool_version_and_parameters():
    history = provenance_history(PARAMS)
    assert history[0] == f"outlier_dask {__version__}: outlier_detection (imaging)"
    text = " ".join(history)
    for pair in ("snr='4.5 3.5'", "pixfrac=0.8", "scale='1.2 0.7'", "good_bits=~DO_NOT_USE"):
        assert pair in text
    for pair in ("detection=reference", "nhigh_groups=0", "source_fraction=0.0"):
        assert pair in text.split()
    assert max(len(line) for line in history) <= HISTORY_CARD_CHARS
    robust = " ".join(provenance_history(PARAMS.replace(detection="robust", nhigh_groups=3)))
    for pair in ("detection=robust", "nhigh_groups=3", "source_fraction=0.2"):
        assert pair in robust.split()


def test_products_agree_in_tree_and_headers(association):
    data, products = association
    for product in products:
        _assert_tree_matches_headers(product, "COMPLETE", provenance_history(PARAMS))
    with fits.open(data.cal_paths[0]) as hdul:
        input_date = hdul[0].header["DATE"]
    assert _tree_and_header(products[0])[0]["meta"]["date"] > input_date


def test_stdatamodels_reads_the_record_and_the_wcs(association):
    data, products = association
    tree, header = _tree_and_header(products[0])
    with datamodels.open(products[0]) as model, datamodels.open(data.cal_paths[0]) as cal:
        assert model.meta.filename == products[0].name
        assert model.meta.date == header["DATE"]
        assert model.meta.cal_step.outlier_detection == "COMPLETE"
        with pytest.warns(UserWarning, match="history attribute"):  # stdatamodels' notice
            history = [e["description"] for e in model.history]
        assert history == list(provenance_history(PARAMS))
        # What the run did not change reads back as in the input.
        assert model.meta.instrument.detector == cal.meta.instrument.detector
        assert model.meta.wcs(10.0, 20.0) == pytest.approx(cal.meta.wcs(10.0, 20.0), abs=0)


def test_model_library_and_resample_read_an_association_of_products(association, tmp_path):
    from jwst.associations.asn_from_list import asn_from_list
    from jwst.datamodels import ModelLibrary
    from jwst.resample import ResampleStep

    _, products = association
    asn = asn_from_list([p.name for p in products], product_name="products")
    asn_path = products[0].parent / "products_asn.json"
    _, text = asn.dump(format="json")
    asn_path.write_text(text)
    library = ModelLibrary(asn_path, on_disk=False)
    with library:
        for index, product in enumerate(products):
            model = library.borrow(index)
            assert model.meta.cal_step.outlier_detection == "COMPLETE"
            assert model.meta.filename == product.name
            library.shelve(model, index, modify=False)
    resampled = ResampleStep.call(str(asn_path), output_dir=str(tmp_path))
    assert resampled.meta.cal_step.resample == "COMPLETE"
    assert np.isfinite(resampled.data).any()
    # Both products went into the mosaic (context bits 1 and 2), their exposure times summed.
    assert resampled.meta.resample.pointings == 2
    assert resampled.meta.exposure.exposure_time == 2 * 500.0
    assert (resampled.con[0] == 0b11).any()


def test_skipped_product_records_skipped(association, tmp_path):
    data, _ = association
    final = tmp_path / "one_crf.fits"
    history = provenance_history(PARAMS)
    assert write_flagged_fits(data.cal_paths[0], None, final, history=history) == 0
    _assert_tree_matches_headers(final, "SKIPPED", history)


def test_astropy_writer_records_the_same(association, tmp_path):
    data, _ = association
    mask = np.zeros(SHAPE, bool)
    mask[3, 4] = True
    history = provenance_history(PARAMS)
    final = tmp_path / "general_crf.fits"
    record = product_record(final.name, "COMPLETE", history)
    assert _write_flagged_fits_astropy(data.cal_paths[0], mask, final, record) == 1
    _assert_tree_matches_headers(final, "COMPLETE", history)
    with datamodels.open(final) as model:
        assert model.dq[3, 4] & 16


def test_tree_update_keeps_blocks_and_drops_a_stale_block_index(association):
    data, _ = association
    with fits.open(data.cal_paths[0]) as hdul:
        content = hdul["ASDF"].data["ASDF_METADATA"][0].tobytes()
    with asdf.open(io.BytesIO(content)) as af:
        original = af.tree["meta"]["wcs"]
        before = original(5.0, 7.0)
    record = product_record("x_crf.fits", "COMPLETE", ("a",))
    updated = record_in_tree(content, record)
    assert b"#ASDF BLOCK INDEX" not in updated
    with asdf.open(io.BytesIO(updated)) as af:
        assert af.tree["meta"]["wcs"](5.0, 7.0) == before
        assert "_fits_hash" not in af.tree


def test_tree_update_refuses_what_is_not_asdf():
    record = product_record("x_crf.fits", "COMPLETE", ())
    with pytest.raises(ValueError, match="does not hold an ASDF file"):
        record_in_tree(b"SIMPLE  =                    T", record)
