"""The demo: a synthetic association, a run, and recall/precision against the injected truth."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stdatamodels.jwst import datamodels

from outlier_dask.kernels.dq import OUTLIER
from outlier_dask.parameters import OutlierParameters

__all__ = ["DEMO_SIZES", "DemoOutcome", "run_demo", "score_flags"]

DEMO_SIZES = {
    "small": {"n_exposures": 4, "n_detectors": 2, "detector_shape": (512, 512)},
    "medium": {"n_exposures": 8, "n_detectors": 2, "detector_shape": (2048, 2048)},
}


def score_flags(flagged: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """``(true positives, false positives, false negatives)`` of a flag mask against truth."""
    return (
        int(np.count_nonzero(flagged & truth)),
        int(np.count_nonzero(flagged & ~truth)),
        int(np.count_nonzero(~flagged & truth)),
    )


@dataclass
class DemoOutcome:
    """What the demo found.

    Attributes
    ----------
    summary : str
        A short report: inputs, time, recall and precision of the OUTLIER flags.
    recall, precision : float
        Of the OUTLIER flags against the injected cosmic-ray pixels.
    result : OutlierResult
        The run (outputs, report, timings).
    """

    summary: str
    recall: float
    precision: float
    result: Any

    def __str__(self) -> str:
        return self.summary


def run_demo(
    work_dir: Path,
    *,
    size: str = "small",
    seed: int = 0,
    parameters: OutlierParameters | None = None,
    progress: bool | str = "auto",
    plot: bool = False,
) -> DemoOutcome:
    """Make a synthetic association in ``work_dir``, flag it, and score the flags.

    Parameters
    ----------
    work_dir : Path
        The association goes to ``work_dir/data``, the products (unless ``output_dir`` is
        set) to ``work_dir/products``.
    size : {"small", "medium"}
        ``DEMO_SIZES`` entry.
    seed : int
        Seed of the synthetic data.
    parameters : OutlierParameters, optional
        Parameters of the run.
    progress, plot
        As for :func:`~outlier_dask.detect_outliers`.

    Returns
    -------
    DemoOutcome
    """
    from outlier_dask.api import detect_outliers
    from outlier_dask.synthetic import write_association

    params = parameters or OutlierParameters()
    if params.output_dir == ".":
        params = params.replace(output_dir=str(work_dir / "products"), overwrite=True)
    started = time.perf_counter()
    asn = write_association(work_dir / "data", seed=seed, **DEMO_SIZES[size])
    made = time.perf_counter() - started
    started = time.perf_counter()
    result = detect_outliers(asn.asn_path, parameters=params, progress=progress, plot=plot)
    took = time.perf_counter() - started
    tp = fp = fn = 0
    for path in result.outputs:
        with datamodels.ImageModel(str(path)) as model:
            flagged = (model.dq & OUTLIER) != 0
        truth = asn.truth[Path(path).name.replace(f"_{params.suffix}.fits", "_cal.fits")]
        a, b, c = score_flags(flagged, truth)
        tp, fp, fn = tp + a, fp + b, fn + c
    recall = tp / max(tp + fn, 1)
    precision = tp / max(tp + fp, 1)
    lines = [
        f"synthetic association: {len(result.outputs)} inputs ({size}), made in {made:.1f} s",
        f"outlier detection: {took:.1f} s, {sum(result.flagged.values())} pixels flagged",
        f"recall    {recall:.3f}  ({tp} of {tp + fn} injected cosmic-ray pixels flagged)",
        f"precision {precision:.3f}  ({fp} flagged pixels are not injected cosmic rays)",
        f"products in {params.output_dir}",
    ]
    return DemoOutcome("\n".join(lines), recall, precision, result)
