"""Score the ``reference`` and ``robust`` outlier rules against the generator's truth.

For each case a synthetic association is written with per-pixel truth
(``write_association(..., truth_files=True)``); both rules are run on it through
``outlier_dask.detect_outliers`` and their OUTLIER flags are scored:

* recall of cosmic-ray pixels by S/N bin (charge / ERR), of cosmic-ray events (an event
  counts when any of its pixels is flagged; events whose brightest pixel has S/N >= 5), and of
  hot pixels;
* false flags (flagged pixels with neither a cosmic ray nor a hot pixel) by exposure coverage
  (1, 2, 3, >= 4) and by source level (sky < 1, faint 1-50, bright >= 50 sky sigma);
* recall of S/N >= 5 cosmic-ray pixels by coverage.

Usage (from the repository root)::

    python benchmarks/detection_quality.py                      # all cases
    python benchmarks/detection_quality.py --case mosaic-2dither
    python benchmarks/detection_quality.py --figure docs/_static/detection_quality.png \\
        --markdown /tmp/detection_quality.md

Data are cached in ``--data-dir`` (default ``$TMPDIR/outlier_dask_detection_quality``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "True")

from outlier_masks import outlier_masks  # noqa: E402

from outlier_dask import detect_outliers  # noqa: E402
from outlier_dask.synthetic import load_truth, write_association  # noqa: E402

RULES = ("reference", "robust")
SNR_BINS = ((5.0, 10.0), (10.0, 30.0), (30.0, np.inf))
COVERAGE_BINS = ((1, 1), (2, 2), (3, 3), (4, 10**6))
SOURCE_BINS = {"sky": (0.0, 1.0), "faint": (1.0, 50.0), "bright": (50.0, np.inf)}

#: write_association options of each case (moderate sizes: the machine is shared).
CASES: dict[str, dict[str, Any]] = {
    # 2 dithers x 4 detectors: regions seen by 1 and 2 exposures, like a survey mosaic
    "mosaic-2dither": {
        "n_exposures": 2,
        "n_detectors": 4,
        "detector_shape": (512, 512),
        "hot_fraction": 5e-4,
        "background_level_in_meta": True,
        "seed": 11,
    },
    # 3 x 3 survey pointings x 2 dithers x 4 detectors (72 inputs), overlapping at the edges
    "survey-2dither": {
        "n_exposures": 2,
        "n_detectors": 4,
        "detector_shape": (256, 256),
        "pointings": (3, 3),
        "hot_fraction": 5e-4,
        "background_level_in_meta": True,
        "seed": 14,
    },
    # a deep pointing
    "deep-8dither": {
        "n_exposures": 8,
        "n_detectors": 1,
        "detector_shape": (512, 512),
        "hot_fraction": 5e-4,
        "background_level_in_meta": True,
        "seed": 12,
    },
    # NIRCam short-wavelength-like undersampled stars (FWHM 1.3 px), crowded
    "undersampled": {
        "n_exposures": 4,
        "n_detectors": 1,
        "detector_shape": (512, 512),
        "psf_fwhm_px": 1.3,
        "n_stars": 400,
        "hot_fraction": 5e-4,
        "background_level_in_meta": True,
        "seed": 13,
    },
}


def _association(case: str, data_dir: Path) -> Path:
    """The case's association JSON, written once (a marker records the options)."""
    folder = data_dir / case
    marker = folder / "options.json"
    options = CASES[case]
    if marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(options)):
        return folder / f"{case}_asn.json"
    started = time.perf_counter()
    written = write_association(folder, product_name=case, truth_files=True, **options)
    marker.write_text(json.dumps(options))
    print(f"{case}: data written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return written.asn_path


def _fraction(hits: int, total: int) -> float | None:
    return None if total == 0 else hits / total


def score(masks: dict[str, np.ndarray], truth: dict[str, Any]) -> dict[str, Any]:
    """Recall and false flags of one rule's masks (by member name) against the truth."""
    totals: dict[str, list[int]] = {}

    def add(key: str, hits: np.ndarray, among: np.ndarray) -> None:
        entry = totals.setdefault(key, [0, 0])
        entry[0] += int(np.count_nonzero(hits & among))
        entry[1] += int(np.count_nonzero(among))

    events_found = events_total = 0
    for name, frame in truth.items():
        flagged = masks[name.replace("_cal.fits", "_crf.fits")]
        snr, coverage = frame.cosmic_ray_snr, frame.coverage
        level = frame.source / frame.sky_sigma
        for low, high in SNR_BINS:
            add(f"cr_px_snr_{low:g}_{high:g}", flagged, (snr >= low) & (snr < high))
        add("cr_px_snr_ge5", flagged, snr >= 5)
        for low, high in COVERAGE_BINS:
            covered = (coverage >= low) & (coverage <= high)
            add(f"cr_px_snr_ge5_coverage_{low}", flagged, (snr >= 5) & covered)
            add(f"false_coverage_{low}", flagged & ~frame.outlier_mask, covered)
        for label, (low, high) in SOURCE_BINS.items():
            add(f"false_{label}", flagged & ~frame.outlier_mask, (level >= low) & (level < high))
        add("hot_px", flagged, frame.hot_pixel > 0)
        add("flags", flagged, np.ones_like(flagged))
        add("false", flagged & ~frame.outlier_mask, np.ones_like(flagged))
        events = frame.cosmic_ray_event
        n = int(events.max()) + 1
        peak = np.zeros(n)
        np.maximum.at(peak, events.ravel(), snr.ravel())
        found = np.bincount(events.ravel(), weights=flagged.ravel(), minlength=n) > 0
        counted = peak[1:] >= 5
        events_total += int(counted.sum())
        events_found += int((found[1:] & counted).sum())
    result: dict[str, Any] = {}
    for key, (hits, total) in totals.items():
        if key.startswith("false"):
            result[key] = hits  # a count of false flags (the total is the pixels in the bin)
        elif key == "flags":
            result[key] = hits
        else:
            result[key] = _fraction(hits, total)
            result[f"{key}_hits"] = hits
            result[f"{key}_n"] = total
    result["cr_events"] = _fraction(events_found, events_total)
    result["cr_events_hits"] = events_found
    result["cr_events_n"] = events_total
    return result


def run_case(case: str, data_dir: Path, n_workers: int) -> dict[str, Any]:
    """Run both rules on a case and score them; returns ``{rule: scores}``."""
    asn = _association(case, data_dir)
    truth = load_truth(asn)
    scores = {}
    for rule in RULES:
        with tempfile.TemporaryDirectory(dir=data_dir) as out:
            started = time.perf_counter()
            detect_outliers(
                str(asn),
                detection=rule,
                output_dir=out,
                work_dir=out,
                scheduler="processes",
                n_workers=n_workers,
                progress="off",
                report=False,
            )
            seconds = time.perf_counter() - started
            scores[rule] = {**score(outlier_masks(Path(out)), truth), "seconds": seconds}
        print(f"{case} {rule}: {_summary(scores[rule])}", file=sys.stderr)
    return scores


def _summary(s: dict[str, Any]) -> str:
    return (
        f"flags {s['flags']}, false {s['false']}, CR px recall (S/N>=5) "
        f"{s['cr_px_snr_ge5']:.3f} ({s['cr_px_snr_ge5_hits']}/{s['cr_px_snr_ge5_n']}), "
        f"events {s['cr_events']:.3f} ({s['cr_events_hits']}/{s['cr_events_n']}), "
        f"hot {s['hot_px']:.3f}"
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown(results: dict[str, dict[str, Any]]) -> str:
    """The results as Markdown tables (one per case)."""
    rows = [
        ("CR pixels S/N >= 5, recall", "cr_px_snr_ge5"),
        ("... pixels found", "cr_px_snr_ge5_hits"),
        ("... pixels injected", "cr_px_snr_ge5_n"),
        *[(f"... S/N {lo:g}-{hi:g}", f"cr_px_snr_{lo:g}_{hi:g}") for lo, hi in SNR_BINS],
        *[
            (f"... coverage {lo}{'+' if hi > 10 else ''}", f"cr_px_snr_ge5_coverage_{lo}")
            for lo, hi in COVERAGE_BINS
        ],
        ("CR events (peak S/N >= 5), recall", "cr_events"),
        ("hot pixels, recall", "hot_px"),
        ("flagged pixels", "flags"),
        ("false flags", "false"),
        *[
            (f"... coverage {lo}{'+' if hi > 10 else ''}", f"false_coverage_{lo}")
            for lo, hi in COVERAGE_BINS
        ],
        ("... on sky (< 1 sigma)", "false_sky"),
        ("... on faint sources (1-50 sigma)", "false_faint"),
        ("... on bright sources (>= 50 sigma)", "false_bright"),
    ]
    parts = []
    for case, scores in results.items():
        lines = [
            f"**{case}**: {_case_text(CASES[case])}",
            "",
            "| | reference | robust |",
            "|---|---:|---:|",
        ]
        for label, key in rows:
            values = [scores[rule].get(key) for rule in RULES]
            if all(v is None for v in values) or all(scores[r].get(f"{key}_n") == 0 for r in RULES):
                continue
            lines.append(f"| {label} | {' | '.join(_cell(v) for v in values)} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _case_text(options: dict[str, Any]) -> str:
    ny, nx = options["detector_shape"]
    extra = ", ".join(
        f"{k}={v}"
        for k, v in options.items()
        if k not in ("n_exposures", "n_detectors", "detector_shape", "seed")
    )
    return (
        f"{options['n_exposures']} exposures x {options['n_detectors']} detectors of "
        f"{ny} x {nx}, {extra}, seed {options['seed']}"
    )


def figure(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Recall (S/N >= 5) and false flags against coverage, both rules, one column per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4 * len(results), 6), squeeze=False)
    labels = ["1", "2", "3", "4+"]
    for column, (case, scores) in enumerate(results.items()):
        for rule, marker in zip(RULES, ("o", "s"), strict=True):
            recall = [scores[rule].get(f"cr_px_snr_ge5_coverage_{lo}") for lo, _ in COVERAGE_BINS]
            false = [scores[rule][f"false_coverage_{lo}"] for lo, _ in COVERAGE_BINS]
            x = [i for i, r in enumerate(recall) if r is not None]
            axes[0, column].plot(x, [recall[i] for i in x], marker=marker, label=rule)
            axes[1, column].plot(x, [max(false[i], 0.8) for i in x], marker=marker, label=rule)
        axes[0, column].set_title(case)
        axes[0, column].set_ylim(0, 1.02)
        axes[1, column].set_yscale("log")
        for row in (0, 1):
            axes[row, column].set_xticks(range(4), labels)
        axes[1, column].set_xlabel("exposures covering the pixel")
    axes[0, 0].set_ylabel("recall, CR pixels S/N >= 5")
    axes[1, 0].set_ylabel("false flags (pixels)")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    """Command line: run the cases, print the tables, optionally write JSON and the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="repeatable")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "outlier_dask_detection_quality",
    )
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the scores here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    parser.add_argument("--figure", type=Path, help="write the figure (PNG) here")
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    results = {case: run_case(case, args.data_dir, args.n_workers) for case in args.case or CASES}
    text = markdown(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.markdown:
        args.markdown.write_text(text)
    if args.figure:
        figure(results, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
