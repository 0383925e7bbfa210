"""Survey scale: tiled mosaics of many inputs, against jwst 3.0.0, on one machine and a cluster.

Three parts, each run in its own fresh process per configuration (``--parts``):

``series``
    One synthetic survey tiling of 1024² detectors (``--series-grid`` pointings x 2 dithers x
    4 detectors, 288 inputs by default); sub-associations of its first 16, 72, 144, 288
    members (whole pointings, pointing-major). Each is run with this engine's defaults, at
    ``--memory-limit 1GiB`` inside a cgroup of 1.25 GiB (a hard limit the kernel enforces),
    and with jwst ``in_memory=False`` up to ``--jwst-max-inputs``. This engine's runs are
    made ``--repeat`` times in rounds over the sizes (jwst once): medians and ranges of the
    wall, the largest memory and scratch, and a line through the median walls that splits
    them into a fixed part and a cost per input. Reported: wall, CPU of the
    process tree, peak RSS of the tree (sampled), the cgroup's peak (page cache included),
    scratch bytes written (bytes the tree wrote, minus the products), the largest size the
    work folder reached, time per input and the plan stage.
``mosaic``
    The 3 x 3 pointings x 2 dithers x 4 detectors of 2048² (72 inputs) with this engine's
    defaults and jwst ``in_memory=False`` (``--jwst-in-memory`` adds ``in_memory=True``):
    wall, CPU, memory, and the Jaccard index of the OUTLIER masks against jwst's.
``cluster``
    The same mosaic on a ``dask scheduler`` with ``--workers`` ``dask worker`` processes on
    loopback (started as ``benchmarks/cluster_client.py`` does): wall, the client's peak RSS
    (the command's process alone), the tasks the scheduler ran, and the masks against the
    local run.

Generated data go under ``--data-dir`` (default ``$TMPDIR/survey_scale``) and are removed at
the end unless ``--keep``; products are removed after each run. Disk: the series needs ~7 GB
of inputs plus the products of one run (~7 GB at 288 inputs), the mosaic ~7 GB plus ~7 GB.

    python benchmarks/survey_scale.py --parts series mosaic cluster --write-docs
    python benchmarks/survey_scale.py --parts series --series-inputs 16 72 --jwst-max-inputs 16
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cluster_client import _start_cluster
from compare_jwst import (
    RESULT_MARKER,
    TreeSampler,
    become_subreaper,
    child_environment,
    children_cpu_seconds,
    compare_masks,
    kill_tree,
    machine_description,
    parse_child_report,
    reap_descendants,
    versions,
)
from memory_cgroup import MemoryCgroup, cgroup_unavailable
from outlier_masks import outlier_masks

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs" / "performance.md"
FIGURE = REPO_ROOT / "docs" / "_static" / "survey_scale.png"
GIB = 2**30
HARD_LIMIT_FACTOR = 1.25
MOSAIC = {"pointings": (3, 3), "n_exposures": 2, "n_detectors": 4}


# --------------------------------------------------------------------------- child side


def run_child(engine: str, asn: Path, output_dir: Path, work_dir: Path, extra: list[str]) -> None:
    """One run in this fresh process; prints the timings on a :data:`RESULT_MARKER` line."""
    os.chdir(work_dir)  # jwst's on-disk models and median go to the working directory
    started = time.perf_counter()
    timings: dict[str, float] = {}
    if engine == "jwst":
        from jwst.outlier_detection import OutlierDetectionStep

        options = dict(item.split("=", 1) for item in extra)
        OutlierDetectionStep.call(
            str(asn),
            save_results=True,
            output_dir=str(output_dir),
            suffix="crf",
            in_memory=options.get("in_memory", "False") == "True",
        )
    else:
        from outlier_dask.command import command

        argv = ["run", str(asn), "--output-dir", str(output_dir), "--overwrite"]
        status = command([*argv, "--work-dir", str(work_dir), *extra])
        if status:
            sys.exit(status)
        (report,) = output_dir.glob("*_outlier_report.json")
        timings = {k: float(v) for k, v in json.loads(report.read_text())["timings"].items()}
    report = {"call_s": time.perf_counter() - started, "timings": timings}
    print(RESULT_MARKER + json.dumps(report), flush=True)


# --------------------------------------------------------------------------- data


def make_mosaic(folder: Path, name: str, **options: Any) -> Path:
    """A synthetic survey association in ``folder`` (reused if complete)."""
    marker = folder / ".complete.json"
    if marker.exists():
        return Path(json.loads(marker.read_text())["asn"])
    from outlier_dask.synthetic import write_association

    started = time.perf_counter()
    asn = write_association(folder, seed=0, product_name=name, **options)
    print(f"generated {len(asn.cal_paths)} inputs in {time.perf_counter() - started:.0f} s")
    marker.write_text(json.dumps({"asn": str(asn.asn_path)}))
    return asn.asn_path


def sub_association(full: Path, n_inputs: int) -> Path:
    """An association of the first ``n_inputs`` members of ``full`` (pointing-major)."""
    asn = json.loads(full.read_text())
    product = asn["products"][0]
    if n_inputs > len(product["members"]):
        raise SystemExit(f"{full} has {len(product['members'])} members, not {n_inputs}")
    product["members"] = product["members"][:n_inputs]
    product["name"] = f"survey{n_inputs}"
    path = full.with_name(f"survey{n_inputs}_asn.json")
    path.write_text(json.dumps(asn, indent=1))
    return path


# --------------------------------------------------------------------------- measuring


class ProcessSampler(threading.Thread):
    """Peak RSS [bytes] of one process alone (a cluster's client), sampled every 0.05 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak = pid, 0
        self._done = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            process = psutil.Process(self.pid)
            while not self._done.wait(0.05):
                self.peak = max(self.peak, process.memory_info().rss)
        except psutil.Error:
            return

    def stop(self) -> None:
        self._done.set()
        self.join()


class FolderSampler(threading.Thread):
    """Largest total size [bytes] a folder tree reaches, sampled every ``interval`` s."""

    def __init__(self, folder: Path, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.folder, self.interval, self.peak = folder, interval, 0
        self._done = threading.Event()

    def size(self) -> int:
        total = 0
        for root, _, files in os.walk(self.folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                except OSError:
                    continue
        return total

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, self.size())

    def stop(self) -> None:
        self._done.set()
        self.join()


def children_written_bytes() -> int:
    """Bytes written to files by all reaped descendants so far (``ru_oublock`` x 512)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock * 512


def measure(
    engine: str,
    asn: Path,
    root: Path,
    extra: list[str],
    *,
    timeout: float,
    hard_limit: int | None = None,
    reference: dict | None = None,
    label: str = "",
    reap: bool = True,
) -> dict[str, Any]:
    """Run one configuration in a fresh process and measure it; its products are removed.

    Returns wall/CPU seconds, peak tree RSS, the cgroup's peak and out-of-memory kills (with
    ``hard_limit``), bytes written besides the products, the work folder's peak size, the
    child's reported timings, and the OUTLIER masks' Jaccard index against ``reference``
    (the masks themselves under ``"masks"``). ``reap=False`` while this process has other
    children to keep (a cluster): orphans of the run are then not waited for.
    """
    output_dir, work_dir = root / f"out-{label}", root / f"work-{label}"
    for folder in (output_dir, work_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    os.sync()  # earlier products' writeback must not be charged to this run
    command = [sys.executable, str(Path(__file__).resolve()), "--child", engine]
    command += ["--asn", str(asn), "--output-dir", str(output_dir), "--work-dir", str(work_dir)]
    command += ["--", *extra]
    log_path = root / f"{label}.log"
    cpu_before, written_before = children_cpu_seconds(), children_written_bytes()
    sampler, folder = TreeSampler(0.2), FolderSampler(work_dir)
    group = MemoryCgroup(hard_limit, "survey-scale") if hard_limit else None
    with log_path.open("w") as log:
        if group:
            group.__enter__()
        try:
            started = time.perf_counter()
            child = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_environment(),
                preexec_fn=group.enter if group else None,
            )
            client = ProcessSampler(child.pid)
            for thread in (sampler, folder, client):
                thread.start()
            try:
                returncode = child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_tree(child.pid)
                returncode = child.wait()
            wall = time.perf_counter() - started
            if reap:
                reap_descendants(timeout=60.0)
            for thread in (sampler, folder, client):
                thread.stop()
            cgroup = (
                {"cgroup_peak": group.peak_bytes, "oom_kills": group.oom_kills} if group else {}
            )
        finally:
            if group:
                group.__exit__(None, None, None)
    products = sum(p.stat().st_size for p in output_dir.glob("*_crf.fits"))
    result: dict[str, Any] = {
        "label": label,
        "engine": engine,
        "options": extra,
        "status": returncode,
        "wall_s": wall,
        "cpu_s": children_cpu_seconds() - cpu_before,
        "peak_rss": sampler.peak_rss,  # with a cluster this includes its processes
        "client_peak_rss": client.peak,
        "scratch_written": max(0, children_written_bytes() - written_before - products),
        "work_dir_peak": folder.peak,
        "hard_limit": hard_limit,
        **cgroup,
    }
    report = parse_child_report(log_path)
    result["timings"] = report["timings"] if report else {}
    if returncode == 0:
        # jwst puts the association id in its product names (``..._o001_crf.fits``)
        masks = {re.sub(r"_o\d{3}_crf", "_crf", k): v for k, v in outlier_masks(output_dir).items()}
        result["masks"] = masks
        result["n_outputs"] = len(masks)
        result["flagged"] = int(sum(int(m.sum()) for m in masks.values()))
        if reference is not None:
            result["jaccard"], result["differing"] = compare_masks(masks, reference)
    else:
        result["log_tail"] = log_path.read_text().splitlines()[-5:]
    shutil.rmtree(output_dir, ignore_errors=True)
    shutil.rmtree(work_dir, ignore_errors=True)
    shown = {k: v for k, v in result.items() if k not in ("masks", "timings")}
    print(json.dumps(shown, default=str), flush=True)
    return result


def scheduler_task_count(address: str) -> int:
    """Tasks the scheduler at ``address`` has ever held, summed over task prefixes."""
    from distributed import Client

    def count(dask_scheduler: Any) -> int:
        return sum(sum(p.state_counts.values()) for p in dask_scheduler.task_prefixes.values())

    with Client(address, timeout=30) as client:
        return int(client.run_on_scheduler(count))


# --------------------------------------------------------------------------- parts


def run_series(args: argparse.Namespace, root: Path) -> list[dict]:
    """The scaling series: each size with defaults, at a hard-limited budget, and jwst.

    This engine's two configurations run ``args.repeat`` times, in rounds over all sizes (so
    that a slow spell of the shared machine falls on every size, not on one); jwst runs once
    per size, in the first round. A repeat's masks are compared with the first run's.
    """
    rows, cols = args.series_grid
    full = make_mosaic(
        root / "series-data",
        "series",
        pointings=(rows, cols),
        n_exposures=2,
        n_detectors=4,
        detector_shape=(args.series_detector, args.series_detector),
    )
    limit = _parse_size(args.memory_limit)
    sizes = sorted(args.series_inputs)
    asns = {n: sub_association(full, n) for n in sizes}
    runs: dict[int, dict[str, Any]] = {n: {"ours": [], "budget": []} for n in sizes}
    for round_ in range(args.repeat):
        for n in sizes:
            asn, entry = asns[n], runs[n]
            if round_ == 0 and n <= args.jwst_max_inputs:
                entry["jwst"] = measure(
                    "jwst", asn, root, [], timeout=args.timeout, label=f"jwst{n}"
                )
            first = entry["ours"][0] if entry["ours"] else None
            reference = entry["jwst"].get("masks") if entry.get("jwst") else None
            if first is not None and "masks" in first:
                reference = first["masks"]
            entry["ours"].append(
                measure(
                    "ours", asn, root, [], timeout=args.timeout, reference=reference, label=f"od{n}"
                )
            )
            entry["budget"].append(
                measure(
                    "ours",
                    asn,
                    root,
                    ["--memory-limit", args.memory_limit],
                    timeout=args.timeout,
                    hard_limit=int(HARD_LIMIT_FACTOR * limit) if args.hard_limit else None,
                    reference=reference,
                    label=f"od{n}-budget",
                )
            )
            for run in (*entry["ours"][1:], *entry["budget"]):
                run.pop("masks", None)  # the first run's are the reference; hundreds of MB each
    if not args.keep:
        shutil.rmtree(root / "series-data", ignore_errors=True)
    results = []
    for n in sizes:
        entry = {
            "inputs": n,
            "ours": summarise(runs[n]["ours"]),
            "budget": summarise(runs[n]["budget"]),
        }
        if "jwst" in runs[n]:
            entry["jwst"] = runs[n]["jwst"]
        results.append(entry)
    return results


def summarise(runs: list[dict]) -> dict[str, Any]:
    """Repeats of one configuration as one run: the median-wall run's figures, with the walls
    of all (``walls``); memory, scratch and the cgroup's peak are the largest of any repeat,
    the mask agreement the lowest, and the status the first failure's.
    """
    ordered = sorted(runs, key=lambda run: run["wall_s"])
    summary = dict(ordered[len(ordered) // 2])
    summary["walls"] = [run["wall_s"] for run in runs]
    for key in ("peak_rss", "client_peak_rss", "scratch_written", "work_dir_peak", "cgroup_peak"):
        values = [run[key] for run in runs if run.get(key) is not None]
        if values:
            summary[key] = max(values)
    summary["oom_kills"] = sum(run.get("oom_kills", 0) or 0 for run in runs)
    agreements = [run["jaccard"] for run in runs if "jaccard" in run]
    if agreements:
        summary["jaccard"] = min(agreements)
    failed = [run for run in runs if run["status"] != 0]
    if failed:
        summary.update(status=failed[0]["status"], log_tail=failed[0].get("log_tail"))
    summary["masks"] = runs[0].get("masks")
    return summary


def run_mosaic(args: argparse.Namespace, root: Path, out: dict[str, Any]) -> None:
    """The 72-input 2048² mosaic: defaults, on a two-worker cluster, then jwst (into ``out``).

    jwst, the longest, runs last, so that an interrupted invocation still reports the rest.
    """
    shape = (args.mosaic_detector, args.mosaic_detector)
    asn = make_mosaic(root / "mosaic-data", "mosaic", detector_shape=shape, **MOSAIC)
    if "mosaic" in args.parts:
        out["ours"] = measure("ours", asn, root, [], timeout=args.timeout, label="mosaic-od")
    if "cluster" in args.parts:
        out["cluster"] = run_cluster(args, root, asn, out.get("ours", {}).get("masks"))
    if "mosaic" in args.parts:
        jwst = measure("jwst", asn, root, [], timeout=args.timeout, label="mosaic-jwst")
        out["jwst"] = jwst
        if jwst.get("masks") and out["ours"].get("masks"):
            out["ours"]["jaccard"], out["ours"]["differing"] = compare_masks(
                out["ours"]["masks"], jwst["masks"]
            )
        if args.jwst_in_memory:
            out["jwst_in_memory"] = measure(
                "jwst",
                asn,
                root,
                ["in_memory=True"],
                timeout=args.timeout,
                reference=jwst.get("masks"),
                label="mosaic-jwst-mem",
            )
    if not args.keep:
        shutil.rmtree(root / "mosaic-data", ignore_errors=True)


def run_cluster(args: argparse.Namespace, root: Path, asn: Path, local: dict | None) -> dict:
    """The mosaic on ``dask scheduler`` + ``args.workers`` workers; the client is measured."""
    folder = root / "cluster"
    folder.mkdir(exist_ok=True)
    address, processes = _start_cluster(args.workers, folder)
    try:
        before = scheduler_task_count(address)
        result = measure(
            "ours",
            asn,
            root,
            ["--scheduler", address],
            timeout=args.timeout,
            reference=local,
            label="mosaic-cluster",
            reap=False,
        )
        result["tasks"] = scheduler_task_count(address) - before
        result["workers"] = args.workers
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- reporting


def _parse_size(text: str) -> int:
    from outlier_dask.parameters import parse_memory_size

    return parse_memory_size(text)


def _gib(n: float | None) -> str:
    return "-" if n is None or n < 0 else f"{n / GIB:.2f}"


def _plan(run: dict) -> str:
    return f"{run['timings']['plan']:.1f}" if "plan" in run.get("timings", {}) else "-"


def _jaccard(run: dict) -> str:
    return f"{run['jaccard']:.6f}" if "jaccard" in run else "-"


def _walls(run: dict | None, per: int = 1, digits: int = 0) -> str:
    """The wall in seconds divided by ``per``; for repeats the median, then their range."""
    if not run or run["status"] != 0:
        return "-"
    walls = run.get("walls", [run["wall_s"]])
    text = f"{run['wall_s'] / per:.{digits}f}"
    if len(walls) == 1:
        return text
    return f"{text} ({min(walls) / per:.{digits}f}-{max(walls) / per:.{digits}f})"


def _seconds(run: dict | None) -> str:
    return _walls(run)


def _per_input(run: dict, n: int) -> str:
    return _walls(run, per=n, digits=3)


def series_scaling(series: list[dict], key: str) -> str:
    """One sentence on how ``key``'s median wall grows with the inputs.

    The spread of the time per input (largest over smallest, the issue's flatness), and a
    least-squares line ``wall = fixed + slope x inputs`` through the medians: ``fixed`` is
    what every run pays whatever its size (start-up, imports), ``slope`` the cost per input.
    """
    points = [(e["inputs"], e[key]["wall_s"]) for e in series if e[key]["status"] == 0]
    if len(points) < 2:
        return ""
    per_input = [wall / n for n, wall in points]
    slope, fixed = statistics.linear_regression(*zip(*points, strict=True))
    residual = max(abs(wall - fixed - slope * n) / wall for n, wall in points)
    return (
        f"time per input (median walls) from {min(per_input):.3f} to {max(per_input):.3f} s, "
        f"a spread of {max(per_input) / min(per_input):.2f}x; the line through the medians: "
        f"{fixed:.1f} s fixed + {slope:.3f} s per input (largest residual {residual:.0%})"
    )


def series_table(series: list[dict], budget: str) -> str:
    """The series as Markdown: one row per size."""
    lines = [
        "| inputs | defaults wall s | s / input | plan s | CPU s | peak RSS GiB "
        f"| scratch written GiB | {budget} wall s | {budget} s / input | {budget} plan s "
        f"| {budget} peak RSS GiB | {budget} cgroup peak GiB (limit) "
        f"| {budget} scratch written GiB | jwst in_memory=False wall s | jwst peak RSS GiB "
        "| jwst / defaults | Jaccard |",
        "|" + "---|" * 17,
    ]
    for entry in series:
        ours, budget_run, jwst = entry["ours"], entry["budget"], entry.get("jwst")
        n = entry["inputs"]
        ok = ours["status"] == 0
        per_input = _per_input(ours, n)
        ratio = (
            f"{jwst['wall_s'] / ours['wall_s']:.1f}x"
            if jwst and jwst["status"] == 0 and ok
            else "-"
        )
        limit = budget_run.get("hard_limit")
        cgroup = (
            f"{_gib(budget_run.get('cgroup_peak'))} ({_gib(limit)})" if limit else "not limited"
        )
        if budget_run.get("oom_kills"):
            cgroup += f", {budget_run['oom_kills']} killed"
        budget_ok = budget_run["status"] == 0
        budget_per_input = _per_input(budget_run, n)
        lines.append(
            f"| {n} | {_seconds(ours)} | {per_input} | {_plan(ours)} "
            f"| {ours['cpu_s']:.0f} | {_gib(ours['peak_rss']) if ok else 'failed'} "
            f"| {_gib(ours['scratch_written']) if ok else '-'} "
            f"| {_seconds(budget_run)} "
            f"| {budget_per_input} "
            f"| {_plan(budget_run)} "
            f"| {_gib(budget_run['peak_rss'])} | {cgroup} "
            f"| {_gib(budget_run['scratch_written']) if budget_ok else '-'} "
            f"| {_seconds(jwst)} | {_gib(jwst['peak_rss']) if jwst else '-'} | {ratio} "
            f"| {_jaccard(ours) if jwst else '-'} |"
        )
    return "\n".join(lines)


def mosaic_table(mosaic: dict) -> str:
    """The mosaic runs as Markdown."""
    lines = [
        "| run | wall s | CPU s | peak RSS GiB | scratch written GiB | Jaccard vs jwst |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "jwst": "jwst 3.0.0 in_memory=False",
        "jwst_in_memory": "jwst 3.0.0 in_memory=True",
        "ours": "outlier_dask defaults",
    }
    for key, name in names.items():
        run = mosaic.get(key)
        if run:
            lines.append(
                f"| {name} | {_seconds(run)} | {run['cpu_s']:.0f} | {_gib(run['peak_rss'])} "
                f"| {_gib(run['scratch_written'])} | {_jaccard(run)} |"
            )
    if mosaic.get("jwst", {}).get("status") == 0 and mosaic.get("ours", {}).get("status") == 0:
        ratio = mosaic["jwst"]["wall_s"] / mosaic["ours"]["wall_s"]
        lines += ["", f"jwst in_memory=False / outlier_dask defaults, wall: {ratio:.1f}x"]
    cluster = mosaic.get("cluster")
    if cluster:
        lines += [
            "",
            f"On a `dask scheduler` with {cluster['workers']} `dask worker` processes (1 thread "
            f"each, loopback): wall {_seconds(cluster)} s, client peak RSS "
            f"{_gib(cluster['client_peak_rss'])} GiB (the command's process alone), "
            f"{cluster.get('tasks', '-')} tasks on the scheduler, Jaccard against the local run "
            f"{_jaccard(cluster)}.",
        ]
    return "\n".join(lines)


def write_figure(series: list[dict], path: Path) -> None:
    """Wall time and peak memory against inputs, for both tools (matplotlib)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    wall_ax, mem_ax = fig.subplots(1, 2)
    runs = (("ours", "outlier_dask defaults"), ("budget", "outlier_dask 1 GiB budget"))
    for key, name in (*runs, ("jwst", "jwst in_memory=False")):
        points = [(e["inputs"], e[key]) for e in series if e.get(key) and e[key]["status"] == 0]
        if not points:
            continue
        n = [p[0] for p in points]
        wall_ax.plot(n, [p[1]["wall_s"] for p in points], "o-", label=name)
        mem_ax.plot(n, [p[1]["peak_rss"] / GIB for p in points], "o-", label=name)
    wall_ax.set(xlabel="inputs (1024² detectors)", ylabel="wall time [s]")
    mem_ax.set(xlabel="inputs (1024² detectors)", ylabel="peak RSS of the process tree [GiB]")
    wall_ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def report_sections(args: argparse.Namespace, results: dict) -> dict[str, str]:
    """Markdown per part (``series``, ``mosaic``), each with its command and machine."""
    machine = machine_description()
    header = [
        f"Command: `python benchmarks/survey_scale.py {shlex.join(args.argv)}`  ",
        f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory']}, "
        f"{machine['os']}; shared with other work, so CPU-bound figures are noisy: compare "
        "the columns of one row, measured in the same invocation.  ",
        f"Versions: {json.dumps(versions())}; date "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
    ]
    sections = {}
    if results.get("series"):
        rows, cols = args.series_grid
        sections["series"] = "\n".join(
            [
                *header,
                f"Series: sub-associations (whole pointings, in order) of a {rows} x {cols} "
                f"pointing x 2 dither x 4 detector tiling of {args.series_detector}² "
                "detectors. Peak RSS: summed over the process tree, sampled every 0.2 s. "
                "cgroup peak: the kernel's count for the hard-limited run (limit "
                f"{HARD_LIMIT_FACTOR} x the budget; page cache included). Scratch written: "
                "bytes the run's processes wrote to files, less the products. This engine's "
                f"runs: {args.repeat} of each, in rounds over the sizes; walls are the median "
                "(range); memory, scratch and the cgroup's peak the largest of the repeats; "
                "Jaccard the lowest (the first run against jwst, the others against the "
                "first). jwst: one run per size.",
                "",
                series_table(results["series"], args.memory_limit),
                "",
                f"Defaults: {series_scaling(results['series'], 'ours')}.  ",
                f"{args.memory_limit}: {series_scaling(results['series'], 'budget')}.",
                "",
                f"![wall time and peak memory against inputs](_static/{FIGURE.name})",
            ]
        )
    if results.get("mosaic"):
        sections["mosaic"] = "\n".join(
            [
                *header,
                "Mosaic: 3 x 3 pointings x 2 dithers x 4 detectors of "
                f"{args.mosaic_detector}² (72 inputs).",
                "",
                mosaic_table(results["mosaic"]),
            ]
        )
    return sections


def write_docs(part: str, text: str) -> None:
    """Replace the ``part`` section of the survey-scale results in docs/performance.md."""
    start, end = f"<!-- survey_scale {part} start -->", f"<!-- survey_scale {part} end -->"
    body = DOCS.read_text()
    section = f"{start}\n{text}\n{end}"
    if start in body and end in body:
        head, rest = body.split(start, 1)
        body = head + section + rest.split(end, 1)[1]
    else:
        body = body.rstrip() + f"\n\n### Survey scale: {part}\n\n" + section + "\n"
    DOCS.write_text(body)


def _strip_masks(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_masks(v) for k, v in value.items() if k != "masks"}
    if isinstance(value, list):
        return [_strip_masks(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts", nargs="+", choices=("series", "mosaic", "cluster"), default=["series"]
    )
    parser.add_argument("--series-inputs", type=int, nargs="+", default=[16, 72, 144, 288])
    parser.add_argument(
        "--series-grid", type=int, nargs=2, default=[6, 6], metavar=("ROWS", "COLS")
    )
    parser.add_argument("--series-detector", type=int, default=1024, help="detector size [px]")
    parser.add_argument("--mosaic-detector", type=int, default=2048, help="detector size [px]")
    parser.add_argument(
        "--jwst-max-inputs", type=int, default=72, help="largest series run of jwst"
    )
    parser.add_argument(
        "--jwst-in-memory", action="store_true", help="mosaic: jwst in_memory=True too"
    )
    parser.add_argument("--memory-limit", default="1GiB", help="the budgeted series run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="series: runs of each configuration of this engine"
    )
    parser.add_argument(
        "--no-hard-limit",
        dest="hard_limit",
        action="store_false",
        help="run the budgeted series without a cgroup",
    )
    parser.add_argument("--workers", type=int, default=2, help="cluster: dask workers")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "survey_scale"))
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--write-docs", action="store_true", help="update docs/performance.md")
    parser.add_argument("--child", choices=("ours", "jwst"), help=argparse.SUPPRESS)
    parser.add_argument("--asn", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.child:
        run_child(
            args.child, Path(args.asn), Path(args.output_dir), Path(args.work_dir), args.extra
        )
        return 0
    if args.hard_limit and "series" in args.parts and (reason := cgroup_unavailable()):
        parser.error(f"no hard memory limit ({reason}); pass --no-hard-limit")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    become_subreaper()
    root = Path(args.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    try:
        if "series" in args.parts:
            results["series"] = run_series(args, root)
        if "mosaic" in args.parts or "cluster" in args.parts:
            results["mosaic"] = {}
            run_mosaic(args, root, results["mosaic"])
    finally:
        # also after Ctrl-C: what was measured is saved and reported
        saved = root.parent / f"{root.name}-results.json"
        saved.write_text(json.dumps(_strip_masks(results), indent=1, default=str))
        print(f"results in {saved}")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        sections = report_sections(args, results)
        for part, text in sections.items():
            print(text + "\n")
            if args.write_docs:
                write_docs(part, text)
        if args.write_docs and results.get("series"):
            write_figure(results["series"], FIGURE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
