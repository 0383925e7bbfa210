"""The ``outlier-dask`` command: ``run`` an association, or ``demo`` on synthetic data.

Every parameter of :class:`~outlier_dask.parameters.OutlierParameters` is an option in dash
form taking ``--name value`` or ``--name=value``; booleans also take the ``strun`` spelling
``--in-memory=False`` (and ``--in-memory`` alone means True).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import MISSING, fields
from pathlib import Path

from outlier_dask.parameters import OutlierParameters, ParameterError

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

_HELP = {
    "weight_type": "drizzle weights: ivm (1/VAR_RNOISE) or exptime",
    "pixfrac": "drop size as a fraction of an input pixel, (0, 1]",
    "kernel": "drizzle kernel: square, point or turbo",
    "fillval": "value of mosaic pixels with no weight (NAN, INDEF or a number)",
    "maskpt": "fraction (0-1) of a mosaic's sigma-clipped mean weight below which it is ignored",
    "snr": "two signal-to-noise thresholds, 'first second'",
    "scale": "two multipliers of the blot derivative, 'first second'",
    "backg": "background added to the blotted median, in SCI units",
    "save_intermediate_results": "also write _outlier_i2d, _median and _blot files",
    "resample_data": "drizzle groups to a common grid (False: median of the inputs as they are)",
    "good_bits": "DQ bits treated as good (astropy bit-flag syntax)",
    "in_memory": "keep mosaics and median in memory (False: Zarr store in --work-dir)",
    "pixmap_stepsize": "reference's sparse pixel-map step in pixels (1: checked spline)",
    "pixmap_order": "spline order (1 or 3) with --pixmap-stepsize > 1",
    "pixmap_tolerance": "largest pixel-map interpolation error allowed, output pixels (0: exact)",
    "output_dir": "folder for the products",
    "suffix": "product suffix: <stem>_<suffix>.fits",
    "work_dir": "parent folder of scratch data (default: system temp dir); removed after",
    "scheduler": "processes, threads, synchronous, local-cluster or tcp://host:port",
    "n_workers": "parallel workers (default: CPUs available)",
    "threads_per_worker": "threads per worker with local-cluster",
    "memory_limit": "memory budget, e.g. 4GiB (local-cluster: split among workers)",
    "tile_size": "tile edge of mosaics and median, pixels",
    "block_size": "block edge of the per-input blot and compare, pixels",
    "overwrite": "replace existing products",
}

_BOOL_FIELDS = {f.name for f in fields(OutlierParameters) if f.type == "bool"}


def _add_parameter_options(parser: argparse.ArgumentParser) -> None:
    for f in fields(OutlierParameters):
        if not f.init:
            continue
        default = None if f.default is MISSING else f.default
        option = "--" + f.name.replace("_", "-")
        help_text = f"{_HELP.get(f.name, '')} (default: {default})"
        if f.name in _BOOL_FIELDS:
            parser.add_argument(
                option, dest=f.name, nargs="?", const="True", default=None, help=help_text
            )
        else:
            parser.add_argument(option, dest=f.name, default=None, help=help_text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outlier-dask",
        description="Flag cosmic rays and other outliers in dithered JWST images "
        "(the JWST pipeline's outlier_detection step, imaging mode), on Dask.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="flag outliers in an association or _cal files")
    run.add_argument("inputs", nargs="+", help="an image3 association JSON, or _cal.fits files")
    _add_parameter_options(run)
    demo = commands.add_parser(
        "demo", help="run on a built-in synthetic association and score against its truth"
    )
    demo.add_argument("--size", choices=("small", "medium"), default="small")
    demo.add_argument("--seed", type=int, default=0)
    _add_parameter_options(demo)
    return parser


def _parameters(args: argparse.Namespace) -> OutlierParameters:
    given = {
        f.name: getattr(args, f.name)
        for f in fields(OutlierParameters)
        if f.init and getattr(args, f.name, None) is not None
    }
    return OutlierParameters.from_mapping(given)


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("stpipe", "distributed", "asdf"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _run(args: argparse.Namespace) -> int:
    from outlier_dask.api import detect_outliers

    params = _parameters(args)
    result = detect_outliers(args.inputs, parameters=params)
    total = sum(result.flagged.values())
    print(f"{result.status}: {total} pixels flagged in {len(result.flagged)} inputs")
    for path in result.outputs:
        print(f"  wrote {path}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from outlier_dask.demo import run_demo

    params = _parameters(args)
    work = Path(params.work_dir) if params.work_dir else Path(tempfile.mkdtemp(prefix="od-demo-"))
    report = run_demo(work, size=args.size, seed=args.seed, parameters=params)
    print(report)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``outlier-dask`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return _run(args) if args.command == "run" else _demo(args)
    except ParameterError as exc:
        print(f"outlier-dask: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"outlier-dask: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("outlier-dask: interrupted", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
