"""``OutlierDetectionDaskStep``: outlier_dask as an ``stpipe`` step, where jwst is installed.

A drop-in for the reference step in imaging mode::

    strun outlier_detection_dask my_asn.json --snr="5.0 4.0"
    strun outlier_dask.OutlierDetectionDaskStep my_asn.json --snr="5.0 4.0"

or, in Python, ``OutlierDetectionDaskStep.call(library)``. It takes what the reference takes
(an association, a ``ModelLibrary``, a ``ModelContainer``), has the reference's parameters
with their defaults plus this project's execution parameters, and returns a ``ModelLibrary``
of the flagged models. Where a user sees it, it behaves as the reference does:

- saved products are named by stpipe's rules, as the reference's are: called alone,
  ``<stem>_<asn_id>_outlierdetectionstep.fits`` (the reference's default suffix); inside
  ``calwebb_image3`` (:class:`~outlier_dask.pipeline.Image3DaskPipeline`), ``..._crf.fits``;
- fewer than two inputs: the step is skipped (status ``SKIPPED``, a warning), not an error;
- the log (stpipe's, and the file's ``cal_logs``) has the per-input outlier counts and the
  stages' progress lines (``progress``);
- ``save_intermediate_results`` writes the reference's files under the reference's names.

The models are flagged in memory through :func:`outlier_dask.detect_outliers`; to keep the
pixels out of core, run ``outlier-dask run`` on the association instead. Importing this module
imports jwst.
"""

from __future__ import annotations

from dataclasses import Field, fields
from typing import Any

from jwst.datamodels import ModelContainer, ModelLibrary
from jwst.stpipe import Step

from outlier_dask.parameters import PARAMETER_CHOICES, PARAMETER_HELP, OutlierParameters

__all__ = ["OutlierDetectionDaskStep"]

#: Parameters of :class:`OutlierParameters` that are also ``stpipe``'s own: the step keeps
#: stpipe's definition (``output_dir`` None, or empty, stands for the default ``"."``;
#: ``suffix`` None for stpipe's naming, :meth:`OutlierDetectionDaskStep.default_suffix`).
_STPIPE_OWNED = ("output_dir", "suffix")
#: The reference step's suffix when called alone (its name, lower case), kept by this step so
#: that its products have the reference's names.
REFERENCE_SUFFIX = "outlierdetectionstep"
#: Loggers stpipe shows and records: jwst's, and this package's (counts, stages).
_PACKAGE_LOGGER = "outlier_dask"

#: The spec's entries that are not parameters of :class:`OutlierParameters`: the reference's
#: parameters of its non-imaging modes, accepted for compatibility; the reference's default of
#: stpipe's ``search_output_file``; and this step's progress display.
_STEP_ONLY_SPEC = """\
kernel_size = string(default='7 7')  # IFU only: accepted, not used
threshold_percent = float(default=99.8)  # IFU only: accepted, not used
rolling_window_width = integer(default=25)  # TSO only: accepted, not used
ifu_second_check = boolean(default=False)  # IFU only: accepted, not used
search_output_file = boolean(default=False)  # use an output file named by a parent step
progress = option('auto','bar','log','off',default='auto')  # stage progress display
"""

#: configobj check of each type of :class:`OutlierParameters` field (``X | None``: that of X).
_SPEC_TYPES = {"float": "float", "int": "integer", "bool": "boolean", "str": "string"}


def _spec_value(value: Any) -> str:
    """A default as configobj reads it back: ``None``, ``True``, ``1.0``, ``'5.0 4.0'``."""
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise ValueError(f"cannot quote the default {text!r} in a configobj spec")


def _spec_line(f: Field) -> str:
    """``name = check(..., default=...)  # meaning`` of one field of :class:`OutlierParameters`."""
    type_name = str(f.type).removesuffix(" | None")
    default = f"default={_spec_value(f.default)}"
    if f.name in PARAMETER_CHOICES:
        choices = ",".join(_spec_value(c) for c in PARAMETER_CHOICES[f.name])
        check = f"option({choices},{default})"
    elif type_name in _SPEC_TYPES:
        check = f"{_SPEC_TYPES[type_name]}({default})"
    else:
        raise TypeError(f"{f.name}: no configobj check for a parameter of type {f.type}")
    comment = PARAMETER_HELP[f.name]
    if f.default is None and f.metadata["none"]:
        comment += f" (None: {f.metadata['none']})"
    return f"{f.name} = {check}  # {comment}"


def _spec() -> str:
    """The step's spec: every parameter of :class:`OutlierParameters`, then the step's own."""
    shared = [f for f in fields(OutlierParameters) if f.init and f.name not in _STPIPE_OWNED]
    return "".join(_spec_line(f) + "\n" for f in shared) + _STEP_ONLY_SPEC


class OutlierDetectionDaskStep(Step):
    """Flag outliers in imaging associations, like ``OutlierDetectionStep``, with outlier_dask.

    Input images are not changed; flagged copies replace them in the returned library.
    """

    class_alias = "outlier_detection_dask"

    @staticmethod
    def get_stpipe_loggers() -> tuple[str, ...]:
        """The loggers stpipe configures and records in ``cal_logs``: jwst's and this one's."""
        return (*Step.get_stpipe_loggers(), _PACKAGE_LOGGER)

    def default_suffix(self) -> str:
        """The suffix of products saved by the step alone: the reference step's."""
        return REFERENCE_SUFFIX

    #: Made from :class:`OutlierParameters` (types, defaults, and meanings as comments), so it
    #: cannot drift from the command line or the documentation; see :func:`_spec`.
    spec = _spec()

    def _parameters(self) -> OutlierParameters:
        """The step's values as :class:`OutlierParameters` (validated)."""
        names = {f.name for f in fields(OutlierParameters) if f.init}
        values: dict[str, Any] = {}
        for name in names:
            value = getattr(self, name, None)
            if value is not None and (name not in _STPIPE_OWNED or value):
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
        # As the reference: products and intermediate files carry the association's id.
        asn_id = self.add_asn_id_to_output_name(library)
        if len(library) < 2:
            return _skipped(library)
        with library:
            models = [library.borrow(i) for i in range(len(library))]
            try:
                result = detect_outliers(
                    models,
                    parameters=params,
                    progress=self.progress,
                    report=False,
                    asn_id=asn_id,
                )
            except BaseException:
                for index, model in enumerate(models):
                    library.shelve(model, index, modify=False)
                raise
            for index, flagged in enumerate(result.outputs):
                # A new model at a borrowed index replaces the borrowed one.
                library.shelve(flagged, index)
        return library


def _skipped(library: ModelLibrary) -> ModelLibrary:
    """The library with every model's status ``SKIPPED``, as the reference leaves fewer than
    two inputs (with a warning, whatever they hold: a single input needs no WCS)."""
    import logging

    logging.getLogger(_PACKAGE_LOGGER).warning(
        "outlier detection needs at least two inputs, got %d: step skipped", len(library)
    )
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            model.meta.cal_step.outlier_detection = "SKIPPED"
            library.shelve(model, index)
    return library
