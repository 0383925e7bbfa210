"""Where members' metadata are read: in this process, or in a short-lived pool of workers.

Opening a member through its datamodel (headers, the ASDF tree, the WCS) costs tens of
milliseconds of pure Python, so an association of hundreds of files spends most of its set-up
there, on one core. Files are independent: forked workers read them side by side, and only the
small metadata (tens of kB per member) come back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

from outlier_dask.engine.budget import default_workers
from outlier_dask.parameters import OutlierParameters
from outlier_dask.runtime.schedulers import started_process_pool

__all__ = ["MEMBERS_PER_READER", "reading_map"]

Mapper = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]

MEMBERS_PER_READER = 8
"""Fewest members per reading worker: below it, starting workers costs more than it saves."""


@contextlib.contextmanager
def reading_map(params: OutlierParameters, n_members: int) -> Iterator[Mapper]:
    """A ``map(function, items)`` to read ``n_members`` members' metadata with.

    In this process for the ``synchronous`` and ``threads`` schedulers (which start no
    process) and for small associations; otherwise in up to ``n_workers`` forked workers,
    stopped when the block ends (at once after an error or interrupt).
    """
    n = min(params.n_workers or default_workers(), n_members // MEMBERS_PER_READER)
    if params.scheduler in ("synchronous", "threads") or n < 2:
        yield map
        return
    with started_process_pool(n) as pool:
        yield partial(pool.executor.map, chunksize=max(1, n_members // (4 * n)))
