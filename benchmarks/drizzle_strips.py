"""Drizzle a run's groups with members fed in strips of rows, and in one call each (A B A B).

Each group task of the engine drizzles its members onto the group's region. A member whose
outline lies inside the grid is fed to drizzle in strips of rows (``kernels/resample.py``), so
its pixel map exists one strip at a time; this script times the group mosaics both ways, in
alternation, in one process, and checks that they are identical. It reports per way the wall
and CPU seconds (user, system) and the minor page faults. Example::

    python benchmarks/drizzle_strips.py \
        $TMPDIR/outlier_dask_compare_jwst/medium/data/bench_medium_asn.json --repeat 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from dataclasses import replace

import numpy as np

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "True")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("asn", help="an image3 association")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of A B")
    args = parser.parse_args()

    from outlier_dask.engine.budget import plan_run
    from outlier_dask.engine.run import _task_info
    from outlier_dask.engine.tasks import DrizzleSettings, build_group_mosaic
    from outlier_dask.io.association import read_association
    from outlier_dask.io.members import members_from_files
    from outlier_dask.parameters import OutlierParameters

    product, entries = read_association(args.asn)
    planned = plan_run(members_from_files(entries), product, OutlierParameters())
    plan = planned.plan
    settings = DrizzleSettings.from_parameters(planned.params)
    inside = sum(sum(g.outlines_inside) for g in plan.groups)
    print(f"{len(plan.members)} members in {plan.n_groups} groups, {inside} inside the grid")
    ways = {
        "strips": list(plan.groups),
        "one call": [replace(g, outlines_inside=(False,) * len(g.members)) for g in plan.groups],
    }
    infos = {g.group_id: [_task_info(plan, i) for i in g.members] for g in plan.groups}
    seen: dict[str, list[dict[str, float]]] = {way: [] for way in ways}
    mosaics: dict[str, list] = {}
    for _ in range(args.repeat):
        for way, groups in ways.items():
            before = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            built = [build_group_mosaic(g, infos[g.group_id], settings) for g in groups]
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            seen[way].append(
                {
                    "wall": wall,
                    "user": after.ru_utime - before.ru_utime,
                    "system": after.ru_stime - before.ru_stime,
                    "faults": after.ru_minflt - before.ru_minflt,
                }
            )
            mosaics[way] = [(m.data, m.weight, m.threshold) for m in built]
            del built
    identical = all(
        np.array_equal(a[0], b[0], equal_nan=True) and np.array_equal(a[1], b[1]) and a[2] == b[2]
        for a, b in zip(mosaics["strips"], mosaics["one call"], strict=True)
    )
    print(f"mosaics identical: {identical}")
    print("| way | wall s | user s | system s | minor faults |")
    print("|---|---|---|---|---|")
    for way, rounds in seen.items():
        cells = [
            ", ".join(f"{r[key]:.2f}" if key != "faults" else f"{r[key]:.0f}" for r in rounds)
            for key in ("wall", "user", "system", "faults")
        ]
        print(f"| {way} | " + " | ".join(cells) + " |")
    for key in ("wall", "system", "faults"):
        ratio = statistics.median(r[key] for r in seen["strips"]) / max(
            statistics.median(r[key] for r in seen["one call"]), 1e-9
        )
        print(f"median {key}: strips / one call = {ratio:.2f}")


if __name__ == "__main__":
    main()
