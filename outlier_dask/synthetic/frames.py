"""Calibrated frames: arrays, metadata, and the in-memory generator :func:`make_models`."""

from __future__ import annotations

from collections.abc import Iterator
from copy import deepcopy
from typing import Any

import numpy as np
from astropy import units as u
from astropy.time import Time
from gwcs.wcs import WCS
from stdatamodels.jwst.datamodels import ImageModel

from outlier_dask.synthetic.config import (
    _OBSERVATION_IDS,
    _STREAM_COSMIC_RAYS,
    _STREAM_NOISE,
    _STREAM_SKY,
    DO_NOT_USE,
    PIXEL_SCALE_ARCSEC,
    SyntheticConfig,
    _rng,
    cal_file_name,
    config_of,
    detector_name,
)
from outlier_dask.synthetic.defects import (
    _bad_pixel_dq,
    _cosmic_ray_signal,
    _hot_pixel_signal,
    _noise_variances,
)
from outlier_dask.synthetic.geometry import (
    _detector_offsets_arcsec,
    _detector_wcs,
    _distortion_with_inverse,
    _exposure_pointings,
    _Pointing,
    _s_region,
    coverage_of_frames,
)
from outlier_dask.synthetic.scene import _footprint_box_arcsec, _make_scene, _render_scene, _Scene
from outlier_dask.synthetic.truth import FrameTruth

_ARCSEC_PER_RAD = 180.0 * 3600.0 / np.pi
_V2V3_MODULE_CENTRE_ARCSEC = (86.0, -493.0)  # roughly NIRCam module A
_FIRST_EXPOSURE_MJD = 60310.25


def _exposure_sky_levels(config: SyntheticConfig) -> np.ndarray:
    """Sky level of each exposure [MJy/sr], shape (n_pointings * n_exposures,)."""
    rng = _rng(config, _STREAM_SKY)
    n = config.n_pointings * config.n_exposures
    return config.sky_level * (1.0 + config.sky_level_scatter * rng.standard_normal(n))


def _set_metadata(
    model: ImageModel,
    config: SyntheticConfig,
    exposure: int,
    detector: int,
    pointing: _Pointing,
    sky_level: float,
) -> None:
    """Fill the metadata jwst reads: group id keys, times, instrument, wcsinfo, photometry.

    ``exposure`` counts from 1 over the whole association (pointing-major); pointing ``k``
    is visit ``k + 1`` and its dithers are exposures 1..n_exposures of that visit.
    ``model.meta.wcs`` must already be set: ``ra_ref``/``dec_ref`` and ``s_region`` come
    from it.
    """
    ny, nx = config.detector_shape
    wcs = model.meta.wcs
    visit, dither = divmod(exposure - 1, config.n_exposures)
    visit, dither = visit + 1, dither + 1
    model.meta.filename = cal_file_name(dither, detector, visit)
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
    # the seven keys jwst joins into the group id: one group per (visit, exposure)
    ids = {**_OBSERVATION_IDS, "visit_number": f"{visit:03d}", "exposure_number": str(dither)}
    for key, value in ids.items():
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
) -> tuple[ImageModel, FrameTruth]:
    """One calibrated frame and what was injected into it (without coverage)."""
    source = _render_scene(scene, wcs, config)
    signal = (sky_level + source).astype(np.float32)
    noise_rng = _rng(config, _STREAM_NOISE, exposure, detector)
    var_poisson, var_rnoise, var_flat = _noise_variances(config, signal, noise_rng)
    err = np.sqrt(var_poisson + var_rnoise + var_flat)
    data = signal + err * noise_rng.standard_normal(signal.shape, dtype=np.float32)

    dq = _bad_pixel_dq(config, exposure, detector)
    usable = (dq & DO_NOT_USE) == 0
    cr_rng = _rng(config, _STREAM_COSMIC_RAYS, exposure, detector)
    cosmic_rays, events = _cosmic_ray_signal(config, cr_rng, err, usable)
    data += cosmic_rays
    hot_pixels = _hot_pixel_signal(config, detector, usable)
    if config.hot_fraction > 0:  # adding zeros would still turn -0.0 into +0.0
        data += hot_pixels
    truth = FrameTruth(
        cosmic_ray=cosmic_rays,
        cosmic_ray_snr=np.divide(cosmic_rays, err, out=np.zeros_like(err), where=usable),
        cosmic_ray_event=events,
        hot_pixel=hot_pixels,
        source=source.astype(np.float32),
        sky_sigma=config.sky_sigma,
    )

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
    return model, truth


def _frame_geometry(config: SyntheticConfig) -> tuple[list[_Pointing], list[list[WCS]]]:
    """Pointing of each exposure (pointing-major over the survey grid) and WCS of each frame,
    ``wcs[exposure][detector]``."""
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
    return pointings, wcs


def _frame_coverage(config: SyntheticConfig) -> list[np.ndarray]:
    """Exposure coverage of every frame, association order, int16 ``(ny, nx)`` each."""
    _, wcs = _frame_geometry(config)
    flat = [w for row in wcs for w in row]
    exposures = [e for e, row in enumerate(wcs) for _ in row]
    shapes = [config.detector_shape] * len(flat)
    return [c.astype(np.int16) for c in coverage_of_frames(flat, exposures, shapes)]


def _iter_frames(config: SyntheticConfig) -> Iterator[tuple[ImageModel, FrameTruth]]:
    """Frames in association order (pointing, then exposure, then detector), one at a time."""
    pointings, wcs = _frame_geometry(config)
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
        Any other :class:`SyntheticConfig` field (``pointings``, ``pointing_step``,
        ``cr_fraction``, ``dead_fraction``, ``n_stars``, ``n_galaxies``,
        ``background_level_in_meta``, ...).

    Returns
    -------
    models : list of ImageModel
        One per exposure and detector, ordered by pointing, dither, detector. ``data``,
        ``err``, ``var_*`` are float32 ``(ny, nx)`` [MJy/sr or (MJy/sr)^2], NaN at DO_NOT_USE
        pixels; ``dq`` uint32.
    truth : list of ndarray
        Bool ``(ny, nx)`` per model, True where a cosmic ray was injected.

    Raises
    ------
    ValueError
        If an option is out of range. ``TypeError`` for an unknown option.
    """
    config = config_of(n_exposures, n_detectors, detector_shape, seed, **options)
    frames = list(_iter_frames(config))
    return [m for m, _ in frames], [t.cosmic_ray_mask for _, t in frames]
