"""Parameter files: YAML, or the ASDF parameter files ``stpipe`` writes for the reference step.

Four layouts are read:

- an ASDF file as ``strun --save-parameters`` or ``Step.export_config`` writes it for
  ``OutlierDetectionStep`` or ``OutlierDetectionDaskStep``: ``class``, ``name`` and a
  ``parameters:`` mapping, with or without the ``meta:`` block of a CRDS parameter reference
  file (``export_config(..., include_metadata=True)``, ``--save-parameters``);
- the same for a pipeline (``calwebb_image3``): its ``steps:`` list, of which the entry of the
  outlier detection step (``name: outlier_detection``) is read;
- a YAML file with a ``parameters:`` mapping (or a pipeline's ``steps:``);
- a YAML file whose top-level keys are the parameters.

Both files are parsed without constructing any Python object: YAML with ``yaml.safe_load``,
ASDF with ``asdf.util.load_yaml`` (only the YAML tree, custom tags ignored, binary blocks never
read). Keys that only make sense to ``stpipe`` (``skip``, ``save_results``, hooks, ...) and the
reference's parameters of other modes (IFU, TSO) are accepted and ignored; any other unknown key
is an error naming the file and the key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from outlier_dask.parameters import OutlierParameters, ParameterError, not_a_parameter

__all__ = [
    "IGNORED_KEYS",
    "parameters_with_file",
    "read_parameter_file",
]

log = logging.getLogger(__name__)

#: Keys every stpipe step has; they steer stpipe itself, not outlier detection.
STPIPE_KEYS = frozenset(
    {
        "name",
        "class",
        "search_output_file",
        "skip",
        "save_results",
        "output_file",
        "output_ext",
        "output_use_model",
        "output_use_index",
        "pre_hooks",
        "post_hooks",
        "input_dir",
    }
)
#: Parameters of the reference step used only by its IFU and TSO modes.
OTHER_MODE_KEYS = frozenset(
    {"kernel_size", "threshold_percent", "rolling_window_width", "ifu_second_check"}
)
#: Parameters of ``OutlierDetectionDaskStep`` that are no parameters of a run: its progress
#: display (the command has ``--progress``).
STEP_DISPLAY_KEYS = frozenset({"progress"})
#: Keys accepted in a parameter file and ignored.
IGNORED_KEYS = STPIPE_KEYS | OTHER_MODE_KEYS | STEP_DISPLAY_KEYS
#: Top-level keys of a step's parameter file beside ``parameters``: asdf's own, and the
#: ``meta`` block stpipe writes for a CRDS parameter reference file.
_FILE_KEYS = frozenset({"parameters", "asdf_library", "history", "meta"})
#: Name of the outlier detection step in a pipeline's ``steps`` list.
_PIPELINE_STEP_NAME = "outlier_detection"

_STEP_CLASSES = ("OutlierDetectionStep", "OutlierDetectionDaskStep", "outlier_detection")
_ASDF_MAGIC = b"#ASDF"


def _parameter_names() -> set[str]:
    return {f.name for f in fields(OutlierParameters) if f.init}


def _load_tree(path: Path) -> Any:
    """The file's tree as plain Python values (dicts, lists, str, numbers, None)."""
    try:
        with open(path, "rb") as handle:
            is_asdf = handle.read(len(_ASDF_MAGIC)) == _ASDF_MAGIC
    except FileNotFoundError:
        raise ParameterError(f"{path}: parameter file not found") from None
    except OSError as exc:
        raise ParameterError(f"{path}: cannot read parameter file ({exc.strerror})") from None
    try:
        if is_asdf:
            import asdf.util

            return asdf.util.load_yaml(str(path), tagged=False)
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise ParameterError(f"{path}: not a YAML or ASDF parameter file ({reason})") from None


def read_parameter_file(path: str | Path) -> dict[str, Any]:
    """The outlier-detection parameters a parameter file sets.

    Parameters
    ----------
    path : str or Path
        A YAML file (top-level parameters, or a ``parameters:`` mapping) or an ASDF parameter
        file written by ``stpipe`` for ``OutlierDetectionStep``.

    Returns
    -------
    dict of str to Any
        Parameter names (underscore form) to the values as written, unconverted. Keys set to
        null are left out, so they keep their defaults (``stpipe`` writes ``output_dir: null``
        to mean "not set").

    Raises
    ------
    ParameterError
        The file is missing or unreadable, is not a mapping, or has a key that is neither a
        parameter nor an ``stpipe``/other-mode key; the message names the file and the key.
    """
    path = Path(path)
    tree = _load_tree(path)
    if tree is None:
        return {}
    if not isinstance(tree, Mapping):
        raise ParameterError(f"{path}: expected a mapping of parameter names to values")
    if "steps" in tree:
        tree = _outlier_step_entry(path, tree["steps"])
    if "parameters" in tree:
        values = tree["parameters"]
        if not isinstance(values, Mapping):
            raise ParameterError(f"{path}: 'parameters' must be a mapping of names to values")
        others = set(tree) - _FILE_KEYS - STPIPE_KEYS
        if others:
            raise ParameterError(
                f"{path}: unknown top-level key {sorted(others)[0]!r} beside 'parameters'"
            )
        step_class = str(tree.get("class") or "")
        if step_class and not step_class.endswith(_STEP_CLASSES):
            log.warning("%s: parameters of %s, not of outlier detection", path, step_class)
    else:
        values = tree
    known = _parameter_names()
    found: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key in known:
            if value is not None:
                found[key] = value
        elif key in IGNORED_KEYS:
            log.debug("%s: ignoring %s (not used by imaging outlier detection)", path, key)
        else:
            raise ParameterError(f"{path}: {not_a_parameter(raw_key)}")
    return found


def _outlier_step_entry(path: Path, steps: Any) -> Mapping[str, Any]:
    """The ``outlier_detection`` entry of a pipeline parameter file's ``steps`` list."""
    if not isinstance(steps, list) or not all(isinstance(s, Mapping) for s in steps):
        raise ParameterError(f"{path}: 'steps' must be a list of steps' parameters")
    for entry in steps:
        if entry.get("name") == _PIPELINE_STEP_NAME:
            return entry
    raise ParameterError(f"{path}: a pipeline's parameters without an outlier_detection step")


def parameters_with_file(
    path: str | Path | None, overrides: Mapping[str, Any]
) -> OutlierParameters:
    """Parameters from a file (if any), with ``overrides`` (e.g. command-line values) on top.

    A bad value that came from the file is reported with the file's name in front.

    Raises
    ------
    ParameterError
        Naming the file and key, or the parameter given on the command line.
    """
    from_file = read_parameter_file(path) if path is not None else {}
    given = {k.replace("-", "_"): v for k, v in overrides.items()}
    try:
        return OutlierParameters.from_mapping({**from_file, **given})
    except ParameterError as exc:
        name = str(exc).split(":", 1)[0]
        if name in from_file and name not in given:
            raise ParameterError(f"{path}: {exc}") from None
        raise
