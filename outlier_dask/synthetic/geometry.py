"""Detector geometry: distortion polynomials, per-detector gwcs, pointings and footprints.

Geometry of one detector (pixel ``(x, y)`` to ICRS)::

    centre and normalise      u = (x - xc) / h,  v = (y - yc) / h      h = max(nx, ny) / 2
    distortion (cubic)        (u, v) -> (p, q)    fitted polynomial inverse
    focal plane [arcsec]      (p, q) * h * pixel_scale + detector offset
    pointing                  AffineTransformation2D(PC(roll, v3yangle, vparity) / 3600)
                              | Pix2Sky_TAN | RotateNative2Celestial(ra, dec, 180)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from astropy import coordinates
from astropy import units as u
from astropy.modeling import Model
from astropy.modeling import models as am
from gwcs import coordinate_frames as cf
from gwcs.wcs import WCS
from scipy.interpolate import RectBivariateSpline
from stdatamodels.jwst.datamodels import ImageModel

from outlier_dask.synthetic.config import (
    _DETECTORS_PER_MODULE,
    _STREAM_DISTORTION,
    _STREAM_DITHER,
    PIXEL_SCALE_ARCSEC,
    SyntheticConfig,
    _rng,
)

_INVERSE_TOLERANCE_PX = 1e-5


@dataclass(frozen=True)
class _Pointing:
    ra: float  # [deg]
    dec: float  # [deg]
    roll: float  # roll_ref [deg]


def _pc_matrix(roll: float, v3yangle: float, vparity: int) -> np.ndarray:
    """Rotation/parity matrix, shape (2, 2), from angles in degrees (jwst's formula)."""
    rel = np.deg2rad(roll - vparity * v3yangle)
    return np.array([[vparity * np.cos(rel), np.sin(rel)], [-vparity * np.sin(rel), np.cos(rel)]])


def _detector_offsets_arcsec(config: SyntheticConfig) -> np.ndarray:
    """Focal-plane centres of the detectors [arcsec], shape (n_detectors, 2), mean zero.

    A module is a 2 x 2 mosaic (A1 lower left, A2 upper left, A3 lower right, A4 upper
    right); module B sits to the right of module A with a wider gap.
    """
    ny, nx = config.detector_shape
    width, height = nx * PIXEL_SCALE_ARCSEC, ny * PIXEL_SCALE_ARCSEC
    gap = config.detector_gap_fraction * width
    index = np.arange(config.n_detectors)
    module, number = np.divmod(index, _DETECTORS_PER_MODULE)
    column, row = np.divmod(number, 2)
    x = (column + module * 2.7) * (width + gap)
    y = row * (height + gap)
    offsets = np.column_stack([x, y]).astype(float)
    return offsets - offsets.mean(axis=0)


@lru_cache
def _coefficient_names(degree: int) -> tuple[str, ...]:
    """Names ``c{i}_{j}`` of an astropy ``Polynomial2D``'s coefficients, in its order."""
    return tuple(am.Polynomial2D(degree).param_names)


def _monomial_exponents(degree: int) -> list[tuple[int, int]]:
    """``(i, j)`` of every ``c{i}_{j}`` coefficient (term ``x**i * y**j``)."""
    return [tuple(int(k) for k in name[1:].split("_")) for name in _coefficient_names(degree)]


def _polynomial(degree: int, coefficients: np.ndarray) -> am.Polynomial2D:
    names = _coefficient_names(degree)
    return am.Polynomial2D(degree, **dict(zip(names, coefficients, strict=True)))


def _design_matrix(x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
    """Monomials ``x**i * y**j`` in ``Polynomial2D`` coefficient order, shape (n, n_terms)."""
    x, y = np.ravel(x), np.ravel(y)
    return np.column_stack([x**i * y**j for i, j in _monomial_exponents(degree)])


def _affine_residual_at_corners(
    px: np.ndarray, py: np.ndarray, u: np.ndarray, v: np.ndarray
) -> float:
    """Largest corner distance between a 2-D map sampled on a grid and its best affine fit.

    ``u, v`` are grid coordinates of shape (m, k), ``px, py`` the mapped values; the result
    is in the units of ``px``.
    """
    design = _design_matrix(u, v, 1)
    residual = []
    for values in (px, py):
        coef, *_ = np.linalg.lstsq(design, values.ravel(), rcond=None)
        residual.append((values.ravel() - design @ coef).reshape(u.shape))
    corners = (np.array([0, 0, -1, -1]), np.array([0, -1, 0, -1]))
    return float(np.hypot(residual[0][corners], residual[1][corners]).max())


def _distortion_polynomials(
    config: SyntheticConfig, detector: int
) -> tuple[am.Polynomial2D, am.Polynomial2D]:
    """Cubic distortion ``(u, v) -> (p, q)`` in normalised detector coordinates.

    The linear part is the identity. On top come a barrel term ``r^2 (u, v)`` shared by all
    detectors and random quadratic and cubic terms, all scaled together so that the
    residual of the best affine fit is ``config.distortion_px`` pixels at the worst corner.
    """
    rng = _rng(config, _STREAM_DISTORTION, detector)
    exponents = _monomial_exponents(3)
    order = np.array([i + j for i, j in exponents])
    nonlinear = rng.normal(0.0, 0.3, (2, len(exponents))) * (order >= 2)
    nonlinear[0, [exponents.index((3, 0)), exponents.index((1, 2))]] += 1.0
    nonlinear[1, [exponents.index((2, 1)), exponents.index((0, 3))]] += 1.0

    u, v, half = _normalised_grid(config.detector_shape, 33, 1.0)
    p, q = (_polynomial(3, c)(u, v) for c in nonlinear)
    coef = nonlinear * (config.distortion_px / (half * _affine_residual_at_corners(p, q, u, v)))
    coef[0, exponents.index((1, 0))] = coef[1, exponents.index((0, 1))] = 1.0
    return _polynomial(3, coef[0]), _polynomial(3, coef[1])


def _normalised_grid(
    shape: tuple[int, int], n_nodes: int, margin: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Grid over the detector's pixel-edge extent in normalised coordinates.

    Returns ``u, v`` of shape (n_nodes, n_nodes), times ``margin``, and the half size ``h``
    [pixels] used for normalisation.
    """
    ny, nx = shape
    half = max(nx, ny) / 2.0
    u, v = np.meshgrid(
        np.linspace(-margin * nx / (2 * half), margin * nx / (2 * half), n_nodes),
        np.linspace(-margin * ny / (2 * half), margin * ny / (2 * half), n_nodes),
    )
    return u, v, half


def _distortion_with_inverse(config: SyntheticConfig, detector: int) -> Model:
    """Normalised distortion ``(u, v) -> (p, q)`` with a fitted polynomial inverse.

    The inverse degree grows until its error is below ``_INVERSE_TOLERANCE_PX`` over the
    detector plus a 5 % margin.

    Raises
    ------
    ValueError
        If no inverse up to degree 15 is accurate enough (``distortion_px`` too large).
    """
    poly_x, poly_y = _distortion_polynomials(config, detector)
    u_fit, v_fit, half = _normalised_grid(config.detector_shape, 40, 1.15)
    u_chk, v_chk, _ = _normalised_grid(config.detector_shape, 61, 1.05)
    p_fit, q_fit = poly_x(u_fit, v_fit), poly_y(u_fit, v_fit)
    p_chk, q_chk = poly_x(u_chk, v_chk), poly_y(u_chk, v_chk)
    for degree in range(5, 17, 2):
        targets = np.column_stack([u_fit.ravel(), v_fit.ravel()])
        coef = np.linalg.lstsq(_design_matrix(p_fit, q_fit, degree), targets, rcond=None)[0]
        inv_x, inv_y = _polynomial(degree, coef[:, 0]), _polynomial(degree, coef[:, 1])
        error_px = half * np.hypot(inv_x(p_chk, q_chk) - u_chk, inv_y(p_chk, q_chk) - v_chk)
        if error_px.max() < _INVERSE_TOLERANCE_PX:
            break
    else:
        raise ValueError(
            f"distortion_px={config.distortion_px} is too large for detector_shape="
            f"{config.detector_shape}: polynomial inverse error {error_px.max():.2g} px"
        )
    distortion = am.Mapping((0, 1, 0, 1)) | (poly_x & poly_y)
    distortion.inverse = am.Mapping((0, 1, 0, 1)) | (inv_x & inv_y)
    distortion.name = "distortion"
    return distortion


def _pointing_transform(pointing: _Pointing, config: SyntheticConfig) -> Model:
    """Focal-plane offsets [arcsec] -> ICRS (ra, dec) [deg] for one telescope pointing."""
    pc = _pc_matrix(pointing.roll, config.v3yangle, config.vparity)
    return (
        am.AffineTransformation2D(matrix=pc / 3600.0)
        | am.Pix2Sky_TAN()
        | am.RotateNative2Celestial(pointing.ra, pointing.dec, 180.0)
    )


def _detector_wcs(
    config: SyntheticConfig, distortion: Model, offset_arcsec: np.ndarray, pointing: _Pointing
) -> WCS:
    """gwcs of one detector in one exposure: ``detector`` frame -> ICRS ``world`` frame."""
    ny, nx = config.detector_shape
    half = max(nx, ny) / 2.0
    to_focal_plane = (
        (am.Shift(-(nx - 1) / 2.0) & am.Shift(-(ny - 1) / 2.0))
        | (am.Scale(1.0 / half) & am.Scale(1.0 / half))
        | distortion
        | (am.Scale(half * PIXEL_SCALE_ARCSEC) & am.Scale(half * PIXEL_SCALE_ARCSEC))
        | (am.Shift(offset_arcsec[0]) & am.Shift(offset_arcsec[1]))
    )
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    world = cf.CelestialFrame(
        reference_frame=coordinates.ICRS(),
        name="world",
        axes_names=("lon", "lat"),
        axes_order=(0, 1),
        unit=(u.deg, u.deg),
    )
    wcs = WCS(
        forward_transform=to_focal_plane | _pointing_transform(pointing, config),
        input_frame=detector,
        output_frame=world,
    )
    wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    wcs.pixel_shape = (nx, ny)
    return wcs


def _footprint_size_arcsec(config: SyntheticConfig) -> np.ndarray:
    """``(width, height)`` [arcsec] of the detector array's footprint in the focal plane."""
    ny, nx = config.detector_shape
    offsets = _detector_offsets_arcsec(config)
    detector = np.array([nx, ny]) * PIXEL_SCALE_ARCSEC
    return offsets.max(axis=0) - offsets.min(axis=0) + detector


def _grid_offsets_arcsec(config: SyntheticConfig) -> np.ndarray:
    """Focal-plane offsets [arcsec] of the survey pointings, shape (n_pointings, 2), row-major.

    Rows step along the detector y axis and columns along x, ``pointing_step`` footprints
    apart, centred on the grid's middle.
    """
    n_rows, n_columns = config.pointings
    row, column = np.divmod(np.arange(config.n_pointings), n_columns)
    step = config.pointing_step * _footprint_size_arcsec(config)
    return np.column_stack(
        [(column - (n_columns - 1) / 2.0) * step[0], (row - (n_rows - 1) / 2.0) * step[1]]
    )


def _exposure_pointings(config: SyntheticConfig) -> list[_Pointing]:
    """One telescope pointing per exposure, pointing-major: ``n_pointings * n_exposures``.

    Every survey pointing repeats the same dither pattern: offsets on a ring, in
    detector-aligned directions, non-integer pixels up to ``dither_fraction`` of a detector
    width; the roll changes by ~1e-4 deg between exposures.
    """
    rng = _rng(config, _STREAM_DITHER)
    radius = config.dither_fraction * config.detector_shape[1] * PIXEL_SCALE_ARCSEC
    n = config.n_exposures
    angle = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n) / n
    r = radius * rng.uniform(0.4, 1.0, n)
    dithers = np.column_stack([r * np.cos(angle), r * np.sin(angle)])
    offsets = (_grid_offsets_arcsec(config)[:, None, :] + dithers[None, :, :]).reshape(-1, 2)
    base = _Pointing(config.ra, config.dec, config.roll)
    ra, dec = _pointing_transform(base, config)(offsets[:, 0], offsets[:, 1])
    roll = config.roll + rng.normal(0.0, 1e-4, len(offsets))
    return [_Pointing(float(a), float(d), float(r)) for a, d, r in zip(ra, dec, roll, strict=True)]


def _scene_projection(config: SyntheticConfig) -> Model:
    """ICRS (ra, dec) [deg] -> scene tangent-plane offsets (xi, eta) [arcsec]."""
    return (
        am.RotateCelestial2Native(config.ra, config.dec, 180.0)
        | am.Sky2Pix_TAN()
        | (am.Scale(3600.0) & am.Scale(3600.0))
    )


def _pixel_corners(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    ny, nx = shape
    return np.array([-0.5, nx - 0.5, nx - 0.5, -0.5]), np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])


def _s_region(wcs: WCS, shape: tuple[int, int]) -> str:
    """``POLYGON ICRS`` string of the outer pixel corners, counter-clockwise in pixels."""
    ra, dec = wcs.forward_transform(*_pixel_corners(shape))
    return "POLYGON ICRS  " + " ".join(f"{a:.9f} {d:.9f}" for a, d in zip(ra, dec, strict=True))


def _pixel_scene_offsets(
    wcs: WCS, projection: Model, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Scene offsets (xi, eta) [arcsec] of every pixel centre, each float64 ``(ny, nx)``.

    The exact transform is evaluated on a coarse grid (<= 32 px spacing) and a bicubic spline
    fills in; the map is a smooth low-order function, so the spline error is ~1e-9 arcsec.
    """
    ny, nx = shape
    x_nodes = np.linspace(-0.5, nx - 0.5, max(8, nx // 32 + 2))
    y_nodes = np.linspace(-0.5, ny - 0.5, max(8, ny // 32 + 2))
    gx, gy = np.meshgrid(x_nodes, y_nodes)
    xi, eta = (wcs.forward_transform | projection)(gx, gy)
    x_all, y_all = np.arange(nx, dtype=float), np.arange(ny, dtype=float)
    return tuple(
        RectBivariateSpline(y_nodes, x_nodes, values, kx=3, ky=3)(y_all, x_all)
        for values in (xi, eta)
    )


# --------------------------------------------------------------------------- coverage


def exposure_coverage(models: list[ImageModel]) -> list[np.ndarray]:
    """Number of exposures whose detectors see each pixel's sky position.

    Parameters
    ----------
    models : list of ImageModel
        Frames with ``meta.wcs`` and ``meta.observation.visit_number`` and
        ``exposure_number`` (an exposure is one visit's exposure number).

    Returns
    -------
    list of ndarray
        Per model, int ``(ny, nx)``: distinct exposures (its own included) with a detector
        whose pixel-edge bounding box contains the pixel centre's sky position. Geometry only:
        DO_NOT_USE pixels and weight masking are ignored.
    """
    return coverage_of_frames(
        [m.meta.wcs for m in models],
        [(m.meta.observation.visit_number, m.meta.observation.exposure_number) for m in models],
        [m.data.shape for m in models],
    )


def coverage_of_frames(
    wcs_list: list[WCS], exposures: list, shapes: list[tuple[int, int]]
) -> list[np.ndarray]:
    """:func:`exposure_coverage` of frames given by their WCS, exposure and ``(ny, nx)``."""
    coverage = []
    for wcs, (ny, nx) in zip(wcs_list, shapes, strict=True):
        ra, dec = wcs(*np.meshgrid(np.arange(nx), np.arange(ny)))
        seen: dict = {}
        for other, exposure, (oy, ox) in zip(wcs_list, exposures, shapes, strict=True):
            x, y = _world_to_pixel_checked(other, ra, dec)
            inside = (x >= -0.5) & (x < ox - 0.5) & (y >= -0.5) & (y < oy - 0.5)
            seen[exposure] = seen.get(exposure, np.zeros((ny, nx), bool)) | inside
        coverage.append(np.sum(list(seen.values()), axis=0))
    return coverage


def _world_to_pixel_checked(
    wcs: WCS, ra: np.ndarray, dec: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (x, y) of ICRS positions [deg]; NaN where the polynomial inverse is invalid.

    The fitted inverse only holds near the detector, so far positions could land anywhere;
    a forward round trip within 1e-3 pixel identifies the valid ones.
    """
    with np.errstate(all="ignore"):
        x, y = wcs.backward_transform(ra, dec)
        ra_back, dec_back = wcs.forward_transform(x, y)
        miss_arcsec = 3600.0 * np.hypot((ra_back - ra) * np.cos(np.deg2rad(dec)), dec_back - dec)
    valid = miss_arcsec < 1e-3 * PIXEL_SCALE_ARCSEC
    return np.where(valid, x, np.nan), np.where(valid, y, np.nan)
