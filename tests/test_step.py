"""OutlierDetectionDaskStep: outlier_dask as an stpipe step (needs jwst)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "True")
os.environ.setdefault("CRDS_MODE", "local")

pytest.importorskip("jwst", reason="the stpipe step needs jwst")

from stdatamodels.jwst import datamodels  # noqa: E402

import outlier_dask  # noqa: E402
from outlier_dask import detect_outliers  # noqa: E402
from outlier_dask.kernels.dq import OUTLIER  # noqa: E402
from outlier_dask.synthetic import write_association  # noqa: E402

pytestmark = pytest.mark.jwst


@pytest.fixture(scope="module")
def association(tmp_path_factory):
    return write_association(
        tmp_path_factory.mktemp("step") / "data",
        n_exposures=3,
        n_detectors=1,
        detector_shape=(96, 96),
        seed=13,
    )


@pytest.fixture(scope="module")
def expected(association, tmp_path_factory):
    out = tmp_path_factory.mktemp("step-expected")
    result = detect_outliers(
        association.asn_path, output_dir=out, scheduler="synchronous", progress=False
    )
    flags = {}
    for path in result.outputs:
        with datamodels.open(path) as model:
            flags[path.name.replace("_crf", "_cal")] = (model.dq & OUTLIER) != 0
    return flags


def test_step_is_found_by_its_public_name():
    from jwst.stpipe import Step

    step_class = outlier_dask.OutlierDetectionDaskStep
    assert issubclass(step_class, Step)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = outlier_dask.nothing


def test_step_parameters_become_outlier_parameters():
    step = outlier_dask.OutlierDetectionDaskStep(snr="6.0 3.0", n_workers=2, in_memory=False)
    params = step._parameters()
    assert params.snr_pair == (6.0, 3.0)
    assert params.n_workers == 2
    assert params.in_memory is False
    assert params.output_dir == "."  # stpipe's output_dir None: the default
    reference = pytest.importorskip("jwst.outlier_detection").OutlierDetectionStep()
    ours = outlier_dask.OutlierDetectionDaskStep()
    # Every parameter of the reference is a parameter of this step, with the same default.
    for name, value in reference.get_pars().items():
        if name not in ("suffix",):
            assert ours.get_pars()[name] == value, name


def test_spec_is_made_from_the_parameter_table():
    from dataclasses import fields

    from configobj import ConfigObj
    from stpipe.config_parser import validate

    from outlier_dask.parameters import PARAMETER_CHOICES, PARAMETER_HELP, OutlierParameters

    step_class = outlier_dask.OutlierDetectionDaskStep
    spec = step_class.load_spec_file()  # stpipe's own parsing, stpipe's parameters merged in
    spec_defaults = validate(ConfigObj(), spec)  # an empty configuration gets the defaults
    step = step_class()
    checks = {"float": "float(", "int": "integer(", "bool": "boolean(", "str": "string("}
    for f in fields(OutlierParameters):
        if not f.init:
            continue
        assert f.name in spec, f.name
        if f.name == "output_dir":  # stpipe's own; None stands for the default "."
            assert spec_defaults[f.name] is None
            assert step._parameters().output_dir == f.default
            continue
        assert spec_defaults[f.name] == f.default, f.name
        assert type(spec_defaults[f.name]) is type(f.default), f.name
        assert getattr(step, f.name) == f.default, f.name
        assert spec.inline_comments[f.name].startswith(f"# {PARAMETER_HELP[f.name]}"), f.name
        if f.name in PARAMETER_CHOICES:
            choices = ",".join(f"'{c}'" for c in PARAMETER_CHOICES[f.name])
            assert spec[f.name] == f"option({choices},default='{f.default}')"
        else:
            assert spec[f.name].startswith(checks[str(f.type).removesuffix(" | None")]), f.name
    assert spec_defaults["progress"] == "auto"
    assert spec.inline_comments["n_workers"].endswith("(None: CPUs available)")
    # The reference's parameters of other modes are accepted, with the reference's defaults.
    reference = pytest.importorskip("jwst.outlier_detection").OutlierDetectionStep
    reference_defaults = validate(ConfigObj(), reference.load_spec_file())
    for name in ("kernel_size", "threshold_percent", "rolling_window_width", "ifu_second_check"):
        assert spec_defaults[name] == reference_defaults[name], name
    assert spec_defaults["search_output_file"] is reference_defaults["search_output_file"]


def test_step_reads_every_parameter_in_strun_spelling():
    step = outlier_dask.OutlierDetectionDaskStep(
        max_grid_pixels="1e6",
        overwrite="True",
        memory_limit="2GiB",
        scheduler="tls://scheduler:8786",
        tls_ca_file="ca.pem",
        tls_cert="client.pem",
        tls_key="client.key",
        pixmap_tolerance="0",
    )
    assert step.max_grid_pixels == 1e6
    assert step.overwrite is True
    params = step._parameters()
    assert params.max_grid_pixels == 1e6
    assert params.overwrite is True
    assert params.memory_limit == "2GiB"
    assert (params.tls_ca_file, params.tls_cert, params.tls_key) == (
        "ca.pem",
        "client.pem",
        "client.key",
    )
    assert params.pixmap_tolerance == 0.0
    from stpipe.config_parser import ValidationError

    with pytest.raises(ValidationError, match="'kernel'"):
        outlier_dask.OutlierDetectionDaskStep(kernel="lanczos3")


def test_call_returns_a_library_of_flagged_models(association, expected):
    from jwst.datamodels import ModelLibrary

    library = outlier_dask.OutlierDetectionDaskStep.call(
        str(association.asn_path), scheduler="synchronous", progress="off"
    )
    assert isinstance(library, ModelLibrary)
    with library:
        assert len(library) == len(expected)
        for index in range(len(library)):
            model = library.borrow(index)
            assert model.meta.cal_step.outlier_detection == "COMPLETE"
            np.testing.assert_array_equal((model.dq & OUTLIER) != 0, expected[model.meta.filename])
            library.shelve(model, index, modify=False)


def test_strun_saves_crf_files(association, expected, tmp_path):
    # The entry point installed beside this interpreter (a venv need not be activated).
    strun = shutil.which("strun", path=os.path.dirname(sys.executable)) or shutil.which("strun")
    if strun is None:
        pytest.skip("strun is not on PATH")
    completed = subprocess.run(
        [
            strun,
            "outlier_dask.OutlierDetectionDaskStep",
            str(association.asn_path),
            "--scheduler=synchronous",
            "--progress=off",
            f"--output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "STPIPE_DISABLE_CRDS_STEPPARS": "True", "CRDS_MODE": "local"},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    products = sorted(tmp_path.glob("*_crf.fits"))
    assert [p.name.replace("_crf", "_cal") for p in products] == sorted(expected)
    for path in products:
        with datamodels.open(path) as model:
            flags = (model.dq & OUTLIER) != 0
            np.testing.assert_array_equal(flags, expected[path.name.replace("_crf", "_cal")])
