"""Where the Zarr scratch store of a run lives: a local folder or a shared fsspec URL.

On a cluster whose workers do not share this machine's disk, ``work_dir`` may be any fsspec
URL they can all reach (``s3://bucket/prefix``, ``gcs://...``, a shared ``file://`` path); the
run makes ``<work_dir>/outlier_dask-<id>/stack.zarr`` there and removes it afterwards, on
success and on failure alike.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

from outlier_dask.engine.stores import ScratchStore

__all__ = ["is_url", "local_work_dir", "scratch_store"]

log = logging.getLogger(__name__)


def is_url(work_dir: str | None) -> bool:
    """Whether ``work_dir`` is an fsspec URL (``scheme://...``) rather than a local path."""
    return bool(work_dir) and "://" in str(work_dir)


def local_work_dir(work_dir: str | None) -> str | None:
    """The local folder for spill files: ``work_dir`` itself, a ``file://`` URL's path, or
    None (the system temporary folder) for remote URLs."""
    if not is_url(work_dir):
        return work_dir
    protocol, path = str(work_dir).split("://", 1)
    return path if protocol in ("file", "local") else None


@contextlib.contextmanager
def scratch_store(work_dir: str | None, local_scratch: Path) -> Iterator[ScratchStore]:
    """The run's Zarr store, removed when the context ends (however it ends).

    Parameters
    ----------
    work_dir : str or None
        The user's ``work_dir``: a remote fsspec URL, or a local folder (or ``file://`` URL),
        in which case the store goes into ``local_scratch``.
    local_scratch : Path
        This run's local scratch folder (already made, removed by its own context).
    """
    if not is_url(work_dir) or local_work_dir(work_dir) is not None:
        yield ScratchStore(str(local_scratch / "stack.zarr"))
        return
    import fsspec  # only remote work dirs need it; in-memory runs skip its import time

    fs, root = fsspec.core.url_to_fs(str(work_dir))
    name = f"outlier_dask-{uuid.uuid4().hex[:12]}"
    folder = f"{root.rstrip('/')}/{name}"
    url = f"{str(work_dir).rstrip('/')}/{name}"
    fs.makedirs(folder, exist_ok=True)
    try:
        yield ScratchStore(f"{url}/stack.zarr")
    finally:
        try:
            fs.rm(folder, recursive=True)
        except FileNotFoundError:
            pass
        except OSError as exc:  # pragma: no cover - depends on the remote store
            log.warning("could not remove the scratch store %s (%s); remove it by hand", url, exc)
