"""The demo: a synthetic association, a run, and recall/precision against the injected truth."""

from __future__ import annotations

import shutil
import tempfile
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
    "wide": {
        "n_exposures": 2,
        "n_detectors": 4,
        "detector_shape": (512, 512),
        "pointings": (3, 3),
    },
}
"""Synthetic associations of the demo: keyword options of ``write_association``."""


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
    keep_data: bool = False,
) -> DemoOutcome:
    """Make a synthetic association in ``work_dir``, flag it, and score the flags.

    Parameters
    ----------
    work_dir : Path
        The association goes to a new folder ``work_dir/demo-data-*``, the products (unless
        ``output_dir`` is set) to ``work_dir/products``.
    size : {"small", "medium", "wide"}
        ``DEMO_SIZES`` entry: one pointing of 4 dithers x 2 detectors of 512², 8 x 2 of
        2048², or a survey of 3 x 3 pointings x 2 dithers x 4 detectors of 512².
    seed : int
        Seed of the synthetic data.
    parameters : OutlierParameters, optional
        Parameters of the run.
    progress, plot
        As for :func:`~outlier_dask.detect_outliers`.
    keep_data : bool
        Keep the synthetic association; by default its folder is removed when the demo
        ends, successfully or not (the seed makes it again). The summary says which.

    Returns
    -------
    DemoOutcome
    """
    from outlier_dask.api import detect_outliers
    from outlier_dask.synthetic import write_association

    params = parameters or OutlierParameters()
    if params.output_dir == ".":
        params = params.replace(output_dir=str(work_dir / "products"), overwrite=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="demo-data-", dir=work_dir))
    try:
        started = time.perf_counter()
        asn = write_association(data_dir, seed=seed, **DEMO_SIZES[size])
        made = time.perf_counter() - started
        data_bytes = _folder_bytes(data_dir)
        started = time.perf_counter()
        result = detect_outliers(asn.asn_path, parameters=params, progress=progress, plot=plot)
        took = time.perf_counter() - started
    finally:
        if not keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
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
        f"products in {params.output_dir} ({_megabytes(_products_bytes(result))})",
        f"synthetic inputs kept in {data_dir} ({_megabytes(data_bytes)})"
        if keep_data
        else f"synthetic inputs ({_megabytes(data_bytes)}) removed; keep them with --keep-data",
    ]
    return DemoOutcome("\n".join(lines), recall, precision, result)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _products_bytes(result: Any) -> int:
    return sum(Path(p).stat().st_size for p in result.outputs)


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.0f} MB"
