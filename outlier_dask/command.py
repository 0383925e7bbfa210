"""The ``outlier-dask`` command's entry point, which sets up its process before anything loads.

The installed command and ``python -m outlier_dask`` call :func:`command`. This module imports
only what the set-up needs (:mod:`outlier_dask.runtime.process`, which installs the SIGINT and
SIGTERM handlers first), so that a signal while the command's own modules load (argparse,
then numpy, jwst and dask) already ends it with its one line and exit status. Only the
interpreter's start-up and the import of this module come earlier.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from outlier_dask.runtime.process import command_process

__all__ = ["EXIT_SIGNAL_BASE", "command", "report_interrupt"]

#: A shell's status for a process ended by a signal: 128 + the signal's number.
EXIT_SIGNAL_BASE = 128


def command(argv: Sequence[str] | None = None) -> int:
    """Entry point of the installed ``outlier-dask`` command; returns the exit status.

    :func:`outlier_dask.cli.main` in a process set up for the run
    (:mod:`outlier_dask.runtime.process`). Call ``main`` instead from a process that goes on
    afterwards.
    """
    with command_process():
        try:
            from outlier_dask.cli import main
        except KeyboardInterrupt as interrupt:
            return report_interrupt(interrupt)
        return main(argv)


def report_interrupt(interrupt: KeyboardInterrupt) -> int:
    """Print the command's one line for an interrupt; return the exit status a shell reports
    for a process ended by that signal (130 for SIGINT, 143 for SIGTERM)."""
    # runtime/signals.py raises it with the signal's name; a bare one is Ctrl-C.
    name = str(interrupt) or "SIGINT"
    print(f"outlier-dask: interrupted ({name})", file=sys.stderr)
    return EXIT_SIGNAL_BASE + int(getattr(signal, name, signal.SIGINT))
