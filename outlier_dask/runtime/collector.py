"""Python's cyclic garbage collector during a run and during the package's imports.

A run's main process holds the objects of every library it imported (numpy, astropy, asdf,
gwcs, dask: about 600 000 objects tracked by the collector) and then builds many small ones
(each member's ASDF tree and WCS). CPython's full collection walks every tracked object, so
each one took 0.02 to 0.07 s on this project's 2-core benchmark machine, four times per run, in
the part of the run that uses one core: none of those objects was garbage. Two measures:

- during :func:`~outlier_dask.detect_outliers`, objects that existed before the call are set
  aside (:func:`gc.freeze`): collections still run, over the call's own objects only;
- while the package imports its dependencies, no collection runs: imports make long-lived
  objects (modules, classes, functions), so a collection then finds nothing to free.

Both restore the collector's state as they found it.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["existing_objects_set_aside", "no_collection"]


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


@contextlib.contextmanager
def no_collection() -> Iterator[None]:
    """Within the block, automatic collections do not run (``gc.disable``); restored after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
