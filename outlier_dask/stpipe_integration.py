"""The steps this package registers with ``stpipe`` (entry point group ``stpipe.steps``).

``strun`` and ``stpipe list`` find them by these names and aliases without importing them (so
without importing jwst until one is run).
"""

from __future__ import annotations

__all__ = ["get_steps"]


def get_steps() -> list[tuple[str, str, bool]]:
    """Each step as ``(class path, alias, is a pipeline)``, as stpipe expects."""
    return [
        ("outlier_dask.step.OutlierDetectionDaskStep", "outlier_detection_dask", False),
        ("outlier_dask.pipeline.Image3DaskPipeline", "calwebb_image3_dask", True),
    ]
