"""Wall time of writing one ``_crf`` product, beside a plain copy of its ``_cal`` file.

Writes a synthetic ``_cal.fits`` of one detector (default 2048 x 2048, as NIRCam's), then, in
turns (copy, writer, copy, writer, ...), times ``shutil.copyfile`` of it (the floor: every
byte read and written once, by the kernel) and
:func:`outlier_dask.io.flagged_fits.write_flagged_fits` with a mask of about 1 % outliers and
the default run's history entries (the product as ``outlier-dask run`` writes it). Prints the
range of each over the repeats and the range of their ratio (writer / copy, per turn).

    python benchmarks/product_writer.py --size 2048 --repeat 15

Run it at two revisions (e.g. from two worktrees) to compare writers; the ratio to the copy
made in the same invocation is what carries across a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from outlier_dask.io.flagged_fits import write_flagged_fits
from outlier_dask.parameters import OutlierParameters
from outlier_dask.synthetic import write_association


def _history() -> dict:
    """The writer's keyword for history entries, where this revision has it."""
    try:
        from outlier_dask.io.provenance import provenance_history
    except ImportError:  # a revision before products recorded their provenance
        return {}
    return {"history": provenance_history(OutlierParameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="detector edge, pixels")
    parser.add_argument("--repeat", type=int, default=15, help="turns of copy and writer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        association = write_association(
            folder / "data",
            n_exposures=1,
            n_detectors=1,
            detector_shape=(args.size, args.size),
            seed=5,
        )
        source = association.cal_paths[0]
        mask = np.random.default_rng(1).random((args.size, args.size)) < 0.01
        extra = _history()
        copies, writes = [], []
        for turn in range(args.repeat):
            started = time.perf_counter()
            shutil.copyfile(source, folder / f"copy_{turn}.fits")
            copies.append(time.perf_counter() - started)
            started = time.perf_counter()
            write_flagged_fits(source, mask, folder / f"out_{turn}_crf.fits", **extra)
            writes.append(time.perf_counter() - started)
            (folder / f"copy_{turn}.fits").unlink()
            (folder / f"out_{turn}_crf.fits").unlink()
    ratios = [w / c for w, c in zip(writes, copies, strict=True)]
    print(f"{args.size} x {args.size} _cal file, {args.repeat} turns")
    for name, values in (("copyfile", copies), ("write_flagged_fits", writes)):
        print(
            f"{name:>20}: {min(values) * 1e3:7.1f} - {max(values) * 1e3:7.1f} ms"
            f" (median {statistics.median(values) * 1e3:.1f})"
        )
    print(
        f"{'writer / copy':>20}: {min(ratios):7.2f} - {max(ratios):7.2f}"
        f" (median {statistics.median(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
