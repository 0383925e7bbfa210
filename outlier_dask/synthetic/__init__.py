"""Seeded synthetic NIRCam-like Stage 3 imaging associations.

The generator builds what the JWST pipeline's ``outlier_detection`` step sees after
``calwebb_image2``: one ``_cal.fits`` file per exposure and detector, with a distorted gwcs
per detector, a fixed sky scene (stars and galaxies) seen through every dithered exposure,
consistent noise arrays, dead pixels and injected cosmic rays whose positions are known.

Everything is drawn from independent random streams keyed by ``(seed, stream, exposure,
detector)``, so the scene, the noise, the bad pixels and the cosmic rays can each be varied
without changing the others (e.g. ``cr_fraction=0`` gives the same frames without cosmic
rays).

Geometry of one detector (pixel ``(x, y)`` to ICRS)::

    centre and normalise      u = (x - xc) / h,  v = (y - yc) / h      h = max(nx, ny) / 2
    distortion (cubic)        (u, v) -> (p, q)    fitted polynomial inverse
    focal plane [arcsec]      (p, q) * h * pixel_scale + detector offset
    pointing                  AffineTransformation2D(PC(roll, v3yangle, vparity) / 3600)
                              | Pix2Sky_TAN | RotateNative2Celestial(ra, dec, 180)

The ``PC`` matrix is the one jwst builds from ``meta.wcsinfo`` (``roll_ref``, ``v3yangle``,
``vparity``) for the resampled output grid, so that grid is aligned with the detectors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from copy import deepcopy
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from astropy import coordinates
from astropy import units as u
from astropy.modeling import Model
from astropy.modeling import models as am
from astropy.time import Time
from gwcs import coordinate_frames as cf
from gwcs.wcs import WCS
from scipy.interpolate import RectBivariateSpline
from stdatamodels.jwst.datamodels import ImageModel

__all__ = [
    "SyntheticAssociation",
    "SyntheticConfig",
    "cal_file_name",
    "detector_name",
    "exposure_coverage",
    "make_models",
    "write_association",
]

PIXEL_SCALE_ARCSEC = 0.031
"""Nominal NIRCam short-wavelength pixel scale [arcsec/pixel]."""

DO_NOT_USE = 1
JUMP_DET = 4
DEAD = 1024

_ARCSEC_PER_RAD = 180.0 * 3600.0 / np.pi
_MJYSR_PER_E_PER_S = 0.1  # surface brightness [MJy/sr] of a 1 e-/s pixel (PHOTMJSR / gain)
_V2V3_MODULE_CENTRE_ARCSEC = (86.0, -493.0)  # roughly NIRCam module A
_MODULES = "AB"
_DETECTORS_PER_MODULE = 4
_INVERSE_TOLERANCE_PX = 1e-5
_MIN_CR_SIGMA = 8.0
_STAMP_HALF_SIZES_PX = (4, 6, 8, 12, 16, 24, 32, 48, 64)
_MAX_STAMP_RADIUS_PX = float(_STAMP_HALF_SIZES_PX[-1])
_SOLVER_ITERATIONS = 12
_FIRST_EXPOSURE_MJD = 60310.25
_OBSERVATION_IDS = {
    "program_number": "01234",
    "observation_number": "001",
    "visit_number": "001",
    "visit_group": "01",
    "sequence_id": "1",
    "activity_id": "01",
}

# Independent random streams: changing one component never reshuffles the others.
_STREAM_DISTORTION, _STREAM_DITHER, _STREAM_SCENE = 0, 1, 2
_STREAM_NOISE, _STREAM_BAD_PIXELS, _STREAM_COSMIC_RAYS, _STREAM_SKY = 3, 4, 5, 6


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic association; all keyword options of :func:`make_models`.

    Attributes
    ----------
    n_exposures : int
        Number of dithered exposures (each is one jwst group).
    n_detectors : int
        Detectors per exposure, 1 to 8 (NRCA1..NRCA4, then NRCB1..NRCB4).
    detector_shape : tuple of int
        ``(ny, nx)`` of every detector array, in pixels.
    seed : int
        Seed of every random stream.
    cr_fraction : float
        Expected fraction of a detector's pixels hit by cosmic rays.
    faint_cr_fraction : float
        Fraction of cosmic-ray events drawn at 8-15 sigma instead of 20-500 sigma.
    dead_fraction : float
        Fraction of randomly placed dead (DO_NOT_USE | DEAD) pixels.
    dead_columns : int
        Fully dead columns per detector.
    jump_fraction : float
        Fraction of usable pixels carrying a JUMP_DET flag (good data, not DO_NOT_USE).
    n_stars, n_galaxies : float or None
        Mean number of sources on one detector's area of sky; ``None`` means 50 stars and
        40 galaxies per 256 x 256 pixels, so the density stays fixed as detectors grow.
    sky_level : float
        Sky surface brightness [MJy/sr].
    sky_level_scatter : float
        Fractional standard deviation of the sky level between exposures.
    exposure_time : float
        Exposure time [s], also the measurement time.
    read_noise_electrons : float
        Effective read noise of a ramp fit [e-].
    psf_fwhm_px : float
        FWHM of the Gaussian stellar PSF [pixels].
    distortion_px : float
        Largest deviation at a detector corner between the distortion and its best affine
        fit [pixels].
    detector_gap_fraction : float
        Gap between neighbouring detectors as a fraction of the detector width.
    dither_fraction : float
        Largest dither offset as a fraction of the detector width.
    ra, dec : float
        ICRS position of the first pointing [deg].
    roll : float
        ``roll_ref`` of the pointing [deg]; exposures differ by ~1e-4 deg.
    v3yangle : float
        Angle between the detector y axis and V3 [deg] (NIRCam ~ -0.5).
    vparity : int
        Parity of the detector axes relative to V2/V3 (-1 for NIRCam).
    background_level_in_meta : bool
        If True, ``meta.background.level`` holds each frame's sky level and
        ``meta.background.subtracted`` is False, so jwst subtracts the level before
        drizzling (what ``skymatch`` leaves). If False both stay unset: nothing is subtracted.
    """

    n_exposures: int = 4
    n_detectors: int = 2
    detector_shape: tuple[int, int] = (256, 256)
    seed: int = 0
    cr_fraction: float = 2e-3
    faint_cr_fraction: float = 0.15
    dead_fraction: float = 1e-3
    dead_columns: int = 1
    jump_fraction: float = 2e-3
    n_stars: float | None = None
    n_galaxies: float | None = None
    sky_level: float = 0.15
    sky_level_scatter: float = 0.0
    exposure_time: float = 500.0
    read_noise_electrons: float = 10.0
    psf_fwhm_px: float = 2.0
    distortion_px: float = 2.5
    detector_gap_fraction: float = 0.08
    dither_fraction: float = 0.06
    ra: float = 53.16
    dec: float = -27.79
    roll: float = 25.0
    v3yangle: float = -0.55
    vparity: int = -1
    background_level_in_meta: bool = False

    def __post_init__(self) -> None:
        ny, nx = self.detector_shape
        if min(ny, nx) < 16:
            raise ValueError(f"detector_shape must be at least 16 x 16, got {self.detector_shape}")
        if not 1 <= self.n_detectors <= len(_MODULES) * _DETECTORS_PER_MODULE:
            raise ValueError(f"n_detectors must be in 1..8, got {self.n_detectors}")
        if self.n_exposures < 1:
            raise ValueError(f"n_exposures must be >= 1, got {self.n_exposures}")
        if self.exposure_time <= 0:
            raise ValueError(f"exposure_time must be > 0 s, got {self.exposure_time}")
        if self.vparity not in (-1, 1):
            raise ValueError(f"vparity must be -1 or 1, got {self.vparity}")
        if self.sky_level <= 0:
            raise ValueError(f"sky_level must be > 0 MJy/sr, got {self.sky_level}")
        for name in ("cr_fraction", "faint_cr_fraction", "dead_fraction", "jump_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("dead_columns", "distortion_px", "read_noise_electrons", "dither_fraction"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def pixels_per_detector(self) -> int:
        """Number of pixels of one detector."""
        return self.detector_shape[0] * self.detector_shape[1]

    @property
    def stars_per_detector(self) -> float:
        """Mean number of stars on one detector."""
        return 50.0 * self.pixels_per_detector / 256**2 if self.n_stars is None else self.n_stars

    @property
    def galaxies_per_detector(self) -> float:
        """Mean number of galaxies on one detector."""
        return (
            40.0 * self.pixels_per_detector / 256**2 if self.n_galaxies is None else self.n_galaxies
        )

    @property
    def sky_sigma(self) -> float:
        """Noise of a sky pixel [MJy/sr]; the unit of source and cosmic-ray brightness."""
        var_poisson = self.sky_level * _MJYSR_PER_E_PER_S / self.exposure_time
        return float(np.sqrt(var_poisson + _read_noise_variance(self, 1.0)))


@dataclass(frozen=True)
class SyntheticAssociation:
    """A written synthetic association.

    Attributes
    ----------
    asn_path : Path
        The association JSON.
    cal_paths : list of Path
        The ``_cal.fits`` files, in association member order (exposure-major).
    truth : dict of str to ndarray
        Basename of each cal file -> bool ``(ny, nx)`` mask of injected cosmic rays.
    product_name : str
        Name of the association's single product.
    """

    asn_path: Path
    cal_paths: list[Path]
    truth: dict[str, np.ndarray]
    product_name: str


@dataclass(frozen=True)
class _Pointing:
    ra: float  # [deg]
    dec: float  # [deg]
    roll: float  # roll_ref [deg]


@dataclass(frozen=True)
class _Scene:
    """Sources fixed on the sky, in tangent-plane offsets [arcsec] around the first pointing."""

    star_xy: np.ndarray  # (n_stars, 2) [arcsec]
    star_peak: np.ndarray  # (n_stars,) [MJy/sr]
    star_sigma: float  # [arcsec]
    galaxy_xy: np.ndarray  # (n_galaxies, 2) [arcsec]
    galaxy_peak: np.ndarray  # (n_galaxies,) central surface brightness [MJy/sr]
    galaxy_re: np.ndarray  # (n_galaxies,) effective radius [arcsec]
    galaxy_n: np.ndarray  # (n_galaxies,) Sersic index
    galaxy_b: np.ndarray  # (n_galaxies,) Sersic b_n, so that galaxy_re encloses half the light
    galaxy_q: np.ndarray  # (n_galaxies,) axis ratio
    galaxy_pa: np.ndarray  # (n_galaxies,) position angle in the tangent plane [rad]


# --------------------------------------------------------------------------- naming


def detector_name(index: int) -> str:
    """JWST name of detector ``index`` (0-based): NRCA1..NRCA4, NRCB1..NRCB4."""
    module, number = divmod(index, _DETECTORS_PER_MODULE)
    return f"NRC{_MODULES[module]}{number + 1}"


def cal_file_name(exposure: int, detector: int) -> str:
    """File name of one frame, e.g. ``jw01234001001_01101_00001_nrca1_cal.fits``.

    Parameters
    ----------
    exposure : int
        Exposure number, from 1.
    detector : int
        Detector index, from 0.
    """
    return f"jw01234001001_01101_{exposure:05d}_{detector_name(detector).lower()}_cal.fits"


# --------------------------------------------------------------------------- geometry


def _rng(config: SyntheticConfig, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, stream, *keys])


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


def _exposure_pointings(config: SyntheticConfig) -> list[_Pointing]:
    """One pointing per exposure: dithers on a ring, in detector-aligned directions.

    Offsets are non-integer pixels up to ``dither_fraction`` of a detector width; the roll
    changes by ~1e-4 deg between exposures.
    """
    rng = _rng(config, _STREAM_DITHER)
    radius = config.dither_fraction * config.detector_shape[1] * PIXEL_SCALE_ARCSEC
    n = config.n_exposures
    angle = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n) / n
    r = radius * rng.uniform(0.4, 1.0, n)
    offsets = np.column_stack([r * np.cos(angle), r * np.sin(angle)])
    base = _Pointing(config.ra, config.dec, config.roll)
    ra, dec = _pointing_transform(base, config)(offsets[:, 0], offsets[:, 1])
    roll = config.roll + rng.normal(0.0, 1e-4, n)
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


# --------------------------------------------------------------------------- scene


def _footprint_box_arcsec(wcs_list: list[WCS], config: SyntheticConfig) -> np.ndarray:
    """Scene region ``[[xi_min, eta_min], [xi_max, eta_max]]`` [arcsec] to fill with sources.

    The bounding box of all detector corners, padded by the largest stamp radius (plus 20 %
    for the distortion), so that sources just outside a detector spill light onto its edge.
    """
    projection = _scene_projection(config)
    corners = [
        np.column_stack(projection(*wcs.forward_transform(*_pixel_corners(config.detector_shape))))
        for wcs in wcs_list
    ]
    points = np.concatenate(corners)
    pad = 1.2 * _MAX_STAMP_RADIUS_PX * PIXEL_SCALE_ARCSEC
    return np.array([points.min(axis=0) - pad, points.max(axis=0) + pad])


def _make_scene(config: SyntheticConfig, box: np.ndarray) -> _Scene:
    """Draw stars and galaxies uniformly over ``box`` [arcsec] with the configured density.

    Brightness is in units of the sky noise: stars peak at 5-5000 sigma, galaxies at
    1-300 sigma, both skewed towards faint.
    """
    rng = _rng(config, _STREAM_SCENE)
    area = np.prod(box[1] - box[0])
    detector_area = config.pixels_per_detector * PIXEL_SCALE_ARCSEC**2
    n_stars = rng.poisson(config.stars_per_detector * area / detector_area)
    n_galaxies = rng.poisson(config.galaxies_per_detector * area / detector_area)
    sigma = config.sky_sigma

    def positions(n: int) -> np.ndarray:
        return rng.uniform(box[0], box[1], size=(n, 2))

    def skewed_log_uniform(low: float, high: float, n: int) -> np.ndarray:
        return low * (high / low) ** (rng.uniform(0, 1, n) ** 2)

    galaxy_n = rng.uniform(0.5, 2.5, n_galaxies)
    return _Scene(
        star_xy=positions(n_stars),
        star_peak=sigma * skewed_log_uniform(5.0, 5000.0, n_stars),
        star_sigma=config.psf_fwhm_px * PIXEL_SCALE_ARCSEC / (2 * np.sqrt(2 * np.log(2))),
        galaxy_xy=positions(n_galaxies),
        galaxy_peak=sigma * skewed_log_uniform(1.0, 300.0, n_galaxies),
        galaxy_re=PIXEL_SCALE_ARCSEC * rng.uniform(1.5, 6.0, n_galaxies),
        galaxy_n=galaxy_n,
        galaxy_b=_sersic_b(galaxy_n),
        galaxy_q=rng.uniform(0.3, 1.0, n_galaxies),
        galaxy_pa=rng.uniform(0, np.pi, n_galaxies),
    )


def _sersic_b(n: np.ndarray) -> np.ndarray:
    """Sersic ``b_n`` (Ciotti & Bertin 1999 asymptotic form), so ``r_e`` encloses half the light."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n)


def _stamp_radius_px(
    peak: np.ndarray,
    scale: float | np.ndarray,
    b: float | np.ndarray,
    n: float | np.ndarray,
    floor: float,
) -> np.ndarray:
    """Radius [px] where ``peak * exp(-b (r / scale)**(1/n))`` falls below ``floor``.

    ``scale`` is in arcsec; one pixel is added so that the stamp edge is safely below.
    """
    depth = np.log(np.maximum(peak / floor, 1.0 + 1e-9))
    return scale / PIXEL_SCALE_ARCSEC * (depth / b) ** n + 1.0


def _render_sources(
    xi: np.ndarray,
    eta: np.ndarray,
    centres_px: np.ndarray,
    radius_px: np.ndarray,
    profile: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Sum of source profiles on a detector, float64 ``(ny, nx)`` [MJy/sr].

    Each source ``k`` is evaluated on a square stamp around its pixel centre
    ``centres_px[k]`` (x, y), as ``profile(k, dxi, deta)`` at the exact scene offsets of the
    stamp pixels (``xi``, ``eta`` [arcsec], ``(ny, nx)``). Stamps of similar radius are
    handled together (radius rounded up to one of ``_STAMP_HALF_SIZES_PX``), vectorised over
    sources and bounded to ~2e6 stamp pixels at a time.
    """
    ny, nx = xi.shape
    image = np.zeros(ny * nx)
    xi, eta = xi.ravel(), eta.ravel()
    sizes = np.array(_STAMP_HALF_SIZES_PX)
    bucket = sizes[np.searchsorted(sizes, np.minimum(radius_px, sizes[-1]))]
    for half in np.unique(bucket):
        members = np.flatnonzero(bucket == half)
        step = np.arange(-half, half + 1)
        batch = max(1, 2_000_000 // step.size**2)
        for start in range(0, members.size, batch):
            sources = members[start : start + batch]
            cx, cy = np.rint(centres_px[sources]).astype(int).T
            ix = cx[:, None, None] + step[None, None, :]
            iy = cy[:, None, None] + step[None, :, None]
            inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
            flat = (iy * nx + ix)[inside]
            owner = np.broadcast_to(sources[:, None, None], inside.shape)[inside]
            values = profile(owner, xi[flat], eta[flat])
            image += np.bincount(flat, weights=values, minlength=image.size)
    return image.reshape(ny, nx)


def _star_profile(scene: _Scene, k: np.ndarray, xi: np.ndarray, eta: np.ndarray) -> np.ndarray:
    r2 = (xi - scene.star_xy[k, 0]) ** 2 + (eta - scene.star_xy[k, 1]) ** 2
    return scene.star_peak[k] * np.exp(-0.5 * r2 / scene.star_sigma**2)


def _galaxy_profile(scene: _Scene, k: np.ndarray, xi: np.ndarray, eta: np.ndarray) -> np.ndarray:
    dxi, deta = xi - scene.galaxy_xy[k, 0], eta - scene.galaxy_xy[k, 1]
    cos, sin = np.cos(scene.galaxy_pa[k]), np.sin(scene.galaxy_pa[k])
    major, minor = dxi * cos + deta * sin, (deta * cos - dxi * sin) / scene.galaxy_q[k]
    r2 = (major**2 + minor**2) / scene.galaxy_re[k] ** 2
    return scene.galaxy_peak[k] * np.exp(-scene.galaxy_b[k] * r2 ** (0.5 / scene.galaxy_n[k]))


def _sources_near_detector(
    wcs: WCS, projection: Model, xy: np.ndarray, shape: tuple[int, int], margin_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of sources within ``margin_px`` of the detector, and their (x, y) pixels.

    ``xy`` holds scene offsets [arcsec], shape (n, 2). Pixel positions solve the forward
    transform by fixed-point iteration on its affine approximation, which stays valid far
    outside the detector, where the fitted polynomial inverse of the distortion is not.
    """
    ny, nx = shape
    to_scene = wcs.forward_transform | projection
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 9), np.linspace(0, ny - 1, 9))
    coef = np.linalg.lstsq(
        _design_matrix(gx, gy, 1), np.column_stack([c.ravel() for c in to_scene(gx, gy)]), None
    )[0]
    offset, to_pixel = coef[0], np.linalg.inv(coef[1:].T)

    def within(pixel: np.ndarray, pad: float) -> np.ndarray:
        x, y = pixel.T
        return (x > -pad) & (x < nx - 1 + pad) & (y > -pad) & (y < ny - 1 + pad)

    # far sources are dropped first: the cubic distortion grows fast away from the detector
    near = np.flatnonzero(within((xy - offset) @ to_pixel.T, margin_px + 0.25 * max(nx, ny)))
    target = xy[near]
    pixel = (target - offset) @ to_pixel.T
    for _ in range(_SOLVER_ITERATIONS):
        pixel += (target - np.column_stack(to_scene(*pixel.T))) @ to_pixel.T
    residual = np.hypot(*(target - np.column_stack(to_scene(*pixel.T))).T)
    keep = within(pixel, margin_px) & (residual < 1e-4 * PIXEL_SCALE_ARCSEC)
    return near[keep], pixel[keep]


def _render_scene(scene: _Scene, wcs: WCS, config: SyntheticConfig) -> np.ndarray:
    """Noise-free source surface brightness on one detector, float64 ``(ny, nx)`` [MJy/sr]."""
    projection = _scene_projection(config)
    xi, eta = _pixel_scene_offsets(wcs, projection, config.detector_shape)
    # truncation far below the noise; it differs between exposures by at most this much
    floor = 0.02 * config.sky_sigma
    # exp(-r^2 / 2 sigma^2) is the b = 1, n = 1/2 member of the Sersic family
    star_radius = _stamp_radius_px(
        scene.star_peak, np.sqrt(2.0) * scene.star_sigma, 1.0, 0.5, floor
    )
    galaxy_radius = _stamp_radius_px(
        scene.galaxy_peak, scene.galaxy_re, scene.galaxy_b, scene.galaxy_n, floor
    )
    image = np.zeros(config.detector_shape)
    for xy, radius, profile in (
        (scene.star_xy, star_radius, _star_profile),
        (scene.galaxy_xy, np.minimum(galaxy_radius, _MAX_STAMP_RADIUS_PX), _galaxy_profile),
    ):
        if xy.shape[0] == 0:
            continue
        index, centres = _sources_near_detector(
            wcs, projection, xy, config.detector_shape, radius.max()
        )
        image += _render_sources(
            xi, eta, centres, radius[index], partial(_indexed_profile, profile, scene, index)
        )
    return image


def _indexed_profile(
    profile: Callable[[_Scene, np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    scene: _Scene,
    index: np.ndarray,
    k: np.ndarray,
    xi: np.ndarray,
    eta: np.ndarray,
) -> np.ndarray:
    """``profile`` of the sources ``index[k]`` (a detector's subset) at offsets ``xi, eta``."""
    return profile(scene, index[k], xi, eta)


# --------------------------------------------------------------------------- noise and defects


def _read_noise_variance(config: SyntheticConfig, factor: float | np.ndarray) -> Any:
    """Read-noise variance [(MJy/sr)^2] for ``factor`` times the nominal read noise."""
    return (factor * config.read_noise_electrons / config.exposure_time * _MJYSR_PER_E_PER_S) ** 2


def _noise_variances(
    config: SyntheticConfig, signal: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``var_poisson, var_rnoise, var_flat`` [(MJy/sr)^2], float32 like ``signal`` (ny, nx).

    Poisson variance follows the noise-free signal [MJy/sr] (sky plus sources); the read
    noise is constant per detector to +-10 % with ~10 % pixel-to-pixel scatter; the flat
    field is known to 0.2-0.4 %.
    """
    shape = signal.shape
    var_poisson = signal * (_MJYSR_PER_E_PER_S / config.exposure_time)
    detector_factor = rng.uniform(0.9, 1.1)
    pixel_factor = np.exp(0.1 * rng.standard_normal(shape, dtype=np.float32))
    var_rnoise = _read_noise_variance(config, detector_factor * pixel_factor)
    var_flat = (signal * rng.uniform(0.002, 0.004, shape)) ** 2
    return tuple(v.astype(np.float32) for v in (var_poisson, var_rnoise, var_flat))


def _bad_pixel_dq(config: SyntheticConfig, exposure: int, detector: int) -> np.ndarray:
    """DQ array, uint32 ``(ny, nx)``: dead pixels and columns, and JUMP_DET on usable pixels.

    Dead pixels belong to the detector (same in every exposure); jump flags change with the
    exposure and do not make a pixel unusable.
    """
    ny, nx = config.detector_shape
    dead_rng = _rng(config, _STREAM_BAD_PIXELS, detector)
    dq = np.where(dead_rng.random((ny, nx)) < config.dead_fraction, DO_NOT_USE | DEAD, 0)
    dq = dq.astype(np.uint32)
    dq[:, dead_rng.choice(nx, size=min(config.dead_columns, nx), replace=False)] = DO_NOT_USE | DEAD
    jump_rng = _rng(config, _STREAM_BAD_PIXELS, detector, exposure)
    jumps = (jump_rng.random((ny, nx)) < config.jump_fraction) & (dq == 0)
    dq[jumps] |= JUMP_DET
    return dq


def _cosmic_ray_tracks(
    rng: np.random.Generator, n_events: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of ``n_events`` cosmic-ray events: half single pixels, half 2-6 pixel tracks.

    Returns ``x, y`` (int, shape (n_events, 6)) and a bool mask of the pixels that belong
    to each event. Tracks step one pixel along their major axis, so no pixel repeats.
    """
    ny, nx = shape
    x0, y0 = rng.integers(0, nx, n_events), rng.integers(0, ny, n_events)
    length = np.where(rng.random(n_events) < 0.5, 1, rng.integers(2, 7, n_events))
    angle = rng.uniform(0.0, 2.0 * np.pi, n_events)
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    t = np.arange(6)[None, :]
    steep = np.abs(sin) > np.abs(cos)
    dx = np.where(steep, np.rint(t * cos / np.abs(sin)), t * np.sign(cos))
    dy = np.where(steep, t * np.sign(sin), np.rint(t * sin / np.abs(cos)))
    x, y = x0[:, None] + dx.astype(int), y0[:, None] + dy.astype(int)
    member = (t < length[:, None]) & (x >= 0) & (x < nx) & (y >= 0) & (y < ny)
    return x, y, member


def _cosmic_ray_signal(
    config: SyntheticConfig, rng: np.random.Generator, err: np.ndarray, usable: np.ndarray
) -> np.ndarray:
    """Injected cosmic-ray surface brightness, float32 ``(ny, nx)`` [MJy/sr], 0 elsewhere.

    Event amplitudes are log-uniform in 20-500 ``err`` (times 0.7-1 along a track), except a
    ``faint_cr_fraction`` of events at 8-15 ``err`` per pixel. Unusable pixels get none.
    """
    mean_pixels_per_event = 0.5 * 1 + 0.5 * 4
    n_events = rng.poisson(config.cr_fraction * err.size / mean_pixels_per_event)
    x, y, member = _cosmic_ray_tracks(rng, n_events, err.shape)
    faint = rng.random(n_events) < config.faint_cr_fraction
    bright_sigma = 20.0 * 25.0 ** rng.random(n_events)
    n_sigma = np.where(
        faint[:, None],
        rng.uniform(_MIN_CR_SIGMA, 15.0, x.shape),
        bright_sigma[:, None] * rng.uniform(0.7, 1.0, x.shape),
    )
    x, y = np.clip(x, 0, err.shape[1] - 1), np.clip(y, 0, err.shape[0] - 1)
    hit = member & usable[y, x]
    amplitude = n_sigma[hit] * err[y[hit], x[hit]]
    signal = np.bincount(y[hit] * err.shape[1] + x[hit], weights=amplitude, minlength=err.size)
    return signal.reshape(err.shape).astype(np.float32)


# --------------------------------------------------------------------------- models


def _exposure_sky_levels(config: SyntheticConfig) -> np.ndarray:
    """Sky level of each exposure [MJy/sr], shape (n_exposures,)."""
    rng = _rng(config, _STREAM_SKY)
    return config.sky_level * (
        1.0 + config.sky_level_scatter * rng.standard_normal(config.n_exposures)
    )


def _set_metadata(
    model: ImageModel,
    config: SyntheticConfig,
    exposure: int,
    detector: int,
    pointing: _Pointing,
    sky_level: float,
) -> None:
    """Fill the metadata jwst reads: group id keys, times, instrument, wcsinfo, photometry.

    ``model.meta.wcs`` must already be set: ``ra_ref``/``dec_ref`` and ``s_region`` come
    from it.
    """
    ny, nx = config.detector_shape
    wcs = model.meta.wcs
    model.meta.filename = cal_file_name(exposure, detector)
    model.meta.telescope = "JWST"
    model.meta.bunit_data = model.meta.bunit_err = "MJy/sr"

    instrument = model.meta.instrument
    instrument.name, instrument.channel = "NIRCAM", "SHORT"
    instrument.detector = detector_name(detector)
    instrument.module = instrument.detector[3]
    instrument.filter, instrument.pupil = "F200W", "CLEAR"

    start = (
        Time(_FIRST_EXPOSURE_MJD, format="mjd")
        + (exposure - 1) * (config.exposure_time + 120.0) * u.s
    )
    model.meta.observation.date, model.meta.observation.time = start.isot.split("T")
    # the seven keys jwst joins into the group id: one group per exposure
    for key, value in {**_OBSERVATION_IDS, "exposure_number": str(exposure)}.items():
        setattr(model.meta.observation, key, value)

    exp = model.meta.exposure
    exp.type, exp.nints = "NRC_IMAGE", 1
    exp.exposure_time = exp.effective_exposure_time = exp.measurement_time = config.exposure_time
    exp.duration = config.exposure_time + 20.0
    exp.start_time = start.mjd
    exp.mid_time = start.mjd + 0.5 * exp.duration / 86400.0
    exp.end_time = start.mjd + exp.duration / 86400.0

    wcsinfo = model.meta.wcsinfo
    wcsinfo.ra_ref, wcsinfo.dec_ref = (float(c) for c in wcs((nx - 1) / 2.0, (ny - 1) / 2.0))
    # the same angles build the WCS's PC matrix, so jwst's output grid follows the detectors
    wcsinfo.roll_ref = pointing.roll
    wcsinfo.v3yangle, wcsinfo.vparity = config.v3yangle, config.vparity
    offset = _detector_offsets_arcsec(config)[detector]
    wcsinfo.v2_ref = _V2V3_MODULE_CENTRE_ARCSEC[0] + config.vparity * offset[0]
    wcsinfo.v3_ref = _V2V3_MODULE_CENTRE_ARCSEC[1] + offset[1]
    wcsinfo.s_region = _s_region(wcs, config.detector_shape)

    model.meta.photometry.pixelarea_arcsecsq = PIXEL_SCALE_ARCSEC**2
    model.meta.photometry.pixelarea_steradians = (PIXEL_SCALE_ARCSEC / _ARCSEC_PER_RAD) ** 2
    if config.background_level_in_meta:
        model.meta.background.level = float(sky_level)
        model.meta.background.subtracted = False
        model.meta.background.method = "synthetic"


def _frame(
    config: SyntheticConfig,
    scene: _Scene,
    wcs: WCS,
    exposure: int,
    detector: int,
    pointing: _Pointing,
    sky_level: float,
) -> tuple[ImageModel, np.ndarray]:
    """One calibrated frame and its bool ``(ny, nx)`` cosmic-ray truth mask."""
    signal = (sky_level + _render_scene(scene, wcs, config)).astype(np.float32)
    noise_rng = _rng(config, _STREAM_NOISE, exposure, detector)
    var_poisson, var_rnoise, var_flat = _noise_variances(config, signal, noise_rng)
    err = np.sqrt(var_poisson + var_rnoise + var_flat)
    data = signal + err * noise_rng.standard_normal(signal.shape, dtype=np.float32)

    dq = _bad_pixel_dq(config, exposure, detector)
    usable = (dq & DO_NOT_USE) == 0
    cr_rng = _rng(config, _STREAM_COSMIC_RAYS, exposure, detector)
    cosmic_rays = _cosmic_ray_signal(config, cr_rng, err, usable)
    data += cosmic_rays

    arrays = {
        "data": data,
        "err": err,
        "var_poisson": var_poisson,
        "var_rnoise": var_rnoise,
        "var_flat": var_flat,
    }
    for values in arrays.values():
        values[~usable] = np.nan  # like real _cal files
    model = ImageModel(dq=dq, **arrays)
    model.meta.wcs = wcs
    _set_metadata(model, config, exposure, detector, pointing, sky_level)
    return model, cosmic_rays > 0


def _iter_frames(config: SyntheticConfig) -> Iterator[tuple[ImageModel, np.ndarray]]:
    """Frames in association order (exposure-major), built one at a time."""
    offsets = _detector_offsets_arcsec(config)
    distortions = [_distortion_with_inverse(config, d) for d in range(config.n_detectors)]
    pointings = _exposure_pointings(config)
    wcs = [
        [
            _detector_wcs(config, deepcopy(distortions[d]), offsets[d], p)
            for d in range(len(offsets))
        ]
        for p in pointings
    ]
    scene = _make_scene(config, _footprint_box_arcsec([w for row in wcs for w in row], config))
    sky_levels = _exposure_sky_levels(config)
    for e, (row, pointing, sky) in enumerate(zip(wcs, pointings, sky_levels, strict=True)):
        for d, detector_wcs in enumerate(row):
            yield _frame(config, scene, detector_wcs, e + 1, d, pointing, float(sky))


# --------------------------------------------------------------------------- public API


def make_models(
    *,
    n_exposures: int = 4,
    n_detectors: int = 2,
    detector_shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    **options: Any,
) -> tuple[list[ImageModel], list[np.ndarray]]:
    """In-memory synthetic ``_cal`` models and their cosmic-ray truth masks.

    Parameters
    ----------
    n_exposures, n_detectors, detector_shape, seed
        See :class:`SyntheticConfig`.
    **options
        Any other :class:`SyntheticConfig` field (``cr_fraction``, ``dead_fraction``,
        ``n_stars``, ``n_galaxies``, ``background_level_in_meta``, ...).

    Returns
    -------
    models : list of ImageModel
        One per exposure and detector, exposure-major. ``data``, ``err``, ``var_*`` are
        float32 ``(ny, nx)`` [MJy/sr or (MJy/sr)^2], NaN at DO_NOT_USE pixels; ``dq`` uint32.
    truth : list of ndarray
        Bool ``(ny, nx)`` per model, True where a cosmic ray was injected.

    Raises
    ------
    ValueError
        If an option is out of range. ``TypeError`` for an unknown option.
    """
    config = SyntheticConfig(
        n_exposures=n_exposures,
        n_detectors=n_detectors,
        detector_shape=(int(detector_shape[0]), int(detector_shape[1])),
        seed=seed,
        **options,
    )
    frames = list(_iter_frames(config))
    return [m for m, _ in frames], [t for _, t in frames]


def write_association(
    directory: str | Path,
    *,
    n_exposures: int = 4,
    n_detectors: int = 2,
    detector_shape: tuple[int, int] = (256, 256),
    seed: int = 0,
    product_name: str = "synth",
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

    Returns
    -------
    SyntheticAssociation
        Paths and cosmic-ray truth masks.

    Raises
    ------
    ValueError
        If an option is out of range. ``TypeError`` for an unknown option.
    """
    config = SyntheticConfig(
        n_exposures=n_exposures,
        n_detectors=n_detectors,
        detector_shape=(int(detector_shape[0]), int(detector_shape[1])),
        seed=seed,
        **options,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cal_paths, truth = [], {}
    for model, cosmic_rays in _iter_frames(config):
        path = directory / model.meta.filename
        model.save(path)
        model.close()
        cal_paths.append(path)
        truth[path.name] = cosmic_rays
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


def exposure_coverage(models: list[ImageModel]) -> list[np.ndarray]:
    """Number of exposures whose detectors see each pixel's sky position.

    Parameters
    ----------
    models : list of ImageModel
        Frames with ``meta.wcs`` and ``meta.observation.exposure_number``.

    Returns
    -------
    list of ndarray
        Per model, int ``(ny, nx)``: distinct exposures (its own included) with a detector
        whose pixel-edge bounding box contains the pixel centre's sky position. Geometry only:
        DO_NOT_USE pixels and weight masking are ignored.
    """
    exposures = [m.meta.observation.exposure_number for m in models]
    coverage = []
    for model in models:
        ny, nx = model.data.shape
        ra, dec = model.meta.wcs(*np.meshgrid(np.arange(nx), np.arange(ny)))
        seen: dict[str, np.ndarray] = {}
        for other, exposure in zip(models, exposures, strict=True):
            x, y = _world_to_pixel_checked(other.meta.wcs, ra, dec)
            oy, ox = other.data.shape
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
