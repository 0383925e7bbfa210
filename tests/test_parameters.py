"""Parameters: the reference's names, defaults and string forms; every value checked."""

from __future__ import annotations

from dataclasses import fields

import pytest

from outlier_dask.parameters import (
    DETECTIONS,
    KERNELS,
    PARAMETER_CHOICES,
    PARAMETER_HELP,
    REFERENCE_PARAMETERS,
    WEIGHT_TYPES,
    OutlierParameters,
    ParameterError,
    parameter_default_text,
    parse_bool,
    parse_memory_size,
)


def test_defaults_equal_the_reference_step_spec():
    step = pytest.importorskip("jwst.outlier_detection.outlier_detection_step")
    spec = step.OutlierDetectionStep.spec
    defaults = OutlierParameters()
    for name in REFERENCE_PARAMETERS:
        line = next(ln for ln in spec.splitlines() if ln.strip().startswith(f"{name} ="))
        default = line.split("default=")[1].split(")")[0].strip().strip("'\"")
        ours = getattr(defaults, name)
        if isinstance(ours, bool):
            assert str(ours) == default, name
        elif isinstance(ours, int | float):
            assert float(ours) == float(default), name
        else:
            assert ours == default, name


def test_string_forms_are_read():
    params = OutlierParameters.from_mapping(
        {
            "snr": "6 3.5",
            "scale": "1.0 0.5",
            "in-memory": "False",
            "pixfrac": "0.5",
            "pixmap_order": "3",
            "good_bits": "~DO_NOT_USE+JUMP_DET",
        }
    )
    assert params.snr_pair == (6.0, 3.5)
    assert params.scale_pair == (1.0, 0.5)
    assert params.in_memory is False
    assert params.pixfrac == 0.5
    assert params.pixmap_order == 3


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"snr": "5"}, "snr: expected two"),
        ({"snr": "5 a"}, "snr: expected two"),
        ({"scale": "1 2 3"}, "scale: expected two"),
        ({"pixfrac": 0}, r"pixfrac: must be in \(0, 1\]"),
        ({"pixfrac": 1.5}, r"pixfrac: must be in \(0, 1\]"),
        ({"maskpt": -0.1}, r"maskpt: must be in \[0, 1\]"),
        ({"kernel": "lanczos3"}, "kernel: must be one of square, point, turbo"),
        ({"weight_type": "ivm-sky"}, "weight_type: must be one of ivm, exptime"),
        ({"good_bits": "NOT_A_FLAG"}, "good_bits: cannot read"),
        ({"fillval": "zero"}, "fillval: expected"),
        ({"pixmap_order": 2}, "pixmap_order: must be 1 or 3"),
        ({"scheduler": "gpu"}, "scheduler: must be one of"),
        ({"memory_limit": "lots"}, "memory_limit: cannot read"),
        ({"memory_limit": "-1GB"}, "memory_limit: must be a positive size"),
        ({"suffix": "a/b"}, "suffix: must be a plain word"),
        ({"n_workers": 0}, "n_workers: must be >= 1"),
        ({"block_size": 0}, "block_size: must be >= 1"),
        ({"detection": "best"}, "detection: must be one of reference, robust"),
        ({"nhigh_groups": -1}, "nhigh_groups: must be >= 0"),
        ({"nhigh_groups": "two"}, "nhigh_groups: expected a number"),
        ({"source_fraction": -0.5}, r"source_fraction: must be in \[0, 10\]"),
    ],
)
def test_bad_values_are_named(values, message):
    with pytest.raises(ParameterError, match=message):
        OutlierParameters.from_mapping(values)


def test_detection_sets_the_pieces_left_unset():
    reference = OutlierParameters()
    assert reference.detection == "reference"
    assert reference.detection_piece("nhigh_groups") == 0
    assert reference.detection_piece("source_fraction") == 0.0
    robust = OutlierParameters.from_mapping({"detection": "Robust"})
    assert robust.detection_piece("nhigh_groups") == 2
    assert robust.detection_piece("source_fraction") == 0.2
    # a piece set explicitly wins over the detection's value, either way
    mixed = OutlierParameters.from_mapping({"detection": "robust", "source_fraction": "0"})
    assert mixed.detection_piece("source_fraction") == 0.0
    assert mixed.detection_piece("nhigh_groups") == 2
    one_piece = OutlierParameters(nhigh_groups=3)
    assert one_piece.detection_piece("nhigh_groups") == 3
    assert one_piece.detection_piece("source_fraction") == 0.0


def test_unknown_and_mistyped_names():
    with pytest.raises(ParameterError, match="snrr: not a parameter"):
        OutlierParameters.from_mapping({"snrr": "5 4"})
    with pytest.raises(ParameterError, match="maskpt: expected a number"):
        OutlierParameters.from_mapping({"maskpt": "high"})
    with pytest.raises(ParameterError, match="in_memory: expected True or False"):
        OutlierParameters.from_mapping({"in_memory": "maybe"})


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1GiB", 2**30),
        ("800MB", 800 * 10**6),
        ("2.5 GB", 2_500_000_000),
        (4096, 4096),
        ("4G", 4 * 10**9),
        ("4GB", 4 * 10**9),
        ("4gib", 4 * 2**30),
        ("4Gi", 4 * 2**30),
        ("4096MiB", 4 * 2**30),
        ("512M", 512 * 10**6),
    ],
)
def test_memory_sizes(text, size):
    """The usual spellings, as dask reads them: K, M, G, T decimal; Ki, Mi, Gi, Ti binary."""
    assert parse_memory_size(text) == size


def test_unknown_size_unit_is_named():
    with pytest.raises(ParameterError, match="unknown unit 'gg' in '4gg'"):
        parse_memory_size("4gg")


@pytest.mark.parametrize(
    ("typo", "meant"), [("snrr", "snr"), ("in_memroy", "in_memory"), ("maskp", "maskpt")]
)
def test_a_mistyped_name_suggests_the_nearest(typo, meant):
    with pytest.raises(
        ParameterError, match=rf"{typo}: not a parameter .*; did you mean {meant}\?"
    ):
        OutlierParameters.from_mapping({typo: "1"})


@pytest.mark.parametrize(("text", "value"), [("True", True), ("false", False), ("1", True)])
def test_booleans_in_strun_spelling(text, value):
    assert parse_bool(text, "x") is value


def test_every_parameter_has_its_meaning_and_a_readable_default():
    names = [f.name for f in fields(OutlierParameters) if f.init]
    assert list(PARAMETER_HELP) == names
    for name in names:
        assert PARAMETER_HELP[name].strip(), name
        assert parameter_default_text(name) not in ("", "None"), name
    assert parameter_default_text("snr") == "5.0 4.0"
    assert parameter_default_text("n_workers") == "CPUs available"
    assert parameter_default_text("tls_key") == "not set"
    assert dict(PARAMETER_CHOICES) == {
        "weight_type": WEIGHT_TYPES,
        "kernel": KERNELS,
        "detection": DETECTIONS,
    }
    for name, choices in PARAMETER_CHOICES.items():
        assert getattr(OutlierParameters(), name) in choices
        for choice in choices:
            OutlierParameters.from_mapping({name: choice})
