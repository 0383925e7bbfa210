"""The ``outlier-dask`` command: options, exit statuses, one-line errors, the demo."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from stdatamodels.jwst import datamodels

from outlier_dask.cli import _parameters, _parser, main
from outlier_dask.command import interrupt_behind
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


def test_strun_underscore_spellings_beside_the_dash_forms():
    a = _params(
        [
            "run",
            "x_asn.json",
            "--in_memory=False",
            "--save_intermediate_results",
            "--pixmap_stepsize",
            "10",
            "--good_bits=~DO_NOT_USE+NON_SCIENCE",
            "--memory_limit=4GiB",
        ]
    )
    assert a.in_memory is False
    assert a.save_intermediate_results is True
    assert a.pixmap_stepsize == 10.0
    assert a.good_bits == "~DO_NOT_USE+NON_SCIENCE"
    assert a.memory_limit == _params(["run", "x", "--memory-limit", "4GiB"]).memory_limit


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("--snrr", "--snr"),
        ("--kernal=point", "--kernel"),
        ("--in_memroy=False", "--in_memory"),
        ("--save_intermedite_results", "--save_intermediate_results"),
        ("--pixmap-stepsise=2", "--pixmap-stepsize"),
        ("--proflie", "--profile"),
    ],
)
def test_mistyped_option_suggests_the_nearest(typo, suggestion, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["run", "x_asn.json", typo])
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2
    assert err[-1] == (
        f"outlier-dask: error: unrecognized arguments: {typo} (did you mean {suggestion}?)"
    )


def test_unknown_option_far_from_any_gets_no_suggestion(capsys):
    with pytest.raises(SystemExit):
        main(["run", "x_asn.json", "--zzzzzz"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "outlier-dask: error: unrecognized arguments: --zzzzzz"
    )


def test_output_dir_with_a_missing_parent_is_refused_before_work(association, tmp_path, capsys):
    target = tmp_path / "typo" / "deep" / "out"
    status = main(["run", str(association.asn_path), "--output-dir", str(target)])
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert err == (
        f"outlier-dask: error: output_dir: cannot create {target}: its parent folder "
        f"{target.parent} does not exist"
    )
    assert not (tmp_path / "typo").exists()


def test_report_of_a_list_of_files_is_named_by_whole_fields(association, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["run", *map(str, association.cal_paths), "--output-dir", str(out), "-q"])
    assert status == 0
    # jw01234001001_01101_00001_nrca1, ..._00002_..., ..._00003_...: not "..._0000".
    assert [p.name for p in out.glob("*_outlier_report.json")] == [
        "jw01234001001_01101_outlier_report.json"
    ]


def test_profile_rows_add_up_and_task_seconds_are_shown_apart():
    from outlier_dask.cli import profile_table

    timings = {"plan": 0.5, "drizzle": 2.0, "median": 1.0, "blot_flag": 3.0, "write": 2.5}
    lines = profile_table({**timings, "total": 7.0}).splitlines()
    assert lines == [
        "stage          seconds   share",
        "plan              0.50      7%",
        "drizzle           2.00     29%",
        "median            1.00     14%",
        "blot+flag         3.00     43%",
        "other             0.50      7%",
        "total             7.00    100%",
        "(other: scheduler start and stop, scratch folder, report)",
        "write (task-seconds within blot+flag, summed over workers): 2.50",
    ]


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


def test_options_before_or_after_the_command():
    before = _parser().parse_args(["-q", "--debug", "run", "x_asn.json"])
    after = _parser().parse_args(["run", "x_asn.json", "-q", "-v", "--debug"])
    neither = _parser().parse_args(["run", "x_asn.json"])
    assert (before.quiet, before.debug, before.verbose) == (True, True, 0)
    assert (after.quiet, after.debug, after.verbose) == (True, True, 1)
    assert (neither.quiet, neither.debug, neither.verbose) == (False, False, 0)


def test_help_gives_units_and_readable_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--config", "--profile", "--plot", "--quiet", "--output-dir", "--work-dir"):
        assert option in text
    assert "in SCI units (default: 0.0)" in text
    assert "output pixels (0: evaluate the WCS at every pixel) (default: 0.0001)" in text
    assert "(default: CPUs available)" in text
    assert "(default: system temporary folder)" in text
    assert "(default: None)" not in text


def test_help_of_every_parameter_is_the_parameter_table(capsys):
    from dataclasses import fields

    from outlier_dask.parameters import PARAMETER_HELP, OutlierParameters, parameter_default_text

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    # argparse wraps lines at spaces and after hyphens: compare without any whitespace.
    text = "".join(capsys.readouterr().out.split())
    for f in fields(OutlierParameters):
        if not f.init:
            continue
        option = "--" + f.name.replace("_", "-")
        metavar = "[True|False]" if f.type == "bool" else "VALUE"
        entry = f"{option} {metavar} {PARAMETER_HELP[f.name]} "
        entry += f"(default: {parameter_default_text(f.name)})"
        assert "".join(entry.split()) in text, f.name


def test_config_file_with_command_line_override(tmp_path):
    config = tmp_path / "pars.yaml"
    config.write_text("snr: 6.0 3.0\nkernel: point\n")
    params = _params(["run", "x_asn.json", "--config", str(config), "--kernel", "turbo"])
    assert params.snr_pair == (6.0, 3.0)
    assert params.kernel == "turbo"


def test_unknown_key_in_config_is_a_usage_error(tmp_path, capsys):
    config = tmp_path / "pars.yaml"
    config.write_text("snr: 6.0 3.0\nthreshold: 3\n")
    status = main(["run", "x_asn.json", "--config", str(config)])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err == f"outlier-dask: error: {config}: threshold: not a parameter of outlier detection"


def test_profile_report_and_plot(association, tmp_path, capsys):
    status = main(
        [
            "run",
            str(association.asn_path),
            "-q",
            "--output-dir",
            str(tmp_path),
            "--scheduler",
            "threads",
            "--profile",
            "--plot",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert (tmp_path / "synth_outlier_report.json").is_file()
    assert (tmp_path / "synth_outlier_report.png").is_file()
    assert f"wrote {tmp_path / 'synth_outlier_report.json'}" in out
    table = out[out.index("stage") :].splitlines()
    end = next(k for k, line in enumerate(table) if line.startswith("total"))
    names = [line.split()[0] for line in table[1 : end + 1]]
    assert names[:4] == ["plan", "drizzle", "median", "blot+flag"]
    assert names[-1] == "total"
    seconds = {line.split()[0]: float(line.split()[1]) for line in table[1 : end + 1]}
    assert all(v >= 0 for v in seconds.values())
    # The wall-time rows add up to the total (to the rounding of the printed values).
    rows = sum(v for k, v in seconds.items() if k != "total")
    assert rows == pytest.approx(seconds["total"], abs=0.005 * len(seconds))
    assert "write (task-seconds within blot+flag, summed over workers):" in table[-1]


def test_info_shows_the_plan_without_running(association, tmp_path, capsys):
    status = main(["info", str(association.asn_path), "--n-workers", "3", "--tile-size", "64"])
    out = capsys.readouterr().out
    assert status == 0
    assert "inputs: 3 in 3 group(s)" in out
    for cal in association.cal_paths:
        assert f"{cal.name}  96 x 96 px" in out
    assert "arcsec/px" in out
    assert "tiles: " in out
    assert "of up to 64 x 64 px" in out
    assert "blocks: 3 of up to 1024 x 1024 input px" in out
    assert "workers: 3 (processes; 4 Python process(es))" in out
    assert "in_memory=True: peak memory" in out
    assert "in_memory=False: peak memory" in out
    assert not list(association.cal_paths[0].parent.glob("*_crf.fits"))


def test_estimates_follow_the_plan(association):
    from outlier_dask.api import _resolve_inputs
    from outlier_dask.engine.estimate import PROCESS_BASELINE, estimate_resources
    from outlier_dask.engine.handover import SHARED, STORE
    from outlier_dask.engine.plan import make_plan
    from outlier_dask.parameters import OutlierParameters

    product, members, _ = _resolve_inputs(association.asn_path)
    plan = make_plan(members, product, OutlierParameters())
    memory = estimate_resources(plan, kind=SHARED, n_workers=2)
    disk = estimate_resources(plan, kind=STORE, n_workers=2)
    ny, nx = plan.grid_shape
    assert memory.scratch_disk == 0
    assert disk.scratch_disk >= 4 * ny * nx  # at least the median
    assert disk.peak_memory < memory.peak_memory
    assert memory.peak_memory == sum(memory.parts.values())
    # Planes are held on the whole tiles each group's region meets (here one tile: the grid).
    assert memory.parts["masked stack (shared memory)"] == 4 * plan.n_groups * ny * nx
    assert memory.parts["median (shared memory)"] == 4 * ny * nx
    more = estimate_resources(plan, kind=SHARED, n_workers=4, processes=5)
    assert more.peak_memory - memory.peak_memory >= 2 * PROCESS_BASELINE
    kept = estimate_resources(plan, kind=STORE, n_workers=2, keep_intermediate=True)
    assert kept.peak_memory - disk.peak_memory >= 4 * ny * nx + 4 * 3 * 96 * 96


def test_scratch_estimate_bounds_the_store(association, tmp_path):
    from outlier_dask.api import _resolve_inputs
    from outlier_dask.engine.estimate import estimate_resources
    from outlier_dask.engine.handover import STORE, open_handover
    from outlier_dask.engine.plan import make_plan
    from outlier_dask.engine.run import run_plan
    from outlier_dask.engine.stores import ScratchStore
    from outlier_dask.parameters import OutlierParameters
    from outlier_dask.runtime.schedulers import start_runner

    params = OutlierParameters(in_memory=False, tile_size=32, scheduler="synchronous")
    product, members, _ = _resolve_inputs(association.asn_path)
    plan = make_plan(members, product, params)
    store = ScratchStore(str(tmp_path / "s.zarr"))
    with open_handover(STORE, plan, store) as handover, start_runner(params) as runner:
        run_plan(plan, params, runner, handover)
    used = sum(p.stat().st_size for p in (tmp_path / "s.zarr").rglob("*") if p.is_file())
    estimate = estimate_resources(plan, kind=STORE, n_workers=1).scratch_disk
    # Uncompressed chunks of the tiles groups touch: an upper bound, and not a loose one for
    # noisy data that compresses little.
    assert 0.3 * estimate < used <= estimate


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(
    association, tmp_path, capsys, monkeypatch
):
    import outlier_dask.api

    def broken(*args, **kwargs):
        raise RuntimeError("worker lost\nwhile writing")

    monkeypatch.setattr(outlier_dask.api, "detect_outliers", broken)
    argv = ["run", str(association.asn_path), "--output-dir", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == (
        "outlier-dask: error: RuntimeError: worker lost while writing "
        "(--debug shows the traceback)\n"
    )
    assert main(["--debug", *argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().endswith("outlier-dask: error: RuntimeError: worker lost while writing")


def test_bad_progress_free_quiet_run_prints_no_bar(association, tmp_path, capsys):
    status = main(
        ["run", str(association.asn_path), "-q", "--output-dir", str(tmp_path)]
        + ["--scheduler", "synchronous"]
    )
    captured = capsys.readouterr()
    assert status == 0
    assert "\r" not in captured.err
    assert "done in" not in captured.err


@pytest.mark.slow
def test_local_cluster_run_names_the_dashboard_once(association, tmp_path, caplog):
    import json
    import logging
    import re

    argv = ["run", str(association.asn_path), "--output-dir", str(tmp_path)]
    argv += ["--scheduler", "local-cluster", "--n-workers", "1"]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("outlier_dask")]
    dashboard = [m for m in messages if "dashboard" in m]
    assert len(dashboard) == 1
    assert "http://" in dashboard[0]
    # The distributed progress display logged each stage (with its task count when a poll of
    # the scheduler fell within the stage: one task per group).
    assert any(re.match(r"drizzle: (3/3 tasks )?done in", m) for m in messages)
    report = json.loads((tmp_path / "synth_outlier_report.json").read_text())
    assert report["scheduler"]["kind"] == "distributed"
    assert report["scheduler"]["dashboard"] in dashboard[0]


@pytest.mark.parametrize(
    ("interrupt", "status", "named"),
    [
        (KeyboardInterrupt(), 130, "SIGINT"),
        (KeyboardInterrupt("SIGINT"), 130, "SIGINT"),
        (KeyboardInterrupt("SIGTERM"), 143, "SIGTERM"),
    ],
)
def test_an_interrupt_exits_as_a_shell_reports_its_signal(
    monkeypatch, tmp_path, capsys, interrupt, status, named
):
    """Ctrl-C (a bare KeyboardInterrupt, or runtime/signals.py's) exits 130, SIGTERM 143."""
    import outlier_dask.api

    def interrupted(*args, **kwargs):
        raise interrupt

    monkeypatch.setattr(outlier_dask.api, "detect_outliers", interrupted)
    assert main(["run", str(tmp_path / "x_asn.json")]) == status
    assert capsys.readouterr().err.strip() == f"outlier-dask: interrupted ({named})"


def _class_made_while_interrupted(name: str) -> None:
    """Define a class whose attribute's ``__set_name__`` meets a signal, as a module's class
    body does when Ctrl-C comes during an import."""

    class Interrupted:
        def __set_name__(self, owner, attribute):
            raise KeyboardInterrupt(name)

    type("Table", (), {"pprint_include_names": Interrupted()})


@pytest.mark.parametrize("where", ["parser", "run"])
def test_an_interrupt_python_wrapped_in_another_error_is_reported_as_the_interrupt(
    monkeypatch, tmp_path, capsys, where
):
    """Python 3.11 wraps an exception raised in ``__set_name__`` in a ``RuntimeError``: a
    Ctrl-C while an import defines classes (seen in astropy's tables) gave that error's
    traceback and status 1."""
    import outlier_dask.api
    import outlier_dask.cli

    with pytest.raises((RuntimeError, KeyboardInterrupt)) as wrapped:  # RuntimeError on 3.11
        _class_made_while_interrupted("SIGTERM")
    assert str(interrupt_behind(wrapped.value)) == "SIGTERM"

    def interrupted(*args, **kwargs):
        _class_made_while_interrupted("SIGINT")

    if where == "parser":
        monkeypatch.setattr(outlier_dask.cli, "_parser", interrupted)
    else:
        monkeypatch.setattr(outlier_dask.api, "detect_outliers", interrupted)
    assert main(["run", str(tmp_path / "x_asn.json")]) == 130
    assert capsys.readouterr().err.strip() == "outlier-dask: interrupted (SIGINT)"


def test_interrupt_behind_follows_the_chain_a_traceback_shows():
    interrupt = KeyboardInterrupt("SIGTERM")
    caused = RuntimeError("wrapped")
    caused.__cause__ = interrupt
    assert interrupt_behind(caused) is interrupt
    during = OSError("cleanup failed while stopping")
    during.__context__ = interrupt
    assert interrupt_behind(during) is interrupt
    hidden = OSError("raised 'from None'")
    hidden.__context__ = interrupt
    hidden.__suppress_context__ = True
    assert interrupt_behind(hidden) is None
    assert interrupt_behind(ValueError("an error of its own")) is None
    looped = ValueError("a")
    looped.__context__ = TypeError("b")
    looped.__context__.__context__ = looped
    assert interrupt_behind(looped) is None


def test_info_marks_the_budget_s_choice_when_the_median_goes_to_disk_too():
    """``info`` shows the estimate of the place the budget chose, also when it kept the
    median on disk beside the stack to fit both workers."""
    from outlier_dask.cli import describe_plan
    from outlier_dask.engine.budget import estimate_run, plan_run
    from outlier_dask.engine.handover import STORE
    from outlier_dask.engine.plan import make_plan
    from outlier_dask.io.members import members_from_models
    from outlier_dask.parameters import OutlierParameters
    from outlier_dask.synthetic import make_models

    models, _ = make_models(n_exposures=6, n_detectors=2, detector_shape=(256, 256), seed=8)
    members = members_from_models(models)
    params = OutlierParameters(n_workers=2, in_memory=False)
    plan = make_plan(members, "b", params)
    store = estimate_run(plan, params, STORE, 2)
    text = describe_plan(
        plan_run(members, "b", params.replace(memory_limit=str(store.peak_memory)))
    )
    lines = text.splitlines()
    assert "  budget: the median kept on disk too, so that 2 worker(s) fit" in lines
    (chosen,) = [line for line in lines if line.endswith("<- chosen")]
    assert chosen.startswith("  in_memory=False: ")
    assert f"scratch disk {store.scratch_disk / 2**20:.1f} MiB" in chosen
