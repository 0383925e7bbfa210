"""glibc's allocator for the command's process: freed memory kept for the next array.

By default glibc gives every large block (numpy arrays of a few MiB and up) its own mapping and
returns it to the kernel when it is freed; the next array of the same size is fresh memory,
which the kernel faults in and zeroes page by page. A run's tasks make the same arrays input
after input (each input's SCI, DQ, variances and weights, each group's mosaic and weight), so
they pay for that again each time (measured on the performance page). With the settings below
glibc serves large blocks from its heap and keeps what is freed there for the next block: the
pages stay with the process, already faulted in.

These are glibc's documented tunables (``GLIBC_TUNABLES``), which glibc reads once, when a
program starts. So the command starts itself again with them at its first line, before
anything loads: ``exec`` of the same interpreter, arguments and environment, in the same
process (same process id, open files and held signals). The restarted command takes the
variable out of its environment again. Programs it starts then run with your environment: a
local cluster's workers, which distributed sets up to return memory to the system. The workers
it forks share its settings.

The command leaves the allocator alone if you set any of :data:`ALLOCATOR_VARIABLES`
yourself, and where the C library is not glibc. :func:`~outlier_dask.api.detect_outliers`
never changes it.

This module imports nothing beyond :mod:`os` and :mod:`sys` (the restart comes first).
"""

from __future__ import annotations

import os
import sys

__all__ = [
    "ALLOCATOR_TUNABLES",
    "ALLOCATOR_VARIABLES",
    "on_glibc",
    "restart_with_allocator_settings",
]

#: glibc's tunables for the command: no separate mapping per large block (``mmap_threshold``
#: above any array of a run), no return of the heap's free top to the kernel
#: (``trim_threshold``), and the heap grown in steps of 256 MiB (``top_pad``; address space
#: only: pages are faulted in as they are used).
ALLOCATOR_TUNABLES = (
    "glibc.malloc.mmap_threshold=4294967296:"
    "glibc.malloc.trim_threshold=4294967296:"
    "glibc.malloc.top_pad=268435456"
)
#: The environment variables through which glibc's allocator is set (``GLIBC_TUNABLES`` and
#: its older aliases): with any of them set, the command leaves the allocator to you.
ALLOCATOR_VARIABLES = (
    "GLIBC_TUNABLES",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)
#: Set for the restarted command only: the signals, of those the command holds at its start,
#: that its caller already held (numbers, comma-separated), so that it restores them.
_RESTARTED_VARIABLE = "OUTLIER_DASK_RESTARTED_HOLDING"


def restart_with_allocator_settings(held: set[int], stop_signals: frozenset[int]) -> set[int]:
    """Start the command again with :data:`ALLOCATOR_TUNABLES`; in the restarted command,
    undo what the restart set. Returns the signals to hold again when the command ends.

    Called at the command's first line, with ``stop_signals`` held: they stay held through
    ``exec``, and one that arrives meanwhile is delivered once the restarted command's handlers
    exist. ``held`` is the set of signals the command's caller held before that, returned
    unchanged unless this is the restarted command, where it is that of the first start.
    Returns without restarting where the allocator is the user's (see the module's docstring),
    where the C library is not glibc, or where ``exec`` fails.
    """
    restarted = os.environ.pop(_RESTARTED_VARIABLE, None)
    if restarted is not None:  # the first start found no allocator variable: this one is ours
        os.environ.pop("GLIBC_TUNABLES", None)
        caller_held = {int(number) for number in restarted.split(",") if number}
        return (set(held) - set(stop_signals)) | caller_held
    if any(name in os.environ for name in ALLOCATOR_VARIABLES) or not on_glibc():
        return held
    if not sys.executable or not sys.orig_argv:  # an embedded interpreter: nothing to exec
        return held
    environment = {
        **os.environ,
        "GLIBC_TUNABLES": ALLOCATOR_TUNABLES,
        _RESTARTED_VARIABLE: ",".join(str(int(s)) for s in sorted(set(held) & stop_signals)),
    }
    try:
        for stream in (sys.stdout, sys.stderr):  # None without a console
            if stream is not None:
                stream.flush()
        os.execve(sys.executable, sys.orig_argv, environment)
    except OSError:
        return held  # the run goes on with glibc's defaults


def on_glibc() -> bool:
    """Whether this process's C library is glibc (whose tunables the settings are)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False
