"""Arrays shared by this process and its forked workers, so stages hand over without copies.

On the local schedulers (``processes``, ``threads``, ``synchronous``) the handover
(:mod:`outlier_dask.engine.handover`) keeps the grouped-mosaic stack and the median in
anonymous shared memory mapped *before* the worker processes are forked: every worker sees the
same pages. Tasks then write their mosaic or median tiles in place and return only small
results, and every blot task can read the whole median, so the compiled blot of the reference
can be used.

A task refers to an array by a :class:`SharedArray` handle (a key, a shape and a dtype). The
mappings themselves are kept in this module's registry, which forked workers inherit; a
process that did not fork from the one that allocated them (a ``distributed`` worker) cannot
resolve a handle, and the engine does not give it one.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["SharedArray", "shared_arrays"]

_REGISTRY: dict[str, mmap.mmap] = {}
_COUNTER = itertools.count()


@dataclass(frozen=True)
class SharedArray:
    """Handle of one shared array: picklable, resolved in any process forked after allocation.

    Attributes
    ----------
    key : str
        Registry key of the mapping.
    shape : tuple of int
    dtype : str
        NumPy dtype name (e.g. ``"float32"``).
    """

    key: str
    shape: tuple[int, ...]
    dtype: str

    def view(self) -> np.ndarray:
        """The array itself (writable), with ``shape`` and ``dtype``; no copy.

        Raises
        ------
        RuntimeError
            In a process that does not share the mapping (not forked after it was made).
        """
        try:
            buffer = _REGISTRY[self.key]
        except KeyError:
            raise RuntimeError(
                f"shared array {self.key} is not mapped in process {os.getpid()}: only the "
                "processes, threads and synchronous schedulers share memory with the run"
            ) from None
        return np.frombuffer(buffer, dtype=self.dtype, count=int(np.prod(self.shape))).reshape(
            self.shape
        )


def _shared_memory(size: int, name: str) -> mmap.mmap:
    """``size`` bytes of memory shared with forked children (MAP_SHARED), committed as written.

    On Linux the memory is a ``memfd`` (an unnamed file in memory, gone when unmapped): the
    kernel does not count its size against the overcommit heuristic, which refuses one
    anonymous mapping bigger than memory and swap together; a survey's stack (groups x grid)
    can be that large although only the tiles its groups cover are ever written.
    """
    if not hasattr(os, "memfd_create"):  # pragma: no cover - not Linux
        return mmap.mmap(-1, size)  # fd -1: anonymous memory, MAP_SHARED by default
    fd = os.memfd_create(f"outlier_dask-{name}", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)  # the mapping keeps the memory


@contextlib.contextmanager
def shared_arrays(
    specs: dict[str, tuple[tuple[int, ...], str]],
) -> Iterator[dict[str, SharedArray]]:
    """Map one anonymous shared array per entry of ``specs`` for the length of a run.

    Parameters
    ----------
    specs : dict of str to (shape, dtype name)
        The arrays to allocate. Pages are committed when first written, so an array only
        partly used costs only what is written.

    Yields
    ------
    dict of str to SharedArray
        Handles by the names of ``specs``. Worker processes must be forked inside the block.
    """
    handles = {}
    try:
        for name, (shape, dtype) in specs.items():
            key = f"{os.getpid()}-{next(_COUNTER)}-{name}"
            size = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
            _REGISTRY[key] = _shared_memory(size, name)
            handles[name] = SharedArray(key, tuple(int(n) for n in shape), str(np.dtype(dtype)))
        yield handles
    finally:
        for handle in handles.values():
            buffer = _REGISTRY.pop(handle.key, None)
            if buffer is not None:
                with contextlib.suppress(BufferError):  # a view still exported: freed with it
                    buffer.close()
