"""Python's cyclic garbage collector during a :func:`~outlier_dask.detect_outliers` call.

A run's main process holds the objects of every library it imported (numpy, astropy, asdf,
gwcs, dask: about 600 000 objects tracked by the collector) and then builds many small ones
(each member's ASDF tree and WCS). CPython's full collection walks every tracked object, so
each one took 0.02 to 0.07 s on this project's 2-core benchmark machine, four times per run, in
the part of the run that uses one core: none of those objects was garbage. During a call, the
objects that existed before it are therefore set aside (:func:`gc.freeze`): collections still
run, over the call's own objects only, and the caller's objects are handed back at the end.
(The command, which owns its process, goes further: :mod:`outlier_dask.runtime.process`.)
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["existing_objects_set_aside"]


@contextlib.contextmanager
def existing_objects_set_aside() -> Iterator[None]:
    """Within the block, collections skip the objects that existed when it began.

    Those objects are moved to the collector's permanent generation and back at the end, so
    any of them that became garbage meanwhile is collected later as usual. If the caller has
    frozen objects itself (``gc.get_freeze_count() > 0``), nothing is changed: unfreezing at
    the end would undo the caller's choice.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
