"""Parameter files: YAML and stpipe's ASDF, unknown keys, stpipe-only keys, overrides, safety."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import asdf
import pytest

from outlier_dask.config import IGNORED_KEYS, parameters_with_file, read_parameter_file
from outlier_dask.parameters import OutlierParameters, ParameterError


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_with_top_level_keys(tmp_path):
    path = _write(
        tmp_path / "pars.yaml",
        "snr: 6.0 3.0\nin_memory: false\nn-workers: 3\npixfrac: 1\nscale: [1.5, 0.5]\n",
    )
    params = parameters_with_file(path, {})
    assert params.snr_pair == (6.0, 3.0)
    assert params.in_memory is False
    assert params.n_workers == 3
    assert params.pixfrac == 1.0
    assert params.scale_pair == (1.5, 0.5)
    # Everything else keeps its default.
    assert params.kernel == OutlierParameters().kernel


def test_yaml_with_parameters_mapping_and_stpipe_keys(tmp_path):
    path = _write(
        tmp_path / "pars.yaml",
        "class: jwst.outlier_detection.OutlierDetectionStep\n"
        "name: outlier_detection\n"
        "parameters:\n"
        "  maskpt: 0.5\n"
        "  good_bits: ~DO_NOT_USE+NON_SCIENCE\n"
        "  skip: false\n"
        "  kernel_size: 7 7\n"
        "  output_dir: null\n",
    )
    assert read_parameter_file(path) == {"maskpt": 0.5, "good_bits": "~DO_NOT_USE+NON_SCIENCE"}


def _stpipe_asdf(path, parameters):
    tree = {
        "class": "jwst.outlier_detection.outlier_detection_step.OutlierDetectionStep",
        "name": "OutlierDetectionStep",
        "parameters": parameters,
    }
    asdf.AsdfFile(tree).write_to(path)
    return path


def test_asdf_file_as_stpipe_writes_it(tmp_path):
    path = _stpipe_asdf(
        tmp_path / "od.asdf",
        {
            "snr": "7.0 2.0",
            "weight_type": "exptime",
            "output_dir": None,
            "suffix": None,
            "save_results": False,
            "pre_hooks": [],
            "threshold_percent": 99.8,
        },
    )
    params = parameters_with_file(path, {})
    assert params.snr_pair == (7.0, 2.0)
    assert params.weight_type == "exptime"
    # stpipe's "null" means not set: the defaults stay.
    assert params.output_dir == "."
    assert params.suffix == "crf"


def test_asdf_exported_by_the_reference_step(tmp_path):
    step_module = pytest.importorskip("jwst.outlier_detection")
    step = step_module.OutlierDetectionStep(snr="6.5 3.5", pixfrac=0.8, in_memory=False)
    path = tmp_path / "outlier_detection.asdf"
    step.export_config(str(path))
    params = parameters_with_file(path, {})
    assert params.snr == "6.5 3.5"
    assert params.pixfrac == 0.8
    assert params.in_memory is False
    assert params.step_parameters == {
        **OutlierParameters().step_parameters,
        "snr": "6.5 3.5",
        "pixfrac": 0.8,
        "in_memory": False,
    }


EXPECTED_FROM_STEP = {"snr": "6.5 3.5", "pixfrac": 0.8, "in_memory": False}


@pytest.mark.parametrize("include_metadata", [False, True])
@pytest.mark.parametrize("step_name", ["OutlierDetectionStep", "OutlierDetectionDaskStep"])
def test_every_export_config_file_is_read(tmp_path, step_name, include_metadata):
    pytest.importorskip("jwst")
    from jwst.outlier_detection import OutlierDetectionStep

    from outlier_dask.step import OutlierDetectionDaskStep

    step_class = {c.__name__: c for c in (OutlierDetectionStep, OutlierDetectionDaskStep)}
    step = step_class[step_name](**EXPECTED_FROM_STEP)
    path = tmp_path / f"{step_name}.asdf"
    step.export_config(str(path), include_metadata=include_metadata)
    if include_metadata:
        assert b"\nmeta:" in path.read_bytes()  # the CRDS reference file's block is there
    params = parameters_with_file(path, {})
    assert params.step_parameters == {**OutlierParameters().step_parameters, **EXPECTED_FROM_STEP}


def test_strun_save_parameters_file_is_read(tmp_path):
    """The file of ``strun outlier_detection ... --save-parameters`` (meta block included)."""
    pytest.importorskip("jwst")
    from outlier_dask.synthetic import write_association

    data = write_association(
        tmp_path / "data", n_exposures=1, n_detectors=1, detector_shape=(64, 64), seed=2
    )
    path = tmp_path / "saved.asdf"
    strun = Path(sys.executable).with_name("strun")
    done = subprocess.run(
        [
            str(strun),
            "outlier_detection",
            str(data.asn_path),
            "--snr=6.5 3.5",
            "--pixfrac=0.8",
            "--in_memory=False",
            f"--save-parameters={path}",
            f"--output_dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert path.exists(), done.stderr[-2000:]
    params = parameters_with_file(path, {})
    assert params.step_parameters == {**OutlierParameters().step_parameters, **EXPECTED_FROM_STEP}


def test_pipeline_file_gives_its_outlier_detection_step(tmp_path):
    pytest.importorskip("jwst")
    from jwst.pipeline import Image3Pipeline

    pipeline = Image3Pipeline(
        steps={"outlier_detection": EXPECTED_FROM_STEP, "resample": {"pixfrac": 0.5}}
    )
    path = tmp_path / "image3.asdf"
    pipeline.export_config(str(path), include_metadata=True)
    params = parameters_with_file(path, {})
    assert params.step_parameters == {**OutlierParameters().step_parameters, **EXPECTED_FROM_STEP}


def test_pipeline_file_without_outlier_detection_is_refused(tmp_path):
    path = _write(tmp_path / "p.yaml", "steps:\n- name: resample\n  parameters: {pixfrac: 1}\n")
    with pytest.raises(ParameterError, match=r"p\.yaml: .*without an outlier_detection step"):
        read_parameter_file(path)


def test_stpipe_and_other_mode_keys_are_ignored_with_a_debug_record(tmp_path, caplog):
    lines = "\n".join(f"{key}: 1" for key in sorted(IGNORED_KEYS))
    path = _write(tmp_path / "pars.yaml", lines + "\nbackg: 0.25\n")
    with caplog.at_level(logging.DEBUG, logger="outlier_dask.config"):
        assert read_parameter_file(path) == {"backg": 0.25}
    ignored = [r for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(ignored) == len(IGNORED_KEYS)
    assert all(r.levelno == logging.DEBUG for r in ignored)


def test_unknown_key_names_the_file_and_the_key(tmp_path):
    path = _write(tmp_path / "pars.yaml", "snr: 5.0 4.0\nsnrr: 3\n")
    with pytest.raises(ParameterError) as info:
        read_parameter_file(path)
    assert (
        str(info.value) == f"{path}: snrr: not a parameter of outlier detection; did you mean snr?"
    )


def test_unknown_key_inside_asdf_parameters(tmp_path):
    path = _stpipe_asdf(tmp_path / "od.asdf", {"snr": "5.0 4.0", "nonsense": 1})
    with pytest.raises(ParameterError, match=r"od\.asdf: nonsense: not a parameter"):
        read_parameter_file(path)


def test_command_line_values_override_the_file(tmp_path):
    path = _write(tmp_path / "pars.yaml", "snr: 6.0 3.0\nkernel: point\n")
    params = parameters_with_file(path, {"snr": "8 2", "in-memory": "False"})
    assert params.snr_pair == (8.0, 2.0)
    assert params.kernel == "point"
    assert params.in_memory is False


def test_bad_value_in_the_file_names_the_file_unless_overridden(tmp_path):
    path = _write(tmp_path / "pars.yaml", "pixfrac: 2.0\n")
    with pytest.raises(ParameterError) as info:
        parameters_with_file(path, {})
    assert str(info.value) == f"{path}: pixfrac: must be in (0, 1], got 2.0"
    assert parameters_with_file(path, {"pixfrac": "0.5"}).pixfrac == 0.5
    with pytest.raises(ParameterError) as info:
        parameters_with_file(path, {"pixfrac": "3"})
    assert str(info.value) == "pixfrac: must be in (0, 1], got 3.0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- 1\n- 2\n", "expected a mapping"),
        ("snr: [5.0\n", "not a YAML or ASDF parameter file"),
        ("parameters: 3\n", "'parameters' must be a mapping"),
        ("parameters: {snr: 5 4}\nsteps: {}\n", "'steps' must be a list of steps' parameters"),
        ("parameters: {snr: 5 4}\nother: {}\n", "unknown top-level key 'other'"),
    ],
)
def test_malformed_files_are_one_line_errors(tmp_path, text, message):
    path = _write(tmp_path / "pars.yaml", text)
    with pytest.raises(ParameterError) as info:
        read_parameter_file(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ParameterError, match="nothing.yaml: parameter file not found"):
        read_parameter_file(tmp_path / "nothing.yaml")
    assert read_parameter_file(_write(tmp_path / "empty.yaml", "")) == {}


def test_yaml_is_parsed_without_constructing_objects(tmp_path):
    marker = tmp_path / "executed"
    path = _write(
        tmp_path / "evil.yaml",
        f"snr: !!python/object/apply:os.system ['touch {marker}']\n",
    )
    with pytest.raises(ParameterError, match="not a YAML or ASDF parameter file"):
        read_parameter_file(path)
    assert not marker.exists()


def test_asdf_custom_tags_are_not_converted(tmp_path):
    # A tag no extension knows, and binary blocks, must not matter: only the YAML is read.
    text = (
        "#ASDF 1.0.0\n#ASDF_STANDARD 1.5.0\n%YAML 1.1\n%TAG ! tag:stsci.edu:asdf/\n"
        "--- !core/asdf-1.1.0\n"
        "class: x.OutlierDetectionStep\n"
        "parameters:\n  snr: 5.5 4.5\n  pre_hooks: !<tag:example.org/unknown-1.0.0> {a: 1}\n"
        "...\n"
    )
    path = _write(tmp_path / "tagged.asdf", text)
    assert read_parameter_file(path) == {"snr": "5.5 4.5"}


def test_parameters_of_another_step_warn(tmp_path, caplog):
    path = _stpipe_asdf(tmp_path / "resample.asdf", {"pixfrac": 0.5})
    tree = asdf.util.load_yaml(str(path))
    tree["class"] = "jwst.resample.resample_step.ResampleStep"
    asdf.AsdfFile(tree).write_to(path)
    with caplog.at_level(logging.WARNING, logger="outlier_dask.config"):
        assert read_parameter_file(path) == {"pixfrac": 0.5}
    assert "ResampleStep, not of outlier detection" in caplog.text
