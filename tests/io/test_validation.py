"""Checks before heavy work: bad data, parameters and output locations, each named in one line."""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from types import SimpleNamespace

import numpy as np
import pytest

from outlier_dask import ParameterError, detect_outliers
from outlier_dask.geometry.output_grid import GridTooLargeError
from outlier_dask.io import validation
from outlier_dask.io.association import AssociationError
from outlier_dask.io.validation import OutputError, SchedulerUnreachableError
from outlier_dask.synthetic import make_models, write_association

SHAPE = (64, 72)
#: About 10 arcsec east of the synthetic pointing: a 64-pixel detector (2 arcsec) misses it.
FAR_RA = 53.163


@functools.cache
def _made(**options):
    return tuple(make_models(n_detectors=1, detector_shape=SHAPE, **options)[0])


def _fresh(**options):
    """Copies of cached synthetic models (tests change them; making them is slow)."""
    return [m.copy() for m in _made(**options)]


@pytest.fixture
def models():
    """Two dithered exposures of one detector."""
    return _fresh(n_exposures=2, seed=5)


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fail the test if a plan (pixel maps) is built."""

    def refuse(*args, **kwargs):
        raise AssertionError("the plan was built although a check should have refused the run")

    monkeypatch.setattr("outlier_dask.api.plan_run", refuse)


def _run(inputs, **values):
    return detect_outliers(inputs, scheduler="synchronous", **values)


# --------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("array", ["err", "dq"])
def test_missing_err_or_dq_is_refused(models, no_heavy_work, array):
    delattr(models[1], array)
    with pytest.raises(AssociationError, match=rf"{array.upper()} is missing, SCI has 64 x 72"):
        _run(models)


def test_err_of_another_shape_is_refused(models, tmp_path, no_heavy_work):
    models[0].err = np.zeros((10, 10), np.float32)
    with pytest.raises(AssociationError, match="ERR has shape 10 x 10, SCI has 64 x 72"):
        _run(models)
    # From files too: the shape is read from the FITS header, not the pixels.
    for model in models:
        model.save(tmp_path / model.meta.filename)
    with pytest.raises(AssociationError, match=rf"{models[0].meta.filename}: ERR has shape"):
        _run([tmp_path / m.meta.filename for m in models], output_dir=tmp_path / "out")


def test_missing_err_in_a_file_is_refused(models, tmp_path, no_heavy_work):
    del models[1].err
    for model in models:
        model.save(tmp_path / model.meta.filename)
    with pytest.raises(AssociationError, match="ERR is missing"):
        _run([tmp_path / m.meta.filename for m in models], output_dir=tmp_path / "out")


def test_missing_or_misshapen_var_rnoise_falls_back_to_weight_one(models, caplog):
    del models[0].var_rnoise
    models[1].var_rnoise = np.ones((3, 3), np.float32)
    with caplog.at_level(logging.WARNING, logger="outlier_dask"):
        result = _run(models)
    assert result.status == "COMPLETE"
    assert "VAR_RNOISE is missing or not of SCI's shape in 2 input(s)" in caplog.text
    assert "weight 1 instead of 1/VAR_RNOISE" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="outlier_dask"):
        _run(models, weight_type="exptime")
    assert "VAR_RNOISE" not in caplog.text, "exptime weights do not use VAR_RNOISE"


def test_one_input_without_usable_pixel_is_a_warning(caplog):
    models = _fresh(n_exposures=3, seed=6)
    models[1].dq = np.ones(SHAPE, np.uint32)  # DO_NOT_USE everywhere
    with caplog.at_level(logging.WARNING, logger="outlier_dask"):
        result = _run(models)
    assert result.status == "COMPLETE"
    assert "1 input(s) have no usable pixel" in caplog.text
    assert models[1].meta.filename in caplog.text


def test_no_input_with_a_usable_pixel_is_refused(models, no_heavy_work):
    for model in models:
        model.dq = np.ones(SHAPE, np.uint32)
    with pytest.raises(AssociationError, match="no input has a usable pixel.*check good_bits"):
        _run(models)
    # NaN everywhere is as unusable as DO_NOT_USE everywhere.
    for model in models:
        model.dq = np.zeros(SHAPE, np.uint32)
        model.data = np.full(SHAPE, np.nan, np.float32)
    with pytest.raises(AssociationError, match="no input has a usable pixel"):
        _run(models)


def test_good_bits_decide_what_is_usable(models):
    for model in models:
        model.dq = np.full(SHAPE, 4, np.uint32)  # JUMP_DET only: bad unless it is a good bit
    with pytest.raises(AssociationError, match="no input has a usable pixel"):
        _run(models, good_bits="0")
    assert _run(models, good_bits="~DO_NOT_USE").status == "COMPLETE"


# --------------------------------------------------------------------------- geometry


def _exposure(seed, ra, exposure_number):
    (model,) = _fresh(n_exposures=1, seed=seed, ra=ra)
    model.meta.observation.exposure_number = str(exposure_number)
    model.meta.filename = f"exp{exposure_number}_cal.fits"
    return model


def test_inputs_that_do_not_overlap_are_a_warning(caplog):
    apart = [_exposure(1, 53.16, 1), _exposure(2, FAR_RA, 2)]
    with caplog.at_level(logging.WARNING, logger="outlier_dask"):
        result = _run(apart)
    assert result.status == "COMPLETE"
    assert "no two of the 2 exposure groups overlap" in caplog.text


def test_one_isolated_group_is_named(caplog):
    models = [_exposure(1, 53.16, 1), _exposure(2, 53.16, 2), _exposure(3, FAR_RA, 3)]
    with caplog.at_level(logging.WARNING, logger="outlier_dask"):
        _run(models)
    assert "1 exposure group(s) overlap no other group" in caplog.text
    assert "01101_3" in caplog.text.split("overlap no other group")[1]  # the third exposure
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="outlier_dask"):
        _run(models[:2])
    assert "overlap" not in caplog.text


def test_a_single_exposure_group_is_a_warning(caplog):
    models, _ = make_models(n_exposures=1, n_detectors=2, detector_shape=SHAPE, seed=2)
    with caplog.at_level(logging.WARNING, logger="outlier_dask"):
        _run(models)
    assert "all 2 inputs belong to one exposure group" in caplog.text


def test_unreadable_s_region_is_named(models, no_heavy_work):
    models[1].meta.wcsinfo.s_region = "POLYGON ICRS 1 2 3"
    with pytest.raises(AssociationError, match="cannot read meta.wcsinfo.s_region"):
        _run(models)


def test_first_input_must_orient_the_grid(models, no_heavy_work):
    models[0].meta.wcsinfo.vparity = 0
    with pytest.raises(AssociationError, match="vparity missing or invalid"):
        _run(models)
    models[0].meta.wcsinfo.vparity = -1
    del models[0].meta.wcsinfo.roll_ref
    with pytest.raises(AssociationError, match="roll_ref missing or invalid"):
        _run(models)


def test_grid_keys_are_not_needed_without_resampling(models):
    del models[0].meta.wcsinfo.roll_ref
    assert _run(models, resample_data=False).status == "COMPLETE"


def test_absurd_output_grid_is_refused_before_pixel_maps(models, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a pixel map was built")

    monkeypatch.setattr("outlier_dask.engine.plan.build_pixel_map", refuse)
    with pytest.raises(GridTooLargeError, match=r"above the limit of 0 Mpix"):
        _run(models, max_grid_pixels=100)
    with pytest.raises(ParameterError, match="max_grid_pixels: must be a number of pixels"):
        _run(models, max_grid_pixels=0)


def test_grid_limit_can_be_raised_above_the_default():
    assert detect_outliers.__wrapped__ is not None  # the public function is the guarded one
    models = _fresh(n_exposures=2, seed=5)
    assert _run(models, max_grid_pixels="5e9").status == "COMPLETE"


# --------------------------------------------------------------------------- scheduler


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_named_quickly(models, no_heavy_work):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    started = time.perf_counter()
    with pytest.raises(SchedulerUnreachableError, match=f"cannot connect to {address}"):
        detect_outliers(models, scheduler=address)
    assert time.perf_counter() - started < validation.SCHEDULER_CONNECT_TIMEOUT_S + 2


def test_scheduler_address_without_host_is_a_parameter_error(models):
    with pytest.raises(ParameterError, match="cannot read a host and port"):
        detect_outliers(models, scheduler="tcp://:notaport")


# --------------------------------------------------------------------------- outputs


@pytest.fixture(scope="module")
def association(tmp_path_factory):
    return write_association(
        tmp_path_factory.mktemp("validation"), n_exposures=2, n_detectors=1, detector_shape=SHAPE
    )


def test_output_dir_that_is_a_file_is_refused(association, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        _run(association.asn_path, output_dir=target)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_dir_not_writable_is_refused(association, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="is not writable"):
        _run(association.asn_path, output_dir=locked)


def test_output_dir_that_cannot_be_created_is_refused(association, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot create"):
        _run(association.asn_path, output_dir=tmp_path / "file" / "sub")


def test_existing_intermediate_products_are_refused_without_overwrite(association, tmp_path):
    first = association.cal_paths[0].name.removesuffix("_cal.fits")
    median = tmp_path / f"{first}_o001_median.fits"
    median.write_text("an earlier median")
    with pytest.raises(OutputError, match=f"{median.name} exists; pass overwrite=True"):
        _run(association.asn_path, output_dir=tmp_path, save_intermediate_results=True)
    assert median.read_text() == "an earlier median"
    # Without intermediate products the file is not in the way.
    assert _run(association.asn_path, output_dir=tmp_path).status == "COMPLETE"


def test_a_product_that_is_a_folder_is_refused(association, tmp_path):
    (tmp_path / association.cal_paths[0].name.replace("_cal", "_crf")).mkdir()
    with pytest.raises(OutputError, match="exists and is a folder"):
        _run(association.asn_path, output_dir=tmp_path, overwrite=True)


def test_not_enough_disk_is_refused_before_any_graph(association, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a graph ran although the disk check should have refused the run")

    monkeypatch.setattr("outlier_dask.api.run_plan", refuse)
    usage = SimpleNamespace(total=10**6, used=10**6 - 1000, free=1000)
    monkeypatch.setattr(validation.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(OutputError, match=r"not enough free disk space in .*1.0 kB free") as info:
        _run(association.asn_path, output_dir=tmp_path / "out", in_memory=False)
    assert "products" in str(info.value)
    assert "scratch" in str(info.value)
    assert not any((tmp_path / "out").iterdir())


def test_free_space_adds_up_on_one_disk_and_not_across(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b" / "not_yet"
    monkeypatch.setattr(
        validation.shutil, "disk_usage", lambda path: SimpleNamespace(free=1500, total=0, used=0)
    )
    validation.check_free_space([("products", a, 1000), ("scratch", b, 400)])
    with pytest.raises(OutputError, match=r"about 1.6 kB \(products 1.0 kB \+ scratch 600 B\)"):
        validation.check_free_space([("products", a, 1000), ("scratch", b, 600)])


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["run", "{tmp}/missing_asn.json"], 1, "association file not found"),
        (["run", "{asn}", "--max-grid-pixels", "0"], 2, "max_grid_pixels: must be"),
        (["run", "{asn}", "--max-grid-pixels", "100"], 1, "above the limit of 0 Mpix"),
        (["run", "{asn}", "--scheduler", "tcp://127.0.0.1:{port}"], 1, "cannot connect to"),
        (["run", "{asn}", "--output-dir", "{tmp}/file"], 1, "exists and is not a folder"),
        (["run", "{asn}", "--tls-cert", "x.pem"], 2, "TLS files need a tls://"),
    ],
)
def test_command_line_errors_are_one_line_with_a_status(
    association, tmp_path, capsys, argv, status, message
):
    from outlier_dask.cli import main

    (tmp_path / "file").write_text("x")
    values = {"tmp": tmp_path, "asn": association.asn_path, "port": _closed_port()}
    argv = [a.format(**values) for a in argv]
    if "--output-dir" not in argv:
        argv += ["--output-dir", str(tmp_path / "out")]
    if "--scheduler" not in argv:
        argv += ["--scheduler", "synchronous"]
    assert main(argv) == status
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("outlier-dask: error:")]
    assert len(errors) == 1, err
    assert message in errors[0]
    assert "Traceback" not in err


def test_dq_stored_as_floats_is_refused(models, tmp_path, no_heavy_work):
    """A DQ image of floats (an edited file) is named before any work, not a numpy error."""
    from astropy.io import fits

    for model in models:
        model.save(tmp_path / model.meta.filename)
    damaged = tmp_path / models[1].meta.filename
    with fits.open(damaged, mode="update") as hdul:
        hdul["DQ"].data = hdul["DQ"].data.astype(np.float32)
    with pytest.raises(
        AssociationError, match=rf"{damaged.name}: DQ is stored as floats \(BITPIX -32\)"
    ):
        _run([tmp_path / m.meta.filename for m in models], output_dir=tmp_path / "out")


def test_work_dir_that_is_a_file_is_refused(models, tmp_path, no_heavy_work):
    not_a_folder = tmp_path / "work"
    not_a_folder.write_text("a file")
    with pytest.raises(ValueError, match=rf"work_dir: {not_a_folder} exists and is not a folder"):
        _run(models, work_dir=not_a_folder, in_memory=False)
    assert not_a_folder.read_text() == "a file"


@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_truncated_file_is_named_as_truncated(models, tmp_path, no_heavy_work, fraction):
    """A file cut off in the middle of an extension is reported as truncated, not as a file
    that is not a JWST product."""
    for model in models:
        model.save(tmp_path / model.meta.filename)
    cut = tmp_path / models[0].meta.filename
    size = cut.stat().st_size
    with cut.open("r+b") as stream:
        stream.truncate(int(size * fraction))
    with pytest.raises(AssociationError, match=rf"{cut.name}: truncated or damaged FITS file"):
        _run([tmp_path / m.meta.filename for m in models], output_dir=tmp_path / "out")


@pytest.mark.parametrize("value", [0.0, np.nan])
def test_err_without_a_real_value_is_refused(models, no_heavy_work, value):
    models[1].err[...] = value
    with pytest.raises(
        AssociationError, match=rf"{models[1].meta.filename}: ERR is 0 or not finite at every"
    ):
        _run(models)


def test_err_real_at_one_usable_pixel_is_enough(models, caplog):
    models[1].err[...] = 0.0
    models[1].err[40, 50] = 1.0
    result = _run(models)
    assert result.status == "COMPLETE"


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_var_rnoise_without_a_weight_is_a_warning(models, caplog, value):
    """The reference gives such an input drizzle weight 0 everywhere; so does the run, and
    says so (with exptime weights VAR_RNOISE is not used, and nothing is said)."""
    models[0].var_rnoise[...] = value
    with caplog.at_level(logging.WARNING, logger="outlier_dask"):
        _run(models)
    name = models[0].meta.filename
    assert f"at every usable pixel of 1 input(s) ({name}): with weight_type='ivm'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="outlier_dask"):
        _run(models, weight_type="exptime")
    assert "VAR_RNOISE is 0" not in caplog.text


def test_err_without_a_real_value_in_a_file_is_refused(models, tmp_path, no_heavy_work):
    """Files are searched for usable pixels by the readers, while they are open."""
    models[1].err[...] = 0.0
    for model in models:
        model.save(tmp_path / model.meta.filename)
    with pytest.raises(
        AssociationError, match=rf"{models[1].meta.filename}: ERR is 0 or not finite at every"
    ):
        _run([tmp_path / m.meta.filename for m in models], output_dir=tmp_path / "out")


def test_a_search_under_other_good_bits_is_made_again(models):
    """What a reader found under one good_bits is not used under another."""
    import dataclasses

    from outlier_dask.io.members import UsablePixels, members_from_models

    member = members_from_models(models[:1])[0]
    wrong = UsablePixels("~DO_NOT_USE", False, pixels=False, err=False, var_rnoise=False)
    member = dataclasses.replace(member, usable=wrong)
    assert validation.usable_pixels_of(member, "~DO_NOT_USE", False) is wrong
    again = validation.usable_pixels_of(member, "~DO_NOT_USE+JUMP_DET", False)
    assert (again.pixels, again.err) == (True, True)
