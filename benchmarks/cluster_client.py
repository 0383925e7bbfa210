"""A cluster run as a cluster user makes it: the client's memory, the wall time, the graph.

Starts ``dask scheduler`` and ``--workers`` ``dask worker`` processes (one thread each) on
loopback, then runs, in turns (A B A B), ``outlier-dask run`` with the default local scheduler
and with ``--scheduler tcp://127.0.0.1:PORT`` on the same association, each in a fresh
process. Reports for every run the wall time and the peak RSS of the command's own process
(the client; sampled every 0.05 s with psutil), whether distributed warned about a large graph,
and whether both flag the same pixels.

    python benchmarks/cluster_client.py --asn path/to/asn.json --repeat 2
    python benchmarks/cluster_client.py --asn asn.json -- --in-memory=False --work-dir /tmp/w
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from outlier_masks import outlier_masks, same_masks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_cluster(n_workers: int, folder: Path) -> tuple[str, list[subprocess.Popen]]:
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(folder / "cluster.log", "w")  # noqa: SIM115 - kept open for the processes
    # The scheduler's and nannies' own folders in ``folder`` too, not in /tmp.
    env = dict(os.environ, DASK_TEMPORARY_DIRECTORY=str(folder))
    processes = [
        subprocess.Popen(
            ["dask", "scheduler", "--host", "127.0.0.1", "--port", str(port)]
            + ["--dashboard-address", ":0"],
            stdout=log,
            stderr=log,
            env=env,
        )
    ]
    time.sleep(3)
    for _ in range(n_workers):
        processes.append(
            subprocess.Popen(
                ["dask", "worker", address, "--nthreads", "1", "--nworkers", "1"]
                + ["--local-directory", str(folder), "--no-dashboard"],
                stdout=log,
                stderr=log,
                env=env,
            )
        )
    time.sleep(6)
    return address, processes


def _run(asn: str, out: Path, extra: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subprocess.run(["sync"], check=False)
    env = dict(os.environ, STPIPE_DISABLE_CRDS_STEPPARS="True")
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "outlier_dask", "run", asn, "--output-dir", str(out)]
        + ["--overwrite", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        watched = psutil.Process(process.pid)
        while not done.is_set():
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"run failed: {extra}\n{stderr}")
    return {
        "wall_s": wall,
        "client_peak_rss_mib": peak / 2**20,
        "large_graph_warning": "large graph" in stderr.lower(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asn", required=True, help="the association to run")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each configuration")
    parser.add_argument("--workers", type=int, default=2, help="dask workers (1 thread each)")
    parser.add_argument("extra", nargs="*", help="options for both commands (after --)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="cluster_client-"))
    address, processes = _start_cluster(args.workers, folder)
    runs: dict[str, list[dict]] = {"local": [], "cluster": []}
    try:
        for _ in range(args.repeat):
            for name, options in (("local", []), ("cluster", ["--scheduler", address])):
                result = _run(args.asn, folder / f"out-{name}", [*options, *args.extra])
                runs[name].append(result)
                print(name, json.dumps(result), flush=True)
        local, cluster = outlier_masks(folder / "out-local"), outlier_masks(folder / "out-cluster")
        same = same_masks(local, cluster)
        walls = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
        print(
            json.dumps(
                {
                    "extra": args.extra,
                    "workers": args.workers,
                    "runs": runs,
                    "cluster_over_local_wall": walls["cluster"] / walls["local"],
                    "client_peak_rss_mib_max": max(
                        r["client_peak_rss_mib"] for r in runs["cluster"]
                    ),
                    "masks_identical": same,
                },
                indent=2,
            )
        )
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
