"""Configuration, constants, naming and random streams of the synthetic generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PIXEL_SCALE_ARCSEC = 0.031
"""Nominal NIRCam short-wavelength pixel scale [arcsec/pixel]."""

DO_NOT_USE = 1
JUMP_DET = 4
DEAD = 1024

_MJYSR_PER_E_PER_S = 0.1  # surface brightness [MJy/sr] of a 1 e-/s pixel (PHOTMJSR / gain)
_MODULES = "AB"
_DETECTORS_PER_MODULE = 4
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
_STREAM_HOT_PIXELS = 7


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic association; all keyword options of :func:`make_models`.

    Attributes
    ----------
    n_exposures : int
        Number of dithered exposures per pointing (each is one jwst group).
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
    hot_fraction : float
        Fraction of a detector's usable pixels that are hot: unflagged in DQ, the same pixels
        and excess in every exposure (10-300 sky sigma, log-uniform). 0 (the default) draws
        nothing, so frames are identical to those made before the option existed.
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
    pointings : tuple of int
        ``(n_rows, n_columns)`` of a survey grid of pointings, each with its own
        ``n_exposures`` dithers; ``(1, 1)`` is a single pointing. Pointing ``k`` (row-major)
        is visit ``k + 1``, so its exposures form their own jwst groups.
    pointing_step : float
        Distance between neighbouring pointings as a fraction of the detector array's
        footprint along each axis; below 1 neighbouring pointings overlap at their edges.
        The default 0.85 leaves 15 % of the footprint shared, more than the largest
        relative dither offset between two pointings (2 x ``dither_fraction``), so every
        dither of a pointing overlaps every dither of its neighbours.
    ra, dec : float
        ICRS position of the centre of the pointing grid [deg].
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
    hot_fraction: float = 0.0
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
    pointings: tuple[int, int] = (1, 1)
    pointing_step: float = 0.85
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
        if len(self.pointings) != 2 or min(self.pointings) < 1:
            raise ValueError(f"pointings must be (n_rows, n_columns) >= 1, got {self.pointings}")
        if self.pointings[0] * self.pointings[1] > 999:
            raise ValueError(f"pointings must give at most 999 visits, got {self.pointings}")
        if not self.pointing_step > 0.0:
            raise ValueError(f"pointing_step must be > 0, got {self.pointing_step}")
        if self.n_exposures < 1:
            raise ValueError(f"n_exposures must be >= 1, got {self.n_exposures}")
        if self.exposure_time <= 0:
            raise ValueError(f"exposure_time must be > 0 s, got {self.exposure_time}")
        if self.vparity not in (-1, 1):
            raise ValueError(f"vparity must be -1 or 1, got {self.vparity}")
        if self.sky_level <= 0:
            raise ValueError(f"sky_level must be > 0 MJy/sr, got {self.sky_level}")
        for name in (
            "cr_fraction",
            "faint_cr_fraction",
            "dead_fraction",
            "jump_fraction",
            "hot_fraction",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("dead_columns", "distortion_px", "read_noise_electrons", "dither_fraction"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def n_pointings(self) -> int:
        """Number of pointings of the survey grid."""
        return self.pointings[0] * self.pointings[1]

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


# --------------------------------------------------------------------------- naming


def config_of(
    n_exposures: int,
    n_detectors: int,
    detector_shape: tuple[int, int],
    seed: int,
    **options: Any,
) -> SyntheticConfig:
    """The validated configuration of :func:`make_models` and :func:`write_association`."""
    if "pointings" in options:
        options["pointings"] = tuple(int(n) for n in options["pointings"])
    return SyntheticConfig(
        n_exposures=n_exposures,
        n_detectors=n_detectors,
        detector_shape=(int(detector_shape[0]), int(detector_shape[1])),
        seed=seed,
        **options,
    )


def detector_name(index: int) -> str:
    """JWST name of detector ``index`` (0-based): NRCA1..NRCA4, NRCB1..NRCB4."""
    module, number = divmod(index, _DETECTORS_PER_MODULE)
    return f"NRC{_MODULES[module]}{number + 1}"


def cal_file_name(exposure: int, detector: int, visit: int = 1) -> str:
    """File name of one frame, e.g. ``jw01234001001_01101_00001_nrca1_cal.fits``.

    Parameters
    ----------
    exposure : int
        Exposure (dither) number within its visit, from 1.
    detector : int
        Detector index, from 0.
    visit : int
        Visit number, from 1: the pointing of a survey grid.
    """
    name = detector_name(detector).lower()
    return f"jw01234001{visit:03d}_01101_{exposure:05d}_{name}_cal.fits"


# --------------------------------------------------------------------------- random streams


def _rng(config: SyntheticConfig, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, stream, *keys])


def _read_noise_variance(config: SyntheticConfig, factor: float | np.ndarray) -> Any:
    """Read-noise variance [(MJy/sr)^2] for ``factor`` times the nominal read noise."""
    return (factor * config.read_noise_electrons / config.exposure_time * _MJYSR_PER_E_PER_S) ** 2
