"""``OutlierDetectionDaskStep``: outlier_dask as an ``stpipe`` step, where jwst is installed.

A drop-in for the reference step in imaging mode::

    strun outlier_dask.OutlierDetectionDaskStep my_asn.json --snr="5.0 4.0"

or, in Python, ``OutlierDetectionDaskStep.call(library)``. It takes what the reference takes
(an association, a ``ModelLibrary``, a ``ModelContainer``), has the reference's parameters
with their defaults plus this project's execution parameters, and returns a ``ModelLibrary``
of the flagged models, which ``stpipe`` saves as ``<stem>_<suffix>.fits`` when
``save_results`` is set (``suffix`` defaults to ``crf``, as ``calwebb_image3`` names them).

The models are flagged in memory through :func:`outlier_dask.detect_outliers`; to keep the
pixels out of core, run ``outlier-dask run`` on the association instead. Importing this module
imports jwst.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from jwst.datamodels import ModelContainer, ModelLibrary
from jwst.stpipe import Step

from outlier_dask.parameters import OutlierParameters

__all__ = ["OutlierDetectionDaskStep"]

#: Step parameters that are parameters of :class:`OutlierParameters` (the others steer stpipe,
#: or belong to the reference's non-imaging modes and are accepted for compatibility).
_SHARED = ("output_dir",)


class OutlierDetectionDaskStep(Step):
    """Flag outliers in imaging associations, like ``OutlierDetectionStep``, with outlier_dask.

    Input images are not changed; flagged copies replace them in the returned library.
    """

    class_alias = "outlier_detection_dask"

    spec = """
        weight_type = option('ivm','exptime',default='ivm')  # drizzle weights
        pixfrac = float(min=0.0, max=1.0, default=1.0)  # drop size, fraction of a pixel
        kernel = option('square','point','turbo',default='square')  # drizzle kernel
        fillval = string(default='NAN')  # value of mosaic pixels without weight
        maskpt = float(default=0.7)  # fraction of the clipped mean weight to keep
        snr = string(default='5.0 4.0')  # two signal-to-noise thresholds
        scale = string(default='1.2 0.7')  # two multipliers of the blot derivative
        backg = float(default=0.0)  # background added to the blot, SCI units
        kernel_size = string(default='7 7')  # IFU only: accepted, not used
        threshold_percent = float(default=99.8)  # IFU only: accepted, not used
        rolling_window_width = integer(default=25)  # TSO only: accepted, not used
        ifu_second_check = boolean(default=False)  # IFU only: accepted, not used
        save_intermediate_results = boolean(default=False)  # also write i2d, median, blots
        resample_data = boolean(default=True)  # drizzle groups onto a common grid
        good_bits = string(default="~DO_NOT_USE")  # DQ flags to allow
        search_output_file = boolean(default=False)
        in_memory = boolean(default=True)  # False: mosaics and median in a Zarr store
        pixmap_stepsize = float(default=1.0)  # reference's sparse pixel-map step
        pixmap_order = integer(default=1)  # spline order with pixmap_stepsize > 1
        pixmap_tolerance = float(default=1e-4)  # largest pixel-map error, output pixels
        scheduler = string(default='processes')  # processes, threads, ..., tcp://host:port
        n_workers = integer(default=None)  # parallel workers (None: CPUs available)
        threads_per_worker = integer(default=1)  # with local-cluster
        memory_limit = string(default=None)  # local-cluster memory, e.g. 8GiB
        work_dir = string(default=None)  # parent folder of scratch data
        tile_size = integer(default=1024)  # tile edge of mosaics and median, pixels
        block_size = integer(default=1024)  # block edge of blot and compare, pixels
        progress = option('auto','bar','log','off',default='auto')  # stage progress display
        suffix = string(default='crf')  # suffix of the saved products
    """  # noqa: E501

    def _parameters(self) -> OutlierParameters:
        """The step's values as :class:`OutlierParameters` (validated)."""
        names = {f.name for f in fields(OutlierParameters) if f.init}
        values: dict[str, Any] = {}
        for name in names:
            value = getattr(self, name, None)
            if value is not None and (name not in _SHARED or value):
                values[name] = value
        values.pop("suffix", None)  # the saved names are stpipe's business here
        return OutlierParameters.from_mapping(values)

    def process(self, input_data: Any) -> ModelLibrary:
        """Flag outliers in the input's models; return them in a ``ModelLibrary``.

        Parameters
        ----------
        input_data : str, ModelLibrary, ModelContainer or list of ImageModel
            An image3 association (path), or the models.

        Returns
        -------
        ModelLibrary
            The flagged models, in input order, with
            ``meta.cal_step.outlier_detection`` set.
        """
        from outlier_dask.api import detect_outliers

        params = self._parameters()
        if isinstance(input_data, ModelContainer | list | tuple):
            input_data = ModelLibrary(list(input_data), on_disk=False)
        library = self.prepare_output(input_data, open_models=False)
        if not isinstance(library, ModelLibrary):  # an association's path, or its dict
            library = ModelLibrary(library, asn_exptypes=["science"], on_disk=False)
        with library:
            models = [library.borrow(i) for i in range(len(library))]
            try:
                result = detect_outliers(
                    models, parameters=params, progress=self.progress, report=False
                )
            except BaseException:
                for index, model in enumerate(models):
                    library.shelve(model, index, modify=False)
                raise
            for index, flagged in enumerate(result.outputs):
                # A new model at a borrowed index replaces the borrowed one.
                library.shelve(flagged, index)
        return library
