"""``Image3DaskPipeline``: jwst's ``calwebb_image3`` with this project's outlier detection.

The whole Stage 3 imaging pipeline of jwst (``assign_mtwcs``, ``tweakreg``, ``skymatch``,
``outlier_detection``, ``resample``, ``source_catalog``), with its ``outlier_detection`` step
replaced by :class:`~outlier_dask.step.OutlierDetectionDaskStep`; every other step, parameter
and product is jwst's::

    strun calwebb_image3_dask my_asn.json --steps.outlier_detection.n_workers=4

Inside the pipeline the step writes the ``_crf`` products (``save_results``), named as
``calwebb_image3`` names them (``<stem>_<asn_id>_crf.fits``). Importing this module imports
jwst.
"""

from __future__ import annotations

from jwst.pipeline import Image3Pipeline

from outlier_dask.step import OutlierDetectionDaskStep

__all__ = ["Image3DaskPipeline"]


class Image3DaskPipeline(Image3Pipeline):
    """``calwebb_image3`` whose ``outlier_detection`` is :class:`OutlierDetectionDaskStep`."""

    class_alias = "calwebb_image3_dask"

    step_defs = {**Image3Pipeline.step_defs, "outlier_detection": OutlierDetectionDaskStep}

    @staticmethod
    def get_stpipe_loggers() -> tuple[str, ...]:
        """The loggers stpipe configures: jwst's and this package's (see the step)."""
        return OutlierDetectionDaskStep.get_stpipe_loggers()
