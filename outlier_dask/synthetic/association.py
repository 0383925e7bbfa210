"""Writing a synthetic association to disk: ``_cal.fits`` files and the association JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from outlier_dask.synthetic.config import _OBSERVATION_IDS, config_of
from outlier_dask.synthetic.frames import _frame_coverage, _iter_frames
from outlier_dask.synthetic.truth import truth_file_name


@dataclass(frozen=True)
class SyntheticAssociation:
    """A written synthetic association.

    Attributes
    ----------
    asn_path : Path
        The association JSON.
    cal_paths : list of Path
        The ``_cal.fits`` files, in association member order (pointing, exposure, detector).
    truth : dict of str to ndarray
        Basename of each cal file -> bool ``(ny, nx)`` mask of injected cosmic rays.
    product_name : str
        Name of the association's single product.
    """

    asn_path: Path
    cal_paths: list[Path]
    truth: dict[str, np.ndarray]
    product_name: str


def write_association(
    directory: str | Path,
    *,
    n_exposures: int = 4,
    n_detectors: int = 2,
    detector_shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    product_name: str = "synth",
    truth_files: bool = False,
    **options: Any,
) -> SyntheticAssociation:
    """Write a synthetic association: ``<name>_cal.fits`` files and ``<product_name>_asn.json``.

    Frames are generated and saved one at a time, so memory holds one frame at once.

    Parameters
    ----------
    directory : str or Path
        Output folder, created if missing; member names in the association are relative to it.
    n_exposures, n_detectors, detector_shape, seed, **options
        As for :func:`make_models`.
    product_name : str
        Name of the association's product (and prefix of the JSON file).
    truth_files : bool
        Also write ``<stem>_truth.npz`` beside each ``<stem>_cal.fits``: the frame's
        :class:`~outlier_dask.synthetic.FrameTruth`, coverage included (read them back with
        :func:`~outlier_dask.synthetic.load_truth`). The cal files are the same either way.

    Returns
    -------
    SyntheticAssociation
        Paths and cosmic-ray truth masks.

    Raises
    ------
    ValueError
        If an option is out of range. ``TypeError`` for an unknown option.
    """
    config = config_of(n_exposures, n_detectors, detector_shape, seed, **options)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cal_paths, truth = [], {}
    coverage = _frame_coverage(config) if truth_files else None
    for index, (model, frame_truth) in enumerate(_iter_frames(config)):
        path = directory / model.meta.filename
        model.save(path)
        model.close()
        cal_paths.append(path)
        truth[path.name] = frame_truth.cosmic_ray_mask
        if coverage is not None:
            with_coverage = dataclasses.replace(frame_truth, coverage=coverage[index])
            with_coverage.save(directory / truth_file_name(path.name))
    asn_path = directory / f"{product_name}_asn.json"
    asn_path.write_text(json.dumps(_association(product_name, cal_paths), indent=4))
    return SyntheticAssociation(asn_path, cal_paths, truth, product_name)


def _association(product_name: str, cal_paths: list[Path]) -> dict[str, Any]:
    """Level-3 image association (the shape ``jwst.associations.load_asn`` accepts)."""
    return {
        "asn_type": "image3",
        "asn_rule": "candidate_Asn_Lv3Image",
        "version_id": None,
        "code_version": "outlier_dask.synthetic",
        "degraded_status": "No known degraded exposures in association.",
        "program": _OBSERVATION_IDS["program_number"],
        "constraints": "synthetic",
        "asn_id": "o001",
        "target": "t001",
        "asn_pool": "synthetic_pool",
        "products": [
            {
                "name": product_name,
                "members": [{"expname": p.name, "exptype": "science"} for p in cal_paths],
            }
        ],
    }
