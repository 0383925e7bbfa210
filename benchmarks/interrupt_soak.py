"""Many runs of ``outlier-dask run``, each interrupted at a random moment: does every one end
with one line, the signal's exit status, and nothing left behind?

The tests interrupt a run at chosen moments (``tests/test_interrupts.py``); this soak looks for
the rare ones between them. Each run gets SIGINT (to its process group, as a terminal's Ctrl-C)
or SIGTERM (to the command alone, or with ``--sigterm-to-group`` to its process group, as
``kill -TERM -<pgid>`` and batch systems send it) after a delay drawn uniformly from
``--delays``, on a small synthetic association. A run passes when it ended with status 130
(SIGINT) or 143 (SIGTERM) and one line on stderr besides the run's own log records (or
finished first, with status 0 and none), within ``--stop-timeout`` seconds, leaving no
process of its session, no new ``/dev/shm`` entry, no partial product and nothing in its work
dir. Every other run is printed whole.

    python benchmarks/interrupt_soak.py --runs 45 --signal SIGINT --scheduler local-cluster
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: The run's own log records (``-v`` is off, so INFO and up), which are not the complaint.
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (INFO|WARNING) outlier_dask")
_STATUS = {"SIGINT": 130, "SIGTERM": 143}


def _session_processes(session: int) -> list[int]:
    """Processes still in the session ``session`` (the run's, started with a new session)."""
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                left.append(int(entry.name))
    return left


def soak_one(asn: Path, root: Path, signal_name: str, delay: float, args) -> list[str]:
    """One interrupted run; the ways it fell short (empty if it passed)."""
    out, work = root / "out", root / "work"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shm_before = set(os.listdir("/dev/shm"))
    command = [sys.executable, "-m", "outlier_dask", "run", str(asn), "--output-dir", str(out)]
    command += ["--work-dir", str(work), "--scheduler", args.scheduler, "--n-workers", "2"]
    env = dict(os.environ, STPIPE_DISABLE_CRDS_STEPPARS="True")
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    time.sleep(delay)
    sent = time.perf_counter()
    try:
        if signal_name == "SIGINT":
            os.killpg(process.pid, signal.SIGINT)
        elif args.sigterm_to_group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    problems = []
    try:
        _, stderr = process.communicate(timeout=args.stop_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        problems.append(f"still running {args.stop_timeout} s after the signal")
    stop_s = time.perf_counter() - sent
    lines = [line for line in stderr.splitlines() if line.strip()]
    complaints = [line for line in lines if not _LOG_RECORD.match(line)]
    finished = process.returncode == 0 and not complaints
    if not finished:
        if process.returncode != _STATUS[signal_name]:
            problems.append(f"exit status {process.returncode}")
        if len(complaints) != 1:
            problems.append(f"{len(complaints)} lines on stderr besides the log records")
    time.sleep(0.5)  # a worker's exit is reaped by its parent, not by the command's end
    if left := _session_processes(process.pid):
        problems.append(f"processes left: {left}")
    if new := set(os.listdir("/dev/shm")) - shm_before:
        problems.append(f"/dev/shm entries left: {sorted(new)}")
    if not finished:
        if partial := [p.name for p in out.glob("*")] if out.exists() else []:
            problems.append(f"left in the output dir: {partial}")
        if scratch := list(work.iterdir()):
            problems.append(f"left in the work dir: {[p.name for p in scratch]}")
    if problems:
        problems.append(f"(stopped {stop_s:.1f} s after the signal) stderr:\n{stderr}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="interrupted runs")
    parser.add_argument("--signal", choices=tuple(_STATUS), default="SIGINT")
    parser.add_argument("--scheduler", default="local-cluster", help="the runs' --scheduler")
    parser.add_argument(
        "--delays",
        type=float,
        nargs=2,
        default=(0.3, 7.0),
        metavar=("MIN", "MAX"),
        help="seconds from the start to the signal, drawn uniformly",
    )
    parser.add_argument(
        "--sigterm-to-group",
        action="store_true",
        help="send SIGTERM to the run's process group (its workers too), not to the command",
    )
    parser.add_argument("--stop-timeout", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from outlier_dask.synthetic import write_association

    root = Path(tempfile.mkdtemp(prefix="interrupt_soak-"))
    try:
        asn = write_association(
            root / "data", n_exposures=3, n_detectors=1, detector_shape=(256, 256), seed=3
        ).asn_path
        draw = random.Random(args.seed)
        failed = 0
        for run in range(args.runs):
            delay = draw.uniform(*args.delays)
            problems = soak_one(asn, root, args.signal, delay, args)
            failed += bool(problems)
            verdict = "ok" if not problems else "FAILED: " + "; ".join(problems)
            print(f"run {run + 1} ({args.signal} at {delay:.2f} s): {verdict}", flush=True)
        print(f"{failed} of {args.runs} runs fell short ({args.signal}, {args.scheduler})")
        return 1 if failed else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
