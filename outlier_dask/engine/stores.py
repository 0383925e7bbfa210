"""Where mosaics, weights and the median live between stages: memory or a Zarr store.

With ``in_memory=False`` every group task writes its masked mosaic straight into a Zarr array
chunked ``(1, ty, tx)`` (NaN fill, empty chunks not stored), the median reads it back in blocks
holding the whole groups axis, and blot tasks read the median (shared on local schedulers,
cut-outs from the store otherwise), so no process ever holds more than a region, a block or a
tile of the stack.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ScratchStore", "read_window", "scratch_directory", "scratch_parent", "write_region"]

log = logging.getLogger(__name__)


#: Prefix of every scratch folder (``<work_dir>/outlier_dask-<12 hex digits>``).
SCRATCH_PREFIX = "outlier_dask-"
#: Attempts at removing a scratch folder; a worker that is still being stopped may write a
#: last chunk into it while the first attempt runs.
_REMOVE_ATTEMPTS = 5
_REMOVE_PAUSE_S = 0.2


def scratch_parent(work_dir: str | None) -> Path:
    """The folder scratch folders are made in: ``work_dir``, else the system temporary folder
    (never the current directory)."""
    return Path(work_dir) if work_dir else Path(tempfile.gettempdir())


@contextlib.contextmanager
def scratch_directory(work_dir: str | None) -> Iterator[Path]:
    """A fresh folder for this run's scratch data, removed on success, error or interrupt.

    Parameters
    ----------
    work_dir : str or None
        Parent folder chosen by the user (see :func:`scratch_parent`).
    """
    parent = scratch_parent(work_dir)
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}"
    path.mkdir()
    try:
        yield path
    finally:
        _remove_tree(path)


def _remove_tree(path: Path) -> None:
    """Remove ``path`` and everything in it, retrying briefly; log what could not be removed."""
    for attempt in range(_REMOVE_ATTEMPTS):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(_REMOVE_PAUSE_S * (attempt + 1))
    log.warning("could not remove the scratch folder %s; remove it by hand", path)


@dataclass(frozen=True)
class ScratchStore:
    """Zarr arrays of one run: the masked stack ``data`` (groups, ny, nx), ``median`` (ny, nx),
    and for intermediate products ``mosaic`` and ``weight`` (groups, ny, nx)."""

    path: str

    def create(
        self,
        n_groups: int,
        grid_shape: tuple[int, int],
        tile: tuple[int, int],
        mosaic_fill: float | None = None,
    ) -> None:
        """Create the empty arrays (no chunk is written until a task writes it).

        ``data`` (groups, ny, nx) holds the masked mosaics, NaN where nothing was written;
        ``median`` (ny, nx). With ``mosaic_fill`` (the drizzle fill value), ``mosaic`` and
        ``weight`` (groups, ny, nx) also hold the unmasked mosaics and their weights, for
        intermediate products. Chunks are not compressed: scratch data is read once, and
        compressing it cost more time than the disk it saved.
        """
        import zarr  # imported by out-of-core runs only (a tenth of a second)

        root = zarr.open_group(self.path, mode="w")
        arrays = {"data": ((n_groups, *grid_shape), (1, *tile), np.nan)}
        if mosaic_fill is not None:
            arrays["mosaic"] = ((n_groups, *grid_shape), (1, *tile), mosaic_fill)
            arrays["weight"] = ((n_groups, *grid_shape), (1, *tile), 0.0)
        arrays["median"] = (grid_shape, tile, np.nan)
        for name, (shape, chunks, fill) in arrays.items():
            root.create_array(
                name,
                shape=shape,
                chunks=chunks,
                dtype="float32",
                fill_value=fill,
                compressors=None,
                config={"write_empty_chunks": False},
            )

    def array(self, name: str, mode: str = "r") -> zarr.Array:  # noqa: F821
        """One of the arrays, opened for reading (``"r"``) or writing (``"r+"``)."""
        import zarr

        return zarr.open_array(f"{self.path}/{name}", mode=mode)


def write_region(
    store: ScratchStore, name: str, index: int | None, region: tuple, values: np.ndarray
) -> None:
    """Write ``values`` into ``name[index, region]`` (or ``name[region]`` if index is None)."""
    (y0, y1), (x0, x1) = region
    if y0 >= y1 or x0 >= x1:
        return
    target = store.array(name, "r+")
    if index is None:
        target[y0:y1, x0:x1] = values
    else:
        target[index, y0:y1, x0:x1] = values


def read_window(store: ScratchStore, name: str, window: tuple) -> np.ndarray:
    """Read ``name[window]`` of a 2-D array: (rows, cols) float32."""
    (y0, y1), (x0, x1) = window
    return np.asarray(store.array(name)[y0:y1, x0:x1])
