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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy import coordinates
from astropy import units as u
from astropy.modeling import Model
from astropy.modeling import models as am
from gwcs import coordinate_frames as cf
from gwcs.wcs import WCS
from scipy.interpolate import RectBivariateSpline
from stdatamodels.jwst.datamodels import ImageModel

__all__ = [
    "SyntheticAssociation",
    "SyntheticConfig",
    "cal_file_name",
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

# Independent random streams: changing one component never reshuffles the others.
_STREAM_DISTORTION, _STREAM_DITHER, _STREAM_SCENE = 0, 1, 2
_STREAM_NOISE, _STREAM_BAD_PIXELS, _STREAM_COSMIC_RAYS = 3, 4, 5


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
        Mean number of sources on one detector's area of sky; ``None`` means 40 stars and
        30 galaxies per 256 x 256 pixels, so the density stays fixed as detectors grow.
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
        for name in ("cr_fraction", "faint_cr_fraction", "dead_fraction", "jump_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def pixels_per_detector(self) -> int:
        """Number of pixels of one detector."""
        return self.detector_shape[0] * self.detector_shape[1]

    @property
    def stars_per_detector(self) -> float:
        """Mean number of stars on one detector."""
        return 40.0 * self.pixels_per_detector / 256**2 if self.n_stars is None else self.n_stars

    @property
    def galaxies_per_detector(self) -> float:
        """Mean number of galaxies on one detector."""
        return 30.0 * self.pixels_per_detector / 256**2 if self.n_galaxies is None else self.n_galaxies

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


def pc_matrix(roll: float, v3yangle: float, vparity: int) -> np.ndarray:
    """Rotation/parity matrix, shape (2, 2), from angles in degrees (jwst's formula)."""
    rel = np.deg2rad(roll - vparity * v3yangle)
    return np.array(
        [[vparity * np.cos(rel), np.sin(rel)], [-vparity * np.sin(rel), np.cos(rel)]]
    )


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


def _monomial_exponents(degree: int) -> list[tuple[int, int]]:
    """``(i, j)`` of every ``c{i}_{j}`` coefficient of an astropy ``Polynomial2D``."""
    names = am.Polynomial2D(degree).param_names
    return [tuple(int(k) for k in name[1:].split("_")) for name in names]


def _polynomial(degree: int, coefficients: np.ndarray) -> am.Polynomial2D:
    names = am.Polynomial2D(degree).param_names
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
    """Cubic distortion in normalised detector coordinates, identity linear part.

    A common barrel term plus random quadratic and cubic terms; the non-linear part is
    scaled so that its best-affine-fit residual at the worst corner is
    ``config.distortion_px`` pixels.
    """
    rng = _rng(config, _STREAM_DISTORTION, detector)
    exponents = _monomial_exponents(3)
    nonlinear = np.array([i + j >= 2 for i, j in exponents])
    coef_x, coef_y = (np.where(nonlinear, rng.normal(0.0, 0.3, len(exponents)), 0.0) for _ in "xy")
    barrel = {(3, 0): (1.0, 0.0), (1, 2): (1.0, 0.0), (2, 1): (0.0, 1.0), (0, 3): (0.0, 1.0)}
    for k, ij in enumerate(exponents):
        coef_x[k] += barrel.get(ij, (0.0, 0.0))[0]
        coef_y[k] += barrel.get(ij, (0.0, 0.0))[1]

    u, v, half = _normalised_grid(config.detector_shape, 33, 1.0)
    deviation_px = half * _affine_residual_at_corners(
        _polynomial(3, coef_x)(u, v), _polynomial(3, coef_y)(u, v), u, v
    )
    scale = config.distortion_px / deviation_px
    coef_x, coef_y = coef_x * scale, coef_y * scale
    linear = {(1, 0): coef_x, (0, 1): coef_y}
    for k, ij in enumerate(exponents):
        if ij in linear:
            linear[ij][k] = 1.0
    return _polynomial(3, coef_x), _polynomial(3, coef_y)


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
    u_fit, v_fit, half = _normalised_grid(config.detector_shape, 64, 1.15)
    u_chk, v_chk, _ = _normalised_grid(config.detector_shape, 101, 1.05)
    p_fit, q_fit = poly_x(u_fit, v_fit), poly_y(u_fit, v_fit)
    p_chk, q_chk = poly_x(u_chk, v_chk), poly_y(u_chk, v_chk)
    for degree in range(5, 17, 2):
        design = _design_matrix(p_fit, q_fit, degree)
        inv_x = _polynomial(degree, np.linalg.lstsq(design, u_fit.ravel(), rcond=None)[0])
        inv_y = _polynomial(degree, np.linalg.lstsq(design, v_fit.ravel(), rcond=None)[0])
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
    pc = pc_matrix(pointing.roll, config.v3yangle, config.vparity)
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
    """Bounding box ``[[xi_min, eta_min], [xi_max, eta_max]]`` [arcsec] of all detectors,
    padded by 2 arcsec so that sources just outside still spill light onto the edges."""
    projection = _scene_projection(config)
    corners = [
        np.column_stack(projection(*wcs.forward_transform(*_pixel_corners(config.detector_shape))))
        for wcs in wcs_list
    ]
    points = np.concatenate(corners)
    return np.array([points.min(axis=0) - 2.0, points.max(axis=0) + 2.0])


def _make_scene(config: SyntheticConfig, box: np.ndarray) -> _Scene:
    """Draw stars and galaxies uniformly over ``box`` [arcsec] with the configured density.

    Brightness is in units of the sky noise: stars peak at 3-3000 sigma, galaxies at
    0.5-200 sigma, both skewed towards faint.
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

    return _Scene(
        star_xy=positions(n_stars),
        star_peak=sigma * skewed_log_uniform(3.0, 3000.0, n_stars),
        star_sigma=config.psf_fwhm_px * PIXEL_SCALE_ARCSEC / (2 * np.sqrt(2 * np.log(2))),
        galaxy_xy=positions(n_galaxies),
        galaxy_peak=sigma * skewed_log_uniform(0.5, 200.0, n_galaxies),
        galaxy_re=PIXEL_SCALE_ARCSEC * rng.uniform(1.5, 6.0, n_galaxies),
        galaxy_n=rng.uniform(0.5, 2.5, n_galaxies),
        galaxy_q=rng.uniform(0.3, 1.0, n_galaxies),
        galaxy_pa=rng.uniform(0, np.pi, n_galaxies),
    )


def _sersic_b(n: np.ndarray) -> np.ndarray:
    """Sersic ``b_n`` (Ciotti & Bertin 1999 asymptotic form), so ``r_e`` encloses half the light."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n)


def _star_profile(scene: _Scene, index: np.ndarray, dxi: np.ndarray, deta: np.ndarray) -> np.ndarray:
    r2 = dxi**2 + deta**2
    return scene.star_peak[index] * np.exp(-0.5 * r2 / scene.star_sigma**2)


def _galaxy_profile(
    scene: _Scene, index: np.ndarray, dxi: np.ndarray, deta: np.ndarray
) -> np.ndarray:
    cos, sin = np.cos(scene.galaxy_pa[index]), np.sin(scene.galaxy_pa[index])
    major, minor = dxi * cos + deta * sin, (deta * cos - dxi * sin) / scene.galaxy_q[index]
    n = scene.galaxy_n[index]
    r = np.sqrt(major**2 + minor**2) / scene.galaxy_re[index]
    return scene.galaxy_peak[index] * np.exp(-_sersic_b(n) * r ** (1.0 / n))


def _stamp_radius_px(peak: np.ndarray, scale: np.ndarray, b: np.ndarray, n: np.ndarray,
                     floor: float) -> np.ndarray:
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
    handled together (radius rounded up to a power of two), so the work is vectorised over
    sources and bounded to ~2e6 stamp pixels at a time.
    """
    ny, nx = xi.shape
    image = np.zeros(ny * nx)
    xi, eta = xi.ravel(), eta.ravel()
    bucket = 2 ** np.ceil(np.log2(np.clip(radius_px, 4, 64))).astype(int)
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
    n = scene.galaxy_n[k]
    r = np.sqrt(major**2 + minor**2) / scene.galaxy_re[k]
    return scene.galaxy_peak[k] * np.exp(-_sersic_b(n) * r ** (1.0 / n))


def _sources_near_detector(
    wcs: WCS, projection: Model, xy: np.ndarray, shape: tuple[int, int], margin_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of sources within ``margin_px`` of the detector, and their (x, y) pixels.

    An affine approximation of scene -> pixel (wrong by at most the distortion) discards far
    sources first, because the polynomial inverse of the distortion is only valid near the
    detector.
    """
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 9), np.linspace(0, ny - 1, 9))
    design = _design_matrix(*(wcs.forward_transform | projection)(gx, gy), 1)
    source_design = _design_matrix(xy[:, 0], xy[:, 1], 1)
    x0, y0 = (
        source_design @ np.linalg.lstsq(design, g.ravel(), rcond=None)[0] for g in (gx, gy)
    )

    def within(x: np.ndarray, y: np.ndarray, pad: float) -> np.ndarray:
        return (x > -pad) & (x < nx - 1 + pad) & (y > -pad) & (y < ny - 1 + pad)

    near = np.flatnonzero(within(x0, y0, margin_px + 4 * max(1.0, abs(_MAX_DISTORTION_PX))))
    x, y = (projection.inverse | wcs.backward_transform)(xy[near, 0], xy[near, 1])
    keep = within(x, y, margin_px)
    return near[keep], np.column_stack([x[keep], y[keep]])
