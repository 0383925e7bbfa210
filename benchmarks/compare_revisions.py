"""Wall time of ``outlier-dask run`` at two revisions of this repository, alternated (A B A B).

Each revision is checked out (``git worktree``) into a scratch folder and run from there with
``python -m outlier_dask run`` in a fresh process (``PYTHONPATH`` pointing at that checkout), on
the same association, in turns, so that the machine's drift affects both alike. The products of
both are compared (the OUTLIER masks must be identical) and the ratio of the medians of the wall
times is printed, with the range of every run.

    python benchmarks/compare_revisions.py OLD_REV NEW_REV --asn path/to/asn.json --repeat 4

The association is typically the ``medium`` case of ``compare_jwst.py`` (run that once to make
it). Extra options for both commands follow the two revisions, after ``--`` and the
options of this script: ``--asn A --repeat 2 -- OLD NEW --in-memory=False``.

With ``--stages`` both commands also print their ``--profile`` table, and the summary gives the
median wall seconds of each stage per revision: ``plan``, ``drizzle``, ``median``,
``blot+flag``, ``other`` (the rest of the call: reading the members' metadata, starting and
stopping the workers, the report) and ``outside`` (the process's wall time outside the call:
the interpreter's start, the imports, the exit), so that a difference can be placed.

With ``--pss N``, N more runs of each revision follow the timed ones (alternated, untimed):
the largest PSS (proportional set size: pages shared between the processes split among them)
summed over the command's process tree, sampled every 0.1 s. Reading PSS slows a run (see
``compare_jwst.TreeSampler``), so these runs are not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from compare_jwst import TreeSampler
from outlier_masks import outlier_masks, same_masks


def checkout_revision(revision: str, parent: Path) -> Path:
    path = parent / revision.replace("/", "_")
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), revision],
        check=True,
        capture_output=True,
    )
    return path


def revisions_parser(description: str, asn_help: str) -> argparse.ArgumentParser:
    """The options of a script that alternates two revisions on one association."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("old", help="revision A (e.g. a commit)")
    parser.add_argument("new", help="revision B (e.g. HEAD)")
    parser.add_argument("--asn", required=True, help=asn_help)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each revision")
    return parser


def remove_checkouts(checkouts: Iterable[Path], scratch: Path) -> None:
    """Remove the worktrees of :func:`checkout_revision` and the scratch folder that holds them."""
    for path in checkouts:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)],
            check=False,
            capture_output=True,
        )
    shutil.rmtree(scratch, ignore_errors=True)


#: The stages of the ``--profile`` table that partition a call's time ("write" is part of
#: "blot+flag"; older revisions print no "other" row).
_CALL_STAGES = ("plan", "drizzle", "median", "blot+flag")
_PROFILE_ROW = re.compile(r"^([a-z+]+)\s+([0-9.]+)\s+[0-9]+%$", re.MULTILINE)


def stage_seconds(profile_output: str, wall: float) -> dict[str, float]:
    """The stages of a ``--profile`` table, with ``other`` and ``outside`` derived from its
    ``total`` and the process's ``wall`` seconds."""
    rows = {name: float(value) for name, value in _PROFILE_ROW.findall(profile_output)}
    if "total" not in rows:
        raise SystemExit(f"no --profile table in the command's output:\n{profile_output}")
    stages = {name: rows.get(name, 0.0) for name in _CALL_STAGES}
    stages["other"] = rows["total"] - sum(stages.values())
    stages["outside"] = wall - rows["total"]
    return stages


#: Seconds between the PSS samples of ``--pss`` runs.
_PSS_INTERVAL_S = 0.1


def _run(
    checkout: Path, asn: str, out: Path, extra: list[str], sampler: TreeSampler | None = None
) -> tuple[float, str]:
    """Run the command of ``checkout`` once; its wall seconds and its output. ``sampler``
    (started and stopped here) samples the command's process tree meanwhile."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subprocess.run(["sync"], check=False)
    env = dict(os.environ, PYTHONPATH=str(checkout), STPIPE_DISABLE_CRDS_STEPPARS="True")
    if sampler is not None:
        sampler.start()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "outlier_dask", "-q", "run", asn, "--output-dir", str(out)]
        + ["--overwrite", *extra],
        env=env,
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if sampler is not None:
        sampler.stop()
    if done.returncode != 0:
        raise SystemExit(f"{checkout.name}: run failed\n{done.stderr}")
    return wall, done.stdout


def main() -> None:
    parser = revisions_parser(__doc__.splitlines()[0], "the association to run")
    parser.add_argument(
        "--stages", action="store_true", help="also the median seconds of each stage"
    )
    parser.add_argument(
        "--pss",
        type=int,
        default=0,
        metavar="N",
        help="then N untimed runs of each revision: the peak PSS of the process tree",
    )
    parser.add_argument("extra", nargs="*", help="options for both commands (after --)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="compare_revisions-"))
    checkouts = {}
    try:
        for label, revision in (("A", args.old), ("B", args.new)):
            checkouts[label] = checkout_revision(revision, scratch)
        times: dict[str, list[float]] = {"A": [], "B": []}
        stages: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        extra = [*args.extra, "--profile"] if args.stages else args.extra
        for _ in range(args.repeat):
            for label in ("A", "B"):
                out = scratch / f"out-{label}"
                wall, output = _run(checkouts[label], args.asn, out, extra)
                times[label].append(wall)
                if args.stages:
                    stages[label].append(stage_seconds(output, wall))
                print(f"{label} ({checkouts[label].name}): {wall:.2f} s", flush=True)
        peak_pss: dict[str, list[float]] = {"A": [], "B": []}
        for _ in range(args.pss):
            for label in ("A", "B"):
                sampler = TreeSampler(_PSS_INTERVAL_S, with_pss=True)
                _run(checkouts[label], args.asn, scratch / f"out-{label}", args.extra, sampler)
                peak_pss[label].append(round(sampler.peak_pss / 2**20, 1))
                print(f"{label}: peak PSS {peak_pss[label][-1]:.0f} MiB (untimed)", flush=True)
        first, second = outlier_masks(scratch / "out-A"), outlier_masks(scratch / "out-B")
        same = same_masks(first, second)
        flagged = sum(int(m.sum()) for m in second.values())
        medians = {k: statistics.median(v) for k, v in times.items()}
        summary = {
            "A": args.old,
            "B": args.new,
            "extra": args.extra,
            "seconds": times,
            "median_ratio_B_over_A": medians["B"] / medians["A"],
            "masks_identical": same,
            "flagged": flagged,
        }
        if args.pss:
            summary["peak_pss_mib"] = peak_pss
        if args.stages:
            summary["median_stage_seconds"] = {
                label: {
                    name: round(statistics.median(run[name] for run in runs), 3) for name in runs[0]
                }
                for label, runs in stages.items()
            }
        print(json.dumps(summary, indent=2))
        if not same:
            raise SystemExit("the two revisions flag different pixels")
    finally:
        remove_checkouts(checkouts.values(), scratch)


if __name__ == "__main__":
    main()
