"""The report's figure: the median with every input's outliers on it, and flagged fractions.

Needs matplotlib (``pip install "outlier-dask[plot]"``). The figure has two panels:

- left: the median on the output grid (asinh stretch between the 0.6th and 99.4th percentiles
  of its finite values, greyscale, with a colour bar; decimated to the figure's resolution),
  and every flagged pixel of every input mapped onto the grid through the plan's pixel maps,
  drawn as the displayed pixel that holds it, coloured by exposure group;
- right: the fraction of each input's valid pixels that were flagged, one bar per input.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from outlier_dask.io.outputs import atomic_path

__all__ = ["flagged_positions", "plot_path", "write_plot"]

#: Resolution of the figure, dots per inch.
DPI = 130
#: Colour of grid pixels without a median value (NaN).
NO_MEDIAN_COLOUR = "#cfdcec"
#: Input rows whose pixel-map positions are computed at once (bounds memory: rows x nx x 16 B).
ROWS_PER_BAND = 256


def plot_path(output_dir: str | Path, product: str) -> Path:
    """``<output_dir>/<product>_outlier_report.png``."""
    return Path(output_dir) / f"{product}_outlier_report.png"


def _bands(rows: np.ndarray, size: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Row bands ``[r0, r1)`` holding flagged rows, with the indices of the pixels in each."""
    band = rows // size
    for b in np.unique(band):
        yield int(b * size), int((b + 1) * size), np.nonzero(band == b)[0]


def flagged_positions(mask: np.ndarray, pixel_map: Any | None) -> tuple[np.ndarray, np.ndarray]:
    """Output-grid ``(x, y)`` of an input's flagged pixels.

    Parameters
    ----------
    mask : ndarray, shape (ny, nx), bool
        The input's outliers.
    pixel_map : PixelMap or None
        Input pixel to output grid (None: the median is in the input's frame).

    Returns
    -------
    x, y : ndarray, shape (n,), float64
        Grid positions (0-based pixel centres) of the ``n`` flagged pixels that map onto the
        grid.
    """
    rows, cols = np.nonzero(mask)
    if pixel_map is None or rows.size == 0:
        return cols.astype(np.float64), rows.astype(np.float64)
    x = np.empty(rows.size)
    y = np.empty(rows.size)
    nx = mask.shape[1]
    for r0, r1, index in _bands(rows, ROWS_PER_BAND):
        r1 = min(r1, mask.shape[0])
        c0, c1 = int(cols[index].min()), int(cols[index].max()) + 1
        positions = pixel_map.evaluate((r0, r1), (c0, min(c1, nx)))
        x[index] = positions[rows[index] - r0, cols[index] - c0, 0]
        y[index] = positions[rows[index] - r0, cols[index] - c0, 1]
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _norm(image: np.ndarray):
    from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval

    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return None
    return ImageNormalize(finite, interval=PercentileInterval(98.8), stretch=AsinhStretch(0.1))


def write_plot(
    path: str | Path,
    *,
    median: np.ndarray,
    masks: list[np.ndarray],
    pixel_maps: list[Any] | None,
    names: list[str],
    groups: list[str],
    fractions: list[float | None],
    title: str,
) -> Path:
    """Draw the report figure and write it as PNG (atomically).

    Parameters
    ----------
    path : str or Path
        The PNG to write.
    median : ndarray, shape (ny, nx), float32
        The median, in the units of the inputs' SCI.
    masks : list of ndarray, each (ny_i, nx_i) bool
        Outliers per input.
    pixel_maps : list of PixelMap or None
        Per input, pixels to median grid (None: inputs share the median's frame).
    names, groups : list of str
        Input names and exposure-group ids, in input order.
    fractions : list of float or None
        Flagged fraction of each input's valid pixels.
    title : str
        Figure title (the product name).

    Returns
    -------
    Path
        ``path``.
    """
    # The object-oriented Figure, not pyplot: no global state, no GUI backend, no window.
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    path = Path(path)
    n = len(names)
    ny, nx = median.shape
    height = max(8.5, 0.22 * n + 2.5)
    # The image panel takes the median's aspect ratio, within reason; the bars a fixed width.
    image_width = float(np.clip((height - 2.4) * nx / ny, 3.0, 12.0))
    fig = Figure(figsize=(image_width + 1.2 + 6.5, height), layout="constrained", dpi=DPI)
    grid = fig.add_gridspec(1, 2, width_ratios=(image_width + 1.2, 6.5))
    ax_img = fig.add_subplot(grid[0, 0])
    ax_bar = fig.add_subplot(grid[0, 1])
    # One image pixel per screen pixel at most, so no flagged pixel is lost in resampling.
    step = max(
        1,
        int(np.ceil(ny / ((height - 2.4) * DPI))),
        int(np.ceil(nx / (image_width * DPI))),
    )
    shown = median[::step, ::step]
    extent = (-0.5, shown.shape[1] * step - 0.5, -0.5, shown.shape[0] * step - 0.5)
    image = ax_img.imshow(
        shown,
        origin="lower",
        cmap=colormaps["gray"].with_extremes(bad=NO_MEDIAN_COLOUR),
        norm=_norm(shown),
        extent=extent,
        interpolation="nearest",
    )
    colorbar = fig.colorbar(image, ax=ax_img, shrink=0.8, pad=0.01)
    colorbar.set_label("median (units of SCI), asinh stretch")
    group_ids = list(dict.fromkeys(groups))
    colours = colormaps["tab10" if len(group_ids) <= 10 else "tab20"]
    # Flagged pixels as a raster on the displayed pixels, coloured by group (later groups on
    # top): unlike markers, it covers exactly the pixels that hold an outlier at any size.
    owner = np.zeros(shown.shape, dtype=np.int16)
    total = 0
    for g, group_id in enumerate(group_ids):
        for i, mask in enumerate(masks):
            if groups[i] != group_id:
                continue
            x, y = flagged_positions(mask, pixel_maps[i] if pixel_maps else None)
            total += int(mask.sum())
            cols = np.clip(np.floor((x + 0.5) / step).astype(int), 0, shown.shape[1] - 1)
            rows = np.clip(np.floor((y + 0.5) / step).astype(int), 0, shown.shape[0] - 1)
            owner[rows, cols] = g + 1
    overlay = np.zeros((*shown.shape, 4), dtype=np.float32)
    for g in range(len(group_ids)):
        overlay[owner == g + 1] = colours(g % colours.N)
    ax_img.imshow(overlay, origin="lower", extent=extent, interpolation="nearest")
    ax_img.set_xlim(-0.5, nx - 0.5)
    ax_img.set_ylim(-0.5, ny - 0.5)
    ax_img.set_xlabel("median grid x [pixel]")
    ax_img.set_ylabel("median grid y [pixel]")
    shrunk = f", shown every {step} px" if step > 1 else ""
    ax_img.set_title(
        f"median, {ny} x {nx} px{shrunk}\n(pale blue: no median)\n"
        f"{total:,} flagged pixels by group",
        fontsize="medium",
    )

    percent = [100 * f if f is not None else 0.0 for f in fractions]
    positions = np.arange(n)
    bar_colours = [colours(group_ids.index(g) % colours.N) for g in groups]
    ax_bar.barh(positions, percent, color=bar_colours)
    ax_bar.set_yticks(positions, [_short(name) for name in names], fontsize=_tick_size(n))
    ax_bar.invert_yaxis()
    ax_bar.set_xlabel("flagged [% of valid pixels]")
    ax_bar.set_title("flagged fraction per input")
    ax_bar.grid(axis="x", alpha=0.3)
    for y_pos, value in zip(positions, percent, strict=True):
        ax_bar.annotate(
            f"{value:.3f}%",
            (value, y_pos),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=_tick_size(n),
        )
    ax_bar.set_xlim(0, max(percent + [1e-3]) * 1.25)
    if len(group_ids) <= 20:  # beyond, tab20's colours repeat and a legend would mislead
        # One legend for both panels: the bars and the flagged pixels share group colours.
        handles = [Patch(color=colours(g % colours.N)) for g in range(len(group_ids))]
        legend = ax_bar.legend(
            handles,
            group_ids,
            title="exposure group",
            loc="upper center",
            bbox_to_anchor=(0.5, -0.1),
            ncols=2,
            fontsize="small",
            frameon=False,
        )
        legend.get_title().set_fontsize("small")
    fig.suptitle(f"{title}: outlier detection", fontsize="large")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        fig.savefig(handle, format="png")
    return path


def _short(name: str) -> str:
    """An input's name without the extension, shortened from the left if long."""
    stem = Path(name).name.removesuffix(".fits")
    return stem if len(stem) <= 40 else "…" + stem[-39:]


def _tick_size(n: int) -> float:
    return 9.0 if n <= 24 else max(4.0, 9.0 - (n - 24) / 12)
