"""write_flagged_fits: the byte-level writer makes the astropy writer's products, faster."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path

import asdf.util
import numpy as np
import pytest
from astropy.io import fits
from stdatamodels.jwst import datamodels

from outlier_dask.io import flagged_fits
from outlier_dask.io.flagged_fits import _write_flagged_fits_astropy, write_flagged_fits
from outlier_dask.io.provenance import product_record
from outlier_dask.kernels.dq import DO_NOT_USE, OUTLIER
from outlier_dask.synthetic import write_association

SHAPE = (64, 64)
FLOAT_EXTENSIONS = ("SCI", "ERR", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT")
#: Float32 NaNs other than numpy's (0x7fc00000): the writers must both replace them.
ODD_NANS = (0x7FC00001, 0xFFC00000, 0x7F800001)
#: The products' DATE in comparisons of the two writers (by default each writes its own time).
DATE = "2026-01-02T03:04:05.678"
HISTORY = ("outlier_dask test entry", "outlier_dask parameters: snr='5.0 4.0'")


@pytest.fixture(scope="module")
def cal_file(tmp_path_factory) -> Path:
    """One small synthetic ``_cal.fits`` as stdatamodels writes it (DQ int32, BZERO 2**31)."""
    association = write_association(
        tmp_path_factory.mktemp("flagged") / "data",
        n_exposures=1,
        n_detectors=1,
        detector_shape=SHAPE,
        seed=11,
    )
    return association.cal_paths[0]


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    """Outliers, shape SHAPE, bool: scattered pixels and a block crossing row boundaries."""
    outliers = np.random.default_rng(3).random(SHAPE) < 0.03
    outliers[10:14, 20:30] = True
    return outliers


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _variant(cal_file: Path, directory: Path, edit=None) -> Path:
    """A copy of ``cal_file`` in ``directory``, changed by ``edit(hdul)`` (astropy, in memory)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / cal_file.name
    with fits.open(cal_file) as hdul:
        if edit is not None:
            edit(hdul)
        hdul.writeto(path)
    return path


def _inconsistent(hdul: fits.HDUList) -> None:
    """NaN only in ERR or in a variance, DO_NOT_USE on finite pixels, NaNs of odd payloads."""
    hdul["ERR"].data[5, 5:9] = np.nan
    hdul["VAR_RNOISE"].data[6, 5:9] = np.nan
    hdul["VAR_FLAT"].data[7, 5] = np.nan
    for name in FLOAT_EXTENSIONS:
        hdul[name].data[8, 5:9] = 1.5
    hdul["DQ"].data[8, 5:9] = DO_NOT_USE | 4
    sci = hdul["SCI"].data
    sci[9, 5 : 5 + len(ODD_NANS)] = np.array(ODD_NANS, dtype=np.uint32).view(np.float32)
    # Where nothing changes, even the sign bit of a zero must survive.
    sci[9, 20] = -0.0


def _dq_stored_as(hdul: fits.HDUList, dtype: type) -> None:
    """Inconsistent arrays, and DQ rewritten as ``dtype`` (astropy picks BZERO for it)."""
    _inconsistent(hdul)
    dq = hdul["DQ"]
    header = dq.header.copy()
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    hdul[hdul.index_of("DQ")] = fits.ImageHDU(dq.data.astype(dtype), header=header)


def _plain_int32_dq(hdul: fits.HDUList) -> None:
    """DQ stored as int32 without BZERO (values below 2**31)."""
    _dq_stored_as(hdul, np.int32)


def _uint16_dq(hdul: fits.HDUList) -> None:
    """DQ stored as int16 with BZERO 32768 (pseudo-unsigned 16-bit)."""
    _dq_stored_as(hdul, np.uint16)


def _no_var_rnoise(hdul: fits.HDUList) -> None:
    _inconsistent(hdul)
    del hdul["VAR_RNOISE"]


def _var_flat_of_another_shape(hdul: fits.HDUList) -> None:
    """An array whose shape differs from SCI: neither used nor changed."""
    _inconsistent(hdul)
    small = np.full((16, 24), np.nan, dtype=np.float32)
    small[0, 0] = 2.0
    hdul["VAR_FLAT"] = fits.ImageHDU(small, header=hdul["VAR_FLAT"].header, name="VAR_FLAT")


def _cards_to_fill_primary(hdul: fits.HDUList, spare: int) -> None:
    """Pad the primary header with HISTORY cards to leave ``spare`` free cards."""
    _inconsistent(hdul)
    header = hdul[0].header
    used = len(header) + 1  # END
    for k in range((-used - spare) % 36):
        header.add_history(f"padding card {k}")


VARIANTS = {
    "as_written": None,
    "inconsistent": _inconsistent,
    "plain_int32_dq": _plain_int32_dq,
    "uint16_dq": _uint16_dq,
    "no_var_rnoise": _no_var_rnoise,
    "var_flat_other_shape": _var_flat_of_another_shape,
    "full_primary": lambda hdul: _cards_to_fill_primary(hdul, spare=0),
    "one_spare_card": lambda hdul: _cards_to_fill_primary(hdul, spare=1),
}


@pytest.fixture(autouse=True)
def astropy_writer_calls(monkeypatch) -> list[tuple]:
    """Calls of the astropy writer made through :func:`write_flagged_fits` (its fallback)."""
    calls: list[tuple] = []

    def spy(*args):
        calls.append(args)
        return _write_flagged_fits_astropy(*args)

    spy.calls = calls
    monkeypatch.setattr(flagged_fits, "_write_flagged_fits_astropy", spy)
    return calls


def _both(source: Path, mask, tmp_path: Path, name: str = "x_crf.fits") -> tuple[Path, Path]:
    """Write ``source`` with the new and the old writer under the same file name.

    The new writer must write it byte by byte, not through its astropy fallback.
    """
    new, old = tmp_path / "new" / name, tmp_path / "old" / name
    new.parent.mkdir(parents=True, exist_ok=True)
    old.parent.mkdir(parents=True, exist_ok=True)
    fallback_calls = flagged_fits._write_flagged_fits_astropy.calls
    before = len(fallback_calls)
    status = "SKIPPED" if mask is None else "COMPLETE"
    record = product_record(name, status, HISTORY, DATE)
    count = write_flagged_fits(source, mask, new, history=HISTORY, date=DATE)
    assert count == _write_flagged_fits_astropy(source, mask, old, record)
    assert len(fallback_calls) == before
    return new, old


def _embedded_tree(hdul: fits.HDUList) -> dict:
    """The embedded ASDF tree as plain values (no objects built, blocks not read)."""
    content = hdul["ASDF"].data["ASDF_METADATA"][0].tobytes()
    return asdf.util.load_yaml(io.BytesIO(content), tagged=False)


def _bits(array: np.ndarray) -> np.ndarray:
    """The stored bits of a float array (NaN payloads and signed zeros included)."""
    return array.view(f"u{array.dtype.itemsize}") if array.dtype.kind == "f" else array


def _cards(header: fits.Header) -> list[tuple[str, str]]:
    """The cards of ``header`` as (keyword, value) pairs, in keyword order."""
    return sorted((card.keyword, repr(card.value)) for card in header.cards)


def _assert_same_fits(new: Path, old: Path) -> None:
    with fits.open(new) as a, fits.open(old) as b:
        assert [h.name for h in a] == [h.name for h in b]
        assert a[0].header.tostring() == b[0].header.tostring()
        for name in ("FILENAME", "S_OUTLIR"):
            assert a[0].header[name] == b[0].header[name]
        for x, y in zip(a[1:], b[1:], strict=True):
            assert _cards(x.header) == _cards(y.header), x.name
            if isinstance(x, fits.ImageHDU):
                assert x.data.dtype == y.data.dtype, x.name
                assert np.array_equal(x.data, y.data, equal_nan=x.data.dtype.kind == "f"), x.name
                assert np.array_equal(_bits(x.data), _bits(y.data)), x.name
            elif x.name == "ASDF":
                # Equal trees, neither with the input's (stale) header hash.
                tree_x, tree_y = _embedded_tree(a), _embedded_tree(b)
                assert "_fits_hash" not in tree_x
                assert "_fits_hash" not in tree_y
                assert tree_x == tree_y
            else:
                assert x.data.tobytes() == y.data.tobytes(), x.name


def _assert_same_model(new: Path, old: Path, status: str) -> None:
    with datamodels.ImageModel(str(new)) as a, datamodels.ImageModel(str(old)) as b:
        for attr in ("data", "err", "dq", "var_poisson", "var_rnoise", "var_flat"):
            x, y = getattr(a, attr), getattr(b, attr)
            assert x.dtype == y.dtype, attr
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), attr
            assert np.array_equal(_bits(x), _bits(y)), attr
        assert a.meta.cal_step.outlier_detection == status
        assert b.meta.cal_step.outlier_detection == status
        assert a.meta.filename == new.name


@pytest.fixture(params=["one_block", "blocks_of_3_rows"])
def block_size(request, monkeypatch):
    """The default block (the whole 64-row image) and blocks of 3 rows (a partial last one)."""
    if request.param == "blocks_of_3_rows":
        monkeypatch.setattr(flagged_fits, "_BLOCK_BYTES", 3 * SHAPE[1] * 4)
    return request.param


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_product_as_the_astropy_writer(cal_file, mask, tmp_path, variant, block_size):
    source = _variant(cal_file, tmp_path / "in", VARIANTS[variant])
    before = _sha256(source)
    new, old = _both(source, mask, tmp_path)
    assert _sha256(source) == before
    _assert_same_fits(new, old)
    with fits.open(new) as hdul:
        assert hdul[0].header["S_OUTLIR"] == "COMPLETE"
        assert hdul[0].header["FILENAME"] == "x_crf.fits"
        dq = hdul["DQ"].data
        assert np.all((dq[mask] & (DO_NOT_USE | OUTLIER)) == DO_NOT_USE | OUTLIER)
        # NaN and DO_NOT_USE agree everywhere, as the kernels make them.
        assert np.array_equal(np.isnan(hdul["SCI"].data), (dq & DO_NOT_USE) != 0)
    assert not list(new.parent.glob(".*partial"))


def test_the_pipeline_reads_the_product_as_the_astropy_writer_s(cal_file, mask, tmp_path):
    source = _variant(cal_file, tmp_path / "in", _inconsistent)
    new, old = _both(source, mask, tmp_path, name="jw_x_crf.fits")
    _assert_same_model(new, old, "COMPLETE")


def test_skipped_input_is_copied_with_its_status(cal_file, tmp_path):
    before = _sha256(cal_file)
    new, old = _both(cal_file, None, tmp_path)
    assert write_flagged_fits(cal_file, None, tmp_path / "again_crf.fits") == 0
    assert _sha256(cal_file) == before
    _assert_same_fits(new, old)
    _assert_same_model(new, old, "SKIPPED")
    with fits.open(new) as a, fits.open(cal_file) as b:
        for x, y in zip(a[1:], b[1:], strict=True):
            if x.name != "ASDF":  # the tree records the new name, date and status
                assert x.data.tobytes() == y.data.tobytes()
        assert _embedded_tree(a)["meta"]["cal_step"]["outlier_detection"] == "SKIPPED"


@pytest.mark.parametrize(("spare", "growth"), [(0, 2880), (2, 2880), (3, 0)])
def test_primary_header_grows_by_a_block_only_when_full(cal_file, mask, tmp_path, spare, growth):
    source = _variant(cal_file, tmp_path / "in", lambda h: _cards_to_fill_primary(h, spare))
    with fits.open(source) as hdul:
        assert "S_OUTLIR" not in hdul[0].header  # so one card is added
        start = hdul.fileinfo(1)["hdrLoc"]
    new, old = _both(source, mask, tmp_path)
    with fits.open(new) as hdul:
        # S_OUTLIR and the two HISTORY cards: three cards more (DATE and FILENAME are there).
        assert hdul.fileinfo(1)["hdrLoc"] == start + growth
    _assert_same_fits(new, old)


def test_checksum_cards_are_kept_as_the_astropy_writer_keeps_them(cal_file, mask, tmp_path):
    directory = tmp_path / "in"
    directory.mkdir()
    source = directory / cal_file.name
    with fits.open(cal_file) as hdul:
        hdul.writeto(source, checksum=True)
    new, old = _both(source, mask, tmp_path)
    _assert_same_fits(new, old)
    with fits.open(new) as a, fits.open(old) as b:
        for x, y in zip(a, b, strict=True):
            if x.name == "ASDF":  # made anew by both: no stale sums
                assert "CHECKSUM" not in x.header
                assert "CHECKSUM" not in y.header
                continue
            assert x.header["CHECKSUM"] == y.header["CHECKSUM"], x.name
            assert x.header["DATASUM"] == y.header["DATASUM"], x.name


def _scaled_sci(hdul: fits.HDUList) -> None:
    """SCI stored as scaled int16 (BSCALE/BZERO): the byte-level writer cannot update it."""
    data = np.nan_to_num(hdul["SCI"].data, nan=0.0)
    hdul["SCI"].data = data
    hdul["SCI"].scale("int16", bscale=0.01, bzero=1.0)


def _compressed_sci(hdul: fits.HDUList) -> None:
    sci = hdul["SCI"]
    hdul[hdul.index_of("SCI")] = fits.CompImageHDU(sci.data, header=sci.header, name="SCI")


def _scaled_dq(hdul: fits.HDUList) -> None:
    dq = hdul["DQ"]
    header = dq.header.copy()
    for key in ("BZERO", "BSCALE"):
        header.remove(key, ignore_missing=True)
    hdu = fits.ImageHDU(dq.data.astype(np.int32), header=header)
    hdu.scale("int32", bzero=7)
    hdul[hdul.index_of("DQ")] = hdu


@pytest.mark.parametrize("edit", [_scaled_sci, _compressed_sci, _scaled_dq])
def test_unusual_layouts_use_the_astropy_writer(
    cal_file, mask, tmp_path, edit, astropy_writer_calls
):
    source = _variant(cal_file, tmp_path / "in", edit)
    old = tmp_path / "old" / "x_crf.fits"
    old.parent.mkdir()
    record = product_record(old.name, "COMPLETE", (), DATE)
    try:
        expected = _write_flagged_fits_astropy(source, mask, old, record)
    except Exception as exc:  # whatever it raises, the new writer must raise too
        expected = exc
    new = tmp_path / "new" / "x_crf.fits"
    new.parent.mkdir()
    if isinstance(expected, Exception):
        with pytest.raises(type(expected)):
            write_flagged_fits(source, mask, new, date=DATE)
        assert not new.exists()
    else:
        count = write_flagged_fits(source, mask, new, date=DATE)
        assert count == expected == np.count_nonzero(mask)
        _assert_same_fits(new, old)
    assert len(astropy_writer_calls) == 1


def test_errors_are_those_of_the_astropy_writer(cal_file, tmp_path):
    with pytest.raises(ValueError, match="shape mismatch"):
        write_flagged_fits(cal_file, np.zeros((8, 8), bool), tmp_path / "a_crf.fits")
    no_dq = _variant(cal_file, tmp_path / "in", lambda hdul: hdul.pop(hdul.index_of("DQ")))
    with pytest.raises(KeyError):
        write_flagged_fits(no_dq, np.zeros(SHAPE, bool), tmp_path / "b_crf.fits")
    assert not list(tmp_path.glob("*crf*"))
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("where", ["_flag_block", "_copy_range"])
def test_a_failure_leaves_no_file_and_the_input_untouched(
    cal_file, mask, tmp_path, monkeypatch, where
):
    before = _sha256(cal_file)

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(flagged_fits, where, fail)
    final = tmp_path / "x_crf.fits"
    with pytest.raises(OSError, match="simulated I/O error"):
        write_flagged_fits(cal_file, mask, final)
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    assert _sha256(cal_file) == before


@pytest.mark.parametrize("kernel_copy", ["refused", "missing"])
def test_copy_without_copy_file_range(cal_file, mask, tmp_path, monkeypatch, kernel_copy):
    if kernel_copy == "missing":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    else:

        def cross_device(*args):
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", cross_device, raising=False)
    monkeypatch.setattr(flagged_fits, "_COPY_BYTES", 1000)  # several rounds, a partial last one
    for case in (mask, None):
        new, old = _both(cal_file, case, tmp_path / str(case is None))
        _assert_same_fits(new, old)
