"""The run report: parameters, versions, timings and per-input flag statistics, as JSON.

:func:`build_report` makes a plain dict (also ``OutlierResult.report``);
:func:`write_report` writes it as ``<product>_outlier_report.json`` next to the products,
atomically like every product.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from outlier_dask.io.outputs import atomic_path
from outlier_dask.parameters import DETECTION_PIECES, OutlierParameters

__all__ = ["REPORT_VERSION", "build_report", "report_path", "versions", "write_report"]

#: Increases when a key of the report changes meaning or disappears.
REPORT_VERSION = 1

_PACKAGES = (
    "outlier-dask",
    "jwst",
    "stcal",
    "drizzle",
    "dask",
    "distributed",
    "numpy",
    "gwcs",
    "stdatamodels",
    "zarr",
)


def report_path(output_dir: str | Path, product: str) -> Path:
    """``<output_dir>/<product>_outlier_report.json``."""
    return Path(output_dir) / f"{product}_outlier_report.json"


def versions() -> dict[str, str | None]:
    """Versions of Python and of the packages that decide the result (None: not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name.replace("-", "_")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name.replace("-", "_")] = None
    return found


def parameter_values(params: OutlierParameters) -> dict[str, Any]:
    """Every parameter as given (the dataclass's init fields), JSON-ready."""
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.init}


def _fraction(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _pixel_scale_arcsec(grid_wcs: Any, grid_shape: tuple[int, int]) -> float | None:
    if grid_wcs is None:
        return None
    from outlier_dask.geometry.output_grid import pixel_scale_at

    ny, nx = grid_shape
    ra, dec = grid_wcs((nx - 1) / 2, (ny - 1) / 2, with_bounding_box=False)
    return float(pixel_scale_at(grid_wcs, float(ra), float(dec)) * 3600.0)


def build_report(
    *,
    product: str,
    status: str,
    params: OutlierParameters,
    timings: dict[str, float],
    inputs: list[dict[str, Any]],
    plan: Any = None,
    runner: Any = None,
) -> dict[str, Any]:
    """The report of one run, as JSON-ready values.

    Parameters
    ----------
    product : str
        Product name (the association's, or that of a list of files:
        :func:`~outlier_dask.io.association.product_name_for_files`).
    status : {"COMPLETE", "SKIPPED"}
        Outcome.
    params : OutlierParameters
        Parameters used.
    timings : dict of str to float
        Wall seconds per stage.
    inputs : list of dict
        Per input, from :func:`input_entry`.
    plan : Plan, optional
        The plan (adds the grid: shape, pixel scale, groups, tiles, blocks).
    runner : Runner, optional
        The scheduler used (adds its kind, workers and dashboard).

    Returns
    -------
    dict
        Keys ``report_version``, ``product``, ``status``, ``created`` (UTC, ISO 8601),
        ``parameters``, ``detection`` (the outlier rule and the value of each of its pieces),
        ``versions``, ``timings`` (seconds), ``scheduler``, ``grid``, ``inputs`` and
        ``totals``.
    """
    flagged = sum(i["flagged"] for i in inputs)
    valid = sum(i["valid_pixels"] or 0 for i in inputs)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "product": product,
        "status": status,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "parameters": parameter_values(params),
        "detection": {
            "rule": params.detection,
            **{name: params.detection_piece(name) for name in DETECTION_PIECES[params.detection]},
        },
        "versions": versions(),
        "timings": {k: round(float(v), 4) for k, v in timings.items()},
        "scheduler": None,
        "grid": None,
        "inputs": inputs,
        "totals": {
            "inputs": len(inputs),
            "flagged": flagged,
            "valid_pixels": valid,
            "flagged_fraction": _fraction(flagged, valid),
        },
    }
    if runner is not None:
        report["scheduler"] = {
            "kind": runner.kind,
            "n_workers": runner.n_workers,
            "dashboard": runner.dashboard_link,
        }
    if plan is not None:
        report["grid"] = {
            "shape": list(plan.grid_shape),
            "pixel_scale_arcsec": _pixel_scale_arcsec(plan.grid_wcs, plan.grid_shape),
            "groups": [
                {
                    "group_id": g.group_id,
                    "members": len(g.members),
                    "region_y": list(g.region[0]),
                    "region_x": list(g.region[1]),
                }
                for g in plan.groups
            ],
            "tile_shape": list(plan.tile_shape),
            "blocks": len(plan.blocks),
        }
    return json.loads(json.dumps(report, allow_nan=False, default=_plain))


def input_entry(
    member: Any,
    *,
    flagged: int,
    valid_pixels: int | None,
    covered_pixels: int | None,
    output: Any = None,
) -> dict[str, Any]:
    """One input's line of the report.

    ``flagged_fraction`` is of the valid pixels (finite SCI); ``median_coverage`` is the
    fraction of all its pixels where the blotted median is finite, i.e. where outliers could
    be looked for at all. Both are None when undefined (no valid pixels, skipped run).
    """
    ny, nx = member.shape
    return {
        "name": member.name,
        "group_id": member.group_id,
        # The report sits beside the products: their names are enough, wherever it is moved.
        "output": Path(output).name if isinstance(output, str | Path) else None,
        "shape": [ny, nx],
        "valid_pixels": valid_pixels,
        "flagged": int(flagged),
        "flagged_fraction": _fraction(int(flagged), valid_pixels or 0),
        "median_coverage": None if covered_pixels is None else covered_pixels / (ny * nx),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"report: cannot write {type(value).__name__} as JSON")


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as indented JSON under a temporary name, then rename it to ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path
