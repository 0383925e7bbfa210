"""Peak memory against the number of exposures, at a fixed memory budget, beside jwst.

Generates one synthetic association of ``max(--exposures)`` exposures x 2 detectors x 2048²,
writes sub-associations of its first 4, 8, 16, 32 exposures, and runs each in its own process:
outlier_dask with ``--memory-limit`` (default 1 GiB) and jwst 3.0.0 with ``in_memory=False``.
A sampler sums the resident memory (RSS) of the process and all its descendants every 0.1 s;
the proportional set size (PSS, which counts pages shared by forked workers once) is given
beside it. ``--write-docs`` puts the table in ``docs/performance.md``.

    python benchmarks/memory_scaling.py --exposures 4 8 16 32 --memory-limit 1GiB --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "performance.md"
START, END = "<!-- memory_scaling start -->", "<!-- memory_scaling end -->"

CHILD_OURS = """
import sys
from outlier_dask import detect_outliers
r = detect_outliers(sys.argv[1], output_dir=sys.argv[2], overwrite=True,
                    memory_limit=sys.argv[3], work_dir=sys.argv[4], progress=False)
print("FLAGGED", sum(r.flagged.values()))
"""

CHILD_JWST = """
import os, sys
os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "True"
os.chdir(sys.argv[4])  # jwst's on-disk median writes its temporary folder in the CWD
from jwst.outlier_detection import OutlierDetectionStep
OutlierDetectionStep.call(sys.argv[1], in_memory=False, save_results=True,
                          output_dir=sys.argv[2], suffix="crf")
print("FLAGGED", -1)
"""


def _tree_memory(process: psutil.Process) -> tuple[int, int]:
    """(RSS, PSS) summed over a process and all its descendants, in bytes."""
    rss = pss = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


def run_sampled(command: list[str], timeout_s: float) -> dict:
    """Run ``command``; return wall seconds, peak tree RSS and PSS, exit status, output."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    handle = psutil.Process(proc.pid)
    peak = {"rss": 0, "pss": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss, pss = _tree_memory(handle)
            peak["rss"] = max(peak["rss"], rss)
            peak["pss"] = max(peak["pss"], pss)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    done.set()
    sampler.join()
    return {
        "wall_s": time.perf_counter() - started,
        "peak_rss": peak["rss"],
        "peak_pss": peak["pss"],
        "status": proc.returncode,
        "stderr_tail": err.strip().splitlines()[-3:],
        "stdout": out,
    }


def make_data(folder: Path, n_exposures: int) -> Path:
    """The full association (generated once; reused when its marker exists)."""
    marker = folder / f"ready_{n_exposures}.json"
    if marker.exists():
        return Path(json.loads(marker.read_text())["asn"])
    from outlier_dask.synthetic import write_association

    asn = write_association(
        folder,
        n_exposures=n_exposures,
        n_detectors=2,
        detector_shape=(2048, 2048),
        seed=0,
        product_name=f"scaling{n_exposures}",
    )
    marker.write_text(json.dumps({"asn": str(asn.asn_path)}))
    return asn.asn_path


def sub_association(full: Path, n_exposures: int) -> Path:
    """An association of the first ``n_exposures`` exposures (2 members each) of ``full``."""
    asn = json.loads(full.read_text())
    product = asn["products"][0]
    product["members"] = product["members"][: 2 * n_exposures]
    product["name"] = f"scaling{n_exposures}"
    path = full.with_name(f"scaling{n_exposures}_asn.json")
    path.write_text(json.dumps(asn, indent=1))
    return path


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def table(rows: list[dict], budget: str) -> str:
    """The results as a Markdown table."""
    lines = [
        f"| exposures | inputs | outlier_dask peak RSS GiB (PSS) | within 1.25 x {budget} "
        "| outlier_dask wall s | jwst in_memory=False peak RSS GiB | jwst wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours, ref = r["ours"], r.get("jwst")
        within = "yes" if ours["peak_rss"] <= 1.25 * r["budget_bytes"] else "no"
        ref_rss = _gib(ref["peak_rss"]) if ref and ref["status"] == 0 else "not run"
        ref_wall = f"{ref['wall_s']:.0f}" if ref and ref["status"] == 0 else "-"
        lines.append(
            f"| {r['exposures']} | {2 * r['exposures']} | {_gib(ours['peak_rss'])} "
            f"({_gib(ours['peak_pss'])}) | {within} | {ours['wall_s']:.0f} "
            f"| {ref_rss} | {ref_wall} |"
        )
    return "\n".join(lines)


def write_docs(text: str) -> None:
    """Replace the memory-scaling section of docs/performance.md."""
    body = DOCS.read_text() if DOCS.exists() else "# Performance\n"
    section = f"{START}\n{text}\n{END}"
    if START in body and END in body:
        head, rest = body.split(START, 1)
        body = head + section + rest.split(END, 1)[1]
    else:
        body = body.rstrip() + "\n\n## Memory against association size\n\n" + section + "\n"
    DOCS.write_text(body)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--memory-limit", default="1GiB")
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "od_scaling"))
    parser.add_argument("--skip-jwst", action="store_true")
    parser.add_argument(
        "--jwst-max-exposures",
        type=int,
        default=32,
        help="run jwst only up to this many exposures (it is slow)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()

    from outlier_dask.parameters import parse_memory_size

    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    full = make_data(data, max(args.exposures))
    rows = []
    for n in sorted(args.exposures):
        asn = sub_association(full, n)
        row = {"exposures": n, "budget_bytes": parse_memory_size(args.memory_limit)}
        for name, code in (("ours", CHILD_OURS), ("jwst", CHILD_JWST)):
            if name == "jwst" and (args.skip_jwst or n > args.jwst_max_exposures):
                continue
            out = Path(tempfile.mkdtemp(prefix=f"{name}{n}_", dir=data))
            work = Path(tempfile.mkdtemp(prefix=f"work{n}_", dir=data))
            command = [sys.executable, "-c", code, str(asn), str(out), args.memory_limit, str(work)]
            row[name] = run_sampled(command, args.timeout)
            print(
                f"{n} exposures, {name}: {row[name]['wall_s']:.0f} s, "
                f"peak RSS {_gib(row[name]['peak_rss'])} GiB, status {row[name]['status']}",
                flush=True,
            )
            subprocess.run(["rm", "-rf", str(out), str(work)], check=False)
        rows.append(row)
    command = "python benchmarks/memory_scaling.py " + " ".join(sys.argv[1:])
    machine = (
        f"{len(os.sched_getaffinity(0))} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.processor() or 'x86_64'}"
    )
    text = "\n".join(
        [
            f"Command: `{command}`  ",
            f"Machine: {machine}; date {time.strftime('%Y-%m-%d')}  ",
            "Data: synthetic NIRCam-like association, 2 detectors of 2048 x 2048 per exposure. "
            "Peak memory: the sum over the process and all its workers, sampled every 0.1 s "
            "(RSS counts pages that forked workers share with their parent in each process; "
            "PSS counts them once). Reading PSS that often slows the runs it reads (see "
            "compare_jwst), so the wall times here are for scale, not speed figures.",
            "",
            table(rows, args.memory_limit),
        ]
    )
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
