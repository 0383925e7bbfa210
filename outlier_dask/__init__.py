"""outlier_dask: JWST imaging outlier detection on Dask.

The JWST pipeline's ``outlier_detection`` step (imaging mode) with the same flags, run as Dask
graphs: in parallel, out of core, on a cluster.
"""

from outlier_dask.api import OutlierResult, detect_outliers
from outlier_dask.parameters import OutlierParameters, ParameterError

__all__ = ["OutlierParameters", "OutlierResult", "ParameterError", "detect_outliers"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``outlier_dask.OutlierDetectionDaskStep``, imported on first use (it imports jwst)."""
    if name == "OutlierDetectionDaskStep":
        from outlier_dask.step import OutlierDetectionDaskStep

        return OutlierDetectionDaskStep
    raise AttributeError(f"module 'outlier_dask' has no attribute {name!r}")
