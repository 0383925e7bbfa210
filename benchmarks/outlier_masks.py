"""The OUTLIER masks of a folder of ``_crf.fits`` products, for the benchmark scripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

#: The OUTLIER bit of a JWST DQ array.
OUTLIER = 16


def outlier_masks(folder: Path) -> dict[str, np.ndarray]:
    """Per product name, where its DQ has the OUTLIER bit: (ny, nx) bool."""
    masks = {}
    for path in sorted(Path(folder).glob("*_crf.fits")):
        with fits.open(path) as hdul:
            masks[path.name] = (hdul["DQ"].data & OUTLIER) != 0
    return masks


def same_masks(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> bool:
    """Whether two sets of masks name the same products and flag the same pixels."""
    return first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)
