"""Scratch data of a run: its folder and its Zarr store.

The scratch folder of a run (made in the user's ``work_dir``, removed however the run ends)
and the Zarr store in it. What goes into the store, and when, is decided by
:mod:`outlier_dask.engine.handover`.
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

__all__ = ["ScratchStore", "scratch_directory", "scratch_parent"]

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
    """A fresh folder for this run's scratch data (an absolute path: a cluster's workers run
    in folders of their own), removed on success, error or interrupt.

    Parameters
    ----------
    work_dir : str or None
        Parent folder chosen by the user (see :func:`scratch_parent`).
    """
    parent = scratch_parent(work_dir)
    parent.mkdir(parents=True, exist_ok=True)
    path = (parent / f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}").absolute()
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
    """Zarr arrays of one run: the masked stack ``data`` (groups, ny, nx) and ``median``
    (ny, nx), both float32 chunked by grid tile."""

    path: str

    def create(self, n_groups: int, grid_shape: tuple[int, int], tile: tuple[int, int]) -> None:
        """Create the empty arrays (no chunk is written until a task writes it).

        ``data`` is chunked ``(1, ty, tx)`` and holds NaN where nothing was written; ``median``
        is chunked ``(ty, tx)``. Chunks are not compressed: scratch data is read once.
        """
        import zarr  # imported by out-of-core runs only

        root = zarr.open_group(self.path, mode="w")
        arrays = {
            "data": ((n_groups, *grid_shape), (1, *tile)),
            "median": (grid_shape, tile),
        }
        for name, (shape, chunks) in arrays.items():
            root.create_array(
                name,
                shape=shape,
                chunks=chunks,
                dtype="float32",
                fill_value=np.nan,
                compressors=None,
                config={"write_empty_chunks": False},
            )

    def array(self, name: str, mode: str = "r") -> zarr.Array:  # noqa: F821
        """One of the arrays, opened for reading (``"r"``) or writing (``"r+"``)."""
        import zarr

        return zarr.open_array(f"{self.path}/{name}", mode=mode)
