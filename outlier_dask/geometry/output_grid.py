"""The common output grid (median WCS) of an association, following the reference recipe.

This module owns algorithm.md §1.3: a tangent-plane grid whose reference point is the centre of
the footprints' bounding box on the sphere, whose pixel scale is the first input's pixel scale
at its reference position, whose orientation comes from the first input's roll and
``v3yangle``/``vparity``, and whose extent covers every footprint with all pixels at >= 0.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Mapping, Sequence

import gwcs
import numpy as np
from astropy import coordinates as coord
from astropy.modeling import models
from gwcs import FITSImagingWCSTransform

__all__ = [
    "GridTooLargeError",
    "footprints_from_s_region",
    "grid_for_mapping",
    "output_wcs_from_footprints",
    "pixel_scale_at",
]


class GridTooLargeError(ValueError):
    """The output grid would exceed the allowed number of pixels (usually a bad WCS)."""


def footprints_from_s_region(s_region: str) -> list[np.ndarray]:
    """Polygons of an ``S_REGION`` string, each an ``(n, 2)`` array of (RA, Dec) in degrees.

    A string with several ``POLYGON`` entries gives several polygons.
    """
    parts = [p for p in re.split(r"(?i)polygon", s_region) if p.strip()]
    polygons = []
    for part in parts:
        numbers = re.sub(r"[a-zA-Z]", " ", part).split()
        values = np.array(numbers, dtype=float)
        if values.size < 6 or values.size % 2:
            raise ValueError(f"S_REGION polygon needs at least 3 (RA, Dec) pairs: {s_region!r}")
        polygons.append(values.reshape(-1, 2))
    if not polygons:
        raise ValueError(f"S_REGION has no polygon: {s_region!r}")
    return polygons


def pixel_scale_at(wcs: gwcs.WCS, ra_deg: float, dec_deg: float) -> float:
    """Geometric-mean pixel scale of ``wcs`` (degrees per pixel) at a sky position.

    The scale is the sky separation of one-pixel steps along x and along y from the pixel that
    maps to (``ra_deg``, ``dec_deg``).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        x0, y0 = wcs.invert(ra_deg, dec_deg, with_bounding_box=False)
    xs = np.array([x0, x0 + 1.0, x0])
    ys = np.array([y0, y0, y0 + 1.0])
    ra, dec = wcs(xs, ys, with_bounding_box=False)
    points = coord.SkyCoord(ra=ra, dec=dec, unit="deg")
    xscale = abs(points[0].separation(points[1]).value)
    yscale = abs(points[0].separation(points[2]).value)
    return float(np.sqrt(xscale * yscale))


def _centre_of_footprints(footprints: Sequence[np.ndarray]) -> tuple[float, float]:
    """Centre (RA, Dec) of the bounding box of all vertices in 3-D unit vectors."""
    lon, lat = np.deg2rad(np.vstack(footprints)).T
    xyz = np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    mid = (xyz.max(axis=1) + xyz.min(axis=1)) / 2.0
    ra = np.rad2deg(np.arctan2(mid[1], mid[0])) % 360.0
    dec = np.rad2deg(np.arctan2(mid[2], np.hypot(mid[0], mid[1])))
    return float(ra), float(dec)


def _rotation_matrix(roll_ref_deg: float, v3yangle_deg: float, vparity: int) -> np.ndarray:
    if vparity not in (1, -1):
        raise ValueError(f"wcsinfo.vparity must be 1 or -1, got {vparity!r}")
    rel = np.deg2rad(roll_ref_deg) - vparity * np.deg2rad(v3yangle_deg)
    return np.array([[vparity * np.cos(rel), np.sin(rel)], [-vparity * np.sin(rel), np.cos(rel)]])


def output_wcs_from_footprints(
    footprints: Sequence[np.ndarray],
    reference_wcs: gwcs.WCS,
    reference_wcsinfo: Mapping[str, float],
    *,
    max_pixels: int = 2**31,
) -> gwcs.WCS:
    """The output grid covering all footprints, in the reference's recipe.

    Parameters
    ----------
    footprints : sequence of ndarray, each (n, 2)
        Sky polygons (RA, Dec in degrees) of every input, from their ``S_REGION``.
    reference_wcs : gwcs.WCS
        WCS of the first input; gives the pixel scale and the frames.
    reference_wcsinfo : mapping
        ``ra_ref``, ``dec_ref``, ``roll_ref``, ``v3yangle`` (degrees) and ``vparity`` of the
        first input.
    max_pixels : int
        Largest grid allowed (``ny * nx``).

    Returns
    -------
    gwcs.WCS
        A TAN grid with ``pixel_shape`` ``(nx, ny)`` and a bounding box from -0.5 to n - 0.5.

    Raises
    ------
    ValueError
        If the grid would be smaller than 2 pixels along an axis.
    GridTooLargeError
        If the grid would exceed ``max_pixels``.
    """
    crval = _centre_of_footprints(footprints)
    pc = _rotation_matrix(
        reference_wcsinfo["roll_ref"],
        reference_wcsinfo["v3yangle"],
        int(reference_wcsinfo["vparity"]),
    )
    scale = pixel_scale_at(reference_wcs, reference_wcsinfo["ra_ref"], reference_wcsinfo["dec_ref"])
    sky_from_pixel = (
        models.AffineTransformation2D(matrix=pc)
        | models.Scale(scale) & models.Scale(scale)
        | models.Pix2Sky_TAN()
        | models.RotateNative2Celestial(crval[0], crval[1], 180.0)
    )
    # astropy builds a compound model's inverse anew on each access: once per footprint, it
    # grew with the association.
    pixel_from_sky = sky_from_pixel.inverse
    vertices = np.hstack([np.array(pixel_from_sky(*f.T)) for f in footprints])
    low = vertices.min(axis=1)
    high = vertices.max(axis=1)
    native_crpix = np.array(pixel_from_sky(*crval))
    offsets = native_crpix - low
    high = high + offsets
    shape = tuple(int(h + 0.5) for h in high[::-1])  # (ny, nx)
    if min(shape) < 2:
        raise ValueError(f"the output grid would be {shape[0]} x {shape[1]} pixels: too small")
    if shape[0] * shape[1] > max_pixels:
        raise GridTooLargeError(
            f"the output grid would be {shape[0]} x {shape[1]} pixels "
            f"({shape[0] * shape[1] / 1e6:.0f} Mpix), above the limit of "
            f"{max_pixels / 1e6:.0f} Mpix; check the inputs' WCS (S_REGION) or raise the limit"
        )
    transform = FITSImagingWCSTransform(
        models.Pix2Sky_TAN(), crpix=tuple(offsets), crval=crval, cdelt=[scale, scale], pc=pc
    )
    grid = gwcs.WCS(
        [
            gwcs.Step(reference_wcs.input_frame, transform),
            gwcs.Step(reference_wcs.output_frame, None),
        ]
    )
    grid.bounding_box = tuple((-0.5, n - 0.5) for n in shape[::-1])
    grid.pixel_shape = shape[::-1]
    return grid


def grid_for_mapping(grid: gwcs.WCS) -> gwcs.WCS:
    """A copy of ``grid`` to map many inputs onto, whose inverse is built only once.

    gwcs builds a WCS's backward transform anew on every ``world_to_pixel`` call (astropy
    constructs a model's inverse on each access), and every input's pixel map calls it at
    least twice (the coarse grid, the error check): a cost that grows with the association
    (measured on the performance page). The copy's transform keeps its inverse through
    astropy's public ``Model.inverse`` setter, and the inverse keeps the transform, so both are
    built once; the positions are the same bit for bit. ``grid`` itself (written into the
    intermediate products) is left as it is, without a user-defined inverse.

    Parameters
    ----------
    grid : gwcs.WCS
        An output grid of :func:`output_wcs_from_footprints` (one transform, pixel to sky).

    Returns
    -------
    gwcs.WCS
        An independent copy (its bounding box may be changed without touching ``grid``).
    """
    mapped = copy.deepcopy(grid)
    forward = mapped.forward_transform
    inverse = forward.inverse
    inverse.inverse = forward
    forward.inverse = inverse
    return mapped
