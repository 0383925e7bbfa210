"""The sky scene: stars and galaxies fixed on the sky, and their rendering on a detector."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from astropy.modeling import Model
from gwcs.wcs import WCS

from outlier_dask.synthetic.config import (
    _STREAM_SCENE,
    PIXEL_SCALE_ARCSEC,
    SyntheticConfig,
    _rng,
)
from outlier_dask.synthetic.geometry import (
    _design_matrix,
    _pixel_corners,
    _pixel_scene_offsets,
    _scene_projection,
)

_STAMP_HALF_SIZES_PX = (4, 6, 8, 12, 16, 24, 32, 48, 64)
_MAX_STAMP_RADIUS_PX = float(_STAMP_HALF_SIZES_PX[-1])
_SOLVER_ITERATIONS = 12


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
