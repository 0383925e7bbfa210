"""Noise variances, bad pixels and cosmic rays of one frame."""

from __future__ import annotations

import numpy as np

from outlier_dask.synthetic.config import (
    _MJYSR_PER_E_PER_S,
    _STREAM_BAD_PIXELS,
    _STREAM_HOT_PIXELS,
    DEAD,
    DO_NOT_USE,
    JUMP_DET,
    SyntheticConfig,
    _read_noise_variance,
    _rng,
)

_MIN_CR_SIGMA = 8.0


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
) -> tuple[np.ndarray, np.ndarray]:
    """Injected cosmic rays: surface brightness and event number, each ``(ny, nx)``.

    Event amplitudes are log-uniform in 20-500 ``err`` (times 0.7-1 along a track), except a
    ``faint_cr_fraction`` of events at 8-15 ``err`` per pixel. Unusable pixels get none.

    Returns
    -------
    signal : ndarray, float32
        Cosmic-ray surface brightness [MJy/sr], 0 where none (overlapping events add up).
    event : ndarray, int32
        1-based number of the event that hit each pixel (the last one where events
        overlap), 0 where none.
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
    flat = y[hit] * err.shape[1] + x[hit]
    signal = np.bincount(flat, weights=amplitude, minlength=err.size)
    event = np.zeros(err.size, dtype=np.int32)
    event[flat] = np.broadcast_to(np.arange(1, n_events + 1)[:, None], hit.shape)[hit]
    return signal.reshape(err.shape).astype(np.float32), event.reshape(err.shape)


def _hot_pixel_signal(config: SyntheticConfig, detector: int, usable: np.ndarray) -> np.ndarray:
    """Excess of the detector's hot pixels, float32 ``(ny, nx)`` [MJy/sr], 0 elsewhere.

    Hot pixels belong to the detector: the same pixels and values in every exposure, drawn
    from their own random stream (``hot_fraction == 0`` draws nothing). Their excess is
    log-uniform in 10-300 times the sky noise; DQ does not mark them.
    """
    signal = np.zeros(config.detector_shape, dtype=np.float32)
    if config.hot_fraction == 0:
        return signal
    rng = _rng(config, _STREAM_HOT_PIXELS, detector)
    hot = (rng.random(config.detector_shape) < config.hot_fraction) & usable
    n_sigma = 10.0 * 30.0 ** rng.random(int(hot.sum()))
    signal[hot] = n_sigma * config.sky_sigma
    return signal
