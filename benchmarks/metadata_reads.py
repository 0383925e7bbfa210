"""The set-up of a run at two revisions, alternated (A B A B): reading the members' metadata and
making the plan, timed in a fresh process each.

Each revision is checked out (``git worktree``) into a scratch folder, as ``compare_revisions.py``
does, and a fresh Python process (``PYTHONPATH`` pointing at that checkout) reads the
association's members the way ``outlier-dask run`` does (the readers it would start, the same
checks) and then makes the run's plan. It reports, per run:

- ``read_s``: wall seconds of the reading (including asdf loading its extensions once);
- ``read_cpu_s``: CPU seconds of the command's own process meanwhile (all its threads: the
  results the readers send back are unpickled there), the part that does not spread over
  more readers;
- ``plan_s``: wall seconds of the plan (output grid, pixel maps, regions, blocks), one core.

    python benchmarks/metadata_reads.py OLD_REV NEW_REV --asn path/to/asn.json --repeat 3

A survey association of hundreds of inputs is where these matter (``survey_scale.py --keep``
leaves its series' associations in ``--data-dir``). The summary gives the median of each figure
per revision and the range over the repeats.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from compare_revisions import checkout_revision, remove_checkouts, revisions_parser

#: Run in the checkout's interpreter: the command's reading and planning, timed.
_CHILD = """
import json, sys, time
from outlier_dask.api import _resolve_inputs
from outlier_dask.engine.plan import make_plan
from outlier_dask.parameters import OutlierParameters

params = OutlierParameters()
wall, cpu = time.perf_counter(), time.process_time()
product, members, _ = _resolve_inputs(sys.argv[1], params)
read_s, read_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
wall = time.perf_counter()
make_plan(members, product, params)
plan_s = time.perf_counter() - wall
print(json.dumps({"inputs": len(members), "read_s": read_s, "read_cpu_s": read_cpu_s,
                  "plan_s": plan_s}))
"""

FIGURES = ("read_s", "read_cpu_s", "plan_s")


def _measure(checkout: Path, asn: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(checkout), STPIPE_DISABLE_CRDS_STEPPARS="True")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, asn],
        env=env,
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{checkout.name}: reading failed\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    args = revisions_parser(__doc__.splitlines()[0], "the association to read").parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="metadata_reads-"))
    checkouts = {}
    try:
        for label, revision in (("A", args.old), ("B", args.new)):
            checkouts[label] = checkout_revision(revision, scratch)
        runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        for _ in range(args.repeat):
            for label in ("A", "B"):
                run = _measure(checkouts[label], args.asn)
                runs[label].append(run)
                shown = ", ".join(f"{name} {run[name]:.2f}" for name in FIGURES)
                print(f"{label} ({checkouts[label].name}): {shown}", flush=True)
        summary = {
            "A": args.old,
            "B": args.new,
            "inputs": runs["B"][0]["inputs"],
            "median": {
                label: {name: round(statistics.median(r[name] for r in rs), 3) for name in FIGURES}
                for label, rs in runs.items()
            },
            "range": {
                label: {
                    name: [round(min(r[name] for r in rs), 3), round(max(r[name] for r in rs), 3)]
                    for name in FIGURES
                }
                for label, rs in runs.items()
            },
        }
        print(json.dumps(summary, indent=2))
    finally:
        remove_checkouts(checkouts.values(), scratch)


if __name__ == "__main__":
    main()
