"""The ``outlier-dask`` command: options, exit statuses, one-line errors, the demo."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from stdatamodels.jwst import datamodels

from outlier_dask.cli import _parameters, _parser, main
from outlier_dask.kernels.dq import OUTLIER
from outlier_dask.synthetic import write_association


@pytest.fixture(scope="module")
def association(tmp_path_factory):
    return write_association(
        tmp_path_factory.mktemp("cli") / "data",
        n_exposures=3,
        n_detectors=1,
        detector_shape=(96, 96),
        seed=9,
    )


def _params(argv):
    return _parameters(_parser().parse_args(argv))


def test_both_option_spellings_and_strun_booleans():
    a = _params(
        [
            "run",
            "x_asn.json",
            "--snr=6.0 3.0",
            "--kernel",
            "point",
            "--in-memory=False",
            "--save-intermediate-results",
            "--pixfrac",
            "0.5",
        ]
    )
    assert a.snr_pair == (6.0, 3.0)
    assert a.kernel == "point"
    assert a.in_memory is False
    assert a.save_intermediate_results is True
    assert a.pixfrac == 0.5
    b = _params(["run", "x_asn.json", "--in-memory", "false", "--resample-data=True"])
    assert b.in_memory is False
    assert b.resample_data is True


def test_help_lists_every_parameter_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in (
        "--weight-type",
        "--pixfrac",
        "--kernel",
        "--fillval",
        "--maskpt",
        "--snr",
        "--scale",
        "--backg",
        "--good-bits",
        "--in-memory",
        "--resample-data",
        "--pixmap-stepsize",
        "--pixmap-order",
        "--save-intermediate-results",
    ):
        assert option in text
    assert "(default: 5.0 4.0)" in text
    assert "(default: ~DO_NOT_USE)" in text


def test_run_writes_flagged_products(association, tmp_path, capsys):
    status = main(
        [
            "-q",
            "run",
            str(association.asn_path),
            "--output-dir",
            str(tmp_path),
            "--scheduler",
            "synchronous",
        ]
    )
    assert status == 0
    assert "pixels flagged" in capsys.readouterr().out
    products = sorted(tmp_path.glob("*_crf.fits"))
    assert len(products) == len(association.cal_paths)
    flagged = 0
    for path in products:
        with datamodels.open(path) as model:
            flagged += int(np.count_nonzero(model.dq & OUTLIER))
    assert flagged > 0


def test_bad_parameter_is_a_usage_error_on_one_line(association, tmp_path, capsys):
    status = main(
        ["run", str(association.asn_path), "--output-dir", str(tmp_path), "--pixfrac", "2"]
    )
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err == "outlier-dask: error: pixfrac: must be in (0, 1], got 2.0"


def test_missing_association_fails_naming_the_file(tmp_path, capsys):
    status = main(["run", str(tmp_path / "nothing_asn.json"), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert "nothing_asn.json: association file not found" in err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_single_input_is_skipped_with_status_zero(association, tmp_path):
    status = main(
        [
            "-q",
            "run",
            str(association.cal_paths[0]),
            "--output-dir",
            str(tmp_path),
            "--scheduler",
            "synchronous",
        ]
    )
    assert status == 0
    (product,) = tmp_path.glob("*_crf.fits")
    with datamodels.open(product) as model:
        assert model.meta.cal_step.outlier_detection == "SKIPPED"


@pytest.mark.slow
def test_demo_command_scores_against_truth(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "outlier_dask.cli", "-q", "demo", "--work-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    recall = float(completed.stdout.split("recall")[1].split()[0])
    precision = float(completed.stdout.split("precision")[1].split()[0])
    assert recall > 0.6
    assert precision > 0.5
