"""outlier_dask: JWST imaging outlier detection on Dask.

The JWST pipeline's ``outlier_detection`` step (imaging mode) with the same flags, run as Dask
graphs: in parallel, out of core, on a cluster.

The names below are imported on first use, so that the command's entry point
(:mod:`outlier_dask.command`) loads nothing before it holds back SIGINT and SIGTERM and sets
up its process, before numpy starts its thread pools (:mod:`outlier_dask.runtime.process`).
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not typing's: the command's entry point imports this package first
if TYPE_CHECKING:
    from typing import Any

    from outlier_dask.api import OutlierResult, detect_outliers
    from outlier_dask.parameters import OutlierParameters, ParameterError
    from outlier_dask.step import OutlierDetectionDaskStep as OutlierDetectionDaskStep

__all__ = ["OutlierParameters", "OutlierResult", "ParameterError", "detect_outliers"]
__version__ = "0.1.0"

#: Public name -> module that defines it.
_PUBLIC = {
    "OutlierResult": "outlier_dask.api",
    "detect_outliers": "outlier_dask.api",
    "OutlierParameters": "outlier_dask.parameters",
    "ParameterError": "outlier_dask.parameters",
    # Not in __all__: it imports jwst.
    "OutlierDetectionDaskStep": "outlier_dask.step",
}


def __getattr__(name: str) -> Any:
    """The public names, each imported from its module on first use."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'outlier_dask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
