"""Stopping a run cleanly on SIGTERM as on Ctrl-C.

Batch systems, ``kill`` and ``timeout`` stop a process with SIGTERM, whose default action ends
it at once: no ``finally`` block runs, so the scratch folder, temporary product files and worker
processes would stay behind. During a run SIGTERM instead raises :class:`KeyboardInterrupt` in
the main thread, exactly as Ctrl-C does, so one clean-up path serves both. A second signal while
that clean-up runs is logged and otherwise ignored, so the clean-up is not cut short (SIGKILL
still ends the process at once).

A library may swallow that ``KeyboardInterrupt`` (C code that clears the error it met, a bare
``except``) or turn it into an error of its own (numpy's dtype parsing gives a ``TypeError``
when the signal lands in it during an extension's import). The signal is remembered for the
block: :func:`interrupt_received` tells the command that an error came after a signal, and
:func:`stop_if_interrupted`, at the points between a run's steps, raises it again when it was
swallowed, so the run never goes on, or ends with status 0, after a signal.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.resource_tracker
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = [
    "interrupt_received",
    "interrupted_by_signals",
    "interrupts_not_lost",
    "signals_held",
    "stop_if_interrupted",
    "without_ctrl_c_in_what_starts",
]

log = logging.getLogger(__name__)

#: The signal the handlers of :func:`interrupted_by_signals` received first, while the block
#: that installed them runs (:func:`interrupt_received`).
_received: dict[str, str | None] = {"name": None}
#: While :func:`signals_held` runs: how many holds are open, and the signal held back.
_hold: dict[str, object] = {"depth": 0, "pending": None}
#: The signal whose ``KeyboardInterrupt`` Python dropped, to be raised again
#: (:func:`interrupts_not_lost`).
_lost: dict[str, Any] = {"name": None, "in_hook": False}
#: Seconds before a dropped interrupt's signal is sent again (the hook has returned by then).
_RESEND_DELAY_S = 0.005


def _replaceable(signum: int, current: object) -> bool:
    """Whether our handler may stand in for ``current``: only the interpreter's defaults.

    A caller's own handler, or a signal the caller chose to ignore (``nohup``, a shell's
    background job ignoring Ctrl-C), is left alone.
    """
    default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
    return current is default


@contextlib.contextmanager
def interrupted_by_signals(announce: bool = True) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise KeyboardInterrupt once, then are ignored.

    Outside the main thread (where Python cannot set handlers) this does nothing. Processes
    forked inside the block (worker pools) inherit the handler; in them it behaves as the
    default would (SIGTERM ends the process at once), so a pool can still terminate them.

    ``announce`` logs a warning when the first signal arrives. The command turns it off: it
    reports the interrupt in its own one line, and owns its process, so from the first signal on
    no log record is shown (the libraries' complaints about work being stopped under them,
    e.g. a cluster's scheduler losing its workers); a second signal is still reported.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            # A forked worker: act as the default handlers do.
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        if _lost["name"] == name and _lost["in_hook"]:
            _send_soon(signum)  # raised inside the hook, it would be dropped again
            return
        if _lost["name"] == name:
            _lost["name"] = None  # its first interrupt was dropped: raised again below
        elif _received["name"] is not None:
            again = f"{name} received again: still cleaning up (SIGKILL stops at once)"
            if announce:
                log.warning(again)
            else:
                sys.stderr.write(again + "\n")
            return
        else:
            _received["name"] = name
            if announce:
                log.warning("%s received: stopping and cleaning up", name)
            else:
                logging.disable(logging.CRITICAL)
        if _hold["depth"]:
            _hold["pending"] = name
            return
        raise KeyboardInterrupt(name)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(signum)
        if _replaceable(signum, current):
            previous[signum] = current
            signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, current in previous.items():
            signal.signal(signum, current)
        if previous:
            _received["name"] = None


def interrupt_received() -> KeyboardInterrupt | None:
    """The interrupt of the signal the handlers of :func:`interrupted_by_signals` received in
    the current block, else None (no signal yet, or the handlers are not this module's).

    Asked when an error ends a run: an error after a signal is taken for the signal's (a
    library turned its ``KeyboardInterrupt`` into its own error, or the clean-up it started
    failed), and the run is reported as interrupted.
    """
    name = _received["name"]
    return None if name is None else KeyboardInterrupt(name)


def stop_if_interrupted() -> None:
    """Raise the interrupt of a signal received in the current block, if there was one.

    Called only where the run goes on normally (after its imports, between its steps, after
    its stages, whose products the failure's clean-up then removes), never in clean-up: the
    signal's ``KeyboardInterrupt`` is raised where the main thread was when it came, so
    reaching such a point after it means a library swallowed it.

    Raises
    ------
    KeyboardInterrupt
        With the signal's name (``"SIGINT"``, ``"SIGTERM"``), as the handler raised it.
    """
    interrupt = interrupt_received()
    if interrupt is not None:
        raise interrupt


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Within the block, the signal :func:`interrupted_by_signals` would raise is held back,
    and raised as its ``KeyboardInterrupt`` when the block ends.

    For short steps that must not be cut short: a cluster's close interrupted half-way left
    its nannies waiting out their timeouts, or the next close waiting for ever. Where the
    handlers are not this module's (a caller's own), signals act as they would anyway. If the
    block fails after a signal was held, the ``KeyboardInterrupt`` is raised from its error:
    the signal came first and is what stops the run.
    """
    _hold["depth"] += 1
    failure: Exception | None = None
    try:
        yield
    except Exception as error:
        failure = error
    finally:
        _hold["depth"] -= 1
        pending = _hold["pending"] if _hold["depth"] == 0 else None
        if pending is not None:
            _hold["pending"] = None
    if pending is not None:
        raise KeyboardInterrupt(pending) from failure
    if failure is not None:
        raise failure


@contextlib.contextmanager
def without_ctrl_c_in_what_starts(*, spawning: bool = False) -> Iterator[None]:
    """Within the block SIGINT is blocked in the calling thread, and so in every thread it
    starts and every process those start, for their whole life.

    A terminal's Ctrl-C reaches every process of its foreground group, the worker processes a
    ``local-cluster`` starts too; the run stops them itself, and a worker that got it printed
    its own ``KeyboardInterrupt`` traceback. A thread inherits its creator's signal mask, and a
    process keeps it through ``fork`` and ``exec``: a worker started by a thread the cluster
    starts inside the block has SIGINT blocked from its first instruction, before its
    interpreter has started, whichever script or ``-m`` module launched the run. SIGTERM is
    left alone (distributed ends a worker over its memory limit with it). A SIGINT sent to
    this process during the block waits, and is handled when the block ends.

    ``spawning``: processes will be started by multiprocessing's ``spawn`` (a cluster's
    workers), which starts multiprocessing's resource tracker with the first one; it is then
    started first, if it is not running yet, because the thread that starts it blocks SIGINT
    and SIGTERM for the start and then unblocks them, whatever its mask was before: a cluster's
    loop thread starting it inside the block would start every worker after it with SIGINT
    deliverable. Forked pools need no tracker.
    """
    if spawning:
        multiprocessing.resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@contextlib.contextmanager
def interrupts_not_lost() -> Iterator[None]:
    """Within the block, an interrupt of :func:`interrupted_by_signals` that Python dropped is
    raised again at the next line the main thread runs.

    A signal's handler runs wherever the main thread is; when that is a weakref callback or a
    ``__del__`` (an import's module lock has one), Python prints the ``KeyboardInterrupt``
    as "Exception ignored" and goes on, and the run, marked as stopping, ignored every later
    signal and ran to its end. Python reports each such exception to ``sys.unraisablehook``;
    within the block that hook raises the signal again for the one it dropped, and passes any
    other exception on. For a process the caller owns (the command's): the hook is the
    interpreter's.
    """
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        name = str(unraisable.exc_value)
        if (
            isinstance(unraisable.exc_value, KeyboardInterrupt)
            and name in ("SIGINT", "SIGTERM")
            and threading.current_thread() is threading.main_thread()
        ):
            # Sent from another thread a moment later: a handler run inside this hook (as
            # raising the signal here would run it) raises into the hook, and is dropped too.
            _lost["name"], _lost["in_hook"] = name, True
            try:
                _send_soon(getattr(signal, name))
            finally:
                _lost["in_hook"] = False
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
        _lost["name"] = None


def _send_soon(signum: int) -> None:
    """Send ``signum`` to this process from a short-lived thread, a moment from now."""
    timer = threading.Timer(_RESEND_DELAY_S, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()
