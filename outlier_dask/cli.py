"""The ``outlier-dask`` command: ``run`` an association, show its plan (``info``), or ``demo``.

Every parameter of :class:`~outlier_dask.parameters.OutlierParameters` is an option in dash
form and in ``strun``'s underscore form (``--in-memory`` and ``--in_memory``), taking
``--name value`` or ``--name=value``; booleans also take ``--in_memory=False`` (and the option
alone means True). An unknown option is refused with the nearest known one as a suggestion.
``--config FILE`` reads a YAML or ``stpipe`` ASDF parameter file first; options given on the
command line win.

Exit statuses: 0 success (or the step skipped, as the pipeline does with one input), 1 failure,
2 usage error (bad option or parameter value), 130 interrupted by Ctrl-C (SIGINT) and 143
stopped by SIGTERM, as a shell reports a process ended by those signals. Errors are one line
on stderr naming the file, input or parameter; ``--debug`` adds the traceback.

The installed command (and ``python -m outlier_dask``) calls
:func:`outlier_dask.command.command`, which sets up the process it owns
(:mod:`outlier_dask.runtime.process`) before it imports this module, and then runs
:func:`main`. This module imports no numpy itself.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import Field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from outlier_dask.command import interrupt_behind, report_interrupt
from outlier_dask.runtime.signals import stop_if_interrupted

if TYPE_CHECKING:
    from outlier_dask.parameters import OutlierParameters

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

_STAGE_NAMES = {"blot_flag": "blot+flag"}

log = logging.getLogger("outlier_dask")


def _parameter_fields() -> tuple[Field, ...]:
    # Imported on use: the parameters module loads numpy (see the module docstring).
    from outlier_dask.parameters import OutlierParameters

    return fields(OutlierParameters)


def _add_parameter_options(parser: argparse.ArgumentParser) -> None:
    # The meanings and default wordings are those of the parameters module (imported on use).
    from outlier_dask.parameters import PARAMETER_HELP, parameter_default_text

    group = parser.add_argument_group(
        "parameters",
        "the reference step's parameters (same names, defaults and string forms), then this "
        "project's execution parameters; each also in strun's spelling (--in_memory=False)",
    )
    for f in _parameter_fields():
        if not f.init:
            continue
        option = "--" + f.name.replace("_", "-")
        help_text = f"{PARAMETER_HELP[f.name]} (default: {parameter_default_text(f.name)})"
        # ``%`` would be read as a format by argparse.
        help_text = help_text.replace("%", "%%")
        kind = (
            {"nargs": "?", "const": "True", "metavar": "True|False"}
            if f.type == "bool"
            else {"metavar": "VALUE"}
        )
        group.add_argument(option, dest=f.name, default=None, help=help_text, **kind)
        if "_" in f.name:
            # strun's spelling, the same option; left out of the help, which says so once.
            group.add_argument(
                "--" + f.name, dest=f.name, default=None, help=argparse.SUPPRESS, **kind
            )


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="parameter file: YAML (parameters at the top level or under 'parameters:') or "
        "the ASDF parameter file stpipe writes for OutlierDetectionStep; options given "
        "here override it",
    )


def _common_options(defaults: bool) -> argparse.ArgumentParser:
    """-v/-q/--debug, accepted before and after the command."""
    # After the command the defaults are suppressed, so they never undo a value given before.
    default = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=default(0), help="debug log records"
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="warnings and errors only; no progress display",
    )
    common.add_argument(
        "--debug", action="store_true", default=default(False), help="show tracebacks of errors"
    )
    return common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outlier-dask",
        description="Flag cosmic rays and other outliers in dithered JWST images "
        "(the JWST pipeline's outlier_detection step, imaging mode), on Dask.",
        parents=[_common_options(defaults=True)],
    )
    after = _common_options(defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        parents=[after],
        help="flag outliers in an association or _cal files",
        description="Flag outliers and write <stem>_<suffix>.fits products, and the run "
        "report <product>_outlier_report.json, in --output-dir.",
    )
    run.add_argument("inputs", nargs="+", help="an image3 association JSON, or _cal.fits files")
    _add_config_option(run)
    _add_output_options(run)
    _add_parameter_options(run)
    info = commands.add_parser(
        "info",
        parents=[after],
        help="show the plan of a run without running it",
        description="Read the inputs' metadata and show the plan: inputs and groups, the "
        "output grid, tiles and blocks, and the estimated peak memory and scratch disk with "
        "in_memory True and False.",
    )
    info.add_argument("inputs", nargs="+", help="an image3 association JSON, or _cal.fits files")
    _add_config_option(info)
    _add_parameter_options(info)
    demo = commands.add_parser(
        "demo",
        parents=[after],
        help="run on a built-in synthetic association and score against its truth",
        description="Make a synthetic NIRCam-like association (no download), flag it, and "
        "print recall and precision against the injected cosmic rays.",
    )
    demo.add_argument(
        "--size",
        choices=("small", "medium", "wide"),
        default="small",
        help="small: 4 exposures x 2 detectors of 512 x 512 pixels; medium: 8 x 2 of "
        "2048 x 2048; wide: a survey of 3 x 3 pointings x 2 exposures x 4 detectors of "
        "512 x 512 (default: small)",
    )
    demo.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the synthetic inputs (their folder is printed); by default they are removed "
        "at the end and only the products stay",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    _add_config_option(demo)
    _add_output_options(demo)
    _add_parameter_options(demo)
    return parser


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", action="store_true", help="print the wall time of each stage after the run"
    )
    parser.add_argument(
        "--plot",
        action="store_true",
        help="also write <product>_outlier_report.png: the median with the flagged pixels, "
        "and the flagged fraction per input (needs matplotlib)",
    )


def _parameters(args: argparse.Namespace) -> OutlierParameters:
    from outlier_dask.config import parameters_with_file

    given = {
        f.name: getattr(args, f.name)
        for f in _parameter_fields()
        if f.init and getattr(args, f.name, None) is not None
    }
    return parameters_with_file(getattr(args, "config", None), given)


#: Libraries whose records below WARNING are not shown (distributed sets its loggers' levels
#: when it is imported, after the command has set up logging, so levels alone do not hold).
_NOISY_LOGGERS = ("stpipe", "distributed", "asdf", "bokeh", "tornado")


def _quiet_libraries(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.name.startswith(_NOISY_LOGGERS)


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    for handler in logging.getLogger().handlers:
        if _quiet_libraries not in handler.filters:
            handler.addFilter(_quiet_libraries)


#: Timings that are task-seconds summed over the workers, inside a wall-time stage: shown
#: apart, since adding them to the stages would count the same seconds twice.
_TASK_SECONDS = {"write": "blot+flag"}


def profile_table(timings: dict[str, float]) -> str:
    """The per-stage wall times of a run as an aligned text table (``--profile``).

    The wall-time rows (``plan``, the stages, ``other`` for the rest of the call) add up to
    ``total``; task-seconds spent inside a stage (``write``, summed over the workers that
    wrote products during blot+flag) follow below, labelled, outside the sum.
    """
    total = timings.get("total", sum(timings.values()))
    rows = [
        (_STAGE_NAMES.get(k, k), v)
        for k, v in timings.items()
        if k != "total" and k not in _TASK_SECONDS
    ]
    other = total - sum(v for _, v in rows)
    if other > 0.0005:
        rows.append(("other", other))
    lines = [f"{'stage':<12}{'seconds':>10}{'share':>8}"]
    for name, seconds in rows + [("total", total)]:
        share = f"{100 * seconds / total:.0f}%" if total > 0 else "-"
        lines.append(f"{name:<12}{seconds:>10.2f}{share:>8}")
    if other > 0.0005:
        lines.append("(other: scheduler start and stop, scratch folder, report)")
    for key, stage in _TASK_SECONDS.items():
        if key in timings:
            lines.append(
                f"{key} (task-seconds within {stage}, summed over workers): {timings[key]:.2f}"
            )
    return "\n".join(lines)


def _print_result(result: Any, profile: bool) -> None:
    total = sum(result.flagged.values())
    print(f"{result.status}: {total} pixels flagged in {len(result.flagged)} inputs")
    for path in result.outputs:
        print(f"  wrote {path}")
    for extra in (result.report_path, result.plot_path):
        if extra is not None:
            print(f"  wrote {extra}")
    if profile:
        print(profile_table(result.timings))


def _progress(args: argparse.Namespace) -> str:
    return "off" if args.quiet else "auto"


def _run(args: argparse.Namespace) -> int:
    from outlier_dask.api import detect_outliers

    params = _parameters(args)
    result = detect_outliers(
        args.inputs, parameters=params, progress=_progress(args), plot=args.plot
    )
    _print_result(result, args.profile)
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    from outlier_dask.api import _resolve_inputs
    from outlier_dask.engine.budget import plan_run

    params = _parameters(args)
    product, members, _ = _resolve_inputs(args.inputs, params)
    if len(members) < 2:
        print(f"{len(members)} input: outlier detection would be skipped (it needs two)")
        return EXIT_OK
    print(describe_plan(plan_run(members, product, params)))
    return EXIT_OK


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def describe_plan(planned: Any) -> str:
    """What ``outlier-dask info`` prints: inputs, groups, grid, tiles, blocks, and the
    budget's decisions with their estimate (a :class:`~outlier_dask.engine.budget.PlannedRun`,
    the plan ``run`` would execute)."""
    from outlier_dask.engine.budget import estimate_run
    from outlier_dask.engine.estimate import python_processes
    from outlier_dask.engine.handover import handover_kind
    from outlier_dask.geometry.windows import tile_ranges
    from outlier_dask.report import _pixel_scale_arcsec

    plan, params, budget = planned.plan, planned.params, planned.budget
    ny, nx = plan.grid_shape
    lines = [
        f"product: {plan.product_name}",
        f"inputs: {len(plan.members)} in {plan.n_groups} group(s)",
    ]
    for group in plan.groups:
        (y0, y1), (x0, x1) = group.region
        lines.append(
            f"  group {group.group_id}: {len(group.members)} member(s), region "
            f"{y1 - y0} x {x1 - x0} px at (y, x) = ({y0}, {x0})"
        )
        for i in group.members:
            member = plan.members[i]
            lines.append(f"    {member.name}  {member.shape[0]} x {member.shape[1]} px")
    scale = _pixel_scale_arcsec(plan.grid_wcs, plan.grid_shape)
    if scale is None:
        lines.append(f"median grid: {ny} x {nx} px, the inputs' own frame (resample_data=False)")
    else:
        lines.append(f"median grid: {ny} x {nx} px, {scale:.4f} arcsec/px")
    ty, tx = plan.tile_shape
    n_tiles = len(tile_ranges(ny, ty)) * len(tile_ranges(nx, tx))
    lines.append(f"tiles: {n_tiles} of up to {ty} x {tx} px")
    lines.append(
        f"blocks: {len(plan.blocks)} of up to {params.block_size} x {params.block_size} input "
        f"px ({len(plan.blocks) / len(plan.members):.1f} per input)"
    )
    workers = budget.n_workers
    processes = python_processes(params.scheduler, workers)
    lines.append(f"workers: {workers} ({params.scheduler}; {processes} Python process(es))")
    lines.append(f"memory limit: {_bytes(budget.memory_limit)}")
    lines.extend(f"  budget: {note}" for note in budget.notes)
    lines.append("estimated needs (rough, within a factor of about 2):")
    for in_memory in (True, False):
        # For its own setting, the budget's choice (it may keep the median on disk too).
        kind = (
            budget.handover
            if in_memory == budget.in_memory
            else handover_kind(params.scheduler, in_memory)
        )
        estimate = (
            budget.estimate
            if kind == budget.handover
            else estimate_run(plan, params, kind, workers)
        )
        chosen = "  <- chosen" if kind == budget.handover else ""
        lines.append(
            f"  in_memory={in_memory}: peak memory {_bytes(estimate.peak_memory)}, scratch "
            f"disk {_bytes(estimate.scratch_disk)}{chosen}"
        )
        parts = ", ".join(f"{name} {_bytes(size)}" for name, size in estimate.parts.items())
        lines.append(f"    ({parts})")
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> int:
    from outlier_dask.demo import run_demo

    params = _parameters(args)
    work = Path(params.work_dir) if params.work_dir else Path(tempfile.mkdtemp(prefix="od-demo-"))
    outcome = run_demo(
        work,
        size=args.size,
        seed=args.seed,
        parameters=params,
        progress=_progress(args),
        plot=args.plot,
        keep_data=args.keep_data,
    )
    print(outcome.summary)
    if args.profile:
        print(profile_table(outcome.result.timings))
    return EXIT_OK


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


#: Options of the commands besides the parameters (for the suggestion on a mistyped option).
_OTHER_OPTIONS = (
    "--config",
    "--profile",
    "--plot",
    "--size",
    "--seed",
    "--verbose",
    "--quiet",
    "--debug",
    "--help",
)


def known_options() -> list[str]:
    """Every long option of the commands, parameters in both spellings."""
    names = [f.name for f in _parameter_fields() if f.init]
    dashed = ["--" + name.replace("_", "-") for name in names]
    return [*dashed, *("--" + name for name in names if "_" in name), *_OTHER_OPTIONS]


def unknown_options_message(unknown: Sequence[str]) -> str:
    """The usage error for arguments no command takes, with the nearest option to the first.

    Parameters
    ----------
    unknown : sequence of str
        The arguments argparse could not place, e.g. ``["--snrr", "5 4"]``.
    """
    message = f"unrecognized arguments: {' '.join(unknown)}"
    for argument in unknown:
        if argument.startswith("--"):
            name = argument.split("=", 1)[0]
            close = difflib.get_close_matches(name, known_options(), n=1, cutoff=0.6)
            if close:
                return f"{message} (did you mean {close[0]}?)"
            break
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """The ``outlier-dask`` command in the calling process; returns the exit status."""
    try:
        # Building the parser imports the parameters (numpy): an interrupt may come here too.
        parser = _parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            parser.error(unknown_options_message(unknown))
        _setup_logging(args)
        status = _dispatch(args)
        stop_if_interrupted()  # swallowed by a library: it still ends the command
        return status
    except BaseException as error:  # an interrupt, or an error Python raised from one
        interrupt = interrupt_behind(error)
        if interrupt is None:
            raise
        return report_interrupt(interrupt)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command; a failure becomes its one-line message and exit status."""
    commands = {"run": _run, "info": _info, "demo": _demo}
    try:
        return commands[args.command](args)
    except Exception as exc:  # noqa: BLE001 - every failure ends with one line, not a traceback
        if interrupt_behind(exc) is not None:
            raise  # a signal ended it: reported as the interrupt (main)
        status, message = _status_and_message(exc)
        if args.debug:
            traceback.print_exception(exc)
        elif status == EXIT_FAILURE and message.startswith(f"{type(exc).__name__}: "):
            message += " (--debug shows the traceback)"
        print(f"outlier-dask: error: {message}", file=sys.stderr)
        return status


def _status_and_message(exc: Exception) -> tuple[int, str]:
    """Exit status and one-line message of a failure."""
    from outlier_dask.parameters import ParameterError

    if isinstance(exc, ParameterError):
        return EXIT_USAGE, _one_line(exc)
    from outlier_dask.runtime.schedulers import WorkerDiedError

    if isinstance(exc, ValueError | OSError | WorkerDiedError):
        # Ours name the file, input, parameter or what to do; so do the OSErrors of opening
        # files.
        return EXIT_FAILURE, _one_line(exc)
    return EXIT_FAILURE, f"{type(exc).__name__}: {_one_line(exc)}"


if __name__ == "__main__":
    from outlier_dask.command import command

    sys.exit(command())
