"""How the worker processes of this run's ``LocalCluster`` died, for the run's one-line error.

When a worker process ends, its nanny (in this process) logs how: ``Worker process 1234 was
killed by signal 9``, on logger ``distributed.nanny`` at INFO, a level the command never shows.
distributed's ``KilledWorker`` says only which task it gave up on. A filter on that logger
notes each death while the cluster runs and passes on exactly the records the logger passed
before (those at or above its level then), so what the user sees does not change.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import threading
from collections.abc import Iterator

__all__ = ["NANNY_LOGGER", "NannyDeaths", "death_description", "watching_nanny_deaths"]

#: distributed's nanny's logger, and its messages for a worker that ended abnormally.
NANNY_LOGGER = "distributed.nanny"
_DEATH = re.compile(
    r"Worker process (?P<pid>\d+) "
    r"(?:was killed by signal (?P<signal>\d+)|exited with status (?P<status>-?\d+))"
)


def death_description(exitcode: int) -> str:
    """How a process ended, from its exit code as multiprocessing gives it (negative: the
    signal that killed it): ``killed by SIGKILL`` or ``exited with status 3``."""
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
        return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


class NannyDeaths(logging.Filter):
    """A filter for :data:`NANNY_LOGGER` that notes worker deaths.

    Attributes
    ----------
    deaths : list of str
        ``worker 1234 killed by SIGKILL`` for each worker process that ended abnormally, in
        the order the nannies saw them.
    """

    def __init__(self, shown_from: int) -> None:
        super().__init__()
        self.shown_from = shown_from
        self.deaths: list[str] = []
        self._seen = threading.Event()

    def filter(self, record: logging.LogRecord) -> bool:
        found = _DEATH.search(record.getMessage())
        if found:
            signum = found["signal"]
            exitcode = -int(signum) if signum else int(found["status"])
            self.deaths.append(f"worker {found['pid']} {death_description(exitcode)}")
            self._seen.set()
        return record.levelno >= self.shown_from

    def last(self, wait_s: float = 0.0) -> str | None:
        """How the most recent worker death happened, or None if none was seen.

        ``wait_s``: how long to wait for a first death to be logged. The scheduler may learn
        of a death (and give up on a task) before the dead worker's nanny logs how it died.
        """
        self._seen.wait(wait_s)
        return self.deaths[-1] if self.deaths else None


@contextlib.contextmanager
def watching_nanny_deaths() -> Iterator[NannyDeaths]:
    """Within the block, worker deaths logged by nannies in this process are noted.

    The logger's level is lowered to INFO for the block (so that the nannies' records reach
    the filter) and restored after it; the filter drops the records the old level would have.
    """
    logger = logging.getLogger(NANNY_LOGGER)
    level = logger.level
    watcher = NannyDeaths(shown_from=logger.getEffectiveLevel())
    logger.addFilter(watcher)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield watcher
    finally:
        logger.removeFilter(watcher)
        logger.setLevel(level)
