"""Per-pixel truth of a synthetic frame, and its ``_truth.npz`` files beside an association.

What the generator injected into each frame, in the frame's own pixels, so that a program in
another process can score outlier flags against it (``benchmarks/detection_quality.py``):
cosmic-ray charge and its signal-to-noise, hot pixels, the noiseless source level and the
number of exposures that cover each pixel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

__all__ = ["FrameTruth", "load_truth", "truth_file_name"]


@dataclass(frozen=True)
class FrameTruth:
    """What was injected into one frame; every array has the frame's shape ``(ny, nx)``.

    Attributes
    ----------
    cosmic_ray : ndarray, float32
        Cosmic-ray surface brightness added to SCI [MJy/sr]; 0 where none.
    cosmic_ray_snr : ndarray, float32
        ``cosmic_ray / err``: the charge in units of the pixel's ERR; 0 where none.
    cosmic_ray_event : ndarray, int32
        1-based number of the cosmic-ray event of each pixel (events are single pixels or
        short tracks), 0 where none.
    hot_pixel : ndarray, float32
        Excess of the detector's unflagged hot pixels [MJy/sr]; 0 where none.
    source : ndarray, float32
        Noiseless surface brightness of stars and galaxies, sky excluded [MJy/sr].
    sky_sigma : float
        Noise of a sky pixel [MJy/sr] (the unit of the generator's source brightness).
    coverage : ndarray, int16, or None
        Exposures whose detectors see each pixel's sky position, its own included
        (:func:`~outlier_dask.synthetic.exposure_coverage`); None if not computed.
    """

    cosmic_ray: np.ndarray
    cosmic_ray_snr: np.ndarray
    cosmic_ray_event: np.ndarray
    hot_pixel: np.ndarray
    source: np.ndarray
    sky_sigma: float
    coverage: np.ndarray | None = None

    @property
    def cosmic_ray_mask(self) -> np.ndarray:
        """Bool ``(ny, nx)``: True where a cosmic ray was injected."""
        return self.cosmic_ray > 0

    @property
    def outlier_mask(self) -> np.ndarray:
        """Bool ``(ny, nx)``: True where a cosmic ray or a hot pixel was injected."""
        return (self.cosmic_ray > 0) | (self.hot_pixel > 0)

    def save(self, path: str | Path) -> None:
        """Write the arrays to ``path`` (a ``.npz`` file, compressed)."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sky_sigma"}
        if arrays["coverage"] is None:
            del arrays["coverage"]
        np.savez_compressed(path, sky_sigma=np.float64(self.sky_sigma), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> FrameTruth:
        """Read a file written by :meth:`save`."""
        with np.load(path) as stored:
            values = {name: stored[name] for name in stored.files}
        values["sky_sigma"] = float(values["sky_sigma"])
        return cls(**values)


def truth_file_name(cal_name: str) -> str:
    """Name of a frame's truth file: ``<stem>_cal.fits`` -> ``<stem>_truth.npz``."""
    stem = cal_name.removesuffix(".fits").removesuffix("_cal")
    return f"{stem}_truth.npz"


def load_truth(asn_path: str | Path) -> dict[str, FrameTruth]:
    """The truth of every member of a synthetic association written with ``truth_files=True``.

    Parameters
    ----------
    asn_path : str or Path
        The association JSON written by :func:`~outlier_dask.synthetic.write_association`.

    Returns
    -------
    dict of str to FrameTruth
        Member file name (``..._cal.fits``) -> its truth, in association order.

    Raises
    ------
    FileNotFoundError
        If a member has no truth file (the association was written without truth).
    """
    asn_path = Path(asn_path)
    asn = json.loads(asn_path.read_text())
    names = [m["expname"] for p in asn["products"] for m in p["members"]]
    truth = {}
    for name in names:
        path = asn_path.parent / truth_file_name(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no truth file for member {name} (write the association with "
                "truth_files=True)"
            )
        truth[name] = FrameTruth.load(path)
    return truth
