"""B / A wall-time ratios pooled over several invocations of ``compare_revisions.py``.

One invocation's ratio of medians moves by ±10 % on this shared machine, so a target such as
"at most 10 % slower" is judged on many invocations together. Each invocation contributes its
A and B walls, run in turns (A B A B …); this script prints, over the chosen invocations:

- the mean of B / A over the pairs (each A run and the B run after it);
- the mean of the invocations' ratios of medians;
- that mean resampled (invocations drawn with replacement, then each one's pairs drawn with
  replacement, seeded), as a 95 % interval;
- how many invocations met the target.

The walls come from the invocations table of the performance page (rows ``| 22 (B = …) | A
walls | B walls | ratio | masks |``), from files holding ``compare_revisions.py``'s output
(its JSON summary), or both::

    python benchmarks/pooled_ratios.py --table docs/performance.md --rows 19-27
    python benchmarks/pooled_ratios.py run1.log run2.log --target 1.10
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

#: A row of the invocations table: number, B's revision, A's walls, B's walls, ratio.
_TABLE_ROW = re.compile(
    r"^\| (\d+) \(B = (\w+)[^|]*\| ([\d., ]+) \| ([\d., ]+) \| ([\d.]+) \|", re.MULTILINE
)


@dataclass(frozen=True)
class Invocation:
    """The walls (seconds) of one invocation, A's and B's in the order they ran."""

    label: str
    a: tuple[float, ...]
    b: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.a or len(self.a) != len(self.b):
            raise SystemExit(
                f"invocation {self.label}: {len(self.a)} A walls and {len(self.b)} B walls; "
                "the runs alternate, so there must be as many of each (at least one)"
            )

    @property
    def ratio(self) -> float:
        """B's median wall over A's."""
        return statistics.median(self.b) / statistics.median(self.a)


def invocations_from_table(page: str, first: int, last: int) -> list[Invocation]:
    """The rows numbered ``first`` to ``last`` of the invocations table in ``page``."""
    found = []
    for number, revision, a, b, _ in _TABLE_ROW.findall(page):
        if first <= int(number) <= last:
            walls_a = tuple(float(x) for x in a.split(","))
            walls_b = tuple(float(x) for x in b.split(","))
            found.append(Invocation(f"{number} ({revision})", walls_a, walls_b))
    return found


def invocation_from_output(path: Path) -> Invocation:
    """The walls in the JSON summary that ``compare_revisions.py`` printed into ``path``."""
    text = path.read_text()
    if "{" not in text:
        raise SystemExit(f"{path}: no JSON summary of compare_revisions.py in it")
    summary = json.loads(text[text.index("{") :])
    seconds = summary["seconds"]
    return Invocation(f"{path.name} ({summary['B']})", tuple(seconds["A"]), tuple(seconds["B"]))


def resampled_mean_ratio(
    invocations: list[Invocation], draws: int, seed: int = 0
) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the mean ratio of medians, resampled."""
    rng = random.Random(seed)
    means = []
    for _ in range(draws):
        ratios = []
        for inv in (rng.choice(invocations) for _ in invocations):
            pairs = [rng.randrange(len(inv.a)) for _ in inv.a]
            b = statistics.median(inv.b[i] for i in pairs)
            ratios.append(b / statistics.median(inv.a[i] for i in pairs))
        means.append(statistics.fmean(ratios))
    means.sort()
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outputs", nargs="*", type=Path, help="saved compare_revisions output")
    parser.add_argument("--table", type=Path, help="a page with the invocations table")
    parser.add_argument("--rows", default="1-9999", help="table rows to use, FIRST-LAST")
    parser.add_argument("--target", type=float, default=1.10, help="largest B / A that meets")
    parser.add_argument("--draws", type=int, default=20_000, help="resampling draws")
    args = parser.parse_args()
    invocations = []
    if args.table is not None:
        first, _, last = args.rows.partition("-")
        invocations += invocations_from_table(
            args.table.read_text(), int(first), int(last or first)
        )
    invocations += [invocation_from_output(path) for path in args.outputs]
    if not invocations:
        raise SystemExit("no invocations: give --table (and --rows) or compare_revisions output")
    for inv in invocations:
        print(f"{inv.label}: {len(inv.a)} pairs, median B / A {inv.ratio:.3f}")
    pairs = [b / a for inv in invocations for a, b in zip(inv.a, inv.b, strict=True)]
    low, high = resampled_mean_ratio(invocations, args.draws)
    # Judged on the ratio as the table prints it (two decimals).
    met = sum(round(inv.ratio, 2) <= args.target for inv in invocations)
    print(
        f"{len(invocations)} invocations, {len(pairs)} pairs: mean B / A per pair "
        f"{statistics.fmean(pairs):.3f}; mean of the ratios of medians "
        f"{statistics.fmean(inv.ratio for inv in invocations):.3f} (95 %: {low:.3f}-{high:.3f}); "
        f"{met} of {len(invocations)} at most {args.target:.2f}"
    )


if __name__ == "__main__":
    main()
