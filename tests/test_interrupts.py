"""Ctrl-C and SIGTERM at any moment of ``outlier-dask run``: from its first line (the imports,
the planning) and on a ``local-cluster``, one line, exit status 130 or 143, and nothing left
behind: no product, no scratch, no process, no semaphore or shared memory in ``/dev/shm``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from process_hooks import python_path_with_hook

from outlier_dask.synthetic import write_association

#: A generous bound on the time to stop, that only catches a hang (the figures are in the
#: report of the run, not asserted).
HANG_S = 20.0

#: Installed as ``sitecustomize``: with ``OD_TEST_SLOW_DRIZZLE`` set, each group task
#: announces itself on stderr and sleeps, so a signal can be sent while the stage runs.
SLOW_DRIZZLE_HOOK = """
import os

if os.environ.get("OD_TEST_SLOW_DRIZZLE"):
    import importlib
    import sys
    import time

    importlib.import_module("outlier_dask.api")
    _tasks = importlib.import_module("outlier_dask.engine.tasks")
    _original = _tasks.build_group_mosaic

    def _slow(*args, **kwargs):
        print(f"OD-TEST-HOOK drizzle pid={os.getpid()}", file=sys.stderr, flush=True)
        time.sleep(300)
        return _original(*args, **kwargs)

    _tasks.build_group_mosaic = _slow
"""


@pytest.fixture(scope="module")
def association(tmp_path_factory):
    return write_association(
        tmp_path_factory.mktemp("interrupts") / "data",
        n_exposures=3,
        n_detectors=1,
        detector_shape=(64, 64),
        seed=3,
    )


def _command() -> list[str]:
    """The installed console script (what a user runs), else ``python -m outlier_dask``."""
    script = Path(sys.executable).with_name("outlier-dask")
    return [str(script)] if script.exists() else [sys.executable, "-m", "outlier_dask"]


def _descendants(pid: int) -> set[int]:
    """Processes started by ``pid`` and by them, now."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _shared_memory_of(pids: set[int]) -> set[str]:
    """Names of the ``/dev/shm`` objects (semaphores, segments) mapped by ``pids``."""
    names = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        names |= {
            line.split("/dev/shm/")[1].split()[0]
            for line in maps.splitlines()
            if "/dev/shm/" in line
        }
    return names


def _signal_set(pid: int, field: str, signum: int) -> bool:
    """Whether ``signum`` is in the process's ``SigCgt`` (caught), ``SigIgn`` (ignored) or
    ``SigBlk`` (blocked, in its main thread)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line for line in status.splitlines() if line.startswith(field)).split()[1], 16)
    return bool(mask & (1 << (signum - 1)))


def _spawned_workers(pid: int) -> list[int]:
    """The processes started by ``pid`` through multiprocessing's ``spawn`` (a cluster's
    workers), now."""
    workers = []
    for child in _descendants(pid):
        with contextlib.suppress(OSError):
            if b"multiprocessing.spawn" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
    return workers


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class _Run:
    """``outlier-dask run`` in its own process group, its stderr collected by a thread."""

    def __init__(
        self,
        association,
        tmp_path: Path,
        extra: list[str],
        env: dict[str, str],
        *,
        as_module: bool = False,
    ):
        self.out, self.work = tmp_path / "out", tmp_path / "work"
        self.work.mkdir()
        program = [sys.executable, "-m", "outlier_dask"] if as_module else _command()
        command = [*program, "run", str(association.asn_path), "--output-dir", str(self.out)]
        command += ["--work-dir", str(self.work), "--n-workers", "2", *extra]
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a terminal's foreground group, signalled as a whole
            # A shell's background job may start with Ctrl-C ignored; a terminal's has the
            # default, which the command replaces (it leaves an ignored SIGINT alone).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: list[str] = []
        self.marked = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            if "OD-TEST-HOOK" in line:
                self.marked.set()

    def signal_and_wait(self, signum: int, group: bool) -> tuple[int, float, set[int], set[str]]:
        """Send ``signum`` (to the whole group, as a terminal's Ctrl-C, or to the command
        only); return the status, the seconds to exit, and the processes and ``/dev/shm``
        objects the run had when signalled."""
        pids = _descendants(self.process.pid) | {self.process.pid}
        shm = _shared_memory_of(pids)
        sent = time.perf_counter()
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        status = self.wait()
        return status, time.perf_counter() - sent, pids - {self.process.pid}, shm

    def wait(self) -> int:
        """The command's exit status; killed (with its group) if it hangs."""
        try:
            return self.process.wait(HANG_S)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def stderr(self) -> str:
        self.reader.join(HANG_S)
        return "".join(self.lines)


def _assert_nothing_left(run: _Run, children: set[int], shm: set[str]) -> None:
    deadline = time.monotonic() + HANG_S
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    # The run's processes, multiprocessing's resource tracker included (it removes the
    # semaphores of processes that were killed), have all ended.
    assert not [pid for pid in children if _alive(pid)], "processes outlived the run"
    assert sorted(name for name in shm if Path("/dev/shm", name).exists()) == []
    assert not run.out.exists() or sorted(run.out.iterdir()) == []
    assert sorted(run.work.iterdir()) == []


def _messages(stderr: str) -> list[str]:
    """stderr without the run's log records and the test hook's markers."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and " INFO " not in line and "OD-TEST-HOOK" not in line
    ]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(
    "moment", ["held", "caught", 0.3], ids=["first-line", "handlers-installed", "after-0.3s"]
)
def test_a_signal_during_start_up_ends_the_command_with_one_line(
    association, tmp_path, signum, moment
):
    """``held``: the moment the entry point's first line blocks the signals (polled from /proc,
    before its handlers' module loads); before it only the interpreter's start-up runs.
    ``caught``: the moment the handlers exist. Either way the command is still importing
    numpy, jwst and dask."""
    run = _Run(association, tmp_path, [], {})
    if moment in ("held", "caught"):
        field = "SigBlk" if moment == "held" else "SigCgt"
        deadline = time.monotonic() + HANG_S
        while (
            not _signal_set(run.process.pid, field, signal.SIGTERM) and time.monotonic() < deadline
        ):
            time.sleep(0.0005)
    else:
        time.sleep(moment)
    status, _, children, shm = run.signal_and_wait(signum, group=True)
    stderr = run.stderr()
    assert status == 128 + signum, stderr
    assert _messages(stderr) == [f"outlier-dask: interrupted ({signal.Signals(signum).name})"]
    _assert_nothing_left(run, children, shm)


#: Installed as ``sitecustomize``: with ``OD_TEST_SIGNAL_MET`` set to ``<where>:<what>``, the
#: command sends itself SIGTERM inside code that meets the interrupt as some libraries do:
#: ``swallow`` (C code that clears the error, a bare ``except``) or ``retype`` (numpy's dtype
#: parsing in erfa's import, seen by a signal 0.3 s in: a ``TypeError`` without the chain),
#: ``where`` the command imports its modules (``import``) or plans the run (``plan``).
SIGNAL_MET_HOOK = """
import os

if os.environ.get("OD_TEST_SIGNAL_MET"):
    import importlib
    import signal
    import sys
    import time

    _where, _what = os.environ["OD_TEST_SIGNAL_MET"].split(":")

    def _meet_the_signal():
        if _what == "in-exec":
            source = "os.kill(os.getpid(), signal.SIGTERM); time.sleep(10)"
            exec(source, {"os": os, "signal": signal, "time": time})
            return
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        except BaseException:
            if _what == "retype":
                raise TypeError("data type 'i4' not understood") from None
        print("OD-TEST-HOOK went on", file=sys.stderr, flush=True)

    if _where == "import":

        class _MeetOnImport:
            def find_spec(self, name, path=None, target=None):
                if name == "outlier_dask.cli":
                    sys.meta_path.remove(self)
                    _meet_the_signal()
                return None

        sys.meta_path.insert(0, _MeetOnImport())
    else:
        _api = importlib.import_module("outlier_dask.api")
        _original = _api.plan_run

        def _plan_run(*args, **kwargs):
            _meet_the_signal()
            return _original(*args, **kwargs)

        _api.plan_run = _plan_run
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "what"), [("import", "swallow"), ("import", "retype"), ("plan", "swallow")]
)
def test_a_signal_a_library_swallows_or_retypes_still_ends_the_command(
    association, tmp_path, where, what
):
    """The command goes on past the code that met the signal (``swallow``) or fails there with
    another error (``retype``): it still ends with the signal's line and status, before any
    work, and leaves nothing behind. Before, the first ran to the end with status 0 and
    logging off (CI, a signal 0.3 s in), the second printed a traceback with status 1."""
    path = python_path_with_hook(tmp_path / "hooks", SIGNAL_MET_HOOK)
    run = _Run(
        association, tmp_path, [], {"PYTHONPATH": path, "OD_TEST_SIGNAL_MET": f"{where}:{what}"}
    )
    status = run.wait()
    stderr = run.stderr()
    assert status == 128 + signal.SIGTERM, stderr
    assert ("OD-TEST-HOOK went on" in stderr) == (what == "swallow")
    assert _messages(stderr) == ["outlier-dask: interrupted (SIGTERM)"]
    _assert_nothing_left(run, set(), set())


@pytest.mark.slow
@pytest.mark.parametrize("where", ["import", "plan"])
def test_python_m_ends_with_the_signal_s_status_after_an_interrupt_in_code_run_from_a_string(
    association, tmp_path, where
):
    """``python -m outlier_dask``, interrupted while code run from a string (``exec``, as
    dataclasses run it while modules load) is running: status 143, not death by SIGINT.
    CPython marks that interrupt as unhandled even once the command caught it, and ended the
    process by SIGINT (-2) instead of with 143 (found by ``benchmarks/interrupt_soak.py``)."""
    path = python_path_with_hook(tmp_path / "hooks", SIGNAL_MET_HOOK)
    env = {"PYTHONPATH": path, "OD_TEST_SIGNAL_MET": f"{where}:in-exec"}
    run = _Run(association, tmp_path, [], env, as_module=True)
    status = run.wait()
    stderr = run.stderr()
    assert status == 128 + signal.SIGTERM, stderr
    assert _messages(stderr) == ["outlier-dask: interrupted (SIGTERM)"]
    _assert_nothing_left(run, set(), set())


@pytest.mark.slow
def test_a_local_cluster_run_stopped_by_sigterm_stops_its_workers_at_once(association, tmp_path):
    """SIGTERM to the whole process group (as ``kill -TERM -<pgid>`` and batch systems send it):
    the cluster's workers die of it, the command stops the cluster without waiting for them."""
    signum, group = signal.SIGTERM, True
    path = python_path_with_hook(tmp_path / "hooks", SLOW_DRIZZLE_HOOK)
    env = {"PYTHONPATH": path, "OD_TEST_SLOW_DRIZZLE": "1"}
    run = _Run(association, tmp_path, ["--scheduler", "local-cluster"], env)
    assert run.marked.wait(120), "the drizzle stage never started:\n" + "".join(run.lines)
    time.sleep(0.3)  # let the other worker pick up its task
    workers = _spawned_workers(run.process.pid)
    # A terminal's Ctrl-C reaches them too: they leave it to the command (blocked from their
    # start, runtime/signals.py's without_ctrl_c_in_what_starts).
    assert len(workers) == 2
    assert all(_signal_set(pid, "SigBlk", signal.SIGINT) for pid in workers)
    status, _, children, shm = run.signal_and_wait(signum, group=group)
    stderr = run.stderr()
    assert status == 128 + signum, stderr
    assert _messages(stderr) == [f"outlier-dask: interrupted ({signal.Signals(signum).name})"]
    assert children, "the cluster's worker processes were not seen"
    _assert_nothing_left(run, children, shm)


_MASKS_PROBE = """
import signal, subprocess, sys, threading
from outlier_dask.runtime.signals import without_ctrl_c_in_what_starts

def blocked():
    return signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])

seen = {}
def start_a_process():
    seen["thread"] = blocked()
    seen["process"] = subprocess.run(
        [sys.executable, "-c", "import signal; print(signal.SIGINT in signal.pthread_sigmask("
         "signal.SIG_BLOCK, []), signal.getsignal(signal.SIGINT) is signal.default_int_handler)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
handled = []
signal.signal(signal.SIGINT, lambda *_: handled.append(True))
with without_ctrl_c_in_what_starts():
    seen["inside"] = blocked()
    thread = threading.Thread(target=start_a_process)
    thread.start()
    thread.join()
    signal.raise_signal(signal.SIGINT)
    seen["handled inside"] = bool(handled)
seen["after"] = blocked()
seen["handled after"] = bool(handled)
print(seen)
"""


def test_what_starts_without_ctrl_c_has_sigint_blocked_from_its_first_instruction():
    """Threads started in the block, and processes they start (a cluster's workers, spawned
    by its threads), have SIGINT blocked from their start, Python's own handler installed
    but never reached; the caller's mask comes back after the block, and a SIGINT sent
    meanwhile is handled then, not lost."""
    shown = subprocess.run(
        [sys.executable, "-c", _MASKS_PROBE], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert shown == str(
        {
            "inside": True,
            "thread": True,
            "process": ["True", "True"],
            "handled inside": False,
            "after": False,
            "handled after": True,
        }
    )


def _sigint_blocked_and_ignored() -> tuple[bool, bool]:
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return blocked, signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_a_forked_pool_s_workers_have_sigint_blocked_from_the_fork():
    """The ``processes`` pool forks its workers with SIGINT blocked (before their initializer
    ignores it, the run's handler they inherit would raise a ``KeyboardInterrupt`` of their
    own); the caller's mask is as before once the pool has started."""
    from outlier_dask.runtime.schedulers import started_process_pool

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with started_process_pool(2) as pool:
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
        seen = [pool.executor.submit(_sigint_blocked_and_ignored).result() for _ in range(4)]
    assert seen == [(True, True)] * 4


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["installed-command", "python-m"])
def test_ctrl_c_as_a_local_cluster_s_workers_start_ends_the_command_with_one_line(
    association, tmp_path, monkeypatch, entry
):
    """A terminal's Ctrl-C as soon as the cluster's worker processes exist (their interpreter
    just started; they then import distributed while the command waits for the cluster's
    start): one line, the starting cluster closed, nothing left. Each worker used to print
    its ``KeyboardInterrupt`` traceback (from the moment it existed under ``python -m``, where
    the command's script is not run again), and the cluster cut short in its start its own
    from distributed's exit hook."""
    script = Path(sys.executable).with_name("outlier-dask")
    if entry == "installed-command" and not script.exists():
        pytest.skip("needs the installed command")
    if entry == "installed-command":
        command = [str(script)]
    else:
        command = [sys.executable, "-m", "outlier_dask"]
    monkeypatch.setattr(sys.modules[__name__], "_command", lambda: command)
    run = _Run(association, tmp_path, ["--scheduler", "local-cluster"], {})
    deadline = time.monotonic() + HANG_S
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = _spawned_workers(run.process.pid)
        time.sleep(0.0005)
    assert len(workers) == 2, "the cluster's workers were not seen:\n" + "".join(run.lines)
    status, _, children, shm = run.signal_and_wait(signal.SIGINT, group=True)
    stderr = run.stderr()
    assert status == 128 + signal.SIGINT, stderr
    assert _messages(stderr) == ["outlier-dask: interrupted (SIGINT)"]
    _assert_nothing_left(run, children, shm)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def slow_cluster(tmp_path):
    """A ``dask scheduler`` and two ``dask worker`` processes on loopback, in their own
    session (a Ctrl-C in the command's terminal does not reach them), whose group tasks
    announce themselves in the returned log and sleep. Yields ``(address, log)``."""
    distributed = pytest.importorskip("distributed")
    path = python_path_with_hook(tmp_path / "cluster_hooks", SLOW_DRIZZLE_HOOK)
    env = {**os.environ, "PYTHONPATH": path, "OD_TEST_SLOW_DRIZZLE": "1"}
    address = f"tcp://127.0.0.1:{_free_port()}"
    log = tmp_path / "cluster.log"
    dask_command = str(Path(sys.executable).with_name("dask"))
    commands = [
        [dask_command, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1]]
        + ["--dashboard-address", ":0"]
    ] + [
        [dask_command, "worker", address, "--nthreads", "1", "--nworkers", "1"]
        + ["--local-directory", str(tmp_path / f"worker{i}"), "--no-dashboard"]
        for i in range(2)
    ]
    processes = []
    with open(log, "w") as sink:
        try:
            for command in commands:
                processes.append(
                    subprocess.Popen(
                        command, env=env, stdout=sink, stderr=sink, start_new_session=True
                    )
                )
            with distributed.Client(address, timeout=60) as watcher:
                watcher.wait_for_workers(2, timeout=120)
            yield address, log
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(HANG_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.mark.slow
def test_ctrl_c_on_a_cluster_at_an_address_releases_its_tasks_and_leaves_the_cluster(
    association, tmp_path, slow_cluster
):
    """``--scheduler tcp://…``: the cluster is not the run's to stop. Ctrl-C ends the command
    with its one line and exit status 130, and the scheduler forgets every task of the run
    (none left processing or held in memory), while its workers stay up for the next run."""
    import distributed

    address, log = slow_cluster
    run = _Run(association, tmp_path, ["--scheduler", address], {})
    deadline = time.monotonic() + 120
    while "OD-TEST-HOOK" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "OD-TEST-HOOK" in log.read_text(), "the drizzle stage never started on the cluster"
    status, _, children, shm = run.signal_and_wait(signal.SIGINT, group=True)
    stderr = run.stderr()
    assert status == 130, stderr
    assert _messages(stderr) == ["outlier-dask: interrupted (SIGINT)"]
    _assert_nothing_left(run, children, shm)
    with distributed.Client(address, timeout=60) as watcher:
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline and (
            any(watcher.processing().values()) or watcher.who_has()
        ):
            time.sleep(0.1)
        assert not any(watcher.processing().values()), watcher.processing()
        assert not watcher.who_has()
        assert len(watcher.scheduler_info()["workers"]) == 2
