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
        if f.name == "suffix":  # stpipe's own: None for stpipe's naming rules
            assert spec_defaults[f.name] is None
            assert step.default_suffix() == "outlierdetectionstep"
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


def _strun(*arguments: str, cwd=None) -> subprocess.CompletedProcess:
    # The entry point installed beside this interpreter (a venv need not be activated).
    strun = shutil.which("strun", path=os.path.dirname(sys.executable)) or shutil.which("strun")
    if strun is None:
        pytest.skip("strun is not on PATH")
    return subprocess.run(
        [strun, *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
        env={**os.environ, "STPIPE_DISABLE_CRDS_STEPPARS": "True", "CRDS_MODE": "local"},
    )


def _flags_by_input(folder, suffix: str) -> dict[str, np.ndarray]:
    """OUTLIER flags of the products in ``folder``, keyed by their input's name."""
    flags = {}
    for path in sorted(folder.glob(f"*_o001_{suffix}.fits")):
        with datamodels.open(path) as model:
            flags[path.name.replace(f"_o001_{suffix}", "_cal")] = (model.dq & OUTLIER) != 0
    return flags


def test_strun_by_alias_names_every_file_as_the_reference(association, expected, tmp_path):
    from jwst.outlier_detection import OutlierDetectionStep

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    done = _strun(
        "outlier_detection_dask",
        str(association.asn_path),
        "--scheduler=synchronous",
        "--progress=log",
        "--save_intermediate_results=True",
        f"--output_dir={ours}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    OutlierDetectionStep.call(
        str(association.asn_path),
        save_results=True,
        save_intermediate_results=True,
        output_dir=str(theirs),
    )
    # Products (<stem>_o001_outlierdetectionstep.fits), medians, blots, mosaics: same names.
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    flags = _flags_by_input(ours, "outlierdetectionstep")
    assert flags.keys() == expected.keys()
    for name, mask in flags.items():
        np.testing.assert_array_equal(mask, expected[name])
    # stpipe's log has the per-input counts and the stages, as the reference logs its counts.
    log = done.stderr
    for name, mask in expected.items():
        assert f"{name}: {np.count_nonzero(mask)} pixels marked as outliers" in log
    for stage in ("drizzle", "median", "blot+flag"):
        assert f"outlier_dask.progress - INFO - {stage}: started" in log


def test_fewer_than_two_inputs_are_skipped_as_the_reference_skips(association):
    from jwst.datamodels import ModelLibrary

    model = datamodels.ImageModel(str(association.cal_paths[0]))
    model.meta.wcs = None  # a single input needs no WCS: nothing is resampled
    library = outlier_dask.OutlierDetectionDaskStep.call(
        ModelLibrary([model], on_disk=False), progress="off"
    )
    with library:
        skipped = library.borrow(0)
        assert skipped.meta.cal_step.outlier_detection == "SKIPPED"
        np.testing.assert_array_equal(skipped.dq, model.dq)
        library.shelve(skipped, 0, modify=False)


def test_image3_pipeline_with_this_step_writes_the_reference_s_crf(association, expected, tmp_path):
    """``Image3DaskPipeline`` against ``calwebb_image3``, the other steps skipped."""
    from jwst.pipeline import Image3Pipeline

    from outlier_dask.pipeline import Image3DaskPipeline

    skipped = {step: {"skip": True} for step in ("tweakreg", "skymatch", "resample")}
    skipped["source_catalog"] = {"skip": True}
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    steps = {**skipped, "outlier_detection": {"scheduler": "synchronous", "progress": "off"}}
    Image3DaskPipeline.call(
        str(association.asn_path), steps=steps, output_dir=str(ours), save_results=True
    )
    Image3Pipeline.call(
        str(association.asn_path), steps=skipped, output_dir=str(theirs), save_results=True
    )
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    ours_flags, theirs_flags = _flags_by_input(ours, "crf"), _flags_by_input(theirs, "crf")
    assert ours_flags.keys() == theirs_flags.keys() == expected.keys()
    for name, mask in ours_flags.items():
        np.testing.assert_array_equal(mask, theirs_flags[name])


def test_registered_with_stpipe_by_entry_point():
    from stpipe.entry_points import get_steps

    registered = {(s.class_name, s.class_alias, s.is_pipeline) for s in get_steps()}
    assert ("outlier_dask.step.OutlierDetectionDaskStep", "outlier_detection_dask", False) in (
        registered
    )
    assert ("outlier_dask.pipeline.Image3DaskPipeline", "calwebb_image3_dask", True) in (registered)
    from outlier_dask.pipeline import Image3DaskPipeline

    assert Image3DaskPipeline.step_defs["outlier_detection"] is (
        outlier_dask.OutlierDetectionDaskStep
    )
