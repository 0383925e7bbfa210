"""The ``outlier-dask`` command's entry point, which sets up its process before anything loads.

The installed command and ``python -m outlier_dask`` call :func:`command`. This module imports
nothing beyond :mod:`signal` and :mod:`sys`, and :func:`command` holds SIGINT and SIGTERM back
(blocks them) from its first line until its handlers exist
(:mod:`outlier_dask.runtime.process`): a signal while the command's own modules load (its
handlers' module, argparse, then numpy, jwst and dask) ends it with its one line and exit
status. Only the interpreter's start-up (its ``site`` module and the installed script's first
lines) comes earlier; a signal there ends it as it ends any Python program.

On glibc, :func:`command` first starts the process again with the allocator settings of
:mod:`outlier_dask.runtime.allocator` (``exec`` of the same program and arguments, signals
still held), unless the user set the allocator's variables.
"""

from __future__ import annotations

import signal
import sys

TYPE_CHECKING = False  # typing itself is not imported yet: it would widen the window above
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["EXIT_SIGNAL_BASE", "STOP_SIGNALS", "command", "interrupt_behind", "report_interrupt"]

#: A shell's status for a process ended by a signal: 128 + the signal's number.
EXIT_SIGNAL_BASE = 128
#: The signals the command turns into its one-line report.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def command(argv: Sequence[str] | None = None) -> int:
    """Entry point of the installed ``outlier-dask`` command; returns the exit status.

    :func:`outlier_dask.cli.main` in a process set up for the run
    (:mod:`outlier_dask.runtime.process`, :mod:`outlier_dask.runtime.allocator`, which starts
    the program that called this again, from its start). Call ``main`` instead from a process
    that goes on afterwards.
    """
    # Held until the handlers exist (loading their module takes longer than the interpreter's
    # start-up); one that arrives meanwhile is delivered to them when released.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        from outlier_dask.runtime.allocator import restart_with_allocator_settings

        held = restart_with_allocator_settings(held, STOP_SIGNALS)
        from outlier_dask.runtime.process import command_process
        from outlier_dask.runtime.signals import stop_if_interrupted

        with command_process():
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
                from outlier_dask.cli import main

                stop_if_interrupted()  # an import may have swallowed it
            except BaseException as error:
                interrupt = interrupt_behind(error)
                if interrupt is None:
                    raise
                return report_interrupt(interrupt)
            return main(argv)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def interrupt_behind(error: BaseException) -> KeyboardInterrupt | None:
    """``error`` if it is a ``KeyboardInterrupt``, else the one it was raised from or while
    handling, else the interrupt of a signal the run received before it, if any.

    Python turns an exception raised in some places into another that keeps it as its cause:
    one raised by a descriptor's ``__set_name__`` while a class is created becomes a
    ``RuntimeError`` (Python 3.11), so a Ctrl-C while a module defines its classes (astropy's
    tables, during the imports) reaches the command as that error. The signal is what ended
    the command then, and it is reported as one. Other code drops the chain: numpy's dtype
    parsing, met by a signal inside an extension's import (erfa's), raises a ``TypeError`` of
    its own; the signal the run's handlers received
    (:func:`~outlier_dask.runtime.signals.interrupt_received`) names it then.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        # The chain Python's traceback shows: the cause, else the context unless suppressed.
        if current.__cause__ is not None or current.__suppress_context__:
            current = current.__cause__
        else:
            current = current.__context__
    from outlier_dask.runtime.signals import interrupt_received  # loaded by command_process

    return interrupt_received()


def report_interrupt(interrupt: KeyboardInterrupt) -> int:
    """Print the command's one line for an interrupt; return the exit status a shell reports
    for a process ended by that signal (130 for SIGINT, 143 for SIGTERM)."""
    # runtime/signals.py raises it with the signal's name; a bare one is Ctrl-C.
    name = str(interrupt) or "SIGINT"
    print(f"outlier-dask: interrupted ({name})", file=sys.stderr)
    # CPython marks an interrupt that ended code run from a string (``exec`` or ``eval`` of
    # source, as dataclasses and namedtuple run while modules define their classes) as never
    # handled, even once caught, and under ``python -m`` then ends the process by SIGINT
    # instead of with the status returned (-2 to a parent, for a SIGTERM too). Each such
    # evaluation clears the mark when it starts; this one comes after the interrupt.
    exec("")  # noqa: S102 - an empty string, run for the side effect above
    return EXIT_SIGNAL_BASE + int(getattr(signal, name, signal.SIGINT))
