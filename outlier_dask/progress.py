"""Progress of a run's stages (drizzle, median, blot+flag, write) while they compute.

:func:`make_progress` returns what :class:`~outlier_dask.runtime.schedulers.Runner` calls around
each stage (``Runner.progress``). Two displays:

- ``"bar"``: one line per stage redrawn in place on a terminal, ``drizzle [#####     ] 50%
  2/4 tasks 3.1 s``, left as ``drizzle ... done in 6.2 s`` when the stage ends;
- ``"log"``: log records (logger ``outlier_dask.progress``, level INFO): one at a stage's start,
  one every :data:`LOG_INTERVAL_S` seconds while it runs (tasks done so far, elapsed time, so
  that a long stage in a batch job's log does not look dead), and one at its end with the
  elapsed time; log files get no bar redraws. While a display is installed, the engine's own
  summary of each stage goes to DEBUG, so each stage ends with one line.

Task counts come from a ``dask.diagnostics`` callback with the local schedulers (``processes``,
``threads``, ``synchronous``). On a ``distributed`` cluster callbacks do not run; the display
polls the scheduler for the state of the keys this client waits for, and names the dashboard
once.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from dask.callbacks import Callback

__all__ = ["StageProgress", "make_progress"]

log = logging.getLogger(__name__)

MODES = ("bar", "log")
BAR_WIDTH = 30
#: Seconds between redraws of a bar (and between polls of a distributed scheduler).
REFRESH_S = 0.2
#: Seconds before the first poll: soon, so that short stages are counted too.
FIRST_POLL_S = 0.05
#: Seconds between the log records of a stage still running (log mode).
LOG_INTERVAL_S = 10.0


def make_progress(mode: bool | str = "auto", stream: IO[str] | None = None) -> StageProgress | None:
    """The progress display to install as ``Runner.progress``, or None for none.

    Parameters
    ----------
    mode : bool or {"auto", "bar", "log", "off"}
        ``"auto"`` (or True): a bar when ``stream`` is a terminal, log records otherwise.
        False or ``"off"``: no progress.
    stream : text file, optional
        Where bars are drawn (default: ``sys.stderr``).

    Raises
    ------
    ValueError
        ``mode`` is none of the above.
    """
    stream = stream if stream is not None else sys.stderr
    if mode is False or mode is None or mode in ("off", "none"):
        return None
    if mode is True or mode == "auto":
        isatty = getattr(stream, "isatty", None)
        mode = "bar" if isatty is not None and isatty() else "log"
    if mode not in MODES:
        raise ValueError(
            f"progress: must be 'auto', 'bar', 'log', 'off', True or False; got {mode!r}"
        )
    return StageProgress(mode, stream)


class _TaskCounter(Callback):
    """Counts a local scheduler's finished and total tasks (the dask state it reports)."""

    def __init__(self) -> None:
        super().__init__()
        self._state: dict[str, Any] | None = None

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        self._state = state

    def counts(self) -> tuple[int, int] | None:
        """``(finished, total)`` tasks, or None before the scheduler has started."""
        state = self._state
        if state is None:
            return None
        done = len(state["finished"])
        return done, done + sum(len(state[k]) for k in ("ready", "waiting", "running"))


def _wanted_key_counts(client: Any) -> tuple[int, int] | None:
    """``(in memory, total)`` of the keys this client waits for, read on the scheduler."""

    # Defined inside so it is pickled by value: the scheduler need not have outlier_dask.
    def count(dask_scheduler: Any, client_id: str) -> tuple[int, int] | None:
        client_state = dask_scheduler.clients.get(client_id)
        if client_state is None:
            return None
        wanted = list(client_state.wants_what)
        return sum(ts.state == "memory" for ts in wanted), len(wanted)

    return client.run_on_scheduler(count, client_id=client.id)


class StageProgress:
    """Shows each stage's progress; call it as ``progress(stage, runner)`` to get a context.

    Attributes
    ----------
    mode : {"bar", "log"}
        How progress is shown.
    stream : text file
        Where bars (and the dashboard address) are written.
    """

    def __init__(self, mode: str, stream: IO[str]) -> None:
        self.mode = mode
        self.stream = stream
        self._told_dashboard = False

    def __call__(self, stage: str, runner: Any) -> contextlib.AbstractContextManager:
        """The context manager shown around one stage's computation on ``runner``."""
        return self._stage(stage, runner)

    @contextlib.contextmanager
    def _stage(self, stage: str, runner: Any) -> Iterator[None]:
        client = getattr(runner, "client", None)
        if client is not None:
            self._tell_dashboard(runner)
            counts = self._polled_counts(client)
            callback: contextlib.AbstractContextManager = contextlib.nullcontext()
        else:
            counter = _TaskCounter()
            counts, callback = counter.counts, counter
        started = time.perf_counter()
        if self.mode == "log":
            log.info("%s: started", stage)
        stop = threading.Event()
        # A bar is redrawn while the stage runs; in log mode a record is written every
        # LOG_INTERVAL_S, and a scheduler is polled all along, since the keys are released,
        # and their count lost, as soon as the results are gathered.
        drawer = threading.Thread(
            target=self._watch, args=(stage, counts, started, stop), daemon=True
        )
        drawer.start()
        outcome = "failed"
        try:
            with callback:
                yield
            outcome = "done"
        finally:
            stop.set()
            drawer.join()
            elapsed = time.perf_counter() - started
            final = _safe(counts)
            if outcome == "done" and final:
                final = (final[1], final[1])  # every task of a finished stage is done
            if self.mode == "bar":
                self._draw(stage, final, elapsed, f"{outcome} in {elapsed:.1f} s", end="\n")
            else:
                tasks = f"{final[0]}/{final[1]} tasks " if final and final[1] else ""
                log.info("%s: %s%s in %.1f s", stage, tasks, outcome, elapsed)

    def _polled_counts(self, client: Any) -> Callable[[], tuple[int, int] | None]:
        """A counter that asks the scheduler, and stops asking after its first failure."""
        last: list[tuple[int, int] | None] = [None]
        failed = [False]

        def counts() -> tuple[int, int] | None:
            if not failed[0]:
                try:
                    now = _wanted_key_counts(client)
                    # Gathered keys are released one by one: keep the largest total seen.
                    if now is not None and now[1]:
                        total = max(now[1], last[0][1] if last[0] else 0)
                        last[0] = (min(now[0], total), total)
                except Exception:  # noqa: BLE001 - progress must never break a run
                    log.debug("cannot read task states from the scheduler", exc_info=True)
                    failed[0] = True
            return last[0]

        return counts

    def _tell_dashboard(self, runner: Any) -> None:
        link = getattr(runner, "dashboard_link", None)
        if self._told_dashboard or not link:
            return
        self._told_dashboard = True
        if _runtime_logs_dashboard():
            return  # runtime/schedulers.py has logged it already, where logs are shown
        if self.mode == "bar":
            print(f"dask dashboard: {link}", file=self.stream, flush=True)
        else:
            log.info("dask dashboard: %s", link)

    def _watch(self, stage: str, counts: Callable, started: float, stop: threading.Event) -> None:
        wait = FIRST_POLL_S
        next_record = started + LOG_INTERVAL_S
        while not stop.wait(wait):
            current = _safe(counts)
            now = time.perf_counter()
            if self.mode == "bar":
                self._draw(stage, current, now - started, "")
            elif now >= next_record:
                next_record += LOG_INTERVAL_S
                tasks = f"{current[0]}/{current[1]} tasks done, " if current and current[1] else ""
                log.info("%s: %srunning for %.0f s", stage, tasks, now - started)
            wait = REFRESH_S

    def _draw(
        self, stage: str, counts: tuple[int, int] | None, elapsed: float, note: str, end: str = ""
    ) -> None:
        done, total = counts if counts else (0, 0)
        if total:
            frac = min(1.0, done / total)
            if note.startswith("done"):
                frac, done = 1.0, total
            filled = int(BAR_WIDTH * frac)
            bar = f"[{'#' * filled}{' ' * (BAR_WIDTH - filled)}] {100 * frac:3.0f}% "
            tasks = f"{done}/{total} tasks "
        else:
            bar, tasks = f"[{' ' * BAR_WIDTH}]      ", ""
        text = note or f"{elapsed:.1f} s"
        line = f"\r{stage:<10} {bar}{tasks}{text}"
        with contextlib.suppress(ValueError, OSError):  # a closed stream ends the display
            self.stream.write(f"{line:<80}{end}")
            self.stream.flush()


def _runtime_logs_dashboard() -> bool:
    """Whether the scheduler module's INFO record naming the dashboard reaches a handler."""
    runtime = logging.getLogger("outlier_dask.runtime.schedulers")
    return runtime.isEnabledFor(logging.INFO) and runtime.hasHandlers()


def _safe(counts: Callable[[], tuple[int, int] | None]) -> tuple[int, int] | None:
    try:
        return counts()
    except Exception:  # noqa: BLE001 - progress must never break a run
        return None
