"""Seeded synthetic NIRCam-like Stage 3 imaging associations.

The generator builds what the JWST pipeline's ``outlier_detection`` step sees after
``calwebb_image2``: one ``_cal.fits`` file per exposure and detector, with a distorted gwcs
per detector, a fixed sky scene (stars and galaxies) seen through every dithered exposure,
consistent noise arrays, dead pixels and injected cosmic rays whose positions are known.

Everything is drawn from independent random streams keyed by ``(seed, stream, exposure,
detector)``, so the scene, the noise, the bad pixels and the cosmic rays can each be varied
without changing the others (e.g. ``cr_fraction=0`` gives the same frames without cosmic
rays).

The geometry of one detector, pixel to ICRS, is described in
:mod:`outlier_dask.synthetic.geometry`.

The ``PC`` matrix is the one jwst builds from ``meta.wcsinfo`` (``roll_ref``, ``v3yangle``,
``vparity``) for the resampled output grid, so that grid is aligned with the detectors.
"""

from outlier_dask.synthetic.association import SyntheticAssociation, write_association
from outlier_dask.synthetic.config import DEAD as DEAD
from outlier_dask.synthetic.config import DO_NOT_USE as DO_NOT_USE
from outlier_dask.synthetic.config import JUMP_DET as JUMP_DET
from outlier_dask.synthetic.config import PIXEL_SCALE_ARCSEC as PIXEL_SCALE_ARCSEC
from outlier_dask.synthetic.config import SyntheticConfig, cal_file_name, detector_name
from outlier_dask.synthetic.frames import make_models
from outlier_dask.synthetic.geometry import exposure_coverage
from outlier_dask.synthetic.truth import FrameTruth, load_truth, truth_file_name

__all__ = [
    "FrameTruth",
    "SyntheticAssociation",
    "SyntheticConfig",
    "cal_file_name",
    "detector_name",
    "exposure_coverage",
    "load_truth",
    "make_models",
    "truth_file_name",
    "write_association",
]
