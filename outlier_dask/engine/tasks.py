"""Task functions: what one dask task does, from a plan entry to arrays.

They are top-level functions of plain, picklable arguments, so process workers and
``distributed`` workers can run them. They read pixels, slice and call kernels; where their
results go is the handover's business (:mod:`outlier_dask.engine.handover`), which gives them
the object to write into or read from. Each takes the numbers its kernels need
(:class:`DrizzleSettings`, :class:`FlagSettings`), not the run's whole parameter set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from outlier_dask.engine.plan import BlockPlan, GroupPlan
from outlier_dask.geometry.pixel_map import PixelMap
from outlier_dask.geometry.windows import Window
from outlier_dask.io.members import PixelSource
from outlier_dask.kernels.flags import flag_resampled_outliers, flag_unresampled_outliers
from outlier_dask.kernels.resample import (
    DrizzleInput,
    blot_bilinear,
    blot_from_whole_median,
    drizzle_onto_region,
    fill_value_number,
)
from outlier_dask.kernels.weights import drizzle_weight_map, mask_low_weight, weight_threshold
from outlier_dask.parameters import OutlierParameters

__all__ = [
    "BlockResult",
    "DrizzleSettings",
    "FlagSettings",
    "GroupMosaic",
    "GroupOutcome",
    "InputOutcome",
    "MedianCutout",
    "MemberTaskInfo",
    "blot_and_flag_block",
    "build_group_mosaic",
    "drizzle_group",
    "flag_input",
    "outside_value",
]


@dataclass(frozen=True)
class DrizzleSettings:
    """What a group task needs: the weight map, drizzle and ``maskpt`` parameters."""

    resample: bool
    weight_type: str
    good_bits: str
    kernel: str
    pixfrac: float
    fillval: str
    maskpt: float

    @classmethod
    def from_parameters(cls, params: OutlierParameters) -> DrizzleSettings:
        """The drizzle settings of a run's parameters."""
        return cls(
            params.resample_data,
            params.weight_type,
            params.good_bits,
            params.kernel,
            params.pixfrac,
            params.fillval,
            params.maskpt,
        )

    @property
    def fill(self) -> float:
        """The number mosaic pixels without weight hold (NaN for ``NAN``/``INDEF``)."""
        return fill_value_number(self.fillval)


@dataclass(frozen=True)
class FlagSettings:
    """What a blot-and-compare task needs: the flag rule's parameters."""

    resample: bool
    snr: tuple[float, float]
    scale: tuple[float, float]
    backg: float
    source_fraction: float = 0.0

    @classmethod
    def from_parameters(cls, params: OutlierParameters) -> FlagSettings:
        """The flag-rule settings of a run's parameters."""
        return cls(
            params.resample_data,
            params.snr_pair,
            params.scale_pair,
            params.backg,
            params.detection_piece("source_fraction"),
        )


def outside_value(threshold: float, fill: float) -> float:
    """What a group's masked mosaic holds beyond its region (the one place of this rule).

    There the weight is 0 and the reference's full-grid mosaic holds the fill value, which the
    weight mask hides (NaN) when the group's threshold is above 0.
    """
    return np.nan if threshold > 0 else fill


@dataclass(frozen=True)
class MemberTaskInfo:
    """What a task needs of one member: where its pixels are and how they map."""

    source: PixelSource
    shape: tuple[int, int]
    pixel_map: PixelMap | None
    exposure_time: float
    weight_time: float
    background_level: float | None


@dataclass
class GroupMosaic:
    """One grouped mosaic on its region of the grid.

    Attributes
    ----------
    region : Window
        ``((y0, y1), (x0, x1))`` in grid pixels.
    data : ndarray, shape (ry, rx), float32
        Drizzled values (fill value where no weight), before the weight mask, in SCI units.
    weight : ndarray, shape (ry, rx), float32
        Drizzle weight.
    threshold : float
        ``maskpt`` x sigma-clipped mean weight (NaN: nothing masked).
    """

    region: Window
    data: np.ndarray
    weight: np.ndarray
    threshold: float

    def masked(self) -> np.ndarray:
        """Data with NaN where the weight is below the threshold, shape (ry, rx), float32."""
        return mask_low_weight(self.data, self.weight, self.threshold)


def _weights(info: MemberTaskInfo, settings: DrizzleSettings) -> np.ndarray:
    if settings.weight_type == "ivm":
        dq, rnoise = info.source.read_all(("DQ", "VAR_RNOISE"))
    else:
        dq, rnoise = info.source.read("DQ"), None
    return drizzle_weight_map(
        dq,
        rnoise,
        weight_type=settings.weight_type,
        exposure_time=info.weight_time,
        good_bits=settings.good_bits,
    )


def _drizzle_input(
    info: MemberTaskInfo, settings: DrizzleSettings, origin: tuple[int, int], inside: bool
) -> DrizzleInput:
    """One member's arrays, its pixel map counted from ``origin`` ``(y0, x0)`` of the region
    (``inside``: its outline lies inside the region)."""
    sci = info.source.read("SCI")
    if info.background_level is not None:
        sci -= np.float32(info.background_level)
    n_rows, n_columns = info.shape
    _, _, ymin, ymax = info.pixel_map.valid_range
    return DrizzleInput(
        data=sci,
        weight=_weights(info, settings),
        pixmap_rows=lambda r0, r1: info.pixel_map.evaluate((r0, r1), (0, n_columns), origin),
        exposure_time=info.exposure_time,
        valid_rows=(max(int(ymin), 0), min(int(ymax) + 1, n_rows)),
        outline_inside=inside,
    )


def build_group_mosaic(
    group: GroupPlan, infos: list[MemberTaskInfo], settings: DrizzleSettings
) -> GroupMosaic:
    """Drizzle one exposure group onto its region and find its weight threshold.

    Without resampling the "group" is one input, its "mosaic" the input itself and its weight
    map the drizzle weight map, as in the reference.
    """
    (y0, y1), (x0, x1) = group.region
    if not settings.resample:
        (info,) = infos
        data = info.source.read("SCI")
        weight = _weights(info, settings)
    else:
        data, weight = drizzle_onto_region(
            # Members loaded one at a time: a group task holds one input's arrays at once.
            (
                _drizzle_input(info, settings, (y0, x0), inside)
                for info, inside in zip(infos, group.outlines_inside, strict=True)
            ),
            (y1 - y0, x1 - x0),
            kernel=settings.kernel,
            pixfrac=settings.pixfrac,
            fillval=settings.fillval,
        )
    threshold = weight_threshold(weight, settings.maskpt)
    return GroupMosaic(group.region, data, weight, float(threshold))


@dataclass
class GroupOutcome:
    """What a group task leaves for the median stage.

    Attributes
    ----------
    threshold : float
        The group's weight threshold.
    outside : float
        What its masked mosaic holds beyond the window its planes hold (:func:`outside_value`).
    written : Window or None
        Where the group's plane holds its masked mosaic (None: nowhere).
    tiles : dict of (int, int) to ndarray, or None
        The plane's tiles by tile index, when the task's result is where they live (a
        cluster's worker memory); None when they were written elsewhere.
    mosaic : GroupMosaic or None
        The unmasked mosaic and its weight, kept for intermediate products.
    """

    threshold: float
    outside: float
    written: Window | None
    tiles: dict[tuple[int, int], np.ndarray] | None
    mosaic: GroupMosaic | None


def drizzle_group(
    group: GroupPlan,
    infos: list[MemberTaskInfo],
    settings: DrizzleSettings,
    planes: Any,
    index: int,
    keep_mosaic: bool,
) -> GroupOutcome:
    """Build a group's mosaic, mask it by weight, and put it into plane ``index``.

    ``planes`` is the handover's stack (:mod:`outlier_dask.engine.handover`): its
    ``write(index, mosaic, outside)`` masks the mosaic into the plane and returns the window
    written and, where the result itself holds them, the plane's tiles.
    """
    mosaic = build_group_mosaic(group, infos, settings)
    outside = outside_value(mosaic.threshold, settings.fill)
    written, tiles = planes.write(index, mosaic, outside)
    return GroupOutcome(mosaic.threshold, outside, written, tiles, mosaic if keep_mosaic else None)


@dataclass(frozen=True)
class MedianCutout:
    """The median over a block's cut-out, or the whole median with the cut-out to use.

    Attributes
    ----------
    values : ndarray, float32
        The median over ``window``, shape of ``window``; or the whole median (``whole``).
    window : Window
        Rectangle of the median grid the block maps into.
    whole : bool
        ``values`` is the whole median grid (shared on one host): the compiled blot reads it.
    """

    values: np.ndarray
    window: Window
    whole: bool = False


@dataclass
class BlockResult:
    """Outcome of one block: the outlier mask of its inner pixels, and optionally the blot.

    ``n_valid`` and ``n_covered`` count the inner pixels with a finite SCI and with a finite
    blotted median (for the run report).
    """

    block: BlockPlan
    mask: np.ndarray
    blot: np.ndarray | None
    n_valid: int = 0
    n_covered: int = 0


def _reference_of_block(
    block: BlockPlan, info: MemberTaskInfo, median: MedianCutout | None, grid_shape, resample
) -> np.ndarray:
    """The median as seen by the block's pixels (blotted, or the cut-out itself)."""
    (r0, r1), (c0, c1) = block.outer
    if median is None:
        return np.full((r1 - r0, c1 - c0), np.nan, dtype=np.float32)
    if not resample:
        if median.whole:
            return median.values[r0:r1, c0:c1]
        return median.values
    pixmap = info.pixel_map.evaluate((r0, r1), (c0, c1))
    if median.whole:
        return blot_from_whole_median(median.values, pixmap)
    (my0, _), (mx0, _) = median.window
    return blot_bilinear(median.values, (my0, mx0), grid_shape, pixmap)


def blot_and_flag_block(
    block: BlockPlan,
    info: MemberTaskInfo,
    median: MedianCutout | None,
    grid_shape: tuple[int, int],
    settings: FlagSettings,
    keep_blot: bool = False,
) -> BlockResult:
    """Blot the median onto one block of an input and flag its outliers.

    Parameters
    ----------
    block : BlockPlan
        The block, with its halo (``outer``) and median cut-out rectangle.
    info : MemberTaskInfo
        The input.
    median : MedianCutout or None
        The median the block maps into (None: the block maps off the median).
    grid_shape : (int, int)
        Shape of the whole median.
    settings : FlagSettings
        Flag-rule parameters.
    keep_blot : bool
        Also return the blotted median of the inner pixels.

    Returns
    -------
    BlockResult
        ``mask`` has the shape of ``block.inner`` (bool).
    """
    (r0, _), (c0, _) = block.outer
    (i0, i1), (j0, j1) = block.inner
    inner = (slice(i0 - r0, i1 - r0), slice(j0 - c0, j1 - c0))
    sci, err = info.source.read_all(("SCI", "ERR"), block.outer)
    if err is None:
        err = np.zeros_like(sci)
    reference = _reference_of_block(block, info, median, grid_shape, settings.resample)
    if settings.resample:
        backg = settings.backg if info.background_level is None else info.background_level
        mask = flag_resampled_outliers(
            sci,
            err,
            reference,
            snr=settings.snr,
            scale=settings.scale,
            backg=backg,
            source_fraction=settings.source_fraction,
        )
    else:
        mask = flag_unresampled_outliers(sci, err, reference, snr1=settings.snr[0])
    blot = reference[inner].copy() if keep_blot else None
    n_valid = int(np.count_nonzero(np.isfinite(sci[inner])))
    n_covered = int(np.count_nonzero(np.isfinite(reference[inner])))
    return BlockResult(block, mask[inner].copy(), blot, n_valid, n_covered)


@dataclass
class InputOutcome:
    """One input's result: counts for the report, and the mask and blot if kept.

    Attributes
    ----------
    flagged, valid, covered : int
        Pixels flagged; pixels with finite SCI; pixels where the blotted median is finite.
    mask : ndarray, (ny, nx) bool, or None
    blot : ndarray, (ny, nx) float32, or None
    write_seconds : float
        Time the writer took (0 without one).
    """

    flagged: int
    valid: int
    covered: int
    mask: np.ndarray | None
    blot: np.ndarray | None
    write_seconds: float = 0.0


def flag_input(
    info: MemberTaskInfo,
    blocks: list[BlockPlan],
    medians: list[Any],
    grid_shape: tuple[int, int],
    settings: FlagSettings,
    writer: Callable[[np.ndarray], Any] | None,
    keep_mask: bool,
    keep_blot: bool,
) -> InputOutcome:
    """Blot and flag every block of one input, assemble its mask, hand it to ``writer``.

    The blocks run one after the other (a block's memory at a time) and no block mask leaves
    the task.

    Parameters
    ----------
    medians : list
        Per block, where its median is (see :mod:`outlier_dask.engine.handover`): an object
        whose ``cutout(block)`` returns a :class:`MedianCutout` (shared memory, a store), the
        median over ``block.cutout`` itself (ndarray, float32: a cluster's median arrives as
        the task's input), or None (the block maps off the median).
    writer : callable or None
        ``writer(mask)`` writes the input's product (file inputs).
    """
    mask = np.zeros(info.shape, dtype=bool)
    blot = np.full(info.shape, np.nan, dtype=np.float32) if keep_blot else None
    valid = covered = 0
    for block, source in zip(blocks, medians, strict=True):
        if isinstance(source, np.ndarray):
            median = MedianCutout(source, block.cutout)
        else:
            median = None if source is None else source.cutout(block)
        result = blot_and_flag_block(block, info, median, grid_shape, settings, keep_blot)
        (r0, r1), (c0, c1) = block.inner
        mask[r0:r1, c0:c1] = result.mask
        if blot is not None:
            blot[r0:r1, c0:c1] = result.blot
        valid += result.n_valid
        covered += result.n_covered
    started = time.perf_counter()
    if writer is not None:
        writer(mask)
    return InputOutcome(
        flagged=int(np.count_nonzero(mask)),
        valid=valid,
        covered=covered,
        mask=mask if keep_mask else None,
        blot=blot,
        write_seconds=time.perf_counter() - started if writer is not None else 0.0,
    )
