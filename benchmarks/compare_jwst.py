"""Time and compare outlier_dask with jwst 3.0.0's ``OutlierDetectionStep`` on synthetic data.

One invocation generates (or reuses) a synthetic image3 association for a case, then runs
each configuration in its own fresh Python subprocess, so imports and peak memory are counted
the same way for every run:

=============  =============================================================================
run            what the child process does
=============  =============================================================================
jwst           ``OutlierDetectionStep.call(asn, save_results=True, suffix="crf")``, defaults
jwst-step10    the same with ``pixmap_stepsize=10``
od-memory      ``outlier-dask run asn --output-dir ... --overwrite`` (the command, run in the
               child process by ``outlier_dask.command.command``), default scheduler
od-disk        the same with ``--in-memory=False``
=============  =============================================================================

For each run the parent records the wall time of the child, the CPU time (user + system) of
the child and every process it started, the peak resident memory of that process tree (RSS
summed over the tree, sampled every ``--interval`` seconds), the number of pixels flagged
OUTLIER (DQ bit 16) in the written ``_crf.fits`` files, and the Jaccard index
``|A & B| / |A | B|`` of those masks against the jwst-defaults run, over all inputs.

CPU time is exact on Linux: the parent makes itself a child subreaper
(``prctl(PR_SET_CHILD_SUBREAPER)``), so processes orphaned by the child (e.g. the
multiprocessing fork server) are re-parented to it and reaped, and
``getrusage(RUSAGE_CHILDREN)`` then covers the whole tree. Elsewhere the larger of that and
the psutil-sampled CPU times is reported.

Examples
--------
::

    python benchmarks/compare_jwst.py --case small
    python benchmarks/compare_jwst.py --case medium --write-docs
    python benchmarks/compare_jwst.py --case medium --only od-memory --only od-disk
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DOCS = REPO_ROOT / "docs" / "performance.md"
RESULT_MARKER = "@@compare_jwst-result@@ "
DATA_MARKER = ".compare_jwst-complete.json"
RESULTS_FILE = "results.json"
RUN_MARKER = ".compare_jwst-run.json"
OUTLIER = 16  # JWST DQ bit 4
GIB = 2**30
PR_SET_CHILD_SUBREAPER = 36
STAGES = ("plan", "drizzle", "median", "blot_flag", "write")


@dataclass(frozen=True)
class Case:
    """Size of a synthetic association.

    Attributes
    ----------
    n_exposures : int
        Dithered exposures (one jwst group each).
    n_detectors : int
        Detectors per exposure.
    detector_shape : tuple of int
        ``(ny, nx)`` of every detector.
    """

    n_exposures: int
    n_detectors: int
    detector_shape: tuple[int, int]

    def describe(self) -> str:
        """Human-readable size, e.g. ``8 exposures x 2 detectors x 2048 x 2048``."""
        ny, nx = self.detector_shape
        detectors = "detector" if self.n_detectors == 1 else "detectors"
        return f"{self.n_exposures} exposures x {self.n_detectors} {detectors} x {ny} x {nx}"


CASES = {
    "small": Case(4, 1, (1024, 1024)),
    "medium": Case(8, 2, (2048, 2048)),
    "large": Case(8, 4, (2048, 2048)),
}


@dataclass(frozen=True)
class RunSpec:
    """One configuration to time.

    Attributes
    ----------
    name : str
        Short name (command line, folder name).
    label : str
        Name in the tables.
    engine : str
        ``jwst`` or ``outlier_dask``.
    options : dict
        Keyword arguments passed to the step / ``detect_outliers`` on top of the defaults.
    """

    name: str
    label: str
    engine: str
    options: dict[str, Any] = field(default_factory=dict)


RUNS = (
    RunSpec("jwst", "jwst 3.0.0 (defaults)", "jwst"),
    RunSpec("jwst-step10", "jwst 3.0.0, pixmap_stepsize=10", "jwst", {"pixmap_stepsize": 10.0}),
    RunSpec("od-memory", "outlier_dask (in memory)", "outlier_dask"),
    RunSpec("od-disk", "outlier_dask (in_memory=False)", "outlier_dask", {"in_memory": False}),
)
RUNS_BY_NAME = {spec.name: spec for spec in RUNS}
REFERENCE_RUN = "jwst"


@dataclass
class Measurement:
    """What the parent measured for one run.

    Attributes
    ----------
    name, label : str
        From the :class:`RunSpec`.
    returncode : int
        Exit status of the child (negative: killed by that signal).
    wall_s : float
        Wall time from starting the child to its exit.
    cpu_s : float
        User + system CPU seconds of the child and all its descendants.
    cpu_sampled_s : float
        The same, summed from the last psutil sample of every process seen (a lower bound).
    peak_rss_bytes : int
        Largest sum of RSS over the child's process tree in one sample.
    peak_processes : int
        Processes in the tree at that sample.
    peak_pss_bytes : int
        Largest sum of PSS (proportional set size: shared pages split among the processes
        sharing them) over the tree in one sample; 0 where the system does not report PSS.
    import_s, call_s : float or None
        Reported by the child: the step call and the imports before it (jwst), or the run
        (``detect_outliers``'s total in the run report) and the rest of the command: imports,
        command-line set-up and the summary printed after the run (outlier_dask).
    timings : dict
        Per-stage seconds reported by outlier_dask (empty for jwst).
    flagged : int or None
        OUTLIER pixels over all written products.
    jaccard : float or None
        Jaccard index of the OUTLIER masks against the reference run.
    differing : int or None
        Pixels whose OUTLIER bit differs from the reference run.
    n_outputs : int
        ``_crf.fits`` files read back.
    other_cpu_s : float
        CPU seconds the whole machine spent on processes outside this run while it ran
        (other users' work; non-zero values mean the timings are disturbed).
    repeat_walls : list of float
        Wall times of every repetition (this measurement is the fastest).
    log_path : str
        The child's combined stdout and stderr.
    """

    name: str
    label: str
    returncode: int
    wall_s: float
    cpu_s: float
    cpu_sampled_s: float
    peak_rss_bytes: int
    peak_processes: int
    peak_pss_bytes: int = 0
    import_s: float | None = None
    call_s: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    flagged: int | None = None
    jaccard: float | None = None
    differing: int | None = None
    n_outputs: int = 0
    other_cpu_s: float = 0.0
    repeat_walls: list[float] = field(default_factory=list)
    log_path: str = ""

    @property
    def ok(self) -> bool:
        """Whether the child exited cleanly and reported its result."""
        return self.returncode == 0 and self.call_s is not None


# --------------------------------------------------------------------------- child side


def run_child(spec: RunSpec, asn_path: Path, output_dir: Path) -> None:
    """Run one configuration in this (fresh) process and print its result on a marker line.

    Parameters
    ----------
    spec : RunSpec
        The configuration.
    asn_path : Path
        The association JSON.
    output_dir : Path
        Folder for the ``_crf.fits`` products; also the working directory (jwst writes
        temporary files in the current directory).
    """
    os.chdir(output_dir)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    if spec.engine == "jwst":
        from jwst.outlier_detection import OutlierDetectionStep

        imported = time.perf_counter()
        OutlierDetectionStep.call(
            str(asn_path),
            save_results=True,
            output_dir=str(output_dir),
            suffix="crf",
            **spec.options,
        )
        finished = time.perf_counter()
    else:
        # The command as users run it (``outlier-dask run ...``), in this process: it sets
        # up its process (BLAS threads, collector) as the installed command does.
        from outlier_dask.command import command

        argv = ["run", str(asn_path), "--output-dir", str(output_dir), "--overwrite"]
        argv += [f"--{name.replace('_', '-')}={value}" for name, value in spec.options.items()]
        status = command(argv)
        finished = time.perf_counter()
        if status:
            sys.exit(status)
        (report_path,) = output_dir.glob("*_outlier_report.json")
        timings = {k: float(v) for k, v in json.loads(report_path.read_text())["timings"].items()}
        # Imports, command-line set-up and the summary printed after the run.
        imported = started + (finished - started - timings["total"])
    report = {"import_s": imported - started, "call_s": finished - imported, "timings": timings}
    print(RESULT_MARKER + json.dumps(report), flush=True)


# --------------------------------------------------------------------------- data


def case_config(case_name: str, seed: int) -> dict[str, Any]:
    """The ``write_association`` arguments of a case (also stored in the data marker)."""
    case = CASES[case_name]
    return {
        "n_exposures": case.n_exposures,
        "n_detectors": case.n_detectors,
        "detector_shape": list(case.detector_shape),
        "seed": seed,
        "product_name": f"bench_{case_name}",
    }


def ensure_data(data_dir: Path, config: dict[str, Any]) -> tuple[Path, str]:
    """Generate the association into ``data_dir`` unless a complete one with ``config`` is there.

    Parameters
    ----------
    data_dir : Path
        Folder of the ``_cal.fits`` files and the association.
    config : dict
        Arguments of :func:`outlier_dask.synthetic.write_association`.

    Returns
    -------
    asn_path : Path
        The association JSON.
    data_id : str
        Identifies this generation of the data (products of runs on older data are stale).
    """
    marker = data_dir / DATA_MARKER
    if marker.is_file():
        stored = json.loads(marker.read_text())
        asn_path = Path(stored.get("asn_path", ""))
        if stored.get("config") == config and asn_path.is_file():
            print(f"reusing data in {data_dir} (generated {stored['data_id']})")
            return asn_path, stored["data_id"]
    from outlier_dask.synthetic import write_association

    data_dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for stale in [*data_dir.glob("*_cal.fits"), *data_dir.glob("*_asn.json")]:
        stale.unlink()
    print(f"generating {config} into {data_dir} ...", flush=True)
    started = time.perf_counter()
    options = dict(config, detector_shape=tuple(config["detector_shape"]))
    association = write_association(data_dir, **options)
    data_id = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    print(f"generated {len(association.cal_paths)} files in {time.perf_counter() - started:.1f} s")
    marker.write_text(
        json.dumps(
            {"config": config, "asn_path": str(association.asn_path), "data_id": data_id},
            indent=2,
        )
    )
    return association.asn_path, data_id


def input_stems(asn_path: Path) -> list[str]:
    """Stems of the association's members (``<stem>_cal.fits``), in member order."""
    products = json.loads(asn_path.read_text())["products"]
    names = [Path(member["expname"]).name for p in products for member in p["members"]]
    return [name.removesuffix(".fits").removesuffix("_cal") for name in names]


# --------------------------------------------------------------------------- measuring


def become_subreaper() -> bool:
    """Make this process adopt orphaned descendants (Linux), so their CPU time is counted."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class TreeSampler(threading.Thread):
    """Samples RSS and CPU times of every descendant of this process at a fixed interval.

    Parameters
    ----------
    interval : float
        Seconds between samples.
    with_pss : bool
        Also read PSS. That reads ``smaps_rollup``, which walks every page table of a process
        under its memory-map lock: sampled every 0.1 s it slowed a two-process outlier_dask
        run of 7.4 s by about 1 s (every 1 s, by 0.5 s). Timed runs therefore leave it out,
        and an extra, untimed run of each configuration reads it.
    """

    def __init__(self, interval: float, with_pss: bool = False) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.with_pss = with_pss
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self._cpu: dict[tuple[int, float], float] = {}
        self._done = threading.Event()

    def sample(self) -> None:
        """Take one sample of the whole tree below this process."""
        import psutil

        total, total_pss, count = 0, 0, 0
        for proc in psutil.Process().children(recursive=True):
            try:
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    times = proc.cpu_times()
                    key = (proc.pid, proc.create_time())
                pss = self._pss(proc) if self.with_pss else 0
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            total_pss += pss
            count += 1
            self._cpu[key] = times.user + times.system
        if total > self.peak_rss:
            self.peak_rss, self.peak_processes = total, count
        self.peak_pss = max(self.peak_pss, total_pss)

    @staticmethod
    def _pss(proc: Any) -> int:
        """PSS of ``proc`` in bytes (Linux ``smaps_rollup``), 0 if unavailable."""
        try:
            return getattr(proc.memory_full_info(), "pss", 0)
        except (AttributeError, NotImplementedError):
            return 0

    @property
    def cpu_seconds(self) -> float:
        """User + system seconds of every process seen, as of its last sample."""
        return sum(self._cpu.values())

    def run(self) -> None:
        """Sample until :meth:`stop` is called."""
        self.sample()
        while not self._done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        """Take a last sample and end the thread."""
        self._done.set()
        self.join()
        self.sample()


def reap_descendants(timeout: float) -> None:
    """Wait for (and reap) processes adopted by this subreaper; kill any left after ``timeout``.

    Only processes descended from this benchmark's own children are ever adopted here.
    """
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            continue
        if time.monotonic() > deadline:
            for proc in psutil.Process().children(recursive=True):
                print(f"  killing leftover process {proc.pid} ({proc.name()})", file=sys.stderr)
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            deadline = time.monotonic() + timeout
        time.sleep(0.05)


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have spent busy (not idle or waiting on I/O)."""
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def children_cpu_seconds() -> float:
    """User + system seconds of all reaped descendants of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child_environment() -> dict[str, str]:
    """Environment of a child: offline jwst, and the repository importable."""
    env = dict(os.environ)
    env["STPIPE_DISABLE_CRDS_STEPPARS"] = "True"
    env.setdefault("CRDS_MODE", "local")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def measure_run(
    spec: RunSpec,
    asn_path: Path,
    output_dir: Path,
    *,
    interval: float,
    timeout: float,
    exact_cpu: bool,
    with_pss: bool = False,
) -> Measurement:
    """Run ``spec`` in a fresh subprocess and measure it (products read back separately).

    Parameters
    ----------
    spec : RunSpec
        The configuration.
    asn_path : Path
        The association JSON.
    output_dir : Path
        Emptied of old products, then given to the child.
    interval : float
        Seconds between memory samples.
    timeout : float
        Seconds after which the child's process tree is killed.
    exact_cpu : bool
        Whether this process is a subreaper (``getrusage`` then covers the whole tree).
    with_pss : bool
        Also sample PSS (which slows the run: see :class:`TreeSampler`).

    Returns
    -------
    Measurement
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*output_dir.glob("*_crf.fits"), output_dir / RUN_MARKER]:
        stale.unlink(missing_ok=True)
    # Earlier runs' products (1.6 GB per medium run) may still be on their way to disk, and a
    # run that starts meanwhile pays for that writeback in its own writes. Flushing them first
    # gives every run, jwst's and ours, the same start.
    os.sync()
    log_path = output_dir / f"{spec.name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", spec.name]
    command += ["--asn", str(asn_path), "--output-dir", str(output_dir)]
    cpu_before = children_cpu_seconds()
    busy_before = machine_busy_seconds()
    sampler = TreeSampler(interval, with_pss)
    with log_path.open("w") as log:
        started = time.perf_counter()
        child = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=child_environment()
        )
        sampler.start()
        try:
            returncode = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"  {spec.name}: timed out after {timeout:.0f} s; killing it", file=sys.stderr)
            kill_tree(child.pid)
            returncode = child.wait()
        wall = time.perf_counter() - started
        if exact_cpu:
            reap_descendants(timeout=60.0)
        sampler.stop()
    cpu = children_cpu_seconds() - cpu_before
    if not exact_cpu:
        cpu = max(cpu, sampler.cpu_seconds)
    other_cpu = max(0.0, machine_busy_seconds() - busy_before - cpu)
    measurement = Measurement(
        name=spec.name,
        label=spec.label,
        returncode=returncode,
        wall_s=wall,
        cpu_s=cpu,
        cpu_sampled_s=sampler.cpu_seconds,
        peak_rss_bytes=sampler.peak_rss,
        peak_processes=sampler.peak_processes,
        peak_pss_bytes=sampler.peak_pss,
        other_cpu_s=other_cpu,
        repeat_walls=[wall],
        log_path=str(log_path),
    )
    report = parse_child_report(log_path)
    if report is not None:
        measurement.import_s = report["import_s"]
        measurement.call_s = report["call_s"]
        measurement.timings = report["timings"]
    return measurement


def measure_repeated(
    spec: RunSpec, asn_path: Path, output_dir: Path, args: argparse.Namespace, exact_cpu: bool
) -> Measurement:
    """Measure ``spec`` ``args.repeat`` times and keep the fastest successful repetition; its
    peak PSS comes from one more run that reads it (see :class:`TreeSampler`)."""
    options = {"interval": args.interval, "timeout": args.timeout, "exact_cpu": exact_cpu}
    kept: Measurement | None = None
    walls = []
    for _ in range(args.repeat):
        m = measure_run(spec, asn_path, output_dir, **options)
        if not m.ok:
            return m
        walls.append(m.wall_s)
        if kept is None or m.wall_s < kept.wall_s:
            kept = m
    kept.repeat_walls = walls
    untimed = measure_run(spec, asn_path, output_dir, **options, with_pss=True)
    if untimed.ok:
        kept.peak_pss_bytes = untimed.peak_pss_bytes
    return kept


def kill_tree(pid: int) -> None:
    """Kill process ``pid`` (one this benchmark started) and its descendants, by pid."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in [*root.children(recursive=True), root]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def parse_child_report(log_path: Path) -> dict[str, Any] | None:
    """The JSON the child printed after :data:`RESULT_MARKER`, or None if it did not."""
    report = None
    with log_path.open(errors="replace") as log:
        for line in log:
            if line.startswith(RESULT_MARKER):
                report = json.loads(line[len(RESULT_MARKER) :])
    return report


# --------------------------------------------------------------------------- masks


def outlier_masks(output_dir: Path, stems: list[str]) -> dict[str, Any]:
    """OUTLIER masks (bool arrays) of the ``_crf.fits`` products in ``output_dir``.

    Products are keyed by the stem of their input (``<stem>_cal.fits``): jwst inserts the
    association id (``<stem>_o001_crf.fits``), outlier_dask does not (``<stem>_crf.fits``).

    Raises
    ------
    ValueError
        If a product matches no input or several products match one input.
    """
    from astropy.io import fits

    masks = {}
    for path in sorted(output_dir.glob("*_crf.fits")):
        matches = [stem for stem in stems if path.name.startswith(f"{stem}_")]
        if len(matches) != 1 or matches[0] in masks:
            raise ValueError(f"{path}: cannot tell which input this product belongs to")
        with fits.open(path, memmap=False) as hdul:
            masks[matches[0]] = (hdul["DQ"].data & OUTLIER) != 0
    return masks


def compare_masks(masks: dict[str, Any], reference: dict[str, Any]) -> tuple[float, int]:
    """Jaccard index over all inputs and the number of differing pixels.

    Raises
    ------
    ValueError
        If the two runs did not write the same set of products.
    """
    if sorted(masks) != sorted(reference):
        raise ValueError(
            f"products differ from the reference: {sorted(masks)} vs {sorted(reference)}"
        )
    intersection = union = differing = 0
    for name, mask in masks.items():
        ref = reference[name]
        intersection += int((mask & ref).sum())
        union += int((mask | ref).sum())
        differing += int((mask ^ ref).sum())
    return (intersection / union if union else 1.0), differing


def load_reference(run_root: Path, data_id: str, stems: list[str]) -> dict[str, Any] | None:
    """OUTLIER masks of the reference run's products, if they exist for this data."""
    folder = run_root / REFERENCE_RUN
    marker = folder / RUN_MARKER
    if not marker.is_file() or json.loads(marker.read_text()).get("data_id") != data_id:
        return None
    return outlier_masks(folder, stems) or None


# --------------------------------------------------------------------------- reporting


def machine_description() -> dict[str, str]:
    """Cores available, total memory, CPU model, OS, load average."""
    import psutil

    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return {
        "cores": str(cores),
        "memory": f"{psutil.virtual_memory().total / GIB:.1f} GiB",
        "cpu": model,
        "os": f"{platform.system()} {platform.release()}",
    }


def versions() -> dict[str, str]:
    """Versions of python and the packages that matter, and the repository's commit."""
    found = {"python": platform.python_version()}
    for name in ("jwst", "stcal", "drizzle", "dask", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    import outlier_dask

    found["outlier_dask"] = f"{outlier_dask.__version__} ({git_description()})"
    return found


def git_description() -> str:
    """Short commit of the repository, with ``+uncommitted`` when the tree has changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "outlier_dask"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "no git"
    return f"git {commit}{' + uncommitted changes in outlier_dask/' if dirty else ''}"


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def results_table(results: list[Measurement]) -> str:
    """The Markdown table: run | wall s | CPU s | peak RSS GiB | flagged | Jaccard vs jwst."""
    lines = [
        "| run | wall s | CPU s | peak RSS GiB | flagged | Jaccard vs jwst |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        label = m.label if m.ok else f"{m.label} — FAILED (exit {m.returncode})"
        flagged = "–" if m.flagged is None else f"{m.flagged:,}"
        lines.append(
            f"| {label} | {m.wall_s:.1f} | {m.cpu_s:.1f} | {m.peak_rss_bytes / GIB:.2f} "
            f"| {flagged} | {_number(m.jaccard, 6)} |"
        )
    return "\n".join(lines)


def speedup_lines(results: list[Measurement]) -> list[str]:
    """Ratios jwst / outlier_dask of wall time, CPU time and peak RSS, one line per pair."""
    ok = [m for m in results if m.ok]
    jwst_runs = [m for m in ok if RUNS_BY_NAME[m.name].engine == "jwst"]
    ours = [m for m in ok if RUNS_BY_NAME[m.name].engine == "outlier_dask"]
    lines = []
    for mine in ours:
        for ref in jwst_runs:
            lines.append(
                f"- {mine.label} vs {ref.label}: speed-up **{ref.wall_s / mine.wall_s:.2f}x** "
                f"(wall), CPU time {ref.cpu_s / mine.cpu_s:.2f}x, "
                f"peak RSS {ref.peak_rss_bytes / max(mine.peak_rss_bytes, 1):.2f}x"
            )
    return lines


def stage_table(results: list[Measurement]) -> tuple[str, bool]:
    """Per-stage seconds of the outlier_dask runs, plus the call and process overheads.

    Returns the Markdown table and whether the stages overlap (their sum exceeds the
    ``total`` that newer versions report: ``write`` is then task-seconds spent writing inside
    the ``blot_flag`` stage, summed over workers).
    """
    ours = [m for m in results if m.ok and RUNS_BY_NAME[m.name].engine == "outlier_dask"]
    if not ours:
        return "", False
    extra = sorted({s for m in ours for s in m.timings} - set(STAGES) - {"total"})
    stages = [*STAGES, *extra]

    def row(name: str, values: list[float | None]) -> str:
        return f"| {name} | " + " | ".join(_number(v, 2) for v in values) + " |"

    lines = [
        "| stage | " + " | ".join(f"{m.label} s" for m in ours) + " |",
        "|---|" + "---:|" * len(ours),
    ]
    lines += [row(stage, [m.timings.get(stage) for m in ours]) for stage in stages]
    overlap = False
    for m in ours:
        staged = sum(m.timings.get(stage, 0.0) for stage in stages)
        overlap |= staged > 1.01 * m.timings.get("total", m.call_s)
    if not overlap:
        lines.append(
            row(
                "other (inputs, scheduler start/stop, scratch)",
                [m.call_s - sum(m.timings.get(s, 0.0) for s in stages) for m in ours],
            )
        )
    lines.append(row("**detect_outliers call**", [m.call_s for m in ours]))
    lines.append(row("imports, command set-up and summary", [m.import_s for m in ours]))
    lines.append(row("interpreter start + exit", [m.wall_s - m.call_s - m.import_s for m in ours]))
    return "\n".join(lines), overlap


def overhead_lines(results: list[Measurement]) -> list[str]:
    """Per run: seconds in the call itself versus imports and process start/exit."""
    lines = []
    for m in results:
        if not m.ok:
            continue
        differing = "–" if m.differing is None else f"{m.differing:,}"
        repeats = ""
        if len(m.repeat_walls) > 1:
            repeats = "; walls of all repeats " + ", ".join(f"{w:.1f}" for w in m.repeat_walls)
        lines.append(
            f"- {m.label}: call {m.call_s:.1f} s, imports and set-up {m.import_s:.1f} s, "
            f"interpreter start/exit {m.wall_s - m.call_s - m.import_s:.1f} s; "
            f"peak PSS {m.peak_pss_bytes / GIB:.2f} GiB, {m.peak_processes} process(es) at "
            f"peak RSS; {differing} pixels differ "
            f"from jwst; other processes on the machine used {m.other_cpu_s:.1f} CPU s "
            f"({m.other_cpu_s / m.wall_s:.2f} cores on average){repeats}"
        )
    return lines


def run_context(args: argparse.Namespace, config: dict[str, Any], exact_cpu: bool) -> dict:
    """What the report says about an invocation: command, date, machine, versions, method.

    Taken before the runs, so the versions are those the runs imported.
    """
    return {
        "case": args.case,
        "command": shlex.join(["python", "benchmarks/compare_jwst.py", *sys.argv[1:]]),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_description(),
        "versions": versions(),
        "config": config,
        "interval": args.interval,
        "exact_cpu": exact_cpu,
        "reference_note": "",
    }


def contention_warning(results: list[Measurement], limit: float = 0.1) -> list[str]:
    """A warning paragraph when other processes kept the machine busy during the runs."""
    busy = [m.other_cpu_s / m.wall_s for m in results if m.wall_s > 0]
    if not busy or max(busy) <= limit:
        return []
    return [
        f"**The machine was shared**: other processes used {min(busy):.2f}–{max(busy):.2f} "
        "cores on average while the runs ran (per run below), so wall times are inflated and "
        "noisy; CPU s is less affected.",
        "",
    ]


def report_markdown(context: dict[str, Any], results: list[Measurement]) -> str:
    """The documentation section (without its markers).

    Parameters
    ----------
    context : dict
        From :func:`run_context`.
    results : list of Measurement
        The runs, in table order.
    """
    case_name = context["case"]
    case = CASES[case_name]
    machine = context["machine"]
    n_inputs = case.n_exposures * case.n_detectors
    cpu_method = (
        "getrusage(RUSAGE_CHILDREN) with the parent as child subreaper (whole tree, exact)"
        if context["exact_cpu"]
        else "max of getrusage(RUSAGE_CHILDREN) and psutil samples of the tree"
    )
    interval = context["interval"]
    reference_note = context["reference_note"]
    parts = [
        f"## compare_jwst: {case_name} ({case.describe()}, {n_inputs} inputs)",
        "",
        f"- Command: `{context['command']}`",
        f"- Date: {context['date']}",
        f"- Machine: {machine['cores']} cores available (sched_getaffinity), "
        f"{machine['memory']} RAM, {machine['cpu']}, {machine['os']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in context["versions"].items()),
        f"- Data: `outlier_dask.synthetic.write_association` with seed {context['config']['seed']}",
        "",
        results_table(results),
        "",
        *contention_warning(results),
        "Each run is a fresh Python process started by the script: jwst's step called from "
        "Python, outlier_dask's `outlier-dask run` command; wall time is from its start "
        "to its exit (imports included). CPU s is user + system time of the process and all its "
        f"descendants: {cpu_method}. Peak RSS is the largest sum of RSS over the process tree "
        f"in samples taken every {interval:g} s (pages shared between forked workers are "
        "counted once per process; the peak PSS below splits them instead, and comes from "
        "one more, untimed run of each configuration, because reading PSS slows the "
        "processes it reads). flagged: OUTLIER (DQ 16) pixels in the written `_crf.fits` "
        "files; Jaccard: |A∩B|/|A∪B| of "
        f"those masks against jwst defaults{reference_note}, "
        "over all inputs.",
        "",
    ]
    speedups = speedup_lines(results)
    if speedups:
        parts += [
            "Ratios jwst / outlier_dask (above 1: outlier_dask is better):",
            "",
            *speedups,
            "",
        ]
    stages, overlap = stage_table(results)
    if stages:
        parts += [
            "Per-stage wall time of the outlier_dask runs (`timings` in the command's run "
            "report, as in `OutlierResult.timings`):",
            "",
            stages,
            "",
        ]
        if overlap:
            parts += [
                "The stages overlap: in this version `write` is the task-seconds spent writing "
                "the products inside the blot_flag stage (summed over workers), so the rows do "
                "not add up to the call.",
                "",
            ]
    parts += ["Where the wall time goes in each run:", "", *overhead_lines(results)]
    return "\n".join(parts).rstrip() + "\n"


def write_docs_section(path: Path, case_name: str, body: str) -> None:
    """Replace (or append) this case's marked section of ``path``; the rest is left as it is."""
    start = f"<!-- compare_jwst:{case_name} start -->"
    end = f"<!-- compare_jwst:{case_name} end -->"
    section = f"{start}\n{body}{end}\n"
    text = path.read_text() if path.is_file() else "# Performance\n\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --------------------------------------------------------------------------- main


def selected_runs(args: argparse.Namespace) -> list[RunSpec]:
    """The runs named by ``--only`` (all by default), minus jwst ones with ``--skip-jwst``."""
    runs = [RUNS_BY_NAME[n] for n in args.only] if args.only else list(RUNS)
    if args.skip_jwst:
        runs = [spec for spec in runs if spec.engine != "jwst"]
    return runs


def run_benchmark(args: argparse.Namespace) -> int:
    """Generate data, run and measure every selected configuration, report; exit status."""
    config = case_config(args.case, args.seed)
    case_dir = Path(args.data_dir) / args.case
    asn_path, data_id = ensure_data(case_dir / "data", config)
    run_root = case_dir / "runs"
    exact_cpu = become_subreaper()
    context = run_context(args, config, exact_cpu)
    results = []
    for spec in selected_runs(args):
        print(f"running {spec.name}: {spec.label} ...", flush=True)
        m = measure_repeated(spec, asn_path, run_root / spec.name, args, exact_cpu)
        if m.ok:
            (run_root / spec.name / RUN_MARKER).write_text(json.dumps({"data_id": data_id}))
            print(
                f"  {m.wall_s:.1f} s wall, {m.cpu_s:.1f} s CPU, "
                f"{m.peak_rss_bytes / GIB:.2f} GiB peak RSS, "
                f"{m.other_cpu_s:.1f} CPU s used by other processes meanwhile",
                flush=True,
            )
        else:
            print(f"  FAILED (exit {m.returncode}); log: {m.log_path}", file=sys.stderr)
            print(tail(Path(m.log_path), 30), file=sys.stderr)
        results.append(m)

    stems = input_stems(asn_path)
    reference = load_reference(run_root, data_id, stems)
    ran_reference = any(m.name == REFERENCE_RUN and m.ok for m in results)
    if reference is not None and not ran_reference:
        context["reference_note"] = " (from an earlier invocation)"
    for m in results:
        if not m.ok:
            continue
        masks = outlier_masks(run_root / m.name, stems)
        m.n_outputs = len(masks)
        m.flagged = int(sum(int(mask.sum()) for mask in masks.values()))
        if reference is not None:
            m.jaccard, m.differing = compare_masks(masks, reference)
    if reference is None:
        print("no jwst-defaults products for this data: Jaccard not computed", file=sys.stderr)

    (case_dir / RESULTS_FILE).write_text(
        json.dumps({"context": context, "runs": [asdict(m) for m in results]}, indent=2) + "\n"
    )
    publish(context, results, args)
    return 0 if all(m.ok for m in results) else 1


def publish(context: dict[str, Any], results: list[Measurement], args: argparse.Namespace) -> None:
    """Print the report and, with ``--write-docs``, write it into the docs file."""
    body = report_markdown(context, results)
    print()
    print(body)
    if args.write_docs:
        write_docs_section(Path(args.docs), context["case"], body)
        print(f"wrote section '{context['case']}' of {args.docs}")


def republish(args: argparse.Namespace) -> int:
    """Report the last invocation's results for ``args.case`` again, without running anything.

    Useful after changing the report's layout: the command, date, machine and versions are
    those recorded by the invocation that measured.
    """
    path = Path(args.data_dir) / args.case / RESULTS_FILE
    if not path.is_file():
        print(f"{path}: no results to report; run the benchmark first", file=sys.stderr)
        return 1
    saved = json.loads(path.read_text())
    publish(saved["context"], [Measurement(**m) for m in saved["runs"]], args)
    return 0


def tail(path: Path, n: int) -> str:
    """The last ``n`` lines of a text file."""
    with path.open(errors="replace") as f:
        return "".join(f.readlines()[-n:])


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        description="Time outlier_dask against jwst 3.0.0's OutlierDetectionStep "
        "on a synthetic association; each run in its own subprocess.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--case", choices=sorted(CASES), default="small", help="data size")
    parser.add_argument(
        "--data-dir",
        default=str(Path(tempfile.gettempdir()) / "outlier_dask_compare_jwst"),
        help="root of generated data (<data-dir>/<case>/data) and products (.../runs/<run>)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument(
        "--only",
        action="append",
        choices=[spec.name for spec in RUNS],
        help="run only this configuration (repeatable); default: all",
    )
    parser.add_argument("--skip-jwst", action="store_true", help="do not run jwst")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each configuration N times, keep the fastest"
    )
    parser.add_argument(
        "--interval", type=float, default=0.1, help="seconds between memory samples"
    )
    parser.add_argument(
        "--timeout", type=float, default=4 * 3600.0, help="seconds before a run is killed"
    )
    parser.add_argument(
        "--write-docs", action="store_true", help="write this case's section of --docs"
    )
    parser.add_argument("--docs", default=str(DEFAULT_DOCS), help="Markdown file to update")
    parser.add_argument(
        "--from-results",
        action="store_true",
        help="run nothing: report the case's last saved results again (with --write-docs: "
        "rewrite its docs section)",
    )
    # internal: the child side of one run
    parser.add_argument("--child", choices=sorted(RUNS_BY_NAME), help=argparse.SUPPRESS)
    parser.add_argument("--asn", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.interval <= 0 or args.timeout <= 0:
        parser.error("--repeat, --interval and --timeout must be positive")
    if args.child:
        run_child(RUNS_BY_NAME[args.child], Path(args.asn), Path(args.output_dir))
        return 0
    if str(REPO_ROOT) not in sys.path:  # the package is used from this checkout
        sys.path.insert(0, str(REPO_ROOT))
    if args.from_results:
        return republish(args)
    return run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
